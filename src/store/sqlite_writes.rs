//! The group commit's SQLite writer, outside sqlx.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement and row across. A batch of the group commit runs hundreds of
//! statements, so those hand-offs bounded SQLite's one writer. Here the
//! batch's statements run on a rusqlite connection, on the thread of the
//! lane that runs the batch: one hand-off per batch instead of one per
//! statement. The connection is a sea-orm proxy, so the work in a batch is
//! the same sea-orm code as on PostgreSQL.
//!
//! sea-orm's proxy cannot fail a `BEGIN` or a `COMMIT`, so the writer keeps
//! the first failure of its transaction: every later statement fails with
//! it, the transaction is rolled back when it ends, and the lane reads it
//! with [`SqliteWriter::take_failure`] instead of trusting the commit.
//!
//! Rows are read back by column name (what entities and `try_get` do);
//! reads by position (`into_tuple`) would see the columns sorted by name.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, ToSql,
    types::{ToSqlOutput, Value as SqliteValue, ValueRef},
};
use sea_orm::{
    ColumnTrait, ColumnType, DatabaseConnection, DbBackend, DbErr, EntityTrait, IdenStatic,
    Iterable, ProxyDatabaseConnector, ProxyDatabaseTrait, ProxyExecResult, ProxyRow, RuntimeErr,
    Statement, Value,
};

use super::{StatementObserver, StoreError, entities, observed};

/// How long a write waits for another connection's write lock (sqlx's
/// default for its own SQLite connections).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept: multi-row inserts differ by their row count.
const STATEMENT_CACHE: usize = 128;
/// How often the WAL is copied back into the database file, beside the
/// writer rather than in one of its commits.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// WAL pages past which the writer's own commit checkpoints anyway (should
/// the checkpoints beside it fall behind); SQLite's default is 1,000.
const WRITER_CHECKPOINT_PAGES: u32 = 20_000;
/// Starts the message of a unique-constraint failure (see
/// [`is_unique_violation`]).
const UNIQUE_VIOLATION: &str = "SQLite unique constraint failed";

/// A rusqlite connection that sea-orm drives as a proxy. Cheap to clone:
/// clones share the connection.
#[derive(Clone)]
pub struct SqliteWriter {
    state: Arc<Mutex<WriterState>>,
    observer: Option<StatementObserver>,
    narrow_columns: Arc<HashSet<String>>,
}

struct WriterState {
    connection: Connection,
    /// Open transactions: 1 for the batch, more for savepoints.
    depth: usize,
    /// The first failure of the open transaction, or of the last one until
    /// it is taken.
    failure: Option<DbErr>,
    /// Stops the checkpoints when the writer is dropped.
    _checkpoints: std::sync::mpsc::Sender<()>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriter")
    }
}

impl SqliteWriter {
    #[cfg(test)]
    fn set_busy_timeout(&self, timeout: Duration) {
        if let Ok(state) = self.lock() {
            let _ = state.connection.busy_timeout(timeout);
        }
    }

    /// For a SQLite file URL; `None` for PostgreSQL and in-memory SQLite
    /// (whose data no other connection sees).
    pub fn open_url(
        url: &str,
        observer: Option<StatementObserver>,
    ) -> Result<Option<Self>, StoreError> {
        match super::sqlite_file_path(url) {
            Some(path) => Ok(Some(Self::open(&path, observer)?)),
            None => Ok(None),
        }
    }

