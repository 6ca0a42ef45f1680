//! The transactional mail outbox. A job is written in the same transaction
//! as the state change it belongs to and claimed by a mail worker with a
//! lease, so a crash mid-send only delays it. Each claim stamps its jobs with
//! a fresh lease token and every later write matches it (a fenced lease), so
//! a worker whose lease lapsed cannot overwrite the outcome of the next one.
//! Jobs carry intent, never tokens or links: the worker mints those at send
//! time.

use sea_orm::{
    ActiveValue::NotSet,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IdenStatic, QueryFilter, QueryOrder,
    QueryTrait, Statement, UpdateMany,
    sea_query::{
        Expr, ExprTrait, LockBehavior, LockType, Order, Query, SelectStatement, SimpleExpr,
    },
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
    /// A reset link, if the address has an account. An empty locale
    /// means the caller named none: the account's is used.
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
    let result = Entity::insert(new_job(recipient, intent, now)?)
        .exec(db)
        .await?;
    Ok(result.last_insert_id)
}

/// The row of a job due now, carrying the current trace context, for
/// [`enqueue`] or a batch's multi-row insert.
pub fn new_job(
    recipient: &str,
    intent: &MailIntent,
    now: i64,
) -> Result<mail_outbox::ActiveModel, StoreError> {
    Ok(mail_outbox::ActiveModel {
        id: NotSet,
        kind: Set(intent.kind()),
        recipient: Set(recipient.to_owned()),
        payload: Set(serde_json::to_string(intent)?),
        request_id: Set(None),
        status: Set(MailStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        lease_token: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        sent_at: Set(None),
        trace_context: Set(crate::telemetry::traces::current_traceparent()),
    })
}

pub fn intent(job: &MailJob) -> Result<MailIntent, StoreError> {
    Ok(serde_json::from_str(&job.payload)?)
}

/// The `last_error` of a job buried because the lease of its last attempt
/// ran out: it may or may not have been sent.
pub const LEASE_LAPSED: &str =
    "no attempt left: the last attempt's lease ran out before its outcome was recorded";

/// `status = '…'` with the status written into the SQL, not bound: a
/// partial index (`WHERE status = 'pending'`) serves only a query whose
/// condition visibly implies it, and a bound parameter does not (SQLite, or
/// a PostgreSQL generic plan). The status is one of the enum's fixed words.
pub(super) fn status_is(status: MailStatus) -> SimpleExpr {
    let word = sea_orm::ActiveEnum::to_value(&status);
    Expr::col((Entity, Column::Status)).eq(Expr::cust(format!("'{word}'")))
}

pub(super) fn is_pending() -> SimpleExpr {
    status_is(MailStatus::Pending)
}

/// Buries the pending jobs that have no attempt left and that no worker
/// holds: those whose last attempt's lease ran out (the outcome is unknown,
/// so they are not sent again), and those left over when the limit was
/// lowered (their last error stays). Returns how many.
pub async fn bury_exhausted(
    db: &impl ConnectionTrait,
    now: i64,
    max_attempts: u32,
) -> Result<u64, StoreError> {
    let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let dead = || {
        Entity::update_many()
            .col_expr(Column::Status, Expr::value(MailStatus::Dead))
            .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
            .col_expr(Column::LeaseToken, Expr::value(Option::<String>::None))
            .filter(is_pending())
            .filter(Column::Attempts.gte(max))
    };
    let lapsed = dead()
        .col_expr(Column::LastError, Expr::value(LEASE_LAPSED))
        .filter(Column::LockedUntil.lte(now))
        .exec(db)
        .await?;
    let spent = dead()
        .filter(Column::LockedUntil.is_null())
        .exec(db)
        .await?;
    Ok(lapsed.rows_affected + spent.rows_affected)
}

/// The ids of up to `batch` due jobs that have attempts left, first due
/// first: what [`claim_due`] claims.
pub fn due_jobs(now: i64, batch: u64, max_attempts: u32) -> SelectStatement {
    Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(is_pending())
        .and_where(Column::NextAttemptAt.lte(now))
        // `attempts + 0`: no index matches it, so PostgreSQL cannot pick the
        // pending rows' `attempts` index and bitmap-scan every dead entry of
        // it (228,000 of them, 20 ms a claim, measured with autovacuum off);
        // the ordered scan of the due index below marks dead entries as it
        // passes, and the next scan skips them.
        .and_where(
            Expr::col(Column::Attempts)
                .add(0)
                .lt(i32::try_from(max_attempts).unwrap_or(i32::MAX)),
        )
        .and_where(
            Expr::col(Column::LockedUntil)
                .is_null()
                .or(Column::LockedUntil.lte(now)),
        )
        // The order of the pending rows' `(next_attempt_at, id)` index: the
        // first `batch` due rows are read, not the whole backlog.
        .order_by(Column::NextAttemptAt, Order::Asc)
        .order_by(Column::Id, Order::Asc)
        .limit(batch)
        .to_owned()
}

/// Claims up to `batch` due jobs that have attempts left, until
/// `lease_until`, counting an attempt on each and stamping them with a
/// fresh lease token that every later write must match. One statement:
/// `FOR UPDATE SKIP LOCKED` on PostgreSQL so replicas never claim the same
/// row; SQLite serializes writers, so its single conditional
/// `UPDATE … RETURNING` is atomic as it is.
pub async fn claim_due(
    db: &impl ConnectionTrait,
    now: i64,
    lease_until: i64,
    batch: u64,
    max_attempts: u32,
) -> Result<Vec<MailJob>, StoreError> {
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    if postgres {
        db.execute_unprepared(CLAIM_PLAN).await?;
    }
    let claimed = claiming(now, lease_until, batch, max_attempts)
        .exec_with_returning(db)
        .await?;
    if postgres {
        db.execute_unprepared(AFTER_CLAIM_PLAN).await?;
    }
    Ok(claimed)
}

/// The statement of [`claim_due`], with a fresh lease token.
pub fn claiming(now: i64, lease_until: i64, batch: u64, max_attempts: u32) -> UpdateMany<Entity> {
    let due = due_jobs(now, batch, max_attempts)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    Entity::update_many()
        .col_expr(Column::LockedUntil, Expr::value(lease_until))
        // Due again when the lease lapses: held jobs leave the range of
        // `due_jobs`' ordered scan instead of being read and skipped.
        .col_expr(Column::NextAttemptAt, Expr::value(lease_until))
        .col_expr(
            Column::LeaseToken,
            Expr::value(uuid::Uuid::new_v4().to_string()),
        )
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .filter(Column::Id.in_subquery(due))
}

/// On PostgreSQL, set before the claim is planned: no sort, so the claim
/// reads the pending rows' due index in its order and stops after `batch`
/// rows. Without statistics (a new table, or autovacuum off) PostgreSQL
/// chose a bitmap scan of every due row and a sort, and a connection kept
/// that generic plan while the backlog grew: 51 ms a claim at 37,000
/// pending jobs, measured. `SET LOCAL`: it needs the transaction the worker
/// claims in, and ends with it (or with the claim's savepoint, undone).
pub const CLAIM_PLAN: &str = "SET LOCAL enable_sort = off";
/// Set after the claim: the rest of the transaction plans as configured.
const AFTER_CLAIM_PLAN: &str = "SET LOCAL enable_sort TO DEFAULT";

/// Extends the lease of the jobs of one claim that it still holds, `ids`
/// fenced by its lease token, to `lease_until`, their next attempt with it.
/// Returns how many it still held.
pub async fn renew_lease(
    db: &impl ConnectionTrait,
    lease_token: &str,
    ids: &[i64],
    lease_until: i64,
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let renewed = Entity::update_many()
        .col_expr(Column::LockedUntil, Expr::value(lease_until))
        .col_expr(Column::NextAttemptAt, Expr::value(lease_until))
        .filter(is_pending())
        .filter(ids_in(db.get_database_backend(), ids))
        .filter(Column::LeaseToken.eq(lease_token))
        .exec(db)
        .await?;
    Ok(renewed.rows_affected)
}

/// Links claimed jobs to their requests, `(job id, request id, kind)`, in
/// one statement fenced by the claim's lease token, so a retry reuses the
/// request. Returns the ids of the jobs linked: those still held, whose
/// rows stay locked until the transaction ends.
pub async fn set_requests(
    db: &impl ConnectionTrait,
    lease_token: &str,
    links: &[(i64, &str, MailKind)],
) -> Result<Vec<i64>, StoreError> {
    match linking(db.get_database_backend(), lease_token, links) {
        Some(link) => ids_written(db, link).await,
        None => Ok(Vec::new()),
    }
}

/// The statement of [`set_requests`]; `None` for no links.
pub fn linking(
    backend: DbBackend,
    lease_token: &str,
    links: &[(i64, &str, MailKind)],
) -> Option<Statement> {
    let ((first_id, first_request, first_kind), rest) = links.split_first()?;
    let mut request = Expr::case(Column::Id.eq(*first_id), Expr::value(*first_request));
    let mut kind = Expr::case(Column::Id.eq(*first_id), Expr::value(*first_kind));
    for (id, request_id, mail_kind) in rest {
        request = request.case(Column::Id.eq(*id), Expr::value(*request_id));
        kind = kind.case(Column::Id.eq(*id), Expr::value(*mail_kind));
    }
    let ids: Vec<i64> = links.iter().map(|(id, ..)| *id).collect();
    let link = Entity::update_many()
        .col_expr(
            Column::RequestId,
            request.finally(Expr::col(Column::RequestId)).into(),
        )
        .col_expr(Column::Kind, kind.finally(Expr::col(Column::Kind)).into())
        .filter(ids_in(backend, &ids))
        .filter(Column::LeaseToken.eq(lease_token));
    Some(returning_ids(backend, link))
}

/// Ends claimed jobs of one claim as `status` and `kind`, in one statement
/// fenced by the claim's lease token. Returns the ids written; the others'
/// lease was lost.
pub async fn finish_many(
    db: &impl ConnectionTrait,
    lease_token: &str,
    ids: &[i64],
    status: MailStatus,
    kind: MailKind,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let finish = finishing(
        db.get_database_backend(),
        lease_token,
        ids,
        status,
        kind,
        now,
    );
    ids_written(db, finish).await
}

/// The statement of [`finish_many`].
pub fn finishing(
    backend: DbBackend,
    lease_token: &str,
    ids: &[i64],
    status: MailStatus,
    kind: MailKind,
    now: i64,
) -> Statement {
    let finished = Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::Kind, Expr::value(kind))
        .col_expr(Column::SentAt, Expr::value(now))
        .col_expr(Column::LastError, Expr::value(Option::<String>::None));
    let finished = without_lease(finished)
        .filter(ids_in(backend, ids))
        .filter(Column::LeaseToken.eq(lease_token));
    returning_ids(backend, finished)
}

