use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};

/// 256 bits of OS randomness.
const TOKEN_BYTES: usize = 32;

/// A secret token as mailed in a link: 32 random bytes, base64url without
/// padding. Only its [`TokenDigest`] is ever stored.
pub struct Token(String);

/// The SHA-256 of a token's text, hex-encoded. Safe to store and index: it
/// cannot be turned back into a usable link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest(String);

impl Token {
    /// Mints a token from the operating system's CSPRNG.
    pub fn mint() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Accepts only the exact shape `mint` produces; anything else cannot be
    /// a token of ours.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        match URL_SAFE_NO_PAD.decode(raw) {
            Ok(bytes) if bytes.len() == TOKEN_BYTES => Some(Self(raw.to_owned())),
            _ => None,
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest(hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl TokenDigest {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_256_bits_of_base64url() {
        let token = Token::mint().unwrap();
        assert_eq!(token.expose().len(), 43);
        assert!(
            token
                .expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert!(Token::parse(token.expose()).is_some());
    }

    #[test]
    fn minted_tokens_differ() {
        let a = Token::mint().unwrap();
        let b = Token::mint().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn digest_is_sha256_hex_and_hides_the_token() {
        let token = Token::mint().unwrap();
        let digest = token.digest();
        assert_eq!(digest.as_str().len(), 64);
        assert!(!digest.as_str().contains(token.expose()));
        assert_eq!(Token::parse(token.expose()).unwrap().digest(), digest);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for raw in ["", "abc", "!!!!", &"A".repeat(44), &"A".repeat(42)] {
            assert!(Token::parse(raw).is_none(), "{raw}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = Token::mint().unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
