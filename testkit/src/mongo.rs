//! The MongoDB tests' setup: a server (the wire test server or a real mongod), a driver
//! client, and the relay binary syncing one database.

use crate::mongo_wire::MongoWire;
use crate::relay::{
    assert_cursors_increase, client_state, mongo_config, mongo_source_toml, read_log,
    start_ready_relay_with, wait_until, RelayProcess,
};
use bson::{doc, Bson, Document};
use deltarelay::record::ChangeRecord;
use futures_util::TryStreamExt;
use mongodb::{Client, Collection, Database};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::task::block_in_place;

pub struct Setup {
    /// The wire test server, when the test runs on it rather than on a real mongod.
    pub server: Option<MongoWire>,
    pub db: Database,
    pub dir: TempDir,
    pub relay: RelayProcess,
    pub addr: SocketAddr,
}

impl Setup {
    /// A wire test server, a driver client on database `app`, and a ready relay syncing
    /// `collections` with the extra source keys `extra`.
    pub async fn start(collections: &[&str], extra: &str) -> Setup {
        Setup::start_on(MongoWire::start(), collections, extra).await
    }

    pub async fn start_on(server: MongoWire, collections: &[&str], extra: &str) -> Setup {
        let uri = server.uri();
        Setup::start_at(&uri, "app", Some(server), collections, extra).await
    }

    /// The relay on database `database` of the deployment at `uri`.
    pub async fn start_at(
        uri: &str,
        database: &str,
        server: Option<MongoWire>,
        collections: &[&str],
        extra: &str,
    ) -> Setup {
        let client = Client::with_uri_str(uri).await.unwrap();
        let db = client.database(database);
        let dir = tempfile::tempdir().unwrap();
        let source = mongo_source_toml(uri, database, collections, extra);
        let log_dir = dir.path().join("log");
        let port = crate::free_port();
        let (relay, addr) = block_in_place(|| {
            start_ready_relay_with(dir.path(), &mongo_config(&log_dir, port, &source), port)
        });
        Setup {
            server,
            db,
            dir,
            relay,
            addr,
        }
    }

    /// A relay the test started itself, on database `app` of `server`.
    pub fn adopt(
        server: MongoWire,
        client: &Client,
        dir: TempDir,
        relay: RelayProcess,
        addr: SocketAddr,
    ) -> Setup {
        Setup {
            db: client.database("app"),
            server: Some(server),
            dir,
            relay,
            addr,
        }
    }

    pub fn server(&self) -> &MongoWire {
        self.server
            .as_ref()
            .expect("this test needs the wire test server")
    }

    /// `database.coll`, as records name it.
    pub fn ns(&self, coll: &str) -> String {
        format!("{}.{coll}", self.db.name())
    }

    pub fn events(&self) -> Collection<Document> {
        self.db.collection("events")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Waits until the log holds a record that `found` accepts and returns every record.
    pub fn wait_for(
        &mut self,
        what: &str,
        found: impl Fn(&ChangeRecord) -> bool,
    ) -> Vec<ChangeRecord> {
        let dir = self.log_dir();
        let relay = &mut self.relay;
        let mut records = vec![];
        block_in_place(|| {
            wait_until(Duration::from_secs(30), what, || {
                relay.assert_running();
                records = read_log(&dir);
                records.iter().any(&found)
            })
        });
        records
    }

    /// Waits until the log's state of `coll` equals the collection's documents.
    pub fn wait_for_state(&mut self, coll: &str) -> Vec<ChangeRecord> {
        let dir = self.log_dir();
        let ns = self.ns(coll);
        let collection = self.db.collection::<Document>(coll);
        let relay = &mut self.relay;
        let mut records = vec![];
        let mut last = (0, 0);
        let runtime = tokio::runtime::Handle::current();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_in_place(|| {
                wait_until(
                    Duration::from_secs(90),
                    "the log to match the server",
                    || {
                        relay.assert_running();
                        records = read_log(&dir);
                        let expected = runtime.block_on(documents(&collection));
                        let state = client_state(&records).remove(&ns).unwrap_or_default();
                        last = (state.len(), expected.len());
                        state == expected
                    },
                )
            })
        }));
        if let Err(e) = result {
            eprintln!(
                "log rows vs server documents: {last:?}\n{}",
                self.relay.output()
            );
            std::panic::resume_unwind(e);
        }
        records
    }
}

