//! gRPC clients over several HTTP/2 connections, and the tokens mailed to
//! the sink.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Result, anyhow};
use rekey::grpc::pb::{
    accounts_client::AccountsClient, password_reset_client::PasswordResetClient,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

use crate::{server::RESET_PAGE, sink::Received};

/// Streams per connection the bench aims for (the server allows 100).
const CALLERS_PER_CONNECTION: usize = 50;

/// Connections to one port, shared round-robin by callers.
#[derive(Clone)]
pub struct Connections {
    channels: Vec<Channel>,
}

impl Connections {
    /// Enough connections for `callers`, at least four.
    pub async fn open(addr: SocketAddr, callers: usize) -> Result<Self> {
        let count = callers.div_ceil(CALLERS_PER_CONNECTION).max(4);
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            channels.push(channel);
        }
        Ok(Self { channels })
    }

    fn channel(&self, caller: usize) -> Channel {
        // `open` makes at least one.
        self.channels[caller % self.channels.len()].clone()
    }

    pub fn reset(&self, caller: usize) -> PasswordResetClient<Channel> {
        PasswordResetClient::new(self.channel(caller))
    }

    pub fn accounts(&self, caller: usize) -> AccountsClient<Channel> {
        AccountsClient::new(self.channel(caller))
    }

    pub fn health(&self, caller: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(caller))
    }
}

/// A fresh address each call, so no two calls of a run share an email.
pub fn fresh_email(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}@example.com", std::process::id())
}

/// A mailed link's token and the address it was sent to.
#[derive(Debug, Clone)]
pub struct MailedToken {
    pub email: String,
    pub token: String,
}

/// The tokens in kept mails (those with a link to the reset page).
pub fn tokens(mails: &[Received]) -> Result<Vec<MailedToken>> {
    let parser = mail_parser::MessageParser::default();
    let mut tokens = Vec::with_capacity(mails.len());
    for mail in mails {
        let message = parser
            .parse(&mail.raw)
            .ok_or_else(|| anyhow!("the sink kept a mail mail-parser cannot read"))?;
        let text = message.body_text(0).unwrap_or_default();
        let Some(link) = text.split_whitespace().find(|w| w.starts_with(RESET_PAGE)) else {
            continue;
        };
        let link = url::Url::parse(link)?;
        if let Some((_, token)) = link.query_pairs().find(|(k, _)| k == "token") {
            tokens.push(MailedToken {
                email: mail.to.clone(),
                token: token.into_owned(),
            });
        }
    }
    Ok(tokens)
}
