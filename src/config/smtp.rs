//! The SMTP part of the mail settings: the relay URL, its TLS mode, and a
//! password kept apart from the URL (`REKEY_SMTP_PASSWORD[_FILE]`). No
//! message quotes the URL or the password: either may be a secret.

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, MailTransportSettings, check::invalid, raw::RawSettings};

/// SMTP when `REKEY_SMTP_URL` is set, else the file transport.
pub(super) fn transport(raw: &RawSettings) -> Result<MailTransportSettings, ConfigError> {
    let password = raw.smtp_password.as_ref();
    if password.is_some_and(|p| p.expose_secret().trim().is_empty()) {
        return Err(invalid("REKEY_SMTP_PASSWORD", "is empty"));
    }
    let url = match &raw.smtp_url {
        Some(url) if !url.expose_secret().trim().is_empty() => url,
        _ if password.is_some() => {
            return Err(invalid(
                "REKEY_SMTP_PASSWORD",
                "needs REKEY_SMTP_URL, naming the relay and the user: smtp://USER@host",
            ));
        }
        _ => {
            return Ok(MailTransportSettings::File {
                dir: raw.mail_dir.clone(),
            });
        }
    };
    let parsed = url::Url::parse(url.expose_secret().trim())
        .map_err(|_| invalid("REKEY_SMTP_URL", "is not a URL"))?;
    if !matches!(parsed.scheme(), "smtp" | "smtps") {
        return Err(invalid("REKEY_SMTP_URL", "must use smtp:// or smtps://"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("REKEY_SMTP_URL", "must name a host"));
    }
    tls(&parsed)?;
    if password.is_some() {
        if parsed.password().is_some() {
            return Err(invalid(
                "REKEY_SMTP_PASSWORD",
                "REKEY_SMTP_URL holds a password too; keep it in one place",
            ));
        }
        if parsed.username().is_empty() {
            return Err(invalid(
                "REKEY_SMTP_URL",
                "must name the user REKEY_SMTP_PASSWORD is for: smtp://USER@host",
            ));
        }
    }
    Ok(MailTransportSettings::Smtp {
        url: url.clone(),
        password: password.map(|p| SecretString::from(p.expose_secret().trim())),
        timeout: raw.smtp_timeout,
    })
}

/// The `tls=` parameter, as the SMTP client reads it.
fn tls(url: &url::Url) -> Result<(), ConfigError> {
    let tls = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    match (url.scheme(), tls.as_deref()) {
        ("smtp", None | Some("required" | "opportunistic"))
        | ("smtps", None | Some("required")) => Ok(()),
        ("smtps", Some(_)) => Err(invalid(
            "REKEY_SMTP_URL",
            "smtps:// always uses TLS from the first byte; leave out tls=",
        )),
        _ => Err(invalid(
            "REKEY_SMTP_URL",
            "tls= must be \"required\" (STARTTLS, refuse the relay without it) or \
             \"opportunistic\" (STARTTLS when offered); for TLS from the first byte use \
             smtps://",
        )),
    }
}

/// True when a login (a user or password in the URL, or a separate
/// password) would be sent to the relay without TLS being required.
pub(super) fn credentials_in_clear(url: &SecretString, password: Option<&SecretString>) -> bool {
    let Ok(url) = url::Url::parse(url.expose_secret().trim()) else {
        return false;
    };
    let has_credentials =
        !url.username().is_empty() || url.password().is_some() || password.is_some();
    let tls_required = url.scheme() == "smtps"
        || url
            .query_pairs()
            .any(|(key, value)| key == "tls" && value == "required");
    has_credentials && !tls_required
}

#[cfg(test)]
mod tests {
    use figment::Figment;

    use super::*;
    use crate::config::Settings;

    const PASSWORD: &str = "pw-hunter2";

    fn base() -> Figment {
        Figment::new().merge(("reset_url", "https://app.example.com/reset"))
    }

    fn invalid_name(figment: Figment) -> &'static str {
        match Settings::from_figment(figment) {
            Err(ConfigError::Invalid { name, problem }) => {
                assert!(!problem.contains(PASSWORD), "{problem}");
                name
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_separate_password_logs_in_as_the_urls_user() {
        let settings = Settings::from_figment(
            base()
                .merge(("smtp_url", "smtps://apikey@smtp.example.com"))
                .merge(("smtp_password", format!("{PASSWORD}\n"))),
        )
        .unwrap();
        let MailTransportSettings::Smtp { password, .. } = &settings.mail.transport else {
            panic!("expected SMTP");
        };
        assert_eq!(password.as_ref().unwrap().expose_secret(), PASSWORD);
        assert!(!settings.summary().contains(PASSWORD));
        assert!(!format!("{settings:?}").contains(PASSWORD));
        assert_eq!(settings.redact(&format!("535 {PASSWORD}")), "535 ***");
    }

    #[test]
    fn a_separate_password_needs_a_url_with_a_user_and_no_password() {
        let password = || base().merge(("smtp_password", PASSWORD));
        assert_eq!(invalid_name(password()), "REKEY_SMTP_PASSWORD");
        assert_eq!(
            invalid_name(password().merge(("smtp_url", "smtp://mail.example.com:587"))),
            "REKEY_SMTP_URL"
        );
        assert_eq!(
            invalid_name(password().merge(("smtp_url", "smtps://u:other@mail.example.com"))),
            "REKEY_SMTP_PASSWORD"
        );
        assert_eq!(
            invalid_name(
                base()
                    .merge(("smtp_url", "smtps://u@mail.example.com"))
                    .merge(("smtp_password", " "))
            ),
            "REKEY_SMTP_PASSWORD"
        );
    }

    #[test]
    fn protected_mode_counts_a_separate_password_as_credentials() {
        let exposed = || {
            base()
                .merge(("listen", "0.0.0.0:50051"))
                .merge(("api_keys", "svc:reset:0123456789abcdef0123456789abcdef"))
                .merge(("smtp_password", PASSWORD))
        };
        let name = invalid_name(exposed().merge(("smtp_url", "smtp://apikey@mail.example.com")));
        assert_eq!(name, "REKEY_LISTEN");
        for url in [
            "smtp://apikey@mail.example.com:587?tls=required",
            "smtps://apikey@mail.example.com",
        ] {
            Settings::from_figment(exposed().merge(("smtp_url", url))).unwrap();
        }
    }
}
