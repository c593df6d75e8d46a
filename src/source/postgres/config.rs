//! A Postgres source's own keys of its `[[sources]]` entry, parsed and checked.

use crate::config::{duration_text, is_simple_name, split_table_name, Problem, SourceConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What `kind = "postgres"` adds to the common keys (`name`, `url`, `url_env`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    slot: Option<String>,
    publication: Option<String>,
    /// Each a `"schema.table"` or a table `{ name = "schema.table", columns = [...], … }`.
    #[serde(default)]
    tables: Vec<serde_json::Value>,
    #[serde(default = "default_replication_timeout", with = "duration_text")]
    replication_timeout: Duration,
}

/// Like Postgres' own `wal_receiver_timeout`.
fn default_replication_timeout() -> Duration {
    Duration::from_secs(60)
}

/// A table entry written as a table: what of the table leaves the database (Postgres 15+:
/// the publication's column list and row filter, and the copy applies the same).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    #[serde(skip)]
    pub name: String,
    /// Only these columns (they must include the key).
    pub columns: Option<Vec<String>>,
    /// Every column but these (e.g. `["password_hash"]`).
    pub exclude_columns: Option<Vec<String>>,
    /// Only rows for which this SQL expression holds, e.g. `"tenant_id = 7"`.
    #[serde(rename = "where")]
    pub row_filter: Option<String>,
    /// An insert-only table (audit logs): synced through a second publication that publishes
    /// only inserts and truncates, each row under a synthetic key; no key needed.
    #[serde(default)]
    pub append_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableEntry {
    name: String,
    #[serde(flatten)]
    options: TableOptions,
}

impl TableOptions {
    /// Whether the entry asks for anything besides the name.
    pub fn is_plain(&self) -> bool {
        self.columns.is_none()
            && self.exclude_columns.is_none()
            && self.row_filter.is_none()
            && !self.append_only
    }

    fn parse(value: &serde_json::Value) -> Result<TableOptions, String> {
        if let Some(name) = value.as_str() {
            return Ok(TableOptions {
                name: name.to_string(),
                ..TableOptions::default()
            });
        }
        let entry: TableEntry = serde_json::from_value(value.clone()).map_err(|e| {
            format!(
                "table entry {value}: {e} (write \"schema.table\" or {{ name = \"schema.table\", \
                 columns = [...] | exclude_columns = [...], where = \"...\" }})"
            )
        })?;
        let options = TableOptions {
            name: entry.name,
            ..entry.options
        };
        let name = &options.name;
        if options.columns.is_some() && options.exclude_columns.is_some() {
            return Err(format!(
                "table {name}: columns and exclude_columns cannot both be set: keep one"
            ));
        }
        for (key, list) in [
            ("columns", &options.columns),
            ("exclude_columns", &options.exclude_columns),
        ] {
            if let Some(list) = list {
                if list.is_empty() || list.iter().any(|c| c.is_empty()) {
                    return Err(format!(
                        "table {name}: {key} must list column names, e.g. [\"id\", \"title\"]"
                    ));
                }
            }
        }
        if options.append_only
            && (options.columns.is_some()
                || options.exclude_columns.is_some()
                || options.row_filter.is_some())
        {
            return Err(format!(
                "table {name}: append_only cannot be combined with columns, exclude_columns or where yet"
            ));
        }
        if let Some(filter) = &options.row_filter {
            if filter.trim().is_empty() || filter.contains(';') {
                return Err(format!(
                    "table {name}: where must be one SQL condition on the row, e.g. \"tenant_id = 7\""
                ));
            }
        }
        Ok(options)
    }
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
    /// The entries written as tables with columns or a row filter, by table name.
    pub table_options: BTreeMap<String, TableOptions>,
    /// A replication connection silent this long is dead (a network black hole): reconnect.
    /// The relay asks the server for a reply after half of it; also bounds catalog queries.
    pub replication_timeout: Duration,
}

impl PostgresConfig {
    /// The second publication, of the `append_only` tables: inserts and truncates only, so
    /// that tables without a replica identity never sit in one that publishes updates.
    pub fn append_publication(&self) -> String {
        format!("{}_append", self.publication)
    }

    pub fn is_append_only(&self, table: &str) -> bool {
        self.table_options.get(table).is_some_and(|o| o.append_only)
    }

    pub fn parse(source: &SourceConfig) -> Result<PostgresConfig, Problem> {
        let options: Options = source.options()?;
        let problem = |message: String| source.problem(message);
        let mut table_options = BTreeMap::new();
        let mut names = Vec::with_capacity(options.tables.len());
        for value in &options.tables {
            let entry = TableOptions::parse(value).map_err(problem)?;
            if names.contains(&entry.name) {
                return Err(problem(format!(
                    "table {} is listed twice: keep one entry",
                    entry.name
                )));
            }
            names.push(entry.name.clone());
            if !entry.is_plain() {
                table_options.insert(entry.name.clone(), entry);
            }
        }
        if names.is_empty() {
            return Err(problem(
                "tables is empty: list tables as [\"public.events\"] or use [\"*\"] for every table"
                    .into(),
            ));
        }
        let all_tables = names.iter().any(|t| t == "*");
        if all_tables && (names.len() > 1 || !table_options.is_empty()) {
            return Err(problem(
                "tables = [\"*\"] cannot be combined with table names".into(),
            ));
        }
        if !all_tables {
            if let Some(table) = names.iter().find(|t| split_table_name(t).is_none()) {
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
            tables: if all_tables { vec![] } else { names },
            all_tables,
            table_options,
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
    fn table_entries_may_be_tables_with_columns_and_a_filter() {
        let config = parse(&MINIMAL.replace(
            "\"public.users\"",
            "{ name = \"public.users\", exclude_columns = [\"password_hash\"], where = \"tenant = 7\" }",
        ))
        .unwrap();
        assert_eq!(config.tables, vec!["public.events", "public.users"]);
        let users = &config.table_options["public.users"];
        assert_eq!(
            users.exclude_columns.as_deref(),
            Some(&["password_hash".to_string()][..])
        );
        assert_eq!(users.row_filter.as_deref(), Some("tenant = 7"));
        assert!(!config.table_options.contains_key("public.events"));
        let config = parse(&MINIMAL.replace(
            "\"public.users\"",
            "{ name = \"public.users\", append_only = true }",
        ))
        .unwrap();
        assert!(config.is_append_only("public.users") && !config.is_append_only("public.events"));
        assert_eq!(config.append_publication(), "deltarelay_app_pg_append");
        for (entry, says) in [
            (
                "{ name = \"public.users\", columns = [\"id\"], exclude_columns = [\"x\"] }",
                "cannot both",
            ),
            ("{ name = \"public.users\", colums = [\"id\"] }", "colums"),
            (
                "{ name = \"public.users\", where = \"true; DROP TABLE x\" }",
                "one SQL condition",
            ),
            (
                "{ name = \"public.users\", columns = [] }",
                "must list column names",
            ),
            ("{ name = \"users\" }", "schema.table"),
            ("\"public.events\"", "listed twice"),
            (
                "{ name = \"public.users\", append_only = true, where = \"a = 1\" }",
                "append_only cannot",
            ),
        ] {
            let err = parse(&MINIMAL.replace("\"public.users\"", entry)).unwrap_err();
            assert!(err.to_string().contains(says), "{entry}: {err}");
        }
    }

    #[test]
    fn a_star_means_every_table() {
        let config =
            parse(&MINIMAL.replace("\"public.events\", \"public.users\"", "\"*\"")).unwrap();
        assert!(config.all_tables);
        assert!(config.tables.is_empty());
    }
}
