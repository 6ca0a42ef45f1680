//! Point reads on a SQLite file without sqlx's worker threads.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement and row across; on `VerifyToken` those hand-offs cost more CPU
//! than the query. These reads run on the calling thread instead, through
//! read-only connections kept here: an indexed lookup in WAL mode takes
//! microseconds and does not wait for the writer's transactions.

use std::{path::PathBuf, sync::Mutex, time::Duration};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use sea_orm::{ActiveEnum, DbBackend, Statement};

use super::{StatementObserver, StoreError, entities::request, observed, requests::Request};
use crate::domain::Purpose;

/// Connections kept for reuse; more are opened while more threads read at once.
const KEPT_CONNECTIONS: usize = 8;

/// How long a read waits for a lock the writer holds briefly (WAL readers
/// wait only while the log is reset or recovered). It runs on a runtime
/// thread, so it is short; past it the caller is told to retry.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// A join, not `id IN (SELECT …)`: SQLite runs the subquery form through
/// an ephemeral table it opens and closes on every call.
const REQUEST_BY_TOKEN_DIGEST: &str = "SELECT r.id, r.purpose, r.email, r.account_id, \
     r.display_name, r.locale, r.created_at, r.expires_at, r.consumed_at, r.revoked_at \
     FROM request_tokens t JOIN requests r ON r.id = t.request_id WHERE t.digest = ?1 LIMIT 1";

/// Read-only connections to one SQLite file.
pub struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    observer: Option<StatementObserver>,
}

impl SqliteReads {
    /// For a SQLite file URL, with its first connection open; `None` for
    /// PostgreSQL and in-memory SQLite (whose data no other connection sees).
    pub fn open(
        url: &str,
        observer: Option<StatementObserver>,
    ) -> Result<Option<Self>, StoreError> {
        let Some(path) = super::sqlite_file_path(url) else {
            return Ok(None);
        };
        let reads = Self {
            path,
            idle: Mutex::new(Vec::new()),
            observer,
        };
        let first = reads.connect()?;
        if let Ok(mut idle) = reads.idle.lock() {
            idle.push(first);
        }
        Ok(Some(reads))
    }

    /// The request a token digest belongs to, if any.
    pub fn request_by_token_digest(&self, digest: &str) -> Result<Option<Request>, StoreError> {
        let statement = || {
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                REQUEST_BY_TOKEN_DIGEST,
                [digest.into()],
            )
        };
        let found = observed(self.observer.as_ref(), statement, || {
            self.with_connection(|connection| {
                connection
                    .prepare_cached(REQUEST_BY_TOKEN_DIGEST)?
                    .query_row([digest], request_from_row)
                    .optional()
            })
        });
        Ok(found?)
    }

    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let kept = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let connection = match kept {
            Some(connection) => connection,
            None => self.connect()?,
        };
        let result = read(&connection);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEPT_CONNECTIONS
        {
            idle.push(connection);
        }
        result
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        Ok(connection)
    }
}

/// Columns by position, in [`REQUEST_BY_TOKEN_DIGEST`]'s order (a lookup
/// by name compares every column's name).
fn request_from_row(row: &Row<'_>) -> rusqlite::Result<Request> {
    let purpose: String = row.get(1)?;
    let purpose = Purpose::try_from_value(&purpose).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(error.to_string())),
        )
    })?;
    Ok(request::Model {
        id: row.get(0)?,
        purpose,
        email: row.get(2)?,
        account_id: row.get(3)?,
        display_name: row.get(4)?,
        locale: row.get(5)?,
        created_at: row.get(6)?,
        expires_at: row.get(7)?,
        consumed_at: row.get(8)?,
        revoked_at: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, accounts, requests, token_reads::TokenReads};

    fn stored_request(id: &str, email: &str) -> Request {
        request::Model {
            id: id.to_owned(),
            purpose: Purpose::SignUp,
            email: email.to_owned(),
            account_id: None,
            display_name: "Jo".to_owned(),
            locale: "de-CH".to_owned(),
            created_at: 1_000,
            expires_at: 2_000,
            consumed_at: None,
            revoked_at: Some(1_500),
        }
    }

    #[tokio::test]
    async fn reads_the_same_request_as_sea_orm_does() {
        let file = store::migrated_sqlite_file().await;
        let (url, db) = (file.url.clone(), file.pool.clone());
        let account_id = accounts::insert(
            &db,
            accounts::NewAccount {
                email: "b@example.com",
                display_name: "Bo",
                password_hash: "$argon2id$stored",
                locale: "en",
                now: 900,
            },
        )
        .await
        .unwrap();
        let mut with_account = stored_request("r2", "b@example.com");
        with_account.account_id = Some(account_id);
        with_account.purpose = Purpose::Reset;
        with_account.revoked_at = None;
        with_account.consumed_at = Some(1_200);
        requests::insert_many(&db, &[stored_request("r1", "a@example.com"), with_account])
            .await
            .unwrap();
        requests::add_token_digests(&db, &[("r1", "d1"), ("r2", "d2"), ("r2", "d3")], 1_000)
            .await
            .unwrap();

        let direct = SqliteReads::open(&url, None).unwrap().unwrap();
        let through_pool = TokenReads::start(&db, None);
        for digest in ["d1", "d2", "d3", "unknown"] {
            let expected = through_pool.request_by_token_digest(digest).await.unwrap();
            let read = direct.request_by_token_digest(digest).unwrap();
            assert_eq!(read, expected, "digest {digest}");
        }
        assert_eq!(
            direct.request_by_token_digest("d3").unwrap().unwrap().id,
            "r2"
        );
    }

    #[test]
    fn only_a_sqlite_file_is_read_directly() {
        let read_directly = |url: &str| SqliteReads::open(url, None).unwrap().is_some();
        assert!(!read_directly("sqlite::memory:"));
        assert!(!read_directly("postgres://localhost/rekey"));
        assert!(SqliteReads::open("sqlite:///nonexistent/rekey.db", None).is_err());
    }
}
