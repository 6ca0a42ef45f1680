//! Group commit: the writes of many calls run in one transaction, each in
//! its own savepoint, and are committed once. N calls then cost one commit
//! (one fsync), which is what bounds SQLite's single writer; each caller
//! still hears back only once its write is durable. Plain inserts a call
//! hands over as [`Rows`] are merged across the batch: one multi-row
//! statement per table instead of one statement per call.
//!
//! Work is spread over a few lanes, each a task with one transaction at a
//! time: one lane on SQLite (it has one writer anyway), several on
//! PostgreSQL so writes still use more than one connection. On a SQLite
//! file the lane runs on a thread of its own, its statements on a
//! [`SqliteWriter`] there rather than through sqlx.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    StoreContext, StoreError, StoreFailure,
    entities::{audit_event, mail_outbox},
    sqlite_writes::SqliteWriter,
};

/// Most pieces of work committed together.
const MAX_BATCH: usize = 256;
/// Most rows in one multi-row insert (SQLite allows 32,766 bound values).
const MAX_ROWS_PER_INSERT: usize = 512;
/// Work waiting per lane before submitters wait too.
const LANE_QUEUE: usize = 4096;

/// What a piece of work decided: keep its writes, or undo them (its own
/// only) and still answer `T`.
pub enum Decision<T> {
    Keep(T),
    Discard(T),
}

pub type WorkFuture<'t, T, E> = Pin<Box<dyn Future<Output = Result<Decision<T>, E>> + Send + 't>>;

/// Rows a piece of work inserts if it is kept. They are written with the
/// rows of the rest of its batch, just before the commit, so they need no
/// statement (nor savepoint) of their own.
#[derive(Default)]
pub struct Rows {
    mail: Vec<mail_outbox::ActiveModel>,
    audit: Vec<audit_event::ActiveModel>,
}

impl Rows {
    pub fn mail(mut self, job: mail_outbox::ActiveModel) -> Self {
        self.mail.push(job);
        self
    }

    pub fn audit(mut self, event: audit_event::ActiveModel) -> Self {
        self.audit.push(event);
        self
    }

    fn append(&mut self, mut other: Rows) {
        self.mail.append(&mut other.mail);
        self.audit.append(&mut other.audit);
    }

    async fn insert(self, tx: &DatabaseTransaction) -> Result<(), DbErr> {
        let mut mail = self.mail.into_iter().peekable();
        while mail.peek().is_some() {
            mail_outbox::Entity::insert_many(mail.by_ref().take(MAX_ROWS_PER_INSERT))
                .exec_without_returning(tx)
                .await?;
        }
        let mut audit = self.audit.into_iter().peekable();
        while audit.peek().is_some() {
            audit_event::Entity::insert_many(audit.by_ref().take(MAX_ROWS_PER_INSERT))
                .exec_without_returning(tx)
                .await?;
        }
        Ok(())
    }
}

/// What a submitter hands a lane: work to run in a savepoint, or a decision
/// already taken (no savepoint, no statement).
enum Step<W, T> {
    Work(W),
    Decided(Decision<T>),
}

/// The work type of a [`Step::Decided`].
type NoWork<E> = for<'t> fn(&'t DatabaseTransaction) -> WorkFuture<'t, (), E>;

/// Tells the submitter how its work ended, given whether the batch committed.
type Answer = Box<dyn FnOnce(Result<(), &DbErr>) + Send>;
/// Runs in the batch's transaction, or fails with why it could not start;
/// yields the rows it keeps for the batch's inserts.
type Job =
    Box<dyn for<'t> FnOnce(Result<&'t DatabaseTransaction, &'t DbErr>) -> AnswerFuture<'t> + Send>;
type AnswerFuture<'t> = Pin<Box<dyn Future<Output = (Answer, Rows)> + Send + 't>>;

/// Submits write work to the lanes. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    lanes: Arc<[mpsc::Sender<Job>]>,
    next: Arc<AtomicUsize>,
    /// Fail work at once when its lane's queue is full, instead of waiting.
    refuse_when_full: bool,
}

