//! Account rows.

use sea_orm::{
    ActiveEnum,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryTrait, Statement,
    sea_query::{Expr, ExprTrait},
};

pub use super::entities::account::Model as Account;
use super::entities::account::{ActiveModel, Column, Entity};
use super::{AccountStatus, StoreError, text_array};

/// A new account to insert.
pub struct NewAccount<'a> {
    pub email: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub locale: &'a str,
    pub now: i64,
}

/// The account of an email, if there is one and it may sign in.
pub async fn find_active_by_email(
    db: &impl ConnectionTrait,
    email: &str,
) -> Result<Option<Account>, StoreError> {
    Ok(Entity::find()
        .filter(Column::Email.eq(email))
        .filter(Column::Status.eq(AccountStatus::Active))
        .one(db)
        .await?)
}

/// The accounts of `emails` that may sign in, in one query.
pub async fn find_active_by_emails(
    db: &impl ConnectionTrait,
    emails: &[&str],
) -> Result<Vec<Account>, StoreError> {
    if emails.is_empty() {
        return Ok(Vec::new());
    }
    let statement = finding_active_by_emails(db.get_database_backend(), emails);
    Ok(Entity::find().from_raw_sql(statement).all(db).await?)
}

/// The statement of [`find_active_by_emails`]. On PostgreSQL each address
/// is looked up on its own in the unique email index (a lateral subquery
/// per address): a generic plan of `email IN (…)` made while the table was
/// small scans the table, and a connection keeps it as the table grows.
/// There an address listed twice is found twice.
pub fn finding_active_by_emails(backend: DbBackend, emails: &[&str]) -> Statement {
    let active = AccountStatus::Active.to_value();
    if backend == DbBackend::Postgres {
        return Statement::from_sql_and_values(
            backend,
            "SELECT account.* FROM unnest($1::text[]) AS address(email) \
             CROSS JOIN LATERAL ( \
               SELECT * FROM accounts \
               WHERE accounts.email = address.email AND accounts.status = $2 \
               LIMIT 1 \
             ) AS account",
            [text_array(emails), active.into()],
        );
    }
    Entity::find()
        .filter(Column::Email.is_in(emails.iter().copied()))
        .filter(Column::Status.eq(active))
        .build(backend)
}

/// Inserts an active account and returns its id.
pub async fn insert(
    db: &impl ConnectionTrait,
    account: NewAccount<'_>,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    Entity::insert(ActiveModel {
        id: Set(id.clone()),
        email: Set(account.email.to_owned()),
        display_name: Set(account.display_name.to_owned()),
        password_hash: Set(account.password_hash.to_owned()),
        status: Set(AccountStatus::Active),
        locale: Set(account.locale.to_owned()),
        created_at: Set(account.now),
        password_changed_at: Set(account.now),
    })
    .exec_without_returning(db)
    .await?;
    Ok(id)
}

/// Sets a new password and moves `password_changed_at` forward: to `now`,
/// or a millisecond past the last change when that is not earlier (a
/// replica whose clock is behind, two changes in one millisecond).
pub async fn set_password(
    db: &impl ConnectionTrait,
    account_id: &str,
    password_hash: &str,
    now: i64,
) -> Result<(), StoreError> {
    let changed_at = Expr::case(Expr::col(Column::PasswordChangedAt).lt(now), now)
        .finally(Expr::col(Column::PasswordChangedAt).add(1));
    Entity::update_many()
        .col_expr(Column::PasswordHash, password_hash.into())
        .col_expr(Column::PasswordChangedAt, changed_at.into())
        .filter(Column::Id.eq(account_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Replaces the hash of the same password (new cost parameters); the
/// password did not change, so `password_changed_at` stays.
pub async fn replace_hash(
    db: &impl ConnectionTrait,
    account_id: &str,
    old_hash: &str,
    new_hash: &str,
) -> Result<(), StoreError> {
    Entity::update_many()
        .col_expr(Column::PasswordHash, new_hash.into())
        .filter(Column::Id.eq(account_id))
        .filter(Column::PasswordHash.eq(old_hash))
        .exec(db)
        .await?;
    Ok(())
}
