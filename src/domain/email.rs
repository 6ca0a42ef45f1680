use std::{fmt, str::FromStr};

use super::FieldError;

/// A syntactically valid email address, normalized (trimmed, lower-cased) so
/// that one mailbox maps to one account.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// RFC 5321 limits a forward path to 254 characters.
const MAX_LEN: usize = 254;

impl EmailAddress {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let normalized = raw.trim().to_lowercase();
        if normalized.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        if normalized.chars().count() > MAX_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_LEN} characters"),
            ));
        }
        let parsed = email_address::EmailAddress::from_str(&normalized)
            .map_err(|_| FieldError::new(field, "is not a valid email address"))?;
        // Quoted local parts, display names and domain literals are valid
        // RFC 5322 but not something we mail password links to.
        let (local, domain) = normalized.rsplit_once('@').unwrap_or_default();
        if parsed.as_str() != normalized || !is_dot_atom(local) || !is_host_name(domain) {
            return Err(FieldError::new(field, "is not a valid email address"));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Masked form for logs and for `VerifyToken`: "j***@example.com".
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// RFC 5322 dot-atom: atext runs separated by single dots.
fn is_dot_atom(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";
    local.split('.').all(|run| {
        !run.is_empty()
            && run
                .chars()
                .all(|c| c.is_alphanumeric() || SPECIALS.contains(c))
    })
}

/// At least two dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Masks the local part of an address, keeping its first character.
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Debug shows the masked form, so an address never reaches a log unmasked by accident.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_addresses_are_normalized() {
        let email = EmailAddress::parse("email", "  Jane.Doe@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "jane.doe@example.com");
    }

    #[test]
    fn invalid_addresses_are_rejected() {
        for raw in [
            "",
            "   ",
            "plain",
            "@example.com",
            "jane@",
            "jane@localhost",
            "Jane <jane@example.com>",
            "jane@[127.0.0.1]",
            "a b@example.com",
            "\"quoted\"@example.com",
            "a..b@example.com",
            "jane@-example.com",
            "jane@example..com",
        ] {
            let err = EmailAddress::parse("email", raw).unwrap_err();
            assert_eq!(err.field, "email", "{raw:?}");
        }
    }

    #[test]
    fn overlong_addresses_are_rejected() {
        let raw = format!("{}@example.com", "a".repeat(250));
        let err = EmailAddress::parse("email", &raw).unwrap_err();
        assert!(err.description.contains("254"));
    }

    #[test]
    fn masking_keeps_first_character_and_domain() {
        let email = EmailAddress::parse("email", "jane@example.com").unwrap();
        assert_eq!(email.masked(), "j***@example.com");
        assert_eq!(format!("{email:?}"), "EmailAddress(j***@example.com)");
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in ".{0,300}") {
            let _ = EmailAddress::parse("email", &raw);
        }

        #[test]
        fn masked_form_never_contains_the_local_part(local in "[a-z]{2,20}", domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let email = EmailAddress::parse("email", &format!("{local}@{domain}")).unwrap();
            let masked = email.masked();
            let expected = format!("{}***", &local[..1]);
            prop_assert_eq!(masked.split('@').next(), Some(expected.as_str()));
            let suffix = format!("@{}", domain);
            prop_assert!(masked.ends_with(&suffix));
        }
    }
}
