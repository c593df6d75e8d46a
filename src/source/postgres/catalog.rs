//! Ordinary-SQL conversations with the upstream database (tokio-postgres): prerequisites,
//! the publication, the slot, table keys and column types.

use super::values::{builtin_value_type, ValueType};
use super::Lsn;
use crate::config::split_table_name;
use std::collections::HashMap;
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("query failed: {}", super::pg_error::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Unusable(String),
}

/// Connects an ordinary (non-replication) session; the connection task runs in the background.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    connect_tls(config, &super::tls::PgTls::from_config(config)).await
}

/// [`connect`] with TLS as `tls` says.
pub async fn connect_tls(
    config: &tokio_postgres::Config,
    tls: &super::tls::PgTls,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.make_connect()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "catalog connection ended");
        }
    });
    Ok(client)
}

/// Refuses to start when the server cannot do logical replication at all.
pub async fn check_wal_level(client: &Client) -> Result<(), CatalogError> {
    let level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if level != "logical" {
        return Err(CatalogError::Unusable(format!(
            "wal_level is {level:?}, logical replication needs \"logical\": \
             run ALTER SYSTEM SET wal_level = logical; and restart Postgres"
        )));
    }
    Ok(())
}

/// Why a table cannot be synced, and what to do about it.
#[derive(Debug, Clone)]
pub struct TableProblem {
    pub table: String,
    pub detail: String,
    pub fix: String,
}

impl TableProblem {
    fn new(table: &str, detail: String, fix: String) -> TableProblem {
        TableProblem {
            table: table.to_string(),
            detail,
            fix,
        }
    }
}

/// The configured tables that cannot be synced, each with why and the fix. The others sync.
pub async fn table_problems(
    client: &Client,
    tables: &[String],
    append_only: impl Fn(&str) -> bool,
) -> Result<Vec<TableProblem>, CatalogError> {
    let mut problems = Vec::new();
    for table in tables {
        if let Some(problem) = table_problem(client, table, !append_only(table)).await? {
            problems.push(problem);
        }
    }
    Ok(problems)
}

/// `None` when `table` exists, the role may read it and (when `needs_key`: it is not
/// append-only) it has a row identity we can key on.
pub async fn table_problem(
    client: &Client,
    table: &str,
    needs_key: bool,
) -> Result<Option<TableProblem>, CatalogError> {
    let Some((schema, name)) = split_table_name(table) else {
        return Ok(Some(TableProblem::new(
            table,
            format!("table {table:?} is not schema.table"),
            format!("write it as \"public.{table}\""),
        )));
    };
    let row = client
        .query_opt(
            "SELECT c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    has_table_privilege(c.oid, 'SELECT'), current_user::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Some(TableProblem::new(
            table,
            format!("table {table} does not exist (or is not a table)"),
            format!(
                "create it, or correct or remove \"{table}\" in the tables list of this source"
            ),
        )));
    };
    let identity: String = row.get(0);
    let has_pk: bool = row.get(1);
    let readable: bool = row.get(2);
    let user: String = row.get(3);
    if !readable {
        return Ok(Some(TableProblem::new(
            table,
            format!("role {user} may not SELECT from table {table} (the initial copy reads it)"),
            format!(
                "GRANT SELECT ON {} TO {};",
                quote_table(table),
                quote_ident(&user)
            ),
        )));
    }
    let usable = match identity.as_str() {
        "f" | "i" => true,
        "d" => has_pk,
        _ => false,
    };
    Ok((needs_key && !usable).then(|| {
        TableProblem::new(
            table,
            format!(
                "table {table} has no primary key and REPLICA IDENTITY {}, so its rows cannot be told apart \
                 (and Postgres rejects its UPDATEs and DELETEs once it is published)",
                if identity == "n" { "NOTHING" } else { "DEFAULT" }
            ),
            format!(
                "add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL (or USING INDEX <unique index>); \
                 or, for an insert-only table, write its entry {{ name = \"{table}\", append_only = true }}",
                quote_table(table)
            ),
        )
    }))
}

