//! `deltarelay check`: one line per prerequisite, with what to do when it is not met.
//!
//! Each source kind contributes its own checks (see [`postgres`], [`mongo`]); the report format and the
//! exit status are shared, so a new kind only has to return [`CheckResult`]s.

pub mod mongo;
pub mod postgres;

use crate::config::{Config, SourceConfig, SourceKind};
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

/// Runs every check of every source, printing each result as it is known.
/// Returns all results; the caller fails when any is [`Status::Fail`].
pub async fn run(config: &Config, mut print: impl FnMut(&CheckResult)) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut emit = |result: CheckResult| {
        print(&result);
        results.push(result);
    };
    emit(CheckResult::pass(
        "config",
        "file",
        format!("valid, {} source(s)", config.sources.len()),
    ));
    for source in &config.sources {
        for result in check_source(source).await {
            emit(result);
        }
    }
    results
}

async fn check_source(source: &SourceConfig) -> Vec<CheckResult> {
    match source.kind {
        SourceKind::Postgres => postgres::check(source).await,
        SourceKind::Mongodb => mongo::check(source).await,
    }
}

/// How many results failed.
pub fn failures(results: &[CheckResult]) -> usize {
    results.iter().filter(|r| r.status == Status::Fail).count()
}
