//! Persistence: sea-orm entities and small query functions over
//! `&impl ConnectionTrait`, so that callers choose the transaction.
//! All timestamps are Unix milliseconds.

pub mod accounts;
pub mod admin;
pub mod audit;
pub mod entities;
pub mod group_commit;
pub mod outbox;
pub mod rate_limits;
pub mod requests;
pub mod retention;
pub mod sqlite_reads;
pub mod sqlite_writes;
pub mod token_reads;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rekey_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
    TransactionTrait, sea_query::Query,
};
use secrecy::{ExposeSecret, SecretString};

pub use entities::{AccountStatus, AuditKind, MailKind, MailStatus};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot start a thread for SQLite")]
    Thread(#[source] std::io::Error),
    #[error("the writes queued are at their limit")]
    Saturated,
    #[error("a mail job's payload does not (de)serialize")]
    Payload(#[from] serde_json::Error),
    #[error("cannot create the database directory {}", dir.display())]
    Directory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A store call that failed, with what it was doing ("claiming due mail").
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct StoreFailure {
    pub doing: &'static str,
    #[source]
    pub source: StoreError,
}

/// Adds what a store call was doing to its error, as `anyhow::Context` does.
pub trait StoreContext<T> {
    fn context(self, doing: &'static str) -> Result<T, StoreFailure>;
}

impl<T, E: Into<StoreError>> StoreContext<T> for Result<T, E> {
    fn context(self, doing: &'static str) -> Result<T, StoreFailure> {
        self.map_err(|error| StoreFailure {
            doing,
            source: error.into(),
        })
    }
}

impl StoreFailure {
    /// The same failure again, for each of several callers it failed: a
    /// database error is kept as it is, others by their message.
    pub fn duplicate(&self) -> StoreFailure {
        StoreFailure {
            doing: self.doing,
            source: self.source.duplicate(),
        }
    }
}

impl StoreError {
    /// The same error again, for each of several callers it failed: a
    /// database error is kept as it is, others by their message.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Database(error) => StoreError::Database(error.clone()),
            StoreError::Saturated => StoreError::Saturated,
            other => StoreError::Database(DbErr::Custom(format!("{other:#}"))),
        }
    }

    /// True for errors that mean "the database is not reachable right now":
    /// no connection, a connection lost mid-query, a server shutting down
    /// (SQLSTATE 08xxx, 57Pxx) or a SQLite file locked past the busy timeout.
    pub fn is_unavailable(&self) -> bool {
        use sea_orm::sqlx;
        match self {
            StoreError::Database(DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
                sqlite_unavailable(failure.code)
            }
            _ => match self.sqlx_error() {
                Some(
                    sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed,
                ) => true,
                Some(sqlx::Error::Database(db_error)) => {
                    let code = db_error.code().unwrap_or_default();
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || db_error.message().contains("database is locked")
                }
                _ => false,
            },
        }
    }

    /// True when the writes queued for the group commit were at their limit.
    pub fn is_saturated(&self) -> bool {
        matches!(self, StoreError::Saturated)
    }

    /// True when PostgreSQL aborted the statement to break a deadlock
    /// (SQLSTATE 40P01) or a serialization conflict (40001): the
    /// transaction was rolled back and the same call may simply be retried.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self.sqlx_error(),
            Some(sea_orm::sqlx::Error::Database(db_error))
                if matches!(db_error.code().as_deref(), Some("40P01" | "40001"))
        )
    }

    /// The driver's error behind a statement that failed.
    fn sqlx_error(&self) -> Option<&sea_orm::sqlx::Error> {
        use sea_orm::RuntimeErr;
        match self {
            StoreError::Database(
                DbErr::Exec(RuntimeErr::SqlxError(error))
                | DbErr::Query(RuntimeErr::SqlxError(error)),
            ) => Some(error.as_ref()),
            _ => None,
        }
    }

    /// True when an insert hit a unique constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Database(error)
                if matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
                    || sqlite_writes::is_unique_violation(error)
        )
    }
}

