//! Commands other than change streams: handshake, CRUD, DDL, transactions, cursors.

use super::change_streams::{aggregate, get_more};
use super::transactions::{transaction_of, TxnKey};
use super::updates::apply_update;
use super::*;

pub(super) fn error(code: i32, name: &str, message: &str) -> Document {
    doc! {"ok": 0.0, "errmsg": message, "code": code, "codeName": name}
}

pub(super) fn ok(mut reply: Document) -> Document {
    reply.insert("ok", 1.0);
    reply
}

pub(super) async fn run_command(
    shared: &Arc<Shared>,
    command: Document,
    connection_id: i32,
) -> Document {
    let Some(name) = command.keys().next().cloned() else {
        return error(59, "CommandNotFound", "empty command");
    };
    let db = command.get_str("$db").unwrap_or("admin").to_string();
    match name.to_ascii_lowercase().as_str() {
        "hello" | "ismaster" => hello(shared, connection_id, name == "hello"),
        "ping" | "endsessions" | "killallsessions" => ok(doc! {}),
        "buildinfo" => {
            let [major, minor, patch] = shared.lock().faults.version;
            ok(
                doc! {"version": format!("{major}.{minor}.{patch}"), "versionArray": [major, minor, patch, 0]},
            )
        }
        "getmore" => get_more(shared, &command).await,
        "aggregate" => {
            let reply = aggregate(&mut shared.lock(), &db, &command);
            reply.unwrap_or_else(|e| e)
        }
        _ => {
            let mut state = shared.lock();
            if state.faults.secondary && WRITES.contains(&name.to_ascii_lowercase().as_str()) {
                return super::faults::not_writable_primary();
            }
            let before = state.head;
            let reply = state.command(&name, &db, &command);
            if state.head != before {
                shared.head.send_replace(state.head);
            }
            let mut reply = reply.unwrap_or_else(|e| e);
            state.stamp(&mut reply);
            reply
        }
    }
}

/// Commands a secondary refuses with NotWritablePrimary.
const WRITES: &[&str] = &[
    "insert",
    "update",
    "delete",
    "drop",
    "dropdatabase",
    "create",
    "collmod",
    "renamecollection",
    "committransaction",
    "aborttransaction",
];

pub(super) fn hello(shared: &Shared, connection_id: i32, hello: bool) -> Document {
    let me = shared.addr.to_string();
    let secondary = shared.lock().faults.secondary;
    let mut reply = doc! {
        "helloOk": true,
        "isWritablePrimary": !secondary,
        "secondary": secondary,
        "setName": SET_NAME,
        "setVersion": 1,
        "hosts": [me.clone()],
        "me": me.clone(),
        "electionId": bson::oid::ObjectId::from_bytes([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1]),
        "maxBsonObjectSize": MAX_BSON as i32,
        "maxMessageSizeBytes": MAX_MESSAGE as i32,
        "maxWriteBatchSize": 100_000,
        "localTime": DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": WIRE_VERSION,
        "readOnly": false,
    };
    if !secondary {
        reply.insert("primary", me);
    }
    if !hello {
        reply.insert("ismaster", !secondary);
    }
    ok(reply)
}

pub(super) type Reply = Result<Document, Document>;

