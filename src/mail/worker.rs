//! The mail worker: a tokio task that drains the outbox. A `Notify` wakes it
//! as soon as a job is queued; it also polls, for retries and for jobs that
//! other replicas queued. For each job it resolves the account, opens the
//! request, mints the token, renders and sends. The token's plaintext lives
//! only in memory and in the sent mail; a retry mints another token for the
//! same request.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use futures::StreamExt;
use lettre::{
    Message,
    message::{Mailbox, MultiPart},
};
use minijinja::context;
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    templates::{TemplateKind, Templates},
    transport::MailTransport,
};
use crate::{
    config::{MAIL_SEND_CONCURRENCY, MailWorkerSettings},
    domain::{EmailAddress, Locale, Purpose, ResetUrl, Token, mask},
    store::{
        self, accounts,
        audit::{self, AuditEvent, AuditKind},
        now_millis,
        outbox::{self, MailIntent, MailJob},
        requests::{self, NewRequest, RequestState},
    },
};

const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);

/// Everything the worker needs; cheap to clone.
#[derive(Clone)]
pub struct MailWorker {
    pub db: DatabaseConnection,
    pub transport: MailTransport,
    pub templates: Arc<Templates>,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub settings: MailWorkerSettings,
    pub reset_token_ttl: Duration,
    pub signup_token_ttl: Duration,
    pub wake: Arc<Notify>,
}

