//! `deltarelay check` for the shared log: the NATS part (reachable, JetStream enabled,
//! replicas possible for the cluster's size, message size, the account's JetStream limits,
//! the stream as it is).

use super::cluster::NatsSettings;
use crate::check::CheckResult;
use serde_json::Value;
use std::time::Duration;

const SCOPE: &str = "nats";
/// The largest message the relay publishes, headers included (see `MAX_MESSAGE_BYTES`).
const NEEDED_PAYLOAD: usize = super::MAX_MESSAGE_BYTES + 16 * 1024;

pub async fn check(settings: &NatsSettings) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let urls = settings.urls.join(", ");
    let connected = async_nats::ConnectOptions::new()
        .name("deltarelay check")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(settings.urls.as_slice())
        .await;
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            results.push(CheckResult::fail(
                SCOPE,
                "connect",
                format!("cannot reach any of {urls}: {e}"),
                "start nats-server, or correct [log.nats] urls (nats://host:4222)",
            ));
            return results;
        }
    };
    let info = client.server_info();
    results.push(CheckResult::pass(
        SCOPE,
        "connect",
        format!(
            "connected to {} (nats-server {})",
            info.server_name, info.version
        ),
    ));
    if !info.jetstream {
        results.push(CheckResult::fail(
            SCOPE,
            "jetstream",
            format!("JetStream is not enabled on {}", info.server_name),
            "enable it in nats-server.conf on every node: jetstream { store_dir: /var/lib/nats/jetstream }",
        ));
        return results;
    }
    results.push(CheckResult::pass(SCOPE, "jetstream", "enabled"));
    // Every node of a cluster announces its client URL; a single server announces none.
    let size = info.connect_urls.len().max(1);
    results.push(match (settings.replicas <= size, &info.cluster) {
        (true, cluster) => CheckResult::pass(
            SCOPE,
            "replicas",
            format!(
                "replicas = {} on a cluster of {size} ({})",
                settings.replicas,
                cluster.as_deref().unwrap_or("no cluster")
            ),
        ),
        (false, _) => CheckResult::fail(
            SCOPE,
            "replicas",
            format!(
                "replicas = {} but the cluster has {size} node(s)",
                settings.replicas
            ),
            format!(
                "set [log.nats] replicas = {size} or fewer, or add NATS nodes (3 for replicas = 3)"
            ),
        ),
    });
    results.push(if info.max_payload >= NEEDED_PAYLOAD {
        CheckResult::pass(SCOPE, "max_payload", format!("{} bytes", info.max_payload))
    } else {
        CheckResult::fail(
            SCOPE,
            "max_payload",
            format!(
                "{} bytes; the relay publishes messages of up to {NEEDED_PAYLOAD}",
                info.max_payload
            ),
            "set max_payload: 1MB (the default) in nats-server.conf",
        )
    });
    let js = async_nats::jetstream::new(client);
    results.push(account(&js, settings).await);
    results.push(match js.get_stream(&settings.stream).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) if info.config.num_replicas != settings.replicas => CheckResult::warn(
                SCOPE,
                "stream",
                format!(
                    "{} exists with {} replica(s), not the configured {}",
                    settings.stream, info.config.num_replicas, settings.replicas
                ),
                format!(
                    "change its replicas with `nats stream edit {} --replicas {}`, or set replicas = {}",
                    settings.stream, settings.replicas, info.config.num_replicas
                ),
            ),
            Ok(info) => CheckResult::pass(
                SCOPE,
                "stream",
                format!(
                    "{}: {} message(s), {} bytes, last sequence {}",
                    settings.stream, info.state.messages, info.state.bytes, info.state.last_sequence
                ),
            ),
            Err(e) => CheckResult::fail(
                SCOPE,
                "stream",
                format!("cannot read {}: {e}", settings.stream),
                "see the nats-server logs: the stream may have lost its quorum",
            ),
        },
        Err(_) => CheckResult::pass(
            SCOPE,
            "stream",
            format!("{} does not exist yet; the first relay creates it", settings.stream),
        ),
    });
    results
}

/// The streams the relay keeps in JetStream: the log, its meta bucket and its snapshots.
fn relay_streams(settings: &NatsSettings) -> [String; 3] {
    [
        settings.stream.clone(),
        format!("KV_{}", settings.meta_bucket()),
        format!("OBJ_{}", settings.snapshot_bucket()),
    ]
}

/// The account's JetStream limits against what the relay needs. Asked for with a plain
/// request and read as JSON: the client's typed account info expects fields that
/// nats-server 2.9 does not send.
async fn account(js: &async_nats::jetstream::Context, settings: &NatsSettings) -> CheckResult {
    let reply = js.client().request("$JS.API.INFO", "".into()).await;
    let info =
        match reply.map(|m| serde_json::from_slice::<Value>(&m.payload)) {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                return CheckResult::fail(
                    SCOPE,
                    "account",
                    format!("the JetStream account info is not JSON: {e}"),
                    "see the nats-server logs",
                )
            }
            Err(e) => return CheckResult::fail(
                SCOPE,
                "account",
                format!("cannot read the JetStream account info: {e}"),
                "see the nats-server logs: JetStream may have no meta leader (too few nodes up)",
            ),
        };
    let mut missing = 0;
    for name in relay_streams(settings) {
        if js.get_stream(&name).await.is_err() {
            missing += 1;
        }
    }
    account_result(&info, settings.replicas, missing)
}

