//! Typed configuration: one TOML file plus `DELTARELAY__SECTION__KEY` environment overrides.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/deltarelay/deltarelay.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub http: HttpConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub dir: PathBuf,
    #[serde(default = "default_retention", with = "duration_text")]
    pub tombstone_retention: Duration,
    /// `text` (human-readable) or `json` (one object per line, for journald/log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub mode: AuthMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Postgres,
    Mongodb,
}

/// One `[[sources]]` entry. Kind-specific keys are checked by [`Config::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub url: Option<String>,
    pub url_env: Option<String>,
    // Postgres
    pub slot: Option<String>,
    pub publication: Option<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    // MongoDB
    pub database: Option<String>,
    #[serde(default)]
    pub collections: Vec<String>,
}

impl SourceConfig {
    /// The connection URL, from `url` or from the environment variable named by `url_env`.
    pub fn resolve_url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                format!(
                    "source {:?}: url_env names {var}, but that environment variable is not set",
                    self.name
                )
            }),
            (Some(_), Some(_)) => Err(format!(
                "source {:?}: set either url or url_env, not both",
                self.name
            )),
            (None, None) => Err(format!(
                "source {:?}: no connection URL: set url = \"postgres://…\" or url_env = \"DATABASE_URL\"",
                self.name
            )),
        }
    }

    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("deltarelay_{}", self.name))
    }

    pub fn publication_name(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| format!("deltarelay_{}", self.name))
    }

    /// Every table (`["*"]`) rather than a list.
    pub fn all_tables(&self) -> bool {
        self.tables.iter().any(|t| t == "*")
    }
}

impl Config {
    /// Loads `path`, applies `DELTARELAY__SECTION__KEY` overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let load_err = |source| ConfigError::Load {
            path: path.to_path_buf(),
            source,
        };
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("DELTARELAY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(load_err)?;
        let config: Config = raw.try_deserialize().map_err(load_err)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what the types cannot: names, kind-specific keys, duplicates.
    pub fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("no [[sources]]: configure at least one source".into());
        }
        let mut names = std::collections::HashSet::new();
        for source in &self.sources {
            if !is_simple_name(&source.name) {
                return Err(format!(
                    "source name {:?} must be 1-48 characters of a-z, 0-9 and _",
                    source.name
                ));
            }
            if !names.insert(source.name.as_str()) {
                return Err(format!("two sources are named {:?}", source.name));
            }
            source.resolve_url()?;
            match source.kind {
                SourceKind::Postgres => validate_postgres(source)?,
                SourceKind::Mongodb => {
                    if source.database.is_none() {
                        return Err(format!(
                            "source {:?}: kind = \"mongodb\" needs database = \"…\"",
                            source.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn validate_postgres(source: &SourceConfig) -> Result<(), String> {
    if source.tables.is_empty() {
        return Err(format!(
            "source {:?}: tables is empty: list tables as [\"public.events\"] or use [\"*\"] for every table",
            source.name
        ));
    }
    if source.all_tables() && source.tables.len() > 1 {
        return Err(format!(
            "source {:?}: tables = [\"*\"] cannot be combined with table names",
            source.name
        ));
    }
    if !source.all_tables() {
        for table in &source.tables {
            if split_table_name(table).is_none() {
                return Err(format!(
                    "source {:?}: table {table:?} must be written schema.table, e.g. \"public.{table}\"",
                    source.name
                ));
            }
        }
    }
    for (what, name) in [
        ("slot", source.slot_name()),
        ("publication", source.publication_name()),
    ] {
        if !is_simple_name(&name) {
            return Err(format!(
                "source {:?}: {what} name {name:?} must be 1-48 characters of a-z, 0-9 and _",
                source.name
            ));
        }
    }
    Ok(())
}

/// `schema.table` → (schema, table).
pub fn split_table_name(name: &str) -> Option<(&str, &str)> {
    let (schema, table) = name.split_once('.')?;
    (!schema.is_empty() && !table.is_empty() && !table.contains('.')).then_some((schema, table))
}

/// Names we put into SQL and file names unquoted-safe: lowercase letters, digits, underscore.
fn is_simple_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Durations written as text: `30s`, `5m`, `30d`.
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}): write it like \"30s\", \"5m\" or \"30d\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Config::load(file.path())
    }

    const MINIMAL: &str = r#"
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

    #[test]
    fn loads_the_minimal_file() {
        let config = load_text(MINIMAL).unwrap();
        assert_eq!(
            config.log.tombstone_retention,
            Duration::from_secs(30 * 86400)
        );
        let source = &config.sources[0];
        assert_eq!(source.slot_name(), "deltarelay_app_pg");
        assert_eq!(source.tables, vec!["public.events", "public.users"]);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deltarelay.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.sources[0].tables.len(), 2);
    }

    #[test]
    fn rejects_unknown_keys_by_name() {
        let err = load_text(&MINIMAL.replace("[auth]", "[auth]\nmoed = 1")).unwrap_err();
        assert!(err.to_string().contains("moed"), "{err}");
    }

    #[test]
    fn rejects_bad_durations_and_table_names() {
        let err = load_text(&MINIMAL.replace("\"30d\"", "\"thirty\"")).unwrap_err();
        assert!(err.to_string().contains("thirty"), "{err}");
        let err = load_text(&MINIMAL.replace("\"public.users\"", "\"users\"")).unwrap_err();
        assert!(err.to_string().contains("schema.table"), "{err}");
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
}
