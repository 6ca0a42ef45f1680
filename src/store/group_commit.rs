//! Group commit: the writes of many calls run in one transaction, each in
//! its own savepoint, and are committed once. N calls then cost one commit
//! (one fsync), which is what bounds SQLite's single writer; each caller
//! still hears back only once its write is durable.
//!
//! Work is spread over a few lanes, each a task with one transaction at a
//! time: one lane on SQLite (it has one writer anyway), several on
//! PostgreSQL so writes still use more than one connection.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{StoreContext, StoreFailure};

/// Most pieces of work committed together.
const MAX_BATCH: usize = 256;
/// Work waiting per lane before submitters wait too.
const LANE_QUEUE: usize = 4096;

/// What a piece of work decided: keep its writes, or undo them (its own
/// only) and still answer `T`.
pub enum Decision<T> {
    Keep(T),
    Discard(T),
}

pub type WorkFuture<'t, T, E> = Pin<Box<dyn Future<Output = Result<Decision<T>, E>> + Send + 't>>;

/// Tells the submitter how its work ended, given whether the batch committed.
type Answer = Box<dyn FnOnce(Result<(), &DbErr>) + Send>;
/// Runs in the batch's transaction, or fails with why it could not start.
type Job =
    Box<dyn for<'t> FnOnce(Result<&'t DatabaseTransaction, &'t DbErr>) -> AnswerFuture<'t> + Send>;
type AnswerFuture<'t> = Pin<Box<dyn Future<Output = Answer> + Send + 't>>;

/// Submits write work to the lanes. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    lanes: Arc<[mpsc::Sender<Job>]>,
    next: Arc<AtomicUsize>,
}

impl GroupCommit {
    /// Starts `lanes` lane tasks on `db`; they stop when the last handle
    /// is dropped, after the work already submitted.
    pub fn start(db: &DatabaseConnection, lanes: usize) -> Self {
        let lanes: Arc<[_]> = (0..lanes.max(1))
            .map(|_| {
                let (submit, jobs) = mpsc::channel(LANE_QUEUE);
                tokio::spawn(run_lane(db.clone(), jobs));
                submit
            })
            .collect();
        Self {
            lanes,
            next: Arc::new(AtomicUsize::new(0)),
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
        let (answer, answered) = oneshot::channel();
        self.submit(work, answer).await?;
        answered
            .await
            .map_err(|_| E::from(lane_gone()))
            .and_then(|result| result)
    }

    /// Waits until the work submitted so far, on every lane, has ended.
    pub async fn flush(&self) {
        for lane in self.lanes.iter() {
            let (answer, answered) = oneshot::channel::<Result<(), StoreFailure>>();
            let job = erase(
                |_: &DatabaseTransaction| -> WorkFuture<'_, (), StoreFailure> {
                    Box::pin(async { Ok(Decision::Discard(())) })
                },
                answer,
            );
            if lane.send(job).await.is_ok() {
                let _ = answered.await;
            }
        }
    }

    async fn submit<T, E>(
        &self,
        work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
        answer: oneshot::Sender<Result<T, E>>,
    ) -> Result<(), StoreFailure>
    where
        T: Send + 'static,
        E: From<StoreFailure> + Send + 'static,
    {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[lane]
            .send(erase(work, answer))
            .await
            .map_err(|_| lane_gone())
    }
}

/// Wraps typed work into a lane job that runs it in a savepoint, inside
/// the submitter's span. Work whose submitter stopped waiting (deadline,
/// cancelled call) is skipped, or undone if it already ran: a caller told
/// its call failed must not find it applied later.
fn erase<T, E>(
    work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E> + Send + 'static,
    answer: oneshot::Sender<Result<T, E>>,
) -> Job
where
    T: Send + 'static,
    E: From<StoreFailure> + Send + 'static,
{
    let span = tracing::Span::current();
    Box::new(
        move |tx: Result<&DatabaseTransaction, &DbErr>| -> AnswerFuture<'_> {
            Box::pin(
                async move {
                    let tx = match tx {
                        Ok(tx) if !answer.is_closed() => tx,
                        Ok(_) => return no_answer(),
                        Err(error) => {
                            let _ = answer.send(Err(E::from(StoreFailure {
                                doing: "starting a batch of writes",
                                source: error.clone().into(),
                            })));
                            return no_answer();
                        }
                    };
                    let outcome = in_savepoint(tx, work, || answer.is_closed()).await;
                    Box::new(move |committed: Result<(), &DbErr>| {
                        let result = match (outcome, committed) {
                            (Ok(value), Ok(())) => Ok(value),
                            (Err(error), _) => Err(error),
                            (Ok(_), Err(error)) => Err(E::from(StoreFailure {
                                doing: "committing a batch of writes",
                                source: error.clone().into(),
                            })),
                        };
                        let _ = answer.send(result);
                    }) as Answer
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

async fn in_savepoint<T, E: From<StoreFailure>>(
    tx: &DatabaseTransaction,
    work: impl for<'t> FnOnce(&'t DatabaseTransaction) -> WorkFuture<'t, T, E>,
    abandoned: impl Fn() -> bool,
) -> Result<T, E> {
    let savepoint = tx.begin().await.context("starting a savepoint")?;
    match work(&savepoint).await {
        Ok(Decision::Keep(value)) if !abandoned() => {
            savepoint.commit().await.context("releasing a savepoint")?;
            Ok(value)
        }
        Ok(Decision::Keep(value) | Decision::Discard(value)) => {
            savepoint.rollback().await.context("undoing a savepoint")?;
            Ok(value)
        }
        Err(error) => {
            savepoint.rollback().await.context("undoing a savepoint")?;
            Err(error)
        }
    }
}

async fn run_lane(db: DatabaseConnection, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let tx = match db.begin().await {
            Ok(tx) => tx,
            Err(error) => {
                for job in batch.drain(..) {
                    let _answered = job(Err(&error)).await;
                }
                continue;
            }
        };
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            answers.push(job(Ok(&tx)).await);
        }
        let committed = tx.commit().await;
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
