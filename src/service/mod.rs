//! The use cases. No tonic and no SQL here: inputs arrive as plain strings,
//! are parsed into domain types, and work goes through `store` and `security`.
//! Every store call says what it was doing, so a failure logs its story.

pub mod admin;
mod admission;
mod authenticate;
mod error;
mod limits;
mod request_reset;
mod reset_password;
mod retention;
mod sign_up;
mod verify_token;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::sync::Notify;

pub use admission::{Admission, Readiness};
pub use authenticate::{AuthenticateInput, AuthenticatedAccount, authenticate};
pub use error::{ServiceError, TokenProblem, spread_retry_delay};
pub use limits::Limits;
pub use request_reset::{LinkRequestInput, request_reset};
pub use reset_password::{ResetPasswordInput, reset_password};
pub use retention::{Purged, RetentionPolicy, purge_expired, run_retention};
pub use sign_up::sign_up;
pub use verify_token::{TokenInfo, verify_token};

use crate::{
    domain::{Clock, FieldError, PasswordPolicy, ResetUrl, ResetUrlAllowList},
    security::hashing::PasswordHasher,
    store::{audit::AuditQueue, group_commit::GroupCommit, token_reads::TokenReads},
    telemetry::metrics::Metrics,
};

/// What the use cases share.
#[derive(Clone)]
pub struct ServiceContext {
    pub db: DatabaseConnection,
    /// Finds a token's request: on the calling thread on a SQLite file,
    /// in batches on PostgreSQL.
    pub token_reads: TokenReads,
    pub hasher: PasswordHasher,
    pub password_policy: PasswordPolicy,
    pub default_reset_url: Option<ResetUrl>,
    pub allowed_reset_urls: ResetUrlAllowList,
    /// Wakes the mail worker when a job is queued.
    pub mail_wake: Arc<Notify>,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// Writes on the hot path, committed in groups.
    pub writes: GroupCommit,
    /// Audit events written off the caller's path.
    pub audit: AuditQueue,
    pub metrics: Metrics,
}

impl ServiceContext {
    /// The page a link may point at: the caller's, if allowed, else the default.
    fn reset_page(&self, field: &'static str, raw: &str) -> Result<ResetUrl, FieldError> {
        if raw.trim().is_empty() {
            return self.default_reset_url.clone().ok_or_else(|| {
                FieldError::new(field, "is required: the server has no default reset page")
            });
        }
        let page = ResetUrl::parse(field, raw)?;
        if self.allowed_reset_urls.allows(&page) {
            Ok(page)
        } else {
            Err(FieldError::new(field, "is not an allowed reset page"))
        }
    }
}

/// Collects the field errors of several parses, so a caller learns about
/// every bad field at once.
#[derive(Default)]
struct Violations(Vec<FieldError>);

impl Violations {
    fn check<T>(&mut self, parsed: Result<T, FieldError>) -> Option<T> {
        parsed.map_err(|e| self.0.push(e)).ok()
    }

    fn finish(self) -> Result<(), ServiceError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::InvalidArgument(self.0))
        }
    }
}

/// A parse that `Violations::finish` vouched for but that left no value: a bug.
fn validated_field_missing() -> ServiceError {
    ServiceError::Internal(anyhow::anyhow!("a validated field is missing"))
}
