//! The source's own helpers around sessions: copies beside the stream, removed and unsynced
//! tables, the append-only publication's start, starting over after a lost slot.

use super::*;

impl PostgresSource {
    /// A copier for the first start (`beside_stream = false`: nothing else writes this source
    /// meanwhile) or for a copy beside the running stream (its floor is the log's head now).
    pub(super) fn copier(&self, position: Lsn, beside_stream: bool) -> Copier {
        Copier {
            source: self.name.clone(),
            log: self.log.clone(),
            status: self.status.clone(),
            floor: beside_stream.then(|| *self.log.head().borrow()),
            position,
            tls: self.tls.clone(),
            specs: self.specs(),
            append_only: Arc::new(
                self.config
                    .table_options
                    .values()
                    .filter(|o| o.append_only)
                    .map(|o| o.name.clone())
                    .collect(),
            ),
        }
    }

    /// Whether to stream the append-only publication now, and if not, the position the slot
    /// must pass first. A slot cannot decode with a publication created after the position
    /// it decodes from, so a publication created just now (recorded in the log under
    /// `<source>#append`) joins once the slot has passed its creation; with a new slot
    /// (`slot_at` is `None`) it joins at once.
    pub(super) async fn append_publication_start(
        &self,
        append_tables: &[String],
        created: Option<Lsn>,
        slot_at: Option<Lsn>,
    ) -> Result<(bool, Option<Lsn>), SourceError> {
        if self.all_tables {
            return Ok((false, None));
        }
        let key = format!("{}#append", self.name);
        if let Some(created) = created {
            self.log
                .begin()
                .await?
                .commit(&key, created.to_string())
                .await?;
        }
        let from = match self.log.position(&key).await? {
            Some(text) => text.parse::<Lsn>().map_err(|e| SourceError::Config {
                source_name: self.name.to_string(),
                message: format!("the log holds an unreadable position under {key}: {e}"),
            })?,
            None => Lsn(0),
        };
        match slot_at {
            Some(at) if at < from => {
                if !append_tables.is_empty() {
                    tracing::info!(source = %self.name, tables = ?append_tables, position = %from,
                        "the append-only tables join once the stream has passed their new publication");
                }
                Ok((false, (!append_tables.is_empty()).then_some(from)))
            }
            _ => Ok((true, None)),
        }
    }

