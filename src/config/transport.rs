//! The transport's and the database pool's limits: what a connection, a
//! call and a message may take.

use super::{ConfigError, check::invalid, raw::RawSettings};
use crate::{grpc::TransportLimits, store::PoolOptions};

/// The transport's limits. Keep-alive pings must come more often than the
/// idle timeout, or a healthy but quiet client would be dropped.
pub(super) fn transport(raw: &RawSettings) -> Result<TransportLimits, ConfigError> {
    let max_message_size = byte_size(&raw.max_message_size)
        .filter(|size| (1024..=4 * 1024 * 1024).contains(size))
        .ok_or_else(|| {
            invalid(
                "REKEY_MAX_MESSAGE_SIZE",
                format!(
                    "{:?} is not a size between 1KiB and 4MiB; use e.g. 16KiB, 1MiB or 16384",
                    raw.max_message_size
                ),
            )
        })?;
    for (name, value) in [
        ("REKEY_REQUEST_TIMEOUT", raw.request_timeout),
        ("REKEY_CONNECTION_IDLE_TIMEOUT", raw.connection_idle_timeout),
        ("REKEY_KEEPALIVE_INTERVAL", raw.keepalive_interval),
        ("REKEY_KEEPALIVE_TIMEOUT", raw.keepalive_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(name, "must be greater than zero, e.g. 30s"));
        }
    }
    if raw.keepalive_interval >= raw.connection_idle_timeout {
        return Err(invalid(
            "REKEY_KEEPALIVE_INTERVAL",
            "must be shorter than REKEY_CONNECTION_IDLE_TIMEOUT, or quiet but healthy \
             clients are dropped as idle",
        ));
    }
    if raw.max_concurrent_streams == 0 {
        return Err(invalid(
            "REKEY_MAX_CONCURRENT_STREAMS",
            "must be at least 1",
        ));
    }
    Ok(TransportLimits {
        max_message_size,
        request_timeout: raw.request_timeout,
        connection_idle_timeout: raw.connection_idle_timeout,
        max_concurrent_streams: raw.max_concurrent_streams,
        keepalive_interval: raw.keepalive_interval,
        keepalive_timeout: raw.keepalive_timeout,
    })
}

/// `16KiB`, `1MiB`, `512B` or a bare number of bytes.
fn byte_size(raw: &str) -> Option<usize> {
    let text = raw.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1024,
        "mib" => 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(unit)
}

pub(super) fn database_pool(raw: &RawSettings) -> Result<PoolOptions, ConfigError> {
    if raw.database_acquire_timeout.is_zero() {
        return Err(invalid(
            "REKEY_DATABASE_ACQUIRE_TIMEOUT",
            "must be greater than zero, e.g. 5s",
        ));
    }
    Ok(PoolOptions {
        size: (raw.database_pool_size > 0).then_some(raw.database_pool_size),
        acquire_timeout: raw.database_acquire_timeout,
        ..PoolOptions::default()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use figment::Figment;

    use super::*;
    use crate::config::{ConfigError, Settings};

    fn base() -> Figment {
        Figment::new().merge(("reset_url", "https://app.example.com/reset"))
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let settings = Settings::from_figment(base()).unwrap();
        let limits = settings.transport;
        assert_eq!(limits.max_message_size, 16 * 1024);
        assert_eq!(limits.request_timeout, Duration::from_secs(10));
        assert_eq!(limits.connection_idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_concurrent_streams, 100);
        assert_eq!(settings.database_pool.size, None);
        assert_eq!(
            settings.database_pool.acquire_timeout,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_size_may_come_as_a_number_from_the_environment() {
        let settings = Settings::from_figment(base().merge(("max_message_size", 65_536))).unwrap();
        assert_eq!(settings.transport.max_message_size, 65_536);
        let settings = Settings::from_figment(base().merge(("database_pool_size", 3))).unwrap();
        assert_eq!(settings.database_pool.size, Some(3));
    }

    #[test]
    fn nonsense_limits_are_refused_naming_the_setting() {
        let cases: [(&str, figment::value::Value, &str); 8] = [
            ("max_message_size", "16KB".into(), "REKEY_MAX_MESSAGE_SIZE"),
            ("max_message_size", 100.into(), "REKEY_MAX_MESSAGE_SIZE"),
            ("max_message_size", "5MiB".into(), "REKEY_MAX_MESSAGE_SIZE"),
            ("request_timeout", "0s".into(), "REKEY_REQUEST_TIMEOUT"),
            (
                "connection_idle_timeout",
                "0s".into(),
                "REKEY_CONNECTION_IDLE_TIMEOUT",
            ),
            (
                "keepalive_interval",
                "2m".into(),
                "REKEY_KEEPALIVE_INTERVAL",
            ),
            (
                "max_concurrent_streams",
                0.into(),
                "REKEY_MAX_CONCURRENT_STREAMS",
            ),
            (
                "database_acquire_timeout",
                "0s".into(),
                "REKEY_DATABASE_ACQUIRE_TIMEOUT",
            ),
        ];
        for (key, value, setting) in cases {
            match Settings::from_figment(base().merge((key, value.clone()))) {
                Err(ConfigError::Invalid { name, problem }) => {
                    assert_eq!(name, setting, "{key}={value:?}: {problem}");
                }
                other => panic!("{key}={value:?}: expected Invalid({setting}), got {other:?}"),
            }
        }
    }

    #[test]
    fn sizes_take_binary_units_or_bytes() {
        assert_eq!(byte_size("16KiB"), Some(16_384));
        assert_eq!(byte_size(" 16 kib "), Some(16_384));
        assert_eq!(byte_size("1MiB"), Some(1_048_576));
        assert_eq!(byte_size("16384"), Some(16_384));
        assert_eq!(byte_size("512B"), Some(512));
        for bad in [
            "",
            "KiB",
            "16KB",
            "16k",
            "-1",
            "1.5MiB",
            "99999999999999999999",
        ] {
            assert_eq!(byte_size(bad), None, "{bad:?}");
        }
    }
}
