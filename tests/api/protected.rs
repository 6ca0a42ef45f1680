//! Protected mode, run on the real binary: off loopback, rekey refuses to
//! start with what would expose accounts or links, unless overridden.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// The binary with a clean environment: SQLite and mail in `dir`.
fn rekey(dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rekey"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "REKEY_DATABASE_URL",
            format!("sqlite://{}/rekey.db?mode=rwc", dir.display()),
        )
        .env("REKEY_MAIL_DIR", dir.join("mail"))
        .env("REKEY_RESET_URL", "https://app.example.com/reset")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs until exit; returns the exit code and stderr.
async fn refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), rekey(dir.path(), env).output())
        .await
        .expect("rekey should refuse and exit")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts, waits for "rekey listening", and returns everything logged until then.
async fn starts(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = rekey(dir.path(), env).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = String::new();
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            logged.push_str(&line);
            logged.push('\n');
            if line.contains("rekey listening") {
                return true;
            }
        }
        false
    })
    .await;
    child.kill().await.unwrap();
    assert_eq!(listening, Ok(true), "rekey did not start:\n{logged}");
    logged
}

const KEYS: (&str, &str) = (
    "REKEY_API_KEYS",
    "web:reset+auth:web-9f3c0a1b2c3d4e5f60718293a4b5c6d7",
);

#[tokio::test]
async fn off_loopback_without_caller_auth_or_with_file_mail_start_is_refused() {
    let (code, stderr) = refused(&[("REKEY_LISTEN", "0.0.0.0:0")]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("protected mode"), "{stderr}");
    assert!(stderr.contains("no caller authentication"), "{stderr}");
    assert!(stderr.contains("file transport"), "{stderr}");
    assert!(stderr.contains("REKEY_ALLOW_INSECURE"), "{stderr}");

    // Keys alone do not help while links would land on disk.
    let (code, stderr) = refused(&[("REKEY_LISTEN", "0.0.0.0:0"), KEYS]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("no caller authentication"), "{stderr}");
    assert!(stderr.contains("file transport"), "{stderr}");
}

#[tokio::test]
async fn smtp_credentials_without_tls_are_refused_off_loopback() {
    let (code, stderr) = refused(&[
        ("REKEY_LISTEN", "0.0.0.0:0"),
        KEYS,
        (
            "REKEY_SMTP_URL",
            "smtp://mailer:hunter2hunter2@127.0.0.1:2525",
        ),
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SMTP credentials"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(!stderr.contains("web-9f3c"), "the key leaked: {stderr}");

    // With TLS required the same setup starts.
    starts(&[
        ("REKEY_LISTEN", "0.0.0.0:0"),
        KEYS,
        (
            "REKEY_SMTP_URL",
            "smtp://mailer:hunter2hunter2@127.0.0.1:2525?tls=required",
        ),
    ])
    .await;
}

#[tokio::test]
async fn the_override_starts_with_a_warning_per_problem() {
    let logged = starts(&[
        ("REKEY_LISTEN", "0.0.0.0:0"),
        ("REKEY_ALLOW_INSECURE", "true"),
    ])
    .await;
    let warnings = logged
        .lines()
        .filter(|l| l.contains("protected mode overridden"))
        .count();
    assert_eq!(warnings, 2, "{logged}");
}

#[tokio::test]
async fn on_loopback_the_embedded_default_starts_with_nothing_set() {
    // Only the port is set, so the test does not collide with anything.
    let logged = starts(&[("REKEY_LISTEN", "127.0.0.1:0")]).await;
    assert!(!logged.contains("protected mode"), "{logged}");
}
