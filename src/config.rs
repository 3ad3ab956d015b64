//! Settings, layered: the committed defaults → `--config FILE` → `AGENTHOOK__SECTION__KEY`
//! variables (→ `BITHUMAN_API_SECRET` for the upstream secret, `BITHUMAN_WEBHOOK_SECRET` for
//! the upstream webhook secret). Every key is documented in
//! `config/default.toml`; a bad value stops start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::Tenant;

/// The defaults, compiled in so the binary runs anywhere; the same file documents every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub upstream: UpstreamSettings,
    pub poller: PollerSettings,
    pub delivery: DeliverySettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

/// `storage.retention` as `config/default.toml` sets it.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(default)]
    pub backend: StorageBackend,
    pub path: PathBuf,
    pub cache_bytes: u64,
    /// Finished jobs older than this leave storage with their events, deliveries and attempts.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Writes under way with none coming back for this long: storage is stalled, the service
    /// exits non-zero for its supervisor (zero: never).
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
    #[serde(default)]
    pub postgres: PostgresSettings,
}

/// Which engine keeps the state (`storage.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded, one process per directory.
    #[default]
    Sled,
    /// A shared PostgreSQL database: several instances on one database.
    Postgres,
}

/// `storage.postgres`: used when `storage.backend = "postgres"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`; never printed (see [`redact_url`]).
    pub url: String,
    pub max_connections: u32,
    #[serde(deserialize_with = "duration")]
    pub delivery_lease: Duration,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("delivery_lease", &self.delivery_lease)
            .finish()
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: String::new(),
            max_connections: 16,
            delivery_lease: Duration::from_secs(120),
        }
    }
}

/// A database URL fit to print: its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub base_url: url::Url,
    pub api_secret: Secret,
    pub generate_per_minute: u32,
    pub read_per_minute: u32,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub rate_limit_backoff: Duration,
    pub webhooks: UpstreamWebhookSettings,
}

/// bitHuman's own webhooks (`POST /v1/upstream/webhooks`), a fast path beside polling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamWebhookSettings {
    /// The signing secret of a registration made by hand; empty: none.
    pub secret: Secret,
    /// The URL bitHuman should push to; when set, `serve` registers it at start. Empty: none.
    pub public_url: String,
}

impl UpstreamWebhookSettings {
    pub fn public_url(&self) -> Option<&str> {
        Some(self.public_url.trim()).filter(|u| !u.is_empty())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerSettings {
    #[serde(deserialize_with = "duration")]
    pub first_poll_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_interval_with_webhooks: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    pub max_not_found: u32,
    pub concurrency: usize,
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
    #[serde(deserialize_with = "duration")]
    pub submit_retry_after: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    pub allow_private_networks: bool,
    pub concurrency: usize,
    pub per_destination_concurrency: usize,
    #[serde(deserialize_with = "duration")]
    pub disable_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub secret_overlap: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub keys: Vec<ApiKey>,
    pub requests_per_minute: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    pub key: Secret,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// A credential: never printed by `Debug`, so settings can be logged whole.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    humantime::parse_duration(&raw).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {raw:?} ({e}); use e.g. \"5s\", \"2h\""
        ))
    })
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|raw| {
            humantime::parse_duration(raw).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {raw:?} ({e}); use e.g. \"5s\", \"2h\""
                ))
            })
        })
        .collect()
}

