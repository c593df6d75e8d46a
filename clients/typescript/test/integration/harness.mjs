// A private PostgreSQL 15 and the relay binary for integration tests, started the way the
// Rust testkit does it (testkit/src/pg.rs, testkit/src/relay.rs): initdb as the `postgres`
// user when running as root, free loopback ports, temporary directories, all removed after.
import { execFileSync, spawn } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, openSync, readFileSync, appendFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = process.getuid?.() === 0;
const repo = resolve(fileURLToPath(new URL("../../../../", import.meta.url)));
export const relayBin = process.env.DELTARELAY_BIN ?? join(repo, "target/debug/deltarelay");

/** A PostgreSQL program from PATH, else from the Debian install location. */
function pgBin(name) {
  for (const dir of (process.env.PATH ?? "").split(":")) if (dir && existsSync(join(dir, name))) return join(dir, name);
  return join("/usr/lib/postgresql/15/bin", name);
}

/** Why these tests cannot run here, or null. Under CI=true a missing prerequisite fails. */
export function missingPrerequisite() {
  if (!existsSync(relayBin)) return `${relayBin} is missing (cargo build)`;
  for (const p of ["initdb", "pg_ctl", "psql"]) if (!existsSync(pgBin(p))) return `${p} is not installed (PostgreSQL 15)`;
  if (root && !existsSync("/usr/sbin/runuser") && !existsSync("/usr/bin/runuser")) return "runuser is missing";
  return null;
}

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on("error", fail);
  });
}

function asServerUser(program, args) {
  const [cmd, argv] = root ? ["runuser", ["-u", "postgres", "--", pgBin(program), ...args]] : [pgBin(program), args];
  return execFileSync(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] }).toString();
}

const cleanups = new Set();
process.on("exit", () => cleanups.forEach((f) => f()));

export class Pg {
  static async start() {
    const dir = mkdtempSync(join(tmpdir(), "deltarelay-node-pg"));
    if (root) chownSync(dir, ...postgresIds());
    const pg = new Pg(dir);
    asServerUser("initdb", ["-D", pg.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    writeFileSync(join(pg.data, "pg_hba.conf"), "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n");
    for (let tries = 0; ; tries++) {
      pg.port = await freePort();
      appendFileSync(join(pg.data, "postgresql.conf"),
        `\nwal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\nlisten_addresses = '127.0.0.1'\nport = ${pg.port}\n` +
        `unix_socket_directories = '${dir}'\nfsync = off\nfull_page_writes = off\nshared_buffers = 32MB\n`);
      try {
        asServerUser("pg_ctl", ["start", "-D", pg.data, "-l", join(dir, "postgres.log"), "-w", "-t", "30"]);
        break;
      } catch (e) {
        if (tries >= 4 || !pg.log().includes("could not bind")) throw new Error(`pg_ctl start: ${e.stderr}\n${pg.log()}`);
      }
    }
    cleanups.add(pg.stopSync);
    return pg;
  }

  constructor(dir) {
    this.dir = dir;
    this.data = join(dir, "data");
  }

  log() {
    try { return readFileSync(join(this.dir, "postgres.log"), "utf8"); } catch { return ""; }
  }

  url(db) {
    return `postgres://postgres@127.0.0.1:${this.port}/${db}`;
  }

  /** Runs SQL with psql; returns its unaligned output. */
  psql(db, sql) {
    return execFileSync(pgBin("psql"), ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", String(this.port), "-U", "postgres", "-d", db, "-c", sql], { stdio: ["ignore", "pipe", "pipe"] }).toString().trim();
  }

  /** `SELECT * FROM table` as an array of row objects, ordered by `order`. */
  rows(db, table, order = "id") {
    return JSON.parse(this.psql(db, `SELECT coalesce(json_agg(row_to_json(t) ORDER BY ${order}), '[]') FROM ${table} t`));
  }

  stopSync = () => {
    cleanups.delete(this.stopSync);
    try { asServerUser("pg_ctl", ["stop", "-D", this.data, "-m", "immediate"]); } catch {}
    rmSync(this.dir, { recursive: true, force: true });
  };
}

function postgresIds() {
  const line = readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith("postgres:"));
  if (!line) throw new Error("no postgres user (useradd --system postgres)");
  const [, , uid, gid] = line.split(":");
  return [Number(uid), Number(gid)];
}

/** The relay binary as a child process with one Postgres source; `extra` is appended TOML. */
export class Relay {
  static async start(pg, db, tables, extra = "") {
    const dir = mkdtempSync(join(tmpdir(), "deltarelay-node-relay"));
    const port = await freePort();
    const config = `[http]\nlisten = "127.0.0.1:${port}"\n\n[log]\ndir = ${JSON.stringify(join(dir, "log"))}\n\n` +
      `[[sources]]\nname = "app_pg"\nkind = "postgres"\nurl = ${JSON.stringify(pg.url(db))}\n` +
      `slot = "${db}_slot"\npublication = "${db}_pub"\ntables = [${tables.map((t) => JSON.stringify(t)).join(", ")}]\n${extra}`;
    writeFileSync(join(dir, "deltarelay.toml"), config);
    const relay = new Relay(dir, port, `${db}_slot`);
    relay.spawn();
    await relay.waitReady();
    return relay;
  }

  constructor(dir, port, slot) {
    Object.assign(this, { dir, port, slot, url: `http://127.0.0.1:${port}` });
  }

  spawn() {
    const err = openSync(join(this.dir, "relay.log"), "a");
    this.child = spawn(relayBin, ["run", "--config", join(this.dir, "deltarelay.toml")], {
      stdio: ["ignore", "ignore", err],
      env: { ...process.env, DELTARELAY_LOG: "info,deltarelay=debug" },
    });
    this.exited = new Promise((ok) => this.child.once("exit", ok));
    cleanups.add(this.killSync);
  }

  output() {
    try { return readFileSync(join(this.dir, "relay.log"), "utf8"); } catch { return ""; }
  }

  /** Waits until `/readyz` answers 200 (every source connected, its initial copy done). */
  async waitReady(ms = 60000) {
    const end = Date.now() + ms;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`the relay exited:\n${this.output()}`);
      try {
        if ((await fetch(this.url + "/readyz")).ok) return;
      } catch {}
      if (Date.now() > end) throw new Error(`the relay is not ready after ${ms} ms:\n${this.output()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** SIGKILL, like a crash. */
  async kill() {
    cleanups.delete(this.killSync);
    this.child.kill("SIGKILL");
    await this.exited;
  }

  killSync = () => {
    cleanups.delete(this.killSync);
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
  };

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * How long a test waits for a condition. Generous because CI runs these tests beside the whole
 * Rust suite on two cores; a passing run never waits this long (these are not timings).
 */
export const WAIT = 90000;

/**
 * Resolves once `check()` holds (polled every 20 ms), or rejects after `ms`. `what` names the
 * condition: a string, or a function returning one (to show the state at the time out).
 */
export async function until(check, ms, what) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === "function" ? what() : what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
