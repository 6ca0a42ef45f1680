//! Where rendered mail goes: an SMTP relay or `.eml` files.

use std::{path::PathBuf, time::Duration};

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    transport::{
        file, smtp,
        smtp::{
            PoolConfig,
            authentication::Credentials,
            client::{Certificate, CertificateStore, Tls, TlsParameters},
            response::Category,
        },
    },
};

/// A configured transport. SMTP keeps a connection pool.
#[derive(Clone)]
pub enum MailTransport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// Bound on a whole send, on top of lettre's per-command timeout.
        send_timeout: Duration,
    },
    File(AsyncFileTransport<Tokio1Executor>),
}

/// A transport that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the SMTP URL is not usable")]
    SmtpUrl(#[source] smtp::Error),
    #[error("the SMTP URL is not a URL")]
    NotAUrl,
    #[error("the SMTP password needs a user name in the SMTP URL")]
    SmtpUser,
    #[error("the SMTP relay's CA certificates are not usable")]
    RelayTrust(#[source] smtp::Error),
    #[error("cannot create the mail directory {}", dir.display())]
    MailDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A failed send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the SMTP relay failed")]
    Smtp(#[source] smtp::Error),
    #[error("the SMTP send timed out after {0:?}")]
    TimedOut(Duration),
    #[error("writing the mail file failed")]
    File(#[source] file::Error),
}

impl SendError {
    /// True when retrying cannot help: an SMTP 5xx about the message or
    /// recipient. 53x (authentication) is our relay setup, not the
    /// recipient: keep the mail and retry once it is fixed.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Smtp(error) => {
                error.is_permanent()
                    && error
                        .status()
                        .is_none_or(|code| code.category != Category::Unspecified3)
            }
            SendError::TimedOut(_) | SendError::File(_) => false,
        }
    }
}

/// The longest one SMTP send may take with `command_timeout` per command.
pub fn smtp_send_bound(command_timeout: Duration) -> Duration {
    command_timeout.saturating_mul(2)
}

/// The URL's TLS mode, as lettre reads it, with `pem` as the only roots.
fn relay_tls(url: &str, pem: &[u8]) -> Result<Tls, TransportError> {
    let url = url::Url::parse(url.trim()).map_err(|_| TransportError::NotAUrl)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let certificate = Certificate::from_pem(pem).map_err(TransportError::RelayTrust)?;
    let parameters = TlsParameters::builder(host)
        .certificate_store(CertificateStore::None)
        .add_root_certificate(certificate)
        .build_rustls()
        .map_err(TransportError::RelayTrust)?;
    let mode = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    Ok(match (url.scheme(), mode.as_deref()) {
        ("smtps", _) => Tls::Wrapper(parameters),
        (_, Some("opportunistic")) => Tls::Opportunistic(parameters),
        _ => Tls::Required(parameters),
    })
}

impl MailTransport {
    /// An SMTP relay URL: `smtp://` (plain, or STARTTLS with `?tls=required`
    /// / `?tls=opportunistic`) or `smtps://` (implicit TLS). `password`,
    /// when given, logs in as the URL's user instead of a password in it.
    /// `trust`, PEM certificates, replaces the public roots the relay's
    /// certificate must chain to. The pool keeps up to `connections` open:
    /// as many as sends run at once, so that no send opens and closes a
    /// connection of its own.
    pub fn smtp(
        url: &str,
        password: Option<&str>,
        trust: Option<&[u8]>,
        command_timeout: Duration,
        connections: usize,
    ) -> Result<Self, TransportError> {
        let pool =
            PoolConfig::new().max_size(u32::try_from(connections.max(1)).unwrap_or(u32::MAX));
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.trim())
            .map_err(TransportError::SmtpUrl)?
            .timeout(Some(command_timeout))
            .pool_config(pool);
        if let Some(password) = password {
            let user = url::Url::parse(url.trim())
                .ok()
                .map(|url| url.username().to_owned())
                .filter(|user| !user.is_empty())
                .ok_or(TransportError::SmtpUser)?;
            let user = percent_encoding::percent_decode_str(&user)
                .decode_utf8()
                .map_err(|_| TransportError::SmtpUser)?
                .into_owned();
            builder = builder.credentials(Credentials::new(user, password.to_owned()));
        }
        if let Some(pem) = trust {
            builder = builder.tls(relay_tls(url, pem)?);
        }
        let transport = builder.build();
        Ok(Self::Smtp {
            transport,
            send_timeout: smtp_send_bound(command_timeout),
        })
    }

    /// `.eml` files in `dir`, created if missing.
    pub fn file(dir: PathBuf) -> Result<Self, TransportError> {
        std::fs::create_dir_all(&dir).map_err(|source| TransportError::MailDir {
            dir: dir.clone(),
            source,
        })?;
        Ok(Self::File(AsyncFileTransport::new(dir)))
    }

    /// A short name for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            MailTransport::Smtp { .. } => "smtp",
            MailTransport::File(_) => "file",
        }
    }

    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        match self {
            MailTransport::Smtp {
                transport,
                send_timeout,
            } => match tokio::time::timeout(*send_timeout, transport.send(message)).await {
                Ok(sent) => sent.map(drop).map_err(SendError::Smtp),
                Err(_) => Err(SendError::TimedOut(*send_timeout)),
            },
            MailTransport::File(file) => {
                file.send(message).await.map(drop).map_err(SendError::File)
            }
        }
    }
}
