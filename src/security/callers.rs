//! Who may call what: API keys (`authorization: Bearer <secret>`) and mTLS
//! client certificates (their subject CN), each with scopes. Keys are kept
//! as SHA-256 digests and compared in constant time; a key's secret never
//! leaves this module.

use std::{collections::HashMap, fmt};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest secret accepted for an API key.
pub const MIN_SECRET_CHARS: usize = 32;

/// What a caller may use: `reset` covers `PasswordReset`, `auth` covers
/// `Accounts`, `admin` covers `Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Reset,
    Auth,
    Admin,
}

impl Scope {
    fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "reset" => Some(Scope::Reset),
            "auth" => Some(Scope::Auth),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The scope a gRPC method path needs; `None` for open services
    /// (health, reflection).
    pub fn required_for(path: &str) -> Option<Self> {
        let service = path.trim_start_matches('/').split('/').next()?;
        match service {
            "rekey.v1.PasswordReset" => Some(Scope::Reset),
            "rekey.v1.Accounts" => Some(Scope::Auth),
            "rekey.v1.Admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A set of scopes, written `reset+auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn parse(raw: &str) -> Result<Self, CallerConfigError> {
        let mut scopes = Vec::new();
        for part in raw.split('+') {
            let scope = Scope::parse(part)
                .ok_or_else(|| CallerConfigError::UnknownScope(part.trim().to_owned()))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(Self(scopes))
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }
}

/// A configuration of callers that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallerConfigError {
    #[error("an entry is not name:scopes:secret")]
    Shape,
    #[error("unknown scope {0:?}; use reset, auth or admin, joined with +")]
    UnknownScope(String),
    #[error("the secret of key {0:?} is shorter than {MIN_SECRET_CHARS} characters")]
    ShortSecret(String),
    #[error("key name {0:?} is used twice")]
    DuplicateName(String),
    #[error("an entry is not CN=scopes")]
    ClientShape,
}

/// One API key: a name for logs and audit, its scopes, and the digest of
/// its secret.
#[derive(Clone)]
struct ApiKey {
    name: String,
    scopes: Scopes,
    digest: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}, {:?})", self.name, self.scopes)
    }
}

/// A caller that proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API key's name or the client certificate's CN.
    pub name: String,
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials, or credentials we do not know.
    Unauthenticated,
    /// A known caller without the scope the method needs.
    MissingScope,
}

/// The callers rekey knows. Empty means caller authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    keys: Vec<ApiKey>,
    certificates: HashMap<String, Scopes>,
    mutual_tls: bool,
}

