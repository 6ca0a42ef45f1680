//! PostgreSQL for the tests: which server, a fresh database per test, and
//! dropping it when the test ends, pass or fail.

use std::{io::Write, time::Duration};

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::OnceCell;

/// Where the tests look when `REKEY_TEST_POSTGRES_URL` is unset.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Test databases older than this are left over from killed runs.
const STALE_AFTER_SECS: u64 = 3600;

static SERVER: OnceCell<Option<String>> = OnceCell::const_new();

/// The PostgreSQL server for the PostgreSQL variants: `REKEY_TEST_POSTGRES_URL`
/// if set, else the local default if it answers. `None` means skip: said
/// once, visibly, in the test output; under `CI` it is a failure instead.
pub async fn postgres_url() -> Option<String> {
    SERVER.get_or_init(resolve).await.clone()
}

async fn resolve() -> Option<String> {
    if let Some(url) = std::env::var("REKEY_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        sweep_stale_databases(&url).await;
        return Some(url);
    }
    let answers = tokio::time::timeout(Duration::from_secs(2), async {
        let db = Database::connect(DEFAULT_URL).await.ok()?;
        db.execute_unprepared("SELECT 1").await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    if answers {
        sweep_stale_databases(DEFAULT_URL).await;
        return Some(DEFAULT_URL.to_owned());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI needs PostgreSQL: none answers at {DEFAULT_URL} and REKEY_TEST_POSTGRES_URL is unset"
    );
    // libtest captures print!/eprint! of passing tests; this write is not.
    let _ = std::io::stderr().write_all(
        format!(
            "\nrekey tests: SKIPPING the PostgreSQL variants: no server answers at \
             {DEFAULT_URL} and REKEY_TEST_POSTGRES_URL is unset\n\n"
        )
        .as_bytes(),
    );
    None
}

/// A database made for one test, dropped when this value is.
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

/// Creates an empty database on the test server. Call only after
/// [`postgres_url`] gave a server.
pub async fn fresh_postgres_database() -> TestDatabase {
    let admin_url = postgres_url().await.expect("a PostgreSQL server");
    let admin = Database::connect(&admin_url).await.unwrap();
    let name = format!(
        "rekey_test_{}_{}",
        unix_secs(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    TestDatabase {
        url: url.to_string(),
        name,
        admin_url,
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run on a runtime's thread: use a thread
        // with a runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test database {}",
                self.name
            );
        }
    }
}

/// Drops databases that runs killed before their cleanup left behind.
async fn sweep_stale_databases(admin_url: &str) {
    let Ok(admin) = Database::connect(admin_url).await else {
        return;
    };
    let Ok(rows) = admin
        .query_all_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            "SELECT datname FROM pg_database WHERE datname LIKE 'rekey_test_%'",
        ))
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        let created = name
            .split('_')
            .nth(2)
            .and_then(|secs| secs.parse::<u64>().ok())
            .unwrap_or(0);
        if unix_secs().saturating_sub(created) > STALE_AFTER_SECS {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
