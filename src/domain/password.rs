use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

use super::FieldError;

/// The password policy of NIST SP 800-63B: a configurable minimum length, a
/// hard maximum checked before any hashing, no composition rules, and a
/// refusal of guessable passwords (zxcvbn).
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    /// Fewest code points, after NFKC normalization.
    pub min_length: usize,
    /// Lowest zxcvbn score (0–4) accepted; 0 accepts every password.
    pub min_score: u8,
}

/// Upper bound on password length in code points, enforced before hashing
/// so that a huge input cannot buy a long hash.
pub const MAX_PASSWORD_CHARS: usize = 128;

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            min_score: 3,
        }
    }
}

/// The form a password is hashed and checked in: NFKC, so the same
/// passphrase typed on two keyboards (fullwidth letters, composed or
/// decomposed accents, ligatures) is the same password.
pub fn normalize(raw: &str) -> SecretString {
    SecretString::from(raw.nfkc().collect::<String>())
}

/// A new password, normalized and within the length rules, whose
/// guessability is not checked yet: that needs the account's email and
/// name, see [`NewPassword::accept`].
pub struct NewPassword {
    field: &'static str,
    normalized: SecretString,
}

impl NewPassword {
    /// Normalizes `raw` (NFKC) and checks its length in code points. `raw`
    /// is wiped from memory when dropped.
    pub fn parse(
        field: &'static str,
        raw: String,
        policy: &PasswordPolicy,
    ) -> Result<Self, FieldError> {
        let normalized = normalize(SecretString::from(raw).expose_secret());
        let chars = normalized.expose_secret().chars().count();
        if chars > MAX_PASSWORD_CHARS {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if chars < policy.min_length {
            return Err(FieldError::new(
                field,
                format!("must be at least {} characters", policy.min_length),
            ));
        }
        Ok(Self { field, normalized })
    }

    /// Refuses a password that zxcvbn scores below the policy, given what
    /// an attacker knows of the user (`personal`: see [`personal_words`]).
    /// The reason is zxcvbn's fixed feedback text, never the password.
    pub fn accept(
        self,
        policy: &PasswordPolicy,
        personal: &[String],
    ) -> Result<Password, FieldError> {
        if policy.min_score == 0 {
            return Ok(Password(self.normalized));
        }
        let password = self.normalized.expose_secret();
        let inputs: Vec<&str> = personal.iter().map(String::as_str).collect();
        let estimate = zxcvbn::zxcvbn(password, &inputs);
        if u8::from(estimate.score()) >= policy.min_score {
            return Ok(Password(self.normalized));
        }
        let mut reasons = Vec::new();
        let lower = password.to_lowercase();
        if personal
            .iter()
            .any(|word| word.chars().count() >= 4 && lower.contains(word.as_str()))
        {
            reasons.push("It contains your name or email address.".to_owned());
        }
        match estimate.feedback() {
            Some(feedback) => {
                reasons.extend(feedback.warning().map(|w| w.to_string()));
                reasons.extend(feedback.suggestions().iter().map(ToString::to_string));
            }
            // zxcvbn gives feedback only up to score 2; a stricter policy
            // still needs a reason.
            None => reasons.push(zxcvbn::feedback::Suggestion::AddAnotherWordOrTwo.to_string()),
        }
        Err(FieldError::new(
            self.field,
            format!("is too easy to guess. {}", reasons.join(" ")),
        ))
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(<redacted>)")
    }
}

/// A new password that meets the whole policy, in normalized form. The
/// plaintext is only reachable through [`Password::expose`]; Debug prints
/// nothing of it.
pub struct Password(SecretString);

impl Password {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What an attacker would try first for this user: the email's local part
/// and domain, the display name, and the words within each, lower-cased
/// (zxcvbn matches user inputs case-insensitively).
pub fn personal_words(email: &str, display_name: &str) -> Vec<String> {
    let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    // The top-level label ("com") says nothing about the user.
    let named = domain
        .rsplit_once('.')
        .map_or(domain, |(named, _tld)| named);
    let mut words = Vec::new();
    for (whole, parts) in [
        (local, local),
        (domain, named),
        (display_name, display_name),
    ] {
        let whole = whole.trim().to_lowercase();
        words.extend(
            parts
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 2 && *w != whole)
                .map(str::to_owned),
        );
        if !whole.is_empty() {
            words.push(whole);
        }
    }
    // Compact forms too: "Jane Doe" is typed as "janedoe".
    let compact: String = display_name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect();
    words.push(compact);
    words.retain(|w| !w.is_empty());
    words.sort();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy::default()
    }

    fn lengths_only() -> PasswordPolicy {
        PasswordPolicy {
            min_score: 0,
            ..policy()
        }
    }

    fn accepted(
        raw: &str,
        policy: &PasswordPolicy,
        personal: &[String],
    ) -> Result<Password, FieldError> {
        NewPassword::parse("p", raw.to_owned(), policy)?.accept(policy, personal)
    }

