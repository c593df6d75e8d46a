//! `aggregate` with `$changeStream`, its `getMore`, resume tokens and split events.

use super::commands::*;
use super::faults::Hold;
use super::*;

/// A resume token: the deployment, the oplog entry, what it marks and the fragment number.
/// Like a server's, it starts with the entry's clusterTime (KeyString type 0x82 and the
/// timestamp's 8 bytes big-endian): here `{boot, seq}`, which is at or after the entry's own
/// clusterTime (a transaction's entries share the clusterTime of their first) and before the
/// next entry's.
pub(super) fn token(boot: u32, deployment: u32, seq: u64, kind: u8, fragment: u32) -> Document {
    let increment = seq as u32;
    doc! {"_data": format!("82{boot:08X}{increment:08X}{deployment:08X}{seq:016X}{kind:02X}{fragment:04X}")}
}

/// (deployment, seq, kind, fragment) of a token.
pub(super) fn parse_token(token: &Document) -> Option<(u32, u64, u8, u32)> {
    let data = token.get_str("_data").ok()?;
    let data = data.strip_prefix("82")?;
    if data.len() != 46 {
        return None;
    }
    let data = &data[16..];
    Some((
        u32::from_str_radix(&data[..8], 16).ok()?,
        u64::from_str_radix(&data[8..24], 16).ok()?,
        u8::from_str_radix(&data[24..26], 16).ok()?,
        u32::from_str_radix(&data[26..], 16).ok()?,
    ))
}

/// ChangeStreamFatalError: the token names no event of this stream (another deployment's
/// token, or an event the stream's `$match` leaves out).
fn token_not_found(token: &Document) -> Document {
    let mut e = error(
        280,
        "ChangeStreamFatalError",
        &format!("cannot resume stream; the resume token was not found. {token}"),
    );
    e.insert("errorLabels", vec!["NonResumableChangeStreamError"]);
    e
}

/// A live cursor whose next oplog entry was overwritten.
fn capped_position_lost() -> Document {
    error(
        136,
        "CappedPositionLost",
        "CollectionScan died due to position in capped collection being deleted",
    )
}

const EVENT: u8 = 1;
const HIGH_WATER: u8 = 0;
const INVALIDATE: u8 = 2;

pub(super) fn history_lost() -> Document {
    let mut e = error(
        286,
        "ChangeStreamHistoryLost",
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    );
    e.insert("errorLabels", vec!["NonResumableChangeStreamError"]);
    e
}

