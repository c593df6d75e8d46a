//! A Postgres source's own keys of its `[[sources]]` entry, parsed and checked.

use crate::config::{duration_text, is_simple_name, split_table_name, Problem, SourceConfig};
use serde::Deserialize;
use std::time::Duration;

/// What `kind = "postgres"` adds to the common keys (`name`, `url`, `url_env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    slot: Option<String>,
    publication: Option<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default = "default_replication_timeout", with = "duration_text")]
    replication_timeout: Duration,
}

/// Like Postgres' own `wal_receiver_timeout`.
fn default_replication_timeout() -> Duration {
    Duration::from_secs(60)
}

/// One Postgres source, as configured.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub name: String,
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// `schema.table` names; empty when [`PostgresConfig::all_tables`].
    pub tables: Vec<String>,
    /// `tables = ["*"]`: every table of the database, and new ones as they appear.
    pub all_tables: bool,
    /// A replication connection silent this long is dead (a network black hole): reconnect.
    /// The relay asks the server for a reply after half of it; also bounds catalog queries.
    pub replication_timeout: Duration,
}

impl PostgresConfig {
    pub fn parse(source: &SourceConfig) -> Result<PostgresConfig, Problem> {
        let options: Options = source.options()?;
        let problem = |message: String| source.problem(message);
        if options.tables.is_empty() {
            return Err(problem(
                "tables is empty: list tables as [\"public.events\"] or use [\"*\"] for every table"
                    .into(),
            ));
        }
        let all_tables = options.tables.iter().any(|t| t == "*");
        if all_tables && options.tables.len() > 1 {
            return Err(problem(
                "tables = [\"*\"] cannot be combined with table names".into(),
            ));
        }
        if !all_tables {
            if let Some(table) = options
                .tables
                .iter()
                .find(|t| split_table_name(t).is_none())
            {
                return Err(problem(format!(
                    "table {table:?} must be written schema.table, e.g. \"public.{table}\""
                )));
            }
        }
        if options.replication_timeout < Duration::from_secs(1) {
            return Err(problem(
                "replication_timeout must be at least 1s (default 60s)".into(),
            ));
        }
        let default_name = format!("deltarelay_{}", source.name);
        let slot = options.slot.unwrap_or_else(|| default_name.clone());
        let publication = options.publication.unwrap_or(default_name);
        for (what, name) in [("slot", &slot), ("publication", &publication)] {
            if !is_simple_name(name) {
                return Err(problem(format!(
                    "{what} name {name:?} must be 1-48 characters of a-z, 0-9 and _"
                )));
            }
        }
        Ok(PostgresConfig {
            name: source.name.clone(),
            url: source.resolve_url()?,
            slot,
            publication,
            tables: if all_tables { vec![] } else { options.tables },
            all_tables,
            replication_timeout: options.replication_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{load_text, MINIMAL};

    fn parse(text: &str) -> Result<PostgresConfig, Problem> {
        PostgresConfig::parse(&load_text(text).unwrap().sources[0])
    }

    #[test]
    fn names_default_from_the_source() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.slot, "deltarelay_app_pg");
        assert_eq!(config.publication, "deltarelay_app_pg");
        assert_eq!(config.tables, vec!["public.events", "public.users"]);
        assert_eq!(config.replication_timeout, Duration::from_secs(60));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_tables_by_name() {
        let err = parse(&MINIMAL.replace("[[sources]]", "[[sources]]\ntabels = []")).unwrap_err();
        assert!(err.to_string().contains("tabels"), "{err}");
        let err = parse(&MINIMAL.replace("\"public.users\"", "\"users\"")).unwrap_err();
        assert!(err.to_string().contains("schema.table"), "{err}");
        let err = parse(&MINIMAL.replace("\"public.users\"", "\"*\"")).unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
        let err =
            parse(&MINIMAL.replace("[[sources]]", "[[sources]]\nslot = \"Bad-Slot\"")).unwrap_err();
        assert!(err.to_string().contains("Bad-Slot"), "{err}");
        let err =
            parse(&MINIMAL.replace("[[sources]]", "[[sources]]\nreplication_timeout = \"10ms\""))
                .unwrap_err();
        assert!(err.to_string().contains("at least 1s"), "{err}");
    }

    #[test]
    fn a_star_means_every_table() {
        let config =
            parse(&MINIMAL.replace("\"public.events\", \"public.users\"", "\"*\"")).unwrap();
        assert!(config.all_tables);
        assert!(config.tables.is_empty());
    }
}