/// Sees each SQL statement (text, values, duration) as it runs, as
/// sea-orm's metric callback does.
pub type StatementObserver = Arc<dyn Fn(&sea_orm::metric::Info<'_>) + Send + Sync>;

/// Runs `run`, telling `observer`, if any, of `statement` (built only
/// then), how long it took and whether it failed.
fn observed<T, E>(
    observer: Option<&StatementObserver>,
    statement: impl FnOnce() -> Statement,
    run: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let Some(observer) = observer else {
        return run();
    };
    let started = std::time::Instant::now();
    let result = run();
    observer(&sea_orm::metric::Info {
        elapsed: started.elapsed(),
        statement: &statement(),
        failed: result.is_err(),
    });
    result
}

/// A migrated SQLite file in a temporary directory, and a pool on it.
#[cfg(test)]
pub(crate) struct MigratedSqliteFile {
    _dir: tempfile::TempDir,
    pub url: String,
    pub pool: DatabaseConnection,
}

#[cfg(test)]
pub(crate) async fn migrated_sqlite_file() -> MigratedSqliteFile {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/rekey.db?mode=rwc", dir.path().display());
    let pool = connect(&SecretString::from(url.clone()), PoolOptions::default())
        .await
        .unwrap();
    migrate(&pool).await.unwrap();
    MigratedSqliteFile {
        _dir: dir,
        url,
        pool,
    }
}

/// True for SQLite failures that mean "try again later": the file locked
/// past the busy timeout, not openable, failing I/O or a full disk.
fn sqlite_unavailable(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
    )
}

/// The connection pool's bounds.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Connections at most; `None` for the backend's default (see
    /// `default_pool_size`).
    pub size: Option<u32>,
    /// How long a query waits for a free connection before it fails.
    pub acquire_timeout: Duration,
    /// Counts the connections given back to the pool.
    pub activity: PoolActivity,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            size: None,
            acquire_timeout: Duration::from_secs(5),
            activity: PoolActivity::default(),
        }
    }
}

/// How many times a connection has been given back to the pool: a pool
/// whose every connection is in use but whose count moves is busy, one
/// whose count stands still is stuck.
#[derive(Debug, Clone, Default)]
pub struct PoolActivity(Arc<AtomicU64>);

impl PoolActivity {
    pub fn returned(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pooled connection idle this long is pinged before it is handed out;
/// one in use moments ago is not (as HikariCP skips validating connections
/// used within the last 500 ms). A ping on every checkout cost each query a
/// second round trip: to PostgreSQL, or to sqlx's SQLite worker thread.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connects to SQLite (creating its directory, WAL mode) or PostgreSQL.
pub async fn connect(
    url: &SecretString,
    pool: PoolOptions,
) -> Result<DatabaseConnection, StoreError> {
    let url = url.expose_secret();
    if let Some(dir) = sqlite_file_dir(url) {
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Directory { dir, source })?;
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(pool.acquire_timeout)
        .max_connections(pool.size.unwrap_or(default_pool_size(url)))
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR);
    let activity = pool.activity.clone();
    options.map_sqlx_postgres_pool_opts(move |o| {
        let activity = activity.clone();
        o.after_release(move |_, _| {
            activity.count();
            Box::pin(async { Ok(true) })
        })
    });
    let activity = pool.activity;
    options.map_sqlx_sqlite_pool_opts(move |o| {
        let activity = activity.clone();
        o.after_release(move |_, _| {
            activity.count();
            Box::pin(async { Ok(true) })
        })
    });
    let db = Database::connect(options).await?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // WAL (kept in the file) lets readers run beside the single writer;
        // sqlx turns foreign keys on for every connection, this says so.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        db.execute_unprepared("PRAGMA foreign_keys=ON").await?;
    }
    Ok(db)
}

/// PostgreSQL: 10. A SQLite file: 4, so reads run beside the one writer
/// (WAL); every write transaction starts with its write, so writers wait
/// their turn (busy timeout) rather than fail. In-memory SQLite: 1, as
/// each connection would be a database of its own.
/// A PostgreSQL `text[]` parameter (for `unnest($n::text[])`).
fn text_array(items: &[&str]) -> sea_orm::Value {
    let items: Vec<String> = items.iter().map(|item| (*item).to_owned()).collect();
    items.into()
}

fn default_pool_size(url: &str) -> u32 {
    if !url.starts_with("sqlite:") {
        10
    } else if url.contains(":memory:") || url.contains("mode=memory") {
        1
    } else {
        4
    }
}

/// True when every connection of the pool is checked out and the pool may
/// open no more: a query now would wait for one to come back.
pub fn pool_exhausted(db: &DatabaseConnection) -> bool {
    fn exhausted<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> bool {
        let size = pool.size();
        // sqlx's idle count can read as -1 (wrapped) while a connection is
        // handed over: more idle than there are is none idle.
        let idle = pool.num_idle();
        (idle == 0 || idle > usize::try_from(size).unwrap_or(usize::MAX))
            && size >= pool.options().get_max_connections()
    }
    match db.get_database_backend() {
        DbBackend::Postgres => exhausted(db.get_postgres_connection_pool()),
        DbBackend::Sqlite => exhausted(db.get_sqlite_connection_pool()),
        _ => false,
    }
}

