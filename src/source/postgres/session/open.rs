//! Opening a session: tables and publication, slot, copies, then `START_REPLICATION`.

use super::source::start_over;
use super::*;

impl<'a> Session<'a> {
    pub(super) async fn open(source: &'a PostgresSource) -> Result<Session<'a>, SourceError> {
        // Every network step but the slot's creation and the copy (both may rightly take
        // long) is bounded, so a connection lost in a network black hole is given up.
        let limit = source.timeout;
        let client = bounded(limit, "connecting", async {
            catalog::connect_tls(&source.pg_config, &source.tls)
                .await
                .map_err(CatalogError::from)
        })
        .await?;
        let copied = match source
            .log
            .position(&CopiedTables::key(&source.name))
            .await?
        {
            Some(text) => Some(CopiedTables::parse(&text)?),
            None => None,
        };
        let stored_specs = copied.as_ref().map(|c| c.specs.clone()).unwrap_or_default();
        let prepared = bounded(
            limit,
            "checking the server, tables and publication",
            async {
                catalog::check_wal_level(&client).await?;
                tables::prepare(&client, &source.config, &stored_specs).await
            },
        )
        .await?;
        source.report_unsynced(&prepared.problems);
        let mut tables = prepared.tables;
        *source.specs.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(prepared.specs);
        let mut stored = source.log.position(&source.name).await?;

        let (mut conn, system) = bounded(limit, "opening the replication connection", async {
            let mut conn =
                ReplicationConnection::connect_tls(&source.pg_config, &source.tls, SESSION_PARAMS)
                    .await?;
            let system = conn.identify_system().await?;
            Ok::<_, ReplicationError>((conn, system))
        })
        .await?;
        source.status.send_modify(|s| {
            s.connected = true;
            s.upstream_position = Some(system.xlog_pos.to_string());
        });
        let slot = bounded(
            limit,
            "reading the slot's state",
            catalog::slot_state(&client, &source.slot),
        )
        .await?;
        if let Some(plugin) = slot.as_ref().and_then(|s| s.plugin.as_deref()) {
            if plugin != "pgoutput" {
                return Err(SourceError::Config {
                    source_name: source.name.to_string(),
                    message: format!(
                        "replication slot {} exists but uses plugin {plugin:?}, not pgoutput: drop it or configure another slot name",
                        source.slot
                    ),
                });
            }
        }
        let lost = match &slot {
            None => Some("missing"),
            Some(slot) if slot.wal_status.as_deref() == Some("lost") => Some(
                "invalidated (Postgres removed WAL it still needed, see max_slot_wal_keep_size)",
            ),
            Some(_) => None,
        };
        // A slot about to be created (or recreated) is younger than any publication.
        let slot_at = match lost {
            Some(_) => None,
            None => slot.as_ref().and_then(|s| s.confirmed_flush),
        };
        let (with_append, append_wait) = source
            .append_publication_start(&prepared.append_tables, prepared.append_created, slot_at)
            .await?;
        let with_append = with_append && prepared.append_exists;
        if append_wait.is_some() {
            tables.retain(|t| !prepared.append_tables.contains(t));
        }
        let partitions = bounded(
            limit,
            "reading partitions",
            PartitionSets::read(&client, &tables),
        )
        .await?;
        let mut copy_task = None;
        let mut respec = prepared.respec;
        if let Some(state) = lost {
            if stored.is_some() || copied.is_some() || source.has_entries().await? {
                start_over(source, state, stored.as_deref()).await?;
                stored = None;
            }
            if slot.is_some() {
                catalog::drop_slot(&client, &source.slot).await?;
            }
            // First start: the new slot's snapshot is the copy's, and streaming starts where
            // the snapshot ends.
            let created = conn.create_logical_slot(&source.slot, true).await?;
            tracing::info!(source = %source.name, slot = %source.slot, consistent_point = %created.consistent_point, "created replication slot");
            let snapshot = created.snapshot_name.clone().ok_or_else(|| {
                SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
            })?;
            let copier = source.copier(created.consistent_point, false);
            copier
                .run(
                    &source.pg_config,
                    SESSION_PARAMS,
                    &snapshot,
                    &tables,
                    CopiedTables::default(),
                )
                .await?;
            partitions.store(&source.log, &source.name).await?;
        } else {
            let done = copied.unwrap_or_default();
            for (table, from) in &done.append_from {
                if let Ok(from) = from.parse::<Lsn>() {
                    let until = respec.entry(table.clone()).or_insert(from);
                    *until = (*until).max(from);
                }
            }
            // A configured table that cannot be synced now keeps what the log has of it.
            let configured = if source.all_tables {
                &tables
            } else {
                &source.tables
            };
            let done = source
                .forget_removed_tables(&client, configured, done)
                .await?;
            let specs = source.specs();
            let mut pending: Vec<String> = tables
                .iter()
                .filter(|t| !done.has(t, specs.get(*t)))
                .cloned()
                .collect();
            // Partitions attached or detached while the relay was away: copy those again.
            let before = PartitionSets::stored(&source.log, &source.name).await?;
            for root in partitions.changed_since(&before) {
                if !pending.contains(&root) {
                    tracing::info!(source = %source.name, table = %root, "its partitions changed while the relay was stopped: copying it again");
                    pending.push(root);
                }
            }
            if pending.is_empty() {
                if partitions != before {
                    partitions.store(&source.log, &source.name).await?;
                }
                source
                    .status
                    .send_modify(|s| s.initial_copy.state = CopyState::Done);
            } else {
                let (task, snapshot_at) = source
                    .copy_beside_stream(pending.clone(), done, partitions.clone())
                    .await?;
                copy_task = Some(task);
                if let Some(at) = snapshot_at {
                    for table in pending.iter().filter(|t| source.config.is_append_only(t)) {
                        respec.insert(table.clone(), at);
                    }
                }
            }
        }

        let durable = match &stored {
            Some(text) => text.parse::<Lsn>().map_err(|e| SourceError::Config {
                source_name: source.name.to_string(),
                message: format!("the log holds an unreadable position: {e}"),
            })?,
            None => Lsn(0),
        };
        let publication = if with_append {
            format!(
                "{},{}",
                source.publication,
                source.config.append_publication()
            )
        } else {
            source.publication.clone()
        };
        let stream = bounded(
            limit,
            "starting replication",
            conn.start_logical_replication(
                &source.slot,
                durable,
                &[("proto_version", "1"), ("publication_names", &publication)],
            ),
        )
        .await?;
        tracing::info!(
            source = %source.name, slot = %source.slot, from = %durable, server_wal = %system.xlog_pos,
            "streaming changes"
        );
        source.status.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
            s.position = stored.clone();
            s.upstream_position = Some(system.xlog_pos.to_string());
            s.lag_bytes = Some(system.xlog_pos.0.saturating_sub(durable.0));
        });
        Ok(Session {
            source,
            client,
            stream,
            types: TypeCache::default(),
            tables: HashMap::new(),
            ingested: HashMap::new(),
            synced: tables.iter().cloned().collect(),
            ack: AckTracker::new(durable),
            durable,
            upstream: None,
            local: None,
            local_changes: 0,
            local_started: None,
            pending_end: None,
            upstream_end: system.xlog_pos,
            copy_task,
            heard: Instant::now(),
            partitions,
            respec,
            fresh: Freshness::new(&source.status),
            append_wait,
        })
    }
}
