//! One check per section: each turns raw values into a typed section or
//! names the setting that makes no sense.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};

use super::{
    ConfigError, LinkSettings, MailSettings, MailTransportSettings, PasswordSettings, TlsSettings,
    raw::RawSettings, smtp,
};
use crate::{
    domain::{PasswordPolicy, RateLimit, ResetUrl, ResetUrlAllowList},
    mail::{
        delivery::LinkLifetimes, mailer::Sender, templates::Templates, transport::smtp_send_bound,
        worker::WorkerOptions,
    },
    security::{callers::Callers, tls::TlsFiles},
    service::{Limits, RetentionPolicy},
};

/// The shortest mail lease: renewed every third of it, at most every second.
const SHORTEST_MAIL_LEASE: Duration = Duration::from_secs(3);

pub(super) fn invalid(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        problem: problem.into(),
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (IPv4 loopback).
pub(super) fn listen(raw: &str) -> Result<SocketAddr, ConfigError> {
    address("REKEY_LISTEN", raw)
}

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
pub(super) fn address(name: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    let text = raw.trim();
    let addr = match text.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        _ => text.parse().ok(),
    };
    addr.ok_or_else(|| {
        invalid(
            name,
            format!(
                "{text:?} is not an address to listen on; use IP:PORT, [IPv6]:PORT or \
                 localhost:PORT, e.g. 0.0.0.0:50051 or localhost:50051"
            ),
        )
    })
}

pub(super) fn database(url: &SecretString) -> Result<SecretString, ConfigError> {
    let exposed = url.expose_secret();
    if exposed.starts_with("postgres://") || exposed.starts_with("postgresql://") {
        // Checked here so that the driver's own parse error, which quotes
        // the whole URL and its password, is never reached.
        url::Url::parse(exposed).map_err(|error| {
            invalid(
                "REKEY_DATABASE_URL",
                format!(
                    "is not a valid URL ({error}); percent-encode reserved characters \
                     in the user name and password, e.g. # as %23, / as %2F, ? as %3F, @ as %40"
                ),
            )
        })?;
        Ok(url.clone())
    } else if exposed.starts_with("sqlite:") {
        Ok(url.clone())
    } else {
        Err(invalid(
            "REKEY_DATABASE_URL",
            "must start with sqlite:, postgres:// or postgresql://",
        ))
    }
}

pub(super) fn links(raw: &RawSettings) -> Result<LinkSettings, ConfigError> {
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
    for (name, ttl) in [
        ("REKEY_RESET_TOKEN_TTL", raw.reset_token_ttl),
        ("REKEY_SIGNUP_TOKEN_TTL", raw.signup_token_ttl),
    ] {
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid(name, "must be between 1m and 30days"));
        }
    }
    Ok(LinkSettings {
        default_reset_url,
        allowed_reset_urls: ResetUrlAllowList::new(allowed),
        lifetimes: LinkLifetimes {
            reset: raw.reset_token_ttl,
            sign_up: raw.signup_token_ttl,
        },
    })
}

/// `links` gives the default From host: the app's own domain.
pub(super) fn mail(raw: &RawSettings, links: &LinkSettings) -> Result<MailSettings, ConfigError> {
    let transport = smtp::transport(raw)?;
    let from = match &raw.mail_from {
        Some(from) => mailbox("REKEY_MAIL_FROM", from)?,
        None => {
            let host = links
                .default_reset_url
                .iter()
                .chain(links.allowed_reset_urls.pages())
                .find_map(ResetUrl::host)
                .unwrap_or_else(|| "localhost".to_owned());
            mailbox("REKEY_MAIL_FROM", &format!("rekey <no-reply@{host}>"))?
        }
    };
    let reply_to = raw
        .mail_reply_to
        .as_deref()
        .map(|r| mailbox("REKEY_MAIL_REPLY_TO", r))
        .transpose()?;
    let templates = Templates::load(raw.template_dir.as_deref())?;
    Ok(MailSettings {
        transport,
        sender: Sender { from, reply_to },
        worker: mail_worker(raw)?,
        templates: Arc::new(templates),
        notify_unknown_recipients: raw.notify_unknown_recipients,
    })
}