/// Creates the publication if missing, and adds configured tables it lacks.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[String],
    all_tables: bool,
) -> Result<(), CatalogError> {
    let existing = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let quoted: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    // A partitioned table's changes are published as its root's, one collection whatever
    // partition a row is in (else they would come as the partitions', which are not synced).
    const VIA_ROOT: &str = " WITH (publish_via_partition_root = true)";
    match existing {
        None if all_tables => {
            tracing::info!(publication, "creating publication FOR ALL TABLES");
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR ALL TABLES{VIA_ROOT}",
                    quote_ident(publication)
                ))
                .await?;
        }
        None => {
            tracing::info!(publication, tables = ?tables, "creating publication");
            // Without any table to sync (all broken), an empty publication: tables join later.
            let for_tables = if quoted.is_empty() {
                String::new()
            } else {
                format!(" FOR TABLE {}", quoted.join(", "))
            };
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {}{for_tables}{VIA_ROOT}",
                    quote_ident(publication)
                ))
                .await?;
        }
        Some(row) => {
            let is_all: bool = row.get(0);
            let via_root: bool = row.get(1);
            if !via_root {
                tracing::info!(
                    publication,
                    "publishing partitioned tables' changes as their root's"
                );
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                        quote_ident(publication)
                    ))
                    .await?;
            }
            if all_tables || is_all {
                if all_tables != is_all {
                    return Err(CatalogError::Unusable(format!(
                        "publication {publication} exists {} FOR ALL TABLES but the config says otherwise: \
                         drop it (DROP PUBLICATION {publication}) or fix tables",
                        if is_all { "as" } else { "but not as" }
                    )));
                }
                return Ok(());
            }
            let published = published_tables(client, publication).await?;
            for (table, quoted) in tables.iter().zip(&quoted) {
                if !published.contains(table) {
                    tracing::info!(publication, table, "adding table to publication");
                    client
                        .batch_execute(&format!(
                            "ALTER PUBLICATION {} ADD TABLE {quoted}",
                            quote_ident(publication)
                        ))
                        .await?;
                }
            }
        }
    }
    Ok(())
}

/// Every table a `FOR ALL TABLES` publication publishes that has a usable row identity; the
/// others are skipped with a warning, as the stream skips them.
pub async fn published_tables_with_keys(
    client: &Client,
    publication: &str,
) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT pt.schemaname || '.' || pt.tablename, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
               FROM pg_publication_tables pt
               JOIN pg_namespace n ON n.nspname = pt.schemaname
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
              WHERE pt.pubname = $1 AND pt.schemaname <> 'deltarelay'
              ORDER BY 1",
            &[&publication],
        )
        .await?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let table: String = row.get(0);
        let identity: String = row.get(1);
        let has_pk: bool = row.get(2);
        match identity.as_str() {
            "f" | "i" => tables.push(table),
            "d" if has_pk => tables.push(table),
            _ => {
                tracing::warn!(%table, "skipping a table without a primary key or replica identity: add a primary key or set REPLICA IDENTITY FULL to sync it")
            }
        }
    }
    Ok(tables)
}

/// Creates the publication of append-only tables if there are any and it is missing
/// (`publish = 'insert, truncate'`,
/// so Postgres never asks these tables for a replica identity), adds `tables` it lacks and
/// takes out the ones it should not have. Returns (whether it exists, whether it was
/// created just now).
pub async fn ensure_append_publication(
    client: &Client,
    publication: &str,
    tables: &[String],
) -> Result<(bool, bool), CatalogError> {
    let quoted_pub = quote_ident(publication);
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists && tables.is_empty() {
        // Only when needed: the role may not be allowed to create publications.
        return Ok((false, false));
    }
    if !exists {
        tracing::info!(
            publication,
            "creating the publication of append-only tables"
        );
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted_pub} WITH (publish = 'insert, truncate', publish_via_partition_root = true)"
            ))
            .await?;
    }
    let published = published_tables(client, publication).await?;
    for table in tables.iter().filter(|t| !published.contains(t)) {
        tracing::info!(
            publication,
            table,
            "adding append-only table to its publication"
        );
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {quoted_pub} ADD TABLE {}",
                quote_table(table)
            ))
            .await?;
    }
    for table in published.iter().filter(|t| !tables.contains(t)) {
        remove_from_publication(client, publication, table).await?;
    }
    Ok((true, !exists))
}

/// The tables a publication publishes (`schema.table`; partitioned tables by their root).
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The partitioned tables among `tables`.
pub async fn partitioned(client: &Client, tables: &[String]) -> Result<Vec<String>, CatalogError> {
    let mut roots = Vec::new();
    for table in tables {
        let kind: Option<String> = client
            .query_one(
                "SELECT (SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1))",
                &[&quote_table(table)],
            )
            .await?
            .get(0);
        if kind.as_deref() == Some("p") {
            roots.push(table.clone());
        }
    }
    Ok(roots)
}

