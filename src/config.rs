//! Typed settings. Layers, later wins: built-in defaults, an optional TOML
//! file, `REKEY_*` environment variables, and `REKEY_<NAME>_FILE` for the
//! secrets (database and SMTP URLs, which may carry passwords).
//! Everything is checked here, so a bad setting stops the start with a clear
//! message instead of failing on the first request.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::domain::{PasswordPolicy, ResetUrl, ResetUrlAllowList};

/// Settings read from the layers, before they are checked.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawSettings {
    listen: SocketAddr,
    database_url: SecretString,
    smtp_url: Option<SecretString>,
    #[serde(with = "humantime_serde")]
    smtp_timeout: Duration,
    mail_dir: PathBuf,
    mail_from: Option<String>,
    mail_reply_to: Option<String>,
    reset_url: Option<String>,
    #[serde(deserialize_with = "comma_list")]
    allowed_reset_urls: Vec<String>,
    #[serde(with = "humantime_serde")]
    reset_token_ttl: Duration,
    #[serde(with = "humantime_serde")]
    signup_token_ttl: Duration,
    password_min_chars: usize,
    argon2_memory_kib: u32,
    argon2_iterations: u32,
    argon2_parallelism: u32,
    hash_concurrency: usize,
    hash_queue_depth: usize,
    #[serde(with = "humantime_serde")]
    mail_poll_interval: Duration,
    mail_max_attempts: u32,
    mail_batch_size: u64,
    #[serde(with = "humantime_serde")]
    mail_lease: Duration,
    #[serde(with = "humantime_serde")]
    health_check_interval: Duration,
    #[serde(with = "humantime_serde")]
    shutdown_grace: Duration,
    log_format: LogFormat,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: SecretString::from("sqlite://./var/rekey.db?mode=rwc"),
            smtp_url: None,
            smtp_timeout: Duration::from_secs(30),
            mail_dir: PathBuf::from("./var/mail"),
            mail_from: None,
            mail_reply_to: None,
            reset_url: None,
            allowed_reset_urls: Vec::new(),
            reset_token_ttl: Duration::from_secs(30 * 60),
            signup_token_ttl: Duration::from_secs(24 * 60 * 60),
            password_min_chars: PasswordPolicy::default().min_chars,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: 0,
            hash_queue_depth: 64,
            mail_poll_interval: Duration::from_secs(5),
            mail_max_attempts: 8,
            mail_batch_size: 16,
            mail_lease: Duration::from_secs(120),
            health_check_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            log_format: LogFormat::Pretty,
        }
    }
}

/// Mail jobs of one batch sent at once.
pub const MAIL_SEND_CONCURRENCY: usize = 8;

/// How logs are written.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum MailTransportSettings {
    /// An SMTP relay URL: `smtp://` (plain, or STARTTLS with `?tls=required`
    /// / `?tls=opportunistic`) or `smtps://` (implicit TLS).
    Smtp {
        url: SecretString,
        timeout: Duration,
    },
    /// `.eml` files in a directory.
    File { dir: PathBuf },
}

/// Argon2id cost parameters (OWASP defaults: m=19456 KiB, t=2, p=1).
#[derive(Debug, Clone, Copy)]
pub struct HashingSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes running at once; defaults to the number of cores.
    pub concurrency: usize,
    /// Hash calls allowed to wait for a slot before `RESOURCE_EXHAUSTED`.
    pub queue_depth: usize,
}

/// Mail worker tuning.
#[derive(Debug, Clone, Copy)]
pub struct MailWorkerSettings {
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub batch_size: u64,
    pub lease: Duration,
}

/// Checked settings: every value here is usable as it is.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: SecretString,
    pub mail_transport: MailTransportSettings,
    pub mail_from: Mailbox,
    pub mail_reply_to: Option<Mailbox>,
    pub default_reset_url: Option<ResetUrl>,
    pub allowed_reset_urls: ResetUrlAllowList,
    pub reset_token_ttl: Duration,
    pub signup_token_ttl: Duration,
    pub password_policy: PasswordPolicy,
    pub hashing: HashingSettings,
    pub mail_worker: MailWorkerSettings,
    pub health_check_interval: Duration,
    /// How long a shutdown waits for calls in flight, then for the mail
    /// batch being sent; whatever is cut off is retried after its lease.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

/// A setting that makes no sense. The message names the setting and says
/// what would be accepted; it never echoes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read settings: {0}")]
    Read(String),
    #[error("{name}: {problem}")]
    Invalid { name: &'static str, problem: String },
}

fn invalid(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.into(),
    }
}

const SECRET_SETTINGS: [&str; 2] = ["database_url", "smtp_url"];