/// Refuses a count outside `range`, naming the setting and the range.
fn within(
    name: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            name,
            format!(
                "{value} is out of range: must be from {} to {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn mail_worker(raw: &RawSettings) -> Result<WorkerOptions, ConfigError> {
    within(
        "REKEY_MAIL_MAX_ATTEMPTS",
        raw.mail_max_attempts.into(),
        1..=1_000,
    )?;
    within("REKEY_MAIL_BATCH_SIZE", raw.mail_batch_size, 1..=1_000)?;
    within(
        "REKEY_MAIL_SEND_CONCURRENCY",
        raw.mail_send_concurrency as u64,
        1..=1_024,
    )?;
    if raw.smtp_timeout < Duration::from_secs(1) {
        return Err(invalid("REKEY_SMTP_TIMEOUT", "must be at least 1s"));
    }
    if raw.mail_poll_interval.is_zero() {
        return Err(invalid(
            "REKEY_MAIL_POLL_INTERVAL",
            "must be greater than zero",
        ));
    }
    if raw.mail_backoff_max < Duration::from_secs(1) {
        return Err(invalid("REKEY_MAIL_BACKOFF_MAX", "must be at least 1s"));
    }
    // The worker renews a batch's lease every third of it while the batch
    // is sent; the lease must still cover a send, should a renewal fail.
    let shortest_lease = smtp_send_bound(raw.smtp_timeout).max(SHORTEST_MAIL_LEASE);
    if raw.mail_lease < shortest_lease {
        return Err(invalid(
            "REKEY_MAIL_LEASE",
            format!(
                "must be at least {} with these settings: it must outlast one send \
                 (2 x REKEY_SMTP_TIMEOUT), or a send whose lease could not be renewed \
                 would be claimed twice",
                humantime::format_duration(shortest_lease)
            ),
        ));
    }
    Ok(WorkerOptions {
        global_limit: rate_limit("REKEY_RATE_LIMIT_MAIL_GLOBAL", &raw.rate_limit_mail_global)?,
        poll_interval: raw.mail_poll_interval,
        max_attempts: raw.mail_max_attempts,
        backoff_max: raw.mail_backoff_max,
        batch_size: raw.mail_batch_size,
        lease: raw.mail_lease,
        send_concurrency: raw.mail_send_concurrency,
    })
}

pub(super) fn passwords(raw: &RawSettings) -> Result<PasswordSettings, ConfigError> {
    let (name, min_length) = match (raw.password_min_length, raw.password_min_chars) {
        (Some(length), Some(chars)) if length != chars => {
            return Err(invalid(
                "REKEY_PASSWORD_MIN_LENGTH / REKEY_PASSWORD_MIN_CHARS",
                format!(
                    "disagree ({length} and {chars}); REKEY_PASSWORD_MIN_CHARS is an older \
                     name of REKEY_PASSWORD_MIN_LENGTH: set only that one"
                ),
            ));
        }
        (Some(length), _) => ("REKEY_PASSWORD_MIN_LENGTH", length),
        (None, Some(chars)) => ("REKEY_PASSWORD_MIN_CHARS", chars),
        (None, None) => (
            "REKEY_PASSWORD_MIN_LENGTH",
            PasswordPolicy::default().min_length,
        ),
    };
    if !(8..=64).contains(&min_length) {
        return Err(invalid(name, "must be between 8 and 64"));
    }
    if raw.password_min_score > 4 {
        return Err(invalid(
            "REKEY_PASSWORD_MIN_SCORE",
            "must be a zxcvbn score from 0 (no check) to 4 (strictest)",
        ));
    }
    let argon2 = argon2::Params::new(
        raw.argon2_memory_kib,
        raw.argon2_iterations,
        raw.argon2_parallelism,
        None,
    )
    .map_err(|_| {
        invalid(
            "REKEY_ARGON2_*",
            "memory_kib, iterations and parallelism are not valid Argon2 parameters",
        )
    })?;
    within(
        "REKEY_HASH_CONCURRENCY",
        raw.hash_concurrency as u64,
        0..=1_024,
    )?;
    within(
        "REKEY_HASH_QUEUE_DEPTH",
        raw.hash_queue_depth as u64,
        0..=100_000,
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(PasswordSettings {
        policy: PasswordPolicy {
            min_length,
            min_score: raw.password_min_score,
        },
        argon2,
        hash_concurrency: match raw.hash_concurrency {
            0 => cores,
            n => n,
        },
        hash_queue_depth: raw.hash_queue_depth,
    })
}

pub(super) fn health_check_interval(raw: &RawSettings) -> Result<Duration, ConfigError> {
    if raw.health_check_interval.is_zero() {
        return Err(invalid(
            "REKEY_HEALTH_CHECK_INTERVAL",
            "must be greater than zero",
        ));
    }
    Ok(raw.health_check_interval)
}

fn mailbox(name: &'static str, raw: &str) -> Result<Mailbox, ConfigError> {
    raw.parse::<Mailbox>().map_err(|_| {
        invalid(
            name,
            "must be an address, optionally with a name: \"Name <addr@example.com>\"",
        )
    })
}

pub(super) fn callers(raw: &RawSettings) -> Result<Callers, ConfigError> {
    let mut callers = Callers::default();
    if let Some(keys) = &raw.api_keys {
        callers = callers
            .with_api_keys(keys)
            .map_err(|e| invalid("REKEY_API_KEYS", e.to_string()))?;
    }
    if raw.tls_client_ca_file.is_some() {
        callers = callers
            .with_client_certificates(&raw.tls_client_scopes)
            .map_err(|e| invalid("REKEY_TLS_CLIENT_SCOPES", e.to_string()))?;
    } else if !raw.tls_client_scopes.trim().is_empty() {
        return Err(invalid(
            "REKEY_TLS_CLIENT_SCOPES",
            "needs REKEY_TLS_CLIENT_CA_FILE: only verified client certificates name callers",
        ));
    }
    Ok(callers)
}

pub(super) fn tls(raw: &RawSettings) -> Result<Option<TlsSettings>, ConfigError> {
    let (cert, key) = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) if raw.tls_client_ca_file.is_none() => return Ok(None),
        _ => {
            return Err(invalid(
                "REKEY_TLS_CERT_FILE / REKEY_TLS_KEY_FILE",
                "set both to turn on TLS (REKEY_TLS_CLIENT_CA_FILE needs them too)",
            ));
        }
    };
    if raw.tls_reload_interval.is_zero() || raw.tls_handshake_timeout.is_zero() {
        return Err(invalid(
            "REKEY_TLS_RELOAD_INTERVAL / REKEY_TLS_HANDSHAKE_TIMEOUT",
            "must be greater than zero",
        ));
    }
    let files = TlsFiles {
        cert,
        key,
        client_ca: raw.tls_client_ca_file.clone(),
    };
    // Load once now, so a bad file stops start-up with its name.
    files
        .acceptor()
        .map_err(|e| invalid("REKEY_TLS_*", format!("{:#}", anyhow::Error::new(e))))?;
    Ok(Some(TlsSettings {
        files,
        reload_interval: raw.tls_reload_interval,
        handshake_timeout: raw.tls_handshake_timeout,
    }))
}