    /// Opens `path` for writing with the settings of sqlx's connections:
    /// WAL, foreign keys on, `synchronous = FULL` (a commit is on disk).
    /// Statement and savepoint journals stay in memory (`temp_store`): they
    /// only undo a statement or savepoint within a transaction, and past
    /// 64 KiB SQLite spilled them to a temporary file, a write per page.
    /// Checkpoints run on a thread of their own.
    pub fn open(path: &Path, observer: Option<StatementObserver>) -> Result<Self, StoreError> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES};"
        ))?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let checkpoints = start_checkpoints(path)?;
        Ok(Self {
            state: Arc::new(Mutex::new(WriterState {
                connection,
                depth: 0,
                failure: None,
                _checkpoints: checkpoints,
            })),
            observer,
            narrow_columns: Arc::new(narrow_integer_columns()),
        })
    }

    /// A sea-orm connection whose statements run on this writer.
    pub fn connection(&self) -> Result<DatabaseConnection, DbErr> {
        ProxyDatabaseConnector::connect(DbBackend::Sqlite, Arc::new(Box::new(self.clone())))
    }

    /// The failure of the last transaction (its `BEGIN`, a savepoint, its
    /// `COMMIT`, or a statement after which SQLite rolled it back), if any.
    pub fn take_failure(&self) -> Option<DbErr> {
        self.lock().ok().and_then(|mut state| state.failure.take())
    }

    fn lock(&self) -> Result<MutexGuard<'_, WriterState>, DbErr> {
        self.state
            .lock()
            .map_err(|_| DbErr::Conn(RuntimeErr::Internal("the SQLite writer panicked".into())))
    }

    /// Runs `statement`, reporting it to the observer.
    fn run<T>(
        &self,
        statement: &Statement,
        run: impl FnOnce(&mut WriterState) -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        observed(
            self.observer.as_ref(),
            || statement.clone(),
            || self.lock().and_then(|mut state| state.statement(run)),
        )
    }

    fn end(&self, commit: bool) {
        if let Ok(mut state) = self.lock() {
            state.end(commit);
        }
    }
}

/// Every [`CHECKPOINT_EVERY`], copies what it can of the WAL into the
/// database file without waiting for readers or the writer (`PASSIVE`), on
/// a connection and thread of its own; stops when the sender is dropped.
fn start_checkpoints(path: &Path) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let (stop, stopped) = channel::<()>();
    std::thread::Builder::new()
        .name("rekey-sqlite-checkpoints".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                // Busy while another connection checkpoints: the next turn will.
                if let Err(error) = connection.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::debug!(%error, "SQLite checkpoint skipped");
                }
            }
        })
        .map_err(StoreError::Thread)?;
    Ok(stop)
}

impl WriterState {
    fn begin(&mut self) {
        let sql = if self.depth == 0 {
            // A fresh transaction: the last one's failure was read or is moot.
            self.failure = None;
            "BEGIN IMMEDIATE".to_owned()
        } else {
            format!("SAVEPOINT rekey_{}", self.depth)
        };
        self.depth += 1;
        if self.failure.is_none()
            && let Err(error) = self.connection.execute_batch(&sql)
        {
            self.failure = Some(db_error(&error));
        }
    }

    /// Ends the innermost transaction. After a failure nothing is released:
    /// the whole transaction is rolled back when its outermost level ends.
    fn end(&mut self, commit: bool) {
        let Some(depth) = self.depth.checked_sub(1) else {
            return;
        };
        self.depth = depth;
        let sql = match (depth, commit && self.failure.is_none()) {
            (0, true) => "COMMIT".to_owned(),
            (0, false) => "ROLLBACK".to_owned(),
            (_, _) if self.failure.is_some() => return,
            (level, true) => format!("RELEASE rekey_{level}"),
            (level, false) => format!("ROLLBACK TO rekey_{level}; RELEASE rekey_{level}"),
        };
        if depth == 0 && self.connection.is_autocommit() {
            // Nothing open: the BEGIN failed, or SQLite rolled it back.
            if commit {
                self.failure.get_or_insert_with(|| {
                    DbErr::Exec(RuntimeErr::Internal(
                        "SQLite: the transaction was rolled back".into(),
                    ))
                });
            }
            return;
        }
        if let Err(error) = self.connection.execute_batch(&sql) {
            self.failure.get_or_insert_with(|| db_error(&error));
            if depth == 0 && !self.connection.is_autocommit() {
                let _ = self.connection.execute_batch("ROLLBACK");
            }
        }
    }