impl Settings {
    /// Load the layers. `file` is the `--config` argument.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("AGENTHOOK__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("AGENTHOOK")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("delivery.retry_schedule")
                .source(Some(prefixed)),
        );
        let from_env = env
            .iter()
            .find(|(k, _)| k == "BITHUMAN_API_SECRET")
            .map(|(_, v)| v.clone());
        let explicit = env
            .iter()
            .any(|(k, _)| k == "AGENTHOOK__UPSTREAM__API_SECRET");
        if let (Some(secret), false) = (from_env, explicit) {
            builder = builder.set_override("upstream.api_secret", secret)?;
        }
        // `DATABASE_URL`, the usual name, unless the key is given explicitly.
        let database_url = env
            .iter()
            .find(|(k, v)| k == "DATABASE_URL" && !v.is_empty())
            .map(|(_, v)| v.clone());
        let explicit_url = env
            .iter()
            .any(|(k, _)| k == "AGENTHOOK__STORAGE__POSTGRES__URL");
        if let (Some(url), false) = (database_url, explicit_url) {
            builder = builder.set_override("storage.postgres.url", url)?;
        }
        let webhook_secret = env
            .iter()
            .find(|(k, _)| k == "BITHUMAN_WEBHOOK_SECRET")
            .map(|(_, v)| v.clone());
        let explicit = env
            .iter()
            .any(|(k, _)| k == "AGENTHOOK__UPSTREAM__WEBHOOKS__SECRET");
        if let (Some(secret), false) = (webhook_secret, explicit) {
            builder = builder.set_override("upstream.webhooks.secret", secret)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the typed values cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.storage.backend == StorageBackend::Postgres {
            let pg = &self.storage.postgres;
            if pg.url.is_empty() {
                return Err(invalid(
                    "storage.postgres.url",
                    "is needed with storage.backend = \"postgres\" (or set DATABASE_URL)",
                ));
            }
            match url::Url::parse(&pg.url) {
                Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {}
                _ => return Err(invalid("storage.postgres.url", "must be a postgres:// URL")),
            }
            if pg.max_connections == 0 {
                return Err(invalid(
                    "storage.postgres.max_connections",
                    "must be at least 1",
                ));
            }
            if pg.delivery_lease <= self.delivery.timeout {
                return Err(invalid(
                    "storage.postgres.delivery_lease",
                    "must be longer than delivery.timeout",
                ));
            }
        }
        if !matches!(self.upstream.base_url.scheme(), "http" | "https") {
            return Err(invalid("upstream.base_url", "must be an http or https URL"));
        }
        if self.upstream.generate_per_minute == 0 {
            return Err(invalid(
                "upstream.generate_per_minute",
                "must be at least 1",
            ));
        }
        if self.upstream.read_per_minute == 0 {
            return Err(invalid("upstream.read_per_minute", "must be at least 1"));
        }
        if self.upstream.timeout.is_zero() {
            return Err(invalid("upstream.timeout", "must be more than 0s"));
        }
        if self.poller.interval.is_zero() {
            return Err(invalid("poller.interval", "must be more than 0s"));
        }
        if self.poller.max_interval < self.poller.interval {
            return Err(invalid(
                "poller.max_interval",
                "must be at least poller.interval",
            ));
        }
        if self.poller.max_interval_with_webhooks < self.poller.interval {
            return Err(invalid(
                "poller.max_interval_with_webhooks",
                "must be at least poller.interval",
            ));
        }
        if let Some(url) = self.upstream.webhooks.public_url() {
            let parsed = url::Url::parse(url)
                .map_err(|e| invalid("upstream.webhooks.public_url", format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid(
                    "upstream.webhooks.public_url",
                    "must be an http or https URL",
                ));
            }
        }
        if self.poller.concurrency == 0 {
            return Err(invalid("poller.concurrency", "must be at least 1"));
        }
        if self.poller.lease <= self.upstream.timeout {
            return Err(invalid(
                "poller.lease",
                "must be longer than upstream.timeout",
            ));
        }
        if self.poller.max_not_found == 0 {
            return Err(invalid("poller.max_not_found", "must be at least 1"));
        }
        if self.delivery.retry_schedule.is_empty() {
            return Err(invalid(
                "delivery.retry_schedule",
                "needs at least one entry",
            ));
        }
        if self.delivery.timeout.is_zero() {
            return Err(invalid("delivery.timeout", "must be more than 0s"));
        }
        if self.delivery.concurrency == 0 || self.delivery.per_destination_concurrency == 0 {
            return Err(invalid("delivery.concurrency", "must be at least 1"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for key in &self.auth.keys {
            Tenant::parse(&key.name).map_err(|m| invalid("auth.keys", m))?;
            if key.key.expose().len() < 16 {
                return Err(invalid(
                    "auth.keys",
                    format!("the key of {:?} is shorter than 16 characters", key.name),
                ));
            }
            if !names.insert(key.name.as_str()) {
                return Err(invalid(
                    "auth.keys",
                    format!("name {:?} appears twice", key.name),
                ));
            }
            if !keys.insert(key.key.expose()) {
                return Err(invalid("auth.keys", "two entries share one key"));
            }
        }
        if !self.log.format_is_valid_filter() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            ));
        }
        Ok(())
    }
}

