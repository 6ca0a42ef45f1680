//! Unit tests of the typed settings.
use super::*;

fn base() -> Figment {
    Figment::new().merge(("reset_url", "https://app.example.com/reset"))
}

#[test]
fn defaults_are_sqlite_and_file_mail() {
    let settings = Settings::from_figment(base()).unwrap();
    assert!(settings.database_url.expose_secret().starts_with("sqlite:"));
    assert!(matches!(
        settings.mail.transport,
        MailTransportSettings::File { .. }
    ));
    assert_eq!(settings.links.lifetimes.reset, Duration::from_secs(1800));
    assert_eq!(
        settings.links.lifetimes.sign_up,
        Duration::from_secs(86_400)
    );
    assert_eq!(settings.passwords.argon2.m_cost(), 19_456);
    // Retries ride out a relay outage of about an hour.
    let worker = settings.mail.worker;
    assert_eq!(
        (worker.max_attempts, worker.backoff_max.as_secs()),
        (12, 900)
    );
    let (shortest, longest) = worker.retry_span();
    assert!((shortest..=longest).contains(&Duration::from_secs(3600)));
}

#[test]
fn the_password_policy_defaults_to_nist_and_zxcvbn_3() {
    let policy = Settings::from_figment(base()).unwrap().passwords.policy;
    assert_eq!((policy.min_length, policy.min_score), (12, 3));
}

#[test]
fn password_min_chars_is_an_alias_of_password_min_length() {
    let min_length = |figment: Figment| {
        Settings::from_figment(figment)
            .map(|s| s.passwords.policy.min_length)
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        min_length(base().merge(("password_min_length", 16))),
        Ok(16)
    );
    assert_eq!(min_length(base().merge(("password_min_chars", 14))), Ok(14));
    let both = base()
        .merge(("password_min_length", 16))
        .merge(("password_min_chars", 16));
    assert_eq!(min_length(both), Ok(16));
    let clash = base()
        .merge(("password_min_length", 16))
        .merge(("password_min_chars", 14));
    let err = min_length(clash).unwrap_err();
    assert!(err.contains("REKEY_PASSWORD_MIN_LENGTH"), "{err}");
    assert!(err.contains("REKEY_PASSWORD_MIN_CHARS"), "{err}");
}

#[test]
fn allowed_urls_accept_a_comma_separated_string() {
    let settings = Settings::from_figment(base().merge((
        "allowed_reset_urls",
        "https://a.example.com/r, https://b.example.com/r",
    )))
    .unwrap();
    let page = ResetUrl::parse("f", "https://b.example.com/r/x").unwrap();
    assert!(settings.links.allowed_reset_urls.allows(&page));
}

#[test]
fn durations_are_humantime() {
    let settings = Settings::from_figment(base().merge(("reset_token_ttl", "15m"))).unwrap();
    assert_eq!(settings.links.lifetimes.reset, Duration::from_secs(900));
}

#[test]
fn no_reset_page_is_a_clear_error() {
    let err = Settings::from_figment(Figment::new()).unwrap_err();
    assert!(err.to_string().contains("REKEY_RESET_URL"), "{err}");
}

#[test]
fn from_defaults_to_no_reply_at_the_reset_page_host() {
    let settings =
        Settings::from_figment(base().merge(("smtp_url", "smtp://mail.example.com:587"))).unwrap();
    assert_eq!(
        settings.mail.sender.from.to_string(),
        "rekey <no-reply@app.example.com>"
    );
    let settings = Settings::from_figment(
        base().merge(("mail_from", "Example Support <support@example.com>")),
    )
    .unwrap();
    assert_eq!(
        settings.mail.sender.from.email.to_string(),
        "support@example.com"
    );
}