    /// Runs a statement unless the transaction failed; a statement after
    /// which SQLite rolled the transaction back fails the transaction.
    fn statement<T>(
        &mut self,
        run: impl FnOnce(&mut WriterState) -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let result = run(self);
        if let Err(error) = &result
            && self.depth > 0
            && self.connection.is_autocommit()
        {
            self.failure = Some(error.clone());
        }
        result
    }
}

#[async_trait::async_trait]
impl ProxyDatabaseTrait for SqliteWriter {
    async fn query(&self, statement: Statement) -> Result<Vec<ProxyRow>, DbErr> {
        let narrow = &self.narrow_columns;
        let statement = with_literal_limits(statement);
        self.run(&statement, |state| {
            query(&state.connection, &statement, narrow).map_err(|error| db_error(&error))
        })
    }

    async fn execute(&self, statement: Statement) -> Result<ProxyExecResult, DbErr> {
        let statement = with_literal_limits(statement);
        self.run(&statement, |state| {
            let mut prepared = state
                .connection
                .prepare_cached(&statement.sql)
                .map_err(|error| db_error(&error))?;
            bind(&mut prepared, &statement).map_err(|error| db_error(&error))?;
            let changed = prepared.raw_execute().map_err(|error| db_error(&error))?;
            let last_insert_id = state.connection.last_insert_rowid();
            Ok(ProxyExecResult::new(
                u64::try_from(last_insert_id).unwrap_or(0),
                u64::try_from(changed).unwrap_or(u64::MAX),
            ))
        })
    }

    async fn begin(&self) {
        if let Ok(mut state) = self.lock() {
            state.begin();
        }
    }

    async fn commit(&self) {
        self.end(true);
    }

    async fn rollback(&self) {
        self.end(false);
    }

    fn start_rollback(&self) {
        self.end(false);
    }
}

/// `statement` with each `LIMIT ?` bound to an integer written into the SQL
/// instead. SQLite plans a bound limit with its value, so a statement whose
/// limit is bound is prepared again at every execution (its status counts a
/// re-prepare each time); a literal limit keeps the cached plan. The limits
/// the store binds are a few constants (batch sizes, 1), so the cache holds
/// a statement per limit.
fn with_literal_limits(statement: Statement) -> Statement {
    const BOUND_LIMIT: &str = " LIMIT ?";
    let Some(values) = statement.values.as_ref() else {
        return statement;
    };
    if !statement.sql.contains(BOUND_LIMIT) {
        return statement;
    }
    let mut sql = String::with_capacity(statement.sql.len());
    let mut kept = Vec::with_capacity(values.0.len());
    let mut placeholder = 0;
    let mut quote: Option<char> = None;
    let mut rest = statement.sql.as_str();
    while let Some(next) = rest.chars().next() {
        if quote.is_none() && next == '?' {
            let value = values.0.get(placeholder);
            placeholder += 1;
            match value.and_then(literal_limit) {
                Some(limit) if sql.ends_with(" LIMIT ") => sql.push_str(&limit.to_string()),
                _ => {
                    sql.push('?');
                    if let Some(value) = value {
                        kept.push(value.clone());
                    }
                }
            }
        } else {
            // A doubled quote inside a literal closes and reopens it.
            match (quote, next) {
                (None, '\'' | '"') => quote = Some(next),
                (Some(open), _) if open == next => quote = None,
                _ => {}
            }
            sql.push(next);
        }
        rest = &rest[next.len_utf8()..];
    }
    if placeholder != values.0.len() {
        // Not the placeholders this scan expects: leave the statement alone.
        return statement;
    }
    Statement {
        sql,
        values: Some(sea_orm::Values(kept)),
        ..statement
    }
}

