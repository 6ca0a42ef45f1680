//! The tonic services: proto ↔ use-case conversion, and the one mapping from
//! [`ServiceError`] to `tonic::Status`; the transport in front of them
//! (framing and size checks, deadlines, idle connections, load shedding).

mod accounts;
mod admin;
mod callers;
pub mod codec;
mod frames;
mod idle;
pub mod incoming;
mod observe;
mod password_reset;
mod shedding;
mod transport;

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use accounts::AccountsService;
pub use admin::AdminService;
pub use callers::{CallerLayer, caller_name};
pub use frames::MESSAGE_TOO_LARGE;
pub use observe::ObserveLayer;
pub use password_reset::PasswordResetService;
pub use shedding::SheddingLayer;
pub use transport::{TransportLayer, TransportLimits, server};

use crate::{
    security::callers::Refusal,
    service::{ServiceError, TokenProblem, spread_retry_delay},
};

/// Generated code for `rekey.v1`.
pub mod pb {
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    tonic::include_proto!("rekey.v1");

    /// Descriptor set of `rekey.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/rekey_descriptor.bin"));
}

/// `ErrorInfo.domain` of rekey's errors.
pub const ERROR_DOMAIN: &str = "rekey.dev";

/// The single translation of use-case errors to gRPC statuses. Internal
/// detail is logged here, once and with its whole chain of causes, and
/// never sent to the caller.
pub fn to_status(error: ServiceError) -> Status {
    match error {
        ServiceError::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for violation in &violations {
                details.add_bad_request_violation(violation.field, &violation.description);
            }
            let summary = violations
                .iter()
                .map(|v| format!("{} {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            Status::with_error_details(Code::InvalidArgument, summary, details)
        }
        ServiceError::Token(problem) => {
            let (code, reason, message) = match problem {
                TokenProblem::Invalid => (Code::NotFound, "TOKEN_INVALID", "unknown token"),
                TokenProblem::Expired => (
                    Code::FailedPrecondition,
                    "TOKEN_EXPIRED",
                    "token has expired",
                ),
                TokenProblem::Used => (
                    Code::FailedPrecondition,
                    "TOKEN_USED",
                    "token was already used",
                ),
                TokenProblem::Revoked => (
                    Code::FailedPrecondition,
                    "TOKEN_REVOKED",
                    "token was revoked",
                ),
            };
            with_reason(code, message, reason)
        }
        ServiceError::InvalidCredentials => with_reason(
            Code::Unauthenticated,
            "invalid email or password",
            "INVALID_CREDENTIALS",
        ),
        ServiceError::Caller(Refusal::Unauthenticated) => with_reason(
            Code::Unauthenticated,
            "send a valid API key (authorization: Bearer <key>) or client certificate",
            "API_KEY_INVALID",
        ),
        ServiceError::Caller(Refusal::MissingScope) => with_reason(
            Code::PermissionDenied,
            "this caller may not use this service",
            "API_KEY_SCOPE",
        ),
        ServiceError::Busy { retry_after } => retry_later(
            Code::ResourceExhausted,
            "too many requests in progress; retry later",
            retry_after,
        ),
        ServiceError::RateLimited {
            limit,
            description,
            retry_after,
        } => {
            let mut details = ErrorDetails::with_error_info(
                "RATE_LIMITED",
                ERROR_DOMAIN,
                HashMap::from([("limit".to_owned(), limit.to_owned())]),
            );
            details.set_retry_info(Some(retry_after));
            details.add_quota_failure_violation(limit, description);
            Status::with_error_details(
                Code::ResourceExhausted,
                "rate limit reached; retry later",
                details,
            )
        }
        ServiceError::NotFound(reason) => with_reason(Code::NotFound, "no such record", reason),
        ServiceError::FailedPrecondition(reason) => with_reason(
            Code::FailedPrecondition,
            "the record is not in a state that allows this",
            reason,
        ),
        ServiceError::NotReady { retry_after } => retry_later(
            Code::Unavailable,
            "service temporarily unavailable; retry later",
            retry_after,
        ),
        ServiceError::Unavailable(source) => {
            tracing::error!(error = format!("{source:#}"), "database unavailable");
            retry_later(
                Code::Unavailable,
                "service temporarily unavailable; retry later",
                spread_retry_delay(),
            )
        }
        ServiceError::Conflict(source) => {
            tracing::warn!(
                error = format!("{source:#}"),
                "write conflict; call refused, may be retried"
            );
            retry_later(
                Code::Unavailable,
                "the write conflicted with a concurrent one; retry",
                spread_retry_delay(),
            )
        }
        ServiceError::Internal(source) => {
            tracing::error!(error = format!("{source:#}"), "internal error");
            Status::internal("internal error")
        }
    }
}

fn with_reason(code: Code, message: &str, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

fn retry_later(code: Code, message: &str, retry_after: Duration) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

impl From<crate::domain::Purpose> for pb::Purpose {
    fn from(purpose: crate::domain::Purpose) -> Self {
        match purpose {
            crate::domain::Purpose::Reset => pb::Purpose::Reset,
            crate::domain::Purpose::SignUp => pb::Purpose::SignUp,
        }
    }
}

/// A protobuf timestamp as Unix milliseconds; the inverse of [`timestamp`].
fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

/// Unix milliseconds as a protobuf timestamp.
fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FieldError;

    #[test]
    fn field_violations_are_carried_as_bad_request() {
        let status = to_status(ServiceError::InvalidArgument(vec![FieldError::new(
            "email",
            "is required",
        )]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "email");
    }

    #[test]
    fn token_problems_carry_their_reason() {
        for (problem, code, reason) in [
            (TokenProblem::Invalid, Code::NotFound, "TOKEN_INVALID"),
            (
                TokenProblem::Expired,
                Code::FailedPrecondition,
                "TOKEN_EXPIRED",
            ),
            (TokenProblem::Used, Code::FailedPrecondition, "TOKEN_USED"),
            (
                TokenProblem::Revoked,
                Code::FailedPrecondition,
                "TOKEN_REVOKED",
            ),
        ] {
            let status = to_status(ServiceError::Token(problem));
            assert_eq!(status.code(), code);
            assert_eq!(
                status.get_error_details().error_info().unwrap().reason,
                reason
            );
        }
    }

    #[test]
    fn internal_detail_never_reaches_the_caller() {
        let status = to_status(ServiceError::Internal(anyhow::anyhow!(
            "SELECT secret FROM x"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        let status = to_status(ServiceError::Unavailable(anyhow::anyhow!(
            "pool timed out at 10.0.0.5"
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.5"));
        assert!(status.get_error_details().retry_info().is_some());
        let status = to_status(ServiceError::Conflict(anyhow::anyhow!(
            "deadlock detected on rate_limits"
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("rate_limits"));
        assert!(status.get_error_details().retry_info().is_some());
    }

    #[test]
    fn busy_carries_retry_info() {
        let status = to_status(ServiceError::Busy {
            retry_after: Duration::from_secs(2),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn timestamps_convert_from_millis() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(millis(&ts), 1_700_000_000_123);
    }
}
