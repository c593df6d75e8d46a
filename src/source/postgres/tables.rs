//! Which configured tables a session syncs, and the publication that carries them: tables the
//! relay cannot sync are set aside with their problem (the others flow), plain tables are
//! added to the publication, and tables with columns or a row filter are published as their
//! spec says ([`super::filters`]).

use super::catalog::{self, CatalogError, TableProblem};
use super::filters::{self, TableSpec, Target};
use super::Lsn;
use super::PostgresConfig;
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::Client;

/// What a session starts from.
pub struct Prepared {
    /// The tables to sync (for `["*"]`: every published table with a key).
    pub tables: Vec<String>,
    /// Column lists and row filters, by table.
    pub specs: BTreeMap<String, TableSpec>,
    /// Configured tables that cannot be synced, with why and the fix.
    pub problems: Vec<TableProblem>,
    /// Tables whose spec was just changed, with the WAL position after the change: their
    /// changes committed before it were decoded with the old spec, and the copy that follows
    /// (from a later snapshot) covers them, so the stream drops them.
    pub respec: HashMap<String, Lsn>,
    /// The synced append-only tables (in `tables` too).
    pub append_tables: Vec<String>,
    /// When the append-only publication was created just now: the WAL position after it.
    /// A slot cannot decode with a publication from before its creation, so the stream adds
    /// it only once it has passed this position.
    pub append_created: Option<Lsn>,
    /// Whether the append-only publication exists (it is streamed only then).
    pub append_exists: bool,
}

/// Sorts the configured tables into syncable and not, and brings the publication in line.
/// `stored_specs` are the specs the log's copies were made with.
pub async fn prepare(
    client: &Client,
    config: &PostgresConfig,
    stored_specs: &BTreeMap<String, String>,
) -> Result<Prepared, CatalogError> {
    let publication = &config.publication;
    let mut problems =
        catalog::table_problems(client, &config.tables, |t| config.is_append_only(t)).await?;
    let mut specs = BTreeMap::new();
    for (table, options) in &config.table_options {
        if options.append_only || problems.iter().any(|p| &p.table == table) {
            continue;
        }
        match filters::resolve(client, options).await? {
            Ok(spec) => {
                specs.insert(table.clone(), spec);
            }
            Err(problem) => problems.push(problem),
        }
    }
    // Tables whose publication entry this relay manages with a spec (now or before).
    let managed = |t: &String| specs.contains_key(t) || stored_specs.contains_key(t);
    let append = |t: &String| config.is_append_only(t);
    let ok = |problems: &[TableProblem], t: &String| !problems.iter().any(|p| &p.table == t);
    let plain: Vec<String> = config
        .tables
        .iter()
        .filter(|t| ok(&problems, t) && !managed(t) && !append(t))
        .cloned()
        .collect();
    catalog::ensure_publication(client, publication, &plain, config.all_tables).await?;
    let mut append_tables = Vec::new();
    let mut append_created = None;
    let mut append_exists = false;
    if !config.all_tables {
        append_tables = config
            .tables
            .iter()
            .filter(|t| ok(&problems, t) && append(t))
            .cloned()
            .collect();
        for table in &append_tables {
            // Never in the publication of updates and deletes.
            catalog::remove_from_publication(client, publication, table).await?;
        }
        let append_publication = config.append_publication();
        let (exists, created) =
            catalog::ensure_append_publication(client, &append_publication, &append_tables).await?;
        append_exists = exists;
        if created {
            append_created = Some(current_wal(client).await?);
        }
    }
    let published = catalog::published_tables(client, publication).await?;
    let mut respec = HashMap::new();
    for table in config.tables.iter().filter(|t| managed(t)) {
        if !ok(&problems, table) {
            continue;
        }
        let spec = specs.get(table).cloned().unwrap_or_default();
        let wanted = (!spec.is_whole()).then(|| spec.to_text());
        let is_published = published.contains(table);
        if is_published && stored_specs.get(table) == wanted.as_ref() {
            continue;
        }
        tracing::info!(publication, table, columns = ?spec.columns, row_filter = ?spec.row_filter, "publishing the table's columns and rows as configured");
        let target = Target::Publication {
            name: publication,
            published: is_published,
        };
        match filters::apply(client, table, &spec, target).await? {
            Ok(()) => {
                respec.insert(table.clone(), current_wal(client).await?);
            }
            Err(problem) => problems.push(problem),
        }
    }
    for problem in &problems {
        // A table that cannot be synced stays out of the publication: published without a
        // replica identity (or with a spec Postgres refuses) the application's UPDATEs and
        // DELETEs on it would fail.
        catalog::remove_from_publication(client, publication, &problem.table).await?;
    }
    specs.retain(|t, _| ok(&problems, t));
    let tables = if config.all_tables {
        catalog::published_tables_with_keys(client, publication).await?
    } else {
        config
            .tables
            .iter()
            .filter(|t| ok(&problems, t))
            .cloned()
            .collect()
    };
    Ok(Prepared {
        tables,
        specs,
        problems,
        respec,
        append_tables,
        append_created,
        append_exists,
    })
}

async fn current_wal(client: &Client) -> Result<Lsn, CatalogError> {
    let now: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    now.parse::<Lsn>()
        .map_err(|e| CatalogError::Unusable(format!("pg_current_wal_lsn: {e}")))
}
