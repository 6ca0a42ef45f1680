//! The raw, layered input: built-in defaults, an optional TOML file,
//! `REKEY_*` environment variables, and `REKEY_<NAME>_FILE` for the secrets
//! (database and SMTP URLs, which may carry passwords, the SMTP password
//! and the API keys). Nothing is checked here beyond types and key names;
//! `check` turns this into [`super::Settings`].
//!
//! A key that no field of [`RawSettings`] reads is an error, whichever layer
//! it comes from. The known keys are the struct's own fields (see `keys`),
//! so adding a field is all a new setting takes.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    error::{Actual, Kind},
    providers::{Data, Env, Format, Toml},
    value::Dict,
};
use secrecy::SecretString;
use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

use super::{
    ConfigError,
    keys::{self, Environment},
};
use crate::{domain::PasswordPolicy, telemetry::LogFormat};

/// Settings as read from the layers, before they are checked.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSettings {
    /// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`; `check::listen` parses it.
    #[serde(deserialize_with = "address")]
    pub listen: String,
    pub database_url: SecretString,
    pub smtp_url: Option<SecretString>,
    /// Logs in as the SMTP URL's user, keeping the password out of the URL.
    pub smtp_password: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    pub smtp_timeout: Duration,
    /// PEM certificate authorities trusted for the relay's certificate
    /// instead of the public roots.
    pub smtp_ca_file: Option<PathBuf>,
    pub mail_dir: PathBuf,
    pub mail_from: Option<String>,
    pub mail_reply_to: Option<String>,
    /// Files that override or add mail templates (see `mail::template_dir`).
    pub template_dir: Option<PathBuf>,
    /// Answer a reset for an address without an account with a mail saying so.
    pub notify_unknown_recipients: bool,
    pub reset_url: Option<String>,
    #[serde(deserialize_with = "comma_list")]
    pub allowed_reset_urls: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub reset_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub signup_token_ttl: Duration,
    /// Unset unless given, so that a clash with the alias can be told.
    pub password_min_length: Option<usize>,
    /// The older name of `password_min_length`.
    pub password_min_chars: Option<usize>,
    pub password_min_score: u8,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub hash_concurrency: usize,
    pub hash_queue_depth: usize,
    #[serde(with = "humantime_serde")]
    pub mail_poll_interval: Duration,
    pub mail_max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub mail_backoff_max: Duration,
    pub mail_batch_size: u64,
    #[serde(with = "humantime_serde")]
    pub mail_lease: Duration,
    pub mail_send_concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    pub log_format: LogFormat,
    pub api_keys: Option<SecretString>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub tls_client_scopes: String,
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    pub health_listen: Option<String>,
    /// `IP:PORT` of the Prometheus `GET /metrics` endpoint; unset is off.
    pub metrics_listen: Option<String>,
    pub allow_insecure: bool,
    pub migrate_on_start: bool,
    pub rate_limit_per_email: String,
    pub rate_limit_per_ip: String,
    pub rate_limit_mail_global: String,
    pub auth_failure_limit: String,
    #[serde(with = "humantime_serde")]
    pub retention_requests: Duration,
    #[serde(with = "humantime_serde")]
    pub retention_mail: Duration,
    #[serde(with = "humantime_serde")]
    pub retention_audit: Duration,
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// `16KiB`, `1MiB` or a number of bytes; `check::transport` parses it.
    #[serde(deserialize_with = "text_or_number")]
    pub max_message_size: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// 0 for the backend's default (10 on PostgreSQL, 1 on SQLite).
    pub database_pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub database_acquire_timeout: Duration,
}

