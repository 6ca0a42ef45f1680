use std::time::Duration;

use crate::{
    domain::FieldError,
    security::{callers::Refusal, hashing::HashError},
    store::StoreFailure,
};

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Unknown or malformed.
    Invalid,
    Expired,
    Used,
    Revoked,
}

/// Every way a use case can fail. `grpc` maps each to one status code;
/// the sources of `Unavailable` and `Internal` are logged there, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid fields")]
    InvalidArgument(Vec<FieldError>),
    #[error("token cannot be used: {0:?}")]
    Token(TokenProblem),
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The calling service is unknown or lacks the method's scope.
    #[error("caller refused: {0:?}")]
    Caller(Refusal),
    #[error("too busy; retry in {retry_after:?}")]
    Busy { retry_after: Duration },
    /// Over a rate limit; `limit` names it.
    #[error("over the rate limit {limit}; retry in {retry_after:?}")]
    RateLimited {
        limit: &'static str,
        description: String,
        retry_after: Duration,
    },
    /// What the call names does not exist; the reason says what.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// What the call names is not in a state that allows it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(&'static str),
    /// The database was unreachable at the last health check: refused
    /// before trying it.
    #[error("not ready; retry in {retry_after:?}")]
    NotReady { retry_after: Duration },
    /// The database cannot be reached.
    #[error("database unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreFailure> for ServiceError {
    fn from(failure: StoreFailure) -> Self {
        if failure.source.is_unavailable() {
            ServiceError::Unavailable(failure.into())
        } else {
            ServiceError::Internal(failure.into())
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => ServiceError::Busy {
                retry_after: Duration::from_secs(1),
            },
            failed => ServiceError::Internal(failed.into()),
        }
    }
}