pub(super) fn aggregate(state: &mut State, db: &str, command: &Document) -> Reply {
    let pipeline = command.get_array("pipeline").map_err(bad)?;
    let Some(Bson::Document(first)) = pipeline.first() else {
        return Err(bad("only $changeStream pipelines are emulated"));
    };
    let spec = first
        .get_document("$changeStream")
        .map_err(|_| bad("only $changeStream pipelines are emulated"))?;
    let mut split = false;
    let mut filters = Vec::new();
    for stage in &pipeline[1..] {
        let stage = stage.as_document().cloned().unwrap_or_default();
        match stage.keys().next().map(String::as_str) {
            Some("$changeStreamSplitLargeEvent") => split = true,
            Some("$match") if !split => {
                let filter = stage.get_document("$match").map_err(bad)?.clone();
                check_filter(&filter)?;
                filters.push(filter);
            }
            other => return Err(bad(format!("pipeline stage {other:?} is not emulated"))),
        }
    }
    let coll = match command.get("aggregate") {
        Some(Bson::String(c)) => Some(c.clone()),
        _ => None,
    };
    let oldest = state.oplog.front().map(|e| e.seq).unwrap_or(state.head + 1);
    let (mut next_seq, mut next_fragment) = (state.head + 1, 0);
    let mut resumed_event = None;
    let resume = spec
        .get_document("resumeAfter")
        .map(|t| (t, false))
        .or_else(|_| spec.get_document("startAfter").map(|t| (t, true)));
    if let Ok((token, start_after)) = resume {
        let (deployment, seq, kind, fragment) = parse_token(token)
            .ok_or_else(|| error(260, "InvalidResumeToken", "malformed resume token"))?;
        if deployment != state.deployment {
            return Err(token_not_found(token));
        }
        if kind == INVALIDATE && !start_after {
            return Err(error(
                260,
                "InvalidResumeToken",
                "cannot resume a stream after an invalidate event; use startAfter",
            ));
        }
        if seq > state.head {
            return Err(error(
                260,
                "InvalidResumeToken",
                "resume token is from the future",
            ));
        }
        (next_seq, next_fragment) = if kind == EVENT && fragment > 0 {
            (seq, fragment)
        } else {
            (seq + 1, 0)
        };
        if next_seq < oldest {
            return Err(history_lost());
        }
        resumed_event = (kind == EVENT).then_some((seq, token.clone()));
    } else if let Ok(ts) = spec.get_timestamp("startAtOperationTime") {
        let first_at = state
            .oplog
            .iter()
            .find(|e| (e.ts.time, e.ts.increment) >= (ts.time, ts.increment));
        next_seq = first_at.map(|e| e.seq).unwrap_or(state.head + 1);
        let oldest_ts = state.oplog.front().map(|e| (e.ts.time, e.ts.increment));
        if oldest > 1 && oldest_ts.is_some_and(|t| (ts.time, ts.increment) < t) {
            return Err(history_lost());
        }
    }
    let ns = match &coll {
        Some(c) => format!("{db}.{c}"),
        None => format!("{db}.$cmd.aggregate"),
    };
    let mut cursor = ChangeCursor {
        db: db.to_string(),
        coll,
        next_seq,
        next_fragment,
        full_document: spec
            .get_str("fullDocument")
            .unwrap_or("default")
            .to_string(),
        before_change: spec
            .get_str("fullDocumentBeforeChange")
            .unwrap_or("off")
            .to_string(),
        split,
        filters,
        batch_size: batch_size(
            command
                .get_document("cursor")
                .ok()
                .and_then(|c| c.get("batchSize")),
            101,
        ),
        ns: ns.clone(),
        invalidated: false,
        held: false,
        show_expanded: spec.get_bool("showExpandedEvents").unwrap_or(false),
    };
    if let Some((seq, token)) = resumed_event {
        // The server finds the resume token's event in the stream it opens, after `$match`.
        let found = state
            .oplog
            .iter()
            .find(|e| e.seq == seq)
            .map(|entry| state.events_for(entry, &cursor))
            .transpose()?
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e.get_str("operationType") != Ok("invalidate"))
            });
        if !found {
            return Err(token_not_found(&token));
        }
    }
    let (batch, pbrt) = state.next_events(&mut cursor)?;
    let closed = cursor.invalidated;
    let id = if closed {
        0
    } else {
        state.keep_cursor(CursorState::Change(cursor))
    };
    Ok(ok(doc! {
        "cursor": {"firstBatch": batch, "postBatchResumeToken": pbrt, "id": id, "ns": ns},
        "operationTime": Timestamp { time: state.boot_secs, increment: state.head as u32 },
    }))
}

