//! Typed settings. Layers, later wins: built-in defaults, an optional TOML
//! file, `REKEY_*` environment variables, and `REKEY_<NAME>_FILE` for the
//! secrets. `raw` reads the layers; `check` turns each section into typed
//! values, so a bad setting stops the start with a clear message instead of
//! failing on the first request. `startup` hands each component its part.
//! A key that no setting reads, from any layer, is an error too: a typo
//! must not quietly leave a default in force.

mod check;
mod keys;
mod raw;
mod smtp;
mod transport;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use figment::Figment;
use secrecy::{ExposeSecret, SecretString};

pub use keys::UnknownSetting;

use crate::{
    domain::{PasswordPolicy, ResetUrl, ResetUrlAllowList},
    grpc::TransportLimits,
    mail::{
        delivery::LinkLifetimes,
        mailer::Sender,
        templates::{TemplateError, Templates},
        worker::WorkerOptions,
    },
    security::{callers::Callers, tls::TlsFiles},
    service::{Limits, RetentionPolicy},
    store::PoolOptions,
    telemetry::LogFormat,
};

/// TLS on the gRPC port.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub files: TlsFiles,
    /// How often the files are checked for a rotation.
    pub reload_interval: Duration,
    /// How long a client may take to complete the handshake.
    pub handshake_timeout: Duration,
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum MailTransportSettings {
    /// An SMTP relay URL, the password for its user when kept apart from
    /// the URL, and the per-command timeout.
    Smtp {
        url: SecretString,
        password: Option<SecretString>,
        timeout: Duration,
        /// The authorities the relay's certificate must chain to, when not
        /// the public roots.
        trust: Option<RelayTrust>,
    },
    /// `.eml` files in a directory.
    File { dir: PathBuf },
}

/// `REKEY_SMTP_CA_FILE` as read at start: PEM certificates, each checked
/// to be usable as a trust anchor.
#[derive(Clone)]
pub struct RelayTrust {
    pub file: PathBuf,
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for RelayTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTrust")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The pages links may point at, and how long links live.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub default_reset_url: Option<ResetUrl>,
    pub allowed_reset_urls: ResetUrlAllowList,
    pub lifetimes: LinkLifetimes,
}

/// Where mail goes, who it is from, and how the worker paces it.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub transport: MailTransportSettings,
    pub sender: Sender,
    pub worker: WorkerOptions,
    /// The embedded templates and `REKEY_TEMPLATE_DIR`'s, each rendered
    /// once with sample data.
    pub templates: Arc<Templates>,
    /// Mail a reset for an address without an account ("unknown_account").
    pub notify_unknown_recipients: bool,
}

/// The password policy and the hashing pool.
#[derive(Debug, Clone)]
pub struct PasswordSettings {
    pub policy: PasswordPolicy,
    /// Argon2id cost (OWASP defaults: m=19456 KiB, t=2, p=1), built once.
    pub argon2: argon2::Params,
    /// Hashes running at once; defaults to the number of cores.
    pub hash_concurrency: usize,
    /// Hash calls allowed to wait for a slot before `RESOURCE_EXHAUSTED`.
    pub hash_queue_depth: usize,
}

/// Checked settings: every value here is usable as it is.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: SecretString,
    pub database_pool: PoolOptions,
    pub links: LinkSettings,
    pub mail: MailSettings,
    pub passwords: PasswordSettings,
    pub health_check_interval: Duration,
    /// How long a shutdown waits for calls in flight, then for the mail
    /// batches being sent; whatever is cut off is retried after its lease.
    pub shutdown_grace: Duration,
    /// On shutdown, how long readiness says not serving before serving stops.
    pub shutdown_delay: Duration,
    /// Apply pending migrations at start; off when a `rekey migrate` job does.
    pub migrate_on_start: bool,
    pub log_format: LogFormat,
    /// Who may call; empty means anyone who can connect.
    pub callers: Callers,
    pub limits: Limits,
    pub retention: RetentionPolicy,
    pub tls: Option<TlsSettings>,
    /// A second, plaintext port serving `grpc.health.v1` alone.
    pub health_listen: Option<SocketAddr>,
    /// Where Prometheus scrapes `GET /metrics`, in plain HTTP; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Message size, deadlines, HTTP/2 and idle-connection limits.
    pub transport: TransportLimits,
    /// Protected-mode problems overridden by `REKEY_ALLOW_INSECURE`, each
    /// warned about at start.
    pub insecure: Vec<String>,
}

