//! Per-table column lists and row filters (Postgres 15+): a table entry's `columns`,
//! `exclude_columns` and `where` become the publication's column list and row filter, so
//! excluded columns and rows never leave the database, and the initial copy reads the same.
//!
//! Each is tried in a transaction before it is committed: Postgres accepts a column list
//! without the replica identity, or a row filter on other columns, and then refuses the
//! application's UPDATEs and DELETEs on the table. A dry `EXPLAIN UPDATE`/`EXPLAIN DELETE`
//! inside the transaction runs that same check; a refusal leaves the table unsynced (with the
//! server's words and the fix) rather than breaking the application.

use super::catalog::{quote_ident, quote_table, CatalogError, TableProblem};
use super::config::TableOptions;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// What of a table the publication publishes and the copy reads; the default is all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// The columns published, in table order (`None`: every column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The row filter, as configured.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<String>,
}

impl TableSpec {
    pub fn is_whole(&self) -> bool {
        self.columns.is_none() && self.row_filter.is_none()
    }

    /// The stored form, compared at each start to find tables whose spec changed.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `"t" ("a", "b") WHERE (…)`, as `ADD TABLE` and `CREATE PUBLICATION … FOR TABLE` take it.
    fn publication_entry(&self, table: &str) -> String {
        let mut entry = quote_table(table);
        if let Some(columns) = &self.columns {
            let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            entry.push_str(&format!(" ({})", quoted.join(", ")));
        }
        if let Some(filter) = &self.row_filter {
            entry.push_str(&format!(" WHERE ({filter})"));
        }
        entry
    }
}

/// Turns a table entry's options into the columns and filter to publish; a column that does
/// not exist (a typo in `exclude_columns` would publish the secret) or a server older than
/// Postgres 15 is a problem of that table.
pub async fn resolve(
    client: &Client,
    options: &TableOptions,
) -> Result<Result<TableSpec, TableProblem>, CatalogError> {
    let table = &options.name;
    let problem = |detail: String, fix: String| {
        Ok(Err(TableProblem {
            table: table.clone(),
            detail,
            fix,
        }))
    };
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < 150000 {
        return problem(
            format!("table {table}: columns, exclude_columns and where need Postgres 15 or newer (the server is {version})"),
            "upgrade Postgres, or remove them from the table's entry".into(),
        );
    }
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                AND attgenerated = ''
              ORDER BY attnum",
            &[&quote_table(table)],
        )
        .await?;
    let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let named = options
        .columns
        .iter()
        .chain(&options.exclude_columns)
        .flatten();
    for column in named {
        if !existing.contains(column) {
            return problem(
                format!("table {table} has no column {column:?} (named in its entry's columns or exclude_columns)"),
                format!("correct the column name in the entry of {table} (it has {})", existing.join(", ")),
            );
        }
    }
    let columns = match (&options.columns, &options.exclude_columns) {
        (Some(wanted), _) => Some(
            existing
                .iter()
                .filter(|c| wanted.contains(c))
                .cloned()
                .collect(),
        ),
        (None, Some(excluded)) => Some(
            existing
                .iter()
                .filter(|c| !excluded.contains(c))
                .cloned()
                .collect(),
        ),
        (None, None) => None,
    };
    Ok(Ok(TableSpec {
        columns,
        row_filter: options.row_filter.clone(),
    }))
}

/// Where a spec is tried.
pub enum Target<'a> {
    /// Put into this publication (taken out first when `published`), committed when it passes.
    Publication { name: &'a str, published: bool },
    /// Only tried, in a scratch publication, and rolled back (`deltarelay check`).
    DryRun,
}

/// Publishes `table` as `spec` says, after checking that Postgres will still accept the
/// application's UPDATEs and DELETEs on it. `Ok(Err(problem))`: the server refused it.
pub async fn apply(
    client: &Client,
    table: &str,
    spec: &TableSpec,
    target: Target<'_>,
) -> Result<Result<(), TableProblem>, CatalogError> {
    client.batch_execute("BEGIN").await?;
    let tried = try_in_transaction(client, table, spec, &target).await;
    let commit = matches!(target, Target::Publication { .. }) && tried.is_ok();
    client
        .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
        .await?;
    match tried {
        Ok(()) => Ok(Ok(())),
        Err(e) => match e.as_db_error() {
            Some(db) => Ok(Err(refused(table, spec, db.code().code(), &e))),
            None => Err(e.into()),
        },
    }
}

async fn try_in_transaction(
    client: &Client,
    table: &str,
    spec: &TableSpec,
    target: &Target<'_>,
) -> Result<(), tokio_postgres::Error> {
    // One statement per call (extended protocol): a `where` cannot smuggle in another.
    match target {
        Target::Publication { name, published } => {
            let publication = quote_ident(name);
            if *published {
                client
                    .execute(
                        &format!(
                            "ALTER PUBLICATION {publication} DROP TABLE {}",
                            quote_table(table)
                        ),
                        &[],
                    )
                    .await?;
            }
            client
                .execute(
                    &format!(
                        "ALTER PUBLICATION {publication} ADD TABLE {}",
                        spec.publication_entry(table)
                    ),
                    &[],
                )
                .await?;
        }
        Target::DryRun => {
            client
                .execute(
                    &format!(
                        "CREATE PUBLICATION deltarelay_check_scratch FOR TABLE {}",
                        spec.publication_entry(table)
                    ),
                    &[],
                )
                .await?;
        }
    }
    // Any column an UPDATE may set will do (not a generated or always-identity one).
    let column: Option<String> = client
        .query_one(
            "SELECT (SELECT attname::text FROM pg_attribute
                      WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                        AND attgenerated = '' AND attidentity <> 'a'
                      ORDER BY attnum LIMIT 1)",
            &[&quote_table(table)],
        )
        .await?
        .get(0);
    let quoted = quote_table(table);
    if let Some(column) = column {
        let column = quote_ident(&column);
        client
            .execute(
                &format!("EXPLAIN UPDATE {quoted} SET {column} = {column} WHERE false"),
                &[],
            )
            .await?;
    }
    client
        .execute(&format!("EXPLAIN DELETE FROM {quoted} WHERE false"), &[])
        .await?;
    Ok(())
}

/// The table's problem when the server refused its spec, with the fix.
fn refused(
    table: &str,
    spec: &TableSpec,
    sqlstate: &str,
    error: &tokio_postgres::Error,
) -> TableProblem {
    let said = super::pg_error::describe(error);
    let fix = if sqlstate == "42P10" {
        // CheckCmdReplicaIdentity: the column list lacks a key column, or the filter uses
        // a column outside the replica identity.
        format!(
            "include every key column in columns, and use only key columns in where \
             (or run ALTER TABLE {} REPLICA IDENTITY FULL, which allows any column in where but no column list)",
            quote_table(table)
        )
    } else if spec.row_filter.is_some() {
        format!("correct the where of {table} in the config (a condition on the row's own columns; no functions, subqueries or user-defined types)")
    } else {
        format!("correct the entry of {table} in the config")
    };
    TableProblem {
        table: table.to_string(),
        detail: format!("Postgres refuses the columns/where of table {table}: {said}"),
        fix,
    }
}