/// `id IN (ids)`. On PostgreSQL each id is looked up on its own in the
/// primary key (a lateral subquery per id): a generic plan of `id IN (…)`
/// made while the outbox was small scans it, and a connection keeps that
/// plan as the outbox grows.
fn ids_in(backend: DbBackend, ids: &[i64]) -> SimpleExpr {
    if backend == DbBackend::Postgres {
        return Expr::cust_with_values(
            "\"id\" IN (SELECT held.id FROM unnest($1::bigint[]) AS listed(id) \
             CROSS JOIN LATERAL ( \
               SELECT id FROM mail_outbox WHERE mail_outbox.id = listed.id LIMIT 1 \
             ) AS held)",
            [ids.to_vec()],
        );
    }
    Column::Id.is_in(ids.iter().copied())
}

/// `update` returning the ids of the rows it wrote: `RETURNING id`, as the
/// callers need nothing else, rather than whole rows (payloads included)
/// read back and decoded on the writer's lane.
fn returning_ids(backend: DbBackend, update: UpdateMany<Entity>) -> Statement {
    let mut statement = update.into_query();
    statement.returning_col(Column::Id);
    backend.build(&statement)
}

/// Runs an update built by [`returning_ids`] and returns the ids it wrote.
async fn ids_written(db: &impl ConnectionTrait, update: Statement) -> Result<Vec<i64>, StoreError> {
    let rows = db.query_all_raw(update).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get::<i64>("", Column::Id.as_str()))
        .collect::<Result<_, _>>()?)
}