impl Callers {
    /// Parses `name:scopes:secret` entries, separated by commas or lines.
    pub fn with_api_keys(mut self, entries: &SecretString) -> Result<Self, CallerConfigError> {
        for entry in entries
            .expose_secret()
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
        {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(scopes), Some(secret)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(CallerConfigError::Shape);
            };
            let name = name.trim().to_owned();
            if name.is_empty() {
                return Err(CallerConfigError::Shape);
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(CallerConfigError::ShortSecret(name));
            }
            if self.keys.iter().any(|k| k.name == name) {
                return Err(CallerConfigError::DuplicateName(name));
            }
            self.keys.push(ApiKey {
                scopes: Scopes::parse(scopes)?,
                digest: Sha256::digest(secret.as_bytes()).into(),
                name,
            });
        }
        Ok(self)
    }

    /// Requires client certificates and maps their CNs to scopes
    /// (`billing=reset+auth,ops=admin`).
    pub fn with_client_certificates(mut self, raw: &str) -> Result<Self, CallerConfigError> {
        self.mutual_tls = true;
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (cn, scopes) = entry
                .split_once('=')
                .ok_or(CallerConfigError::ClientShape)?;
            self.certificates
                .insert(cn.trim().to_owned(), Scopes::parse(scopes)?);
        }
        Ok(self)
    }

    /// True when calls must name a caller.
    pub fn required(&self) -> bool {
        !self.keys.is_empty() || self.mutual_tls
    }

    /// Names of the configured keys, for the start-up log.
    pub fn key_names(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.name.as_str()).collect()
    }

    /// Decides a call to `path`. A bearer token, when sent, must be a known
    /// key; otherwise the client certificate's CN names the caller.
    /// `Ok(None)`: an open method, or authentication is off.
    pub fn authorize(
        &self,
        path: &str,
        bearer: Option<&str>,
        certificate_cn: Option<&str>,
    ) -> Result<Option<Caller>, Refusal> {
        let Some(needed) = Scope::required_for(path) else {
            return Ok(None);
        };
        if !self.required() {
            return Ok(None);
        }
        let (name, scopes) = match (bearer, certificate_cn) {
            (Some(secret), _) => {
                let key = self.key_for(secret).ok_or(Refusal::Unauthenticated)?;
                (key.name.clone(), &key.scopes)
            }
            (None, Some(cn)) if self.mutual_tls => {
                let scopes = self.certificates.get(cn).ok_or(Refusal::MissingScope)?;
                (cn.to_owned(), scopes)
            }
            (None, _) => return Err(Refusal::Unauthenticated),
        };
        if scopes.contains(needed) {
            Ok(Some(Caller { name }))
        } else {
            Err(Refusal::MissingScope)
        }
    }

    /// Compares the secret's digest with every key's, without stopping at
    /// a match, so timing tells nothing about which key or how much matched.
    fn key_for(&self, secret: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "web-secret-0123456789abcdef0123456789";
    const OPS: &str = "ops-secret-0123456789abcdef0123456789";

    fn callers() -> Callers {
        Callers::default()
            .with_api_keys(&SecretString::from(format!(
                "web:reset+auth:{WEB},\nops:admin:{OPS}"
            )))
            .unwrap()
    }

    #[test]
    fn keys_grant_their_scopes_only() {
        let callers = callers();
        let reset = "/rekey.v1.PasswordReset/SignUp";
        let auth = "/rekey.v1.Accounts/Authenticate";
        assert_eq!(
            callers.authorize(reset, Some(WEB), None),
            Ok(Some(Caller { name: "web".into() }))
        );
        assert!(callers.authorize(auth, Some(WEB), None).is_ok());
        assert_eq!(
            callers.authorize(reset, Some(OPS), None),
            Err(Refusal::MissingScope)
        );
        assert_eq!(
            callers.authorize(reset, Some("wrong"), None),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            callers.authorize(reset, None, None),
            Err(Refusal::Unauthenticated)
        );
    }

    #[test]
    fn health_and_reflection_stay_open() {
        let callers = callers();
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(callers.authorize(path, None, None), Ok(None));
        }
    }

    #[test]
    fn without_callers_everything_is_open() {
        let open = Callers::default();
        assert!(!open.required());
        assert_eq!(
            open.authorize("/rekey.v1.Accounts/Authenticate", None, None),
            Ok(None)
        );
    }

    #[test]
    fn certificates_name_callers_by_cn() {
        let callers = Callers::default()
            .with_client_certificates("billing=reset+auth, ops=admin")
            .unwrap();
        let auth = "/rekey.v1.Accounts/Authenticate";
        assert_eq!(
            callers.authorize(auth, None, Some("billing")),
            Ok(Some(Caller {
                name: "billing".into()
            }))
        );
        assert_eq!(
            callers.authorize(auth, None, Some("ops")),
            Err(Refusal::MissingScope)
        );
        assert_eq!(
            callers.authorize(auth, None, Some("stranger")),
            Err(Refusal::MissingScope)
        );
        assert_eq!(
            callers.authorize(auth, None, None),
            Err(Refusal::Unauthenticated)
        );
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_secrets() {
        for (entries, expected) in [
            (
                "web:reset:short",
                CallerConfigError::ShortSecret("web".into()),
            ),
            ("web:reset", CallerConfigError::Shape),
            (
                &format!("web:root:{WEB}") as &str,
                CallerConfigError::UnknownScope("root".into()),
            ),
            (
                &format!("web:reset:{WEB},web:auth:{OPS}"),
                CallerConfigError::DuplicateName("web".into()),
            ),
        ] {
            let error = Callers::default()
                .with_api_keys(&SecretString::from(entries))
                .unwrap_err();
            assert_eq!(error, expected);
            assert!(!error.to_string().contains("secret-"), "{error}");
        }
    }
}
