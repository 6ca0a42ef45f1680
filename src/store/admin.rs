//! What operators list: requests, mail jobs and audit events, newest first
//! and paged by key (the last row's sort key), so a page boundary does not
//! move when rows are added; and the counts behind the stats.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, Iterable, Order,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::{
    MailKind, MailStatus, StoreError,
    entities::{audit_event, mail_outbox, request},
    outbox::MailJob,
    requests::Request,
    text_array,
};
use crate::domain::{Purpose, RequestState};

pub type AuditEvent = audit_event::Model;

/// Which requests to list.
#[derive(Debug, Clone, Copy)]
pub struct RequestFilter {
    pub purpose: Option<Purpose>,
    pub state: RequestState,
}

/// Requests matching `filter` at `now`, newest first, after the key
/// `(created_at, id)` of the previous page's last row.
pub async fn list_requests(
    db: &impl ConnectionTrait,
    filter: RequestFilter,
    after: Option<(i64, String)>,
    limit: u64,
    now: i64,
) -> Result<Vec<Request>, StoreError> {
    Ok(listing_requests(filter, after, limit, now).all(db).await?)
}

/// The query of [`list_requests`]: it reads the requests' newest-first
/// index from the page's key on.
pub fn listing_requests(
    filter: RequestFilter,
    after: Option<(i64, String)>,
    limit: u64,
    now: i64,
) -> Select<request::Entity> {
    let mut query = request::Entity::find().filter(in_state(filter.state, now));
    if let Some(purpose) = filter.purpose {
        query = query.filter(request::Column::Purpose.eq(purpose));
    }
    if let Some((created_at, id)) = after {
        // A row value, which both databases read as one range of the index.
        let key = Expr::tuple([
            Expr::col(request::Column::CreatedAt),
            Expr::col(request::Column::Id),
        ]);
        query = query.filter(key.lt(Expr::tuple([Expr::value(created_at), Expr::value(id)])));
    }
    query
        .order_by(request::Column::CreatedAt, Order::Desc)
        .order_by(request::Column::Id, Order::Desc)
        .limit(limit)
}

/// The condition [`RequestState::at`] gives `state` for, in SQL.
fn in_state(state: RequestState, now: i64) -> Condition {
    use request::Column::{ConsumedAt, ExpiresAt, RevokedAt};
    match state {
        RequestState::Used => Condition::all().add(ConsumedAt.is_not_null()),
        RequestState::Revoked => Condition::all()
            .add(ConsumedAt.is_null())
            .add(RevokedAt.is_not_null()),
        RequestState::Expired => Condition::all()
            .add(ConsumedAt.is_null())
            .add(RevokedAt.is_null())
            .add(ExpiresAt.lte(now)),
        RequestState::Open => Condition::all()
            .add(ConsumedAt.is_null())
            .add(RevokedAt.is_null())
            .add(ExpiresAt.gt(now)),
    }
}

/// Mails sent per request, for the given requests.
pub async fn mails_sent(
    db: &impl ConnectionTrait,
    request_ids: &[String],
) -> Result<HashMap<String, u64>, StoreError> {
    if request_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = request_ids.iter().map(String::as_str).collect();
    let counting = counting_sent_mail(db.get_database_backend(), &ids);
    let mut counts = HashMap::with_capacity(ids.len());
    for row in db.query_all_raw(counting).await? {
        let request_id: Option<String> = row.try_get("", "request_id")?;
        let sent: i64 = row.try_get("", "sent")?;
        if let Some(request_id) = request_id {
            counts.insert(request_id, u64::try_from(sent).unwrap_or(0));
        }
    }
    Ok(counts)
}

/// The statement of [`mails_sent`]: it reads the sent mail's index by
/// request, never the outbox whole. On PostgreSQL each id is counted on its
/// own (a subquery per id): a generic plan of `request_id IN (…)` made
/// while the outbox was small would scan it, and a connection keeps that
/// plan as the outbox grows.
pub fn counting_sent_mail(backend: DbBackend, request_ids: &[&str]) -> Statement {
    if backend == DbBackend::Postgres {
        return Statement::from_sql_and_values(
            backend,
            "SELECT listed.id AS request_id, ( \
               SELECT count(*) FROM mail_outbox \
               WHERE mail_outbox.request_id = listed.id AND mail_outbox.status = 'sent' \
             ) AS sent \
             FROM unnest($1::text[]) AS listed(id)",
            [text_array(request_ids)],
        );
    }
    mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::RequestId)
        .column_as(mail_outbox::Column::Id.count(), "sent")
        .filter(mail_outbox::Column::RequestId.is_in(request_ids.iter().copied()))
        .filter(super::outbox::status_is(MailStatus::Sent))
        .group_by(mail_outbox::Column::RequestId)
        .build(backend)
}

/// Mail jobs, newest first, with ids below `before_id`.
pub async fn list_mail(
    db: &impl ConnectionTrait,
    status: Option<MailStatus>,
    kind: Option<MailKind>,
    before_id: Option<i64>,
    limit: u64,
) -> Result<Vec<MailJob>, StoreError> {
    let mut query = mail_outbox::Entity::find();
    if let Some(status) = status {
        query = query.filter(super::outbox::status_is(status));
    }
    if let Some(kind) = kind {
        query = query.filter(mail_outbox::Column::Kind.eq(kind));
    }
    if let Some(before) = before_id {
        query = query.filter(mail_outbox::Column::Id.lt(before));
    }
    Ok(query
        .order_by(mail_outbox::Column::Id, Order::Desc)
        .limit(limit)
        .all(db)
        .await?)
}

