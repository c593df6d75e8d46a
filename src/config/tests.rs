use super::*;
use std::io::Write;

pub const MINIMAL: &str = r#"
[http]
listen = "127.0.0.1:8080"
[log]
dir = "/tmp/x"
tombstone_retention = "30d"
[auth]
mode = "none"
[[sources]]
name = "app_pg"
kind = "postgres"
url = "postgres://relay@127.0.0.1:5432/app"
tables = ["public.events", "public.users"]
"#;

/// A config file with `text`, loaded: for the source kinds' own tests.
pub fn load_text(text: &str) -> Result<Config, ConfigError> {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    Config::load(file.path())
}

#[test]
fn loads_the_minimal_file() {
    let config = load_text(MINIMAL).unwrap();
    assert_eq!(
        config.log.tombstone_retention,
        Duration::from_secs(30 * 86400)
    );
    let source = &config.sources[0];
    assert_eq!(source.kind, "postgres");
    assert_eq!(
        source.options["tables"],
        serde_json::json!(["public.events", "public.users"])
    );
}

#[test]
fn rejects_unknown_keys_by_name() {
    let err = load_text(&MINIMAL.replace("[auth]", "[auth]\nmoed = 1")).unwrap_err();
    assert!(err.to_string().contains("moed"), "{err}");
    for (section, typo) in [
        ("[http]", "consol = true"),
        ("[log]", "tombstone_retension = \"1d\""),
    ] {
        let text = MINIMAL.replace(section, &format!("{section}\n{typo}"));
        let err = load_text(&text).unwrap_err().to_string();
        let key = typo.split(' ').next().unwrap();
        assert!(err.contains(key), "{section} {key}: {err}");
    }
    let err = load_text(&format!("{MINIMAL}\n[metrics]\nport = 1\n")).unwrap_err();
    assert!(err.to_string().contains("metrics"), "{err}");
}

#[test]
fn console_is_off_unless_enabled() {
    assert!(!load_text(MINIMAL).unwrap().http.console);
    let text = MINIMAL.replace("[http]", "[http]\nconsole = true");
    assert!(load_text(&text).unwrap().http.console);
}

#[test]
fn durations_take_units_from_seconds_to_days() {
    for (text, secs) in [
        ("30s", 30),
        ("5m", 300),
        ("12h", 43_200),
        ("30d", 2_592_000),
    ] {
        let config = load_text(&MINIMAL.replace("\"30d\"", &format!("{text:?}"))).unwrap();
        assert_eq!(config.log.tombstone_retention, Duration::from_secs(secs));
    }
}

#[test]
fn rejects_bad_durations() {
    let err = load_text(&MINIMAL.replace("\"30d\"", "\"thirty\"")).unwrap_err();
    assert!(err.to_string().contains("thirty"), "{err}");
}

#[test]
fn url_env_must_name_a_set_variable() {
    let text = MINIMAL.replace(
        "url = \"postgres://relay@127.0.0.1:5432/app\"",
        "url_env = \"DELTARELAY_TEST_SURELY_UNSET\"",
    );
    let err = load_text(&text).unwrap_err();
    assert!(
        err.to_string().contains("DELTARELAY_TEST_SURELY_UNSET"),
        "{err}"
    );
}

#[test]
fn auth_none_is_refused_on_a_public_address_unless_allowed() {
    let public = MINIMAL.replace("127.0.0.1:8080", "0.0.0.0:8080");
    let err = load_text(&public).unwrap_err().to_string();
    assert!(
        err.contains("not a loopback address") && err.contains("allow_unauthenticated_remote"),
        "{err}"
    );
    let allowed = public.replace(
        "listen = \"0.0.0.0:8080\"",
        "listen = \"0.0.0.0:8080\"\nallow_unauthenticated_remote = true",
    );
    load_text(&allowed).unwrap();
}

#[test]
fn jwt_rules_and_keys() {
    let jwt = MINIMAL.replace(
        "mode = \"none\"",
        "mode = \"jwt\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\nissuer = \"https://a\"",
    ) + r#"
[collections."public.todos"]
read_claims = { role = ["user", "admin"] }
scope = { column = "user_id", claim = "sub" }
[collections."public.tags"]
"#;
    let config = load_text(&jwt).unwrap();
    let todos = &config.collections["public.todos"];
    assert_eq!(todos.read_claims["role"].len(), 2);
    assert_eq!(todos.scope.as_ref().unwrap().column, "user_id");
    assert_eq!(
        config.scope_columns(),
        BTreeMap::from([("public.todos".to_string(), "user_id".to_string())])
    );
    assert!(config.collections.contains_key("public.tags"));
    let keyless = MINIMAL.replace("mode = \"none\"", "mode = \"jwt\"");
    let err = load_text(&keyless).unwrap_err().to_string();
    assert!(err.contains("jwt_secret_env"), "{err}");
    let short = MINIMAL.replace("mode = \"none\"", "mode = \"jwt\"\njwt_secret = \"short\"");
    let err = load_text(&short).unwrap_err().to_string();
    assert!(err.contains("32 bytes"), "{err}");
}