const DAY: u64 = 24 * 3600;

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_owned(),
            database_url: SecretString::from("sqlite://./var/rekey.db?mode=rwc"),
            smtp_url: None,
            smtp_password: None,
            smtp_timeout: Duration::from_secs(30),
            smtp_ca_file: None,
            mail_dir: PathBuf::from("./var/mail"),
            mail_from: None,
            mail_reply_to: None,
            template_dir: None,
            notify_unknown_recipients: false,
            reset_url: None,
            allowed_reset_urls: Vec::new(),
            reset_token_ttl: Duration::from_secs(30 * 60),
            signup_token_ttl: Duration::from_secs(24 * 60 * 60),
            password_min_length: None,
            password_min_chars: None,
            password_min_score: PasswordPolicy::default().min_score,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            hash_queue_depth: 64,
            mail_poll_interval: Duration::from_secs(5),
            // 5 s doubling to 15 min: about an hour of retries in all.
            mail_max_attempts: 12,
            mail_backoff_max: Duration::from_secs(15 * 60),
            mail_batch_size: 64,
            mail_lease: Duration::from_secs(120),
            mail_send_concurrency: 32,
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::from_secs(5),
            log_format: LogFormat::Pretty,
            api_keys: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_client_scopes: String::new(),
            tls_reload_interval: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            health_listen: None,
            metrics_listen: None,
            allow_insecure: false,
            migrate_on_start: true,
            rate_limit_per_email: "3/15m".to_owned(),
            rate_limit_per_ip: "30/5m".to_owned(),
            rate_limit_mail_global: "off".to_owned(),
            auth_failure_limit: "10/15m".to_owned(),
            retention_requests: Duration::from_secs(7 * DAY),
            retention_mail: Duration::from_secs(7 * DAY),
            retention_audit: Duration::from_secs(90 * DAY),
            retention_interval: Duration::from_secs(3600),
            max_message_size: "16KiB".to_owned(),
            request_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            database_pool_size: 0,
            database_acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Settings whose values may be secrets: read from `REKEY_<NAME>_FILE` too,
/// and never quoted in an error.
const SECRET_SETTINGS: [&str; 4] = ["database_url", "smtp_url", "smtp_password", "api_keys"];

/// `REKEY_*` variables that are not settings: the config file (read by the
/// command line), the secret files, and the test suite's PostgreSQL server
/// and benchmark size (a developer may keep them exported).
fn is_companion_variable(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["config", "test_postgres_url", "bench_rounds"].contains(&key.as_str())
        || SECRET_SETTINGS
            .iter()
            .any(|secret| key.strip_suffix("_file") == Some(secret))
}

/// The keys a settings layer may set: the fields of [`RawSettings`].
pub(super) fn known_keys() -> &'static [&'static str] {
    keys::fields_of::<RawSettings>()
}

/// The layers, later wins: `config_file` if given, the environment, then
/// the secret files. Defaults fill whatever none of them sets.
pub(super) fn layers(config_file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = config_file {
        figment = figment.merge(toml_file(path)?);
    }
    figment = figment.merge(Environment(
        Env::prefixed("REKEY_").filter(|key| !is_companion_variable(key.as_str())),
    ));
    for name in SECRET_SETTINGS {
        let var = format!("REKEY_{}_FILE", name.to_ascii_uppercase());
        if let Some(path) = std::env::var_os(&var) {
            let secret = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::SecretFile { var, source })?;
            figment = figment.merge((name, secret.trim().to_owned()));
        }
    }
    Ok(figment)
}

/// The settings file as a layer. It is parsed once on its own first, so
/// that a syntax error is reported by position and description only: the
/// TOML parser's own message quotes the offending line, and a line of a
/// settings file may hold a password.
pub(super) fn toml_file(path: &Path) -> Result<Data<Toml>, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError::MissingFile(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        file: path.to_owned(),
        source,
    })?;
    let Err(error) = text.parse::<toml::Table>() else {
        return Ok(Toml::file_exact(path));
    };
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    Err(ConfigError::TomlSyntax {
        file: path.to_owned(),
        line,
        column,
        problem: toml_problem(error.message(), &text, offset),
    })
}

/// The parser's description of a syntax error, unless it quotes any of the
/// offending line's text (the line is never shown: it may hold a secret).
fn toml_problem(message: &str, text: &str, offset: usize) -> String {
    let start = text
        .get(..offset)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = text
        .get(start..)
        .and_then(|t| t.lines().next())
        .unwrap_or_default();
    // The part after `=` is the value; the key itself is no secret.
    let value = line.split_once('=').map_or(line, |(_, value)| value);
    let quotes_the_value = value
        .split(|c: char| c.is_whitespace() || "\"'`=".contains(c))
        .filter(|word| word.len() >= 3)
        .any(|word| message.contains(word));
    let message = message.trim().replace('\n', "; ");
    if quotes_the_value || message.is_empty() {
        "not valid TOML".to_owned()
    } else {
        message
    }
}

