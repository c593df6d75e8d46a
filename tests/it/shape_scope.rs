//! A shape together with a row scope (in-process HTTP, JWT auth): the reader sees exactly its
//! scope's rows that match its filter, whether a row leaves through the filter or the scope,
//! live and when catching up from any of its cursors.

use deltarelay::auth::{Access, Verifier};
use deltarelay::config::{AuthConfig, AuthMode, CollectionConfig, ScopeConfig};
use deltarelay::http::HttpOptions;
use deltarelay::record::{Change, Op};
use deltarelay::shape::ColumnInfo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::http::*;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn as_table(state: &State) -> BTreeMap<String, Value> {
    state
        .iter()
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shape_within_a_scope() {
    let auth = AuthConfig {
        mode: AuthMode::Jwt,
        jwt_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    let options = HttpOptions {
        access: Access {
            enabled: true,
            collections: BTreeMap::from([(
                "public.todos".to_string(),
                CollectionConfig {
                    read_claims: BTreeMap::new(),
                    scope: Some(ScopeConfig {
                        column: "owner".into(),
                        claim: "sub".into(),
                    }),
                    write: None,
                },
            )]),
            serve_unlisted: false,
        },
        verifier: Some(Arc::new(Verifier::from_config(&auth).unwrap())),
        public_metrics: false,
        limits: None,
        cors_origins: vec![],
        writes: Default::default(),
    };
    let scopes = BTreeMap::from([("public.todos".to_string(), "owner".to_string())]);
    let server = Server::start_with(scopes, options).await;
    let columns: Vec<ColumnInfo> = [
        ("id", "int4"),
        ("owner", "text"),
        ("status", "text"),
        ("title", "text"),
    ]
    .iter()
    .map(|(n, t)| ColumnInfo {
        name: n.to_string(),
        type_name: t.to_string(),
    })
    .collect();
    server
        .log
        .set_columns("public.todos", &columns)
        .await
        .unwrap();
    let todo = |id: i64, owner: &str, status: &str, title: &str| Change {
        collection: "public.todos".into(),
        op: Op::Update,
        key: Some(row(json!({"id": id}))),
        after: Some(row(
            json!({"id": id, "owner": owner, "status": status, "title": title}),
        )),
        ..Default::default()
    };
    let mut model: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
    let mut seq = 0;
    let mut next_tx = || {
        seq += 1;
        tx(seq)
    };
    for id in 0..10 {
        model.insert(id, ("alice".into(), "open".into(), format!("t{id}")));
        commit(
            &server.log,
            vec![(
                next_tx(),
                vec![todo(id, "alice", "open", &format!("t{id}"))],
            )],
        )
        .await;
    }
    let bearer = format!("Bearer {}", token("alice"));
    let shaped = "collections=public.todos&where=status%20%3D%20%27open%27&columns=title";
    let mut client = SseClient::connect_with(
        server.addr,
        &format!("/v1/stream?{shaped}"),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(client.status, 200);
    let mut state = State::new();
    let mut cursors = Vec::new();
    loop {
        let event = client.next_within(Duration::from_secs(20)).await.unwrap();
        if event.event == "ready" {
            break;
        }
        apply(&mut state, &record_of(&event));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for i in 0..200 {
        let id = rng.gen_range(0..12);
        let change = if rng.gen_bool(0.15) {
            model.remove(&id);
            Change {
                collection: "public.todos".into(),
                op: Op::Delete,
                key: Some(row(json!({"id": id}))),
                ..Default::default()
            }
        } else {
            let owner = ["alice", "bob"][rng.gen_range(0..2)];
            let status = ["open", "done"][rng.gen_range(0..2)];
            let title = format!("t{i}");
            model.insert(id, (owner.into(), status.into(), title.clone()));
            todo(id, owner, status, &title)
        };
        commit(&server.log, vec![(next_tx(), vec![change])]).await;
    }
    let want: BTreeMap<String, Value> = model
        .iter()
        .filter(|(_, (owner, status, _))| owner == "alice" && status == "open")
        .map(|(id, (_, _, title))| {
            (
                json!({"id": id}).to_string(),
                json!({"id": id, "title": title}),
            )
        })
        .collect();
    while as_table(&state) != want {
        let Some(event) = client.next_within(Duration::from_secs(10)).await else {
            break;
        };
        if event.event != "change" {
            continue;
        }
        let record = record_of(&event);
        apply(&mut state, &record);
        if rng.gen_bool(0.2) {
            cursors.push((
                record["cursor"].as_str().unwrap().to_string(),
                state.clone(),
            ));
        }
    }
    assert_eq!(as_table(&state), want, "live");
    cursors.push(("0".into(), State::new()));
    for (cursor, mut at) in cursors {
        let mut since = cursor.clone();
        loop {
            let response = get(
                server.addr,
                &format!("/v1/changes?{shaped}&since={since}&limit=3"),
                &[("Authorization", &bearer)],
            )
            .await;
            assert_eq!(response.status, 200, "{}", response.body);
            let body = response.json();
            for record in body["changes"].as_array().unwrap() {
                assert_eq!(record["after"].get("owner"), None, "projected: {record}");
                apply(&mut at, record);
            }
            since = body["cursor"].as_str().unwrap().to_string();
            if !body["has_more"].as_bool().unwrap() {
                break;
            }
        }
        assert_eq!(as_table(&at), want, "catch-up from {cursor}");
    }
}
