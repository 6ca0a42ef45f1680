//! The operator's use cases: list requests, mail and audit events; revoke a
//! request; retry a dead letter; stats. Any replica answers: everything
//! lives in the database.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::ActiveEnum;

use super::{ServiceContext, ServiceError};
use crate::{
    domain::{FieldError, Purpose, RequestState, mask},
    store::{
        AuditKind, MailKind, MailStatus, StoreContext,
        admin::{self, AuditEvent, AuditFilter, RequestFilter, Stats},
        audit::{self, AuditEvent as NewAuditEvent},
        outbox::MailJob,
        requests::{self, Request},
    },
};

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 500;

/// One page of a list, and the token of the next (`None` on the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// A request as an operator sees it.
#[derive(Debug)]
pub struct RequestView {
    pub request: Request,
    pub state: RequestState,
    pub email_hint: String,
    pub mails_sent: u64,
}

/// A mail job as an operator sees it: no payload, addresses masked.
#[derive(Debug)]
pub struct MailView {
    pub job: MailJob,
    pub recipient_hint: String,
    pub last_error: Option<String>,
}

/// Paging as the caller asked for it.
#[derive(Debug, Default, Clone)]
pub struct PageRequest {
    pub page_size: i32,
    pub page_token: String,
}

impl PageRequest {
    fn size(&self) -> Result<u64, FieldError> {
        match self.page_size {
            0 => Ok(DEFAULT_PAGE_SIZE),
            n if n < 0 => Err(FieldError::new("page_size", "must not be negative")),
            n => Ok(u64::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
        }
    }

    /// The key the previous page ended at, as `list` wrote it.
    fn key(&self, list: &str) -> Result<Option<String>, FieldError> {
        if self.page_token.is_empty() {
            return Ok(None);
        }
        let invalid = || FieldError::new("page_token", "is not a page token of this list");
        let bytes = URL_SAFE_NO_PAD
            .decode(self.page_token.trim())
            .map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (prefix, key) = text.split_once(':').ok_or_else(invalid)?;
        if prefix != list {
            return Err(invalid());
        }
        Ok(Some(key.to_owned()))
    }
}

/// Cuts a list fetched one longer than `size` back to `size`; when there
/// was more, the token of the page after it, keyed by its last item.
fn next_page<T>(
    items: &mut Vec<T>,
    size: u64,
    list: &str,
    key: impl Fn(&T) -> String,
) -> Option<String> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let more = items.len() > size;
    items.truncate(size);
    more.then(|| items.last())
        .flatten()
        .map(|last| page_token(list, &key(last)))
}

fn page_token(list: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{list}:{key}"))
}

fn bad(field: FieldError) -> ServiceError {
    ServiceError::InvalidArgument(vec![field])
}

fn invalid_page_token() -> ServiceError {
    bad(FieldError::new(
        "page_token",
        "is not a page token of this list",
    ))
}

/// Requests in `state` (open by default) of one purpose or both.
pub async fn list_requests(
    ctx: &ServiceContext,
    purpose: Option<Purpose>,
    state: Option<RequestState>,
    page: PageRequest,
) -> Result<Page<RequestView>, ServiceError> {
    let size = page.size().map_err(bad)?;
    let after = match page.key("requests").map_err(bad)? {
        Some(key) => {
            let (created_at, id) = key.split_once('/').ok_or_else(invalid_page_token)?;
            let created_at = created_at.parse().map_err(|_| invalid_page_token())?;
            Some((created_at, id.to_owned()))
        }
        None => None,
    };
    let now = ctx.clock.now_millis();
    let filter = RequestFilter {
        purpose,
        state: state.unwrap_or(RequestState::Open),
    };
    let mut found = admin::list_requests(&ctx.db, filter, after, size + 1, now)
        .await
        .context("listing requests")?;
    let next_page_token = next_page(&mut found, size, "requests", |last| {
        format!("{}/{}", last.created_at, last.id)
    });
    let ids: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    let sent = admin::mails_sent(&ctx.db, &ids)
        .await
        .context("counting the mails sent per request")?;
    let items = found
        .into_iter()
        .map(|request| RequestView {
            state: request.state(now),
            email_hint: mask(&request.email),
            mails_sent: sent.get(&request.id).copied().unwrap_or(0),
            request,
        })
        .collect();
    Ok(Page {
        items,
        next_page_token,
    })
}

/// Revokes an open request and audits who did it.
pub async fn revoke_request(
    ctx: &ServiceContext,
    request_id: &str,
    caller: Option<&str>,
) -> Result<RequestView, ServiceError> {
    let request_id = request_id.trim();
    if request_id.is_empty() {
        return Err(bad(FieldError::new("request_id", "is required")));
    }
    let now = ctx.clock.now_millis();
    let Some(request) = requests::find(&ctx.db, request_id)
        .await
        .context("finding the request")?
    else {
        return Err(ServiceError::NotFound("REQUEST_NOT_FOUND"));
    };
    if !requests::revoke(&ctx.db, &request.id, now)
        .await
        .context("revoking the request")?
    {
        return Err(ServiceError::FailedPrecondition("REQUEST_NOT_OPEN"));
    }
    audit::record(
        &ctx.db,
        AuditKind::Revoked,
        NewAuditEvent {
            account_id: request.account_id.as_deref(),
            request_id: Some(&request.id),
            email_hint: Some(mask(&request.email)),
            detail: Some("revoked by an operator"),
            caller,
            ..Default::default()
        },
        now,
    )
    .await
    .context("auditing the revocation")?;
    tracing::info!(request = %request.id, "request revoked by an operator");
    let request = Request {
        revoked_at: Some(now),
        ..request
    };
    let sent = admin::mails_sent(&ctx.db, std::slice::from_ref(&request.id))
        .await
        .context("counting the mails sent for the request")?;
    Ok(RequestView {
        state: request.state(now),
        email_hint: mask(&request.email),
        mails_sent: sent.get(&request.id).copied().unwrap_or(0),
        request,
    })
}

