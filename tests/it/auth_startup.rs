//! Startup refusals: `auth.mode = "none"` on a non-loopback address, and a JWT config whose key
//! is missing, stop the daemon before it serves anything, with a message saying what to change.

use std::process::Command;

fn run(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deltarelay.toml");
    std::fs::write(
        &path,
        config.replace("LOGDIR", &dir.path().join("log").display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

const BASE: &str = r#"
[http]
listen = "0.0.0.0:0"
[log]
dir = "LOGDIR"
[[sources]]
name = "app_pg"
kind = "postgres"
url = "postgres://relay@127.0.0.1:1/app"
tables = ["public.items"]
"#;

#[test]
fn no_auth_on_a_public_address_refuses_to_start() {
    let (code, output) = run(BASE);
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains("not a loopback address")
            && output.contains("allow_unauthenticated_remote"),
        "{output}"
    );
    assert!(!output.contains("serving HTTP"), "{output}");
}

#[test]
fn jwt_without_a_key_refuses_to_start() {
    let (code, output) = run(&format!(
        "{BASE}\n[auth]\nmode = \"jwt\"\njwt_secret_env = \"DELTARELAY_TEST_NO_SUCH_SECRET\"\n"
    ));
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains("DELTARELAY_TEST_NO_SUCH_SECRET"),
        "{output}"
    );
}

#[test]
fn an_allowed_public_address_without_auth_is_announced_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deltarelay.toml");
    let config = BASE
        .replace("LOGDIR", &dir.path().join("log").display().to_string())
        .replace(
            "listen = \"0.0.0.0:0\"",
            "listen = \"0.0.0.0:0\"\nallow_unauthenticated_remote = true",
        );
    std::fs::write(&path, config).unwrap();
    let stderr_path = dir.path().join("relay.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_deltarelay"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let output = loop {
        let output = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if output.contains("AUTH IS OFF") || std::time::Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        output.contains("AUTH IS OFF ON A NON-LOOPBACK ADDRESS"),
        "{output}"
    );
}