impl State {
    fn command(&mut self, name: &str, db: &str, command: &Document) -> Reply {
        let txn = transaction_of(command);
        if let Some(key) = &txn {
            self.remember_before_write(key, name, db, command);
        }
        match name.to_ascii_lowercase().as_str() {
            "insert" => self.insert(db, command, txn),
            "update" => self.update(db, command, txn),
            "delete" => self.delete(db, command, txn),
            "find" => self.find(db, command),
            "count" => {
                let coll = command.get_str("count").map_err(bad)?;
                let n = self
                    .colls
                    .get(&format!("{db}.{coll}"))
                    .map_or(0, |c| c.docs.len());
                Ok(ok(doc! {"n": n as i64}))
            }
            "killcursors" => {
                let ids = command.get_array("cursors").map_err(bad)?;
                let mut killed = Vec::new();
                for id in ids {
                    if let Some(id) = id.as_i64() {
                        if self.cursors.remove(&id).is_some() {
                            killed.push(id);
                        }
                    }
                }
                Ok(ok(
                    doc! {"cursorsKilled": killed, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []},
                ))
            }
            "drop" => {
                let coll = command.get_str("drop").map_err(bad)?;
                self.drop_collection(db, coll);
                Ok(ok(doc! {"nIndexesWas": 1, "ns": format!("{db}.{coll}")}))
            }
            "dropdatabase" => {
                let names: Vec<String> = self.collections_of(db);
                for coll in &names {
                    self.drop_collection(db, coll);
                }
                self.log(
                    Some(db),
                    doc! {"operationType": "dropDatabase", "ns": {"db": db}},
                    None,
                    None,
                    None,
                );
                Ok(ok(doc! {"dropped": db}))
            }
            "create" | "collmod" => {
                let coll = command.get_str(name).map_err(bad)?;
                let coll = self.colls.entry(format!("{db}.{coll}")).or_default();
                if let Ok(images) = command.get_document("changeStreamPreAndPostImages") {
                    coll.images = images.get_bool("enabled").unwrap_or(false);
                }
                Ok(ok(doc! {}))
            }
            "renamecollection" => {
                let from = command
                    .get_str("renameCollection")
                    .map_err(bad)?
                    .to_string();
                let to = command.get_str("to").map_err(bad)?.to_string();
                let Some(moved) = self.colls.remove(&from) else {
                    return Err(error(
                        26,
                        "NamespaceNotFound",
                        "source namespace does not exist",
                    ));
                };
                if self.colls.contains_key(&to) && !command.get_bool("dropTarget").unwrap_or(false)
                {
                    self.colls.insert(from, moved);
                    return Err(error(48, "NamespaceExists", "target namespace exists"));
                }
                self.colls.insert(to.clone(), moved);
                let (fdb, fcoll) = from.split_once('.').ok_or_else(|| bad("bad namespace"))?;
                let (tdb, tcoll) = to.split_once('.').ok_or_else(|| bad("bad namespace"))?;
                self.log(
                    Some(fdb),
                    doc! {"operationType": "rename", "ns": {"db": fdb, "coll": fcoll}, "to": {"db": tdb, "coll": tcoll}},
                    None,
                    None,
                    None,
                );
                Ok(ok(doc! {}))
            }
            "listcollections" => {
                let filter = command.get_document("filter").cloned().unwrap_or_default();
                let batch: Vec<Bson> = self
                    .collections_of(db)
                    .into_iter()
                    .map(|name| {
                        let images = self.colls[&format!("{db}.{name}")].images;
                        doc! {
                            "name": name, "type": "collection",
                            "options": {"changeStreamPreAndPostImages": {"enabled": images}},
                            "info": {"readOnly": false},
                        }
                    })
                    .filter(|info| super::change_streams::filter_matches(info, &filter))
                    .map(Bson::Document)
                    .collect();
                Ok(ok(
                    doc! {"cursor": {"id": 0i64, "ns": format!("{db}.$cmd.listCollections"), "firstBatch": batch}},
                ))
            }
            "committransaction" => self.commit_transaction(txn),
            "aborttransaction" => self.abort_transaction(txn),
            // Indexes are not emulated: `createIndexes` (the relay's TTL index) is accepted.
            "createindexes" => Ok(ok(
                doc! {"numIndexesBefore": 1, "numIndexesAfter": 2, "createdCollectionAutomatically": false},
            )),
            other => Err(error(
                59,
                "CommandNotFound",
                &format!("no such command: '{other}'"),
            )),
        }
    }

    fn collections_of(&self, db: &str) -> Vec<String> {
        let prefix = format!("{db}.");
        self.colls
            .keys()
            .filter_map(|ns| ns.strip_prefix(&prefix).map(String::from))
            .collect()
    }

    fn drop_collection(&mut self, db: &str, coll: &str) {
        if self.colls.remove(&format!("{db}.{coll}")).is_some() {
            self.log(
                Some(db),
                doc! {"operationType": "drop", "ns": {"db": db, "coll": coll}},
                None,
                None,
                None,
            );
        }
    }

    /// Appends an oplog entry (or holds it back for an open transaction).
    pub(super) fn log(
        &mut self,
        _db: Option<&str>,
        event: Document,
        pre: Option<Document>,
        post: Option<Document>,
        txn: Option<&TxnKey>,
    ) {
        if let Some(key) = txn {
            self.hold_back(key, event, pre, post);
            return;
        }
        let ts = self.txn_time.unwrap_or_else(|| self.next_ts());
        self.head += 1;
        let seq = self.head;
        self.oplog.push_back(Entry {
            seq,
            ts,
            wall: DateTime::now(),
            event,
            pre,
            post,
        });
        self.trim();
    }

    /// The clusterTime of the next write.
    pub(super) fn next_ts(&self) -> Timestamp {
        Timestamp {
            time: self.boot_secs,
            increment: self.head as u32 + 1,
        }
    }

    pub(super) fn trim(&mut self) {
        while self.oplog.len() > self.window.max(1) {
            self.oplog.pop_front();
        }
    }

