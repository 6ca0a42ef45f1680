//! Delivering one mail job: resolve the account, open the request, mint the
//! token, render and send. The token's plaintext lives only in memory and
//! in the sent mail; a retry mints another token for the same request.

use std::{sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, DatabaseTransaction};

use super::{
    mailer::{MailError, Mailer},
    templates::TemplateKind,
    vars::MailVars,
};
use crate::{
    domain::{
        Clock, EmailAddress, FieldError, Locale, Purpose, RequestState, ResetUrl,
        ResetUrlAllowList, Token,
        clock::{duration_millis, millis_between},
    },
    store::{
        MailKind, StoreContext, StoreError, StoreFailure, accounts, audit,
        group_commit::{Decision, GroupCommit, WorkFuture},
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
    /// Accepted by the transport: the job's kind as the outbox keeps it,
    /// and the mail actually sent (the audit's detail).
    Sent {
        request_id: Option<String>,
        kind: MailKind,
        template: TemplateKind,
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
    writes: GroupCommit,
    mailer: Mailer,
    lifetimes: LinkLifetimes,
    /// The pages links may point at now: a job queued before the list
    /// changed is checked again when it is sent.
    allowed_pages: ResetUrlAllowList,
    /// Whether a reset for an address without an account is answered
    /// with the `unknown_account` mail rather than skipped.
    notify_unknown: bool,
    clock: Arc<dyn Clock>,
}

impl Delivery {
    pub fn new(
        db: DatabaseConnection,
        writes: GroupCommit,
        mailer: Mailer,
        lifetimes: LinkLifetimes,
        allowed_pages: ResetUrlAllowList,
        notify_unknown: bool,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            db,
            writes,
            mailer,
            lifetimes,
            allowed_pages,
            notify_unknown,
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
                let Some(account) = self.active_account(&email).await? else {
                    return self.unknown_account(&email, &locale).await;
                };
                let page = self.allowed_page(&reset_url)?;
                let locale = mail_locale(&locale, Some(&account));
                let opened = RequestToOpen {
                    purpose: Purpose::Reset,
                    account_id: Some(&account.id),
                    display_name: &account.display_name,
                    locale: locale.as_str(),
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
                let locale = mail_locale(&locale, account.as_ref());
                let opened = match &account {
                    Some(account) => RequestToOpen {
                        purpose: Purpose::Reset,
                        account_id: Some(&account.id),
                        display_name: &account.display_name,
                        locale: locale.as_str(),
                    },
                    None => RequestToOpen {
                        purpose: Purpose::SignUp,
                        account_id: None,
                        display_name: &display_name,
                        locale: locale.as_str(),
                    },
                };
                self.send_link(job, &email, opened, &page).await
            }
            MailIntent::PasswordChanged {
                display_name,
                locale,
                changed_at,
            } => {
                let template = TemplateKind::PasswordChanged;
                record_kind(template);
                let locale = mail_locale(&locale, None);
                let changed_at = std::time::UNIX_EPOCH + millis_between(0, changed_at);
                let vars = MailVars::password_changed(&display_name, email.as_str(), changed_at);
                let at = self.clock.now_millis();
                self.mailer
                    .send(&email, template, &locale, &vars, at)
                    .await?;
                Ok(Outcome::Sent {
                    request_id: None,
                    kind: MailKind::PasswordChanged,
                    template,
                })
            }
        }
    }

    /// A reset for an address without an account: skipped, or answered
    /// with the `unknown_account` mail when that is on. The outbox keeps
    /// the job's kind (`reset`); the log and the audit name the mail.
    async fn unknown_account(
        &self,
        email: &EmailAddress,
        locale: &str,
    ) -> Result<Outcome, DeliveryError> {
        if !self.notify_unknown {
            record_kind(TemplateKind::Reset);
            return Ok(Outcome::Skipped("no active account"));
        }
        let template = TemplateKind::UnknownAccount;
        record_kind(template);
        let vars = MailVars::unknown_account(email.as_str());
        let now = self.clock.now_millis();
        self.mailer
            .send(email, template, &mail_locale(locale, None), &vars, now)
            .await?;
        Ok(Outcome::Sent {
            request_id: None,
            kind: MailKind::Reset,
            template,
        })
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
        let token = Token::mint().map_err(DeliveryError::Token)?;
        let Some(request) = self.ensure_request(job, email, opened, &token).await? else {
            return Ok(Outcome::Skipped("request no longer open"));
        };
        let kind = link_kind(job.kind, request.purpose);
        let template = match kind {
            MailKind::Reset => TemplateKind::Reset,
            MailKind::SignUp => TemplateKind::SignUp,
            MailKind::AlreadyRegistered => TemplateKind::AlreadyRegistered,
            MailKind::PasswordChanged => TemplateKind::PasswordChanged,
        };
        record_kind(template);
        let now = self.clock.now_millis();
        let locale = Locale::parse("locale", &request.locale).unwrap_or_default();
        let vars = MailVars::link(
            &request.display_name,
            email.as_str(),
            page.link(&token),
            millis_between(now, request.expires_at),
        );
        self.mailer
            .send(email, template, &locale, &vars, now)
            .await?;
        tracing::debug!(request = %request.id, "link mailed");
        Ok(Outcome::Sent {
            request_id: Some(request.id),
            kind,
            template,
        })
    }

    /// The job's request, with `token`'s digest stored for it: the one a
    /// previous attempt opened, or a new one that supersedes the email's
    /// open request of the same purpose (one group-committed write).
    /// `None` when the job's request was since used or revoked; an error
    /// when it expired, so that the job becomes a dead letter saying so.
    async fn ensure_request(
        &self,
        job: &MailJob,
        email: &EmailAddress,
        opened: RequestToOpen<'_>,
        token: &Token,
    ) -> Result<Option<Request>, DeliveryError> {
        let now = self.clock.now_millis();
        let digest = token.digest().as_str().to_owned();
        if let Some(request_id) = &job.request_id {
            let request = requests::find(&self.db, request_id)
                .await
                .context("finding the job's request")?;
            let request = match request.map(|r| (r.state(now), r)) {
                Some((RequestState::Open, request)) => request,
                Some((RequestState::Expired, _)) => return Err(DeliveryError::RequestExpired),
                _ => return Ok(None),
            };
            let request_id = request.id.clone();
            self.writes
                .write(
                    move |tx: &DatabaseTransaction| -> WorkFuture<'_, (), DeliveryError> {
                        Box::pin(async move {
                            requests::add_token_digest(tx, &request_id, &digest, now)
                                .await
                                .context("storing the token digest")?;
                            Ok(Decision::Keep(()))
                        })
                    },
                )
                .await?;
            return Ok(Some(request));
        }
        let job = job.clone();
        let email = email.clone();
        let purpose = opened.purpose;
        let account_id = opened.account_id.map(str::to_owned);
        let display_name = opened.display_name.to_owned();
        let locale = opened.locale.to_owned();
        let expires_at = now.saturating_add(duration_millis(self.lifetimes.of(purpose)));
        let request = self
            .writes
            .write(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, Option<Request>, DeliveryError> {
                    Box::pin(async move {
                        let revoked = requests::revoke_open(tx, email.as_str(), Some(purpose), now)
                            .await
                            .context("revoking the superseded request")?;
                        let superseded = "superseded by a new request";
                        audit::record_revocations(
                            tx,
                            revoked,
                            &email.masked(),
                            superseded,
                            None,
                            now,
                        )
                        .await
                        .context("auditing the revocation")?;
                        let new_request = NewRequest {
                            purpose,
                            email: email.as_str(),
                            account_id: account_id.as_deref(),
                            display_name: &display_name,
                            locale: &locale,
                            now,
                            expires_at,
                        };
                        let request = requests::insert(tx, new_request)
                            .await
                            .context("opening the request")?;
                        let kind = link_kind(job.kind, purpose);
                        let linked = outbox::set_request(tx, &job, &request.id, kind)
                            .await
                            .context("linking the job to its request")?;
                        if !linked {
                            // Undoes the new request.
                            return Ok(Decision::Discard(None));
                        }
                        requests::add_token_digest(tx, &request.id, &digest, now)
                            .await
                            .context("storing the token digest")?;
                        Ok(Decision::Keep(Some(request)))
                    })
                },
            )
            .await?;
        request.map(Some).ok_or(DeliveryError::LeaseLost)
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

/// Names the mail in the worker's span for the job.
fn record_kind(template: TemplateKind) {
    tracing::Span::current().record("kind", tracing::field::display(template.name()));
}

/// The locale the caller asked for, else the account's, else the default.
fn mail_locale(given: &str, account: Option<&accounts::Account>) -> Locale {
    let parse = |raw: &str| {
        Locale::parse("locale", raw)
            .ok()
            .filter(|_| !raw.trim().is_empty())
    };
    parse(given)
        .or_else(|| account.and_then(|account| parse(&account.locale)))
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

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
