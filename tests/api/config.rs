//! The configuration as an operator meets it: the real `rekey` binary, run
//! with a clean environment holding only the variables under test, judged
//! by its exit code and what it prints.

use std::{path::Path, process::Output};

use crate::helpers::{RESET_PAGE, SmtpSink};

/// A directory to run in (the default `./var` lands there) and a database in it.
pub(crate) struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn database_url(&self) -> String {
        format!("sqlite://{}/x.db?mode=rwc", self.path().display())
    }

    /// `rekey ARGS` with PATH and `vars` alone in its environment.
    pub(crate) fn rekey(&self, args: &[&str], vars: &[(&str, &str)]) -> Outcome {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rekey"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .current_dir(self.path())
            .output()
            .unwrap();
        Outcome::from(output)
    }
}

#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Outcome {
    pub(crate) fn everything(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

#[test]
fn an_unknown_variable_is_refused_with_the_closest_known_name() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_RESET_URLS", RESET_PAGE),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: REKEY_RESET_URLS: unknown setting; \
         did you mean REKEY_RESET_URL?\n"
    );
}

#[test]
fn every_unknown_variable_is_named_and_a_file_variable_for_a_non_secret_is_explained() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_FROBNICATE", "1"),
            ("REKEY_LISTEN_FILE", "/run/listen"),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: 2 unknown settings:\n  \
         REKEY_FROBNICATE: unknown setting\n  \
         REKEY_LISTEN_FILE: unknown setting; only secrets are read from files \
         (REKEY_DATABASE_URL_FILE, REKEY_SMTP_URL_FILE, REKEY_SMTP_PASSWORD_FILE, \
         REKEY_API_KEYS_FILE); set REKEY_LISTEN instead\n"
    );
}

#[test]
fn an_unknown_key_in_the_settings_file_is_refused() {
    let run = Run::new();
    let file = run.path().join("rekey.toml");
    std::fs::write(
        &file,
        format!(
            "reset_url = \"{RESET_PAGE}\"\nsmtp_uri = \"smtp://user:hunter2@mail.example.com\"\n"
        ),
    )
    .unwrap();
    let out = run.rekey(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "rekey: invalid configuration: smtp_uri in {}: unknown setting; \
             did you mean smtp_url?\n",
            file.display()
        )
    );
    assert!(!out.everything().contains("hunter2"));
}

#[test]
fn the_variables_that_are_not_settings_are_accepted() {
    let run = Run::new();
    let file = run.path().join("rekey.toml");
    std::fs::write(&file, format!("reset_url = \"{RESET_PAGE}\"\n")).unwrap();
    let database_file = run.path().join("database_url");
    std::fs::write(&database_file, run.database_url()).unwrap();
    let smtp_file = run.path().join("smtp_url");
    std::fs::write(&smtp_file, "smtp://user:hunter2@127.0.0.1:1?tls=required").unwrap();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_CONFIG", file.to_str().unwrap()),
            ("REKEY_DATABASE_URL_FILE", database_file.to_str().unwrap()),
            ("REKEY_SMTP_URL_FILE", smtp_file.to_str().unwrap()),
            ("REKEY_MAIL_FROM", "Example <no-reply@example.com>"),
            ("REKEY_TEST_POSTGRES_URL", "postgres://elsewhere/tests"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("configuration OK\n"), "{out:?}");
    assert!(out.stdout.contains("smtp relay 127.0.0.1:1"), "{out:?}");
    assert!(!out.everything().contains("hunter2"));
}