impl Settings {
    /// Reads defaults, then `config_file` if given, then the environment.
    pub fn load(config_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(ConfigError::Read(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("REKEY_").ignore(&["test_postgres_url"]));
        for name in SECRET_SETTINGS {
            let var = format!("REKEY_{}_FILE", name.to_ascii_uppercase());
            if let Some(path) = std::env::var_os(&var) {
                let secret = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::Read(format!("{var}: {e}")))?;
                figment = figment.merge((name, secret.trim().to_owned()));
            }
        }
        Self::from_figment(figment)
    }

    /// Checks the settings of any figment; defaults fill what it lacks.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw: RawSettings = figment
            .extract()
            .map_err(|e| ConfigError::Read(redact_figment_error(e)))?;
        Self::check(raw)
    }

    fn check(raw: RawSettings) -> Result<Self, ConfigError> {
        let database_url = raw.database_url.expose_secret();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "REKEY_DATABASE_URL",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }

        let mail_transport = match raw.smtp_url {
            Some(url) if !url.expose_secret().trim().is_empty() => {
                let parsed = url::Url::parse(url.expose_secret().trim())
                    .map_err(|_| invalid("REKEY_SMTP_URL", "is not a URL"))?;
                if !matches!(parsed.scheme(), "smtp" | "smtps") {
                    return Err(invalid("REKEY_SMTP_URL", "must use smtp:// or smtps://"));
                }
                if parsed.host_str().is_none() {
                    return Err(invalid("REKEY_SMTP_URL", "must name a host"));
                }
                MailTransportSettings::Smtp {
                    url,
                    timeout: raw.smtp_timeout,
                }
            }
            _ => MailTransportSettings::File { dir: raw.mail_dir },
        };

        let mail_reply_to = raw
            .mail_reply_to
            .as_deref()
            .map(|r| parse_mailbox("REKEY_MAIL_REPLY_TO", r))
            .transpose()?;

        let default_reset_url = raw
            .reset_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .map(|u| ResetUrl::parse("reset_url", u))
            .transpose()
            .map_err(|e| invalid("REKEY_RESET_URL", e.description))?;
        let mut allowed = raw
            .allowed_reset_urls
            .iter()
            .map(|u| ResetUrl::parse("allowed_reset_urls", u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(
                    "REKEY_ALLOWED_RESET_URLS",
                    format!("an entry {}", e.description),
                )
            })?;
        if let Some(default) = &default_reset_url {
            allowed.push(default.clone());
        }
        if allowed.is_empty() {
            return Err(invalid(
                "REKEY_RESET_URL",
                "set it (or REKEY_ALLOWED_RESET_URLS) to the page your mailed links open, \
                 e.g. https://app.example.com/reset",
            ));
        }

        // Default From: no-reply at the reset page's host, the app's own domain.
        let mail_from = match &raw.mail_from {
            Some(from) => parse_mailbox("REKEY_MAIL_FROM", from)?,
            None => {
                let host = default_reset_url
                    .as_ref()
                    .or_else(|| allowed.first())
                    .and_then(ResetUrl::host)
                    .unwrap_or_else(|| "localhost".to_owned());
                parse_mailbox("REKEY_MAIL_FROM", &format!("rekey <no-reply@{host}>"))?
            }
        };

        for (name, ttl) in [
            ("REKEY_RESET_TOKEN_TTL", raw.reset_token_ttl),
            ("REKEY_SIGNUP_TOKEN_TTL", raw.signup_token_ttl),
        ] {
            if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(30 * 24 * 3600) {
                return Err(invalid(name, "must be between 1m and 30days"));
            }
        }
        if !(8..=64).contains(&raw.password_min_chars) {
            return Err(invalid(
                "REKEY_PASSWORD_MIN_CHARS",
                "must be between 8 and 64",
            ));
        }
        if argon2::Params::new(
            raw.argon2_memory_kib,
            raw.argon2_iterations,
            raw.argon2_parallelism,
            None,
        )
        .is_err()
        {
            return Err(invalid(
                "REKEY_ARGON2_*",
                "memory_kib, iterations and parallelism are not valid Argon2 parameters",
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let concurrency = match raw.hash_concurrency {
            0 => cores,
            n => n,
        };
        if raw.mail_max_attempts == 0 || raw.mail_batch_size == 0 {
            return Err(invalid(
                "REKEY_MAIL_MAX_ATTEMPTS / REKEY_MAIL_BATCH_SIZE",
                "must be at least 1",
            ));
        }
        if raw.mail_poll_interval.is_zero() || raw.health_check_interval.is_zero() {
            return Err(invalid(
                "REKEY_MAIL_POLL_INTERVAL / REKEY_HEALTH_CHECK_INTERVAL",
                "must be greater than zero",
            ));
        }
        // A batch is sent MAIL_SEND_CONCURRENCY at a time, each send bounded
        // by twice the SMTP timeout; the lease must outlast the whole batch.
        let rounds = u32::try_from(raw.mail_batch_size.div_ceil(MAIL_SEND_CONCURRENCY as u64))
            .unwrap_or(u32::MAX);
        if raw.mail_lease < raw.smtp_timeout.saturating_mul(2).saturating_mul(rounds) {
            return Err(invalid(
                "REKEY_MAIL_LEASE",
                "must outlast a batch of slow sends (2 x REKEY_SMTP_TIMEOUT per round of 8), \
                 or a slow send would be claimed twice",
            ));
        }

        Ok(Self {
            listen: raw.listen,
            database_url: raw.database_url,
            mail_transport,
            mail_from,
            mail_reply_to,
            default_reset_url,
            allowed_reset_urls: ResetUrlAllowList::new(allowed),
            reset_token_ttl: raw.reset_token_ttl,
            signup_token_ttl: raw.signup_token_ttl,
            password_policy: PasswordPolicy {
                min_chars: raw.password_min_chars,
            },
            hashing: HashingSettings {
                memory_kib: raw.argon2_memory_kib,
                iterations: raw.argon2_iterations,
                parallelism: raw.argon2_parallelism,
                concurrency,
                queue_depth: raw.hash_queue_depth,
            },
            mail_worker: MailWorkerSettings {
                poll_interval: raw.mail_poll_interval,
                max_attempts: raw.mail_max_attempts,
                batch_size: raw.mail_batch_size,
                lease: raw.mail_lease,
            },
            health_check_interval: raw.health_check_interval,
            shutdown_grace: raw.shutdown_grace,
            log_format: raw.log_format,
        })
    }
}

fn parse_mailbox(name: &'static str, raw: &str) -> Result<Mailbox, ConfigError> {
    raw.parse::<Mailbox>().map_err(|_| {
        invalid(
            name,
            "must be an address, optionally with a name: \"Name <addr@example.com>\"",
        )
    })
}

/// Figment errors can quote the offending value; for secrets, name only the key.
fn redact_figment_error(error: figment::Error) -> String {
    let mut messages = Vec::new();
    for e in error {
        let path = e.path.join(".");
        if SECRET_SETTINGS.iter().any(|s| path == *s) {
            messages.push(format!("{path}: invalid value"));
        } else {
            messages.push(e.to_string());
        }
    }
    messages.join("; ")
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
mod tests {
    use super::*;

    fn base() -> Figment {
        Figment::new().merge(("reset_url", "https://app.example.com/reset"))
    }

    #[test]
    fn defaults_are_sqlite_and_file_mail() {
        let settings = Settings::from_figment(base()).unwrap();
        assert!(settings.database_url.expose_secret().starts_with("sqlite:"));
        assert!(matches!(
            settings.mail_transport,
            MailTransportSettings::File { .. }
        ));
        assert_eq!(settings.reset_token_ttl, Duration::from_secs(1800));
        assert_eq!(settings.signup_token_ttl, Duration::from_secs(86_400));
        assert_eq!(settings.hashing.memory_kib, 19_456);
    }

    #[test]
    fn allowed_urls_accept_a_comma_separated_string() {
        let settings = Settings::from_figment(base().merge((
            "allowed_reset_urls",
            "https://a.example.com/r, https://b.example.com/r",
        )))
        .unwrap();
        let page = ResetUrl::parse("f", "https://b.example.com/r/x").unwrap();
        assert!(settings.allowed_reset_urls.allows(&page));
    }

    #[test]
    fn durations_are_humantime() {
        let settings = Settings::from_figment(base().merge(("reset_token_ttl", "15m"))).unwrap();
        assert_eq!(settings.reset_token_ttl, Duration::from_secs(900));
    }

    #[test]
    fn no_reset_page_is_a_clear_error() {
        let err = Settings::from_figment(Figment::new()).unwrap_err();
        assert!(err.to_string().contains("REKEY_RESET_URL"), "{err}");
    }

    #[test]
    fn from_defaults_to_no_reply_at_the_reset_page_host() {
        let settings =
            Settings::from_figment(base().merge(("smtp_url", "smtp://mail.example.com:587")))
                .unwrap();
        assert_eq!(
            settings.mail_from.to_string(),
            "rekey <no-reply@app.example.com>"
        );
        let settings = Settings::from_figment(
            base().merge(("mail_from", "Example Support <support@example.com>")),
        )
        .unwrap();
        assert_eq!(settings.mail_from.email.to_string(), "support@example.com");
    }

    #[test]
    fn a_bad_smtp_url_does_not_echo_the_secret() {
        let err = Settings::from_figment(
            base().merge(("smtp_url", "http://user:hunter2@mail.example.com")),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn nonsense_values_are_rejected() {
        for (key, value) in [
            ("reset_token_ttl", "1s"),
            ("database_url", "mysql://x"),
            ("reset_url", "not a url"),
            ("mail_from", "no address here"),
        ] {
            assert!(
                Settings::from_figment(base().merge((key, value))).is_err(),
                "{key}={value}"
            );
        }
    }
}
