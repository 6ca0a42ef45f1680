//! Rendering a template and sending the result from our sender address,
//! with a `Message-ID` on the sender's domain and a `Date`.

use std::sync::Arc;

use super::{
    templates::{TemplateError, TemplateKind, Templates},
    transport::{MailTransport, SendError},
    vars::MailVars,
};
use crate::domain::{EmailAddress, Locale, clock::millis_between};
use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};

/// Who mail comes from, independent of the SMTP login.
#[derive(Debug, Clone)]
pub struct Sender {
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
}

/// Why a mail could not be rendered or sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("rendering the mail")]
    Template(#[from] TemplateError),
    #[error("the recipient is not a mailbox lettre accepts")]
    Address(#[from] lettre::address::AddressError),
    #[error("building the message")]
    Message(#[from] lettre::error::Error),
    #[error("sending the mail")]
    Send(#[from] SendError),
}

impl MailError {
    /// True when sending the same mail again cannot succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Send(error) => error.is_permanent(),
            MailError::Template(_) | MailError::Address(_) | MailError::Message(_) => true,
        }
    }
}

/// Templates, a transport and a sender. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    pub templates: Arc<Templates>,
    pub transport: MailTransport,
    pub sender: Sender,
}

impl Mailer {
    /// Renders `kind` in `locale` with `vars` and sends it to `to`,
    /// dated `now` (Unix milliseconds).
    pub async fn send(
        &self,
        to: &EmailAddress,
        kind: TemplateKind,
        locale: &Locale,
        vars: &MailVars,
        now: i64,
    ) -> Result<(), MailError> {
        let mail = self.templates.render(kind, locale, vars)?;
        let mut builder = Message::builder()
            .message_id(Some(self.message_id()))
            .date(std::time::UNIX_EPOCH + millis_between(0, now))
            .from(self.sender.from.clone())
            .to(Mailbox::new(None, to.as_str().parse()?));
        if let Some(reply_to) = &self.sender.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let message = builder
            .subject(mail.subject)
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))?;
        Ok(self.transport.send(message).await?)
    }

    /// A fresh `<random@from-domain>`: the domain is ours, so the id is
    /// unique without revealing the host that sent it.
    fn message_id(&self) -> String {
        let id = uuid::Uuid::new_v4().simple();
        format!("<{id}@{}>", self.sender.from.email.domain())
    }
}