/// A limit's value as written into SQL: a non-negative integer.
fn literal_limit(value: &Value) -> Option<u64> {
    match value {
        Value::BigUnsigned(Some(v)) => Some(*v),
        Value::Unsigned(Some(v)) => Some(u64::from(*v)),
        Value::BigInt(Some(v)) => u64::try_from(*v).ok(),
        Value::Int(Some(v)) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn query(
    connection: &Connection,
    statement: &Statement,
    narrow: &HashSet<String>,
) -> rusqlite::Result<Vec<ProxyRow>> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    bind(&mut prepared, statement)?;
    let names: Vec<String> = prepared
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = prepared.raw_query();
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = BTreeMap::new();
        for (index, name) in names.iter().enumerate() {
            let value = column_value(row.get_ref(index)?, narrow.contains(name))?;
            values.insert(name.clone(), value);
        }
        read.push(ProxyRow::new(values));
    }
    Ok(read)
}

fn bind(
    prepared: &mut rusqlite::CachedStatement<'_>,
    statement: &Statement,
) -> rusqlite::Result<()> {
    if let Some(values) = &statement.values {
        for (index, value) in values.0.iter().enumerate() {
            prepared.raw_bind_parameter(index + 1, Param(value))?;
        }
    }
    Ok(())
}

/// A sea-query value bound as sqlx binds it to SQLite.
struct Param<'v>(&'v Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        fn integer(value: Option<impl Into<i64>>) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(value.map_or(SqliteValue::Null, |v| SqliteValue::Integer(v.into())))
        }
        fn unsupported(what: &'static str) -> rusqlite::Error {
            rusqlite::Error::ToSqlConversionFailure(what.into())
        }
        Ok(match self.0 {
            Value::Bool(v) => integer(*v),
            Value::TinyInt(v) => integer(*v),
            Value::SmallInt(v) => integer(*v),
            Value::Int(v) => integer(*v),
            Value::BigInt(v) => integer(*v),
            Value::TinyUnsigned(v) => integer(*v),
            Value::SmallUnsigned(v) => integer(*v),
            Value::Unsigned(v) => integer(*v),
            Value::BigUnsigned(v) => integer(
                v.map(i64::try_from)
                    .transpose()
                    .map_err(|_| unsupported("an unsigned value beyond SQLite's integers"))?,
            ),
            Value::Float(v) => {
                ToSqlOutput::Owned(v.map_or(SqliteValue::Null, |v| SqliteValue::Real(v.into())))
            }
            Value::Double(v) => ToSqlOutput::Owned(v.map_or(SqliteValue::Null, SqliteValue::Real)),
            Value::String(v) => v
                .as_deref()
                .map_or(ToSqlOutput::Owned(SqliteValue::Null), |s| {
                    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
                }),
            Value::Enum(sea_orm::sea_query::OptionEnum::Some(v)) => {
                ToSqlOutput::Borrowed(ValueRef::Text(v.value.as_bytes()))
            }
            Value::Enum(sea_orm::sea_query::OptionEnum::None(_)) => {
                ToSqlOutput::Owned(SqliteValue::Null)
            }
            Value::Char(v) => ToSqlOutput::Owned(
                v.map_or(SqliteValue::Null, |c| SqliteValue::Text(c.to_string())),
            ),
            Value::Bytes(v) => v
                .as_deref()
                .map_or(ToSqlOutput::Owned(SqliteValue::Null), |b| {
                    ToSqlOutput::Borrowed(ValueRef::Blob(b))
                }),
            Value::Json(v) => ToSqlOutput::Owned(match v {
                Some(json) => SqliteValue::Text(json.to_string()),
                None => SqliteValue::Null,
            }),
            #[allow(unreachable_patterns)]
            _ => return Err(unsupported("a value type rekey does not store in SQLite")),
        })
    }
}