/// How a job ended, when it did not fail.
enum Outcome {
    Sent { request_id: Option<String> },
    Skipped(&'static str),
}

enum JobError {
    Transient(String),
    Permanent(String),
}

impl From<DbErr> for JobError {
    fn from(error: DbErr) -> Self {
        JobError::Transient(format!("database: {error}"))
    }
}

impl MailWorker {
    /// Runs until `shutdown`; a batch in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(transport = self.transport.describe(), "mail worker started");
        loop {
            let claimed = match self.run_once().await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "mail worker could not claim jobs");
                    0
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            if claimed > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.idle_wait().await) => {}
            }
        }
        tracing::info!("mail worker stopped");
    }

    /// Claims one batch of due jobs and processes it. Returns how many.
    pub async fn run_once(&self) -> Result<usize, DbErr> {
        let now = now_millis();
        let lease_until = now + store::millis(self.settings.lease);
        let jobs = outbox::claim_due(&self.db, now, lease_until, self.settings.batch_size).await?;
        let claimed = jobs.len();
        futures::stream::iter(jobs)
            .for_each_concurrent(MAIL_SEND_CONCURRENCY, |job| self.process(job))
            .await;
        Ok(claimed)
    }

    /// Sleep until the next retry is due, at most one poll interval.
    async fn idle_wait(&self) -> Duration {
        let poll = self.settings.poll_interval;
        match outbox::next_due(&self.db).await {
            Ok(Some(due)) => {
                let wait = u64::try_from(due - now_millis()).unwrap_or(0);
                poll.min(Duration::from_millis(wait.max(10)))
            }
            _ => poll,
        }
    }

    async fn process(&self, job: MailJob) {
        let recipient = mask(&job.recipient);
        // Relays quote the recipient in their errors; keep it masked.
        let result = self.deliver(&job).await.map_err(|e| match e {
            JobError::Transient(m) => {
                JobError::Transient(mask_address_in(&m, &job.recipient, &recipient))
            }
            JobError::Permanent(m) => {
                JobError::Permanent(mask_address_in(&m, &job.recipient, &recipient))
            }
        });
        let now = now_millis();
        let recorded = match result {
            Ok(Outcome::Sent { request_id }) => {
                tracing::info!(job = job.id, kind = %job.kind, to = %recipient, "mail accepted for delivery");
                self.record_sent(&job, request_id.as_deref(), &recipient, now)
                    .await
            }
            Ok(Outcome::Skipped(reason)) => {
                tracing::info!(job = job.id, kind = %job.kind, to = %recipient, reason, "no mail to send");
                outbox::finish(&self.db, job.id, outbox::STATUS_SKIPPED, now).await
            }
            Err(JobError::Permanent(error)) => {
                tracing::error!(job = job.id, kind = %job.kind, to = %recipient, %error, "mail failed permanently; dead letter");
                outbox::bury(&self.db, job.id, &error).await
            }
            Err(JobError::Transient(error)) => {
                let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
                if attempts >= self.settings.max_attempts {
                    tracing::error!(job = job.id, kind = %job.kind, to = %recipient, attempts, %error, "mail failed too often; dead letter");
                    outbox::bury(&self.db, job.id, &error).await
                } else {
                    let delay = backoff(attempts);
                    tracing::warn!(job = job.id, kind = %job.kind, to = %recipient, attempts, retry_in = ?delay, %error, "mail failed; will retry");
                    outbox::retry_later(&self.db, job.id, now + store::millis(delay), &error).await
                }
            }
        };
        if let Err(error) = recorded {
            // The lease runs out and the job is claimed again: at-least-once.
            tracing::warn!(job = job.id, %error, "could not record mail outcome");
        }
    }

    async fn record_sent(
        &self,
        job: &MailJob,
        request_id: Option<&str>,
        recipient: &str,
        now: i64,
    ) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        outbox::finish(&tx, job.id, outbox::STATUS_SENT, now).await?;
        audit::record(
            &tx,
            AuditKind::Mailed,
            AuditEvent {
                request_id,
                email_hint: Some(recipient.to_owned()),
                detail: Some(&job.kind),
                ..Default::default()
            },
            now,
        )
        .await?;
        tx.commit().await
    }

    async fn deliver(&self, job: &MailJob) -> Result<Outcome, JobError> {
        let intent = outbox::intent(job).map_err(|e| JobError::Permanent(e.to_string()))?;
        let email = EmailAddress::parse("recipient", &job.recipient)
            .map_err(|e| JobError::Permanent(format!("recipient {}", e.description)))?;
        match intent {
            MailIntent::Reset {
                locale, reset_url, ..
            } => {
                let Some(account) = self.active_account(&email).await? else {
                    return Ok(Outcome::Skipped("no active account"));
                };
                let page = parse_page(&reset_url)?;
                let Some(request) = self
                    .ensure_request(
                        job,
                        Purpose::Reset,
                        &email,
                        Some(&account.id),
                        &account.display_name,
                        &locale,
                    )
                    .await?
                else {
                    return Ok(Outcome::Skipped("request no longer open"));
                };
                self.send_link(job, &email, &request, &page, TemplateKind::Reset)
                    .await
            }
            MailIntent::SignUp {
                display_name,
                locale,
                reset_url,
                ..
            } => {
                let page = parse_page(&reset_url)?;
                let account = self.active_account(&email).await?;
                let (purpose, kind, account_id, name) = match &account {
                    Some(a) => (
                        Purpose::Reset,
                        TemplateKind::AlreadyRegistered,
                        Some(a.id.as_str()),
                        a.display_name.as_str(),
                    ),
                    None => (
                        Purpose::SignUp,
                        TemplateKind::SignUp,
                        None,
                        display_name.as_str(),
                    ),
                };
                let Some(request) = self
                    .ensure_request(job, purpose, &email, account_id, name, &locale)
                    .await?
                else {
                    return Ok(Outcome::Skipped("request no longer open"));
                };
                self.send_link(job, &email, &request, &page, kind).await
            }
            MailIntent::PasswordChanged {
                display_name,
                locale,
                changed_at,
            } => {
                let locale = Locale::parse("locale", &locale).unwrap_or_default();
                let changed_at =
                    UNIX_EPOCH + Duration::from_millis(u64::try_from(changed_at).unwrap_or(0));
                let mail = self
                    .templates
                    .render(
                        TemplateKind::PasswordChanged,
                        &locale,
                        context! {
                            display_name => display_name,
                            email => email.as_str(),
                            changed_at => format!("{} UTC", humantime::format_rfc3339_seconds(changed_at)),
                        },
                    )
                    .map_err(|e| JobError::Permanent(e.to_string()))?;
                self.send(&email, mail).await?;
                Ok(Outcome::Sent { request_id: None })
            }
        }
    }

    async fn active_account(
        &self,
        email: &EmailAddress,
    ) -> Result<Option<accounts::Account>, DbErr> {
        Ok(accounts::find_by_email(&self.db, email.as_str())
            .await?
            .filter(|a| a.status == accounts::STATUS_ACTIVE))
    }

    /// The job's request: the one a previous attempt opened, or a new one.
    /// `None` when that request was since used, revoked or expired.
    async fn ensure_request(
        &self,
        job: &MailJob,
        purpose: Purpose,
        email: &EmailAddress,
        account_id: Option<&str>,
        display_name: &str,
        locale: &str,
    ) -> Result<Option<requests::Request>, JobError> {
        let now = now_millis();
        if let Some(request_id) = &job.request_id {
            let request = requests::find(&self.db, request_id).await?;
            return Ok(request.filter(|r| requests::state(r, now) == RequestState::Open));
        }
        let ttl = match purpose {
            Purpose::Reset => self.reset_token_ttl,
            Purpose::SignUp => self.signup_token_ttl,
        };
        let tx = self.db.begin().await?;
        let request = requests::open(
            &tx,
            NewRequest {
                purpose: purpose.as_str(),
                email: email.as_str(),
                account_id,
                display_name,
                locale,
                now,
                expires_at: now + store::millis(ttl),
            },
        )
        .await?;
        outbox::set_request(&tx, job.id, &request.id).await?;
        tx.commit().await?;
        Ok(Some(request))
    }

    /// Mints a token for `request` and mails its link. Name and locale come
    /// from the request, so a retry renders the same mail.
    async fn send_link(
        &self,
        job: &MailJob,
        email: &EmailAddress,
        request: &requests::Request,
        page: &ResetUrl,
        kind: TemplateKind,
    ) -> Result<Outcome, JobError> {
        let token = Token::mint().map_err(|e| JobError::Transient(format!("randomness: {e}")))?;
        requests::add_token_digest(&self.db, &request.id, token.digest().as_str(), now_millis())
            .await?;
        let remaining =
            Duration::from_millis(u64::try_from(request.expires_at - now_millis()).unwrap_or(0));
        let locale = Locale::parse("locale", &request.locale).unwrap_or_default();
        let mail = self
            .templates
            .render(
                kind,
                &locale,
                context! {
                    display_name => &request.display_name,
                    email => email.as_str(),
                    link => page.link(&token),
                    expires_in => humanize(remaining),
                },
            )
            .map_err(|e| JobError::Permanent(e.to_string()))?;
        self.send(email, mail).await?;
        tracing::debug!(job = job.id, request = %request.id, "link mailed");
        Ok(Outcome::Sent {
            request_id: Some(request.id.clone()),
        })
    }

    async fn send(
        &self,
        email: &EmailAddress,
        mail: super::templates::RenderedMail,
    ) -> Result<(), JobError> {
        let to = email
            .as_str()
            .parse::<lettre::Address>()
            .map_err(|e| JobError::Permanent(format!("recipient: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let message = builder
            .subject(mail.subject)
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .map_err(|e| JobError::Permanent(format!("message: {e}")))?;
        self.transport.send(message).await.map_err(|e| {
            if e.permanent {
                JobError::Permanent(e.message)
            } else {
                JobError::Transient(e.message)
            }
        })
    }
}

/// Replaces every occurrence of `address` in `text`, in any letter case.
fn mask_address_in(text: &str, address: &str, masked: &str) -> String {
    // ASCII lower-casing keeps byte offsets, so matches index `text` directly.
    let haystack = text.to_ascii_lowercase();
    let needle = address.to_ascii_lowercase();
    if needle.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (start, _) in haystack.match_indices(&needle) {
        out.push_str(&text[rest..start]);
        out.push_str(masked);
        rest = start + needle.len();
    }
    out.push_str(&text[rest..]);
    out
}

fn parse_page(raw: &str) -> Result<ResetUrl, JobError> {
    ResetUrl::parse("reset_url", raw)
        .map_err(|e| JobError::Permanent(format!("reset_url {}", e.description)))
}

/// Exponential backoff with jitter: 2s, 4s, 8s … capped at 30 min, each
/// drawn from the upper half so replicas do not retry in lockstep.
fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let half = ceiling / 2;
    half + half.mul_f64(rand::random::<f64>())
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
    fn backoff_grows_and_is_capped() {
        for attempts in 1..30 {
            let delay = backoff(attempts);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempts.saturating_sub(1).min(20))
                .min(BACKOFF_MAX);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempts}: {delay:?}"
            );
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }

    #[test]
    fn addresses_in_relay_errors_are_masked_in_any_case() {
        let masked = mask_address_in(
            "550 5.1.1 <Jane@Example.com>: unknown; jane@example.com",
            "jane@example.com",
            "j***@example.com",
        );
        assert_eq!(
            masked,
            "550 5.1.1 <j***@example.com>: unknown; j***@example.com"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(humanize(Duration::from_secs(30 * 60)), "30 minutes");
        assert_eq!(humanize(Duration::from_secs(24 * 3600)), "24 hours");
        assert_eq!(humanize(Duration::from_secs(29 * 60 + 59)), "30 minutes");
        assert_eq!(humanize(Duration::from_secs(24 * 3600 - 2)), "24 hours");
        assert_eq!(humanize(Duration::from_secs(3 * 86400)), "3 days");
        assert_eq!(humanize(Duration::from_secs(61)), "1 minute");
    }
}
