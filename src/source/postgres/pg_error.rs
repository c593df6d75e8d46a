//! Postgres errors as an operator needs to read them: tokio-postgres says only "db error" for
//! whatever the server refused; the SQLSTATE, message, detail and hint are in its cause.

use std::error::Error as _;

/// SQLSTATEs that mean the server refuses the relay as configured: no `pg_hba.conf` entry or
/// a rejected login (28000), a wrong password (28P01), a missing privilege (42501), a
/// database that does not exist (3D000).
const CONFIGURATION: &[&str] = &["28000", "28P01", "42501", "3D000"];

/// Whether `sqlstate` is one an operator has to fix (see [`CONFIGURATION`]).
pub fn is_configuration(sqlstate: &str) -> bool {
    CONFIGURATION.contains(&sqlstate)
}

/// The server's SQLSTATE, when the error is one the server sent.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.as_db_error().map(|db| db.code().code())
}

/// `28000: no pg_hba.conf entry for host … (detail: …) hint: …` for a server error; the
/// error and its causes for anything else (`error connecting to server: Connection refused`).
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{}: {}", db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" (detail: {detail})"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" hint: {hint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_states_are_login_privilege_and_database() {
        for code in ["28000", "28P01", "42501", "3D000"] {
            assert!(is_configuration(code), "{code}");
        }
        for code in ["57P01", "08006", "53300", "40001"] {
            assert!(!is_configuration(code), "{code}");
        }
    }
}