/// A collection's documents as the client state the log should build: key text → row.
pub async fn documents(collection: &Collection<Document>) -> BTreeMap<String, Value> {
    let all: Vec<Document> = collection
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    all.into_iter()
        .map(|d| {
            let key = json!({"_id": d.get("_id").unwrap().clone().into_relaxed_extjson()});
            (
                key.to_string(),
                bson::Bson::Document(d).into_relaxed_extjson(),
            )
        })
        .collect()
}

pub fn of(records: &[ChangeRecord], collection: &str) -> Vec<ChangeRecord> {
    records
        .iter()
        .filter(|r| r.collection == collection)
        .cloned()
        .collect()
}

/// Inserts `_id` `from..to` one by one, updating every third one later.
pub async fn write_load(coll: Collection<Document>, from: i64, to: i64) {
    for i in from..to {
        coll.insert_one(doc! {"_id": i, "v": 0}).await.unwrap();
        if i % 3 == 0 && i > from {
            coll.update_one(doc! {"_id": i - 1}, doc! {"$inc": {"v": 1}})
                .await
                .unwrap();
        }
    }
}

/// Every insert is in the log once, in commit order (`_id` order), and the state is exact.
pub fn assert_exactly_once_in_order(records: &[ChangeRecord], ns: &str, count: i64) {
    assert_cursors_increase(records);
    let ids: Vec<i64> = of(records, ns)
        .iter()
        .filter_map(|r| r.key.as_ref()?["_id"].as_i64())
        .collect();
    // An update moves a key to the end, so look at the keys never updated: in order, once.
    let mut seen = std::collections::HashSet::new();
    assert!(ids.iter().all(|i| seen.insert(*i)), "a key twice");
    let untouched: Vec<i64> = ids.iter().copied().filter(|i| (i + 1) % 3 != 0).collect();
    assert!(untouched.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(ids.len() as i64, count);
}

/// One document with a value of each kind the BSON mapping treats specially, and its JSON
/// written out by hand (docs/DESIGN.md, "MongoDB value mapping").
pub fn values_document(id: i32) -> (Document, Value) {
    let document = doc! {
        "_id": id,
        "safe": 9_007_199_254_740_991i64,
        "unsafe": 9_007_199_254_740_993i64,
        "negative": -(1i64 << 60),
        "small64": 5i64,
        "int32": -7,
        "double": 2.5,
        "whole": 3.0,
        "nan": Bson::Double(-f64::NAN),
        "inf": f64::NEG_INFINITY,
        "dec": Bson::Decimal128("12.50".parse().unwrap()),
        "at": bson::DateTime::from_millis(1_736_938_800_123),
        "early": bson::DateTime::from_millis(-1000),
        "oid": bson::oid::ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
        "bin": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0, 1, 2] }),
        "ts": bson::Timestamp { time: 5, increment: 1 },
        "re": Bson::RegularExpression(bson::Regex { pattern: "a+".into(), options: "i".into() }),
        "nested": {"list": [1i64 << 62, {"n": Bson::Null}]},
    };
    let expected = json!({
        "_id": id,
        "safe": 9_007_199_254_740_991i64,
        "unsafe": {"$numberLong": "9007199254740993"},
        "negative": {"$numberLong": "-1152921504606846976"},
        "small64": 5,
        "int32": -7,
        "double": 2.5,
        "whole": 3.0,
        "nan": {"$numberDouble": "NaN"},
        "inf": {"$numberDouble": "-Infinity"},
        "dec": {"$numberDecimal": "12.50"},
        "at": {"$date": "2025-01-15T11:00:00.123Z"},
        "early": {"$date": {"$numberLong": "-1000"}},
        "oid": {"$oid": "65a1b2c3d4e5f60718293a4b"},
        "bin": {"$binary": {"base64": "AAEC", "subType": "00"}},
        "ts": {"$timestamp": {"t": 5, "i": 1}},
        "re": {"$regularExpression": {"pattern": "a+", "options": "i"}},
        "nested": {"list": [{"$numberLong": "4611686018427387904"}, {"n": null}]},
    });
    (document, expected)
}