    fn coll_mut(
        &mut self,
        db: &str,
        command: &Document,
        name: &str,
    ) -> Result<(String, String), Document> {
        let coll = command.get_str(name).map_err(bad)?.to_string();
        let ns = format!("{db}.{coll}");
        self.colls.entry(ns.clone()).or_default();
        Ok((ns, coll))
    }

    fn insert(&mut self, db: &str, command: &Document, txn: Option<TxnKey>) -> Reply {
        let (ns, coll) = self.coll_mut(db, command, "insert")?;
        let docs = command.get_array("documents").map_err(bad)?.clone();
        let mut n = 0;
        let mut write_errors = Vec::new();
        for (index, doc) in docs.into_iter().enumerate() {
            let Bson::Document(mut doc) = doc else {
                return Err(bad("documents must be documents"));
            };
            if !doc.contains_key("_id") {
                let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
                with_id.extend(doc);
                doc = with_id;
            }
            let id = IdKey(doc.get("_id").cloned().unwrap_or(Bson::Null));
            let c = self.colls.get_mut(&ns).unwrap();
            if c.docs.contains_key(&id) {
                write_errors.push(Bson::Document(super::txn_undo::duplicate_key(
                    index, &ns, &id.0,
                )));
                break;
            }
            c.docs.insert(id.clone(), doc.clone());
            let post = c.images.then(|| doc.clone());
            self.log(
                Some(db),
                doc! {"operationType": "insert", "ns": {"db": db, "coll": &coll}, "documentKey": {"_id": id.0}, "fullDocument": doc},
                None,
                post,
                txn.as_ref(),
            );
            n += 1;
        }
        let mut reply = doc! {"n": n};
        if !write_errors.is_empty() {
            reply.insert("writeErrors", write_errors);
        }
        Ok(ok(reply))
    }

    fn update(&mut self, db: &str, command: &Document, txn: Option<TxnKey>) -> Reply {
        let (ns, coll) = self.coll_mut(db, command, "update")?;
        let updates = command.get_array("updates").map_err(bad)?.clone();
        let (mut n, mut modified) = (0, 0);
        let mut upserted = Vec::new();
        for (index, update) in updates.into_iter().enumerate() {
            let update = update
                .as_document()
                .ok_or_else(|| bad("update must be a document"))?
                .clone();
            let filter = update.get_document("q").map_err(bad)?;
            let u = update
                .get_document("u")
                .map_err(|_| bad("only update documents are supported, not pipelines"))?;
            let multi = update.get_bool("multi").unwrap_or(false);
            let ids = self.matching(&ns, filter, if multi { usize::MAX } else { 1 });
            if ids.is_empty() && update.get_bool("upsert").unwrap_or(false) {
                let mut doc = Document::new();
                for (k, v) in filter {
                    if !k.starts_with('$')
                        && !matches!(v, Bson::Document(d) if d.keys().any(|k| k.starts_with('$')))
                    {
                        doc.insert(k.clone(), v.clone());
                    }
                }
                let (doc, _) = apply_update(&doc, u)?;
                let mut doc = doc;
                if !doc.contains_key("_id") {
                    let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
                    with_id.extend(doc);
                    doc = with_id;
                }
                let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
                upserted.push(Bson::Document(doc! {"index": index as i32, "_id": id}));
                let insert = doc! {"insert": &coll, "documents": [doc]};
                self.insert(db, &insert, txn.clone())?;
                n += 1;
                continue;
            }
            for id in ids {
                let c = self.colls.get_mut(&ns).unwrap();
                let old = c.docs[&id].clone();
                let (new, description) = apply_update(&old, u)?;
                if new.get("_id") != old.get("_id") {
                    return Err(error(66, "ImmutableField", "the _id field cannot change"));
                }
                n += 1;
                if new == old {
                    continue;
                }
                modified += 1;
                c.docs.insert(id.clone(), new.clone());
                let images = c.images;
                let mut event = doc! {"operationType": if description.is_some() { "update" } else { "replace" }, "ns": {"db": db, "coll": &coll}, "documentKey": {"_id": id.0.clone()}};
                match description {
                    Some(description) => {
                        event.insert("updateDescription", description);
                    }
                    None => {
                        event.insert("fullDocument", new.clone());
                    }
                }
                self.log(
                    Some(db),
                    event,
                    images.then_some(old),
                    images.then_some(new),
                    txn.as_ref(),
                );
            }
        }
        let mut reply = doc! {"n": n, "nModified": modified};
        if !upserted.is_empty() {
            reply.insert("upserted", upserted);
        }
        Ok(ok(reply))
    }