const NATS_SERVE: &str = r#"
[http]
listen = "127.0.0.1:8080"
[log]
backend = "nats"
[log.nats]
urls = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
"#;

#[test]
fn a_serve_only_node_of_the_nats_log_needs_no_sources_and_no_dir() {
    let config = load_text(NATS_SERVE).unwrap();
    assert_eq!(config.log.backend, LogBackendKind::Nats);
    let nats = config.log.nats.unwrap();
    assert_eq!(nats.stream, "DELTARELAY");
    assert_eq!(nats.replicas, 3);
    assert_eq!(nats.resolve_urls().unwrap().len(), 2);
}

#[test]
fn nats_settings_are_checked_with_clear_errors() {
    let problem = |text: &str| load_text(text).unwrap_err().to_string();
    let no_section = NATS_SERVE.replace(
        "[log.nats]\nurls = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]\n",
        "",
    );
    assert!(
        problem(&no_section).contains("needs [log.nats]"),
        "{}",
        problem(&no_section)
    );
    let bad_url = NATS_SERVE.replace("nats://127.0.0.1:4223", "http://x");
    assert!(problem(&bad_url).contains("is not a NATS server URL"));
    let replicas = NATS_SERVE.replace("[log.nats]\n", "[log.nats]\nreplicas = 0\n");
    assert!(problem(&replicas).contains("replicas = 0"));
    let stream = NATS_SERVE.replace("[log.nats]\n", "[log.nats]\nstream = \"a.b\"\n");
    assert!(problem(&stream).contains("stream = \"a.b\""));
    let both = NATS_SERVE.replace("[log.nats]\n", "[log.nats]\nurls_env = \"X\"\n");
    assert!(problem(&both).contains("either urls or urls_env"));
    let sqlite_with_nats = NATS_SERVE.replace("backend = \"nats\"\n", "dir = \"/tmp/x\"\n");
    assert!(problem(&sqlite_with_nats).contains("backend is \"sqlite\""));
    // The embedded engine still needs a source and a dir.
    let no_dir = MINIMAL.replace("dir = \"/tmp/x\"\n", "");
    assert!(problem(&no_dir).contains("log.dir is missing"));
}

#[test]
fn nats_urls_can_come_from_the_environment() {
    let var = "DELTARELAY_TEST_NATS_URLS_FOR_CONFIG";
    std::env::set_var(var, "nats://10.0.0.1:4222, nats://10.0.0.2:4222");
    let text = NATS_SERVE.replace(
        "urls = [\"nats://127.0.0.1:4222\", \"nats://127.0.0.1:4223\"]",
        &format!("urls_env = \"{var}\""),
    );
    let config = load_text(&text).unwrap();
    assert_eq!(
        config.log.nats.unwrap().resolve_urls().unwrap(),
        vec!["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    );
}

#[test]
fn the_deploy_examples_for_a_nats_cluster_load() {
    std::env::set_var(
        "DELTARELAY_JWT_SECRET",
        "an example secret of at least 32 bytes!",
    );
    std::env::set_var("DATABASE_URL", "postgres://relay@10.0.0.4:5432/app");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats");
    let ingest = Config::load(&dir.join("deltarelay-ingest.toml")).unwrap();
    assert_eq!(ingest.sources.len(), 1);
    assert_eq!(ingest.log.backend, LogBackendKind::Nats);
    let serve = Config::load(&dir.join("deltarelay-serve.toml")).unwrap();
    assert!(serve.sources.is_empty());
    assert!(serve.log.dir.as_os_str().is_empty());
}

#[test]
fn nats_snapshot_settings_have_defaults_and_are_checked() {
    let nats = load_text(NATS_SERVE).unwrap().log.nats.unwrap();
    assert_eq!(nats.snapshot_every, std::time::Duration::from_secs(600));
    assert_eq!(nats.snapshot_after, 100_000);
    let set = NATS_SERVE.replace(
        "[log.nats]\n",
        "[log.nats]\nsnapshot_every = \"30s\"\nsnapshot_after = 500\n",
    );
    let nats = load_text(&set).unwrap().log.nats.unwrap();
    assert_eq!(nats.snapshot_every, std::time::Duration::from_secs(30));
    assert_eq!(nats.snapshot_after, 500);
    let zero = NATS_SERVE.replace("[log.nats]\n", "[log.nats]\nsnapshot_after = 0\n");
    let problem = load_text(&zero).unwrap_err().to_string();
    assert!(problem.contains("snapshot_after"), "{problem}");
}
