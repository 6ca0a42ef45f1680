//! Delivering one mail job: resolve the account, open the request, mint the
//! token, render and send. The token's plaintext lives only in memory and
//! in the sent mail; a retry mints another token for the same request.

use std::{sync::Arc, time::Duration};

use minijinja::context;
use sea_orm::{ActiveEnum, DatabaseConnection, TransactionTrait};

use super::{
    mailer::{MailError, Mailer},
    templates::TemplateKind,
};
use crate::{
    domain::{
        Clock, EmailAddress, FieldError, Locale, Purpose, RequestState, ResetUrl,
        ResetUrlAllowList, Token,
        clock::{duration_millis, millis_between},
    },
    store::{
        MailKind, StoreContext, StoreError, StoreFailure, accounts, audit,
        outbox::{self, MailIntent, MailJob},
        requests::{self, NewRequest, Request},
    },
};

/// How long a mailed link stays usable, per purpose.
#[derive(Debug, Clone, Copy)]
pub struct LinkLifetimes {
    pub reset: Duration,
    pub sign_up: Duration,
}

impl LinkLifetimes {
    fn of(&self, purpose: Purpose) -> Duration {
        match purpose {
            Purpose::Reset => self.reset,
            Purpose::SignUp => self.sign_up,
        }
    }
}

/// How a job ended, when it did not fail.
pub enum Outcome {
    /// Accepted by the transport, as this kind of mail.
    Sent {
        request_id: Option<String>,
        kind: MailKind,
    },
    Skipped(&'static str),
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreFailure),
    #[error("the stored recipient is not a valid address")]
    Recipient(#[source] FieldError),
    #[error("the stored reset page is not valid")]
    ResetPage(#[source] FieldError),
    #[error("the reset page is no longer on the allow-list")]
    PageNoLongerAllowed,
    #[error("minting a token")]
    Token(#[source] rand::rand_core::OsError),
    /// The request a previous attempt opened expired before its mail went
    /// out: the link would not work. An operator may retry it.
    #[error("the request expired before its mail could be sent")]
    RequestExpired,
    /// Another worker claimed the job meanwhile; nothing was sent.
    #[error("the job's lease was lost")]
    LeaseLost,
    #[error(transparent)]
    Mail(#[from] MailError),
}

impl DeliveryError {
    /// True when another attempt cannot succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Store(failure) => matches!(failure.source, StoreError::Payload(_)),
            DeliveryError::Token(_) | DeliveryError::LeaseLost => false,
            DeliveryError::RequestExpired => true,
            DeliveryError::Mail(error) => error.is_permanent(),
            DeliveryError::Recipient(_)
            | DeliveryError::ResetPage(_)
            | DeliveryError::PageNoLongerAllowed => true,
        }
    }
}

/// Turns mail jobs into sent messages. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    db: DatabaseConnection,
    mailer: Mailer,
    lifetimes: LinkLifetimes,
    /// The pages links may point at now: a job queued before the list
    /// changed is checked again when it is sent.
    allowed_pages: ResetUrlAllowList,
    clock: Arc<dyn Clock>,
}

impl Delivery {
    pub fn new(
        db: DatabaseConnection,
        mailer: Mailer,
        lifetimes: LinkLifetimes,
        allowed_pages: ResetUrlAllowList,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            db,
            mailer,
            lifetimes,
            allowed_pages,
            clock,
        }
    }

