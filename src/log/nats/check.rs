//! `deltarelay check` for the shared log: the NATS part (reachable, JetStream enabled,
//! replicas possible for the cluster's size, message size, the stream as it is).

use super::cluster::NatsSettings;
use crate::check::CheckResult;
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