/// Mail jobs of one status and kind, or all.
pub async fn list_mail(
    ctx: &ServiceContext,
    status: Option<MailStatus>,
    kind: Option<MailKind>,
    page: PageRequest,
) -> Result<Page<MailView>, ServiceError> {
    let size = page.size().map_err(bad)?;
    let before = id_key(page.key("mail").map_err(bad)?)?;
    let mut jobs = admin::list_mail(&ctx.db, status, kind, before, size + 1)
        .await
        .context("listing mail jobs")?;
    let next_page_token = next_page(&mut jobs, size, "mail", |last| last.id.to_string());
    Ok(Page {
        items: jobs.into_iter().map(mail_view).collect(),
        next_page_token,
    })
}

fn id_key(key: Option<String>) -> Result<Option<i64>, ServiceError> {
    key.map(|k| k.parse().map_err(|_| invalid_page_token()))
        .transpose()
}

fn mail_view(job: MailJob) -> MailView {
    let recipient_hint = mask(&job.recipient);
    // A relay's error may quote the address; operators see it masked.
    let last_error = job
        .last_error
        .as_ref()
        .map(|e| e.replace(job.recipient.as_str(), &recipient_hint));
    MailView {
        recipient_hint,
        last_error,
        job,
    }
}

/// Puts a dead letter back in the queue. A request that is no longer open
/// is unlinked, so the worker opens a fresh one and the mailed link works.
pub async fn retry_mail(
    ctx: &ServiceContext,
    mail_id: i64,
    caller: Option<&str>,
) -> Result<MailView, ServiceError> {
    if mail_id <= 0 {
        return Err(bad(FieldError::new(
            "mail_id",
            "is required: the id of a mail job, as ListMail gives it",
        )));
    }
    let Some(job) = admin::find_mail(&ctx.db, mail_id)
        .await
        .context("finding the mail job")?
    else {
        return Err(ServiceError::NotFound("MAIL_NOT_FOUND"));
    };
    if job.status != MailStatus::Dead {
        return Err(ServiceError::FailedPrecondition("MAIL_NOT_DEAD"));
    }
    let now = ctx.clock.now_millis();
    let request_open = match &job.request_id {
        Some(id) => requests::find(&ctx.db, id)
            .await
            .context("finding the job's request")?
            .is_some_and(|r| r.state(now) == RequestState::Open),
        None => true,
    };
    let Some(requeued) = admin::requeue_dead(&ctx.db, job.id, request_open, now)
        .await
        .context("requeueing the dead letter")?
    else {
        return Err(ServiceError::FailedPrecondition("MAIL_NOT_DEAD"));
    };
    audit::record(
        &ctx.db,
        AuditKind::MailRetried,
        NewAuditEvent {
            request_id: job.request_id.as_deref(),
            email_hint: Some(mask(&job.recipient)),
            detail: Some("dead letter requeued by an operator"),
            caller,
            ..Default::default()
        },
        now,
    )
    .await
    .context("auditing the retry")?;
    ctx.mail_wake.notify_one();
    tracing::info!(job = job.id, "dead letter requeued by an operator");
    // As requeued: read again, it could already be the worker's next attempt.
    Ok(mail_view(requeued))
}

/// What to list from the audit trail, as the caller gave it.
#[derive(Debug, Default)]
pub struct AuditQuery {
    pub account_id: String,
    pub kind: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub page: PageRequest,
}

pub async fn list_audit_events(
    ctx: &ServiceContext,
    query: AuditQuery,
) -> Result<Page<AuditEvent>, ServiceError> {
    let size = query.page.size().map_err(bad)?;
    let before = id_key(query.page.key("audit").map_err(bad)?)?;
    let kind = match query.kind.trim() {
        "" => None,
        kind => Some(AuditKind::try_from_value(&kind.to_owned()).map_err(|_| {
            bad(FieldError::new(
                "kind",
                "is not an audit event kind, e.g. authentication_failed",
            ))
        })?),
    };
    let filter = AuditFilter {
        account_id: Some(query.account_id.trim().to_owned()).filter(|a| !a.is_empty()),
        kind,
        since: query.since,
        until: query.until,
    };
    let mut events = admin::list_audit(&ctx.db, filter, before, size + 1)
        .await
        .context("listing audit events")?;
    let next_page_token = next_page(&mut events, size, "audit", |last| last.id.to_string());
    Ok(Page {
        items: events,
        next_page_token,
    })
}

pub async fn stats(ctx: &ServiceContext) -> Result<(Stats, i64), ServiceError> {
    let now = ctx.clock.now_millis();
    let stats = admin::stats(&ctx.db, now)
        .await
        .context("reading the stats")?;
    Ok((stats, now))
}
