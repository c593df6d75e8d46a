//! Delta queries: `GET /v1/changes` pages of 1,000 walked from the beginning of a log of
//! 1,000,000 entries, unscoped and scoped by a row filter (JWT `sub` = the row's `owner`, one of
//! ten owners): pages per second and per-page latency.
//!
//! Baselines in the same run, for the same pages:
//! - Postgres: the keyset query a hand-written endpoint would run on the source table
//!   (`WHERE id > $last [AND owner = $sub] ORDER BY id LIMIT 1000`, by index, rows as one JSON
//!   text), over one open connection;
//! - the relay's own log read in this process (`LogReader::page`, no HTTP).
//!
//! One client walks at a time; each request opens its own connection (`Connection: close`).
//! `cargo bench --bench delta_queries`; `DELTARELAY_BENCH_SCALE=0.05` for a smaller log. It
//! prints its figures and never fails on timing.

use deltarelay::log::reader::{ReadFrom, RowFilter};
use deltarelay::log::LogReader;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::bench::*;
use testkit::free_port;
use testkit::pg::PgServer;
use testkit::relay::postgres_config;

const SECRET: &str = "bench-secret-0123456789abcdef-0123456789";
const OWNERS: u64 = 10;
const PAGE: usize = 1000;
/// Owners whose scoped walk is measured.
const SCOPED_WALKS: u64 = 3;

/// Per-page times of one or more walks.
#[derive(Default)]
struct Walk {
    pages: Vec<f64>,
    entries: u64,
    total: Duration,
}

impl Walk {
    fn add(&mut self, took: Duration, entries: usize) {
        self.pages.push(took.as_secs_f64() * 1000.0);
        self.entries += entries as u64;
        self.total += took;
    }

    fn pages_per_second(&self) -> f64 {
        self.pages.len() as f64 / self.total.as_secs_f64()
    }

    fn line(&mut self) -> String {
        format!(
            "{:>7.0} pages/s  {}",
            self.pages_per_second(),
            latency_line(&mut self.pages)
        )
    }
}

fn main() {
    heading("delta queries: /v1/changes pages of 1,000, against Postgres keyset pages");
    let rows = scaled(1_000_000, 2000);
    let pg = PgServer::start();
    timed(&format!("creating {rows} rows"), || {
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, qty int NOT NULL, \
                   title text, price numeric(10,2), active boolean, created timestamptz NOT NULL DEFAULT now());
                 INSERT INTO items (id, owner, qty, title, price, active)
                   SELECT g, 'user' || (g % {OWNERS}), g % 1000, 'item ' || md5(g::text), (g % 10000) / 100.0, g % 2 = 0
                   FROM generate_series(1, {rows}) g;
                 CREATE INDEX items_by_owner ON items (owner, id);"
            ),
        );
        pg.psql("app", "VACUUM ANALYZE items");
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let base = postgres_config(&pg.url("app"), dir.path(), &["public.items"], port)
        + "\n[limits]\nrequests_per_second = 0\n\n\
           [collections.\"public.items\"]\nscope = { column = \"owner\", claim = \"sub\" }\n";
    let jwt = format!("{base}\n[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Scoped: JWT auth, each owner's rows.
    let mut relay = start_relay(dir.path(), &jwt);
    timed("relay: copying the table into its log", || {
        wait_ready(&mut relay, addr, Duration::from_secs(3600))
    });
    let owners: Vec<String> = (0..SCOPED_WALKS.min(OWNERS))
        .map(|i| format!("user{i}"))
        .collect();
    let mut scoped = Walk::default();
    let mut scoped_pg = Walk::default();
    let mut scoped_log = Walk::default();
    runtime.block_on(async {
        let client = pg_client(&pg.url("app")).await;
        for owner in &owners {
            let bearer = format!("Bearer {}", token(owner));
            walk_http(addr, &[("Authorization", &bearer)], &mut scoped).await;
            walk_postgres(&client, Some(owner), &mut scoped_pg).await;
        }
    });
    for owner in &owners {
        let filter = RowFilter::none().scoped("public.items", owner);
        walk_log(dir.path(), &filter, &mut scoped_log);
    }
    let expected = rows.div_ceil(OWNERS) * owners.len() as u64;
    for (who, walk) in [("relay", &scoped), ("postgres", &scoped_pg)] {
        // Owner i holds the ids ≡ i (mod 10): each holds rows/10, give or take one.
        assert!(
            walk.entries.abs_diff(expected) <= owners.len() as u64,
            "{who}: {} scoped entries, expected about {expected}",
            walk.entries
        );
    }
    relay.terminate();

    // Unscoped: the same log, no auth (the scope column stays configured, so nothing is
    // recomputed).
    let mut relay = start_relay(dir.path(), &base);
    wait_ready(&mut relay, addr, Duration::from_secs(600));
    let mut unscoped = Walk::default();
    let mut unscoped_pg = Walk::default();
    let mut unscoped_log = Walk::default();
    runtime.block_on(async {
        let client = pg_client(&pg.url("app")).await;
        walk_http(addr, &[], &mut unscoped).await;
        walk_postgres(&client, None, &mut unscoped_pg).await;
    });
    walk_log(dir.path(), &RowFilter::collections(None), &mut unscoped_log);
    for (who, walk) in [("relay", &unscoped), ("postgres", &unscoped_pg)] {
        assert_eq!(walk.entries, rows, "{who}: entries walked");
    }
    relay.terminate();

    println!(
        "delta queries over a log of {rows} entries (load now {})",
        load()
    );
    for (what, relay, pg, log) in [
        (
            "unscoped".to_string(),
            &mut unscoped,
            &mut unscoped_pg,
            &mut unscoped_log,
        ),
        (
            format!("scoped to one of {OWNERS} owners (JWT)"),
            &mut scoped,
            &mut scoped_pg,
            &mut scoped_log,
        ),
    ] {
        println!(
            "  {what}: {} pages, {} entries",
            relay.pages.len(),
            relay.entries
        );
        println!("      postgres keyset query {}", pg.line());
        println!("      log read in process   {}", log.line());
        println!("      deltarelay HTTP       {}", relay.line());
        println!(
            "      relay/postgres pages/s {:.2}",
            relay.pages_per_second() / pg.pages_per_second()
        );
    }
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign a token")
}