/// A setting that makes no sense. The message names the setting and says
/// what would be accepted; it never echoes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    #[error("cannot read config file {}", file.display())]
    ReadFile {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Position and description only: the offending line may hold a secret.
    #[error("{}: line {line}, column {column}: {problem}", file.display())]
    TomlSyntax {
        file: PathBuf,
        line: usize,
        column: usize,
        problem: String,
    },
    /// Keys that no setting reads (never empty).
    #[error("{}", unknown_lines(.0))]
    Unknown(Vec<UnknownSetting>),
    #[error("{var}: cannot read the file")]
    SecretFile {
        var: String,
        #[source]
        source: std::io::Error,
    },
    /// A value of the wrong type or form, as `NAME: problem`.
    #[error("{0}")]
    Read(String),
    #[error("{name}: {problem}")]
    Invalid { name: &'static str, problem: String },
    /// A broken template, named by file and line.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// One unknown setting on the line, or several each on a line of its own.
fn unknown_lines(unknown: &[UnknownSetting]) -> String {
    match unknown {
        [one] => one.to_string(),
        several => several.iter().fold(
            format!("{} unknown settings:", several.len()),
            |text, item| format!("{text}\n  {item}"),
        ),
    }
}

impl Settings {
    /// Reads defaults, then `config_file` if given, then the environment.
    pub fn load(config_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::from_figment(raw::layers(config_file)?)
    }

    /// Checks the settings of any figment; defaults fill what it lacks.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw = raw::extract(&figment)?;
        let links = check::links(&raw)?;
        let mail = check::mail(&raw, &links)?;
        let callers = check::callers(&raw)?;
        let listen = check::listen(&raw.listen)?;
        Ok(Self {
            insecure: check::protected_mode(&raw, listen, &mail, &callers)?,
            listen,
            database_url: check::database(&raw.database_url)?,
            database_pool: transport::database_pool(&raw)?,
            transport: transport::transport(&raw)?,
            tls: check::tls(&raw)?,
            health_listen: raw
                .health_listen
                .as_deref()
                .map(|a| check::address("REKEY_HEALTH_LISTEN", a))
                .transpose()?,
            metrics_listen: raw
                .metrics_listen
                .as_deref()
                .map(|a| check::address("REKEY_METRICS_LISTEN", a))
                .transpose()?,
            limits: check::limits(&raw)?,
            retention: check::retention(&raw)?,
            callers,
            mail,
            links,
            passwords: check::passwords(&raw)?,
            health_check_interval: check::health_check_interval(&raw)?,
            shutdown_grace: raw.shutdown_grace,
            shutdown_delay: raw.shutdown_delay,
            migrate_on_start: raw.migrate_on_start,
            log_format: raw.log_format,
        })
    }

    /// What `rekey check-config` reports: no secret, only kinds and names.
    pub fn summary(&self) -> String {
        let database = self
            .database_url
            .expose_secret()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mail = match &self.mail.transport {
            MailTransportSettings::Smtp {
                trust: Some(trust), ..
            } => format!(
                "{} (its certificate from the CAs in {})",
                self.mail.transport,
                trust.file.display()
            ),
            MailTransportSettings::Smtp { .. } => self.mail.transport.to_string(),
            MailTransportSettings::File { dir } => format!("file ({})", dir.display()),
        };
        format!(
            "  listen:   {}\n  database: {database}\n  mail:     {mail}, from {}",
            self.listen, self.mail.sender.from
        )
    }

    /// The database as a log may name it: kind, host, port and database or
    /// file, never a user or password.
    pub fn database_location(&self) -> String {
        let url = self.database_url.expose_secret();
        match url::Url::parse(url) {
            Ok(parsed) if parsed.scheme() == "sqlite" => {
                let file = url
                    .trim_start_matches("sqlite:")
                    .trim_start_matches("//")
                    .split('?')
                    .next()
                    .unwrap_or_default();
                format!("sqlite {file}")
            }
            Ok(parsed) => format!(
                "{} {}:{}{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or("localhost"),
                parsed.port().unwrap_or(5432),
                parsed.path()
            ),
            Err(_) => url.split(':').next().unwrap_or_default().to_owned(),
        }
    }

    /// `text` with every secret setting, and the password inside it, masked:
    /// for messages built from errors of the libraries that were handed one.
    pub fn redact(&self, text: &str) -> String {
        let mut secrets = vec![self.database_url.expose_secret().to_owned()];
        if let MailTransportSettings::Smtp { url, password, .. } = &self.mail.transport {
            secrets.push(url.expose_secret().trim().to_owned());
            secrets.extend(password.iter().map(|p| p.expose_secret().to_owned()));
        }
        redact(text, &secrets)
    }
}

/// `text` with each secret URL, its password, and its decoded password masked.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut hidden = Vec::new();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        hidden.push(secret.clone());
        if let Some(password) = url::Url::parse(secret)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
        {
            if let Ok(decoded) = percent_encoding::percent_decode_str(&password).decode_utf8() {
                hidden.push(decoded.into_owned());
            }
            hidden.push(password);
        }
    }
    // Longest first, so a URL is masked whole before its password is.
    hidden.sort_by_key(|s| std::cmp::Reverse(s.len()));
    hidden
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
}

