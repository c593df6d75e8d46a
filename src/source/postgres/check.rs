//! Postgres prerequisites, checked over an ordinary connection as the configured role (plus
//! one replication connection, the way the relay itself connects).

use super::catalog::{self, quote_ident, quote_table, CatalogError};
use super::config::PostgresConfig;
use super::filters;
use super::replication::ReplicationConnection;
use crate::check::{CheckResult, Status};
use tokio_postgres::Client;

/// Slot lag past which `check` warns: this much WAL is held on the server's disk.
const LAG_WARN_BYTES: i64 = 1 << 30;

/// Every check for one Postgres source. Stops after the connection check when it fails.
pub async fn check(source: &PostgresConfig) -> Vec<CheckResult> {
    let scope = source.name.as_str();
    let (pg, tls) = match super::tls::parse(&source.url) {
        Ok(parsed) => parsed,
        Err(e) => {
            return vec![CheckResult::fail(
                scope,
                "url",
                format!("unusable connection URL: {e}"),
                "write it as postgres://USER:PASSWORD@HOST:5432/DATABASE",
            )]
        }
    };
    let client = match catalog::connect_tls(&pg, &tls).await {
        Ok(client) => client,
        Err(e) => {
            return vec![CheckResult::fail(
                scope,
                "connect",
                format!("cannot connect: {e}"),
                "check host, port, user, password and database in the URL, and that pg_hba.conf admits this role from this host",
            )]
        }
    };
    let checks = Checks {
        scope,
        source,
        client: &client,
    };
    let mut results = vec![CheckResult::pass(scope, "connect", "connected")];
    results.push(checks.wal_level().await);
    results.push(checks.slot_headroom().await);
    results.push(checks.sender_headroom().await);
    let role = checks.role().await;
    let may_replicate = role.status != Status::Fail;
    results.push(role);
    if may_replicate {
        results.push(replication_connection(scope, &pg, &tls).await);
    }
    results.extend(checks.tables().await);
    results.push(checks.publication().await);
    results.push(checks.wal_keep_size().await);
    results.push(checks.slot().await);
    results
}

struct Checks<'a> {
    scope: &'a str,
    source: &'a PostgresConfig,
    client: &'a Client,
}

