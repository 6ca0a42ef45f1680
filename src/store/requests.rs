//! Reset and sign-up requests, and the digests of the tokens minted for them.

use std::collections::BTreeSet;

use sea_orm::{
    ActiveEnum,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, IdenStatic, QueryFilter,
    QueryTrait, Statement, UpdateMany,
    sea_query::{Expr, ExprTrait, Func},
};
use sha2::{Digest, Sha256};

use super::{
    StoreError,
    entities::{request, request_token},
    text_array,
};
use crate::domain::Purpose;
pub use request::Model as Request;

pub async fn find(
    db: &impl ConnectionTrait,
    request_id: &str,
) -> Result<Option<Request>, StoreError> {
    Ok(request::Entity::find_by_id(request_id.to_owned())
        .one(db)
        .await?)
}

/// The requests of `ids` that exist, in one query.
pub async fn find_many(
    db: &impl ConnectionTrait,
    ids: &[&str],
) -> Result<Vec<Request>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let statement = finding_many(db.get_database_backend(), ids);
    Ok(request::Entity::find()
        .from_raw_sql(statement)
        .all(db)
        .await?)
}

/// The statement of [`find_many`]. On PostgreSQL each id is looked up on
/// its own in the primary key (a lateral subquery per id): a generic plan of
/// `id IN (…)` made while the table was small scans it, and a connection
/// keeps that plan as the table grows. There an id listed twice is found
/// twice.
pub fn finding_many(backend: DbBackend, ids: &[&str]) -> Statement {
    if backend == DbBackend::Postgres {
        return Statement::from_sql_and_values(
            backend,
            "SELECT found.* FROM unnest($1::text[]) AS listed(id) \
             CROSS JOIN LATERAL ( \
               SELECT * FROM requests WHERE requests.id = listed.id LIMIT 1 \
             ) AS found",
            [text_array(ids)],
        );
    }
    request::Entity::find()
        .filter(request::Column::Id.is_in(ids.iter().copied()))
        .build(backend)
}

