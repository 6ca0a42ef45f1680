//! `ResetPassword`: consumes a token exactly once and sets the password, or
//! for a sign-up token creates the account.

use sea_orm::{DatabaseTransaction, TransactionTrait};

use super::{
    ServiceContext, ServiceError, TokenProblem, Violations, validated_field_missing,
    verify_token::{problem, usable_request},
};
use crate::{
    domain::{FieldError, NewPassword, Purpose, RequestState, mask, password::personal_words},
    store::{
        AuditKind, StoreContext, StoreFailure, accounts,
        audit::{self, AuditEvent},
        outbox::{self, MailIntent},
        requests::{self, Request},
    },
};

#[derive(Default)]
pub struct ResetPasswordInput {
    pub token: String,
    pub new_password: String,
    /// The calling service, for the audit trail.
    pub caller: Option<String>,
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
    let password = violations.check(NewPassword::parse(
        "new_password",
        input.new_password,
        &ctx.password_policy,
    ));
    violations.finish()?;
    let password = password.ok_or_else(validated_field_missing)?;

    // A place in the hashing pool first, so a saturated pool refuses before
    // any database work; then a cheap rejection of a bad token before the
    // expensive work (the consume below decides).
    let slot = ctx.hasher.admit()?;
    let request = usable_request(ctx, &input.token, ctx.clock.now_millis()).await?;
    // Guessability needs whom the password is for: the request's address
    // and name (the account's, for a reset).
    let personal = personal_words(&request.email, &request.display_name);
    let policy = ctx.password_policy;
    let password = slot
        .run_bounded(move || password.accept(&policy, &personal))
        .await?
        .map_err(|violation| ServiceError::InvalidArgument(vec![violation]))?;
    let password_hash = slot.hash(password.expose()).await?;

    let now = ctx.clock.now_millis();
    let tx = ctx.db.begin().await.context("starting a transaction")?;
    // The first statement writes, so SQLite takes its write lock up front.
    let consumed = requests::consume(&tx, &request.id, now)
        .await
        .context("consuming the request")?;
    if !consumed {
        tx.rollback().await.context("rolling back")?;
        let current = requests::find(&ctx.db, &request.id)
            .await
            .context("finding why the request was not consumed")?;
        let state = current.map_or(RequestState::Used, |r| r.state(now));
        return Err(ServiceError::Token(problem(state)));
    }
    let done = Completion {
        request: &request,
        password_hash: &password_hash,
        caller: input.caller.as_deref(),
        now,
    };
    let Completed {
        account_id,
        mail_queued,
    } = match request.purpose {
        Purpose::Reset => complete_reset(&tx, done).await?,
        Purpose::SignUp => complete_sign_up(&tx, done).await?,
    };
    tx.commit().await.context("committing the new password")?;
    // Woken for nothing, the worker would claim nothing in a write of its own.
    if mail_queued {
        ctx.mail_wake.notify_one();
    }
    tracing::info!(account = %account_id, purpose = ?request.purpose, "password set");
    Ok(account_id)
}

/// The account whose password was set, and whether a mail was queued.
struct Completed {
    account_id: String,
    mail_queued: bool,
}

/// A consumed request and what completing it needs.
#[derive(Clone, Copy)]
struct Completion<'a> {
    request: &'a Request,
    password_hash: &'a str,
    caller: Option<&'a str>,
    now: i64,
}

async fn complete_reset(
    tx: &DatabaseTransaction,
    done: Completion<'_>,
) -> Result<Completed, ServiceError> {
    let Completion {
        request,
        password_hash,
        caller,
        now,
    } = done;
    let account = accounts::find_active_by_email(tx, &request.email)
        .await
        .context("finding the account to reset")?
        .filter(|a| Some(&a.id) == request.account_id.as_ref())
        .ok_or(ServiceError::Token(TokenProblem::Revoked))?;
    accounts::set_password(tx, &account.id, password_hash, now)
        .await
        .context("setting the password")?;
    revoke_other_requests(tx, done, "password reset").await?;
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
    .await
    .context("queueing the password-changed notice")?;
    audit::record(
        tx,
        AuditKind::PasswordReset,
        AuditEvent {
            account_id: Some(&account.id),
            request_id: Some(&request.id),
            email_hint: Some(mask(&account.email)),
            caller,
            ..Default::default()
        },
        now,
    )
    .await
    .context("auditing the reset")?;
    Ok(Completed {
        account_id: account.id,
        mail_queued: true,
    })
}

async fn complete_sign_up(
    tx: &DatabaseTransaction,
    done: Completion<'_>,
) -> Result<Completed, ServiceError> {
    let Completion {
        request,
        password_hash,
        caller,
        now,
    } = done;
    let inserted = accounts::insert(
        tx,
        accounts::NewAccount {
            email: &request.email,
            display_name: &request.display_name,
            password_hash,
            locale: &request.locale,
            now,
        },
    )
    .await;
    let account_id = match inserted {
        Ok(account_id) => account_id,
        // Registered meanwhile by another sign-up: this link is superseded.
        Err(error) if error.is_unique_violation() => {
            return Err(ServiceError::Token(TokenProblem::Revoked));
        }
        Err(source) => {
            let doing = "creating the account";
            return Err(StoreFailure { doing, source }.into());
        }
    };
    revoke_other_requests(tx, done, "signed up").await?;
    audit::record(
        tx,
        AuditKind::SignedUp,
        AuditEvent {
            account_id: Some(&account_id),
            request_id: Some(&request.id),
            email_hint: Some(mask(&request.email)),
            caller,
            ..Default::default()
        },
        now,
    )
    .await
    .context("auditing the sign-up")?;
    Ok(Completed {
        account_id,
        mail_queued: false,
    })
}

/// Revokes every other open request of the email, and audits it if any.
async fn revoke_other_requests(
    tx: &DatabaseTransaction,
    done: Completion<'_>,
    reason: &str,
) -> Result<(), ServiceError> {
    let email = &done.request.email;
    let revoked = requests::revoke_open(tx, email, None, done.now)
        .await
        .context("revoking the other open requests")?;
    let hint = mask(email);
    audit::record_revocations(tx, revoked, &hint, reason, done.caller, done.now)
        .await
        .context("auditing the revocations")?;
    Ok(())
}