impl GroupCommit {
    /// Starts `lanes` lane tasks on `db`; they stop when the last handle
    /// is dropped, after the work already submitted.
    pub fn start(db: &DatabaseConnection, lanes: usize) -> Self {
        let lanes: Arc<[_]> = (0..lanes.max(1))
            .map(|_| {
                let (submit, jobs) = mpsc::channel(LANE_QUEUE);
                tokio::spawn(run_lane(db.clone(), None, jobs));
                submit
            })
            .collect();
        Self {
            lanes,
            next: Arc::new(AtomicUsize::new(0)),
            refuse_when_full: false,
        }
    }

    /// Starts one lane whose statements run on `writer`, on a thread of its
    /// own (a commit's fsync blocks it, not the runtime's threads); it
    /// stops when the last handle is dropped, after the work submitted.
    pub fn start_on_sqlite(writer: SqliteWriter) -> std::io::Result<Self> {
        let db = writer.connection().map_err(std::io::Error::other)?;
        let (submit, jobs) = mpsc::channel(LANE_QUEUE);
        // The runtime is built, run and dropped on the lane's thread (a
        // runtime may not be dropped inside another); it reports whether
        // it could be built.
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("rekey-sqlite-writer".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = started.send(Ok(()));
                        runtime.block_on(run_lane(db, Some(writer), jobs));
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })?;
        start
            .recv()
            .map_err(|_| std::io::Error::other("the SQLite writer's thread stopped at once"))??;
        Ok(Self {
            lanes: Arc::new([submit]),
            next: Arc::new(AtomicUsize::new(0)),
            refuse_when_full: false,
        })
    }

    /// The same lanes, for calls: work submitted while every lane already
    /// queues [`LANE_QUEUE`] pieces fails at once with
    /// [`StoreError::Saturated`] rather than waiting for room, so callers
    /// are refused with a retry delay instead of waiting out their
    /// deadline. The mail worker keeps waiting: its outcomes must be kept.
    pub fn refusing_when_full(&self) -> Self {
        Self {
            refuse_when_full: true,
            ..self.clone()
        }
    }

    /// The same lanes, waiting for room: for a write that must be kept
    /// with an answer already decided (the audit row of a refusal).
    pub fn waiting(&self) -> Self {
        Self {
            refuse_when_full: false,
            ..self.clone()
        }
    }

    /// Lanes for `db`: one on SQLite, a few on servers with many connections.
    pub fn lanes_for(db: &DatabaseConnection) -> usize {
        match db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => 4,
        }
    }

    /// Runs `work` in the next batch and answers once the batch is
    /// committed. A failed commit fails every piece of the batch.
    pub async fn write<T, E>(
        &self,
        work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreFailure> + Send + 'static,
    {
        self.write_then_insert(work, Rows::default()).await
    }

    /// Like [`write`](Self::write); if `work` keeps its writes, `rows` are
    /// inserted too, with the rest of the batch's rows.
    pub async fn write_then_insert<T, E>(
        &self,
        work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
        rows: Rows,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreFailure> + Send + 'static,
    {
        self.run(Step::Work(work), rows).await
    }

    /// Inserts `rows` in the next batch (no savepoint, no statement of
    /// their own) and answers once the batch is committed.
    pub async fn insert<E>(&self, rows: Rows) -> Result<(), E>
    where
        E: From<StoreFailure> + Send + 'static,
    {
        self.run(Step::<NoWork<E>, ()>::Decided(Decision::Keep(())), rows)
            .await
    }

    /// Submits `step` and its rows and waits for the batch's answer.
    async fn run<T, E, W>(&self, step: Step<W, T>, rows: Rows) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreFailure> + Send + 'static,
        W: for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = erase(step, rows, answer);
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        if self.refuse_when_full {
            self.try_submit(first, job)?;
        } else {
            self.lanes[first % self.lanes.len()]
                .send(job)
                .await
                .map_err(|_| lane_gone())?;
        }
        answered
            .await
            .map_err(|_| E::from(lane_gone()))
            .and_then(|result| result)
    }

    /// Queues `job` on the first lane from `first` on that has room.
    fn try_submit(&self, first: usize, mut job: Job) -> Result<(), StoreFailure> {
        for offset in 0..self.lanes.len() {
            let lane = &self.lanes[first.wrapping_add(offset) % self.lanes.len()];
            match lane.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(refused)) => job = refused,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(lane_gone()),
            }
        }
        Err(StoreFailure {
            doing: "queueing a write",
            source: StoreError::Saturated,
        })
    }

    /// Waits until the work submitted so far, on every lane, has ended.
    pub async fn flush(&self) {
        for lane in self.lanes.iter() {
            let (answer, answered) = oneshot::channel::<Result<(), StoreFailure>>();
            let job = erase(
                Step::<NoWork<StoreFailure>, ()>::Decided(Decision::Discard(())),
                Rows::default(),
                answer,
            );
            if lane.send(job).await.is_ok() {
                let _ = answered.await;
            }
        }
    }
}