/// Schedules another attempt of a claimed job.
pub async fn retry_later(
    db: &impl ConnectionTrait,
    job: &MailJob,
    next_attempt_at: i64,
    error: &str,
) -> Result<bool, StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::LastError, Expr::value(error));
    release(db, job, outcome).await
}

/// Puts a claimed job back untried until `next_attempt_at`: the claim's
/// attempt does not count.
pub async fn postpone(
    db: &impl ConnectionTrait,
    job: &MailJob,
    next_attempt_at: i64,
) -> Result<bool, StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).sub(1));
    release(db, job, outcome).await
}

/// Gives up on a claimed job; it stays visible as a dead letter.
pub async fn bury(
    db: &impl ConnectionTrait,
    job: &MailJob,
    error: &str,
) -> Result<bool, StoreError> {
    let outcome = Entity::update_many()
        .col_expr(Column::Status, Expr::value(MailStatus::Dead))
        .col_expr(Column::LastError, Expr::value(error));
    release(db, job, outcome).await
}

/// Writes an attempt's outcome and releases the job's lease, if the lease
/// is still the one `job` was claimed with. False when it was lost.
async fn release(
    db: &impl ConnectionTrait,
    job: &MailJob,
    outcome: UpdateMany<Entity>,
) -> Result<bool, StoreError> {
    fenced(db, job, without_lease(outcome)).await
}

/// `update`, also releasing the lease it is fenced by.
fn without_lease(update: UpdateMany<Entity>) -> UpdateMany<Entity> {
    update
        .col_expr(Column::LockedUntil, Expr::value(Option::<i64>::None))
        .col_expr(Column::LeaseToken, Expr::value(Option::<String>::None))
}

/// Runs `update` on `job`'s row only while it holds the lease it was
/// claimed with: a lease that lapsed and was claimed again, or whose job
/// was buried meanwhile, no longer matches. True when the row was written.
async fn fenced(
    db: &impl ConnectionTrait,
    job: &MailJob,
    update: UpdateMany<Entity>,
) -> Result<bool, StoreError> {
    let Some(token) = job.lease_token.as_deref() else {
        return Ok(false);
    };
    let result = update
        .filter(Column::Id.eq(job.id))
        .filter(Column::LeaseToken.eq(token))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Earliest time a pending job falls due, to sleep until then.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<i64>, StoreError> {
    let row = Entity::find()
        .filter(is_pending())
        .order_by_asc(Column::NextAttemptAt)
        .one(db)
        .await?;
    Ok(row.map(|job| Ord::max(job.next_attempt_at, job.locked_until.unwrap_or(0))))
}