/// A column read back as the value sea-orm's getters expect: integers as
/// `BigInt`, or `Int` where the entity field is an `i32`. A NULL's variant
/// does not matter: sea-orm reads a proxy value it cannot convert as NULL.
fn column_value(value: ValueRef<'_>, narrow: bool) -> rusqlite::Result<Value> {
    Ok(match value {
        ValueRef::Null => Value::BigInt(None),
        ValueRef::Integer(i) => match i32::try_from(i) {
            Ok(narrowed) if narrow => Value::Int(Some(narrowed)),
            _ => Value::BigInt(Some(i)),
        },
        ValueRef::Real(f) => Value::Double(Some(f)),
        ValueRef::Text(text) => Value::String(Some(
            std::str::from_utf8(text)
                .map_err(rusqlite::Error::from)?
                .to_owned(),
        )),
        ValueRef::Blob(b) => Value::Bytes(Some(b.to_vec())),
    })
}

/// Names of the entity columns whose field is narrower than `i64`.
fn narrow_integer_columns() -> HashSet<String> {
    fn narrow<E: EntityTrait>(names: &mut HashSet<String>) {
        for column in E::Column::iter() {
            if matches!(
                column.def().get_column_type(),
                ColumnType::Integer | ColumnType::SmallInteger | ColumnType::TinyInteger
            ) {
                names.insert(column.as_str().to_owned());
            }
        }
    }
    let mut names = HashSet::new();
    narrow::<entities::account::Entity>(&mut names);
    narrow::<entities::request::Entity>(&mut names);
    narrow::<entities::request_token::Entity>(&mut names);
    narrow::<entities::mail_outbox::Entity>(&mut names);
    narrow::<entities::audit_event::Entity>(&mut names);
    names
}

/// A sea-orm error for a rusqlite one: busy, locked and I/O failures as
/// connection errors (the caller is told to retry); no values in it.
fn db_error(error: &rusqlite::Error) -> DbErr {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) if super::sqlite_unavailable(failure.code) => {
            DbErr::Conn(RuntimeErr::Internal(format!("SQLite: {error}")))
        }
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            DbErr::Exec(RuntimeErr::Internal(format!("{UNIQUE_VIOLATION}: {error}")))
        }
        _ => DbErr::Exec(RuntimeErr::Internal(format!("SQLite: {error}"))),
    }
}