/// A connection pool's occupancy.
#[derive(Debug, Clone, Copy)]
pub struct PoolUsage {
    pub used: u32,
    pub idle: u32,
    pub max: u32,
}

/// How many connections are checked out, idle, and allowed at most.
pub fn pool_usage(db: &DatabaseConnection) -> Option<PoolUsage> {
    fn usage<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> PoolUsage {
        let size = pool.size();
        // As in `pool_exhausted`: an idle count above the size reads as none.
        let idle = u32::try_from(pool.num_idle())
            .ok()
            .filter(|idle| *idle <= size)
            .unwrap_or(0);
        PoolUsage {
            used: size - idle,
            idle,
            max: pool.options().get_max_connections(),
        }
    }
    match db.get_database_backend() {
        DbBackend::Postgres => Some(usage(db.get_postgres_connection_pool())),
        DbBackend::Sqlite => Some(usage(db.get_sqlite_connection_pool())),
        _ => None,
    }
}

/// Waits at most `within` for a connection of an exhausted pool to come
/// back; true if one did (it is returned to the pool at once).
pub async fn connection_freed_within(db: &DatabaseConnection, within: Duration) -> bool {
    async fn probe<DB: sea_orm::sqlx::Database>(
        pool: &sea_orm::sqlx::Pool<DB>,
        within: Duration,
    ) -> bool {
        matches!(
            tokio::time::timeout(within, pool.acquire()).await,
            Ok(Ok(_))
        )
    }
    match db.get_database_backend() {
        DbBackend::Postgres => probe(db.get_postgres_connection_pool(), within).await,
        DbBackend::Sqlite => probe(db.get_sqlite_connection_pool(), within).await,
        _ => true,
    }
}

/// Applies pending migrations and says how many. On PostgreSQL a transaction-scoped advisory
/// lock serializes replicas that start together on an empty database.
pub async fn migrate(db: &DatabaseConnection) -> Result<usize, StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        let pending = Migrator::get_pending_migrations(db).await?.len();
        Migrator::up(db, None).await?;
        return Ok(pending);
    }
    let tx = db.begin().await?;
    tx.execute_unprepared("SELECT pg_advisory_xact_lock(491327808889)")
        .await?;
    let pending = Migrator::get_pending_migrations(&tx).await?.len();
    Migrator::up(&tx, None).await?;
    tx.commit().await?;
    Ok(pending)
}

/// True when the database answers and every migration this binary knows is
/// applied. Read-only; migrations from a newer release (applied by a newer
/// replica during a rolling update) do not make this one unready.
pub async fn is_ready(db: &DatabaseConnection) -> bool {
    let applied = Query::select()
        .column("version")
        .from("seaql_migrations")
        .to_owned();
    let Ok(rows) = db.query_all(&applied).await else {
        return false;
    };
    let applied: HashSet<String> = rows
        .iter()
        .filter_map(|row| row.try_get::<String>("", "version").ok())
        .collect();
    Migrator::migrations()
        .iter()
        .all(|migration| applied.contains(migration.name()))
}

/// The file of a SQLite URL; `None` for other databases and in-memory SQLite.
fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path.contains(":memory:") || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

fn sqlite_file_dir(url: &str) -> Option<PathBuf> {
    sqlite_file_path(url)?
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_directory_is_derived_from_the_url() {
        assert_eq!(
            sqlite_file_dir("sqlite://./var/rekey.db?mode=rwc"),
            Some("./var".into())
        );
        assert_eq!(sqlite_file_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_file_dir("sqlite://rekey.db"), None);
        assert_eq!(sqlite_file_dir("postgres://x/y"), None);
    }

    #[test]
    fn sqlite_file_is_derived_from_the_url() {
        assert_eq!(
            sqlite_file_path("sqlite:///srv/rekey/rekey.db?mode=rwc"),
            Some("/srv/rekey/rekey.db".into())
        );
        assert_eq!(sqlite_file_path("sqlite:rekey.db"), Some("rekey.db".into()));
        assert_eq!(
            sqlite_file_path("sqlite:shared?mode=memory&cache=shared"),
            None
        );
        assert_eq!(sqlite_file_path("postgres://x/y"), None);
    }

    #[tokio::test]
    async fn a_connection_is_pinged_before_use_only_after_sitting_idle() {
        let url = SecretString::from("sqlite::memory:");
        let db = connect(&url, PoolOptions::default()).await.unwrap();
        let options = db.get_sqlite_connection_pool().options();
        // sea-orm's idle-time check replaces the ping on every checkout.
        assert!(!options.get_test_before_acquire());
    }
}