/// Wraps typed work into a lane job that runs it in a savepoint, inside
/// the submitter's span, and hands its rows to the batch if it is kept. Work
/// whose submitter stopped waiting (deadline, cancelled call) is skipped, or
/// undone if it already ran: a caller told its call failed must not find it
/// applied later.
fn erase<T, E, W>(step: Step<W, T>, rows: Rows, answer: oneshot::Sender<Result<T, E>>) -> Job
where
    T: Send + 'static,
    E: From<StoreFailure> + Send + 'static,
    W: for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
{
    let span = tracing::Span::current();
    Box::new(
        move |tx: Result<&DatabaseTransaction, &DbErr>| -> AnswerFuture<'_> {
            Box::pin(
                async move {
                    let tx = match tx {
                        Ok(tx) if !answer.is_closed() => tx,
                        Ok(_) => return (no_answer(), Rows::default()),
                        Err(error) => {
                            let _ = answer.send(Err(E::from(StoreFailure {
                                doing: "starting a batch of writes",
                                source: error.clone().into(),
                            })));
                            return (no_answer(), Rows::default());
                        }
                    };
                    let outcome = match step {
                        Step::Work(work) => in_savepoint(tx, work, || answer.is_closed()).await,
                        Step::Decided(Decision::Keep(value)) => Ok((value, true)),
                        Step::Decided(Decision::Discard(value)) => Ok((value, false)),
                    };
                    let kept_rows = match &outcome {
                        Ok((_, true)) => rows,
                        _ => Rows::default(),
                    };
                    let answer = Box::new(move |committed: Result<(), &DbErr>| {
                        let result = match (outcome, committed) {
                            (Ok((value, _)), Ok(())) => Ok(value),
                            (Err(error), _) => Err(error),
                            (Ok(_), Err(error)) => Err(E::from(StoreFailure {
                                doing: "committing a batch of writes",
                                source: error.clone().into(),
                            })),
                        };
                        let _ = answer.send(result);
                    }) as Answer;
                    (answer, kept_rows)
                }
                .instrument(span),
            )
        },
    )
}

/// For work already answered (or whose submitter left).
fn no_answer() -> Answer {
    Box::new(|_: Result<(), &DbErr>| {})
}

/// Runs `work` in a savepoint of `tx`, undone when `work` fails, discards
/// its writes or is `abandoned`; the flag says whether its writes were kept.
pub async fn in_savepoint<T, E: From<StoreFailure>>(
    tx: &DatabaseTransaction,
    work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E>,
    abandoned: impl Fn() -> bool,
) -> Result<(T, bool), E> {
    let savepoint = tx.begin().await.context("starting a savepoint")?;
    match work(&savepoint).await {
        Ok(Decision::Keep(value)) if !abandoned() => {
            savepoint.commit().await.context("releasing a savepoint")?;
            Ok((value, true))
        }
        Ok(Decision::Keep(value) | Decision::Discard(value)) => {
            savepoint.rollback().await.context("undoing a savepoint")?;
            Ok((value, false))
        }
        Err(error) => {
            savepoint.rollback().await.context("undoing a savepoint")?;
            Err(error)
        }
    }
}