/// The leaf partitions of a partitioned table now (their OIDs, sorted); empty when it is gone.
pub async fn partitions(client: &Client, root: &str) -> Result<Vec<u32>, CatalogError> {
    let rows = client
        .query(
            "SELECT relid::oid FROM pg_partition_tree(to_regclass($1))
              WHERE isleaf ORDER BY 1",
            &[&quote_table(root)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Takes a table that is no longer configured out of the publication (if it is in it).
pub async fn remove_from_publication(
    client: &Client,
    publication: &str,
    table: &str,
) -> Result<(), CatalogError> {
    let Some((schema, name)) = split_table_name(table) else {
        return Ok(());
    };
    let published: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
            &[&publication, &schema, &name],
        )
        .await?
        .get(0);
    if published {
        tracing::info!(publication, table, "removing table from publication");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(publication),
                quote_table(table)
            ))
            .await?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SlotState {
    pub confirmed_flush: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PG13+).
    pub wal_status: Option<String>,
    pub plugin: Option<String>,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status, plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| SlotState {
        confirmed_flush: row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok()),
        wal_status: row.get(1),
        plugin: row.get(2),
    }))
}

/// Primary-key column names of a table, in key order (empty without a primary key).
pub async fn primary_key(client: &Client, relation_id: u32) -> Result<Vec<String>, CatalogError> {
    index_columns(client, relation_id, IndexKind::Primary).await
}

/// The columns of the index chosen by `REPLICA IDENTITY USING INDEX`, in index order.
pub async fn replica_identity_index(
    client: &Client,
    relation_id: u32,
) -> Result<Vec<String>, CatalogError> {
    index_columns(client, relation_id, IndexKind::ReplicaIdentity).await
}

enum IndexKind {
    Primary,
    ReplicaIdentity,
}

async fn index_columns(
    client: &Client,
    relation_id: u32,
    kind: IndexKind,
) -> Result<Vec<String>, CatalogError> {
    let flag = match kind {
        IndexKind::Primary => "i.indisprimary",
        IndexKind::ReplicaIdentity => "i.indisreplident",
    };
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text
                   FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = $1 AND {flag}
                  ORDER BY k.ord"
            ),
            &[&relation_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Resolves type OIDs to [`ValueType`]s: built-ins directly, domains to their base type,
/// user-defined arrays to their element type, enums and the rest to text.
#[derive(Default)]
pub struct TypeCache {
    known: HashMap<u32, ValueType>,
}

impl TypeCache {
    pub async fn resolve(&mut self, client: &Client, oid: u32) -> Result<ValueType, CatalogError> {
        if let Some(t) = builtin_value_type(oid).or_else(|| self.known.get(&oid).copied()) {
            return Ok(t);
        }
        let resolved = self.resolve_uncached(client, oid).await?;
        self.known.insert(oid, resolved);
        Ok(resolved)
    }

    async fn resolve_uncached(&self, client: &Client, oid: u32) -> Result<ValueType, CatalogError> {
        // Follow domains down to their base type (bounded: domains over domains are rare).
        let mut current = oid;
        for _ in 0..16 {
            if let Some(t) = builtin_value_type(current) {
                return Ok(t);
            }
            let row = client
                .query_opt(
                    "SELECT typtype::text, typbasetype, typelem, typdelim::text, typcategory::text
                       FROM pg_type WHERE oid = $1",
                    &[&current],
                )
                .await?;
            let Some(row) = row else { break };
            let typtype: String = row.get(0);
            let base: u32 = row.get(1);
            let element: u32 = row.get(2);
            let delimiter: String = row.get(3);
            let category: String = row.get(4);
            if typtype == "d" {
                current = base;
                continue;
            }
            if category == "A" && element != 0 {
                let element = match Box::pin(self.resolve_uncached(client, element)).await? {
                    ValueType::Scalar(e) => e,
                    ValueType::Array { element, .. } => element,
                };
                return Ok(ValueType::Array {
                    element,
                    delimiter: delimiter.bytes().next().unwrap_or(b','),
                });
            }
            break;
        }
        // Enums, composites, ranges, extension types: their text form.
        Ok(ValueType::Scalar(current))
    }
}

/// `schema.table` quoted as an identifier pair.
pub fn quote_table(table: &str) -> String {
    match split_table_name(table) {
        Some((schema, name)) => format!("{}.{}", quote_ident(schema), quote_ident(name)),
        None => quote_ident(table),
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops the replication slot so Postgres stops holding WAL for it. `Ok(false)`: no such slot.
/// Fails while a process streams from it (stop the relay first).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, CatalogError> {
    let row = client
        .query_opt(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let (active, pid): (bool, Option<i32>) = (row.get(0), row.get(1));
    if active {
        return Err(CatalogError::Unusable(format!(
            "replication slot {slot} is in use by server process {}: stop the relay (systemctl stop deltarelay) first",
            pid.map_or("?".to_string(), |p| p.to_string())
        )));
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    Ok(true)
}

/// Drops the publication. `Ok(false)`: no such publication.
pub async fn drop_publication(client: &Client, publication: &str) -> Result<bool, CatalogError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if exists {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
            .await?;
    }
    Ok(exists)
}
