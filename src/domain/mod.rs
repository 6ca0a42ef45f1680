//! Parse-don't-validate types. Each constructor either returns a value that is
//! valid for the rest of the program or a [`FieldError`] naming the problem.
//! Nothing here depends on another module of rekey.

mod client;
pub mod clock;
mod display_name;
mod email;
mod locale;
pub mod password;
mod purpose;
mod rate_limit;
mod request_state;
mod reset_url;
mod token;

pub use client::ClientContext;
pub use clock::{AdjustableClock, Clock, SystemClock};
pub use display_name::DisplayName;
pub use email::{EmailAddress, mask};
pub use locale::Locale;
pub use password::{NewPassword, Password, PasswordPolicy};
pub use purpose::Purpose;
pub use rate_limit::RateLimit;
pub use request_state::RequestState;
pub use reset_url::{ResetUrl, ResetUrlAllowList};
pub use token::{Token, TokenDigest};

/// Why one input field was rejected. `field` is the request field's name, so
/// callers can show the message beside the right input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {description}")]
pub struct FieldError {
    pub field: &'static str,
    pub description: String,
}

impl FieldError {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}