/// The verdict on an account info reply, when `missing` of the relay's streams are still to
/// be created. A tiered account (limits per replica count) is judged by its `R<replicas>` tier.
fn account_result(info: &Value, replicas: usize, missing: u64) -> CheckResult {
    if let Some(error) = info.get("error") {
        return CheckResult::fail(
            SCOPE,
            "account",
            format!(
                "JetStream refused the account info: {}",
                error["description"].as_str().unwrap_or("no description")
            ),
            "enable JetStream for this account in nats-server.conf (accounts { <name> { jetstream: enabled } })",
        );
    }
    let tier = info
        .get("tiers")
        .and_then(|tiers| tiers.get(format!("R{replicas}")))
        .unwrap_or(info);
    let number = |value: &Value, name: &str| value.get(name).and_then(Value::as_i64);
    let limits = tier.get("limits").cloned().unwrap_or(Value::Null);
    let limit = |name: &str| number(&limits, name).filter(|n| *n >= 0);
    let used_storage = number(tier, "storage").unwrap_or(0);
    let used_streams = number(tier, "streams").unwrap_or(0);

    if limits.get("max_bytes_required").and_then(Value::as_bool) == Some(true) {
        return CheckResult::fail(
            SCOPE,
            "account",
            "the account requires every stream to set max_bytes; the relay's log stream has no byte limit (snapshots compact it)",
            "remove max_bytes_required from this account's jetstream limits in nats-server.conf",
        );
    }
    if let Some(max) = limit("max_streams") {
        if used_streams + missing as i64 > max {
            return CheckResult::fail(
                SCOPE,
                "account",
                format!(
                    "the account may hold {max} stream(s), holds {used_streams}, and the relay needs {missing} more (the log, its meta bucket, its snapshots)"
                ),
                "raise max_streams in this account's jetstream limits in nats-server.conf",
            );
        }
    }
    if limit("max_consumers") == Some(0) {
        return CheckResult::fail(
            SCOPE,
            "account",
            "the account may hold no consumer; a node reads snapshots through one",
            "raise max_consumers in this account's jetstream limits in nats-server.conf",
        );
    }
    let streams = match limit("max_streams") {
        Some(max) => format!("{used_streams} of {max} streams"),
        None => format!("{used_streams} streams (no limit)"),
    };
    match limit("max_storage") {
        Some(max) if used_storage * 10 >= max * 9 => CheckResult::warn(
            SCOPE,
            "account",
            format!("storage {used_storage} of {max} bytes used (over 90%), {streams}"),
            "raise max_file in this account's jetstream limits, or snapshot more often ([log.nats] snapshot_after) so that the stream is compacted sooner",
        ),
        Some(max) => CheckResult::pass(
            SCOPE,
            "account",
            format!("storage {used_storage} of {max} bytes used, {streams}"),
        ),
        None => CheckResult::pass(
            SCOPE,
            "account",
            format!("storage {used_storage} bytes used (no account limit), {streams}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;
    use serde_json::json;

    fn info(limits: Value) -> Value {
        json!({"type": "io.nats.jetstream.api.v1.account_info_response", "memory": 0,
               "storage": 950, "streams": 2, "consumers": 0, "limits": limits})
    }

    #[test]
    fn an_unlimited_account_passes() {
        let result = account_result(&info(json!({"max_storage": -1, "max_streams": -1})), 3, 3);
        assert_eq!(result.status, Status::Pass);
        assert!(
            result.detail.contains("no account limit"),
            "{}",
            result.detail
        );
    }

    #[test]
    fn too_few_streams_left_fails_and_says_how_many() {
        let result = account_result(&info(json!({"max_streams": 4})), 3, 3);
        assert_eq!(result.status, Status::Fail);
        assert!(result.detail.contains("holds 2"), "{}", result.detail);
        assert!(result.detail.contains("3 more"), "{}", result.detail);
        // Once the relay's streams exist they count among the used ones.
        let result = account_result(&info(json!({"max_streams": 4})), 3, 0);
        assert_eq!(result.status, Status::Pass);
    }

    #[test]
    fn storage_nearly_full_warns() {
        let result = account_result(&info(json!({"max_storage": 1000})), 3, 0);
        assert_eq!(result.status, Status::Warn);
        let result = account_result(&info(json!({"max_storage": 10_000})), 3, 0);
        assert_eq!(result.status, Status::Pass);
    }

    #[test]
    fn required_max_bytes_and_no_consumers_fail() {
        let result = account_result(&info(json!({"max_bytes_required": true})), 3, 0);
        assert_eq!(result.status, Status::Fail);
        let result = account_result(&info(json!({"max_consumers": 0})), 3, 0);
        assert_eq!(result.status, Status::Fail);
    }

    #[test]
    fn a_tiered_account_is_judged_by_its_replica_tier() {
        let tiered = json!({"memory": 0, "storage": 0, "streams": 0, "limits": {},
            "tiers": {"R1": {"storage": 0, "streams": 0, "limits": {"max_streams": 10}},
                      "R3": {"storage": 0, "streams": 1, "limits": {"max_streams": 2}}}});
        assert_eq!(account_result(&tiered, 3, 3).status, Status::Fail);
        assert_eq!(account_result(&tiered, 1, 3).status, Status::Pass);
    }

    #[test]
    fn a_refusal_fails_with_its_reason() {
        let refused =
            json!({"error": {"code": 503, "description": "jetstream not enabled for account"}});
        let result = account_result(&refused, 3, 0);
        assert_eq!(result.status, Status::Fail);
        assert!(
            result.detail.contains("not enabled for account"),
            "{}",
            result.detail
        );
    }
}