    /// A short name of the transport, for logs.
    pub fn transport_name(&self) -> &'static str {
        self.mailer.transport.describe()
    }

    pub async fn deliver(&self, job: &MailJob) -> Result<Outcome, DeliveryError> {
        let intent = outbox::intent(job).context("reading the mail job's payload")?;
        let email =
            EmailAddress::parse("recipient", &job.recipient).map_err(DeliveryError::Recipient)?;
        match intent {
            MailIntent::Reset {
                locale, reset_url, ..
            } => {
                record_kind(MailKind::Reset);
                let Some(account) = self.active_account(&email).await? else {
                    return Ok(Outcome::Skipped("no active account"));
                };
                let page = self.allowed_page(&reset_url)?;
                let opened = RequestToOpen {
                    purpose: Purpose::Reset,
                    account_id: Some(&account.id),
                    display_name: &account.display_name,
                    locale: &locale,
                };
                self.send_link(job, &email, opened, &page).await
            }
            MailIntent::SignUp {
                display_name,
                locale,
                reset_url,
            } => {
                let page = self.allowed_page(&reset_url)?;
                let account = self.active_account(&email).await?;
                let opened = match &account {
                    Some(account) => RequestToOpen {
                        purpose: Purpose::Reset,
                        account_id: Some(&account.id),
                        display_name: &account.display_name,
                        locale: &locale,
                    },
                    None => RequestToOpen {
                        purpose: Purpose::SignUp,
                        account_id: None,
                        display_name: &display_name,
                        locale: &locale,
                    },
                };
                self.send_link(job, &email, opened, &page).await
            }
            MailIntent::PasswordChanged {
                display_name,
                locale,
                changed_at,
            } => {
                record_kind(MailKind::PasswordChanged);
                let locale = Locale::parse("locale", &locale).unwrap_or_default();
                let changed_at = std::time::UNIX_EPOCH + millis_between(0, changed_at);
                let changed_at = format!("{} UTC", humantime::format_rfc3339_seconds(changed_at));
                let context = context! {
                    display_name => display_name,
                    email => email.as_str(),
                    changed_at => changed_at,
                };
                let at = self.clock.now_millis();
                self.mailer
                    .send(&email, TemplateKind::PasswordChanged, &locale, context, at)
                    .await?;
                Ok(Outcome::Sent {
                    request_id: None,
                    kind: MailKind::PasswordChanged,
                })
            }
        }
    }

    async fn active_account(
        &self,
        email: &EmailAddress,
    ) -> Result<Option<accounts::Account>, DeliveryError> {
        Ok(accounts::find_active_by_email(&self.db, email.as_str())
            .await
            .context("finding the recipient's account")?)
    }

    /// Opens the job's request (or finds the one a previous attempt opened),
    /// mints a token for it and mails its link. Name, locale and kind come
    /// from the request, so a retry renders the same mail.
    async fn send_link(
        &self,
        job: &MailJob,
        email: &EmailAddress,
        opened: RequestToOpen<'_>,
        page: &ResetUrl,
    ) -> Result<Outcome, DeliveryError> {
        let Some(request) = self.ensure_request(job, email, opened).await? else {
            return Ok(Outcome::Skipped("request no longer open"));
        };
        let kind = link_kind(job.kind, request.purpose);
        record_kind(kind);
        let token = Token::mint().map_err(DeliveryError::Token)?;
        let now = self.clock.now_millis();
        requests::add_token_digest(&self.db, &request.id, token.digest().as_str(), now)
            .await
            .context("storing the token digest")?;
        let locale = Locale::parse("locale", &request.locale).unwrap_or_default();
        let context = context! {
            display_name => &request.display_name,
            email => email.as_str(),
            link => page.link(&token),
            expires_in => humanize(millis_between(now, request.expires_at)),
        };
        let template = match kind {
            MailKind::Reset => TemplateKind::Reset,
            MailKind::SignUp => TemplateKind::SignUp,
            MailKind::AlreadyRegistered => TemplateKind::AlreadyRegistered,
            MailKind::PasswordChanged => TemplateKind::PasswordChanged,
        };
        self.mailer
            .send(email, template, &locale, context, now)
            .await?;
        tracing::debug!(request = %request.id, "link mailed");
        Ok(Outcome::Sent {
            request_id: Some(request.id),
            kind,
        })
    }

    /// The job's request: the one a previous attempt opened, or a new one
    /// that supersedes the email's open request of the same purpose.
    /// `None` when the job's request was since used or revoked; an error
    /// when it expired, so that the job becomes a dead letter saying so.
    async fn ensure_request(
        &self,
        job: &MailJob,
        email: &EmailAddress,
        opened: RequestToOpen<'_>,
    ) -> Result<Option<Request>, DeliveryError> {
        let now = self.clock.now_millis();
        if let Some(request_id) = &job.request_id {
            let request = requests::find(&self.db, request_id)
                .await
                .context("finding the job's request")?;
            return match request.map(|r| (r.state(now), r)) {
                Some((RequestState::Open, request)) => Ok(Some(request)),
                Some((RequestState::Expired, _)) => Err(DeliveryError::RequestExpired),
                _ => Ok(None),
            };
        }
        let tx = self.db.begin().await.context("starting a transaction")?;
        let revoked = requests::revoke_open(&tx, email.as_str(), Some(opened.purpose), now)
            .await
            .context("revoking the superseded request")?;
        let superseded = "superseded by a new request";
        audit::record_revocations(&tx, revoked, &email.masked(), superseded, None, now)
            .await
            .context("auditing the revocation")?;
        let request = requests::insert(
            &tx,
            NewRequest {
                purpose: opened.purpose,
                email: email.as_str(),
                account_id: opened.account_id,
                display_name: opened.display_name,
                locale: opened.locale,
                now,
                expires_at: now.saturating_add(duration_millis(self.lifetimes.of(opened.purpose))),
            },
        )
        .await
        .context("opening the request")?;
        let kind = link_kind(job.kind, opened.purpose);
        let linked = outbox::set_request(&tx, job, &request.id, kind)
            .await
            .context("linking the job to its request")?;
        if !linked {
            // Dropping the transaction undoes the new request.
            return Err(DeliveryError::LeaseLost);
        }
        tx.commit().await.context("committing the new request")?;
        Ok(Some(request))
    }
}