#[test]
fn a_bad_smtp_url_does_not_echo_the_secret() {
    let err =
        Settings::from_figment(base().merge(("smtp_url", "http://user:hunter2@mail.example.com")))
            .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_database_url_that_does_not_parse_names_the_setting_and_hides_the_password() {
    for url in [
        "postgres://rekey:p#ss@db.internal/rekey",
        "postgres://rekey:p/ss@db.internal/rekey",
        "postgresql://rekey:p?ss@db.internal:5432/rekey",
    ] {
        for result in [
            Settings::from_figment(base().merge(("database_url", url))).map(drop),
            MigrateSettings::from_figment(Figment::new().merge(("database_url", url))).map(drop),
        ] {
            match result {
                Err(ConfigError::Invalid { name, problem }) => {
                    assert_eq!(name, "REKEY_DATABASE_URL");
                    assert!(problem.contains("percent-encode"), "{problem}");
                    assert!(!problem.contains("ss@db"), "{problem}");
                }
                other => panic!("{url}: expected Invalid(REKEY_DATABASE_URL), got {other:?}"),
            }
        }
    }
    let encoded = "postgres://rekey:p%23ss@db.internal/rekey";
    let settings = Settings::from_figment(base().merge(("database_url", encoded))).unwrap();
    assert_eq!(settings.database_url.expose_secret(), encoded);
}

#[test]
fn nonsense_values_are_rejected_naming_the_setting() {
    let cases: [(&str, figment::value::Value, &str); 22] = [
        ("smtp_timeout", "0s".into(), "REKEY_SMTP_TIMEOUT"),
        ("mail_max_attempts", 0.into(), "REKEY_MAIL_MAX_ATTEMPTS"),
        ("mail_batch_size", 0.into(), "REKEY_MAIL_BATCH_SIZE"),
        ("mail_batch_size", 1_000_000.into(), "REKEY_MAIL_BATCH_SIZE"),
        (
            "mail_send_concurrency",
            0.into(),
            "REKEY_MAIL_SEND_CONCURRENCY",
        ),
        (
            "mail_send_concurrency",
            u64::MAX.into(),
            "REKEY_MAIL_SEND_CONCURRENCY",
        ),
        (
            "hash_concurrency",
            u64::MAX.into(),
            "REKEY_HASH_CONCURRENCY",
        ),
        (
            "hash_queue_depth",
            u64::MAX.into(),
            "REKEY_HASH_QUEUE_DEPTH",
        ),
        ("reset_token_ttl", "1s".into(), "REKEY_RESET_TOKEN_TTL"),
        (
            "signup_token_ttl",
            "90days".into(),
            "REKEY_SIGNUP_TOKEN_TTL",
        ),
        ("database_url", "mysql://x".into(), "REKEY_DATABASE_URL"),
        ("reset_url", "not a url".into(), "REKEY_RESET_URL"),
        ("mail_from", "no address here".into(), "REKEY_MAIL_FROM"),
        ("mail_reply_to", "nobody".into(), "REKEY_MAIL_REPLY_TO"),
        (
            "smtp_url",
            "http://mail.example.com".into(),
            "REKEY_SMTP_URL",
        ),
        ("password_min_chars", 4.into(), "REKEY_PASSWORD_MIN_CHARS"),
        (
            "password_min_length",
            65.into(),
            "REKEY_PASSWORD_MIN_LENGTH",
        ),
        ("password_min_score", 5.into(), "REKEY_PASSWORD_MIN_SCORE"),
        ("argon2_memory_kib", 1.into(), "REKEY_ARGON2_*"),
        ("mail_lease", "1s".into(), "REKEY_MAIL_LEASE"),
        ("mail_backoff_max", "0s".into(), "REKEY_MAIL_BACKOFF_MAX"),
        (
            "health_check_interval",
            "0s".into(),
            "REKEY_HEALTH_CHECK_INTERVAL",
        ),
    ];
    for (key, value, setting) in cases {
        match Settings::from_figment(base().merge((key, value.clone()))) {
            Err(ConfigError::Invalid { name, .. }) => {
                assert_eq!(name, setting, "{key}={value:?}");
            }
            other => panic!("{key}={value:?}: expected Invalid({setting}), got {other:?}"),
        }
    }
}

#[test]
fn a_lease_too_short_for_one_send_says_how_long_it_must_be() {
    let settings = base()
        .merge(("smtp_url", "smtp://127.0.0.1:2525"))
        .merge(("smtp_timeout", "30s"));
    match Settings::from_figment(settings.clone().merge(("mail_lease", "59s"))) {
        Err(ConfigError::Invalid { name, problem }) => {
            assert_eq!(name, "REKEY_MAIL_LEASE");
            assert!(problem.starts_with("must be at least 1m "), "{problem}");
        }
        other => panic!("expected Invalid(REKEY_MAIL_LEASE), got {other:?}"),
    }
    // The batch no longer counts: the lease is renewed while it is sent.
    let large_batches = settings
        .merge(("mail_lease", "1m"))
        .merge(("mail_batch_size", 512))
        .merge(("mail_send_concurrency", 1));
    Settings::from_figment(large_batches).unwrap();
}

#[test]
fn values_of_the_wrong_type_name_the_key() {
    for (key, value) in [("reset_token_ttl", "soon"), ("hash_queue_depth", "many")] {
        match Settings::from_figment(base().merge((key, value))) {
            Err(ConfigError::Read(message)) => assert!(message.contains(key), "{message}"),
            other => panic!("{key}={value}: expected Read naming {key}, got {other:?}"),
        }
    }
}

fn read_error(figment: Figment) -> String {
    match Settings::from_figment(figment) {
        Err(ConfigError::Read(message)) => message,
        other => panic!("expected a Read error, got {other:?}"),
    }
}

#[test]
fn a_bad_duration_shows_an_example() {
    assert_eq!(
        read_error(base().merge(("reset_token_ttl", "soon"))),
        r#"reset_token_ttl: "soon" is not a duration; use e.g. 30m, 24h or 90s"#
    );
    let message = read_error(base().merge(("smtp_timeout", 30)));
    assert!(
        message.starts_with("smtp_timeout: 30 is not a duration"),
        "{message}"
    );
    assert!(message.contains("30m"), "{message}");
}

#[test]
fn listen_accepts_localhost_and_any_ip_with_a_port() {
    for (value, expected) in [
        ("localhost:50051", "127.0.0.1:50051"),
        ("LOCALHOST:8080", "127.0.0.1:8080"),
        ("0.0.0.0:50051", "0.0.0.0:50051"),
        ("10.1.2.3:0", "10.1.2.3:0"),
        ("[::1]:50051", "[::1]:50051"),
        ("[::]:50051", "[::]:50051"),
        (" 127.0.0.1:1 ", "127.0.0.1:1"),
    ] {
        // Protected mode is tested on its own; here only the parsing.
        let figment = base()
            .merge(("listen", value))
            .merge(("allow_insecure", true));
        let settings = Settings::from_figment(figment).unwrap();
        assert_eq!(settings.listen.to_string(), expected, "{value}");
    }
}

#[test]
fn a_bad_listen_address_says_what_is_expected() {
    for value in [
        "nowhere",
        "localhost",
        "localhost:99999",
        "::1:50051",
        "example.com:80",
    ] {
        match Settings::from_figment(base().merge(("listen", value))) {
            Err(ConfigError::Invalid { name, problem }) => {
                assert_eq!(name, "REKEY_LISTEN");
                assert!(problem.contains("localhost:PORT"), "{problem}");
                assert!(problem.contains("0.0.0.0:50051"), "{problem}");
            }
            other => panic!("{value}: expected Invalid(REKEY_LISTEN), got {other:?}"),
        }
    }
    // A bare port arrives from the environment as a number.
    let message = read_error(base().merge(("listen", 50051)));
    assert!(message.starts_with("listen: "), "{message}");
    assert!(message.contains("localhost:PORT"), "{message}");
}

#[test]
fn an_unknown_key_is_refused_with_the_closest_known_name() {
    match Settings::from_figment(base().merge(("reset_urls", "https://x.example.com"))) {
        Err(ConfigError::Unknown(unknown)) => assert_eq!(
            unknown,
            [UnknownSetting {
                name: "reset_urls".into(),
                hint: Some("did you mean reset_url?".into()),
            }]
        ),
        other => panic!("expected Unknown, got {other:?}"),
    }
    let err = Settings::from_figment(base().merge(("frobnicate", 1))).unwrap_err();
    assert_eq!(err.to_string(), "frobnicate: unknown setting");
}

#[test]
fn every_unknown_key_is_named_at_once() {
    let err = Settings::from_figment(
        base()
            .merge(("smtp_uri", "smtp://user:hunter2@mail.example.com"))
            .merge(("colour", "blue")),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "2 unknown settings:\n  colour: unknown setting\n  \
         smtp_uri: unknown setting; did you mean smtp_url?"
    );
}

#[test]
fn an_unknown_key_wins_over_a_missing_reset_page() {
    let err = Settings::from_figment(Figment::new().merge(("reset_urls", "x"))).unwrap_err();
    assert!(matches!(err, ConfigError::Unknown(_)), "{err:?}");
}

#[test]
fn the_example_settings_file_is_accepted_as_it_is() {
    use figment::providers::{Format, Toml};
    let example = include_str!("../../deploy/rekey.example.toml");
    Settings::from_figment(Figment::new().merge(Toml::string(example))).unwrap();
}

#[test]
fn known_keys_are_the_fields_of_the_raw_settings() {
    let known = raw::known_keys();
    for key in [
        "listen",
        "database_url",
        "smtp_url",
        "reset_url",
        "log_format",
    ] {
        assert!(known.contains(&key), "{key} in {known:?}");
    }
    // A `flatten` field would make serde read a map and lose the list.
    assert!(known.len() >= 25, "{known:?}");
}

#[test]
fn a_bad_tls_parameter_is_a_plain_error_without_the_url() {
    for url in [
        "smtp://user:hunter2@mail.example.com:587?tls=yes",
        "smtp://user:hunter2@mail.example.com:587?tls=",
        "smtp://user:hunter2@mail.example.com:587?tls=starttls",
        "smtps://user:hunter2@mail.example.com?tls=opportunistic",
    ] {
        match Settings::from_figment(base().merge(("smtp_url", url))) {
            Err(ConfigError::Invalid { name, problem }) => {
                assert_eq!(name, "REKEY_SMTP_URL");
                assert!(problem.contains("tls="), "{problem}");
                assert!(!problem.contains("hunter2"), "{problem}");
                assert!(!problem.contains("mail.example.com"), "{problem}");
            }
            other => panic!("{url}: expected Invalid(REKEY_SMTP_URL), got {other:?}"),
        }
    }
    for url in [
        "smtp://mail.example.com:25",
        "smtp://mail.example.com:587?tls=required",
        "smtp://mail.example.com:587?tls=opportunistic",
        "smtps://mail.example.com",
        "smtps://mail.example.com?tls=required",
    ] {
        Settings::from_figment(base().merge(("smtp_url", url))).unwrap();
    }
}

#[test]
fn a_secret_of_the_wrong_type_is_not_quoted() {
    let message = read_error(base().merge(("database_url", ["postgres://u:hunter2@h/d"])));
    assert_eq!(message, "database_url: invalid value");
}

#[test]
fn migrate_needs_only_the_database() {
    let settings = MigrateSettings::from_figment(Figment::new()).unwrap();
    assert!(settings.database_url.expose_secret().starts_with("sqlite:"));
    let settings = MigrateSettings::from_figment(
        Figment::new()
            .merge(("database_url", "postgres://rekey@db/rekey"))
            // Not its business: another command would refuse it.
            .merge(("hash_queue_depth", "many")),
    )
    .unwrap();
    assert_eq!(
        settings.database_url.expose_secret(),
        "postgres://rekey@db/rekey"
    );
}

#[test]
fn migrate_still_refuses_unknown_keys_and_a_bad_database_url() {
    let err =
        MigrateSettings::from_figment(Figment::new().merge(("databse_url", "x"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "databse_url: unknown setting; did you mean database_url?"
    );
    match MigrateSettings::from_figment(
        Figment::new().merge(("database_url", "mysql://u:hunter2@h/d")),
    ) {
        Err(ConfigError::Invalid { name, problem }) => {
            assert_eq!(name, "REKEY_DATABASE_URL");
            assert!(!problem.contains("hunter2"));
        }
        other => panic!("expected Invalid(REKEY_DATABASE_URL), got {other:?}"),
    }
}

#[test]
fn redact_masks_secret_urls_and_their_passwords() {
    let settings = Settings::from_figment(
        base()
            .merge(("database_url", "postgres://rekey:s3cr%2Ft@db/rekey"))
            .merge(("smtp_url", "smtps://apikey:hunter2@smtp.example.com")),
    )
    .unwrap();
    let text = settings
        .redact("postgres://rekey:s3cr%2Ft@db/rekey; s3cr/t; s3cr%2Ft; 535 bad login hunter2");
    assert_eq!(text, "***; ***; ***; 535 bad login ***");
}

#[test]
fn the_mail_transport_is_described_without_credentials() {
    let settings = Settings::from_figment(base().merge((
        "smtp_url",
        "smtp://user:hunter2@mail.example.com:587?tls=required",
    )))
    .unwrap();
    assert_eq!(
        settings.mail.transport.to_string(),
        "smtp relay mail.example.com:587"
    );
    assert!(!settings.summary().contains("hunter2"));
}

#[test]
fn metrics_are_off_unless_a_listen_address_is_given() {
    let settings = Settings::from_figment(base()).unwrap();
    assert_eq!(settings.metrics_listen, None);
    let settings =
        Settings::from_figment(base().merge(("metrics_listen", "0.0.0.0:9464"))).unwrap();
    assert_eq!(
        settings.metrics_listen,
        Some("0.0.0.0:9464".parse().unwrap())
    );
    let err = Settings::from_figment(base().merge(("metrics_listen", "nowhere"))).unwrap_err();
    assert!(err.to_string().contains("REKEY_METRICS_LISTEN"), "{err}");
}