impl Checks<'_> {
    fn pass(&self, name: &str, detail: impl Into<String>) -> CheckResult {
        CheckResult::pass(self.scope, name, detail)
    }

    fn warn(&self, name: &str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult::warn(self.scope, name, detail, fix)
    }

    fn fail(&self, name: &str, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult::fail(self.scope, name, detail, fix)
    }

    /// A check whose query failed is a failed check (e.g. a permission error).
    fn or_query_failed(
        &self,
        name: &str,
        result: Result<CheckResult, CatalogError>,
    ) -> CheckResult {
        result.unwrap_or_else(|e| {
            self.fail(
                name,
                format!("could not check: {e}"),
                "run the check as the configured role against a Postgres 13 or newer",
            )
        })
    }

    async fn wal_level(&self) -> CheckResult {
        let result = async {
            let level: String = self.client.query_one("SHOW wal_level", &[]).await?.get(0);
            Ok(if level == "logical" {
                self.pass("wal_level", "logical")
            } else {
                self.fail(
                    "wal_level",
                    format!("wal_level is {level:?}; logical replication needs \"logical\""),
                    "as a superuser: ALTER SYSTEM SET wal_level = logical; then restart Postgres (systemctl restart postgresql)",
                )
            })
        };
        self.or_query_failed("wal_level", result.await)
    }

    async fn slot_headroom(&self) -> CheckResult {
        self.headroom(
            "max_replication_slots",
            "replication slots",
            "SELECT current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&self.source.slot],
            "drop an unused slot (SELECT pg_drop_replication_slot('name')) or ",
        )
        .await
    }

    async fn sender_headroom(&self) -> CheckResult {
        self.headroom(
            "max_wal_senders",
            "WAL senders",
            "SELECT current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_replication)::int,
                    false",
            &[],
            "",
        )
        .await
    }

    /// `sql` returns (the setting, how many are in use, whether one is already ours); the
    /// relay needs one free unless it already has one.
    async fn headroom(
        &self,
        setting: &str,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        fix_first: &str,
    ) -> CheckResult {
        let result = async {
            let row = self.client.query_one(sql, params).await?;
            let (max, used, ours): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
            Ok(if ours || used < max {
                self.pass(setting, format!("{used} of {max} {what} in use"))
            } else {
                self.fail(
                    setting,
                    format!("all {max} {what} are in use; the relay needs one"),
                    format!(
                        "{fix_first}ALTER SYSTEM SET {setting} = {}; and restart Postgres",
                        max + 2
                    ),
                )
            })
        };
        self.or_query_failed(setting, result.await)
    }

    async fn role(&self) -> CheckResult {
        let name = "replication privilege";
        let result = async {
            let row = self
                .client
                .query_one(
                    "SELECT current_user::text, rolreplication, rolsuper
                       FROM pg_roles WHERE rolname = current_user",
                    &[],
                )
                .await?;
            let (user, replication, superuser): (String, bool, bool) =
                (row.get(0), row.get(1), row.get(2));
            Ok(if replication || superuser {
                self.pass(
                    name,
                    format!(
                        "role {user} has {}",
                        if superuser {
                            "SUPERUSER"
                        } else {
                            "REPLICATION"
                        }
                    ),
                )
            } else {
                self.fail(
                    name,
                    format!("role {user} has neither REPLICATION nor SUPERUSER"),
                    format!(
                        "as a superuser: ALTER ROLE {} WITH REPLICATION;",
                        quote_ident(&user)
                    ),
                )
            })
        };
        self.or_query_failed(name, result.await)
    }

    /// The configured tables, or every user table for `["*"]`.
    async fn table_names(&self) -> Result<Vec<String>, CatalogError> {
        if !self.source.all_tables {
            return Ok(self.source.tables.clone());
        }
        let rows = self
            .client
            .query(
                "SELECT n.nspname || '.' || c.relname
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                  ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Per table: it exists, the role may read it, and it has a key.
    async fn tables(&self) -> Vec<CheckResult> {
        let tables = match self.table_names().await {
            Ok(tables) => tables,
            Err(e) => return vec![self.or_query_failed("tables", Err(e))],
        };
        let mut results = Vec::new();
        for table in &tables {
            let name = format!("table {table}");
            let result = self.table(table, &name).await;
            results.push(self.or_query_failed(&name, result));
        }
        results
    }

    async fn table(&self, table: &str, name: &str) -> Result<CheckResult, CatalogError> {
        let needs_key = !self.source.is_append_only(table);
        if let Some(problem) = catalog::table_problem(self.client, table, needs_key).await? {
            return Ok(self.fail(name, problem.detail, problem.fix));
        }
        if let Some(options) = self.source.table_options.get(table) {
            let spec = match filters::resolve(self.client, options).await? {
                Ok(spec) => spec,
                Err(problem) => return Ok(self.fail(name, problem.detail, problem.fix)),
            };
            if let Err(problem) =
                filters::apply(self.client, table, &spec, filters::Target::DryRun).await?
            {
                return Ok(self.fail(name, problem.detail, problem.fix));
            }
            return Ok(self.pass(
                name,
                "exists, readable, has a key; its columns and where are accepted",
            ));
        }
        Ok(self.pass(name, "exists, readable, has a key"))
    }

    async fn publication(&self) -> CheckResult {
        let name = "publication";
        let result = self.publication_inner(name).await;
        self.or_query_failed(name, result)
    }

    async fn publication_inner(&self, name: &str) -> Result<CheckResult, CatalogError> {
        let publication = self.source.publication.clone();
        let quoted_pub = quote_ident(&publication);
        let row = self
            .client
            .query_opt(
                "SELECT puballtables, pubupdate AND pubdelete FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        let all = self.source.all_tables;
        let create = if all {
            format!("as a superuser: CREATE PUBLICATION {quoted_pub} FOR ALL TABLES;")
        } else {
            let tables: Vec<String> = self.source.tables.iter().map(|t| quote_table(t)).collect();
            format!(
                "as the tables' owner: CREATE PUBLICATION {quoted_pub} FOR TABLE {};",
                tables.join(", ")
            )
        };
        let Some(row) = row else {
            return Ok(if self.may_create_publication().await? {
                self.pass(
                    name,
                    format!(
                        "{publication} does not exist yet; the relay creates it on first start"
                    ),
                )
            } else {
                self.fail(
                    name,
                    format!("{publication} does not exist and this role may not create it"),
                    create,
                )
            });
        };
        let (is_all, updates_and_deletes): (bool, bool) = (row.get(0), row.get(1));
        if is_all != all {
            return Ok(self.fail(
                name,
                format!(
                    "{publication} is {} FOR ALL TABLES but tables = {:?}",
                    if is_all { "" } else { "not" },
                    self.source.tables
                ),
                format!("DROP PUBLICATION {quoted_pub}; then {create}"),
            ));
        }
        if !updates_and_deletes {
            return Ok(self.fail(
                name,
                format!("{publication} does not publish every UPDATE and DELETE"),
                format!("ALTER PUBLICATION {quoted_pub} SET (publish = 'insert, update, delete, truncate');"),
            ));
        }
        if is_all {
            return Ok(self.pass(name, format!("{publication} is FOR ALL TABLES")));
        }
        let rows = self
            .client
            .query(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await?;
        let published: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&String> = self
            .source
            .tables
            .iter()
            .filter(|t| !published.contains(t) && !self.source.is_append_only(t))
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|t| quote_table(t)).collect();
            let detail = format!("{publication} lacks {}", list.join(", "));
            let fix = format!(
                "as the tables' owner: ALTER PUBLICATION {quoted_pub} ADD TABLE {};",
                list.join(", ")
            );
            return Ok(if self.owns_all(&missing).await? {
                self.warn(name, format!("{detail}; the relay adds them on start"), fix)
            } else {
                self.fail(name, detail, fix)
            });
        }
        let extra: Vec<&String> = published
            .iter()
            .filter(|t| !self.source.tables.contains(t))
            .collect();
        if !extra.is_empty() {
            let list: Vec<String> = extra.iter().map(|t| quote_table(t)).collect();
            return Ok(self.warn(
                name,
                format!(
                    "{publication} also publishes {}, which tables does not list",
                    list.join(", ")
                ),
                format!(
                    "add them to tables, or ALTER PUBLICATION {quoted_pub} DROP TABLE {};",
                    list.join(", ")
                ),
            ));
        }
        Ok(self.pass(
            name,
            format!("{publication} publishes exactly the configured tables"),
        ))
    }

    /// CREATE PUBLICATION needs CREATE on the database and owning every table (superuser for
    /// FOR ALL TABLES).
    async fn may_create_publication(&self) -> Result<bool, CatalogError> {
        let superuser: bool = self
            .client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        if superuser {
            return Ok(true);
        }
        if self.source.all_tables {
            return Ok(false);
        }
        let may_create: bool = self
            .client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await?
            .get(0);
        let tables: Vec<&String> = self.source.tables.iter().collect();
        Ok(may_create && self.owns_all(&tables).await?)
    }

    async fn owns_all(&self, tables: &[&String]) -> Result<bool, CatalogError> {
        for table in tables {
            let owns: Option<bool> = self
                .client
                .query_one(
                    "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass($1)",
                    &[&quote_table(table)],
                )
                .await
                .map(|row| row.get(0))
                .unwrap_or(None);
            if owns != Some(true) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn wal_keep_size(&self) -> CheckResult {
        let name = "max_slot_wal_keep_size";
        let result = async {
            let value: Option<String> = self
                .client
                .query_one(
                    "SELECT current_setting('max_slot_wal_keep_size', true)",
                    &[],
                )
                .await?
                .get(0);
            Ok(match value.as_deref() {
                None => self.warn(
                    name,
                    "this Postgres (before 13) cannot cap the WAL a slot holds",
                    "watch the disk while the relay is stopped; upgrade to Postgres 13 or newer",
                ),
                Some("-1") => self.warn(
                    name,
                    "unlimited: while the relay is stopped, Postgres keeps all WAL since the slot's position, until the disk fills",
                    "cap it above your longest expected outage: ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf(); \
                     (past the cap the slot is lost and the relay must copy the tables again)",
                ),
                Some(size) => self.pass(
                    name,
                    format!("{size}: past this the slot is lost and the relay must copy the tables again"),
                ),
            })
        };
        self.or_query_failed(name, result.await)
    }

    async fn slot(&self) -> CheckResult {
        let name = "slot";
        let result = async {
            let slot = &self.source.slot;
            let row = self
                .client
                .query_opt(
                    "SELECT plugin::text, database::text = current_database(), active, wal_status,
                            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await?;
            let Some(row) = row else {
                return Ok(self.pass(
                    name,
                    format!("{slot} does not exist yet; the relay creates it on first start"),
                ));
            };
            let plugin: Option<String> = row.get(0);
            let same_db: Option<bool> = row.get(1);
            let active: bool = row.get(2);
            let wal_status: Option<String> = row.get(3);
            let lag: Option<i64> = row.get(4);
            let drop = format!("deltarelay slot drop --source {} (with the relay stopped), or choose another slot name", self.scope);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Ok(self.fail(
                    name,
                    format!("{slot} exists but is not a pgoutput slot of this database (plugin {plugin:?})"),
                    drop,
                ));
            }
            if wal_status.as_deref() == Some("lost") {
                return Ok(self.fail(
                    name,
                    format!("{slot} is lost: Postgres removed WAL it still needed"),
                    format!("{drop}; then move the log directory away so the relay copies the tables again (clients get 410 and resync)"),
                ));
            }
            let lag_text = lag.map_or("unknown".to_string(), |b| format!("{} MiB", b / (1 << 20)));
            let state = if active { "active" } else { "inactive" };
            if lag.unwrap_or(0) > LAG_WARN_BYTES
                || matches!(wal_status.as_deref(), Some("unreserved" | "extended"))
            {
                return Ok(self.warn(
                    name,
                    format!("{slot} is {state}, {lag_text} behind (wal_status {wal_status:?}): Postgres holds that WAL"),
                    "start the relay so it catches up; if it stays stopped for good, drop the slot with deltarelay slot drop",
                ));
            }
            Ok(self.pass(name, format!("{slot} is {state}, {lag_text} behind")))
        };
        self.or_query_failed(name, result.await)
    }
}

/// The relay's own kind of connection (`replication=database`) must be admitted.
async fn replication_connection(
    scope: &str,
    pg: &tokio_postgres::Config,
    tls: &super::tls::PgTls,
) -> CheckResult {
    let name = "replication connection";
    let attempt = async {
        let mut conn = ReplicationConnection::connect_tls(pg, tls, &[]).await?;
        let system = conn.identify_system().await?;
        drop(conn);
        Ok::<_, super::replication::ReplicationError>(system)
    };
    match attempt.await {
        Ok(system) => CheckResult::pass(
            scope,
            name,
            format!("admitted (system {}, WAL at {})", system.system_id, system.xlog_pos),
        ),
        Err(e) => CheckResult::fail(
            scope,
            name,
            format!("refused: {e}"),
            "logical replication connections are matched in pg_hba.conf by database name: admit this role and database from this host, and keep max_wal_senders above the senders in use",
        ),
    }
}
