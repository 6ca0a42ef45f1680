use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::FieldError;

/// Length rules of NIST SP 800-63B: a configurable minimum, a hard maximum
/// checked before any hashing, and no composition rules.
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    pub min_chars: usize,
}

/// Upper bound on password length, enforced before hashing so that a huge
/// input cannot buy a long hash.
pub const MAX_PASSWORD_CHARS: usize = 128;

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_chars: 12 }
    }
}

/// A new password that meets the policy. The plaintext is only reachable
/// through [`Password::expose`]; Debug prints nothing of it.
pub struct Password(SecretString);

impl Password {
    pub fn parse(
        field: &'static str,
        raw: String,
        policy: &PasswordPolicy,
    ) -> Result<Self, FieldError> {
        let chars = raw.chars().count();
        if chars > MAX_PASSWORD_CHARS {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if chars < policy.min_chars {
            return Err(FieldError::new(
                field,
                format!("must be at least {} characters", policy.min_chars),
            ));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy::default()
    }

    #[test]
    fn the_limits_are_inclusive() {
        assert!(Password::parse("p", "a".repeat(12), &policy()).is_ok());
        assert!(Password::parse("p", "a".repeat(128), &policy()).is_ok());
        assert!(Password::parse("p", "a".repeat(11), &policy()).is_err());
        assert!(Password::parse("p", "a".repeat(129), &policy()).is_err());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(Password::parse("p", "ü".repeat(128), &policy()).is_ok());
        assert!(Password::parse("p", "ü".repeat(129), &policy()).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let password = Password::parse("p", "correct horse battery".into(), &policy()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }

    proptest! {
        #[test]
        fn accepted_iff_within_bounds(len in 0usize..200) {
            let accepted = Password::parse("p", "x".repeat(len), &policy()).is_ok();
            prop_assert_eq!(accepted, (12..=128).contains(&len));
        }
    }
}
