//! Audit events: who did what, when, without secrets.

use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, EntityTrait};

use super::{AuditKind, StoreError, entities::audit_event};

/// One event. `email_hint` must be masked; `detail` must hold no secret.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    pub account_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub email_hint: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<&'a str>,
    pub caller: Option<&'a str>,
}

pub async fn record(
    db: &impl ConnectionTrait,
    kind: AuditKind,
    event: AuditEvent<'_>,
    now: i64,
) -> Result<(), StoreError> {
    audit_event::Entity::insert(row(kind, event, now))
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Records events of one kind, in one statement.
pub async fn record_many<'a>(
    db: &impl ConnectionTrait,
    kind: AuditKind,
    events: impl IntoIterator<Item = AuditEvent<'a>>,
    now: i64,
) -> Result<(), StoreError> {
    let rows = events.into_iter().map(|event| row(kind, event, now));
    audit_event::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

fn row(kind: AuditKind, event: AuditEvent<'_>, now: i64) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: NotSet,
        at: Set(now),
        kind: Set(kind),
        account_id: Set(event.account_id.map(str::to_owned)),
        request_id: Set(event.request_id.map(str::to_owned)),
        email_hint: Set(event.email_hint),
        ip: Set(event.ip),
        detail: Set(event.detail.map(str::to_owned)),
        caller: Set(event.caller.map(str::to_owned)),
    }
}

/// Records that `count` open requests of an address were revoked, and why;
/// nothing when there were none.
pub async fn record_revocations(
    db: &impl ConnectionTrait,
    count: u64,
    email_hint: &str,
    reason: &str,
    caller: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    let event = AuditEvent {
        email_hint: Some(email_hint.to_owned()),
        detail: Some(reason),
        caller,
        ..Default::default()
    };
    record(db, AuditKind::Revoked, event, now).await
}
