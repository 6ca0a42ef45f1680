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
    },
    /// `.eml` files in a directory.
    File { dir: PathBuf },
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
    /// batch being sent; whatever is cut off is retried after its lease.
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
            settings.mail.transport,
            MailTransportSettings::File { .. }
        ));
        assert_eq!(settings.links.lifetimes.reset, Duration::from_secs(1800));
        assert_eq!(
            settings.links.lifetimes.sign_up,
            Duration::from_secs(86_400)
        );
        assert_eq!(settings.passwords.argon2.m_cost(), 19_456);
        // Retries ride out a relay outage of about an hour.
        let worker = settings.mail.worker;
        assert_eq!(
            (worker.max_attempts, worker.backoff_max.as_secs()),
            (12, 900)
        );
        let (shortest, longest) = worker.retry_span();
        assert!((shortest..=longest).contains(&Duration::from_secs(3600)));
    }

    #[test]
    fn the_password_policy_defaults_to_nist_and_zxcvbn_3() {
        let policy = Settings::from_figment(base()).unwrap().passwords.policy;
        assert_eq!((policy.min_length, policy.min_score), (12, 3));
    }

    #[test]
    fn password_min_chars_is_an_alias_of_password_min_length() {
        let min_length = |figment: Figment| {
            Settings::from_figment(figment)
                .map(|s| s.passwords.policy.min_length)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            min_length(base().merge(("password_min_length", 16))),
            Ok(16)
        );
        assert_eq!(min_length(base().merge(("password_min_chars", 14))), Ok(14));
        let both = base()
            .merge(("password_min_length", 16))
            .merge(("password_min_chars", 16));
        assert_eq!(min_length(both), Ok(16));
        let clash = base()
            .merge(("password_min_length", 16))
            .merge(("password_min_chars", 14));
        let err = min_length(clash).unwrap_err();
        assert!(err.contains("REKEY_PASSWORD_MIN_LENGTH"), "{err}");
        assert!(err.contains("REKEY_PASSWORD_MIN_CHARS"), "{err}");
    }

    #[test]
    fn allowed_urls_accept_a_comma_separated_string() {
        let settings = Settings::from_figment(base().merge((
            "allowed_reset_urls",
            "https://a.example.com/r, https://b.example.com/r",
        )))
        .unwrap();
        let page = ResetUrl::parse("f", "https://b.example.com/r/x").unwrap();
        assert!(settings.links.allowed_reset_urls.allows(&page));
    }

    #[test]
    fn durations_are_humantime() {
        let settings = Settings::from_figment(base().merge(("reset_token_ttl", "15m"))).unwrap();
        assert_eq!(settings.links.lifetimes.reset, Duration::from_secs(900));
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
            settings.mail.sender.from.to_string(),
            "rekey <no-reply@app.example.com>"
        );
        let settings = Settings::from_figment(
            base().merge(("mail_from", "Example Support <support@example.com>")),
        )
        .unwrap();
        assert_eq!(
            settings.mail.sender.from.email.to_string(),
            "support@example.com"
        );
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
    fn nonsense_values_are_rejected_naming_the_setting() {
        let cases: [(&str, figment::value::Value, &str); 14] = [
            ("reset_token_ttl", "1s".into(), "REKEY_RESET_TOKEN_TTL"),
            (
                "signup_token_ttl",
                "90days".into(),
                "REKEY_SIGNUP_TOKEN_TTL",
            ),
            ("database_url", "mysql://x".into(), "REKEY_DATABASE_URL"),
            ("reset_url", "not a url".into(), "REKEY_RESET_URL"),
            ("mail_from", "no address here".into(), "REKEY_MAIL_FROM"),
            ("mail_reply_to", "nobody".into(), "REKEY_MAIL_REPLY_TO"),
            (
                "smtp_url",
                "http://mail.example.com".into(),
                "REKEY_SMTP_URL",
            ),
            ("password_min_chars", 4.into(), "REKEY_PASSWORD_MIN_CHARS"),
            (
                "password_min_length",
                65.into(),
                "REKEY_PASSWORD_MIN_LENGTH",
            ),
            ("password_min_score", 5.into(), "REKEY_PASSWORD_MIN_SCORE"),
            ("argon2_memory_kib", 1.into(), "REKEY_ARGON2_*"),
            ("mail_lease", "1s".into(), "REKEY_MAIL_LEASE"),
            ("mail_backoff_max", "0s".into(), "REKEY_MAIL_BACKOFF_MAX"),
            (
                "health_check_interval",
                "0s".into(),
                "REKEY_HEALTH_CHECK_INTERVAL",
            ),
        ];
        for (key, value, setting) in cases {
            match Settings::from_figment(base().merge((key, value.clone()))) {
                Err(ConfigError::Invalid { name, .. }) => {
                    assert_eq!(name, setting, "{key}={value:?}");
                }
                other => panic!("{key}={value:?}: expected Invalid({setting}), got {other:?}"),
            }
        }
    }

    #[test]
    fn values_of_the_wrong_type_name_the_key() {
        for (key, value) in [("reset_token_ttl", "soon"), ("hash_queue_depth", "many")] {
            match Settings::from_figment(base().merge((key, value))) {
                Err(ConfigError::Read(message)) => assert!(message.contains(key), "{message}"),
                other => panic!("{key}={value}: expected Read naming {key}, got {other:?}"),
            }
        }
    }

    fn read_error(figment: Figment) -> String {
        match Settings::from_figment(figment) {
            Err(ConfigError::Read(message)) => message,
            other => panic!("expected a Read error, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_duration_shows_an_example() {
        assert_eq!(
            read_error(base().merge(("reset_token_ttl", "soon"))),
            r#"reset_token_ttl: "soon" is not a duration; use e.g. 30m, 24h or 90s"#
        );
        let message = read_error(base().merge(("smtp_timeout", 30)));
        assert!(
            message.starts_with("smtp_timeout: 30 is not a duration"),
            "{message}"
        );
        assert!(message.contains("30m"), "{message}");
    }

    #[test]
    fn listen_accepts_localhost_and_any_ip_with_a_port() {
        for (value, expected) in [
            ("localhost:50051", "127.0.0.1:50051"),
            ("LOCALHOST:8080", "127.0.0.1:8080"),
            ("0.0.0.0:50051", "0.0.0.0:50051"),
            ("10.1.2.3:0", "10.1.2.3:0"),
            ("[::1]:50051", "[::1]:50051"),
            ("[::]:50051", "[::]:50051"),
            (" 127.0.0.1:1 ", "127.0.0.1:1"),
        ] {
            // Protected mode is tested on its own; here only the parsing.
            let figment = base()
                .merge(("listen", value))
                .merge(("allow_insecure", true));
            let settings = Settings::from_figment(figment).unwrap();
            assert_eq!(settings.listen.to_string(), expected, "{value}");
        }
    }

    #[test]
    fn a_bad_listen_address_says_what_is_expected() {
        for value in [
            "nowhere",
            "localhost",
            "localhost:99999",
            "::1:50051",
            "example.com:80",
        ] {
            match Settings::from_figment(base().merge(("listen", value))) {
                Err(ConfigError::Invalid { name, problem }) => {
                    assert_eq!(name, "REKEY_LISTEN");
                    assert!(problem.contains("localhost:PORT"), "{problem}");
                    assert!(problem.contains("0.0.0.0:50051"), "{problem}");
                }
                other => panic!("{value}: expected Invalid(REKEY_LISTEN), got {other:?}"),
            }
        }
        // A bare port arrives from the environment as a number.
        let message = read_error(base().merge(("listen", 50051)));
        assert!(message.starts_with("listen: "), "{message}");
        assert!(message.contains("localhost:PORT"), "{message}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_the_closest_known_name() {
        match Settings::from_figment(base().merge(("reset_urls", "https://x.example.com"))) {
            Err(ConfigError::Unknown(unknown)) => assert_eq!(
                unknown,
                [UnknownSetting {
                    name: "reset_urls".into(),
                    hint: Some("did you mean reset_url?".into()),
                }]
            ),
            other => panic!("expected Unknown, got {other:?}"),
        }
        let err = Settings::from_figment(base().merge(("frobnicate", 1))).unwrap_err();
        assert_eq!(err.to_string(), "frobnicate: unknown setting");
    }

    #[test]
    fn every_unknown_key_is_named_at_once() {
        let err = Settings::from_figment(
            base()
                .merge(("smtp_uri", "smtp://user:hunter2@mail.example.com"))
                .merge(("colour", "blue")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 unknown settings:\n  colour: unknown setting\n  \
             smtp_uri: unknown setting; did you mean smtp_url?"
        );
    }

    #[test]
    fn an_unknown_key_wins_over_a_missing_reset_page() {
        let err = Settings::from_figment(Figment::new().merge(("reset_urls", "x"))).unwrap_err();
        assert!(matches!(err, ConfigError::Unknown(_)), "{err:?}");
    }

    #[test]
    fn the_example_settings_file_is_accepted_as_it_is() {
        use figment::providers::{Format, Toml};
        let example = include_str!("../../deploy/rekey.example.toml");
        Settings::from_figment(Figment::new().merge(Toml::string(example))).unwrap();
    }

    #[test]
    fn known_keys_are_the_fields_of_the_raw_settings() {
        let known = raw::known_keys();
        for key in [
            "listen",
            "database_url",
            "smtp_url",
            "reset_url",
            "log_format",
        ] {
            assert!(known.contains(&key), "{key} in {known:?}");
        }
        // A `flatten` field would make serde read a map and lose the list.
        assert!(known.len() >= 25, "{known:?}");
    }

    #[test]
    fn a_bad_tls_parameter_is_a_plain_error_without_the_url() {
        for url in [
            "smtp://user:hunter2@mail.example.com:587?tls=yes",
            "smtp://user:hunter2@mail.example.com:587?tls=",
            "smtp://user:hunter2@mail.example.com:587?tls=starttls",
            "smtps://user:hunter2@mail.example.com?tls=opportunistic",
        ] {
            match Settings::from_figment(base().merge(("smtp_url", url))) {
                Err(ConfigError::Invalid { name, problem }) => {
                    assert_eq!(name, "REKEY_SMTP_URL");
                    assert!(problem.contains("tls="), "{problem}");
                    assert!(!problem.contains("hunter2"), "{problem}");
                    assert!(!problem.contains("mail.example.com"), "{problem}");
                }
                other => panic!("{url}: expected Invalid(REKEY_SMTP_URL), got {other:?}"),
            }
        }
        for url in [
            "smtp://mail.example.com:25",
            "smtp://mail.example.com:587?tls=required",
            "smtp://mail.example.com:587?tls=opportunistic",
            "smtps://mail.example.com",
            "smtps://mail.example.com?tls=required",
        ] {
            Settings::from_figment(base().merge(("smtp_url", url))).unwrap();
        }
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_quoted() {
        let message = read_error(base().merge(("database_url", ["postgres://u:hunter2@h/d"])));
        assert_eq!(message, "database_url: invalid value");
    }

    #[test]
    fn migrate_needs_only_the_database() {
        let settings = MigrateSettings::from_figment(Figment::new()).unwrap();
        assert!(settings.database_url.expose_secret().starts_with("sqlite:"));
        let settings = MigrateSettings::from_figment(
            Figment::new()
                .merge(("database_url", "postgres://rekey@db/rekey"))
                // Not its business: another command would refuse it.
                .merge(("hash_queue_depth", "many")),
        )
        .unwrap();
        assert_eq!(
            settings.database_url.expose_secret(),
            "postgres://rekey@db/rekey"
        );
    }

    #[test]
    fn migrate_still_refuses_unknown_keys_and_a_bad_database_url() {
        let err =
            MigrateSettings::from_figment(Figment::new().merge(("databse_url", "x"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "databse_url: unknown setting; did you mean database_url?"
        );
        match MigrateSettings::from_figment(
            Figment::new().merge(("database_url", "mysql://u:hunter2@h/d")),
        ) {
            Err(ConfigError::Invalid { name, problem }) => {
                assert_eq!(name, "REKEY_DATABASE_URL");
                assert!(!problem.contains("hunter2"));
            }
            other => panic!("expected Invalid(REKEY_DATABASE_URL), got {other:?}"),
        }
    }

    #[test]
    fn redact_masks_secret_urls_and_their_passwords() {
        let settings = Settings::from_figment(
            base()
                .merge(("database_url", "postgres://rekey:s3cr%2Ft@db/rekey"))
                .merge(("smtp_url", "smtps://apikey:hunter2@smtp.example.com")),
        )
        .unwrap();
        let text = settings
            .redact("postgres://rekey:s3cr%2Ft@db/rekey; s3cr/t; s3cr%2Ft; 535 bad login hunter2");
        assert_eq!(text, "***; ***; ***; 535 bad login ***");
    }

    #[test]
    fn the_mail_transport_is_described_without_credentials() {
        let settings = Settings::from_figment(base().merge((
            "smtp_url",
            "smtp://user:hunter2@mail.example.com:587?tls=required",
        )))
        .unwrap();
        assert_eq!(
            settings.mail.transport.to_string(),
            "smtp relay mail.example.com:587"
        );
        assert!(!settings.summary().contains("hunter2"));
    }
}
