//! Audit events: who did what, when, without secrets.

use std::sync::Arc;

use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ConnectionTrait, EntityTrait};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    AuditKind, StoreError, StoreFailure,
    entities::audit_event,
    group_commit::{GroupCommit, Rows},
};

/// One event. `email_hint` must be masked; `detail` must hold no secret.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    pub account_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub email_hint: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<&'a str>,
    pub caller: Option<&'a str>,
}

pub async fn record(
    db: &impl ConnectionTrait,
    kind: AuditKind,
    event: AuditEvent<'_>,
    now: i64,
) -> Result<(), StoreError> {
    audit_event::Entity::insert(row(kind, event, now))
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Records events of one kind, in one statement.
pub async fn record_many<'a>(
    db: &impl ConnectionTrait,
    kind: AuditKind,
    events: impl IntoIterator<Item = AuditEvent<'a>>,
    now: i64,
) -> Result<(), StoreError> {
    let rows = events.into_iter().map(|event| row(kind, event, now));
    audit_event::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// The row of one event, for a batch's multi-row insert.
pub fn row(kind: AuditKind, event: AuditEvent<'_>, now: i64) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: NotSet,
        at: Set(now),
        kind: Set(kind),
        account_id: Set(event.account_id.map(str::to_owned)),
        request_id: Set(event.request_id.map(str::to_owned)),
        email_hint: Set(event.email_hint),
        ip: Set(event.ip),
        detail: Set(event.detail.map(str::to_owned)),
        caller: Set(event.caller.map(str::to_owned)),
    }
}

/// Records that `count` open requests of an address were revoked, and why;
/// nothing when there were none.
pub async fn record_revocations(
    db: &impl ConnectionTrait,
    count: u64,
    email_hint: &str,
    reason: &str,
    caller: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    let event = AuditEvent {
        email_hint: Some(email_hint.to_owned()),
        detail: Some(reason),
        caller,
        ..Default::default()
    };
    record(db, AuditKind::Revoked, event, now).await
}

/// Events queued before the callers queueing more wait.
const QUEUE_DEPTH: usize = 8192;
/// Most events taken from the queue for one batch.
const MAX_ROWS: usize = 512;
/// Batches being written at once (in separate group commits, so on
/// PostgreSQL on separate lanes and connections).
const WRITES_IN_FLIGHT: usize = 4;

/// Audit events recorded off the caller's path (a verification's): queued,
/// then written many to a statement in group-committed writes, several at
/// once (one at a time, each write's round trips and commit bounded the
/// events written per second, and full queues made callers wait). Cheap to
/// clone; [`Self::flush`] waits until everything queued so far is written.
#[derive(Clone)]
pub struct AuditQueue {
    entries: mpsc::Sender<Entry>,
}

// Nearly every entry is an event: boxing them would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Event(audit_event::ActiveModel),
    Flush(oneshot::Sender<()>),
}

impl AuditQueue {
    /// Starts the task writing the queue through `writes`; it stops when
    /// the last handle is dropped, after the events already queued.
    pub fn start(writes: GroupCommit) -> Self {
        let (entries, queued) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_queued(writes, queued));
        Self { entries }
    }

    /// Queues an event; waits only while the queue is full.
    pub async fn record(
        &self,
        kind: AuditKind,
        event: AuditEvent<'_>,
        now: i64,
    ) -> Result<(), StoreFailure> {
        self.entries
            .send(Entry::Event(row(kind, event, now)))
            .await
            .map_err(|_| StoreFailure {
                doing: "queueing an audit event",
                source: StoreError::Database(sea_orm::DbErr::Custom("rekey is stopping".into())),
            })
    }

    /// Waits until the events queued so far are written (or failed).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.entries.send(Entry::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn write_queued(writes: GroupCommit, mut queued: mpsc::Receiver<Entry>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    let mut entries = Vec::with_capacity(MAX_ROWS);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if queued.recv_many(&mut entries, MAX_ROWS).await == 0 {
            break;
        }
        let mut rows = Vec::with_capacity(entries.len());
        let mut flushes = Vec::new();
        for entry in entries.drain(..) {
            match entry {
                Entry::Event(row) => rows.push(row),
                Entry::Flush(done) => flushes.push(done),
            }
        }
        let writes = writes.clone();
        tokio::spawn(async move {
            write(&writes, rows).await;
            drop(slot);
        });
        if !flushes.is_empty() {
            let _all_written = all_written(&slots).await;
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
    let _all_written = all_written(&slots).await;
}

/// Waits until no write is in flight; holds off new ones while kept.
async fn all_written(slots: &Semaphore) -> Option<tokio::sync::SemaphorePermit<'_>> {
    slots.acquire_many(WRITES_IN_FLIGHT as u32).await.ok()
}

async fn write(writes: &GroupCommit, rows: Vec<audit_event::ActiveModel>) {
    let events = rows.len();
    if events == 0 {
        return;
    }
    // The events join the batch's other rows: no statement of their own.
    let rows = rows.into_iter().fold(Rows::default(), Rows::audit);
    if let Err(error) = writes.insert::<StoreFailure>(rows).await {
        let error = anyhow::Error::new(error);
        tracing::warn!(error = format!("{error:#}"), events, "audit events lost");
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, PaginatorTrait};

    use super::*;
    use crate::store::migrated_sqlite_file;

    /// A flush waits for every batch in flight, not only for its own: the
    /// events span several batches written at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_waits_for_every_batch_in_flight() {
        let file = migrated_sqlite_file().await;
        let lanes = GroupCommit::lanes_for(&file.pool);
        let queue = AuditQueue::start(GroupCommit::start(&file.pool, lanes));
        let events = WRITES_IN_FLIGHT * MAX_ROWS * 2;
        for i in 0..events {
            let event = AuditEvent {
                detail: Some("flush test"),
                ..Default::default()
            };
            queue
                .record(AuditKind::Verified, event, i as i64)
                .await
                .unwrap();
        }
        queue.flush().await;
        let written = audit_event::Entity::find().count(&file.pool).await.unwrap();
        assert_eq!(written, events as u64);
    }
}
