//! Writing one entry: a row's large values stored apart, the key's live entry looked up, and
//! the entry itself (with the compaction of the key's earlier one) in the open transaction.

use super::*;

impl LogWriter {
    /// Stores the large values of a row's new version apart (large.rs) and removes those of
    /// its previous version it no longer has. `kept`: unchanged columns whose stored value the
    /// new version refers to; `previous_apart`: the columns the previous version had stored
    /// apart (under `old_key` when the key changed). The scope column always stays in the
    /// record, where scopes are computed from. Returns what the new record stores apart.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_apart(
        &mut self,
        collection: &str,
        key: &Row,
        old_key: Option<&Row>,
        scope_column: Option<&str>,
        after: Option<&mut Row>,
        kept: Vec<String>,
        previous_apart: &[String],
    ) -> Result<Vec<Apart>, LogError> {
        let mut apart = Vec::new();
        let row_key = key_text(key);
        let old_row_key = old_key.map(key_text);
        if let Some(after) = after {
            for (column, value) in after.iter() {
                if large::is_large(value) && Some(column.as_str()) != scope_column {
                    let json = serde_json::to_vec(value)?;
                    large::put(&self.conn, collection, &row_key, column, &json)?;
                    apart.push(Apart {
                        column: column.clone(),
                        json: Some(json),
                    });
                }
            }
            if !apart.is_empty() {
                self.large_collections.insert(collection.to_string());
            }
            for column in kept {
                if let Some(old) = &old_row_key {
                    large::copy(&self.conn, collection, old, &row_key, &column)?;
                }
                // Holds the column's place in the row until the record is written.
                after.insert(column.clone(), Value::Null);
                apart.push(Apart { column, json: None });
            }
        }
        let still_apart = |c: &String| apart.iter().any(|a| a.column == *c);
        match &old_row_key {
            Some(old) => {
                large::remove_key(&self.conn, collection, old)?;
                // The new key may have had a live version of its own (in another scope).
                for column in large::columns(&self.conn, collection, &row_key)? {
                    if !still_apart(&column) {
                        large::remove(&self.conn, collection, &row_key, &column)?;
                    }
                }
            }
            None => {
                for column in previous_apart.iter().filter(|c| !still_apart(c)) {
                    large::remove(&self.conn, collection, &row_key, column)?;
                }
            }
        }
        Ok(apart)
    }

    /// The key's live (not deleted) entry, if any. There is at most one: a row that changes
    /// scope leaves a tombstone in the old one.
    pub(super) fn live_entry(
        &mut self,
        collection: &str,
        key: &Row,
    ) -> Result<Option<LiveEntry>, LogError> {
        // Equality on (collection, key) only, so that SQLite seeks the key's few index entries
        // (one per scope it has been in) instead of walking the collection by seq.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, scope, record, large FROM entries WHERE collection = ?1 AND key = ?2
             AND op NOT IN ('delete', 'truncate')",
        )?;
        let mut rows = stmt.query(params![collection, key_text(key)])?;
        let mut live: Option<(i64, LiveEntry)> = None;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            if live.as_ref().map_or(true, |(newest, _)| seq > *newest) {
                let entry = LiveEntry {
                    seq,
                    scope: row.get(1)?,
                    record: row.get(2)?,
                    large: row.get(3)?,
                };
                live = Some((seq, entry));
            }
        }
        Ok(live.map(|(_, entry)| entry))
    }

    pub(super) fn write(&mut self, tx: &Arc<TxMeta>, entry: Entry) -> Result<(), LogError> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| LogError::Invalid("no open transaction".into()))?;
        let seq = open.next_seq;
        open.next_seq += 1;
        let txn = match &open.last_tx {
            Some((last, txn)) if Arc::ptr_eq(last, tx) => *txn,
            _ => {
                open.last_tx = Some((tx.clone(), seq));
                seq
            }
        };
        let key = entry.key.as_ref().map(key_text).unwrap_or_default();
        let cursor = Cursor {
            epoch: self.epoch,
            seq,
        }
        .to_string();
        let broadcasting = open.broadcast.is_some();
        let Entry {
            collection,
            op,
            key: entry_key,
            scope,
            mut after,
            before,
            changed,
            unchanged,
            apart,
            replaces,
            prior,
        } = entry;
        let serialize = |after: Option<&Row>, buf: &mut Vec<u8>| {
            let record = ChangeRecordRef {
                cursor: &cursor,
                source: &tx.source,
                collection: &collection,
                op,
                key: entry_key.as_ref(),
                after,
                before: before.as_ref(),
                changed: changed.as_deref(),
                unchanged: &unchanged,
                commit_time: &tx.commit_time,
                tx: TxInfoRef {
                    id: &tx.id,
                    position: &tx.position,
                },
            };
            serde_json::to_writer(buf, &record)
        };
        let (event, cut) = if apart.is_empty() {
            // Serialized once, straight into the SSE event every live subscriber sends.
            let event = ChangeEvent::build(&cursor, self.record_size_hint, |buf| {
                serialize(after.as_ref(), buf)
            })?;
            self.record_size_hint = event.json().len();
            (Some(event), None)
        } else {
            let columns: Vec<&str> = apart.iter().map(|a| a.column.as_str()).collect();
            let mut attempts = 0;
            let (stored, splices) = loop {
                // Values stored apart are marked in the row, found in the JSON and cut out.
                if let Some(after) = after.as_mut() {
                    for (index, value) in apart.iter().enumerate() {
                        after.insert(value.column.clone(), self.marks.mark(index));
                    }
                }
                let mut json = Vec::with_capacity(self.record_size_hint);
                serialize(after.as_ref(), &mut json)?;
                if let Some(cut) = large::cut(&json, &self.marks, &columns) {
                    break cut;
                }
                // The row holds one of the marks itself: mark again with another number.
                attempts += 1;
                if attempts == 8 {
                    return Err(LogError::Invalid(format!(
                        "a row of {collection} keeps colliding with the log's large-value marks"
                    )));
                }
                self.marks.redraw();
            };
            let event = if broadcasting {
                let size = stored.len() + apart.len() * 4 * large::LARGE_VALUE_BYTES;
                Some(ChangeEvent::build(&cursor, size, |buf| {
                    large::splice_into(buf, &stored, &splices, |column, out| {
                        match apart.iter().find(|a| a.column == column) {
                            Some(Apart {
                                json: Some(json), ..
                            }) => {
                                out.extend_from_slice(json);
                                Ok(true)
                            }
                            _ => large::append_value(&self.conn, &collection, &key, column, out),
                        }
                    })
                })?)
            } else {
                None
            };
            (event, Some((stored, large::encode(&splices)?)))
        };
        // Compaction: the key's earlier entry in this scope goes. A DELETE and a plain INSERT
        // rather than INSERT OR REPLACE, which may touch two rows and so makes SQLite keep a
        // statement journal of every page it changes. An insert usually has no earlier entry,
        // so it tries the INSERT first and deletes only if the unique index says there is one
        // (SQLite checks constraints before writing, so the failed attempt changed nothing).
        let stored = StoredColumns {
            seq,
            txn,
            collection: &collection,
            key: &key,
            op,
            commit_time: &tx.commit_time,
            record: match (&cut, &event) {
                (Some((stored, _)), _) => stored,
                (None, Some(event)) => event.json(),
                (None, None) => &[],
            },
            large: cut.as_ref().map(|(_, large)| large.as_str()),
            source: &tx.source,
            scope: &scope,
        };
        if let Some(earlier) = replaces {
            // Known already (read to fill or scope this one): replaced in one statement.
            stored.replace(&self.conn, earlier)?;
        } else if op != Op::Insert {
            stored.delete_earlier(&self.conn)?;
            stored.insert(&self.conn)?;
        } else if let Err(e) = stored.insert(&self.conn) {
            if e.sqlite_error_code() != Some(rusqlite::ErrorCode::ConstraintViolation) {
                return Err(e.into());
            }
            stored.delete_earlier(&self.conn)?;
            stored.insert(&self.conn)?;
        }
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| LogError::Invalid("no open transaction".into()))?;
        if let Some(event) = event {
            open.remember_for_broadcast(
                StoredRecord {
                    seq,
                    txn,
                    collection,
                    op,
                    scope,
                    event,
                    prior,
                },
                key,
            );
        }
        Ok(())
    }
}