pub async fn find_mail(db: &impl ConnectionTrait, id: i64) -> Result<Option<MailJob>, StoreError> {
    Ok(mail_outbox::Entity::find_by_id(id).one(db).await?)
}

/// Puts a dead letter back in the queue, due at `now`, with fresh attempts.
/// `keep_request` false unlinks its request, so the worker opens a new one.
/// Returns the job as requeued (the worker may claim it at once), or `None`
/// when it is not (or no longer) dead.
pub async fn requeue_dead(
    db: &impl ConnectionTrait,
    id: i64,
    keep_request: bool,
    now: i64,
) -> Result<Option<mail_outbox::Model>, StoreError> {
    let mut update = mail_outbox::Entity::update_many()
        .col_expr(
            mail_outbox::Column::Status,
            Expr::value(MailStatus::Pending),
        )
        .col_expr(mail_outbox::Column::Attempts, Expr::value(0))
        .col_expr(mail_outbox::Column::NextAttemptAt, Expr::value(now))
        .col_expr(
            mail_outbox::Column::LockedUntil,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            mail_outbox::Column::LeaseToken,
            Expr::value(Option::<String>::None),
        );
    if !keep_request {
        update = update.col_expr(
            mail_outbox::Column::RequestId,
            Expr::value(Option::<String>::None),
        );
    }
    let mut requeued = update
        .filter(mail_outbox::Column::Id.eq(id))
        .filter(super::outbox::status_is(MailStatus::Dead))
        .exec_with_returning(db)
        .await?;
    Ok(requeued.pop())
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub account_id: Option<String>,
    pub kind: Option<super::AuditKind>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Audit events, newest first, with ids below `before_id`.
pub async fn list_audit(
    db: &impl ConnectionTrait,
    filter: AuditFilter,
    before_id: Option<i64>,
    limit: u64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let mut query = audit_event::Entity::find();
    if let Some(account_id) = filter.account_id {
        query = query.filter(audit_event::Column::AccountId.eq(account_id));
    }
    if let Some(kind) = filter.kind {
        query = query.filter(audit_event::Column::Kind.eq(kind));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_event::Column::At.gte(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_event::Column::At.lt(until));
    }
    if let Some(before) = before_id {
        query = query.filter(audit_event::Column::Id.lt(before));
    }
    Ok(query
        .order_by(audit_event::Column::Id, Order::Desc)
        .limit(limit)
        .all(db)
        .await?)
}

/// Counts behind `GetStats`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub mail_by_status: HashMap<MailStatus, u64>,
    /// `created_at` of the oldest pending job.
    pub oldest_pending: Option<i64>,
    pub open_requests: HashMap<Purpose, u64>,
}

/// The outbox by status, and when its oldest pending job was queued.
#[derive(Debug, Default, Clone)]
pub struct OutboxDepth {
    pub by_status: HashMap<MailStatus, u64>,
    /// `created_at` of the oldest pending job.
    pub oldest_pending: Option<i64>,
}

/// The outbox counted by status, one count per status from that status's
/// own partial index, and when its oldest pending job was queued; for
/// `GetStats` and the metrics.
pub async fn outbox_depth(db: &impl ConnectionTrait) -> Result<OutboxDepth, StoreError> {
    let mut by_status = HashMap::new();
    for status in MailStatus::iter() {
        let counted: Option<i64> = counting_status(status).into_tuple().one(db).await?;
        by_status.insert(status, u64::try_from(counted.unwrap_or(0)).unwrap_or(0));
    }
    let oldest_pending: Option<Option<i64>> = mail_outbox::Entity::find()
        .select_only()
        .column_as(mail_outbox::Column::CreatedAt.min(), "oldest")
        .filter(super::outbox::is_pending())
        .into_tuple()
        .one(db)
        .await?;
    Ok(OutboxDepth {
        by_status,
        oldest_pending: oldest_pending.flatten(),
    })
}

/// The count of the outbox's rows in `status`, which the status's partial
/// index serves (the status is written into the statement).
pub fn counting_status(status: MailStatus) -> Select<mail_outbox::Entity> {
    mail_outbox::Entity::find()
        .select_only()
        .column_as(Expr::cust("COUNT(*)"), "n")
        .filter(super::outbox::status_is(status))
}

pub async fn stats(db: &impl ConnectionTrait, now: i64) -> Result<Stats, StoreError> {
    let outbox = outbox_depth(db).await?;
    let mut open_requests = HashMap::new();
    for purpose in [Purpose::Reset, Purpose::SignUp] {
        let open = request::Entity::find()
            .filter(in_state(RequestState::Open, now))
            .filter(request::Column::Purpose.eq(purpose))
            .count(db)
            .await?;
        open_requests.insert(purpose, open);
    }
    Ok(Stats {
        mail_by_status: outbox.by_status,
        oldest_pending: outbox.oldest_pending,
        open_requests,
    })
}
