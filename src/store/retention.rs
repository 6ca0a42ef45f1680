//! Deletes what is past its retention, in small batches so no statement
//! holds locks for long. Every delete is idempotent: replicas running it at
//! once only share the work.

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait, Query},
};

use super::{
    MailStatus, StoreError,
    entities::{account, audit_event, mail_outbox, request, request_token},
};

/// Deletes up to `batch` requests finished (used, revoked or expired) before
/// `cutoff`, with their token digests. Returns how many requests went.
pub async fn purge_requests(
    db: &impl ConnectionTrait,
    cutoff: i64,
    batch: u64,
) -> Result<u64, StoreError> {
    let finished = Condition::any()
        .add(request::Column::ConsumedAt.lt(cutoff))
        .add(request::Column::RevokedAt.lt(cutoff))
        .add(request::Column::ExpiresAt.lt(cutoff));
    let ids: Vec<String> = request::Entity::find()
        .select_only()
        .column(request::Column::Id)
        .filter(finished)
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    request_token::Entity::delete_many()
        .filter(request_token::Column::RequestId.is_in(ids.clone()))
        .exec(db)
        .await?;
    let deleted = request::Entity::delete_many()
        .filter(request::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}

/// Deletes up to `batch` finished mail jobs: sent or skipped before
/// `cutoff`, and those to an address without an account before
/// `unknown_cutoff`. Pending jobs and dead letters are kept.
pub async fn purge_mail(
    db: &impl ConnectionTrait,
    cutoff: i64,
    unknown_cutoff: i64,
    batch: u64,
) -> Result<u64, StoreError> {
    let accounts = Query::select()
        .column(account::Column::Email)
        .from(account::Entity)
        .to_owned();
    let expired = Condition::any()
        .add(mail_outbox::Column::CreatedAt.lt(cutoff))
        .add(
            Condition::all()
                .add(mail_outbox::Column::CreatedAt.lt(unknown_cutoff))
                .add(Expr::col(mail_outbox::Column::Recipient).not_in_subquery(accounts)),
        );
    let ids: Vec<i64> = mail_outbox::Entity::find()
        .select_only()
        .column(mail_outbox::Column::Id)
        .filter(mail_outbox::Column::Status.is_in([MailStatus::Sent, MailStatus::Skipped]))
        .filter(expired)
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    delete_mail(db, ids).await
}

async fn delete_mail(db: &impl ConnectionTrait, ids: Vec<i64>) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let deleted = mail_outbox::Entity::delete_many()
        .filter(mail_outbox::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}

/// Deletes up to `batch` audit events recorded before `cutoff`.
pub async fn purge_audit(
    db: &impl ConnectionTrait,
    cutoff: i64,
    batch: u64,
) -> Result<u64, StoreError> {
    let ids: Vec<i64> = audit_event::Entity::find()
        .select_only()
        .column(audit_event::Column::Id)
        .filter(audit_event::Column::At.lt(cutoff))
        .limit(batch)
        .into_tuple()
        .all(db)
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let deleted = audit_event::Entity::delete_many()
        .filter(audit_event::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}