    fn delete(&mut self, db: &str, command: &Document, txn: Option<TxnKey>) -> Reply {
        let (ns, coll) = self.coll_mut(db, command, "delete")?;
        let deletes = command.get_array("deletes").map_err(bad)?.clone();
        let mut n = 0;
        for delete in deletes {
            let delete = delete
                .as_document()
                .ok_or_else(|| bad("delete must be a document"))?
                .clone();
            let filter = delete.get_document("q").map_err(bad)?;
            let limit = match delete.get("limit") {
                Some(Bson::Int32(1)) | Some(Bson::Int64(1)) => 1,
                _ => usize::MAX,
            };
            for id in self.matching(&ns, filter, limit) {
                let c = self.colls.get_mut(&ns).unwrap();
                let old = c.docs.remove(&id);
                let pre = old.filter(|_| c.images);
                self.log(
                    Some(db),
                    doc! {"operationType": "delete", "ns": {"db": db, "coll": &coll}, "documentKey": {"_id": id.0}},
                    pre,
                    None,
                    txn.as_ref(),
                );
                n += 1;
            }
        }
        Ok(ok(doc! {"n": n}))
    }

    fn matching(&self, ns: &str, filter: &Document, limit: usize) -> Vec<IdKey> {
        let Some(coll) = self.colls.get(ns) else {
            return vec![];
        };
        if let (1, Some(id)) = (filter.len(), filter.get("_id")) {
            let id = IdKey(id.clone());
            return coll
                .docs
                .contains_key(&id)
                .then_some(id)
                .into_iter()
                .collect();
        }
        coll.docs
            .iter()
            .filter(|(_, doc)| matches(doc, filter))
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn find(&mut self, db: &str, command: &Document) -> Reply {
        let coll = command.get_str("find").map_err(bad)?;
        let ns = format!("{db}.{coll}");
        let filter = command.get_document("filter").cloned().unwrap_or_default();
        let limit = match command.get("limit") {
            Some(Bson::Int32(n)) if *n > 0 => *n as usize,
            Some(Bson::Int64(n)) if *n > 0 => *n as usize,
            _ => usize::MAX,
        };
        let docs: VecDeque<Document> = if ns == "local.oplog.rs" {
            let descending = command
                .get_document("sort")
                .ok()
                .and_then(|s| s.get("$natural"))
                .and_then(Bson::as_i32)
                == Some(-1);
            let mut entries: Vec<Document> = self
                .oplog
                .iter()
                .map(|e| doc! {"ts": e.ts, "wall": e.wall})
                .collect();
            if descending {
                entries.reverse();
            }
            entries.into_iter().take(limit).collect()
        } else {
            match self.colls.get(&ns) {
                Some(c) => c
                    .docs
                    .values()
                    .filter(|d| matches(d, &filter))
                    .take(limit)
                    .cloned()
                    .collect(),
                None => VecDeque::new(),
            }
        };
        let batch_size = batch_size(command.get("batchSize"), 101);
        let mut cursor = CursorState::Find {
            ns: ns.clone(),
            docs,
        };
        let first = take_find(&mut cursor, batch_size);
        let id = self.keep_cursor(cursor);
        Ok(ok(
            doc! {"cursor": {"firstBatch": first.0, "id": if first.1 { 0 } else { id }, "ns": ns}},
        ))
    }

    pub(super) fn keep_cursor(&mut self, cursor: CursorState) -> i64 {
        if let CursorState::Find { docs, .. } = &cursor {
            if docs.is_empty() {
                return 0;
            }
        }
        self.next_cursor += 1;
        self.cursors.insert(self.next_cursor, cursor);
        self.cursor_used.insert(self.next_cursor, Instant::now());
        self.next_cursor
    }
}

pub(super) fn bad(e: impl std::fmt::Display) -> Document {
    error(2, "BadValue", &e.to_string())
}

pub(super) fn batch_size(value: Option<&Bson>, default: usize) -> usize {
    match value {
        Some(Bson::Int32(n)) if *n > 0 => *n as usize,
        Some(Bson::Int64(n)) if *n > 0 => *n as usize,
        _ => default,
    }
}

/// Up to `n` documents; `true` when the cursor is exhausted.
pub(super) fn take_find(cursor: &mut CursorState, n: usize) -> (Vec<Document>, bool) {
    let CursorState::Find { docs, .. } = cursor else {
        return (vec![], true);
    };
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < n && bytes < MAX_BSON / 2 {
        let Some(doc) = docs.pop_front() else { break };
        bytes += bson::to_vec(&doc).map(|v| v.len()).unwrap_or(0);
        batch.push(doc);
    }
    (batch, docs.is_empty())
}

pub(super) fn matches(doc: &Document, filter: &Document) -> bool {
    filter.iter().all(|(k, v)| doc.get(k) == Some(v))
}
