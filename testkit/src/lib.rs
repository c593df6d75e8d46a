//! Support code shared by deltarelay's integration tests (`tests/it`, one test binary) and its
//! benchmarks (`benches/`).
//!
//! - [`pg`]: private PostgreSQL servers that tests stop, kill and restart.
//! - [`relay`]: the relay binary as a child process, its config files and its log read back.
//! - [`proxy`]: a TCP proxy that drops, black-holes and partitions connections.
//! - [`http`]: an in-process HTTP server over a temporary log, raw HTTP/1.1 and SSE clients,
//!   record fixtures.
//! - [`browser`]: headless Chromium and a minimal DevTools-protocol client.
//! - [`mongo`] and [`mongo_wire`]: the MongoDB tests' setup and a wire-protocol test server.
//! - [`measure`] and [`bench`]: runtimes, percentiles, process figures, benchmark scale.
//! - [`require`] / [`skip_unless!`]: what to do when a test's prerequisite is missing.

pub mod bench;
pub mod browser;
pub mod http;
pub mod measure;
pub mod mongo;
pub mod mongo_wire;
pub mod nats;
pub mod pg;
pub mod proxy;
pub mod relay;
pub mod sse_clients;
pub mod writes;

/// Whether a test may go ahead: true when `available`. Otherwise the test is skipped —
/// `skipped: <why>` on stderr and false — unless `CI=true`, where a missing prerequisite
/// fails the test (CI installs everything, see `.ci/run`).
pub fn require(available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true makes that a failure");
    }
    skip(why);
    false
}

/// Says on stderr that the test was skipped, and why. For prerequisites that are optional even
/// in CI (use [`require`] for the others).
pub fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

/// Returns from the test (skipped) unless `$available`; see [`require`].
#[macro_export]
macro_rules! skip_unless {
    ($available:expr, $why:expr $(,)?) => {
        if !$crate::require($available, &$why) {
            return;
        }
    };
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` runs (`program --version` or the like, `args`, succeeds).
pub fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The relay binary that Cargo built for this test or benchmark: next to the `deps` directory
/// holding the running executable (`target/<profile>/deps/it-…` → `target/<profile>/deltarelay`).
pub fn relay_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable is in target/<profile>/deps");
    let bin = profile_dir.join(format!("deltarelay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests and benchmarks through cargo, which builds it",
        bin.display()
    );
    bin
}

/// Set in the child process that [`in_own_process`] starts.
const ALONE_VAR: &str = "DELTARELAY_TEST_ALONE";

/// For a test that measures its own process (its memory, say): all tests share the one test
/// binary's process, so the test runs itself again in a child process of its own. Returns
/// `true` in that child (run the body); in the parent it waits for the child, fails when the
/// child fails, and returns `false`. `name` is the test's path, e.g. `http_stall::my_test`.
pub fn in_own_process(name: &str) -> bool {
    if std::env::var_os(ALONE_VAR).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ALONE_VAR, "1")
        .output()
        .expect("running the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{name} failed in its own process ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process"
    );
    false
}
