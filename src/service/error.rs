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
    /// The database rolled the write back to break a deadlock with a
    /// concurrent one; nothing was written and the call may be retried.
    #[error("write conflict")]
    Conflict(#[source] anyhow::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreFailure> for ServiceError {
    fn from(failure: StoreFailure) -> Self {
        if failure.source.is_saturated() {
            ServiceError::Busy {
                retry_after: spread_retry_delay(),
            }
        } else if failure.source.is_unavailable() {
            ServiceError::Unavailable(failure.into())
        } else if failure.source.is_conflict() {
            ServiceError::Conflict(failure.into())
        } else {
            ServiceError::Internal(failure.into())
        }
    }
}

/// The wait told to callers refused while the database is down or its pool
/// exhausted: 0.5 to 1.5 s, so they do not all come back at once to a
/// database that is just recovering.
pub fn spread_retry_delay() -> Duration {
    const AVERAGE: Duration = Duration::from_secs(1);
    AVERAGE.mul_f64(0.5 + rand::random::<f64>())
}

/// The wait told to callers refused by a full hashing pool: fixed, as the
/// pool's queue absorbs them coming back together. Spread, their refusals
/// were answered faster, but overload goodput fell about 4 points in the
/// load benchmark, whose callers share the server's cores.
const HASHING_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => ServiceError::Busy {
                retry_after: HASHING_RETRY_AFTER,
            },
            failed => ServiceError::Internal(failed.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_refusals_spread_their_retries_around_a_second() {
        let delays: Vec<Duration> = (0..200).map(|_| spread_retry_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(500) && *d < Duration::from_millis(1500)),
            "{delays:?}"
        );
        let spread = delays
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*delays.iter().min().unwrap());
        assert!(spread > Duration::from_millis(500), "{spread:?}");
    }
}