/// Like Redis' protected mode: off loopback, refuse what would expose
/// accounts or links unless `REKEY_ALLOW_INSECURE` overrides it, in which
/// case the problems are returned for a warning at start.
pub(super) fn protected_mode(
    raw: &RawSettings,
    listen: SocketAddr,
    mail: &MailSettings,
    callers: &Callers,
) -> Result<Vec<String>, ConfigError> {
    if listen.ip().is_loopback() {
        return Ok(Vec::new());
    }
    let mut problems = Vec::new();
    if !callers.required() {
        problems.push(
            "no caller authentication: set REKEY_API_KEYS or REKEY_TLS_CLIENT_CA_FILE".to_owned(),
        );
    }
    match &mail.transport {
        MailTransportSettings::File { .. } => problems
            .push("mail goes to the file transport, links on disk: set REKEY_SMTP_URL".to_owned()),
        MailTransportSettings::Smtp { url, password, .. } => {
            if smtp::credentials_in_clear(url, password.as_ref()) {
                problems.push(
                    "SMTP credentials would cross the network without TLS: use smtps:// \
                     or ?tls=required"
                        .to_owned(),
                );
            }
        }
    }
    if problems.is_empty() || raw.allow_insecure {
        return Ok(problems);
    }
    Err(invalid(
        "REKEY_LISTEN",
        format!(
            "{} is not a loopback address, and protected mode refuses: {}; \
             set REKEY_ALLOW_INSECURE=true to start anyway",
            listen,
            problems.join("; ")
        ),
    ))
}

pub(super) fn limits(raw: &RawSettings) -> Result<Limits, ConfigError> {
    Ok(Limits {
        per_email: rate_limit("REKEY_RATE_LIMIT_PER_EMAIL", &raw.rate_limit_per_email)?,
        per_ip: rate_limit("REKEY_RATE_LIMIT_PER_IP", &raw.rate_limit_per_ip)?,
        auth_failures: rate_limit("REKEY_AUTH_FAILURE_LIMIT", &raw.auth_failure_limit)?,
    })
}

pub(super) fn retention(raw: &RawSettings) -> Result<RetentionPolicy, ConfigError> {
    let kept = |name: &'static str, value: Duration| {
        if value < Duration::from_secs(60) {
            Err(invalid(name, "must be at least 1m, e.g. 7d"))
        } else {
            Ok(value)
        }
    };
    if raw.retention_interval.is_zero() {
        return Err(invalid(
            "REKEY_RETENTION_INTERVAL",
            "must be more than 0, e.g. 1h",
        ));
    }
    Ok(RetentionPolicy {
        requests: kept("REKEY_RETENTION_REQUESTS", raw.retention_requests)?,
        mail: kept("REKEY_RETENTION_MAIL", raw.retention_mail)?,
        audit: kept("REKEY_RETENTION_AUDIT", raw.retention_audit)?,
        interval: raw.retention_interval,
    })
}

fn rate_limit(name: &'static str, raw: &str) -> Result<Option<RateLimit>, ConfigError> {
    RateLimit::parse(raw).map_err(|problem| invalid(name, problem))
}