#[test]
fn migrate_needs_only_the_database_url() {
    let run = Run::new();
    let url = run.database_url();
    let out = run.rekey(&["migrate"], &[("REKEY_DATABASE_URL", &url)]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let every = <rekey_migrations::Migrator as rekey_migrations::MigratorTrait>::migrations().len();
    assert_eq!(out.stdout, format!("migrations applied: {every}\n"));
    assert!(run.path().join("x.db").is_file());
    // A second run finds nothing to do.
    let again = run.rekey(&["migrate"], &[("REKEY_DATABASE_URL", &url)]);
    assert_eq!(again.stdout, "migrations applied: 0\n", "{again:?}");
}

#[test]
fn migrate_still_refuses_an_unknown_variable() {
    let run = Run::new();
    let url = run.database_url();
    let out = run.rekey(&["migrate"], &[("REKEY_DATABSE_URL", &url)]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: REKEY_DATABSE_URL: unknown setting; \
         did you mean REKEY_DATABASE_URL?\n"
    );
}

#[test]
fn check_config_connect_reaches_the_database_and_the_mail_directory() {
    let run = Run::new();
    let url = run.database_url();
    let mail = run.path().join("mail");
    let out = run.rekey(
        &["check-config", "--connect"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", &url),
            ("REKEY_MAIL_DIR", mail.to_str().unwrap()),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\ndatabase: ok\n"), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("\ndirectory {}: ok\n", mail.display())),
        "{out:?}"
    );
    // The probe file is gone again.
    assert_eq!(std::fs::read_dir(&mail).unwrap().count(), 0);
}

#[test]
fn check_config_connect_reaches_an_smtp_relay() {
    let run = Run::new();
    let url = run.database_url();
    let relay = SmtpSink::start();
    let smtp = format!("smtp://{}", relay.addr);
    let out = run.rekey(
        &["check-config", "--connect"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", &url),
            ("REKEY_SMTP_URL", &smtp),
            ("REKEY_SMTP_TIMEOUT", "5s"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("\nsmtp relay {}: ok\n", relay.addr)),
        "{out:?}"
    );
}

#[test]
fn check_config_connect_fails_naming_what_it_cannot_reach_without_secrets() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config", "--connect"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            (
                "REKEY_DATABASE_URL",
                "postgres://rekey:dbhunter2@127.0.0.1:1/rekey",
            ),
            ("REKEY_SMTP_URL", "smtp://apikey:smtphunter2@127.0.0.1:1"),
            ("REKEY_SMTP_TIMEOUT", "5s"),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("\ndatabase: FAILED: "), "{out:?}");
    assert!(
        out.stdout.contains("\nsmtp relay 127.0.0.1:1: FAILED: "),
        "{out:?}"
    );
    assert_eq!(
        out.stderr,
        "rekey: connection check failed: database, smtp relay 127.0.0.1:1\n"
    );
    assert!(!out.everything().contains("hunter2"), "{out:?}");
}

#[test]
fn check_config_without_connect_stays_offline() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", "postgres://rekey@127.0.0.1:1/rekey"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 4, "only the summary: {out:?}");
    assert!(!out.stdout.contains("FAILED"), "{out:?}");
}

#[test]
fn listen_accepts_localhost_and_explains_a_bad_address() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_LISTEN", "localhost:50999"),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("listen:   127.0.0.1:50999\n"),
        "{out:?}"
    );

    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_LISTEN", "rekey.internal:50051"),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: REKEY_LISTEN: \"rekey.internal:50051\" is not an \
         address to listen on; use IP:PORT, [IPv6]:PORT or localhost:PORT, e.g. 0.0.0.0:50051 \
         or localhost:50051\n"
    );
}

#[test]
fn a_bad_duration_shows_an_example() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_RESET_TOKEN_TTL", "soon"),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: REKEY_RESET_TOKEN_TTL: \"soon\" is not a duration; \
         use e.g. 30m, 24h or 90s\n"
    );
}

#[test]
fn a_bad_tls_parameter_is_a_configuration_error_that_does_not_echo_the_url() {
    let run = Run::new();
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            (
                "REKEY_SMTP_URL",
                "smtp://apikey:hunter2@smtp.example.com:587?tls=yes",
            ),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "rekey: invalid configuration: REKEY_SMTP_URL: tls= must be \"required\" (STARTTLS, \
         refuse the relay without it) or \"opportunistic\" (STARTTLS when offered); for TLS \
         from the first byte use smtps://\n"
    );
}

#[test]
fn a_toml_syntax_error_gives_file_line_and_column_but_not_the_line() {
    let run = Run::new();
    let file = run.path().join("rekey.toml");
    std::fs::write(
        &file,
        format!(
            "reset_url = \"{RESET_PAGE}\"\n\
             database_url = \"postgres://rekey:hunter2@db.internal/rekey\n"
        ),
    )
    .unwrap();
    let out = run.rekey(&["--config", file.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "rekey: invalid configuration: {}: line 2, column 59: invalid basic string\n",
            file.display()
        )
    );
    assert!(!out.everything().contains("hunter2"), "{out:?}");
}

#[tokio::test]
async fn check_config_connect_reaches_postgres() {
    if crate::helpers::postgres_url().await.is_none() {
        return;
    }
    let database = crate::helpers::fresh_postgres_database().await;
    let url = database.url.clone();
    let run = Run::new();
    let mail = run.path().join("mail");
    let out = run.rekey(
        &["check-config", "--connect"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", &url),
            ("REKEY_MAIL_DIR", mail.to_str().unwrap()),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("  database: postgres\n"), "{out:?}");
    assert!(out.stdout.contains("\ndatabase: ok\n"), "{out:?}");
}

#[test]
fn the_example_config_file_is_accepted_as_shipped() {
    let run = Run::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rekey.example.toml");
    let out = run.rekey(&["check-config", "--config", example], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
}
