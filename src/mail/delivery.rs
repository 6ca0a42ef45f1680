//! Delivering a batch of claimed mail jobs: resolve the accounts, open the
//! requests, mint the tokens, render and send. The database work is done
//! per batch, not per mail. The token's plaintext lives only in memory and
//! in the sent mail; a retry mints another token for the same request.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use tokio::sync::Semaphore;
use tracing::{Instrument, Span};

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
        mask,
    },
    store::{
        AuditKind, MailKind, StoreContext, StoreError, StoreFailure, accounts,
        audit::{self, AuditEvent},
        group_commit::{Decision, GroupCommit, WorkFuture},
        outbox::{self, MailIntent, MailJob},
        requests::{self, Request},
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

/// A claimed job and the span its delivery is logged in.
pub struct Claimed {
    pub job: MailJob,
    pub span: Span,
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

/// What a job needs once the batch's reads are done.
enum Plan {
    /// Decided without sending.
    Done(Result<Outcome, DeliveryError>),
    /// A mail without a link: no request to open.
    Notice {
        to: EmailAddress,
        template: TemplateKind,
        locale: Locale,
        vars: MailVars,
        kind: MailKind,
    },
    /// A link mail: its request must be open and hold the token's digest
    /// before the mail goes out.
    Link(LinkPlan),
}

struct LinkPlan {
    to: EmailAddress,
    /// The request the link is for: one a previous attempt opened, or a
    /// new one not yet written.
    request: Request,
    fresh: bool,
    token: Token,
    page: ResetUrl,
    kind: MailKind,
}

/// The accounts and earlier requests of a batch's jobs, read at once.
struct BatchReads {
    accounts: HashMap<String, accounts::Account>,
    requests: HashMap<String, Request>,
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

    /// Delivers the jobs of one claim, `concurrency` sends at once, each
    /// holding a permit of `sends` (shared with the worker's other batches)
    /// while it sends. The database work is done for the whole batch: one
    /// read of accounts and earlier requests, one write opening requests
    /// and storing token digests. Returns each job with how it went.
    pub async fn deliver_all(
        &self,
        jobs: Vec<Claimed>,
        concurrency: usize,
        sends: &Arc<Semaphore>,
    ) -> Vec<(Claimed, Result<Outcome, DeliveryError>)> {
        let reads = match self.read_for(&jobs).await {
            Ok(reads) => reads,
            Err(failure) => {
                return jobs
                    .into_iter()
                    .map(|claimed| {
                        let error = DeliveryError::Store(failure.duplicate());
                        (claimed, Err(error))
                    })
                    .collect();
            }
        };
        let mut plans: Vec<(Claimed, Plan)> = jobs
            .into_iter()
            .map(|claimed| {
                let plan = claimed.span.in_scope(|| self.plan(&claimed.job, &reads));
                (claimed, plan)
            })
            .collect();
        self.open_requests(&mut plans).await;
        // Each send is a task of its own, so that rendering and the SMTP
        // conversations of a batch run on every runtime thread.
        futures::stream::iter(plans)
            .map(|(claimed, plan)| {
                let delivery = self.clone();
                let span = claimed.span.clone();
                let sends = sends.clone();
                tokio::spawn(
                    async move {
                        // Never closed; were it, the send would go unlimited.
                        let _sending = sends.acquire_owned().await.ok();
                        // lettre parks a finished send's connection from a
                        // task it spawns; spawned after it, this send could
                        // run first, find the pool empty and open another
                        // connection, which the pool then closes. Yielding
                        // lets the connection come back first (new SMTP
                        // connections in a drain: 450–650/s → 25–30/s).
                        tokio::task::yield_now().await;
                        let result = delivery.send(plan).await;
                        (claimed, result)
                    }
                    .instrument(span),
                )
            })
            .buffer_unordered(concurrency.max(1))
            .filter_map(|sent| async move {
                // A send that panicked has no outcome; its lease brings the
                // job back.
                sent.inspect_err(|error| tracing::error!(%error, "a mail send task failed"))
                    .ok()
            })
            .collect()
            .await
    }

    /// Reads the accounts of the recipients and the requests earlier
    /// attempts opened: two queries for the batch.
    async fn read_for(&self, jobs: &[Claimed]) -> Result<BatchReads, StoreFailure> {
        // Looked up as each job's plan does: the parsed address.
        let emails: Vec<EmailAddress> = jobs
            .iter()
            .filter(|claimed| claimed.job.kind != MailKind::PasswordChanged)
            .filter_map(|claimed| EmailAddress::parse("recipient", &claimed.job.recipient).ok())
            .collect();
        let emails: Vec<&str> = emails.iter().map(EmailAddress::as_str).collect();
        let accounts = accounts::find_active_by_emails(&self.db, &emails)
            .await
            .context("finding the recipients' accounts")?;
        let request_ids: Vec<&str> = jobs
            .iter()
            .filter_map(|claimed| claimed.job.request_id.as_deref())
            .collect();
        let requests = requests::find_many(&self.db, &request_ids)
            .await
            .context("finding the jobs' requests")?;
        Ok(BatchReads {
            accounts: accounts
                .into_iter()
                .map(|account| (account.email.clone(), account))
                .collect(),
            requests: requests
                .into_iter()
                .map(|request| (request.id.clone(), request))
                .collect(),
        })
    }

    /// What `job` needs, given the batch's reads.
    fn plan(&self, job: &MailJob, reads: &BatchReads) -> Plan {
        match self.try_plan(job, reads) {
            Ok(plan) => plan,
            Err(error) => Plan::Done(Err(error)),
        }
    }

    fn try_plan(&self, job: &MailJob, reads: &BatchReads) -> Result<Plan, DeliveryError> {
        let intent = outbox::intent(job).context("reading the mail job's payload")?;
        let email =
            EmailAddress::parse("recipient", &job.recipient).map_err(DeliveryError::Recipient)?;
        let account = reads.accounts.get(email.as_str());
        match intent {
            MailIntent::Reset {
                locale, reset_url, ..
            } => {
                let Some(account) = account else {
                    return Ok(self.unknown_account(email, &locale));
                };
                let page = self.allowed_page(&reset_url)?;
                let locale = mail_locale(&locale, Some(account));
                let opened = RequestToOpen {
                    purpose: Purpose::Reset,
                    account_id: Some(&account.id),
                    display_name: &account.display_name,
                    locale: locale.as_str(),
                };
                self.plan_link(job, email, opened, page, reads)
            }
            MailIntent::SignUp {
                display_name,
                locale,
                reset_url,
            } => {
                let page = self.allowed_page(&reset_url)?;
                let locale = mail_locale(&locale, account);
                let opened = match account {
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
                self.plan_link(job, email, opened, page, reads)
            }
            MailIntent::PasswordChanged {
                display_name,
                locale,
                changed_at,
            } => {
                let template = TemplateKind::PasswordChanged;
                record_kind(template);
                let changed_at = std::time::UNIX_EPOCH + millis_between(0, changed_at);
                Ok(Plan::Notice {
                    template,
                    locale: mail_locale(&locale, None),
                    vars: MailVars::password_changed(&display_name, email.as_str(), changed_at),
                    kind: MailKind::PasswordChanged,
                    to: email,
                })
            }
        }
    }

    /// A reset for an address without an account: skipped, or answered
    /// with the `unknown_account` mail when that is on. The outbox keeps
    /// the job's kind (`reset`); the log and the audit name the mail.
    fn unknown_account(&self, email: EmailAddress, locale: &str) -> Plan {
        if !self.notify_unknown {
            record_kind(TemplateKind::Reset);
            return Plan::Done(Ok(Outcome::Skipped("no active account")));
        }
        let template = TemplateKind::UnknownAccount;
        record_kind(template);
        Plan::Notice {
            template,
            locale: mail_locale(locale, None),
            vars: MailVars::unknown_account(email.as_str()),
            kind: MailKind::Reset,
            to: email,
        }
    }

    /// The request a link is for: the one a previous attempt opened if
    /// there is one (name, locale and kind come from it, so a retry renders
    /// the same mail), else a new one superseding the address's open
    /// request of the same purpose.
    fn plan_link(
        &self,
        job: &MailJob,
        email: EmailAddress,
        opened: RequestToOpen<'_>,
        page: ResetUrl,
        reads: &BatchReads,
    ) -> Result<Plan, DeliveryError> {
        let token = Token::mint().map_err(DeliveryError::Token)?;
        let now = self.clock.now_millis();
        let (request, fresh) = match &job.request_id {
            Some(request_id) => match reads.requests.get(request_id) {
                Some(request) => match request.state(now) {
                    RequestState::Open => (request.clone(), false),
                    RequestState::Expired => return Err(DeliveryError::RequestExpired),
                    _ => return Ok(Plan::Done(Ok(Outcome::Skipped("request no longer open")))),
                },
                None => return Ok(Plan::Done(Ok(Outcome::Skipped("request no longer open")))),
            },
            None => {
                let purpose = opened.purpose;
                let lifetime = duration_millis(self.lifetimes.of(purpose));
                let request = Request {
                    id: new_request_id(),
                    purpose,
                    email: email.as_str().to_owned(),
                    account_id: opened.account_id.map(str::to_owned),
                    display_name: opened.display_name.to_owned(),
                    locale: opened.locale.to_owned(),
                    created_at: now,
                    expires_at: now.saturating_add(lifetime),
                    consumed_at: None,
                    revoked_at: None,
                };
                (request, true)
            }
        };
        let kind = link_kind(job.kind, request.purpose);
        Ok(Plan::Link(LinkPlan {
            to: email,
            request,
            fresh,
            token,
            page,
            kind,
        }))
    }

    /// Opens the batch's new requests and stores every link's token
    /// digest, in one group-committed write. A link whose job's lease was
    /// lost meanwhile is dropped: nothing is written or sent for it. When
    /// the batch's write fails (another replica opened a request for the
    /// same address at the same moment), each link is written on its own,
    /// so one conflict fails only its own job.
    async fn open_requests(&self, plans: &mut [(Claimed, Plan)]) {
        let links = link_rows(plans);
        if links.is_empty() {
            return;
        }
        let mut outcome = match self.write_links(links.clone()).await {
            Ok(held) => links
                .iter()
                .map(|link| (link.job_id, Ok(held.contains(&link.job_id))))
                .collect::<HashMap<_, _>>(),
            Err(failure) if links.len() > 1 => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(failure)),
                    links = links.len(),
                    "the batch's requests could not be opened together; opening each alone"
                );
                let mut outcome = HashMap::with_capacity(links.len());
                for link in links {
                    let job_id = link.job_id;
                    let held = self.write_links(vec![link]).await;
                    outcome.insert(job_id, held.map(|held| held.contains(&job_id)));
                }
                outcome
            }
            Err(failure) => links
                .iter()
                .map(|link| (link.job_id, Err(failure.duplicate())))
                .collect(),
        };
        for (claimed, plan) in plans.iter_mut() {
            if !matches!(plan, Plan::Link(_)) {
                continue;
            }
            // A link without an answer had no lease token to fence with:
            // its request was not written, so it is not sent.
            match outcome.remove(&claimed.job.id) {
                Some(Ok(true)) => {}
                Some(Ok(false)) | None => *plan = Plan::Done(Err(DeliveryError::LeaseLost)),
                Some(Err(failure)) => *plan = Plan::Done(Err(DeliveryError::Store(failure))),
            }
        }
    }

    /// One group-committed write for `links`, all of one claim: links each
    /// job still held by the claim to its request (the fence, and the
    /// write's first statement, so SQLite takes the write lock at once),
    /// revokes the requests the new ones supersede, opens them and stores
    /// the token digests. Returns the jobs still held.
    async fn write_links(&self, links: Vec<LinkRow>) -> Result<HashSet<i64>, StoreFailure> {
        let now = self.clock.now_millis();
        self.writes
            .write(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, HashSet<i64>, StoreFailure> {
                    Box::pin(async move {
                        let Some(lease_token) = links.first().map(|link| link.lease_token.clone())
                        else {
                            return Ok(Decision::Keep(HashSet::new()));
                        };
                        let job_links: Vec<(i64, &str, MailKind)> = links
                            .iter()
                            .map(|link| (link.job_id, link.request.id.as_str(), link.kind))
                            .collect();
                        let held: HashSet<i64> = outbox::set_requests(tx, &lease_token, &job_links)
                            .await
                            .context("linking the jobs to their requests")?
                            .into_iter()
                            .collect();
                        let links: Vec<&LinkRow> = links
                            .iter()
                            .filter(|link| held.contains(&link.job_id))
                            .collect();
                        open_fresh_requests(tx, &links, now).await?;
                        let digests: Vec<(&str, &str)> = links
                            .iter()
                            .map(|link| (link.request.id.as_str(), link.digest.as_str()))
                            .collect();
                        requests::add_token_digests(tx, &digests, now)
                            .await
                            .context("storing the token digests")?;
                        Ok(Decision::Keep(held))
                    })
                },
            )
            .await
    }

    /// Renders and sends one planned mail.
    async fn send(&self, plan: Plan) -> Result<Outcome, DeliveryError> {
        let now = self.clock.now_millis();
        match plan {
            Plan::Done(result) => result,
            Plan::Notice {
                to,
                template,
                locale,
                vars,
                kind,
            } => {
                self.mailer.send(&to, template, &locale, &vars, now).await?;
                Ok(Outcome::Sent {
                    request_id: None,
                    kind,
                    template,
                })
            }
            Plan::Link(link) => {
                let template = match link.kind {
                    MailKind::Reset => TemplateKind::Reset,
                    MailKind::SignUp => TemplateKind::SignUp,
                    MailKind::AlreadyRegistered => TemplateKind::AlreadyRegistered,
                    MailKind::PasswordChanged => TemplateKind::PasswordChanged,
                };
                record_kind(template);
                let request = link.request;
                let locale = Locale::parse("locale", &request.locale).unwrap_or_default();
                let vars = MailVars::link(
                    &request.display_name,
                    link.to.as_str(),
                    link.page.link(&link.token),
                    millis_between(now, request.expires_at),
                );
                self.mailer
                    .send(&link.to, template, &locale, &vars, now)
                    .await?;
                tracing::debug!(request = %request.id, "link mailed");
                Ok(Outcome::Sent {
                    request_id: Some(request.id),
                    kind: link.kind,
                    template,
                })
            }
        }
    }
}

