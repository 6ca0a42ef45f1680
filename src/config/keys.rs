//! Which keys the settings know, and what to say about one they do not.
//!
//! The known keys are read from `RawSettings`' own `Deserialize` impl (the
//! field list serde's derive passes to `deserialize_struct`), so adding a
//! field to `RawSettings` is all it takes for its TOML key and its
//! `REKEY_*` variable to be accepted.

use std::fmt;

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::Env,
    value::{Dict, Map},
};
use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

/// How the environment layer calls itself; [`Environment`]'s metadata.
const ENV_SOURCE: &str = "REKEY_* environment variables";

/// The variable for `key`: `reset_url` is `REKEY_RESET_URL`.
pub(super) fn env_var(key: &str) -> String {
    format!("REKEY_{}", key.to_ascii_uppercase())
}

/// The `REKEY_*` environment variables, whose errors name the variable
/// (`REKEY_RESET_TOKEN_TTL`) rather than a figment key path.
pub(super) struct Environment(pub Env);

impl Provider for Environment {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE)
            .interpolater(|_: &Profile, keys: &[&str]| env_var(&keys.join(".")))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// The name an operator knows a key by, given where its value came from:
/// `REKEY_LISTEN` from the environment, `listen in /etc/rekey.toml` from a
/// file, the bare key otherwise (a figment built in code).
pub(super) fn display_name(metadata: Option<&Metadata>, key: &str) -> String {
    match metadata {
        Some(metadata) if metadata.name == ENV_SOURCE => env_var(key),
        Some(Metadata {
            source: Some(figment::Source::File(file)),
            ..
        }) => format!("{key} in {}", file.display()),
        _ => key.to_owned(),
    }
}

/// The fields `T` deserializes, as its derived `Deserialize` lists them.
/// Empty for anything but a plain struct (a `flatten` field makes serde
/// deserialize a map instead, and the list would be lost: a unit test
/// guards against that).
pub(super) fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // Always an error: the introspector records the field list and stops.
    let _stopped = T::deserialize(Introspect(&mut fields));
    fields
}

/// A deserializer that only records the field list of a struct.
struct Introspect<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Introspect<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only a struct's fields are introspected"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The known key closest to `unknown`, if one is close enough to be a
/// plausible typo or near miss (`reset_urls` → `reset_url`).
pub(super) fn closest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|key| (strsim::jaro_winkler(&unknown, key), *key))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, key)| key)
}

/// A key no setting reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    /// As the operator wrote it: `REKEY_RESET_URLS` or `reset_urls in FILE`.
    pub name: String,
    /// What they probably meant, named the same way.
    pub hint: Option<String>,
}

impl fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: unknown setting", self.name)?;
        match &self.hint {
            Some(hint) => write!(f, "; {hint}"),
            None => Ok(()),
        }
    }
}

/// Each of the top-level `keys` of `figment` that `known` does not list,
/// named after its source, with the closest known name when there is one.
/// `secret_files` are the settings that also have a `REKEY_<NAME>_FILE`.
pub(super) fn unknown_keys<'k>(
    figment: &Figment,
    keys: impl Iterator<Item = &'k String>,
    known: &[&str],
    secret_files: &[&str],
) -> Vec<UnknownSetting> {
    keys.filter(|key| !known.contains(&key.as_str()))
        .map(|key| {
            let metadata = figment.find_metadata(key);
            let from_env = metadata.is_some_and(|m| m.name == ENV_SOURCE);
            let stem = key
                .strip_suffix("_file")
                .filter(|stem| known.contains(stem));
            let hint = match stem {
                Some(stem) if from_env => Some(format!(
                    "only secrets are read from files ({}); set {} instead",
                    secret_files
                        .iter()
                        .map(|s| format!("{}_FILE", env_var(s)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    env_var(stem)
                )),
                _ => closest(key, known)
                    .map(|near| format!("did you mean {}?", display_key(from_env, near))),
            };
            UnknownSetting {
                name: display_name(metadata, key),
                hint,
            }
        })
        .collect()
}

fn display_key(from_env: bool, key: &str) -> String {
    if from_env {
        env_var(key)
    } else {
        key.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &[
        "listen",
        "database_url",
        "smtp_url",
        "smtp_timeout",
        "mail_dir",
        "mail_from",
        "mail_reply_to",
        "reset_url",
        "allowed_reset_urls",
        "reset_token_ttl",
        "signup_token_ttl",
        "password_min_chars",
        "argon2_memory_kib",
        "argon2_iterations",
        "argon2_parallelism",
        "hash_concurrency",
        "hash_queue_depth",
        "mail_poll_interval",
        "mail_max_attempts",
        "mail_batch_size",
        "mail_lease",
        "mail_send_concurrency",
        "health_check_interval",
        "shutdown_grace",
        "log_format",
    ];

    #[test]
    fn near_misses_get_the_closest_name() {
        for (typo, meant) in [
            ("reset_urls", "reset_url"),
            ("RESET_URLS", "reset_url"),
            ("smtp_uri", "smtp_url"),
            ("databse_url", "database_url"),
            ("database", "database_url"),
            ("listen_addr", "listen"),
            ("password_min_length", "password_min_chars"),
            ("argon2_memory", "argon2_memory_kib"),
            ("mail_from_address", "mail_from"),
            ("signup_ttl", "signup_token_ttl"),
            ("allowed_reset_url", "allowed_reset_urls"),
        ] {
            assert_eq!(closest(typo, KNOWN), Some(meant), "{typo}");
        }
    }

    #[test]
    fn unrelated_names_get_no_suggestion() {
        for name in [
            "foo",
            "api_keys",
            "tls_cert_file",
            "port",
            "x",
            "debug",
            "log_level",
            "tls",
            "smtp_password",
            "timeout",
            "max_message_size",
            "request_timeout",
            "allow_insecure",
        ] {
            assert_eq!(closest(name, KNOWN), None, "{name}");
        }
    }

    #[test]
    fn a_struct_lists_its_fields() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Two {
            one: u8,
            #[serde(rename = "second")]
            two: u8,
        }
        assert_eq!(fields_of::<Two>(), ["one", "second"]);
    }
}