    pub(super) fn specs(&self) -> Arc<BTreeMap<String, TableSpec>> {
        self.specs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Says loudly which configured tables cannot be synced (the others flow) and the fix,
    /// in the log output, `/v1/status` and `/metrics`.
    pub(super) fn report_unsynced(&self, problems: &[catalog::TableProblem]) {
        for problem in problems {
            log_unsynced(&self.name, problem);
        }
        let unsynced: Vec<UnsyncedTable> = problems.iter().map(unsynced_entry).collect();
        let count = unsynced.len();
        self.status.send_modify(|s| s.unsynced_tables = unsynced);
        metrics::gauge!(telemetry::TABLES_UNSYNCED, "source" => self.name.to_string())
            .set(count as f64);
    }

    /// [`PostgresSource::report_unsynced`] for one more table found while streaming.
    pub(super) fn report_unsynced_more(&self, problem: &catalog::TableProblem) {
        log_unsynced(&self.name, problem);
        let mut count = 0;
        self.status.send_modify(|s| {
            s.unsynced_tables.retain(|t| t.table != problem.table);
            s.unsynced_tables.push(unsynced_entry(problem));
            count = s.unsynced_tables.len();
        });
        metrics::gauge!(telemetry::TABLES_UNSYNCED, "source" => self.name.to_string())
            .set(count as f64);
    }

    pub(super) async fn has_entries(&self) -> Result<bool, SourceError> {
        Ok(self.log.has_entries_of(&self.name).await?)
    }

    /// Tables copied earlier but no longer configured: their entries leave the log and the
    /// table leaves the publication, so they stop being served.
    pub(super) async fn forget_removed_tables(
        &self,
        client: &tokio_postgres::Client,
        tables: &[String],
        mut copied: CopiedTables,
    ) -> Result<CopiedTables, SourceError> {
        let removed: Vec<String> = copied
            .tables
            .iter()
            .filter(|t| !tables.contains(t))
            .cloned()
            .collect();
        if removed.is_empty() {
            return Ok(copied);
        }
        if !self.all_tables {
            for table in &removed {
                catalog::remove_from_publication(client, &self.publication, table).await?;
            }
        }
        let mut txn = self.log.begin().await?;
        for table in &removed {
            tracing::info!(source = %self.name, table, "table is no longer configured: removing its entries from the log");
            txn.remove_collection(table).await?;
            copied.tables.remove(table);
        }
        txn.commit(&CopiedTables::key(&self.name), copied.to_json())
            .await?;
        Ok(copied)
    }

    /// Copies `pending` from a temporary slot's snapshot while the permanent slot streams.
    /// `partitions` are stored as copied once it has finished.
    ///
    /// With append-only tables among them the snapshot is taken before this returns, and its
    /// position is returned: their rows the stream delivers from before it are the copy's
    /// (under other synthetic keys), so the stream drops them. Otherwise it is taken in the
    /// background (it waits for running transactions) while the stream runs.
    pub(super) async fn copy_beside_stream(
        &self,
        pending: Vec<String>,
        copied: CopiedTables,
        partitions: PartitionSets,
    ) -> Result<(CopyTask, Option<Lsn>), SourceError> {
        let (log, name) = (self.log.clone(), self.name.clone());
        let floor_copier = self.copier(Lsn(0), true);
        let pg_config = self.pg_config.clone();
        let tls = self.tls.clone();
        // Temporary slots vanish with their connection; the name only has to be unique now.
        let temporary = format!(
            "{}_copy_{}_{}",
            self.slot,
            std::process::id(),
            rand::random::<u16>()
        );
        let early = if pending.iter().any(|t| self.config.is_append_only(t)) {
            let mut conn =
                ReplicationConnection::connect_tls(&pg_config, &tls, SESSION_PARAMS).await?;
            let created = conn.create_temporary_snapshot_slot(&temporary).await?;
            Some((conn, created))
        } else {
            None
        };
        let snapshot_at = early.as_ref().map(|(_, created)| created.consistent_point);
        let handle = tokio::spawn(async move {
            let (conn, created) = match early {
                Some(early) => early,
                None => {
                    let mut conn =
                        ReplicationConnection::connect_tls(&pg_config, &tls, SESSION_PARAMS)
                            .await?;
                    let created = conn.create_temporary_snapshot_slot(&temporary).await?;
                    (conn, created)
                }
            };
            let snapshot = created.snapshot_name.clone().ok_or_else(|| {
                SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
            })?;
            let copier = Copier {
                position: created.consistent_point,
                ..floor_copier
            };
            let copied = copier
                .run(&pg_config, SESSION_PARAMS, &snapshot, &pending, copied)
                .await?;
            // Keeps the snapshot's slot alive until the copy is done.
            drop(conn);
            partitions.store(&log, &name).await?;
            Ok(copied)
        });
        Ok((CopyTask(handle), snapshot_at))
    }
}

fn log_unsynced(source: &str, problem: &catalog::TableProblem) {
    tracing::error!(
        source,
        table = %problem.table,
        fix = %problem.fix,
        "TABLE NOT SYNCED (the other tables are): {}; fix: {}",
        problem.detail,
        problem.fix
    );
}

fn unsynced_entry(problem: &catalog::TableProblem) -> UnsyncedTable {
    UnsyncedTable {
        table: problem.table.clone(),
        problem: problem.detail.clone(),
        fix: problem.fix.clone(),
    }
}

/// The upstream history this source was built from is gone: say so loudly, forget what the log
/// holds of it (every client cursor expires), and let the caller copy everything again.
pub(super) async fn start_over(
    source: &PostgresSource,
    state: &str,
    stored: Option<&str>,
) -> Result<(), SourceError> {
    let message = format!(
        "replication slot {} is {state}, so the changes after position {} can no longer be read: \
         starting over with a new copy of every table; clients' cursors expire (410) and they \
         must sync again from the beginning",
        source.slot,
        stored.unwrap_or("(copy in progress)")
    );
    tracing::error!(source = %source.name, "{message}");
    metrics::counter!(telemetry::SOURCE_RESETS, "source" => source.name.to_string()).increment(1);
    let mark = source.log.reset_source(&source.name).await?;
    tracing::warn!(source = %source.name, expired_before = mark, "log entries of this source removed; cursors expired");
    source.status.send_modify(|s| {
        s.last_error = Some(message);
        s.position = None;
    });
    Ok(())
}

/// A copy task that stops when its session ends.
pub(super) struct CopyTask(tokio::task::JoinHandle<Result<CopiedTables, SourceError>>);

impl Drop for CopyTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for the copy task when there is one, forever otherwise (a `select!` branch).
pub(super) async fn wait_for_copy(
    task: &mut Option<CopyTask>,
) -> Result<CopiedTables, SourceError> {
    match task {
        Some(task) => match (&mut task.0).await {
            Ok(result) => result,
            Err(e) => Err(SourceError::CopyTask(e.to_string())),
        },
        None => std::future::pending().await,
    }
}
