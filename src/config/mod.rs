//! Typed configuration: one TOML file plus `DELTARELAY__SECTION__KEY` environment overrides.

mod nats;
mod writes;

pub use nats::{LogBackendKind, NatsConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use writes::validate_write;
pub use writes::{ConflictPolicy, WriteConfig, WritesConfig};

pub const DEFAULT_PATH: &str = "/etc/deltarelay/deltarelay.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("config {path}: {problem}")]
    Invalid {
        path: PathBuf,
        #[source]
        problem: Problem,
    },
}

/// What is wrong with a config that parsed, by the part of the file it is in. Each message
/// says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no [[sources]]: configure at least one source")]
    NoSources,
    #[error("source name {0:?} must be 1-48 characters of a-z, 0-9 and _")]
    SourceName(String),
    #[error("two sources are named {0:?}")]
    DuplicateSource(String),
    #[error("source {source_name:?}: {message}")]
    Source {
        source_name: String,
        message: String,
    },
    #[error("{0}")]
    Http(String),
    #[error("auth: {0}")]
    Auth(String),
    #[error("{0}")]
    Log(String),
    #[error("[collections.{name:?}]: {message}")]
    Collection { name: String, message: String },
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
    /// Per-collection read rules (`[collections."schema.table"]`), used with `auth.mode = "jwt"`.
    #[serde(default)]
    pub collections: BTreeMap<String, CollectionConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[writes]`: `POST /v1/mutations` (per-collection rules are `[collections."…".write]`).
    #[serde(default)]
    pub writes: WritesConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Lets `auth.mode = "none"` listen on a non-loopback address (everything is then readable
    /// by anyone who can reach the port).
    #[serde(default)]
    pub allow_unauthenticated_remote: bool,
    /// Origins allowed to call the API from a browser (CORS), e.g. `["https://app.example.com"]`;
    /// `["*"]` allows any. Empty: no CORS headers.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Serve the built-in console page (collections and the live feed) at `/`.
    #[serde(default)]
    pub console: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            allow_unauthenticated_remote: false,
            cors_origins: Vec::new(),
            console: false,
        }
    }
}

/// `[limits]`: what one client may take. The subject is the token's `sub`, else the client's IP
/// address; per-subject limits apply only with JWT auth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent `/v1/stream` connections in total.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// Concurrent `/v1/stream` connections per subject.
    #[serde(default = "default_max_streams_per_subject")]
    pub max_streams_per_subject: u32,
    /// Sustained API requests per second per subject (0 = unlimited).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    /// Requests a subject may make at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Total size of a request's headers (and query string), in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// The kernel send buffer of each HTTP connection (0 = the system's autotuning): what a
    /// client that stops reading can make the machine hold.
    #[serde(default = "default_send_buffer_bytes")]
    pub send_buffer_bytes: usize,
    /// Largest request body (`POST /v1/mutations`), in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_streams: default_max_streams(),
            max_streams_per_subject: default_max_streams_per_subject(),
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
            max_header_bytes: default_max_header_bytes(),
            send_buffer_bytes: default_send_buffer_bytes(),
            max_body: default_max_body(),
        }
    }
}

fn default_max_streams() -> u32 {
    10_000
}
fn default_max_streams_per_subject() -> u32 {
    32
}
fn default_requests_per_second() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_send_buffer_bytes() -> usize {
    128 * 1024
}

/// `[collections."schema.table"]`: who may read a collection, and which of its rows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Claim name → accepted values: the token's claim must hold one of them (every listed
    /// claim must match). An array claim matches when any element does.
    #[serde(default)]
    pub read_claims: BTreeMap<String, Vec<serde_json::Value>>,
    pub scope: Option<ScopeConfig>,
    /// Writes through `POST /v1/mutations`; absent: the collection is read-only.
    pub write: Option<WriteConfig>,
}

/// Only rows whose `column` equals the token's `claim`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    pub column: String,
    pub claim: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Required with the SQLite engine; optional on a serve-only node of the NATS engine.
    #[serde(default)]
    pub dir: PathBuf,
    /// `sqlite` (the embedded default) or `nats` (a shared log in NATS JetStream).
    #[serde(default)]
    pub backend: LogBackendKind,
    pub nats: Option<NatsConfig>,
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
    /// HS256: the shared secret, from this environment variable (or inline `jwt_secret`).
    pub jwt_secret_env: Option<String>,
    pub jwt_secret: Option<String>,
    /// RS256 / ES256: a PEM public key file.
    pub jwt_public_key: Option<PathBuf>,
    /// A JWKS file (RS256/ES256 keys chosen by `kid`), re-read on change and on SIGHUP.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Serve collections that have no `[collections]` entry to every valid token.
    #[serde(default)]
    pub serve_unlisted: bool,
    /// Serve `/metrics` without a token (for scrapers that cannot send one).
    #[serde(default)]
    pub public_metrics: bool,
}

impl AuthConfig {
    /// The HS256 secret, from `jwt_secret` or the variable named by `jwt_secret_env`.
    pub fn secret(&self) -> Result<Option<String>, Problem> {
        match (&self.jwt_secret, &self.jwt_secret_env) {
            (Some(s), None) => Ok(Some(s.clone())),
            (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
                Problem::Auth(format!(
                    "jwt_secret_env names {var}, but that environment variable is not set"
                ))
            }),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(Problem::Auth(
                "set either jwt_secret or jwt_secret_env, not both".into(),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// One `[[sources]]` entry: the keys every kind has. The rest of the entry belongs to its
/// kind, which parses and checks it (`crate::source::SourceSpec`), so that this module knows
/// no source kind and a new kind touches no other.
#[derive(Debug, Clone, Deserialize)]
pub struct SourceConfig {
    pub name: String,
    /// `postgres` or `mongodb`.
    pub kind: String,
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// The kind's own keys, as written.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl SourceConfig {
    /// The connection URL, from `url` or from the environment variable named by `url_env`.
    pub fn resolve_url(&self) -> Result<String, Problem> {
        let problem = |message: String| Problem::Source {
            source_name: self.name.clone(),
            message,
        };
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                problem(format!(
                    "url_env names {var}, but that environment variable is not set"
                ))
            }),
            (Some(_), Some(_)) => Err(problem("set either url or url_env, not both".into())),
            (None, None) => Err(problem(format!(
                "no connection URL: set url = \"{}://…\" or url_env = \"DATABASE_URL\"",
                self.kind
            ))),
        }
    }

    /// The kind's keys as `T` (which should deny unknown fields, so that a typo is named).
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_value(serde_json::Value::Object(self.options.clone())).map_err(|e| {
            Problem::Source {
                source_name: self.name.clone(),
                message: format!("kind = \"{}\": {e}", self.kind),
            }
        })
    }

    /// A problem with this source's entry.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem::Source {
            source_name: self.name.clone(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads `path`, applies `DELTARELAY__SECTION__KEY` overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let load_err = |source| ConfigError::Load {
            path: path.to_path_buf(),
            source: Box::new(source),
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
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(config)
    }

    /// Checks what the types cannot: names, duplicates, auth keys, access rules. Each source's
    /// own keys are its kind's to check (`crate::source::SourceSpec::parse`).
    pub fn validate(&self) -> Result<(), Problem> {
        self.validate_log()?;
        // A node of the shared log without sources serves reads only.
        if self.sources.is_empty() && self.log.backend == LogBackendKind::Sqlite {
            return Err(Problem::NoSources);
        }
        let mut names = std::collections::HashSet::new();
        for source in &self.sources {
            if !is_simple_name(&source.name) {
                return Err(Problem::SourceName(source.name.clone()));
            }
            if !names.insert(source.name.as_str()) {
                return Err(Problem::DuplicateSource(source.name.clone()));
            }
            source.resolve_url()?;
        }
        self.validate_http()?;
        self.validate_auth()?;
        self.validate_collections()
    }

    fn validate_log(&self) -> Result<(), Problem> {
        let log = &self.log;
        match (log.backend, &log.nats) {
            (LogBackendKind::Sqlite, Some(_)) => Err(Problem::Log(
                "[log.nats] is set but log.backend is \"sqlite\": set backend = \"nats\" or remove [log.nats]".into(),
            )),
            (LogBackendKind::Sqlite, None) if log.dir.as_os_str().is_empty() => Err(Problem::Log(
                "log.dir is missing: set dir = \"/var/lib/deltarelay\" (where the log is kept)".into(),
            )),
            (LogBackendKind::Sqlite, None) => Ok(()),
            (LogBackendKind::Nats, None) => Err(Problem::Log(
                "log.backend = \"nats\" needs [log.nats] with urls = [\"nats://host:4222\", …]".into(),
            )),
            (LogBackendKind::Nats, Some(nats)) => nats.validate(),
        }
    }

    fn validate_http(&self) -> Result<(), Problem> {
        if self.auth.mode == AuthMode::None
            && !self.http.listen.ip().is_loopback()
            && !self.http.allow_unauthenticated_remote
        {
            return Err(Problem::Http(format!(
                "http.listen = \"{}\" is not a loopback address and auth.mode = \"none\": anyone who can reach it could read every synced row. Set [auth] mode = \"jwt\", listen on 127.0.0.1, or set http.allow_unauthenticated_remote = true to accept that",
                self.http.listen
            )));
        }
        if self.auth.mode == AuthMode::None
            && self.writes.allow_unauthenticated
            && !self.http.listen.ip().is_loopback()
        {
            return Err(Problem::Http(format!(
                "writes.allow_unauthenticated = true with auth.mode = \"none\" is for loopback only, but http.listen = \"{}\": anyone who can reach it could change the database. Set [auth] mode = \"jwt\" or listen on 127.0.0.1",
                self.http.listen
            )));
        }
        for origin in &self.http.cors_origins {
            let ok = origin == "*"
                || ((origin.starts_with("https://") || origin.starts_with("http://"))
                    && !origin.ends_with('/')
                    && origin.bytes().all(|b| b.is_ascii_graphic()));
            if !ok {
                return Err(Problem::Http(format!(
                    "http.cors_origins: {origin:?} is not an origin: write it as \"https://app.example.com\" (scheme, host, optional port, no path), or \"*\" for any"
                )));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), Problem> {
        let auth = &self.auth;
        if auth.mode == AuthMode::None {
            return Ok(());
        }
        let secret = auth.secret()?;
        let kinds = [
            secret.is_some(),
            auth.jwt_public_key.is_some(),
            auth.jwks_file.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            1 => {}
            0 => return Err(Problem::Auth("mode = \"jwt\" needs a key: jwt_secret_env (HS256), jwt_public_key (a PEM file, RS256/ES256) or jwks_file".into())),
            _ => return Err(Problem::Auth("set only one of jwt_secret/jwt_secret_env, jwt_public_key and jwks_file".into())),
        }
        if secret.is_some_and(|s| s.len() < 32) {
            return Err(Problem::Auth(
                "the HS256 secret must be at least 32 bytes long".into(),
            ));
        }
        Ok(())
    }

    fn validate_collections(&self) -> Result<(), Problem> {
        for (name, rules) in &self.collections {
            let problem = |message: String| Problem::Collection {
                name: name.clone(),
                message,
            };
            if !name.contains('.') {
                return Err(problem("name collections as \"schema.table\" (Postgres) or \"database.collection\" (MongoDB)".into()));
            }
            if let Some(scope) = &rules.scope {
                if scope.column.is_empty() || scope.claim.is_empty() {
                    return Err(problem("scope needs a column and a claim, e.g. scope = { column = \"user_id\", claim = \"sub\" }".into()));
                }
            }
            if let Some(write) = &rules.write {
                validate_write(write).map_err(problem)?;
            }
            for (claim, values) in &rules.read_claims {
                if values.is_empty() {
                    return Err(problem(format!(
                        "read_claims.{claim} lists no values: no token could read it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Collection → scope column, for the log.
    pub fn scope_columns(&self) -> BTreeMap<String, String> {
        self.collections
            .iter()
            .filter_map(|(name, c)| c.scope.as_ref().map(|s| (name.clone(), s.column.clone())))
            .collect()
    }
}

/// `schema.table` → (schema, table).
pub fn split_table_name(name: &str) -> Option<(&str, &str)> {
    let (schema, table) = name.split_once('.')?;
    (!schema.is_empty() && !table.is_empty() && !table.contains('.')).then_some((schema, table))
}

/// Names we put into SQL and file names unquoted-safe: lowercase letters, digits, underscore.
pub fn is_simple_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Durations written as text: `30s`, `5m`, `30d` (`#[serde(with = "duration_text")]`).
pub mod duration_text {
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
pub(crate) mod tests;