/// Inserts requests as they are, in one statement. Revoke the open ones
/// they supersede first, and insert at most one open request per email and
/// purpose (the partial unique index allows no more).
pub async fn insert_many(db: &impl ConnectionTrait, rows: &[Request]) -> Result<(), StoreError> {
    request::Entity::insert_many(rows.iter().cloned().map(request::ActiveModel::from))
        .exec_without_returning(db)
        .await?;
    Ok(())
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

/// Records the digests of newly minted tokens, `(request id, digest)`, in
/// one statement.
pub async fn add_token_digests(
    db: &impl ConnectionTrait,
    digests: &[(&str, &str)],
    now: i64,
) -> Result<(), StoreError> {
    let rows = digests
        .iter()
        .map(|(request_id, digest)| request_token::ActiveModel {
            digest: Set((*digest).to_owned()),
            request_id: Set((*request_id).to_owned()),
            created_at: Set(now),
        });
    request_token::Entity::insert_many(rows)
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
    let result = consuming(request_id, now).exec(db).await?;
    Ok(result.rows_affected == 1)
}

/// The statement of [`consume`].
pub fn consuming(request_id: &str, now: i64) -> UpdateMany<request::Entity> {
    request::Entity::update_many()
        .col_expr(request::Column::ConsumedAt, now.into())
        .filter(open_with_id(request_id, now))
}

/// The request `request_id` if it is open at `now`. "Neither consumed nor
/// revoked" is written as one `COALESCE … IS NULL`, which PostgreSQL cannot
/// match to the open requests' partial unique index: with the plain `IS
/// NULL`s and no statistics it scanned that whole index for the id (20,000
/// buffers, 15–60 ms a call, measured) instead of using the primary key.
fn open_with_id(request_id: &str, now: i64) -> Condition {
    let settled = Func::coalesce([
        Expr::col(request::Column::ConsumedAt),
        Expr::col(request::Column::RevokedAt),
    ]);
    Condition::all()
        .add(request::Column::Id.eq(request_id))
        .add(Expr::expr(settled).is_null())
        .add(request::Column::ExpiresAt.gt(now))
}

/// Revokes one request if it is open at `now`; true if it was.
pub async fn revoke(
    db: &impl ConnectionTrait,
    request_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let result = request::Entity::update_many()
        .col_expr(request::Column::RevokedAt, Expr::value(now))
        .filter(open_with_id(request_id, now))
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

/// Holds, until the transaction ends, the opening of requests for these
/// addresses and purposes. On PostgreSQL two mail batches opening requests
/// for the same address at once (the worker has two in flight) collided on
/// the open requests' unique index: the later insert failed once the first
/// committed, and its whole batch was written again link by link. Holding
/// the address first, the later batch waits, then supersedes the request the
/// first one opened. The locks are taken in one order, so two batches cannot
/// wait on each other. SQLite has one writer: nothing to hold.
pub async fn hold_openings(
    db: &impl ConnectionTrait,
    openings: &[(Purpose, &str)],
) -> Result<(), StoreError> {
    if openings.is_empty() || db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(holding_openings(openings)).await?;
    Ok(())
}

/// The statement of [`hold_openings`] on PostgreSQL: a transaction-scoped
/// advisory lock per address and purpose, in ascending key order.
fn holding_openings(openings: &[(Purpose, &str)]) -> Statement {
    let keys: Vec<i64> = openings
        .iter()
        .map(|(purpose, email)| opening_key(*purpose, email))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock(key) FROM unnest($1::bigint[]) AS held(key)",
        [keys.into()],
    )
}

/// The advisory lock key of opening a request of `purpose` for `email`.
fn opening_key(purpose: Purpose, email: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"rekey.requests.open\0")
        .chain_update(purpose.to_value().as_bytes())
        .chain_update(b"\0")
        .chain_update(email.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Revokes the open requests of `purpose` of every address in `emails`, in
/// one statement. Returns the email of each request revoked.
pub async fn revoke_open_of_emails(
    db: &impl ConnectionTrait,
    purpose: Purpose,
    emails: &[&str],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    if emails.is_empty() {
        return Ok(Vec::new());
    }
    let statement = revoking_open_of_emails(db.get_database_backend(), purpose, emails, now);
    let rows = db.query_all_raw(statement).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get::<String>("", request::Column::Email.as_str()))
        .collect::<Result<_, _>>()?)
}

/// The statement of [`revoke_open_of_emails`], returning the emails.
///
/// On PostgreSQL each address is looked up on its own through the open
/// requests' unique index (a lateral subquery with `LIMIT 1`, which that
/// index answers exactly), then updated by primary key. The plain
/// `email IN (…)` form got a generic plan that scanned the table when the
/// table was tiny, and kept it as the table grew: 52 ms for 7,000 rows,
/// measured during a mail drain. "Neither consumed nor revoked" is checked
/// again on the row being updated (a concurrent consumption wins), written
/// as one `COALESCE` that the partial index cannot serve, so the outer
/// statement uses the primary key.
pub fn revoking_open_of_emails(
    backend: DbBackend,
    purpose: Purpose,
    emails: &[&str],
    now: i64,
) -> Statement {
    let purpose = purpose.to_value();
    if backend == DbBackend::Postgres {
        return Statement::from_sql_and_values(
            backend,
            "UPDATE requests SET revoked_at = $1 \
             WHERE COALESCE(consumed_at, revoked_at) IS NULL AND id IN ( \
               SELECT open.id FROM unnest($2::text[]) AS address(email) \
               CROSS JOIN LATERAL ( \
                 SELECT id FROM requests \
                 WHERE requests.email = address.email AND requests.purpose = $3 \
                   AND consumed_at IS NULL AND revoked_at IS NULL \
                 LIMIT 1 \
               ) AS open \
             ) \
             RETURNING email",
            [now.into(), text_array(emails), purpose.into()],
        );
    }
    let mut update = request::Entity::update_many()
        .col_expr(request::Column::RevokedAt, Expr::value(now))
        .filter(request::Column::Email.is_in(emails.iter().copied()))
        .filter(request::Column::Purpose.eq(purpose))
        .filter(request::Column::ConsumedAt.is_null())
        .filter(request::Column::RevokedAt.is_null())
        .into_query();
    update.returning_col(request::Column::Email);
    backend.build(&update)
}