/// The request a link mail opens, unless a previous attempt already did.
struct RequestToOpen<'a> {
    purpose: Purpose,
    account_id: Option<&'a str>,
    display_name: &'a str,
    locale: &'a str,
}

/// What a link mail is, given what was queued and the request it carries:
/// a sign-up that found an account opened a reset and says so.
fn link_kind(queued: MailKind, purpose: Purpose) -> MailKind {
    match (queued, purpose) {
        (MailKind::Reset, _) => MailKind::Reset,
        (_, Purpose::SignUp) => MailKind::SignUp,
        (_, Purpose::Reset) => MailKind::AlreadyRegistered,
    }
}

/// Names the kind of mail in the worker's span for the job.
fn record_kind(kind: MailKind) {
    tracing::Span::current().record("kind", tracing::field::display(kind.to_value()));
}

impl Delivery {
    /// The job's page, if it is still allowed.
    fn allowed_page(&self, raw: &str) -> Result<ResetUrl, DeliveryError> {
        let page = ResetUrl::parse("reset_url", raw).map_err(DeliveryError::ResetPage)?;
        if self.allowed_pages.allows(&page) {
            Ok(page)
        } else {
            Err(DeliveryError::PageNoLongerAllowed)
        }
    }
}

/// "30 minutes", "24 hours", "3 days": the nearest whole unit.
fn humanize(duration: Duration) -> String {
    let rounded = |unit_secs: u64| (duration.as_secs() + unit_secs / 2) / unit_secs;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match rounded(60) {
        0 => "less than a minute".to_owned(),
        m if m < 60 => plural(m, "minute"),
        _ if rounded(3600) < 48 => plural(rounded(3600), "hour"),
        _ => plural(rounded(86_400), "day"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(humanize(Duration::from_secs(30 * 60)), "30 minutes");
        assert_eq!(humanize(Duration::from_secs(24 * 3600)), "24 hours");
        assert_eq!(humanize(Duration::from_secs(29 * 60 + 59)), "30 minutes");
        assert_eq!(humanize(Duration::from_secs(24 * 3600 - 2)), "24 hours");
        assert_eq!(humanize(Duration::from_secs(3 * 86400)), "3 days");
        assert_eq!(humanize(Duration::from_secs(61)), "1 minute");
    }

    #[test]
    fn only_failures_that_cannot_heal_are_permanent() {
        let bad_page = ResetUrl::parse("reset_url", "not a url").unwrap_err();
        assert!(DeliveryError::ResetPage(bad_page).is_permanent());
        let timed_out = crate::mail::transport::SendError::TimedOut(Duration::from_secs(1));
        let timed_out = DeliveryError::Mail(MailError::Send(timed_out));
        assert!(!timed_out.is_permanent());
        let lost = StoreFailure {
            doing: "claiming",
            source: StoreError::Database(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal(
                "gone".into(),
            ))),
        };
        assert!(!DeliveryError::Store(lost).is_permanent());
    }
}