pub(super) async fn get_more(shared: &Arc<Shared>, command: &Document) -> Document {
    let id = match command.get("getMore") {
        Some(Bson::Int64(id)) => *id,
        Some(Bson::Int32(id)) => *id as i64,
        _ => return bad("getMore needs a cursor id"),
    };
    let wait = match command.get("maxTimeMS") {
        Some(Bson::Int32(ms)) => Duration::from_millis(*ms as u64),
        Some(Bson::Int64(ms)) => Duration::from_millis(*ms as u64),
        _ => Duration::from_secs(1),
    };
    let deadline = Instant::now() + wait;
    let mut head = shared.head.subscribe();
    let mut holding = false;
    shared.lock().expire_cursors();
    let _in_use = super::faults::InUse::mark(shared, id);
    loop {
        {
            let mut state = shared.lock();
            if holding {
                state.faults.held_getmores -= 1;
                holding = false;
            }
            state.expire_cursors();
            let Some(cursor) = state.cursors.remove(&id) else {
                return error(43, "CursorNotFound", &format!("cursor id {id} not found"));
            };
            state.cursor_used.insert(id, Instant::now());
            match cursor {
                CursorState::Find { .. } => {
                    if state.faults.find_getmore_errors > 0 {
                        state.faults.find_getmore_errors -= 1;
                        state.cursor_used.remove(&id);
                        return error(6, "HostUnreachable", "injected fault during a find");
                    }
                    let mut cursor = cursor;
                    let n = batch_size(command.get("batchSize"), usize::MAX);
                    let (batch, done) = take_find(&mut cursor, n);
                    let CursorState::Find { ns, .. } = &cursor else {
                        unreachable!()
                    };
                    let ns = ns.clone();
                    let id = if done { 0 } else { id };
                    if done {
                        state.cursor_used.remove(&id);
                    } else {
                        state.cursors.insert(id, cursor);
                    }
                    return ok(doc! {"cursor": {"nextBatch": batch, "id": id, "ns": ns}});
                }
                CursorState::Change(mut cursor) => {
                    if state.faults.change_getmore_errors > 0 {
                        state.faults.change_getmore_errors -= 1;
                        state.cursors.insert(id, CursorState::Change(cursor));
                        let mut e = error(6, "HostUnreachable", "injected fault");
                        e.insert("errorLabels", vec!["ResumableChangeStreamError"]);
                        return e;
                    }
                    if state.faults.secondary {
                        // A step-down kills the cursors of the former primary.
                        state.cursor_used.remove(&id);
                        return super::faults::interrupted_by_step_down();
                    }
                    if cursor.held && state.faults.hold != Hold::Never {
                        state.cursors.insert(id, CursorState::Change(cursor));
                        state.faults.held_getmores += 1;
                        holding = true;
                    } else {
                        cursor.held = false;
                        if let Some(n) = command.get("batchSize") {
                            cursor.batch_size = batch_size(Some(n), cursor.batch_size);
                        }
                        let result = state.next_events(&mut cursor);
                        if state.faults.hold == Hold::AfterEvents
                            && result.as_ref().is_ok_and(|(batch, _)| !batch.is_empty())
                        {
                            cursor.held = true;
                        }
                        let ns = cursor.ns.clone();
                        let (batch, pbrt) = match result {
                            Ok(found) => found,
                            Err(e) => {
                                state.cursor_used.remove(&id);
                                return e;
                            }
                        };
                        let closed = cursor.invalidated;
                        if closed {
                            state.cursor_used.remove(&id);
                        } else {
                            state.cursors.insert(id, CursorState::Change(cursor));
                        }
                        if !batch.is_empty() || closed || Instant::now() >= deadline {
                            return ok(doc! {
                                "cursor": {"nextBatch": batch, "postBatchResumeToken": pbrt, "id": if closed { 0 } else { id }, "ns": ns},
                                "operationTime": Timestamp { time: state.boot_secs, increment: state.head as u32 },
                            });
                        }
                    }
                }
            }
        }
        if holding {
            // Held like `failCommand`'s `blockConnection`: no reply until released.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let _ = tokio::time::timeout_at(deadline.into(), head.changed()).await;
    }
}

impl State {
    /// The next batch of a change stream and its postBatchResumeToken.
    pub(super) fn next_events(
        &self,
        cursor: &mut ChangeCursor,
    ) -> Result<(Vec<Document>, Document), Document> {
        let oldest = self.oplog.front().map(|e| e.seq).unwrap_or(self.head + 1);
        if cursor.next_seq < oldest {
            return Err(capped_position_lost());
        }
        let dep = self.deployment;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut last_token = token(self.boot_secs, dep, cursor.next_seq - 1, HIGH_WATER, 0);
        let start = (cursor.next_seq - oldest) as usize;
        for entry in self.oplog.range(start..) {
            if batch.len() >= cursor.batch_size || bytes >= MAX_BSON {
                break;
            }
            let events = self.events_for(entry, cursor)?;
            let mut invalidate = false;
            for event in events {
                invalidate |= event.get_str("operationType") == Ok("invalidate");
                let fragments = if cursor.split {
                    split_event(event, self.boot_secs, dep, entry.seq)?
                } else {
                    vec![event]
                };
                let of = fragments.len();
                for (i, fragment) in fragments
                    .into_iter()
                    .enumerate()
                    .skip(cursor.next_fragment as usize)
                {
                    let size = bson::to_vec(&fragment).map(|v| v.len()).unwrap_or(0);
                    if size > MAX_BSON {
                        return Err(error(
                            10334,
                            "BSONObjectTooLarge",
                            "change event exceeds 16 MiB; add $changeStreamSplitLargeEvent",
                        ));
                    }
                    if !batch.is_empty() && bytes + size > MAX_BSON {
                        cursor.next_fragment = i as u32;
                        return Ok((batch, last_token));
                    }
                    bytes += size;
                    last_token = fragment.get_document("_id").cloned().unwrap_or_default();
                    batch.push(fragment);
                    self.events_sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if self.faults.hold == Hold::BetweenFragments && i + 1 < of {
                        cursor.next_fragment = i as u32 + 1;
                        cursor.held = true;
                        return Ok((batch, last_token));
                    }
                }
                cursor.next_fragment = 0;
            }
            cursor.next_seq = entry.seq + 1;
            if invalidate {
                cursor.invalidated = true;
                break;
            }
            if batch.is_empty() {
                last_token = token(self.boot_secs, dep, entry.seq, HIGH_WATER, 0);
            }
        }
        Ok((batch, last_token))
    }

    /// The event's fields in the order a 7.0 server writes them: `_id`, `operationType`,
    /// `clusterTime`, `wallTime`, `txnNumber`, `lsid`, `fullDocument`, `ns`, the rest
    /// (`documentKey`, `updateDescription`, `to`); `disambiguatedPaths` only with
    /// `showExpandedEvents`.
    fn event_in_server_order(
        &self,
        entry: &Entry,
        full: Option<Bson>,
        show_expanded: bool,
    ) -> Document {
        let mut rest = entry.event.clone();
        let mut event = doc! {"_id": token(self.boot_secs, self.deployment, entry.seq, EVENT, 0)};
        if let Some(op) = rest.remove("operationType") {
            event.insert("operationType", op);
        }
        event.insert("clusterTime", entry.ts);
        event.insert("wallTime", entry.wall);
        for field in ["txnNumber", "lsid"] {
            if let Some(value) = rest.remove(field) {
                event.insert(field, value);
            }
        }
        rest.remove("fullDocument");
        if let Some(full) = full {
            event.insert("fullDocument", full);
        }
        if let Some(ns) = rest.remove("ns") {
            event.insert("ns", ns);
        }
        if let Ok(description) = rest.get_document_mut("updateDescription") {
            if !show_expanded {
                description.remove("disambiguatedPaths");
            }
        }
        event.extend(rest);
        event
    }

    /// The events one oplog entry produces for a cursor (none, one, or one plus invalidate).
    fn events_for(&self, entry: &Entry, cursor: &ChangeCursor) -> Result<Vec<Document>, Document> {
        let ns = entry.event.get_document("ns").cloned().unwrap_or_default();
        if ns.get_str("db") != Ok(cursor.db.as_str()) {
            return Ok(vec![]);
        }
        let op = entry.event.get_str("operationType").unwrap_or("");
        let entry_coll = ns.get_str("coll").ok();
        if let Some(coll) = &cursor.coll {
            if entry_coll.is_some_and(|c| c != coll) || op == "dropDatabase" {
                return Ok(vec![]);
            }
        }
        let key = entry.event.get_document("documentKey").ok();
        let mut full = entry.event.get("fullDocument").cloned();
        if op == "update" || op == "replace" {
            let looked_up = match cursor.full_document.as_str() {
                "updateLookup" if op == "update" => {
                    let ns = format!("{}.{}", cursor.db, entry_coll.unwrap_or(""));
                    let id = key
                        .and_then(|k| k.get("_id"))
                        .cloned()
                        .unwrap_or(Bson::Null);
                    Some(
                        self.colls
                            .get(&ns)
                            .and_then(|c| c.docs.get(&IdKey(id)))
                            .cloned()
                            .map(Bson::Document)
                            .unwrap_or(Bson::Null),
                    )
                }
                "whenAvailable" | "required" if op == "update" => match &entry.post {
                    Some(post) => Some(Bson::Document(post.clone())),
                    None if cursor.full_document == "required" => {
                        return Err(error(
                            47,
                            "NoMatchingDocument",
                            "post-image is not available: enable changeStreamPreAndPostImages",
                        ));
                    }
                    None => Some(Bson::Null),
                },
                _ => None,
            };
            if looked_up.is_some() {
                full = looked_up;
            }
        }
        let mut event = self.event_in_server_order(entry, full, cursor.show_expanded);
        if matches!(op, "update" | "replace" | "delete") {
            match (cursor.before_change.as_str(), &entry.pre) {
                ("whenAvailable" | "required", Some(pre)) => {
                    event.insert("fullDocumentBeforeChange", pre.clone());
                }
                ("whenAvailable", None) => {
                    event.insert("fullDocumentBeforeChange", Bson::Null);
                }
                ("required", None) => {
                    return Err(error(
                        47,
                        "NoMatchingDocument",
                        "pre-image is not available: enable changeStreamPreAndPostImages",
                    ));
                }
                _ => {}
            }
        }
        let invalidates = match &cursor.coll {
            Some(_) => matches!(op, "drop" | "rename"),
            None => op == "dropDatabase",
        };
        let mut events = vec![event];
        if invalidates {
            events.push(doc! {"_id": token(self.boot_secs, self.deployment, entry.seq, INVALIDATE, 0), "operationType": "invalidate", "clusterTime": entry.ts, "wallTime": entry.wall});
        }
        events.retain(|e| cursor.filters.iter().all(|f| filter_matches(e, f)));
        Ok(events)
    }
}

/// `$changeStreamSplitLargeEvent`: an event over 16 MiB becomes fragments of top-level fields,
/// each with its own `_id` and `splitEvent: {fragment, of}`.
pub(super) fn split_event(
    event: Document,
    boot: u32,
    deployment: u32,
    seq: u64,
) -> Result<Vec<Document>, Document> {
    let size = bson::to_vec(&event).map(|v| v.len()).unwrap_or(0);
    if size <= MAX_BSON {
        return Ok(vec![event]);
    }
    let budget = MAX_BSON - 1024;
    let mut groups: Vec<Document> = vec![Document::new()];
    let mut used = 0;
    for (k, v) in event {
        if k == "_id" {
            continue;
        }
        let field_size = bson::to_vec(&doc! {k.clone(): v.clone()})
            .map(|v| v.len())
            .unwrap_or(0);
        if field_size > budget {
            return Err(error(
                7182500,
                "Location7182500",
                &format!("Cannot split a change event: its field '{k}' alone exceeds the limit"),
            ));
        }
        if used + field_size > budget {
            groups.push(Document::new());
            used = 0;
        }
        used += field_size;
        groups.last_mut().unwrap().insert(k, v);
    }
    let of = groups.len() as i32;
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, fields)| {
            // As the server writes them: `_id` and `splitEvent` first, then the fields.
            let mut fragment = doc! {
                "_id": token(boot, deployment, seq, EVENT, i as u32 + 1),
                "splitEvent": {"fragment": i as i32 + 1, "of": of},
            };
            fragment.extend(fields);
            fragment
        })
        .collect())
}

