#!/usr/bin/env bash
# Quick start: builds deltarelay, starts a throwaway Postgres (wal_level=logical) in a temp
# directory with a demo table and a gentle writer, and runs the relay against it in the
# foreground. Ctrl-C stops everything and removes the temp directory.
#
#   ./deploy/quickstart.sh            # HTTP on 127.0.0.1:8080
#   PORT=9000 ./deploy/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

http_port=${PORT:-8080}
pg_port=${PG_PORT:-54329}

pg_bin=""
for candidate in "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" /usr/lib/postgresql/*/bin; do
  if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then pg_bin=$candidate; break; fi
done
if [ -z "$pg_bin" ]; then
  echo "quickstart: PostgreSQL server binaries (initdb, pg_ctl) not found; install them, e.g. apt-get install postgresql" >&2
  exit 1
fi

echo "==> building deltarelay (release)"
cargo build --release --quiet

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
psql_app <<'SQL'
CREATE TABLE todos (
    id         serial PRIMARY KEY,
    title      text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO todos (title) VALUES ('Try deltarelay'), ('Write the client');
SQL

mkdir -p "$work/log"
cat >"$work/deltarelay.toml" <<CONF
[http]
listen = "127.0.0.1:$http_port"

[log]
dir = "$work/log"

[auth]
mode = "none"

[[sources]]
name = "demo"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:$pg_port/app"
tables = ["public.todos"]
CONF

# A gentle writer: a change every two seconds.
(
  n=0
  while sleep 2; do
    n=$((n + 1))
    case $((n % 3)) in
      0) psql_app -c "UPDATE todos SET done = NOT done, updated_at = now() WHERE id = (SELECT id FROM todos ORDER BY random() LIMIT 1)" ;;
      1) psql_app -c "INSERT INTO todos (title) VALUES ('todo #$n')" ;;
      2) psql_app -c "DELETE FROM todos WHERE id = (SELECT min(id) FROM todos) AND (SELECT count(*) FROM todos) > 5" ;;
    esac >/dev/null 2>&1 || true
  done
) &
writer_pid=$!

cat <<TXT
==> deltarelay is starting on http://127.0.0.1:$http_port (config: $work/deltarelay.toml)
    Try, in another terminal:
      curl -s 'http://127.0.0.1:$http_port/v1/changes?since=0'
      curl -N  'http://127.0.0.1:$http_port/v1/stream'
      psql -h 127.0.0.1 -p $pg_port -U postgres app      # make your own changes
    Ctrl-C stops everything.
TXT
./target/release/deltarelay run --config "$work/deltarelay.toml" &
relay_pid=$!
wait "$relay_pid"
