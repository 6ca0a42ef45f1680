//! Audit events: who did what, when, without secrets.

use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};

use super::entities::audit_event;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    ResetRequested,
    SignUpRequested,
    Mailed,
    Verified,
    PasswordReset,
    SignedUp,
    Revoked,
    AuthenticationFailed,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::ResetRequested => "reset_requested",
            AuditKind::SignUpRequested => "sign_up_requested",
            AuditKind::Mailed => "mailed",
            AuditKind::Verified => "verified",
            AuditKind::PasswordReset => "password_reset",
            AuditKind::SignedUp => "signed_up",
            AuditKind::Revoked => "revoked",
            AuditKind::AuthenticationFailed => "authentication_failed",
        }
    }
}

/// One event. `email_hint` must be masked; `detail` must hold no secret.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    pub account_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub email_hint: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<&'a str>,
}

pub async fn record(
    db: &impl ConnectionTrait,
    kind: AuditKind,
    event: AuditEvent<'_>,
    now: i64,
) -> Result<(), DbErr> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: NotSet,
        at: Set(now),
        kind: Set(kind.as_str().to_owned()),
        account_id: Set(event.account_id.map(str::to_owned)),
        request_id: Set(event.request_id.map(str::to_owned)),
        email_hint: Set(event.email_hint),
        ip: Set(event.ip),
        detail: Set(event.detail.map(str::to_owned)),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}
