//! Reset and sign-up requests, and the digests of the tokens minted for them.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, Query},
};

use super::{
    StoreError,
    entities::{request, request_token},
};
use crate::domain::Purpose;
pub use request::Model as Request;

/// A request to open.
pub struct NewRequest<'a> {
    pub purpose: Purpose,
    pub email: &'a str,
    pub account_id: Option<&'a str>,
    pub display_name: &'a str,
    pub locale: &'a str,
    pub now: i64,
    pub expires_at: i64,
}

/// Inserts an open request. Revoke the open one of the same email and
/// purpose first, in the same transaction: the partial unique index allows
/// only one open request per email and purpose.
pub async fn insert(db: &impl ConnectionTrait, new: NewRequest<'_>) -> Result<Request, StoreError> {
    let model = Request {
        id: uuid::Uuid::new_v4().to_string(),
        purpose: new.purpose,
        email: new.email.to_owned(),
        account_id: new.account_id.map(str::to_owned),
        display_name: new.display_name.to_owned(),
        locale: new.locale.to_owned(),
        created_at: new.now,
        expires_at: new.expires_at,
        consumed_at: None,
        revoked_at: None,
    };
    request::Entity::insert(request::ActiveModel::from(model.clone()))
        .exec_without_returning(db)
        .await?;
    Ok(model)
}

pub async fn find(
    db: &impl ConnectionTrait,
    request_id: &str,
) -> Result<Option<Request>, StoreError> {
    Ok(request::Entity::find_by_id(request_id.to_owned())
        .one(db)
        .await?)
}

/// The request a token digest belongs to, if any. One round trip.
pub async fn find_by_token_digest(
    db: &impl ConnectionTrait,
    digest: &str,
) -> Result<Option<Request>, StoreError> {
    let owner = Query::select()
        .column(request_token::Column::RequestId)
        .from(request_token::Entity)
        .and_where(request_token::Column::Digest.eq(digest))
        .to_owned();
    Ok(request::Entity::find()
        .filter(request::Column::Id.in_subquery(owner))
        .one(db)
        .await?)
}

/// Records the digest of a newly minted token for a request.
pub async fn add_token_digest(
    db: &impl ConnectionTrait,
    request_id: &str,
    digest: &str,
    now: i64,
) -> Result<(), StoreError> {
    request_token::Entity::insert(request_token::ActiveModel {
        digest: Set(digest.to_owned()),
        request_id: Set(request_id.to_owned()),
        created_at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Marks an open request consumed. One conditional UPDATE, so of many
/// concurrent callers exactly one sees `true`.
pub async fn consume(
    db: &impl ConnectionTrait,
    request_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let result = request::Entity::update_many()
        .col_expr(request::Column::ConsumedAt, now.into())
        .filter(request::Column::Id.eq(request_id))
        .filter(request::Column::ConsumedAt.is_null())
        .filter(request::Column::RevokedAt.is_null())
        .filter(request::Column::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Revokes one request if it is open at `now`; true if it was.
pub async fn revoke(
    db: &impl ConnectionTrait,
    request_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let result = request::Entity::update_many()
        .col_expr(request::Column::RevokedAt, Expr::value(now))
        .filter(request::Column::Id.eq(request_id))
        .filter(request::Column::ConsumedAt.is_null())
        .filter(request::Column::RevokedAt.is_null())
        .filter(request::Column::ExpiresAt.gt(now))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Revokes the open requests of an email (of one purpose, or all). Returns
/// how many; auditing them is the caller's decision.
pub async fn revoke_open(
    db: &impl ConnectionTrait,
    email: &str,
    purpose: Option<Purpose>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut update = request::Entity::update_many()
        .col_expr(request::Column::RevokedAt, Expr::value(now))
        .filter(request::Column::Email.eq(email))
        .filter(request::Column::ConsumedAt.is_null())
        .filter(request::Column::RevokedAt.is_null());
    if let Some(purpose) = purpose {
        update = update.filter(request::Column::Purpose.eq(purpose));
    }
    Ok(update.exec(db).await?.rows_affected)
}
