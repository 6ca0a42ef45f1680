//! The transactional mail outbox. A job is written in the same transaction
//! as the state change it belongs to and claimed by a mail worker with a
//! lease, so a crash mid-send only delays it. Jobs carry intent, never
//! tokens or links: the worker mints those at send time.

use sea_orm::{
    ActiveValue::NotSet,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, UpdateMany,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query},
};
use serde::{Deserialize, Serialize};

use super::{
    MailKind, MailStatus, StoreError,
    entities::mail_outbox::{self, Column, Entity},
};
pub use mail_outbox::Model as MailJob;

/// What a job asks the worker to mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailIntent {
    /// A reset link, if the address has an account.
    Reset { locale: String, reset_url: String },
    /// A sign-up link, or "already registered" if the address has an account.
    SignUp {
        display_name: String,
        locale: String,
        reset_url: String,
    },
    /// Notice that an account's password changed.
    PasswordChanged {
        display_name: String,
        locale: String,
        changed_at: i64,
    },
}

impl MailIntent {
    pub fn kind(&self) -> MailKind {
        match self {
            MailIntent::Reset { .. } => MailKind::Reset,
            MailIntent::SignUp { .. } => MailKind::SignUp,
            MailIntent::PasswordChanged { .. } => MailKind::PasswordChanged,
        }
    }
}

/// Queues a job, due now.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    recipient: &str,
    intent: &MailIntent,
    now: i64,
) -> Result<i64, StoreError> {
    let payload = serde_json::to_string(intent)?;
    let result = Entity::insert(mail_outbox::ActiveModel {
        id: NotSet,
        kind: Set(intent.kind()),
        recipient: Set(recipient.to_owned()),
        payload: Set(payload),
        request_id: Set(None),
        status: Set(MailStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        sent_at: Set(None),
    })
    .exec(db)
    .await?;
    Ok(result.last_insert_id)
}

pub fn intent(job: &MailJob) -> Result<MailIntent, StoreError> {
    Ok(serde_json::from_str(&job.payload)?)
}

/// Claims up to `batch` due jobs until `lease_until`, counting an attempt on
/// each. One statement: `FOR UPDATE SKIP LOCKED` on PostgreSQL so replicas
/// never claim the same row; SQLite serializes writers, so its single
/// conditional `UPDATE … RETURNING` is atomic as it is.
pub async fn claim_due(
    db: &impl ConnectionTrait,
    now: i64,
    lease_until: i64,
    batch: u64,
) -> Result<Vec<MailJob>, StoreError> {
    let due = Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Column::Status.eq(MailStatus::Pending))
        .and_where(Column::NextAttemptAt.lte(now))
        .and_where(
            Expr::col(Column::LockedUntil)
                .is_null()
                .or(Column::LockedUntil.lte(now)),
        )
        .order_by(Column::Id, Order::Asc)
        .limit(batch)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    Ok(Entity::update_many()
        .col_expr(Column::LockedUntil, Expr::value(lease_until))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .filter(Column::Id.in_subquery(due))
        .exec_with_returning(db)
        .await?)
}

/// Links a job to the request it opened, so a retry reuses that request.
pub async fn set_request(
    db: &impl ConnectionTrait,
    job_id: i64,
    request_id: &str,
) -> Result<(), StoreError> {
    Entity::update_many()
        .col_expr(Column::RequestId, Expr::value(request_id))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Ends a job: [`MailStatus::Sent`] or [`MailStatus::Skipped`].
pub async fn finish(
    db: &impl ConnectionTrait,
    job_id: i64,
    status: MailStatus,
    now: i64,
) -> Result<(), StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::SentAt, Expr::value(now))
        .col_expr(Column::LastError, Expr::value(Option::<String>::None));
    release(db, job_id, outcome).await
}

/// Schedules another attempt.
pub async fn retry_later(
    db: &impl ConnectionTrait,
    job_id: i64,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::LastError, Expr::value(error));
    release(db, job_id, outcome).await
}

/// Puts a claimed job back untried until `next_attempt_at`: the claim's
/// attempt does not count.
pub async fn postpone(
    db: &impl ConnectionTrait,
    job_id: i64,
    next_attempt_at: i64,
) -> Result<(), StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).sub(1));
    release(db, job_id, outcome).await
}

/// Gives up on a job; it stays visible as a dead letter.
pub async fn bury(db: &impl ConnectionTrait, job_id: i64, error: &str) -> Result<(), StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::Status, Expr::value(MailStatus::Dead))
        .col_expr(Column::LastError, Expr::value(error));
    release(db, job_id, outcome).await
}

/// Writes an attempt's outcome and releases the job's lease.
async fn release(
    db: &impl ConnectionTrait,
    job_id: i64,
    outcome: UpdateMany<Entity>,
) -> Result<(), StoreError> {
    outcome
        .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Earliest time a pending job falls due, to sleep until then.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<i64>, StoreError> {
    let row = Entity::find()
        .filter(Column::Status.eq(MailStatus::Pending))
        .order_by_asc(Column::NextAttemptAt)
        .one(db)
        .await?;
    Ok(row.map(|job| Ord::max(job.next_attempt_at, job.locked_until.unwrap_or(0))))
}
