//! What operators list: requests, mail jobs and audit events, newest first
//! and paged by key (the last row's sort key), so a page boundary does not
//! move when rows are added; and the counts behind the stats.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr,
};

use super::{
    MailKind, MailStatus, StoreError,
    entities::{audit_event, mail_outbox, request},
    outbox::MailJob,
    requests::Request,
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
    let mut query = request::Entity::find().filter(in_state(filter.state, now));
    if let Some(purpose) = filter.purpose {
        query = query.filter(request::Column::Purpose.eq(purpose));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            Condition::any()
                .add(request::Column::CreatedAt.lt(created_at))
                .add(
                    Condition::all()
                        .add(request::Column::CreatedAt.eq(created_at))
                        .add(request::Column::Id.lt(id)),
                ),
        );
    }
    Ok(query
        .order_by(request::Column::CreatedAt, Order::Desc)
        .order_by(request::Column::Id, Order::Desc)
        .limit(limit)
        .all(db)
        .await?)
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
    let counts: Vec<(Option<String>, i64)> = mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::RequestId)
        .column_as(mail_outbox::Column::Id.count(), "sent")
        .filter(mail_outbox::Column::RequestId.is_in(request_ids.iter().cloned()))
        .filter(mail_outbox::Column::Status.eq(MailStatus::Sent))
        .group_by(mail_outbox::Column::RequestId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(counts
        .into_iter()
        .filter_map(|(id, n)| Some((id?, u64::try_from(n).unwrap_or(0))))
        .collect())
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

/// Two aggregate reads of the outbox, for `GetStats` and the metrics.
pub async fn outbox_depth(db: &impl ConnectionTrait) -> Result<OutboxDepth, StoreError> {
    let by_status: Vec<(MailStatus, i64)> = mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::Status)
        .column_as(mail_outbox::Column::Id.count(), "n")
        .group_by(mail_outbox::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let oldest_pending: Option<Option<i64>> = mail_outbox::Entity::find()
        .select_only()
        .column_as(mail_outbox::Column::CreatedAt.min(), "oldest")
        .filter(super::outbox::is_pending())
        .into_tuple()
        .one(db)
        .await?;
    Ok(OutboxDepth {
        by_status: by_status
            .into_iter()
            .map(|(status, n)| (status, u64::try_from(n).unwrap_or(0)))
            .collect(),
        oldest_pending: oldest_pending.flatten(),
    })
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
