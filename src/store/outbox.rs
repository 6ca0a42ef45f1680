//! The transactional mail outbox. A job is written in the same transaction
//! as the state change it belongs to and claimed by a mail worker with a
//! lease, so a crash mid-send only delays it. Jobs carry intent, never
//! tokens or links: the worker mints those at send time.

use sea_orm::{
    ActiveValue::NotSet,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query},
};
use serde::{Deserialize, Serialize};

use super::entities::mail_outbox::{self, Column, Entity};
pub use mail_outbox::Model as MailJob;

pub const STATUS_PENDING: &str = "pending";
pub const STATUS_SENT: &str = "sent";
/// Finished without mail, e.g. a reset for an unknown address.
pub const STATUS_SKIPPED: &str = "skipped";
/// Failed permanently or too often; waits for an operator.
pub const STATUS_DEAD: &str = "dead";

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
    pub fn kind(&self) -> &'static str {
        match self {
            MailIntent::Reset { .. } => "reset",
            MailIntent::SignUp { .. } => "sign_up",
            MailIntent::PasswordChanged { .. } => "password_changed",
        }
    }
}

/// Queues a job, due now.
pub async fn enqueue(
    db: &impl ConnectionTrait,
    recipient: &str,
    intent: &MailIntent,
    now: i64,
) -> Result<i64, DbErr> {
    let payload = serde_json::to_string(intent).map_err(|e| DbErr::Json(e.to_string()))?;
    let result = Entity::insert(mail_outbox::ActiveModel {
        id: NotSet,
        kind: Set(intent.kind().to_owned()),
        recipient: Set(recipient.to_owned()),
        payload: Set(payload),
        request_id: Set(None),
        status: Set(STATUS_PENDING.to_owned()),
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

pub fn intent(job: &MailJob) -> Result<MailIntent, DbErr> {
    serde_json::from_str(&job.payload).map_err(|e| DbErr::Json(e.to_string()))
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
) -> Result<Vec<MailJob>, DbErr> {
    let due = Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Column::Status.eq(STATUS_PENDING))
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
    Entity::update_many()
        .col_expr(Column::LockedUntil, Expr::value(lease_until))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .filter(Column::Id.in_subquery(due))
        .exec_with_returning(db)
        .await
}

/// Links a job to the request it opened, so a retry reuses that request.
pub async fn set_request(
    db: &impl ConnectionTrait,
    job_id: i64,
    request_id: &str,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::RequestId, Expr::value(request_id))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Ends a job: `STATUS_SENT` or `STATUS_SKIPPED`.
pub async fn finish(
    db: &impl ConnectionTrait,
    job_id: i64,
    status: &str,
    now: i64,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::SentAt, Expr::value(now))
        .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(Column::LastError, Expr::value(Option::<String>::None))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Releases the lease and schedules another attempt.
pub async fn retry_later(
    db: &impl ConnectionTrait,
    job_id: i64,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(Column::LastError, Expr::value(error))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Gives up on a job; it stays visible as a dead letter.
pub async fn bury(db: &impl ConnectionTrait, job_id: i64, error: &str) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(STATUS_DEAD))
        .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(Column::LastError, Expr::value(error))
        .filter(Column::Id.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Earliest time a pending job falls due, to sleep until then.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<i64>, DbErr> {
    let row = Entity::find()
        .filter(Column::Status.eq(STATUS_PENDING))
        .order_by_asc(Column::NextAttemptAt)
        .one(db)
        .await?;
    Ok(row.map(|job| Ord::max(job.next_attempt_at, job.locked_until.unwrap_or(0))))
}
