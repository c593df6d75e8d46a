#!/usr/bin/env bash
# Quick start: builds deltarelay, starts a throwaway Postgres (wal_level=logical) in a temp
# directory with a demo table (deploy/quickstart.sql) and a gentle writer, and runs the relay
# against it in the foreground with its console page at http://127.0.0.1:8080/: the live
# change feed beside a todo app on the TypeScript client library (writes are enabled,
# unauthenticated, on loopback only). Ctrl-C stops everything and removes the temp directory.
#
#   ./deploy/quickstart.sh                 # HTTP on 127.0.0.1:8080
#   PORT=9000 PG_PORT=54330 ./deploy/quickstart.sh
#   BUILD=debug ./deploy/quickstart.sh     # faster build, slower relay
#
# Needs cargo and the PostgreSQL server programs; as root on Debian/Ubuntu it installs
# PostgreSQL with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

http_port=${PORT:-8080}
pg_port=${PG_PORT:-54329}
build=${BUILD:-release}
target_dir=${CARGO_TARGET_DIR:-target}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$http_port" "$pg_port"; do
  if port_in_use "$p"; then
    echo "quickstart: port $p on 127.0.0.1 is in use; choose others, e.g. PORT=9080 PG_PORT=54339 $0" >&2
    exit 1
  fi
done
[ -n "${DELTARELAY_BIN:-}" ] || command -v cargo >/dev/null || { echo "quickstart: cargo not found; install Rust from your package manager or rustup" >&2; exit 1; }

find_pg_bin() {
  pg_bin=""
  for candidate in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin; do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then pg_bin=$candidate; break; fi
  done
}
find_pg_bin
if [ -z "$pg_bin" ] || ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing PostgreSQL (apt-get install postgresql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    find_pg_bin
  fi
fi
if [ -z "$pg_bin" ] || ! command -v psql >/dev/null; then
  echo "quickstart: PostgreSQL (initdb, pg_ctl, psql) not found; install it, e.g. sudo apt-get install postgresql" >&2
  exit 1
fi

if [ -n "${DELTARELAY_BIN:-}" ]; then
  relay_bin=$DELTARELAY_BIN   # a binary built already (the tests use this)
else
  echo "==> building deltarelay ($build)"
  if [ "$build" = release ]; then
    cargo build --release --quiet
  else
    cargo build --quiet
  fi
  relay_bin="$target_dir/$build/deltarelay"
fi

work=$(mktemp -d /tmp/deltarelay-quickstart.XXXXXX)
chmod 755 "$work"
# initdb refuses to run as root: run the server as the postgres user then.
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$work"
  as_pg() { runuser -u postgres -- "$@"; }
fi

writer_pid=""
relay_pid=""
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> cleaning up"
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null || true
  [ -n "$relay_pid" ] && kill -TERM "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "==> starting a throwaway Postgres on 127.0.0.1:$pg_port in $work"
as_pg "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres --no-sync -E UTF8 >/dev/null
cat >>"$work/pg/postgresql.conf" <<CONF
wal_level = logical
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work'
fsync = off
CONF
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w start >/dev/null

psql_app() { psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d app -v ON_ERROR_STOP=1 "$@"; }
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "CREATE DATABASE app"
psql_app -f deploy/quickstart.sql

mkdir -p "$work/log"
cat >"$work/deltarelay.toml" <<CONF
[http]
listen = "127.0.0.1:$http_port"
console = true

[log]
dir = "$work/log"

[auth]
mode = "none"

# The console's todo app writes through POST /v1/mutations: without auth this must be
# allowed explicitly (the relay refuses it on a non-loopback listen address).
[writes]
allow_unauthenticated = true

[[sources]]
name = "demo"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:$pg_port/app"
tables = ["public.todos"]

[collections."public.todos".write]
columns = ["title", "done", "created_at"]
CONF

# A gentle writer: a change every two seconds (it touches only its own rows).
(
  n=0
  while sleep 2; do
    n=$((n + 1))
    case $((n % 3)) in
      0) psql_app -c "UPDATE todos SET done = NOT done WHERE id = (SELECT id FROM todos WHERE title LIKE 'todo #%' ORDER BY random() LIMIT 1)" ;;
      1) psql_app -c "INSERT INTO todos (title) VALUES ('todo #$n (from the demo writer)')" ;;
      2) psql_app -c "DELETE FROM todos WHERE id = (SELECT id FROM todos WHERE title LIKE 'todo #%' ORDER BY created_at LIMIT 1) AND (SELECT count(*) FROM todos WHERE title LIKE 'todo #%') > 3" ;;
    esac >/dev/null 2>&1 || true
  done
) &
writer_pid=$!

"$relay_bin" run --config "$work/deltarelay.toml" &
relay_pid=$!

# Wait for /readyz (bash's /dev/tcp: no curl needed).
ready() {
  exec 3<>"/dev/tcp/127.0.0.1/$http_port" || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  local status
  read -r status <&3 || true
  exec 3>&- 3<&-
  [[ $status == *" 200 "* ]]
}
for _ in $(seq 1 300); do
  ready 2>/dev/null && break
  kill -0 "$relay_pid" 2>/dev/null || { echo "quickstart: the relay exited; see the messages above" >&2; exit 1; }
  sleep 0.2
done

cat <<TXT

==> deltarelay is running. Open the live console in a browser:

      http://127.0.0.1:$http_port/

    It shows a small todo app on the TypeScript client library (add, tick, delete; an
    "offline" switch queues writes, the badge counts them) beside the live change feed.
    A writer changes public.todos every two seconds. In another terminal, try:
      curl -s 'http://127.0.0.1:$http_port/v1/changes?since=0'
      curl -N  'http://127.0.0.1:$http_port/v1/stream'
      psql -h 127.0.0.1 -p $pg_port -U postgres app      # make your own changes
    Config: $work/deltarelay.toml
    Ctrl-C stops everything and removes $work.

TXT
wait "$relay_pid"