impl LogSettings {
    fn format_is_valid_filter(&self) -> bool {
        tracing_subscriber::EnvFilter::try_new(&self.level).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with_env(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_load_and_match_the_documented_values() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.upstream.generate_per_minute, 4);
        assert_eq!(s.upstream.read_per_minute, 120);
        assert_eq!(s.poller.first_poll_after, Duration::from_secs(5));
        assert_eq!(s.poller.max_age, Duration::from_secs(6 * 3600));
        assert_eq!(s.delivery.timeout, Duration::from_secs(15));
        assert_eq!(s.delivery.retry_schedule.len(), 10);
        assert_eq!(s.delivery.retry_schedule[9], Duration::from_secs(24 * 3600));
        assert!(!s.delivery.allow_private_networks);
        assert!(s.upstream.api_secret.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = load(&[
            ("AGENTHOOK__SERVER__BIND", "0.0.0.0:9999"),
            ("AGENTHOOK__POLLER__INTERVAL", "7s"),
            ("AGENTHOOK__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("AGENTHOOK__UPSTREAM__READ_PER_MINUTE", "240"),
        ])
        .unwrap();
        assert_eq!(s.server.bind.to_string(), "0.0.0.0:9999");
        assert_eq!(s.poller.interval, Duration::from_secs(7));
        assert!(s.delivery.allow_private_networks);
        assert_eq!(s.upstream.read_per_minute, 240);
    }

    #[test]
    fn bithuman_api_secret_fills_the_upstream_secret_unless_set_explicitly() {
        let s = load(&[("BITHUMAN_API_SECRET", "from-bithuman-var")]).unwrap();
        assert_eq!(s.upstream.api_secret.expose(), "from-bithuman-var");
        let s = load(&[
            ("BITHUMAN_API_SECRET", "from-bithuman-var"),
            ("AGENTHOOK__UPSTREAM__API_SECRET", "explicit"),
        ])
        .unwrap();
        assert_eq!(s.upstream.api_secret.expose(), "explicit");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let cases = [
            ("AGENTHOOK__SERVER__BIND", "not-an-address", "server.bind"),
            ("AGENTHOOK__POLLER__INTERVAL", "soon", "poller.interval"),
            (
                "AGENTHOOK__UPSTREAM__READ_PER_MINUTE",
                "0",
                "upstream.read_per_minute",
            ),
            (
                "AGENTHOOK__UPSTREAM__BASE_URL",
                "ftp://x",
                "upstream.base_url",
            ),
            ("AGENTHOOK__LOG__FORMAT", "xml", "log.format"),
        ];
        for (var, value, key) in cases {
            let err = load(&[(var, value)]).expect_err(var).to_string();
            assert!(
                err.contains(key),
                "{var}={value}: {err:?} should name {key}"
            );
        }
    }

    #[test]
    fn upstream_webhook_keys_have_defaults_and_their_own_variable() {
        let s = load(&[]).unwrap();
        assert!(s.upstream.webhooks.secret.is_empty());
        assert_eq!(s.upstream.webhooks.public_url(), None);
        assert_eq!(
            s.poller.max_interval_with_webhooks,
            Duration::from_secs(600)
        );
        let s = load(&[
            ("BITHUMAN_WEBHOOK_SECRET", "whsec_from_env"),
            (
                "AGENTHOOK__UPSTREAM__WEBHOOKS__PUBLIC_URL",
                "https://hooks.example.com/x",
            ),
        ])
        .unwrap();
        assert_eq!(s.upstream.webhooks.secret.expose(), "whsec_from_env");
        assert_eq!(
            s.upstream.webhooks.public_url(),
            Some("https://hooks.example.com/x")
        );
        let err = load(&[("AGENTHOOK__UPSTREAM__WEBHOOKS__PUBLIC_URL", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.webhooks.public_url"), "{err}");
        assert!(!format!("{s:?}").contains("whsec_from_env"));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = load(&[("BITHUMAN_API_SECRET", "super-secret-value")]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-value"));
    }

    #[test]
    fn postgres_takes_its_url_from_the_key_or_database_url_and_never_shows_the_password() {
        let s = load(&[]).unwrap();
        assert_eq!(s.storage.backend, StorageBackend::Sled);
        let err = load(&[("AGENTHOOK__STORAGE__BACKEND", "postgres")]).unwrap_err();
        assert!(err.to_string().contains("storage.postgres.url"), "{err}");
        let url = "postgres://agenthook:hunter2-secret@127.0.0.1:5432/agenthook";
        let s = load(&[
            ("AGENTHOOK__STORAGE__BACKEND", "postgres"),
            ("DATABASE_URL", url),
        ])
        .unwrap();
        assert_eq!(s.storage.backend, StorageBackend::Postgres);
        assert_eq!(s.storage.postgres.url, url);
        assert!(!format!("{s:?}").contains("hunter2-secret"));
        assert!(!redact_url(url).contains("hunter2-secret"));
        let explicit = load(&[
            ("AGENTHOOK__STORAGE__BACKEND", "postgres"),
            ("DATABASE_URL", url),
            (
                "AGENTHOOK__STORAGE__POSTGRES__URL",
                "postgres://other@127.0.0.1/x",
            ),
        ])
        .unwrap();
        assert_eq!(
            explicit.storage.postgres.url,
            "postgres://other@127.0.0.1/x"
        );
        let bad = load(&[
            ("AGENTHOOK__STORAGE__BACKEND", "postgres"),
            ("DATABASE_URL", "mysql://x@127.0.0.1/y"),
        ])
        .unwrap_err();
        assert!(bad.to_string().contains("storage.postgres.url"), "{bad}");
        let short = load(&[
            ("AGENTHOOK__STORAGE__BACKEND", "postgres"),
            ("DATABASE_URL", url),
            ("AGENTHOOK__STORAGE__POSTGRES__DELIVERY_LEASE", "1s"),
        ])
        .unwrap_err();
        assert!(short.to_string().contains("delivery_lease"), "{short}");
    }
}
