//! MongoDB prerequisites: a replica set (change streams need an oplog), an oplog window long
//! enough to outlast an outage of the relay, and pre-/post-images when the config asks for them.

use super::config::{FullDocumentMode, MongoConfig};
use crate::check::CheckResult;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use std::time::Duration;

/// Below this oplog window a relay outage of a day forces a full re-copy.
const SHORT_OPLOG_HOURS: f64 = 24.0;

/// Every check for one MongoDB source. Stops after the connection check when it fails.
pub async fn check(source: &MongoConfig) -> Vec<CheckResult> {
    let scope = source.name.as_str();
    let db = match connect(source).await {
        Ok(db) => db,
        Err(e) => {
            return vec![CheckResult::fail(
            scope,
            "url",
            format!("unusable connection URL: {e}"),
            "write it as mongodb://USER:PASSWORD@HOST:27017/?replicaSet=NAME or mongodb+srv://…",
        )]
        }
    };
    let hello = match db.run_command(doc! {"hello": 1}).await {
        Ok(hello) => hello,
        Err(e) => {
            return vec![CheckResult::fail(
                scope,
                "connect",
                format!("cannot reach the server: {e}"),
                "check host, port, credentials and TLS options in the URL, and that the server admits this host",
            )]
        }
    };
    let mut results = vec![CheckResult::pass(scope, "connect", "connected")];
    let mongos = hello.get_str("msg") == Ok("isdbgrid");
    results.push(match hello.get_str("setName") {
        Ok(set) => CheckResult::pass(scope, "replica set", format!("replica set {set:?}")),
        Err(_) if mongos => CheckResult::pass(scope, "replica set", "sharded cluster (mongos)"),
        Err(_) => CheckResult::fail(
            scope,
            "replica set",
            "this server is a standalone: change streams need a replica set",
            "start mongod with --replSet rs0 and run rs.initiate() once (a single-node replica set is fine)",
        ),
    });
    if !mongos {
        results.push(oplog_window(scope, &db).await);
    }
    if source.pre_images || source.full_document != FullDocumentMode::UpdateLookup {
        results.push(images(scope, &db, source).await);
    }
    results
}

async fn connect(source: &MongoConfig) -> Result<Database, mongodb::error::Error> {
    let mut options = ClientOptions::parse(&source.url).await?;
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    let client = Client::with_options(options)?;
    Ok(client.database(&source.database))
}

/// The time between the oldest and newest oplog entries.
async fn oplog_window(scope: &str, db: &Database) -> CheckResult {
    let oplog = db
        .client()
        .database("local")
        .collection::<Document>("oplog.rs");
    let mut ends = Vec::new();
    for direction in [1, -1] {
        let entry = oplog
            .find_one(doc! {})
            .sort(doc! {"$natural": direction})
            .projection(doc! {"ts": 1, "wall": 1})
            .await;
        match entry {
            Ok(Some(entry)) => ends.push(entry),
            Ok(None) => {
                return CheckResult::warn(
                    scope,
                    "oplog window",
                    "the oplog is empty",
                    "run rs.initiate() if the replica set is not initiated yet",
                )
            }
            Err(e) => {
                return CheckResult::warn(
                    scope,
                    "oplog window",
                    format!("cannot read local.oplog.rs: {e}"),
                    "grant the clusterMonitor role to see the window, or check rs.printReplicationInfo() by hand",
                )
            }
        }
    }
    let seconds = |entry: &Document| match entry.get("ts") {
        Some(Bson::Timestamp(ts)) => f64::from(ts.time),
        _ => 0.0,
    };
    let hours = (seconds(&ends[1]) - seconds(&ends[0])) / 3600.0;
    let found = format!("the oplog holds {hours:.1} hours");
    if hours < SHORT_OPLOG_HOURS {
        CheckResult::warn(
            scope,
            "oplog window",
            format!("{found}: a longer outage of the relay means copying everything again"),
            format!(
                "db.adminCommand({{replSetResizeOplog: 1, minRetentionHours: {SHORT_OPLOG_HOURS}}}) or a larger oplog size"
            ),
        )
    } else {
        CheckResult::pass(scope, "oplog window", found)
    }
}

/// Pre- and post-images are recorded per collection (`changeStreamPreAndPostImages`).
async fn images(scope: &str, db: &Database, source: &MongoConfig) -> CheckResult {
    let listed = match db.list_collections().await {
        Ok(cursor) => cursor.try_collect::<Vec<_>>().await,
        Err(e) => Err(e),
    };
    let collections = match listed {
        Ok(list) => list,
        Err(e) => {
            return CheckResult::warn(
                scope,
                "pre-images",
                format!("cannot list collections: {e}"),
                "grant the read role on the database",
            )
        }
    };
    let wanted = |name: &str| {
        source.all_collections && !name.starts_with("system.")
            || source.collections.iter().any(|c| c == name)
    };
    let missing: Vec<String> = collections
        .iter()
        .filter(|c| wanted(&c.name))
        .filter(|c| {
            !c.options
                .change_stream_pre_and_post_images
                .as_ref()
                .is_some_and(|o| o.enabled)
        })
        .map(|c| c.name.clone())
        .collect();
    if missing.is_empty() {
        return CheckResult::pass(
            scope,
            "pre-images",
            "every synced collection records pre- and post-images",
        );
    }
    let detail = format!(
        "collections without changeStreamPreAndPostImages: {}",
        missing.join(", ")
    );
    let fix = "for each: db.runCommand({collMod: \"<name>\", changeStreamPreAndPostImages: {enabled: true}}) (MongoDB 6.0+)";
    if source.full_document == FullDocumentMode::Required {
        CheckResult::fail(scope, "pre-images", detail, fix)
    } else {
        CheckResult::warn(scope, "pre-images", detail, fix)
    }
}
