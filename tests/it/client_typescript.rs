//! The TypeScript client library (`clients/typescript`) as part of the one test suite: its
//! locked dev tools (`npm ci`), a type check, the build and unit tests (with the core's 10 KB
//! min+gzip limit), then its integration tests in Node against this build's relay binary and a
//! private Postgres (and headless Chromium). Needs Node.js ≥ 20 and npm (`.ci/run` installs
//! them); without them the test is skipped, and fails under `CI=true`.

use std::path::Path;
use std::process::Command;

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("DELTARELAY_BIN", testkit::relay_bin())
        .status()
        .unwrap_or_else(|e| panic!("running npm {}: {e}", args.join(" ")));
    assert!(status.success(), "npm {} failed ({status})", args.join(" "));
}

#[test]
fn the_typescript_client_builds_and_passes_its_unit_and_integration_tests() {
    testkit::skip_unless!(
        testkit::runs("node", &["--version"]) && testkit::runs("npm", &["--version"]),
        "Node.js and npm are not installed (apt-get install nodejs npm)"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
    npm(&dir, &["ci", "--no-audit", "--no-fund"]);
    npm(&dir, &["run", "typecheck"]);
    npm(&dir, &["test"]);
    npm(&dir, &["run", "test:integration"]);
}