/// `$match` in change streams: `$or`/`$and` of dotted paths compared by equality or `$in`.
fn check_filter(filter: &Document) -> Result<(), Document> {
    for (key, value) in filter {
        match (key.as_str(), value) {
            ("$or" | "$and", Bson::Array(list)) => {
                for sub in list {
                    check_filter(
                        sub.as_document()
                            .ok_or_else(|| bad("$or needs documents"))?,
                    )?;
                }
            }
            (op, _) if op.starts_with('$') => {
                return Err(bad(format!("$match operator {op} is not emulated")))
            }
            (_, Bson::Document(d)) if d.keys().any(|k| k != "$in") => {
                return Err(bad("only equality and $in are emulated in $match"))
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn filter_matches(event: &Document, filter: &Document) -> bool {
    filter
        .iter()
        .all(|(key, value)| match (key.as_str(), value) {
            ("$or", Bson::Array(list)) => list
                .iter()
                .any(|f| f.as_document().is_some_and(|f| filter_matches(event, f))),
            ("$and", Bson::Array(list)) => list
                .iter()
                .all(|f| f.as_document().is_some_and(|f| filter_matches(event, f))),
            (path, Bson::Document(ops)) => match ops.get_array("$in") {
                Ok(options) => options.iter().any(|o| lookup(event, path) == Some(o)),
                Err(_) => false,
            },
            (path, value) => lookup(event, path) == Some(value),
        })
}

fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let (first, rest) = match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let value = doc.get(first)?;
    match (rest, value) {
        (None, value) => Some(value),
        (Some(rest), Bson::Document(inner)) => lookup(inner, rest),
        _ => None,
    }
}