/// True when `error` is this writer's unique-constraint failure.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error, DbErr::Exec(RuntimeErr::Internal(message)) if message.starts_with(UNIQUE_VIOLATION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        self, MailStatus, StoreFailure, accounts,
        group_commit::{Decision, GroupCommit, Rows, WorkFuture},
        outbox::{self, MailIntent},
    };
    use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait};

    fn writer(url: &str) -> SqliteWriter {
        SqliteWriter::open_url(url, None).unwrap().unwrap()
    }

    fn intent() -> MailIntent {
        MailIntent::Reset {
            locale: "de-CH".into(),
            reset_url: "https://app.example.com/reset".into(),
        }
    }

    async fn mail_count(pool: &DatabaseConnection) -> i64 {
        let row = pool
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) AS n FROM mail_outbox",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "n").unwrap()
    }

    #[tokio::test]
    async fn rows_written_and_read_back_match_what_sqlx_reads() {
        let db = store::migrated_sqlite_file().await;
        let writer = writer(&db.url);
        let proxy = writer.connection().unwrap();

        let tx = proxy.begin().await.unwrap();
        let first = outbox::enqueue(&tx, "a@example.com", &intent(), 1_000)
            .await
            .unwrap();
        let second = outbox::enqueue(&tx, "b@example.com", &intent(), 1_001)
            .await
            .unwrap();
        assert_eq!(second, first + 1);
        let mut claimed = outbox::claim_due(&tx, 2_000, 9_000, 10, 12).await.unwrap();
        claimed.sort_by_key(|job| job.id);
        tx.commit().await.unwrap();
        assert!(writer.take_failure().is_none());

        let mut by_sqlx = outbox::claim_due(&db.pool, 9_500, 20_000, 10, 12)
            .await
            .unwrap();
        by_sqlx.sort_by_key(|job| job.id);
        assert_eq!(claimed.len(), 2);
        assert_eq!(by_sqlx.len(), 2);
        for (through_writer, through_sqlx) in claimed.iter().zip(by_sqlx.iter_mut()) {
            assert!(through_writer.lease_token.is_some());
            assert_ne!(through_writer.lease_token, through_sqlx.lease_token);
            assert_eq!(through_writer.attempts, 1);
            assert_eq!(through_sqlx.attempts, 2);
            assert_eq!(through_writer.status, MailStatus::Pending);
            assert!(through_writer.sent_at.is_none());
            assert_eq!(through_writer.locked_until, Some(9_000));
            assert_eq!(through_writer.next_attempt_at, 9_000);
            // The same row, but for the second claim's fields.
            through_sqlx.attempts = through_writer.attempts;
            through_sqlx.locked_until = through_writer.locked_until;
            through_sqlx.next_attempt_at = through_writer.next_attempt_at;
            through_sqlx.lease_token = through_writer.lease_token.clone();
            assert_eq!(through_writer, through_sqlx);
        }
        assert_eq!(outbox::intent(&claimed[0]).unwrap(), intent());

        // Every optional column set, read both ways.
        db.pool
            .execute_unprepared(&format!(
                "UPDATE mail_outbox SET request_id = 'r1', last_error = 'relay said no', \
                 sent_at = 5, trace_context = '00-abc-def-01', status = 'dead' WHERE id = {first}"
            ))
            .await
            .unwrap();
        let through_writer = mail_outbox_by_id(&proxy, first).await;
        assert_eq!(through_writer, mail_outbox_by_id(&db.pool, first).await);
        assert_eq!(through_writer.request_id.as_deref(), Some("r1"));
        assert_eq!(through_writer.last_error.as_deref(), Some("relay said no"));
        assert_eq!(through_writer.sent_at, Some(5));
        assert_eq!(
            through_writer.trace_context.as_deref(),
            Some("00-abc-def-01")
        );
        assert_eq!(through_writer.status, MailStatus::Dead);
    }

    #[test]
    fn bound_limits_are_written_into_the_sql_and_nothing_else_moves() {
        let statement = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            r#"SELECT "id" FROM "t" WHERE "a" = ? AND "b" = 'it''s ?' AND "c?" = ? LIMIT ? OFFSET ?"#,
            [
                Value::from("x"),
                Value::from(7_i64),
                Value::from(32_u64),
                Value::from(5_u64),
            ],
        );
        let written = with_literal_limits(statement);
        assert_eq!(
            written.sql,
            r#"SELECT "id" FROM "t" WHERE "a" = ? AND "b" = 'it''s ?' AND "c?" = ? LIMIT 32 OFFSET ?"#
        );
        assert_eq!(
            written.values.unwrap().0,
            vec![Value::from("x"), Value::from(7_i64), Value::from(5_u64)]
        );

        // A limit that is not a non-negative integer stays bound.
        let negative = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            r#"SELECT "id" FROM "t" LIMIT ?"#,
            [Value::from(-1_i64)],
        );
        let kept = with_literal_limits(negative.clone());
        assert_eq!(kept.sql, negative.sql);
        assert_eq!(kept.values, negative.values);
    }

    #[tokio::test]
    async fn a_claim_keeps_its_prepared_plan_from_one_batch_to_the_next() {
        let db = store::migrated_sqlite_file().await;
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let observer: StatementObserver = {
            let seen = seen.clone();
            Arc::new(move |info: &sea_orm::metric::Info<'_>| {
                seen.lock().unwrap().push(info.statement.sql.clone());
            })
        };
        let writer = SqliteWriter::open_url(&db.url, Some(observer))
            .unwrap()
            .unwrap();
        let proxy = writer.connection().unwrap();
        for (i, email) in ["a@example.com", "b@example.com", "c@example.com"]
            .iter()
            .enumerate()
        {
            outbox::enqueue(&proxy, email, &intent(), 1_000 + i as i64)
                .await
                .unwrap();
        }
        seen.lock().unwrap().clear();
        for now in [2_000, 3_000, 4_000] {
            let claimed = outbox::claim_due(&proxy, now, now + 10, 1, 12)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
        }
        assert!(writer.take_failure().is_none());

        let claims: HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
        assert_eq!(claims.len(), 1, "{claims:?}");
        let claim = claims.into_iter().next().unwrap();
        assert!(claim.contains(" LIMIT 1 "), "{claim}");
        let state = writer.lock().unwrap();
        let cached = state.connection.prepare_cached(&claim).unwrap();
        assert_eq!(cached.get_status(rusqlite::StatementStatus::Run), 3);
        // A bound limit had SQLite prepare the claim again at every run.
        assert_eq!(cached.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    async fn mail_outbox_by_id(db: &DatabaseConnection, id: i64) -> outbox::MailJob {
        entities::mail_outbox::Entity::find_by_id(id)
            .one(db)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_fails_the_whole_batch() {
        let db = store::migrated_sqlite_file().await;
        let writes = GroupCommit::start_on_sqlite(writer(&db.url)).unwrap();
        let job = || outbox::new_job("a@example.com", &intent(), 1_000).unwrap();
        writes
            .insert::<StoreFailure>(Rows::default().mail(job()))
            .await
            .unwrap();

        // A statement after which SQLite rolls back the whole transaction,
        // by work that ignores the error and keeps its mail: nothing may
        // then be written outside the transaction.
        let undone = writes.write_then_insert(
            |tx: &DatabaseTransaction| -> WorkFuture<'_, (), StoreFailure> {
                Box::pin(async move {
                    let duplicate = tx
                        .execute_unprepared(
                            "INSERT OR ROLLBACK INTO mail_outbox SELECT * FROM mail_outbox",
                        )
                        .await;
                    assert!(duplicate.is_err());
                    Ok(Decision::Keep(()))
                })
            },
            Rows::default().mail(job()),
        );
        assert!(undone.await.is_err());
        assert_eq!(mail_count(&db.pool).await, 1);

        writes
            .insert::<StoreFailure>(Rows::default().mail(job()))
            .await
            .unwrap();
        assert_eq!(mail_count(&db.pool).await, 2);
    }

    #[tokio::test]
    async fn an_undone_savepoint_keeps_the_rest_of_the_transaction() {
        let db = store::migrated_sqlite_file().await;
        let writer = writer(&db.url);
        let proxy = writer.connection().unwrap();

        let tx = proxy.begin().await.unwrap();
        outbox::enqueue(&tx, "kept@example.com", &intent(), 1_000)
            .await
            .unwrap();
        let savepoint = tx.begin().await.unwrap();
        outbox::enqueue(&savepoint, "undone@example.com", &intent(), 1_000)
            .await
            .unwrap();
        savepoint.rollback().await.unwrap();
        let savepoint = tx.begin().await.unwrap();
        outbox::enqueue(&savepoint, "released@example.com", &intent(), 1_000)
            .await
            .unwrap();
        savepoint.commit().await.unwrap();
        tx.commit().await.unwrap();
        assert!(writer.take_failure().is_none());

        let jobs = outbox::claim_due(&db.pool, 2_000, 3_000, 10, 12)
            .await
            .unwrap();
        let mut recipients: Vec<_> = jobs.iter().map(|job| job.recipient.as_str()).collect();
        recipients.sort_unstable();
        assert_eq!(recipients, ["kept@example.com", "released@example.com"]);
    }

    #[tokio::test]
    async fn a_dropped_transaction_is_rolled_back() {
        let db = store::migrated_sqlite_file().await;
        let writer = writer(&db.url);
        let proxy = writer.connection().unwrap();
        {
            let tx = proxy.begin().await.unwrap();
            outbox::enqueue(&tx, "a@example.com", &intent(), 1_000)
                .await
                .unwrap();
        }
        assert_eq!(mail_count(&db.pool).await, 0);
        // The connection is usable again.
        let tx = proxy.begin().await.unwrap();
        outbox::enqueue(&tx, "a@example.com", &intent(), 1_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(mail_count(&db.pool).await, 1);
    }

    #[tokio::test]
    async fn a_unique_violation_is_recognised() {
        let db = store::migrated_sqlite_file().await;
        let proxy = writer(&db.url).connection().unwrap();
        let account = || accounts::NewAccount {
            email: "a@example.com",
            display_name: "A",
            password_hash: "$argon2id$stored",
            locale: "en",
            now: 1_000,
        };
        accounts::insert(&proxy, account()).await.unwrap();
        let error = accounts::insert(&proxy, account()).await.unwrap_err();
        assert!(error.is_unique_violation(), "{error}");
        assert!(!error.is_unavailable());
    }

    #[tokio::test]
    async fn a_locked_file_fails_the_batch_as_unavailable_and_writes_nothing() {
        let db = store::migrated_sqlite_file().await;
        let writer = writer(&db.url);
        writer.set_busy_timeout(Duration::from_millis(50));
        let writes = GroupCommit::start_on_sqlite(writer).unwrap();
        let job = || outbox::new_job("a@example.com", &intent(), 1_000).unwrap();

        let other = Connection::open(store::sqlite_file_path(&db.url).unwrap()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let refused = writes
            .insert::<StoreFailure>(Rows::default().mail(job()))
            .await
            .unwrap_err();
        assert!(refused.source.is_unavailable(), "{refused:?}");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(mail_count(&db.pool).await, 0);

        writes
            .insert::<StoreFailure>(Rows::default().mail(job()))
            .await
            .unwrap();
        assert_eq!(mail_count(&db.pool).await, 1);
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let db = store::migrated_sqlite_file().await;
        let path = store::sqlite_file_path(&db.url).unwrap();
        // Whatever the migrations left in the WAL goes into the file first.
        db.pool
            .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let writer = writer(&db.url);
        let proxy = writer.connection().unwrap();
        let tx = proxy.begin().await.unwrap();
        for n in 0..500 {
            outbox::enqueue(&tx, &format!("user{n}@example.com"), &intent(), 1_000)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        assert!(writer.take_failure().is_none());
        // The writer's own commits checkpoint only past 20,000 pages: the
        // database file grows only when the checkpoint thread copies the WAL.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 10 s"
            );
            tokio::time::sleep(CHECKPOINT_EVERY / 4).await;
        }
    }

    #[tokio::test]
    async fn commits_reach_the_disk_and_statement_journals_stay_in_memory() {
        let db = store::migrated_sqlite_file().await;
        let writer = writer(&db.url);
        let state = writer.state.lock().unwrap();
        let setting = |name: &str| -> i64 {
            state
                .connection
                .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
                .unwrap()
        };
        // FULL: every commit is synced; MEMORY: never spilled to a file.
        assert_eq!(setting("synchronous"), 2);
        assert_eq!(setting("temp_store"), 2);
    }

    #[test]
    fn integer_widths_follow_the_entities() {
        let narrow = narrow_integer_columns();
        assert_eq!(narrow, HashSet::from(["attempts".to_owned()]));
        assert_eq!(
            column_value(ValueRef::Integer(3), true).unwrap(),
            Value::Int(Some(3))
        );
        assert_eq!(
            column_value(ValueRef::Integer(3), false).unwrap(),
            Value::BigInt(Some(3))
        );
        assert_eq!(
            column_value(ValueRef::Integer(i64::MAX), true).unwrap(),
            Value::BigInt(Some(i64::MAX))
        );
    }
}