/// Runs batches of `jobs` on `db`; with `writer`, the connection behind
/// `db`, whose failures its commit does not report.
async fn run_lane(
    db: DatabaseConnection,
    writer: Option<SqliteWriter>,
    mut jobs: mpsc::Receiver<Job>,
) {
    let failure = || writer.as_ref().and_then(SqliteWriter::take_failure);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let begun = db.begin().await.and_then(|tx| match failure() {
            Some(error) => Err(error),
            None => Ok(tx),
        });
        let tx = match begun {
            Ok(tx) => tx,
            Err(error) => {
                for job in batch.drain(..) {
                    let _answered = job(Err(&error)).await;
                }
                continue;
            }
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut rows = Rows::default();
        for job in batch.drain(..) {
            let (answer, kept_rows) = job(Ok(&tx)).await;
            rows.append(kept_rows);
            answers.push(answer);
        }
        // Rows that cannot be inserted fail the whole batch, as a failed
        // commit does: nobody is told their write is durable.
        let committed = match rows.insert(&tx).await {
            Ok(()) => tx
                .commit()
                .await
                .and_then(|()| failure().map_or(Ok(()), Err)),
            Err(error) => {
                let _ = tx.rollback().await;
                let _ = failure();
                Err(error)
            }
        };
        for answer in answers {
            answer(committed.as_ref().copied());
        }
    }
}

fn lane_gone() -> StoreFailure {
    StoreFailure {
        doing: "writing in a batch",
        source: DbErr::Custom("rekey is stopping".into()).into(),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::Database;

    use super::*;

    #[tokio::test]
    async fn a_full_lane_refuses_calls_at_once_and_keeps_the_queued_work() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let waiting = GroupCommit::start(&db, 1);
        let refusing = waiting.refusing_when_full();
        let lane = waiting.lanes[0].clone();

        // The lane's batch holds, once it has begun, until `release`.
        let (begun, began) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let held = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                waiting
                    .write(
                        move |_: &DatabaseTransaction| -> WorkFuture<'_, (), StoreFailure> {
                            Box::pin(async move {
                                let _ = begun.send(());
                                let _ = released.await;
                                Ok(Decision::Keep(()))
                            })
                        },
                    )
                    .await
            }
        });
        began.await.unwrap();
        let queued: Vec<_> = (0..LANE_QUEUE)
            .map(|_| {
                let waiting = waiting.clone();
                tokio::spawn(async move { waiting.insert::<StoreFailure>(Rows::default()).await })
            })
            .collect();
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while lane.capacity() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the lane's queue fills");

        let refused = refusing
            .insert::<StoreFailure>(Rows::default())
            .await
            .unwrap_err();
        assert!(
            matches!(refused.source, StoreError::Saturated),
            "{refused:?}"
        );

        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        for work in queued {
            work.await.unwrap().unwrap();
        }
        refusing
            .insert::<StoreFailure>(Rows::default())
            .await
            .unwrap();
    }

    #[test]
    fn a_call_takes_any_lane_with_room_and_is_refused_only_when_all_are_full() {
        let (first, _first_jobs) = mpsc::channel(1);
        let (second, _second_jobs) = mpsc::channel(1);
        let writes = GroupCommit {
            lanes: Arc::new([first.clone(), second.clone()]),
            next: Arc::new(AtomicUsize::new(0)),
            refuse_when_full: true,
        };
        writes.try_submit(0, idle_job()).unwrap();
        assert_eq!((first.capacity(), second.capacity()), (0, 1));
        writes.try_submit(0, idle_job()).unwrap();
        assert_eq!((first.capacity(), second.capacity()), (0, 0));
        let refused = writes.try_submit(1, idle_job()).unwrap_err();
        assert!(
            matches!(refused.source, StoreError::Saturated),
            "{refused:?}"
        );
    }

    fn idle_job() -> Job {
        fn run<'t>(_: Result<&'t DatabaseTransaction, &'t DbErr>) -> AnswerFuture<'t> {
            Box::pin(async { (no_answer(), Rows::default()) })
        }
        Box::new(run)
    }
}