    #[test]
    fn the_limits_are_inclusive() {
        let policy = lengths_only();
        assert!(NewPassword::parse("p", "a".repeat(12), &policy).is_ok());
        assert!(NewPassword::parse("p", "a".repeat(128), &policy).is_ok());
        assert!(NewPassword::parse("p", "a".repeat(11), &policy).is_err());
        assert!(NewPassword::parse("p", "a".repeat(129), &policy).is_err());
    }

    #[test]
    fn length_counts_code_points_not_bytes() {
        let policy = lengths_only();
        assert!(NewPassword::parse("p", "ü".repeat(128), &policy).is_ok());
        assert!(NewPassword::parse("p", "ü".repeat(129), &policy).is_err());
        // Twelve code points of three and four bytes each.
        assert!(NewPassword::parse("p", "日本語🔑".repeat(3), &policy).is_ok());
        assert!(NewPassword::parse("p", "日本語🔑".repeat(3)[3..].to_owned(), &policy).is_err());
    }

    #[test]
    fn length_is_counted_after_nfkc() {
        let policy = lengths_only();
        // A decomposed "ü" is two code points, one after normalization.
        let decomposed = "u\u{308}".repeat(7);
        assert_eq!(decomposed.chars().count(), 14);
        assert!(NewPassword::parse("p", decomposed, &policy).is_err());
        // The "ﬃ" ligature is one code point, three after normalization.
        assert!(NewPassword::parse("p", "\u{FB03}".repeat(4), &policy).is_ok());
    }

    #[test]
    fn forms_of_one_passphrase_normalize_alike() {
        let fullwidth = "ｍｙ　ｆａｖｏｕｒｉｔｅ　ｃａｆé";
        let decomposed = "my favourite cafe\u{301}";
        let composed = "my favourite caf\u{e9}";
        for form in [fullwidth, decomposed] {
            assert_eq!(normalize(form).expose_secret(), composed);
        }
        let password = accepted(decomposed, &lengths_only(), &[]).unwrap();
        assert_eq!(password.expose(), composed);
    }

    #[test]
    fn guessable_passwords_are_refused_with_zxcvbn_feedback() {
        for weak in [
            "password1234",
            "qwertyuiopasdf",
            "aaaaaaaaaaaaaaaa",
            "iloveyou2024!",
        ] {
            let err = accepted(weak, &policy(), &[]).unwrap_err();
            assert_eq!(err.field, "p");
            assert!(
                err.description.starts_with("is too easy to guess. "),
                "{}",
                err.description
            );
            assert!(err.description.len() > "is too easy to guess. ".len());
            assert!(!err.description.to_lowercase().contains(weak), "{weak}");
        }
    }

    #[test]
    fn a_long_uncommon_passphrase_is_accepted() {
        assert!(accepted("vivid otter juggles seven lanterns", &policy(), &[]).is_ok());
    }

    #[test]
    fn the_users_own_name_and_address_count_against_a_password() {
        let personal = personal_words("jane.whitfield@northwind-trading.example", "Jane Whitfield");
        let password = "whitfieldnorthwind";
        assert!(accepted(password, &policy(), &[]).is_ok());
        let err = accepted(password, &policy(), &personal).unwrap_err();
        assert!(
            err.description.contains("your name or email address"),
            "{}",
            err.description
        );
        assert!(
            !err.description.contains("whitfield"),
            "{}",
            err.description
        );
    }

    #[test]
    fn personal_words_split_the_address_and_the_name() {
        let words = personal_words("jane.doe@example.com", "Jane Doe");
        for expected in [
            "jane.doe",
            "jane",
            "doe",
            "example.com",
            "example",
            "jane doe",
            "janedoe",
        ] {
            assert!(words.iter().any(|w| w == expected), "{expected}: {words:?}");
        }
        assert!(!words.iter().any(|w| w == "com"), "{words:?}");
    }

    #[test]
    fn a_score_of_zero_turns_the_check_off() {
        let policy = PasswordPolicy {
            min_score: 0,
            ..policy()
        };
        assert!(accepted("password1234", &policy, &[]).is_ok());
    }

    #[test]
    fn a_strict_policy_still_gives_a_reason() {
        let policy = PasswordPolicy {
            min_score: 4,
            ..policy()
        };
        // zxcvbn scores this 3 and gives no feedback of its own.
        let password = "whatever the password";
        assert_eq!(u8::from(zxcvbn::zxcvbn(password, &[]).score()), 3);
        let err = accepted(password, &policy, &[]).unwrap_err();
        assert!(
            err.description.contains("Add another word"),
            "{}",
            err.description
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let new = NewPassword::parse("p", "correct horse battery".into(), &policy()).unwrap();
        assert!(!format!("{new:?}").contains("horse"));
        let password = new.accept(&lengths_only(), &[]).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }

    proptest! {
        #[test]
        fn accepted_iff_within_bounds(len in 0usize..200) {
            let accepted = NewPassword::parse("p", "x".repeat(len), &lengths_only()).is_ok();
            prop_assert_eq!(accepted, (12..=128).contains(&len));
        }

        #[test]
        fn normalizing_is_idempotent(raw in ".{0,40}") {
            let once = normalize(&raw);
            let twice = normalize(once.expose_secret());
            prop_assert_eq!(once.expose_secret(), twice.expose_secret());
        }
    }
}
