//! Rate limits kept in the database, so every replica shares them and a
//! restart forgets nothing. GCRA: one row per key with the theoretical
//! arrival time (`tat`) of its next event. Keys are digests: no address or
//! IP is stored here.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::StoreError;
use crate::domain::{RateLimit, clock::millis_between};

/// One key charged against its limit.
#[derive(Debug, Clone)]
pub struct Charge {
    pub key: String,
    pub limit: RateLimit,
}

/// Takes one slot from every key, in one statement: an upsert whose update
/// only happens while the key is within its limit, so two replicas racing
/// for the last slot cannot both get it. Returns the keys that were over
/// their limit (nothing was taken from them; roll back to untake the rest).
pub async fn take(
    db: &impl ConnectionTrait,
    charges: &[Charge],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    if charges.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let mut sql = Sql::new(backend);
    sql.push("INSERT INTO rate_limits (key, tat, emission_ms, tolerance_ms) VALUES ");
    for (i, charge) in charges.iter().enumerate() {
        let emission = charge.limit.emission_millis();
        sql.push(if i == 0 { "(" } else { ", (" });
        sql.value(charge.key.clone());
        sql.push(", ");
        sql.value(now.saturating_add(emission));
        sql.push(", ");
        sql.value(emission);
        sql.push(", ");
        sql.value(charge.limit.tolerance_millis());
        sql.push(")");
    }
    let greatest = match backend {
        DbBackend::Sqlite => "max",
        _ => "GREATEST",
    };
    sql.push(&format!(
        " ON CONFLICT (key) DO UPDATE SET tat = {greatest}(rate_limits.tat, "
    ));
    sql.value(now);
    sql.push(
        ") + excluded.emission_ms, emission_ms = excluded.emission_ms, \
         tolerance_ms = excluded.tolerance_ms WHERE ",
    );
    sql.push(&format!("{greatest}(rate_limits.tat, "));
    sql.value(now);
    sql.push(") - ");
    sql.value(now);
    sql.push(" <= excluded.tolerance_ms RETURNING key");
    let taken: Vec<String> = db
        .query_all_raw(sql.statement())
        .await?
        .iter()
        .filter_map(|row| row.try_get::<String>("", "key").ok())
        .collect();
    Ok(charges
        .iter()
        .filter(|c| !taken.contains(&c.key))
        .map(|c| c.key.clone())
        .collect())
}

/// How long until every one of `keys` has a slot again.
pub async fn wait_for(
    db: &impl ConnectionTrait,
    keys: &[String],
    now: i64,
) -> Result<Duration, StoreError> {
    let mut wait = Duration::ZERO;
    for key in keys {
        if let Some(until) = free_at(db, key).await? {
            wait = wait.max(millis_between(now, until));
        }
    }
    Ok(wait)
}

/// When `key` is over its limit, how long until it has a slot. Reads only.
pub async fn over_limit(
    db: &impl ConnectionTrait,
    key: &str,
    now: i64,
) -> Result<Option<Duration>, StoreError> {
    Ok(free_at(db, key)
        .await?
        .filter(|&until| until > now)
        .map(|until| millis_between(now, until)))
}

/// The time from which `key` accepts an event again.
async fn free_at(db: &impl ConnectionTrait, key: &str) -> Result<Option<i64>, StoreError> {
    let mut sql = Sql::new(db.get_database_backend());
    sql.push("SELECT tat - tolerance_ms AS free_at FROM rate_limits WHERE key = ");
    sql.value(key.to_owned());
    let row = db.query_one_raw(sql.statement()).await?;
    Ok(row.and_then(|row| row.try_get::<i64>("", "free_at").ok()))
}

/// Deletes keys whose schedule has fallen behind now: they hold no state
/// that a fresh row would not.
pub async fn purge_idle(db: &impl ConnectionTrait, now: i64) -> Result<u64, StoreError> {
    let mut sql = Sql::new(db.get_database_backend());
    sql.push("DELETE FROM rate_limits WHERE tat <= ");
    sql.value(now);
    Ok(db.execute_raw(sql.statement()).await?.rows_affected())
}

/// A statement with values bound in the order they appear in the text.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn value(&mut self, value: impl Into<Value>) {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => self.text.push_str(&format!("${}", self.values.len())),
            _ => self.text.push('?'),
        }
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}