impl std::fmt::Display for MailTransportSettings {
    /// Where mail goes, without credentials: `smtp relay HOST:PORT`, or the
    /// directory of the file transport.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailTransportSettings::Smtp { url, .. } => {
                let url = url::Url::parse(url.expose_secret().trim()).ok();
                let host = url.as_ref().and_then(|u| u.host_str()).unwrap_or("?");
                match url.as_ref().and_then(url::Url::port) {
                    Some(port) => write!(f, "smtp relay {host}:{port}"),
                    None => write!(f, "smtp relay {host}"),
                }
            }
            MailTransportSettings::File { dir } => write!(f, "directory {}", dir.display()),
        }
    }
}

/// What `rekey migrate` needs: the database, and nothing else, so that a
/// migration job needs no mail or link settings. Unknown keys are refused
/// all the same, as for [`Settings`].
#[derive(Debug, Clone)]
pub struct MigrateSettings {
    pub database_url: SecretString,
    pub database_pool: PoolOptions,
}

impl MigrateSettings {
    /// Reads the same layers as [`Settings::load`].
    pub fn load(config_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::from_figment(raw::layers(config_file)?)
    }

    /// Checks the database URL of any figment, and that it sets no unknown key.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let url = raw::extract_database_url(&figment)?;
        Ok(Self {
            database_url: check::database(&url)?,
            database_pool: PoolOptions::default(),
        })
    }
}

/// What `rekey preview-mail` needs: the templates, and nothing else, so it
/// runs without a database or link settings.
#[derive(Debug)]
pub struct PreviewSettings {
    pub templates: Templates,
}

impl PreviewSettings {
    /// Reads the same layers as [`Settings::load`] and loads the templates.
    pub fn load(config_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let dir = raw::extract_template_dir(&raw::layers(config_file)?)?;
        Ok(Self {
            templates: Templates::load(dir.as_deref())?,
        })
    }
}

#[cfg(test)]
mod tests;