/// Walks `/v1/changes` from the beginning to the end in pages of [`PAGE`].
async fn walk_http(addr: SocketAddr, headers: &[(&str, &str)], walk: &mut Walk) {
    let mut since = "0".to_string();
    loop {
        let path = format!("/v1/changes?since={since}&limit={PAGE}");
        let started = Instant::now();
        let response = testkit::http::get(addr, &path, headers).await;
        let took = started.elapsed();
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        let body: Value = response.json();
        let changes = body["changes"].as_array().map_or(0, Vec::len);
        walk.add(took, changes);
        since = body["cursor"].as_str().expect("a cursor").to_string();
        if body["has_more"] != json!(true) {
            return;
        }
    }
}

/// The same walk on the source table: keyset pages by primary key (and owner).
async fn walk_postgres(client: &tokio_postgres::Client, owner: Option<&str>, walk: &mut Walk) {
    let page = "SELECT coalesce(json_agg(row_to_json(t))::text, '[]'), max(id), count(*) FROM \
                (SELECT * FROM items WHERE id > $1 {scope} ORDER BY id LIMIT 1000) t";
    let sql = page.replace(
        "{scope}",
        if owner.is_some() {
            "AND owner = $2"
        } else {
            ""
        },
    );
    let statement = client.prepare(&sql).await.expect("prepare the page query");
    let mut last: i64 = 0;
    loop {
        let started = Instant::now();
        let row = match owner {
            Some(owner) => client.query_one(&statement, &[&last, &owner]).await,
            None => client.query_one(&statement, &[&last]).await,
        }
        .expect("page query");
        let json: String = row.get(0);
        let took = started.elapsed();
        let count: i64 = row.get(2);
        if count == 0 {
            return;
        }
        std::hint::black_box(json);
        walk.add(took, count as usize);
        last = row.get(1);
    }
}

/// The same walk through the relay's log reader in this process.
fn walk_log(dir: &Path, filter: &RowFilter, walk: &mut Walk) {
    let reader = LogReader::open(dir).expect("open the log");
    let mut from = 0;
    loop {
        let started = Instant::now();
        let page = reader
            .page(&ReadFrom::Seq(from), filter, PAGE)
            .expect("read a page");
        let took = started.elapsed();
        let Some(last) = page.entries.last() else {
            return;
        };
        from = last.seq;
        walk.add(took, page.entries.len());
        if !page.has_more {
            return;
        }
    }
}