/// Refuses keys that no setting reads, naming each one.
pub(super) fn refuse_unknown_keys(figment: &Figment) -> Result<(), ConfigError> {
    let top_level = figment
        .extract::<Dict>()
        .map_err(|e| ConfigError::Read(describe_figment_error(e)))?;
    let unknown = keys::unknown_keys(figment, top_level.keys(), known_keys(), &SECRET_SETTINGS);
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Unknown(unknown))
    }
}

/// Extracts the raw settings; defaults fill what the figment lacks.
pub(super) fn extract(figment: &Figment) -> Result<RawSettings, ConfigError> {
    refuse_unknown_keys(figment)?;
    figment
        .extract()
        .map_err(|e| ConfigError::Read(describe_figment_error(e)))
}

/// The template directory alone (for `rekey preview-mail`), after the same
/// key check.
pub(super) fn extract_template_dir(figment: &Figment) -> Result<Option<PathBuf>, ConfigError> {
    refuse_unknown_keys(figment)?;
    if figment.contains("template_dir") {
        figment
            .extract_inner("template_dir")
            .map_err(|e| ConfigError::Read(describe_figment_error(e)))
    } else {
        Ok(None)
    }
}

/// The database URL alone (for `rekey migrate`), after the same key check.
pub(super) fn extract_database_url(figment: &Figment) -> Result<SecretString, ConfigError> {
    refuse_unknown_keys(figment)?;
    if figment.contains("database_url") {
        figment
            .extract_inner("database_url")
            .map_err(|e| ConfigError::Read(describe_figment_error(e)))
    } else {
        Ok(RawSettings::default().database_url)
    }
}

/// Each error as `NAME: problem`, NAME being the variable or file key the
/// value came from. Figment errors can quote the offending value; for
/// secrets, name only the key.
fn describe_figment_error(error: figment::Error) -> String {
    let mut messages = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let name = keys::display_name(e.metadata.as_ref(), &key);
        let from_file = e
            .metadata
            .as_ref()
            .is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))));
        let problem = if SECRET_SETTINGS.contains(&key.as_str()) {
            "invalid value".to_owned()
        } else if key.is_empty() && from_file {
            // A file that does not parse: the parser quotes its lines.
            "not valid TOML".to_owned()
        } else {
            problem(&e.kind)
        };
        messages.push(if key.is_empty() && !from_file {
            problem
        } else {
            format!("{name}: {problem}")
        });
    }
    messages.join("; ")
}

/// What is wrong with a value, with an example where figment's own words
/// would leave the operator guessing.
fn problem(kind: &Kind) -> String {
    const DURATION: &str = "is not a duration; use e.g. 30m, 24h or 90s";
    match kind {
        // humantime_serde expects "a duration".
        Kind::InvalidValue(actual, expected) | Kind::InvalidType(actual, expected)
            if expected == "a duration" =>
        {
            match actual {
                Actual::Str(text) => format!("{text:?} {DURATION}"),
                Actual::Unsigned(n) => format!("{n} {DURATION} (a unit is required)"),
                Actual::Signed(n) => format!("{n} {DURATION}"),
                other => format!("a {other} {DURATION}"),
            }
        }
        other => other.to_string(),
    }
}

/// A string, or a clear "expected" for anything else (`REKEY_LISTEN=50051`
/// arrives as a number).
fn address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Address;
    impl Visitor<'_> for Address {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address: IP:PORT, [IPv6]:PORT or localhost:PORT, e.g. 0.0.0.0:50051")
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }
    }
    deserializer.deserialize_str(Address)
}

/// A string, or a number as text (`REKEY_MAX_MESSAGE_SIZE=16384` arrives
/// as a number).
fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct TextOrNumber;
    impl Visitor<'_> for TextOrNumber {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: 16KiB, 1MiB or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }
    }
    deserializer.deserialize_any(TextOrNumber)
}

/// Accepts a TOML list or a comma-separated string (as environment variables give).
fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
