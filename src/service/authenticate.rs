//! `Authenticate`: checks an email and password. Unknown accounts are checked
//! against a dummy hash, so both failures cost the same and look the same.

use secrecy::ExposeSecret;

use super::{
    ServiceContext, ServiceError, Violations,
    limits::{self, Refused},
    validated_field_missing,
};
use crate::{
    domain::{
        ClientContext, EmailAddress, FieldError,
        password::{self, MAX_PASSWORD_CHARS},
    },
    store::{
        AuditKind, StoreContext, accounts,
        audit::{self, AuditEvent},
        group_commit::Rows,
    },
};

#[derive(Default)]
pub struct AuthenticateInput {
    pub email: String,
    pub password: String,
    pub client_ip: String,
    pub client_user_agent: String,
    /// The calling service, for the audit trail.
    pub caller: Option<String>,
}

impl std::fmt::Debug for AuthenticateInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthenticateInput(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct AuthenticatedAccount {
    pub account_id: String,
    pub display_name: String,
    pub password_changed_at: i64,
}

pub async fn authenticate(
    ctx: &ServiceContext,
    input: AuthenticateInput,
) -> Result<AuthenticatedAccount, ServiceError> {
    let mut violations = Violations::default();
    let email = violations.check(EmailAddress::parse("email", &input.email));
    let client = violations.check(ClientContext::parse(
        &input.client_ip,
        &input.client_user_agent,
    ));
    // Passwords are stored in NFKC form; see `password::normalize`.
    let password = password::normalize(&input.password);
    if password.expose_secret().is_empty() {
        violations
            .0
            .push(FieldError::new("password", "is required"));
    } else if password.expose_secret().chars().count() > MAX_PASSWORD_CHARS {
        // No stored password is this long; refuse before hashing it.
        violations.0.push(FieldError::new(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    violations.finish()?;
    let (Some(email), Some(client)) = (email, client) else {
        return Err(validated_field_missing());
    };

    // A place in the hashing pool first: when it is saturated the caller
    // is refused before any database work.
    let slot = ctx.hasher.admit()?;
    let ip = client.ip.map(|ip| ip.to_string());
    let refused = || Refused {
        email: &email,
        ip: ip.clone(),
        caller: input.caller.as_deref(),
    };
    // Before the hash: a throttled guesser costs one read, known or not.
    let failures = ctx.limits.auth_failures(&email);
    if let Some(meter) = &failures {
        limits::check(ctx, meter, refused(), ctx.clock.now_millis()).await?;
    }
    let account = accounts::find_active_by_email(&ctx.db, email.as_str())
        .await
        .context("finding the account by email")?;
    let stored_hash = account.as_ref().map(|a| a.password_hash.clone());
    // A password set before normalization was hashed as typed: try that
    // form too, and store the normalized one if it matches.
    let as_typed =
        (input.password.as_str() != password.expose_secret()).then_some(input.password.as_str());
    let verification = slot
        .verify_with_fallback(stored_hash, password.expose_secret(), as_typed)
        .await?;

    let account = match account {
        Some(account) if verification.matched => account,
        account => {
            let now = ctx.clock.now_millis();
            if let Some(meter) = &failures {
                limits::count(ctx, meter, now).await?;
            }
            let event = AuditEvent {
                account_id: account.as_ref().map(|a| a.id.as_str()),
                email_hint: Some(email.masked()),
                ip,
                caller: input.caller.as_deref(),
                ..Default::default()
            };
            let row = audit::row(AuditKind::AuthenticationFailed, event, now);
            // The failure is counted already: its audit row waits for room.
            ctx.writes
                .waiting()
                .insert::<ServiceError>(Rows::default().audit(row))
                .await?;
            tracing::info!(email = %email.masked(), "authentication failed");
            return Err(ServiceError::InvalidCredentials);
        }
    };
    if let Some(new_hash) = verification.rehashed {
        // Best effort: the password was right, so the login stands.
        match accounts::replace_hash(&ctx.db, &account.id, &account.password_hash, &new_hash).await
        {
            Ok(()) => {
                tracing::info!(account = %account.id, "password rehashed with current parameters")
            }
            Err(error) => {
                let error = anyhow::Error::new(error).context("storing the rehashed password");
                tracing::warn!(account = %account.id, error = format!("{error:#}"), "rehash not stored")
            }
        }
    }
    Ok(AuthenticatedAccount {
        account_id: account.id,
        display_name: account.display_name,
        password_changed_at: account.password_changed_at,
    })
}
