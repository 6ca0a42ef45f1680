use std::{fmt, str::FromStr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};

use super::FieldError;

/// A syntactically valid email address, normalized so that one mailbox maps
/// to one account: trimmed, lower-cased, the local part in NFC and the
/// domain in its ASCII (punycode) form, so `jane@bücher.example` and
/// `jane@xn--bcher-kva.example` are the same address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// RFC 5321 limits, in octets: a path of 256 less its angle brackets, a
/// local part, a domain and one of its labels.
const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl EmailAddress {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        let too_long = |what: &str, max: usize| {
            FieldError::new(field, format!("{what} must be at most {max} bytes long"))
        };
        // Bounds the normalizing below; the exact limit is checked after it.
        if trimmed.len() > 4 * MAX_LEN {
            return Err(too_long("the address", MAX_LEN));
        }
        let invalid = || FieldError::new(field, "is not a valid email address");
        let (local, domain) = trimmed.rsplit_once('@').ok_or_else(invalid)?;
        let local: String = local.to_lowercase().nfc().collect();
        let domain = ascii_domain(domain).ok_or_else(invalid)?;
        let normalized = format!("{local}@{domain}");
        if normalized.len() > MAX_LEN {
            return Err(too_long("the address", MAX_LEN));
        }
        if local.len() > MAX_LOCAL_LEN {
            return Err(too_long("the part before @", MAX_LOCAL_LEN));
        }
        if domain.len() > MAX_DOMAIN_LEN {
            return Err(too_long("the domain", MAX_DOMAIN_LEN));
        }
        let parsed = email_address::EmailAddress::from_str(&normalized).map_err(|_| invalid())?;
        // Quoted local parts, display names and domain literals are valid
        // RFC 5322 but not something we mail password links to.
        if parsed.as_str() != normalized || !is_dot_atom(&local) || !is_host_name(&domain) {
            return Err(invalid());
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

/// The domain in lower-case ASCII: IDNA (UTS #46) maps and punycodes a
/// Unicode domain, and checks the labels of one that is already punycode.
fn ascii_domain(domain: &str) -> Option<String> {
    Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .ok()
        .map(|ascii| ascii.into_owned())
}

/// RFC 5322 dot-atom: atext runs separated by single dots. Beyond ASCII
/// (RFC 6531), letters, digits and combining marks.
fn is_dot_atom(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";
    local.split('.').all(|run| {
        !run.is_empty()
            && run.chars().all(|c| {
                c.is_alphanumeric()
                    || SPECIALS.contains(c)
                    || (!c.is_ascii() && is_combining_mark(c))
            })
    })
}

/// At least two dot-separated labels of ASCII letters, digits and inner
/// hyphens (after IDNA, a Unicode label is an `xn--` one).
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=MAX_LABEL_LEN).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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
    fn unicode_domains_become_punycode() {
        for raw in [
            "jane@bücher.example",
            "Jane@BÜCHER.example",
            "jane@xn--bcher-kva.example",
            "jane@XN--BCHER-KVA.EXAMPLE",
            // Decomposed "ü", and an ideographic full stop.
            "jane@bu\u{308}cher\u{3002}example",
        ] {
            let email = EmailAddress::parse("email", raw).unwrap();
            assert_eq!(email.as_str(), "jane@xn--bcher-kva.example", "{raw:?}");
        }
    }

    #[test]
    fn local_parts_are_nfc() {
        let composed = EmailAddress::parse("email", "jos\u{e9}@example.com").unwrap();
        let decomposed = EmailAddress::parse("email", "jose\u{301}@example.com").unwrap();
        let upper = EmailAddress::parse("email", "JOSE\u{301}@example.com").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed, upper);
        assert_eq!(composed.as_str(), "jos\u{e9}@example.com");
    }

    #[test]
    fn domains_invalid_under_idna_are_rejected() {
        for raw in [
            "jane@xn--.example",
            "jane@exa\u{0}mple.com",
            "jane@exa mple.com",
            "jane@exam_ple.com",
            "jane@\u{301}a.example",
        ] {
            assert!(EmailAddress::parse("email", raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn limits_count_octets() {
        // 64 octets of local part pass; 32 two-octet letters are 64 octets too.
        let at = |local: &str| EmailAddress::parse("email", &format!("{local}@example.com"));
        assert!(at(&"a".repeat(64)).is_ok());
        assert!(at(&"é".repeat(32)).is_ok());
        let err = at(&"é".repeat(33)).unwrap_err();
        assert!(err.description.contains("64"), "{}", err.description);
        let err = at(&"a".repeat(65)).unwrap_err();
        assert!(err.description.contains("64"), "{}", err.description);
        // A label of 63 octets, not 64; a Unicode label counts as its punycode.
        let label = |label: &str| EmailAddress::parse("email", &format!("jane@{label}.example"));
        assert!(label(&"a".repeat(63)).is_ok());
        assert!(label(&"a".repeat(64)).is_err());
        assert!(label(&"ü".repeat(40)).is_ok_and(|e| e.as_str().len() <= 254));
        assert!(
            label(&"ü".repeat(60)).is_err(),
            "its punycode is over 63 octets"
        );
        // The whole address: at most 254 octets.
        let domain = format!("{0}.{0}.{0}.d", "c".repeat(63));
        assert_eq!(domain.len(), 193);
        let fits = format!("{}@{domain}", "j".repeat(60));
        assert_eq!(fits.len(), 254);
        assert!(EmailAddress::parse("email", &fits).is_ok());
        let over = format!("{}@{domain}", "j".repeat(61));
        let err = EmailAddress::parse("email", &over).unwrap_err();
        assert!(err.description.contains("254"), "{}", err.description);
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
        fn normalizing_is_idempotent(raw in "[a-zA-Zéü\u{301}.]{1,12}@[a-zA-Zü\u{308}-]{1,12}\\.[a-z]{2,5}") {
            if let Ok(once) = EmailAddress::parse("email", &raw) {
                let twice = EmailAddress::parse("email", once.as_str()).unwrap();
                prop_assert_eq!(once, twice);
            }
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
