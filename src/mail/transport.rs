//! Where rendered mail goes: an SMTP relay or `.eml` files.

use std::time::Duration;

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    transport::smtp::response::Category,
};
use secrecy::ExposeSecret;

use crate::config::MailTransportSettings;

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

/// A failed send. `permanent` means retrying cannot help (an SMTP 5xx).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub permanent: bool,
    pub message: String,
}

impl MailTransport {
    pub fn from_settings(settings: &MailTransportSettings) -> Result<Self, String> {
        match settings {
            MailTransportSettings::Smtp { url, timeout } => {
                let transport =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret().trim())
                        .map_err(|e| format!("REKEY_SMTP_URL: {e}"))?
                        .timeout(Some(*timeout))
                        .build();
                Ok(Self::Smtp {
                    transport,
                    send_timeout: *timeout * 2,
                })
            }
            MailTransportSettings::File { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("REKEY_MAIL_DIR {}: {e}", dir.display()))?;
                Ok(Self::File(AsyncFileTransport::new(dir)))
            }
        }
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
                Ok(sent) => sent.map(drop).map_err(|e| SendError {
                    // 53x (authentication) is our relay setup, not the
                    // recipient: keep the mail and retry once it is fixed.
                    permanent: e.is_permanent()
                        && e.status()
                            .is_none_or(|code| code.category != Category::Unspecified3),
                    message: e.to_string(),
                }),
                Err(_) => Err(SendError {
                    permanent: false,
                    message: format!("SMTP send timed out after {send_timeout:?}"),
                }),
            },
            MailTransport::File(file) => {
                file.send(message).await.map(drop).map_err(|e| SendError {
                    permanent: false,
                    message: e.to_string(),
                })
            }
        }
    }
}
