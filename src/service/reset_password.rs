//! `ResetPassword`: consumes a token exactly once and sets the password, or
//! for a sign-up token creates the account.

use sea_orm::{DatabaseTransaction, TransactionTrait};

use super::{
    ServiceContext, ServiceError, TokenProblem, Violations,
    verify_token::{problem, usable_request},
};
use crate::{
    domain::{FieldError, Password, Purpose, mask},
    store::{
        self, accounts,
        audit::{self, AuditEvent, AuditKind},
        now_millis,
        outbox::{self, MailIntent},
        requests::{self, Request},
    },
};

#[derive(Default)]
pub struct ResetPasswordInput {
    pub token: String,
    pub new_password: String,
}

impl std::fmt::Debug for ResetPasswordInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetPasswordInput(<redacted>)")
    }
}

/// Returns the id of the account whose password was set.
pub async fn reset_password(
    ctx: &ServiceContext,
    input: ResetPasswordInput,
) -> Result<String, ServiceError> {
    let mut violations = Violations::default();
    if input.token.trim().is_empty() {
        violations.0.push(FieldError::new("token", "is required"));
    }
    let password = violations.check(Password::parse(
        "new_password",
        input.new_password,
        &ctx.password_policy,
    ));
    violations.finish()?;
    let Some(password) = password else {
        return Err(ServiceError::Internal("validated fields missing".into()));
    };

    // Cheap rejection before the expensive hash; the consume below decides.
    let request = usable_request(ctx, &input.token, now_millis()).await?;
    let purpose = Purpose::from_stored(&request.purpose)
        .ok_or_else(|| ServiceError::Internal(format!("unknown purpose {}", request.purpose)))?;
    let password_hash = ctx.hasher.hash(password.expose()).await?;

    let now = now_millis();
    let tx = ctx.db.begin().await?;
    // The first statement writes, so SQLite takes its write lock up front.
    if !requests::consume(&tx, &request.id, now).await? {
        tx.rollback().await?;
        let current = requests::find(&ctx.db, &request.id).await?;
        let state = current.map_or(requests::RequestState::Used, |r| requests::state(&r, now));
        return Err(ServiceError::Token(problem(state)));
    }
    let account_id = match purpose {
        Purpose::Reset => complete_reset(&tx, &request, &password_hash, now).await?,
        Purpose::SignUp => complete_sign_up(&tx, &request, &password_hash, now).await?,
    };
    tx.commit().await?;
    ctx.mail_wake.notify_one();
    tracing::info!(account = %account_id, purpose = purpose.as_str(), "password set");
    Ok(account_id)
}

async fn complete_reset(
    tx: &DatabaseTransaction,
    request: &Request,
    password_hash: &str,
    now: i64,
) -> Result<String, ServiceError> {
    let account = accounts::find_by_email(tx, &request.email)
        .await?
        .filter(|a| {
            a.status == accounts::STATUS_ACTIVE && Some(&a.id) == request.account_id.as_ref()
        })
        .ok_or(ServiceError::Token(TokenProblem::Revoked))?;
    accounts::set_password(tx, &account.id, password_hash, now).await?;
    requests::revoke_open(tx, &request.email, None, "password reset", now).await?;
    outbox::enqueue(
        tx,
        &account.email,
        &MailIntent::PasswordChanged {
            display_name: account.display_name.clone(),
            locale: account.locale.clone(),
            changed_at: now,
        },
        now,
    )
    .await?;
    audit::record(
        tx,
        AuditKind::PasswordReset,
        AuditEvent {
            account_id: Some(&account.id),
            request_id: Some(&request.id),
            email_hint: Some(mask(&account.email)),
            ..Default::default()
        },
        now,
    )
    .await?;
    Ok(account.id)
}

async fn complete_sign_up(
    tx: &DatabaseTransaction,
    request: &Request,
    password_hash: &str,
    now: i64,
) -> Result<String, ServiceError> {
    let account_id = accounts::insert(
        tx,
        accounts::NewAccount {
            email: &request.email,
            display_name: &request.display_name,
            password_hash,
            locale: &request.locale,
            now,
        },
    )
    .await
    .map_err(|e| {
        // Registered meanwhile by another sign-up: this link is superseded.
        if store::is_unique_violation(&e) {
            ServiceError::Token(TokenProblem::Revoked)
        } else {
            e.into()
        }
    })?;
    requests::revoke_open(tx, &request.email, None, "signed up", now).await?;
    audit::record(
        tx,
        AuditKind::SignedUp,
        AuditEvent {
            account_id: Some(&account_id),
            request_id: Some(&request.id),
            email_hint: Some(mask(&request.email)),
            ..Default::default()
        },
        now,
    )
    .await?;
    Ok(account_id)
}
