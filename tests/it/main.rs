//! deltarelay's integration tests, one binary (`cargo test --test it`); one module per area.
//! Run one module with `cargo test --test it <module>::`, e.g. `cargo test --test it chaos::`.
//! The shared support code (private Postgres servers, the relay as a child process, HTTP and
//! SSE clients, the MongoDB wire test server…) is the `testkit` crate in testkit/.

mod api_schemathesis;
mod auth_pg_scope;
mod auth_startup;
mod browser_eventsource;
mod chaos;
mod chaos_history;
mod chaos_nats;
mod client_typescript;
mod console_browser;
mod console_todos;
mod disk_full;
mod freshness;
mod hostile_clients;
mod http_auth;
mod http_changes;
mod http_pg;
mod http_pg_fanout;
mod http_pg_stall;
mod http_stall;
mod http_stream;
mod mongo_failures;
mod mongo_real;
mod mongo_source;
mod mongo_wire_driver;
mod mongo_with_postgres;
mod nats_failover;
mod nats_fencing;
mod nats_log;
mod nats_snapshot;
mod ops_check;
mod ops_shutdown;
mod ops_systemd;
mod ops_writer_death;
mod pg_append_only;
mod pg_copy;
mod pg_filters;
mod pg_partitions;
mod pg_refused;
mod pg_source;
mod pg_tls;
mod quickstart;
mod replication_connection;
mod shape_differential;
mod shape_mongo;
mod shape_pg;
mod shape_scope;
mod writes_mongo;
mod writes_pg;
mod writes_pg_faults;
