//! Test harness, by job: `app` (the real server in-process on 127.0.0.1:0
//! and its clients), `smtp` (a real SMTP sink), `postgres` (a fresh
//! database per test, dropped afterwards), `logs` (captured server logs),
//! `raw` (an HTTP/2 client for hostile bytes), `certs` (test certificates).

mod app;
mod certs;
mod logs;
mod postgres;
pub mod raw;
mod smtp;
mod smtp_auth;

use std::{future::Future, time::Duration};

pub use app::{TestApp, spawn_app, spawn_app_with, spawn_app_with_mailbox};
pub use certs::{Authority, install_ring_provider};
pub use logs::captured_logs;
pub use postgres::{TestDatabase, fresh_postgres_database, postgres_url};
#[allow(unused_imports)]
pub use smtp::{ReceivedMail, SmtpSink};
pub use smtp_auth::AuthSink;

pub const RESET_PAGE: &str = "https://app.example.com/reset";
pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a flow test once on SQLite and once on PostgreSQL. Without a
/// reachable PostgreSQL the second run is skipped with one visible line,
/// except under CI, where it fails (see [`postgres_url`]).
#[macro_export]
macro_rules! flow_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if $crate::helpers::postgres_url().await.is_some() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            }
        }
    };
}

/// Polls `check` until it gives a value; panics naming `what`, with the
/// server's logs, after 10 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(10), what, check).await
}

/// [`eventually`] with another time limit.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{what}: not within {limit:?}; server logs:\n{}",
                captured_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Asserts a status code and, when given, the `ErrorInfo` reason.
pub fn assert_error(status: &tonic::Status, code: tonic::Code, reason: Option<&str>) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), code, "{status:?}");
    if let Some(reason) = reason {
        let details = status.get_error_details();
        let info = details
            .error_info()
            .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
        assert_eq!(info.reason, reason);
        assert_eq!(info.domain, "rekey.dev");
    }
}

/// The fields named in a status's `BadRequest` details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Rows in `table`, for tables without an entity (`rate_limits`).
pub async fn count_rows(db: &sea_orm::DatabaseConnection, table: &str) -> u64 {
    use sea_orm::{ConnectionTrait, Statement};
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    u64::try_from(row.try_get::<i64>("", "n").unwrap()).unwrap()
}
