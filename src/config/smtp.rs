//! The SMTP part of the mail settings: the relay URL, its TLS mode, the
//! authorities its certificate may chain to (`REKEY_SMTP_CA_FILE`), and a
//! password kept apart from the URL (`REKEY_SMTP_PASSWORD[_FILE]`). No
//! message quotes the URL or the password: either may be a secret.

use std::path::Path;

use rustls_pki_types::{CertificateDer, pem::PemObject};
use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, MailTransportSettings, RelayTrust, check::invalid, raw::RawSettings};

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
        _ if raw.smtp_ca_file.is_some() => {
            return Err(invalid(
                "REKEY_SMTP_CA_FILE",
                "needs REKEY_SMTP_URL with TLS: smtps://host or smtp://host:587?tls=required",
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
    let trust = match &raw.smtp_ca_file {
        Some(file) if uses_tls(&parsed) => Some(relay_trust(file)?),
        Some(_) => {
            return Err(invalid(
                "REKEY_SMTP_CA_FILE",
                "REKEY_SMTP_URL does not use TLS: use smtps:// or ?tls=required",
            ));
        }
        None => None,
    };
    Ok(MailTransportSettings::Smtp {
        url: url.clone(),
        password: password.map(|p| SecretString::from(p.expose_secret().trim())),
        timeout: raw.smtp_timeout,
        trust,
    })
}

/// True when the relay may be reached over TLS: `smtps://`, or STARTTLS.
fn uses_tls(url: &url::Url) -> bool {
    url.scheme() == "smtps" || url.query_pairs().any(|(key, _)| key == "tls")
}

/// The CA file, read and checked now, so that a bad one stops the start
/// rather than every send.
fn relay_trust(file: &Path) -> Result<RelayTrust, ConfigError> {
    const NAME: &str = "REKEY_SMTP_CA_FILE";
    let shown = file.display();
    let pem = std::fs::read(file).map_err(|error| invalid(NAME, format!("{shown}: {error}")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid(NAME, format!("{shown}: not PEM")))?;
    if certificates.is_empty() {
        return Err(invalid(
            NAME,
            format!("{shown}: holds no -----BEGIN CERTIFICATE----- block"),
        ));
    }
    let mut anchors = rustls::RootCertStore::empty();
    for certificate in certificates {
        anchors
            .add(certificate)
            .map_err(|error| invalid(NAME, format!("{shown}: {error}")))?;
    }
    Ok(RelayTrust {
        file: file.to_owned(),
        pem,
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
        let (name, problem) = problem(figment);
        assert!(!problem.contains(PASSWORD), "{problem}");
        name
    }

    fn problem(figment: Figment) -> (&'static str, String) {
        match Settings::from_figment(figment) {
            Err(ConfigError::Invalid { name, problem }) => (name, problem),
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

    fn authority_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_file_is_read_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay-ca.pem");
        std::fs::write(&file, authority_pem()).unwrap();
        let with_ca = |url: &str| {
            base()
                .merge(("smtp_url", url.to_owned()))
                .merge(("smtp_ca_file", file.clone()))
        };
        for url in [
            "smtp://relay.internal:587?tls=required",
            "smtp://relay.internal:587?tls=opportunistic",
            "smtps://relay.internal",
        ] {
            let settings = Settings::from_figment(with_ca(url)).unwrap();
            let MailTransportSettings::Smtp { trust, .. } = &settings.mail.transport else {
                panic!("expected SMTP");
            };
            assert_eq!(trust.as_ref().unwrap().file, file);
            assert!(settings.summary().contains(&file.display().to_string()));
        }
        let plain = problem(with_ca("smtp://relay.internal:25"));
        assert_eq!(plain.0, "REKEY_SMTP_CA_FILE");
        assert!(plain.1.contains("does not use TLS"), "{}", plain.1);
        let no_relay = problem(base().merge(("smtp_ca_file", file.clone())));
        assert_eq!(no_relay.0, "REKEY_SMTP_CA_FILE");
        assert!(
            no_relay.1.contains("needs REKEY_SMTP_URL"),
            "{}",
            no_relay.1
        );
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for file in [&missing, &empty, &key, &garbled] {
            let (name, problem) = problem(
                base()
                    .merge(("smtp_url", "smtps://relay.internal"))
                    .merge(("smtp_ca_file", file.clone())),
            );
            assert_eq!(name, "REKEY_SMTP_CA_FILE");
            assert!(
                problem.starts_with(&file.display().to_string()),
                "{problem}"
            );
        }
    }
}