/// What the batch write needs of one link: owned, so the write can run on
/// the group-commit lane.
#[derive(Clone)]
struct LinkRow {
    job_id: i64,
    lease_token: String,
    request: Request,
    fresh: bool,
    kind: MailKind,
    digest: String,
}

fn link_rows(plans: &[(Claimed, Plan)]) -> Vec<LinkRow> {
    plans
        .iter()
        .filter_map(|(claimed, plan)| match plan {
            Plan::Link(link) => Some(LinkRow {
                job_id: claimed.job.id,
                lease_token: claimed.job.lease_token.clone()?,
                request: link.request.clone(),
                fresh: link.fresh,
                kind: link.kind,
                digest: link.token.digest().as_str().to_owned(),
            }),
            _ => None,
        })
        .collect()
}

/// Opens the fresh requests of `links` (jobs still held), superseding each
/// address's open request of the same purpose. Two jobs of the batch for one address and purpose: the later
/// one's request supersedes the earlier's, as if they ran one after the
/// other.
async fn open_fresh_requests(
    tx: &DatabaseTransaction,
    links: &[&LinkRow],
    now: i64,
) -> Result<(), StoreFailure> {
    let fresh: Vec<&LinkRow> = links.iter().copied().filter(|link| link.fresh).collect();
    if fresh.is_empty() {
        return Ok(());
    }
    const SUPERSEDED: &str = "superseded by a new request";
    let openings: Vec<(Purpose, &str)> = fresh
        .iter()
        .map(|link| (link.request.purpose, link.request.email.as_str()))
        .collect();
    requests::hold_openings(tx, &openings)
        .await
        .context("waiting for other batches opening requests for the same addresses")?;
    let mut revoked_hints = Vec::new();
    for purpose in [Purpose::Reset, Purpose::SignUp] {
        let emails: Vec<&str> = fresh
            .iter()
            .filter(|link| link.request.purpose == purpose)
            .map(|link| link.request.email.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let revoked = requests::revoke_open_of_emails(tx, purpose, &emails, now)
            .await
            .context("revoking the superseded requests")?;
        // One event per address, as a single supersession records it.
        revoked_hints.extend(
            revoked
                .into_iter()
                .collect::<BTreeSet<_>>()
                .iter()
                .map(|e| mask(e)),
        );
    }
    // The last job of an address and purpose keeps its request open.
    let mut last_of: HashMap<(&str, Purpose), i64> = HashMap::new();
    for link in &fresh {
        last_of.insert(
            (link.request.email.as_str(), link.request.purpose),
            link.job_id,
        );
    }
    let rows: Vec<Request> = fresh
        .iter()
        .map(|link| {
            let mut request = link.request.clone();
            if last_of.get(&(request.email.as_str(), request.purpose)) != Some(&link.job_id) {
                request.revoked_at = Some(now);
                revoked_hints.push(mask(&request.email));
            }
            request
        })
        .collect();
    audit::record_many(
        tx,
        AuditKind::Revoked,
        revoked_hints.into_iter().map(|hint| AuditEvent {
            email_hint: Some(hint),
            detail: Some(SUPERSEDED),
            ..Default::default()
        }),
        now,
    )
    .await
    .context("auditing the revocations")?;
    requests::insert_many(tx, &rows)
        .await
        .context("opening the requests")?;
    Ok(())
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

/// A new request's id, time-ordered (UUIDv7): it and its tokens'
/// `request_id` land at the end of their indexes, not on random pages, so
/// each mail writes fewer pages.
fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
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
    fn request_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..1000).map(|_| new_request_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
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
