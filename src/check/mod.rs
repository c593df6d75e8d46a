//! `deltarelay check` results: one line per prerequisite, with what to do when it is not met.
//!
//! Each source kind runs its own checks (`crate::source::SourceSpec::check`); the report
//! format and the exit status are shared, so a new kind only has to return [`CheckResult`]s.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Works, but an operator should know (e.g. unlimited WAL retention).
    Warn,
    /// The relay will not work (or not correctly) until this is fixed.
    Fail,
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The source it is about, or `config`.
    pub scope: String,
    /// What was checked, e.g. `wal_level`.
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, for `Warn` and `Fail`.
    pub fix: Option<String>,
}

impl CheckResult {
    pub fn pass(scope: &str, name: &str, detail: impl Into<String>) -> CheckResult {
        CheckResult::new(scope, name, Status::Pass, detail.into(), None)
    }

    pub fn warn(
        scope: &str,
        name: &str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckResult::new(scope, name, Status::Warn, detail.into(), Some(fix.into()))
    }

    pub fn fail(
        scope: &str,
        name: &str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        CheckResult::new(scope, name, Status::Fail, detail.into(), Some(fix.into()))
    }

    fn new(scope: &str, name: &str, status: Status, detail: String, fix: Option<String>) -> Self {
        CheckResult {
            scope: scope.to_string(),
            name: name.to_string(),
            status,
            detail,
            fix,
        }
    }
}

impl fmt::Display for CheckResult {
    /// `PASS app_pg wal_level: logical`, plus `  fix: …` on the next line when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag} {} {}: {}", self.scope, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n     fix: {fix}")?;
        }
        Ok(())
    }
}

/// How many results failed.
pub fn failures(results: &[CheckResult]) -> usize {
    results.iter().filter(|r| r.status == Status::Fail).count()
}
