use std::time::Duration;

use crate::{domain::FieldError, security::hashing::HashError, store};

/// Why a token cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Unknown or malformed.
    Invalid,
    Expired,
    Used,
    Revoked,
}

/// Every way a use case can fail. `grpc` maps each to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid fields")]
    InvalidArgument(Vec<FieldError>),
    #[error("token cannot be used: {0:?}")]
    Token(TokenProblem),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too busy; retry in {retry_after:?}")]
    Busy { retry_after: Duration },
    /// The database cannot be reached. The text is for logs only.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The text is for logs only.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<store::StoreError> for ServiceError {
    fn from(error: store::StoreError) -> Self {
        if store::is_unavailable(&error) {
            ServiceError::Unavailable(error.to_string())
        } else {
            ServiceError::Internal(error.to_string())
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => ServiceError::Busy {
                retry_after: Duration::from_secs(1),
            },
            HashError::Failed(e) => ServiceError::Internal(e),
        }
    }
}
