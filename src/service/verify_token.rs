//! `VerifyToken`: a pre-flight check that never consumes the token, so a
//! page can say "link expired" before the user types, and a mail scanner
//! that opens the link does no harm.

use super::{ServiceContext, ServiceError, TokenProblem};
use crate::{
    domain::{FieldError, Purpose, RequestState, Token, mask},
    store::{AuditKind, StoreContext, audit::AuditEvent, requests::Request},
};

/// What a usable token is for.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub purpose: Purpose,
    pub expires_at: i64,
    /// Masked recipient, e.g. "j***@example.com".
    pub email_hint: String,
}

pub async fn verify_token(
    ctx: &ServiceContext,
    raw_token: &str,
    caller: Option<&str>,
) -> Result<TokenInfo, ServiceError> {
    let now = ctx.clock.now_millis();
    let request = usable_request(ctx, raw_token, now).await?;
    let email_hint = mask(&request.email);
    // A read-only check: its audit event is queued and written with
    // others in one statement, not before the answer.
    let event = AuditEvent {
        account_id: request.account_id.as_deref(),
        request_id: Some(&request.id),
        email_hint: Some(email_hint.clone()),
        caller,
        ..Default::default()
    };
    ctx.audit.record(AuditKind::Verified, event, now).await?;
    Ok(TokenInfo {
        purpose: request.purpose,
        expires_at: request.expires_at,
        email_hint,
    })
}

/// The open request a token belongs to, or why there is none.
pub(super) async fn usable_request(
    ctx: &ServiceContext,
    raw_token: &str,
    now: i64,
) -> Result<Request, ServiceError> {
    if raw_token.trim().is_empty() {
        return Err(ServiceError::InvalidArgument(vec![FieldError::new(
            "token",
            "is required",
        )]));
    }
    let token = Token::parse(raw_token).ok_or(ServiceError::Token(TokenProblem::Invalid))?;
    let request = ctx
        .token_reads
        .request_by_token_digest(token.digest().as_str())
        .await
        .context("finding the token's request")?
        .ok_or(ServiceError::Token(TokenProblem::Invalid))?;
    match request.state(now) {
        RequestState::Open => Ok(request),
        closed => Err(ServiceError::Token(problem(closed))),
    }
}

pub(super) fn problem(state: RequestState) -> TokenProblem {
    match state {
        RequestState::Used | RequestState::Open => TokenProblem::Used,
        RequestState::Revoked => TokenProblem::Revoked,
        RequestState::Expired => TokenProblem::Expired,
    }
}
