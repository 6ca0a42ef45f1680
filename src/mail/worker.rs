//! The mail worker: a tokio task that drains the outbox. A `Notify` wakes it
//! as soon as a job is queued; it also polls, for retries and for jobs that
//! other replicas queued. It claims due jobs with a lease, hands each to
//! [`Delivery`], and records the outcome: sent, skipped, retried later with
//! backoff, or buried as a dead letter. Every write after a claim is fenced
//! by the claim's lease token: a worker whose lease lapsed writes nothing.
//!
//! While the server is busy answering calls ([`CallsInFlight`]), mail gives
//! way: one batch in flight, [`BUSY_SENDS`] mails at a time, so the CPU goes
//! to the callers waiting and the mail still goes out.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use futures::future::Either;
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    backoff,
    delivery::{Claimed, Delivery, DeliveryError, Outcome},
};
use crate::{
    domain::{
        Clock, RateLimit,
        clock::{duration_millis, millis_between},
        mask,
    },
    store::{
        AuditKind, MailKind, MailStatus, StoreContext, StoreFailure,
        audit::{self, AuditEvent},
        group_commit::{Decision, GroupCommit, WorkFuture, in_savepoint},
        outbox::{self, MailJob},
        rate_limits::{self, Charge},
    },
    telemetry::{load::CallsInFlight, metrics::Metrics, traces},
};

/// Batches claimed and processed at once, each sending up to
/// `send_concurrency` mails at a time: while some wait on the relay, others
/// are claimed, written and recorded.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// The worker's sends at once, in batches' worth: it sends at most
/// `send_concurrency` × this many mails at a time, however many batches
/// are in flight, and the SMTP pool keeps as many connections.
pub const SENDING_BATCHES: usize = 2;

/// Sends at once of the one batch in flight while calls are busy.
pub const BUSY_SENDS: usize = 4;

/// The rate-limit key of the deployment-wide mail cap.
const GLOBAL_MAIL_KEY: &str = "mail:global";

/// How the worker claims and paces its work.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// Longest sleep between looks at the outbox.
    pub poll_interval: Duration,
    /// Attempts before a job becomes a dead letter; checked when a job is
    /// claimed too, so a job whose outcome is never recorded stops.
    pub max_attempts: u32,
    /// The longest delay between two attempts.
    pub backoff_max: Duration,
    /// Jobs claimed at once.
    pub batch_size: u64,
    /// How long a claimed job is reserved for this worker.
    pub lease: Duration,
    /// Jobs of one batch sent at once.
    pub send_concurrency: usize,
    /// Mails per period for the whole deployment; past it mail waits.
    pub global_limit: Option<RateLimit>,
}

impl WorkerOptions {
    /// Mails the worker sends at once, over all its batches.
    pub fn sends_at_once(&self) -> usize {
        self.send_concurrency.max(1).saturating_mul(SENDING_BATCHES)
    }

    /// How long a mail that keeps failing is retried before it becomes a
    /// dead letter: the shortest and the longest sum of the delays.
    pub fn retry_span(&self) -> (Duration, Duration) {
        backoff::retry_span(self.max_attempts, self.backoff_max)
    }
}

/// The outbox's consumer. Cheap to clone.
#[derive(Clone)]
pub struct MailWorker {
    db: DatabaseConnection,
    writes: GroupCommit,
    delivery: Delivery,
    options: WorkerOptions,
    /// One permit per mail being sent, shared by every batch in flight.
    sends: Arc<Semaphore>,
    wake: Arc<Notify>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// When jobs out of attempts were last buried (Unix milliseconds).
    last_burial: Arc<AtomicI64>,
    /// The server's calls: while they are busy, mail gives way.
    calls: CallsInFlight,
}

impl MailWorker {
    /// `wake` is notified by whoever queues a job.
    pub fn new(
        db: DatabaseConnection,
        writes: GroupCommit,
        delivery: Delivery,
        options: WorkerOptions,
        wake: Arc<Notify>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            db,
            writes,
            delivery,
            options,
            sends: Arc::new(Semaphore::new(options.sends_at_once())),
            wake,
            clock,
            metrics: Metrics::disabled(),
            last_burial: Arc::new(AtomicI64::new(i64::MIN)),
            calls: CallsInFlight::default(),
        }
    }

    /// Gives way to `calls` while they are busy.
    pub fn with_calls(mut self, calls: CallsInFlight) -> Self {
        self.calls = calls;
        self
    }

    /// Counts sent, retried and dead mail into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs until `shutdown`; a batch in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let (shortest, longest) = self.options.retry_span();
        tracing::info!(
            transport = self.delivery.transport_name(),
            max_attempts = self.options.max_attempts,
            gives_up_after = %format!(
                "{} to {}",
                humantime::format_duration(whole_seconds(shortest)),
                humantime::format_duration(whole_seconds(longest))
            ),
            "mail worker started"
        );
        let loops = (0..BATCHES_IN_FLIGHT).map(|lane| {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker.claim_loop(lane, &shutdown).await })
        });
        for stopped in futures::future::join_all(loops).await {
            if let Err(error) = stopped {
                tracing::error!(%error, "a mail claim loop failed");
            }
        }
        tracing::info!("mail worker stopped");
    }

    /// Claims and processes batches until `shutdown`, waiting when there
    /// is nothing due. Each batch's outcome write also claims the next
    /// batch (one commit for both); after `shutdown` it claims nothing, and
    /// a batch it had claimed is still processed. Every lane but the first
    /// waits while calls are busy.
    async fn claim_loop(&self, lane: usize, shutdown: &CancellationToken) {
        let mut ahead = Vec::new();
        loop {
            if lane > 0 && ahead.is_empty() && self.calls.is_busy() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.calls.quiet() => {}
                }
            }
            let claimed = match self
                .run_once(lane, std::mem::take(&mut ahead), shutdown)
                .await
            {
                Ok((claimed, next)) => {
                    ahead = next;
                    claimed
                }
                Err(error) => {
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::new(error)),
                        "mail worker could not claim jobs"
                    );
                    0
                }
            };
            if !ahead.is_empty() {
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            if claimed > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.idle_wait().await) => {}
            }
        }
    }

    /// Processes one batch: `ahead` when the last outcome write claimed
    /// it, else one claimed now. Returns how many jobs it processed and the
    /// batch its outcome write claimed (none once `shutdown`, nor in a lane
    /// giving way to busy calls). While calls are busy it sends
    /// [`BUSY_SENDS`] at a time.
    async fn run_once(
        &self,
        lane: usize,
        ahead: Vec<MailJob>,
        shutdown: &CancellationToken,
    ) -> Result<(usize, Vec<MailJob>), StoreFailure> {
        let jobs = if ahead.is_empty() {
            self.claim().await?
        } else {
            ahead
        };
        let claimed = jobs.len();
        if claimed == 0 {
            return Ok((0, Vec::new()));
        }
        let mut admitted = Vec::with_capacity(claimed);
        for job in jobs {
            let span = job_span(&job);
            if self.admit(&job).instrument(span.clone()).await {
                admitted.push(Claimed { job, span });
            }
        }
        let held = HeldLease::of(&admitted);
        let concurrency = if self.calls.is_busy() {
            BUSY_SENDS.min(self.options.send_concurrency)
        } else {
            self.options.send_concurrency
        };
        let delivering = self
            .delivery
            .deliver_all(admitted, concurrency, &self.sends);
        let delivered = self.holding(held, delivering).await;
        let claim_next = !shutdown.is_cancelled() && (lane == 0 || !self.calls.is_busy());
        let next = self.record_all(delivered, claim_next).await;
        Ok((claimed, next))
    }

    /// Runs `work`, a batch's delivery, renewing `held` every third of the
    /// lease meanwhile: a batch slower than its lease (a slow relay, many
    /// rounds of sends) is not claimed again while it is still being sent.
    async fn holding<T>(&self, held: Option<HeldLease>, work: impl Future<Output = T>) -> T {
        let Some(held) = held else {
            return work.await;
        };
        let renewing = async {
            let every = self.options.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                self.renew(&held).await;
            }
        };
        match futures::future::select(std::pin::pin!(work), std::pin::pin!(renewing)).await {
            Either::Left((done, _)) => done,
            Either::Right(((), work)) => work.await,
        }
    }

    /// Extends `held` by a lease from now, through the group commit like
    /// the claim. A renewal that fails is logged; the next one tries again.
    async fn renew(&self, held: &HeldLease) {
        let lease_until = self
            .clock
            .now_millis()
            .saturating_add(duration_millis(self.options.lease));
        let token = held.token.clone();
        let ids = held.ids.clone();
        let renewed = self
            .writes
            .write(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, u64, StoreFailure> {
                    Box::pin(async move {
                        outbox::renew_lease(tx, &token, &ids, lease_until)
                            .await
                            .context("renewing the lease of mail being sent")
                            .map(Decision::Keep)
                    })
                },
            )
            .await;
        match renewed {
            Ok(jobs) => tracing::debug!(jobs, "lease of mail being sent renewed"),
            Err(error) => tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(error)),
                "could not renew the lease of mail being sent"
            ),
        }
    }

    /// Claims due jobs in a write of their own, through the group commit
    /// like every other write: on SQLite a transaction of its own would
    /// wait on the writer's lock.
    async fn claim(&self) -> Result<Vec<MailJob>, StoreFailure> {
        let order = self.next_claim();
        let (jobs, buried) = self
            .writes
            .write(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, (Vec<MailJob>, u64), StoreFailure> {
                    Box::pin(async move { claim_in(tx, order).await.map(Decision::Keep) })
                },
            )
            .await?;
        report_buried(buried, order.max_attempts);
        Ok(jobs)
    }

    /// The next claim, as of now: it also buries the jobs out of attempts,
    /// at most once per poll interval.
    fn next_claim(&self) -> ClaimOrder {
        let now = self.clock.now_millis();
        let last_burial = self.last_burial.load(Ordering::Relaxed);
        let burial_due = last_burial.saturating_add(duration_millis(self.options.poll_interval));
        let bury = now >= burial_due || now < last_burial;
        if bury {
            self.last_burial.store(now, Ordering::Relaxed);
        }
        ClaimOrder {
            now,
            lease_until: now.saturating_add(duration_millis(self.options.lease)),
            batch: self.options.batch_size,
            max_attempts: self.options.max_attempts,
            bury,
        }
    }

    /// Sleep until the next retry is due, at most one poll interval.
    async fn idle_wait(&self) -> Duration {
        let poll = self.options.poll_interval;
        match outbox::next_due(&self.db)
            .await
            .context("finding when mail falls due")
        {
            Ok(Some(due)) => {
                let wait = millis_between(self.clock.now_millis(), due);
                poll.min(wait.max(Duration::from_millis(10)))
            }
            Ok(None) => poll,
            Err(error) => {
                tracing::debug!(
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "polling at the usual interval"
                );
                poll
            }
        }
    }

    /// Whether the deployment-wide mail limit lets `job` go now; if not,
    /// the job is put back until it does.
    async fn admit(&self, job: &MailJob) -> bool {
        match self.wait_for_global_limit().await {
            Ok(None) => true,
            Ok(Some(wait)) => {
                tracing::warn!(retry_in = ?wait, "global mail limit reached; mail waits in the outbox");
                let until = self
                    .clock
                    .now_millis()
                    .saturating_add(duration_millis(wait));
                match outbox::postpone(&self.db, job, until)
                    .await
                    .context("postponing the job")
                {
                    Ok(true) => {}
                    Ok(false) => lease_lost(),
                    Err(error) => tracing::warn!(
                        error = format!("{:#}", anyhow::Error::new(error)),
                        "the lease will bring the job back"
                    ),
                }
                false
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "the lease will bring the job back"
                );
                false
            }
        }
    }

    /// Takes a slot of the deployment-wide mail limit; when there is none,
    /// how long until there is.
    async fn wait_for_global_limit(&self) -> Result<Option<Duration>, StoreFailure> {
        let Some(limit) = self.options.global_limit else {
            return Ok(None);
        };
        let now = self.clock.now_millis();
        let charge = Charge {
            key: GLOBAL_MAIL_KEY.to_owned(),
            limit,
        };
        let over = rate_limits::take(&self.db, &[charge], now)
            .await
            .context("counting against the global mail limit")?;
        if over.is_empty() {
            return Ok(None);
        }
        self.metrics.rate_limited("mail_global");
        let wait = rate_limits::wait_for(&self.db, &over, now)
            .await
            .context("reading when the global mail limit frees")?;
        Ok(Some(wait))
    }

    /// Records how each job of a batch went: the sent and skipped ones in
    /// one group-committed write (with the sent ones' audit events), which
    /// also claims the next batch if `claim_next`; each failure on its own.
    /// Returns the batch claimed.
    async fn record_all(
        &self,
        delivered: Vec<(Claimed, Result<Outcome, DeliveryError>)>,
        claim_next: bool,
    ) -> Vec<MailJob> {
        let now = self.clock.now_millis();
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for (claimed, result) in delivered {
            // A handle of its own: `claimed` moves on while the span is entered.
            let span = claimed.span.clone();
            let _entered = span.enter();
            match result {
                Ok(Outcome::Sent {
                    request_id,
                    kind,
                    template,
                }) => {
                    tracing::info!("mail accepted for delivery");
                    self.metrics.mail_sent(template.name());
                    let sent = Some(Sent {
                        request_id,
                        detail: template.name(),
                    });
                    finished.push(Finished {
                        claimed,
                        status: MailStatus::Sent,
                        kind,
                        sent,
                    });
                }
                Ok(Outcome::Skipped(reason)) => {
                    tracing::info!(reason, "no mail to send");
                    let kind = claimed.job.kind;
                    finished.push(Finished {
                        claimed,
                        status: MailStatus::Skipped,
                        kind,
                        sent: None,
                    });
                }
                Err(DeliveryError::LeaseLost) => lease_lost(),
                Err(error) => {
                    failed.push((claimed, error));
                }
            }
        }
        let claim_next = claim_next.then(|| self.next_claim());
        let next = self.record_finished(finished, now, claim_next).await;
        let failures = failed.into_iter().map(|(claimed, error)| {
            let span = claimed.span.clone();
            async move {
                if let Err(error) = self.record_failure(&claimed.job, error, now).await {
                    // The lease runs out and the job is claimed again.
                    tracing::warn!(
                        error = format!("{:#}", anyhow::Error::new(error)),
                        "could not record mail outcome"
                    );
                }
            }
            .instrument(span)
        });
        futures::future::join_all(failures).await;
        next
    }

    /// Marks finished jobs sent or skipped and audits the sent ones, in one
    /// group-committed write; nothing is written for a job whose lease was
    /// lost (the new holder sends and audits). The same write makes
    /// `claim_next`, if any, in a savepoint of its own: a claim that fails
    /// claims nothing and the outcomes are still kept. Returns the jobs
    /// claimed.
    async fn record_finished(
        &self,
        finished: Vec<Finished>,
        now: i64,
        claim_next: Option<ClaimOrder>,
    ) -> Vec<MailJob> {
        if finished.is_empty() {
            return Vec::new();
        }
        let rows: Vec<FinishedRow> = finished
            .iter()
            .filter_map(|f| {
                Some(FinishedRow {
                    id: f.claimed.job.id,
                    lease_token: f.claimed.job.lease_token.clone()?,
                    status: f.status,
                    kind: f.kind,
                    mailed: f.sent.as_ref().map(|sent| AuditRow {
                        request_id: sent.request_id.clone(),
                        email_hint: mask(&f.claimed.job.recipient),
                        detail: sent.detail,
                    }),
                })
            })
            .collect();
        let written = self
            .writes
            .write(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, (HashSet<i64>, Option<Claim>), StoreFailure> {
                    Box::pin(async move {
                        let written = write_finished(tx, &rows, now).await?;
                        let claim = match claim_next {
                            Some(order) => Some(claim_beside(tx, order).await),
                            None => None,
                        };
                        Ok(Decision::Keep((written, claim)))
                    })
                },
            )
            .await;
        let (written, claim) = match written {
            Ok((written, claim)) => (Ok(written), claim),
            Err(error) => (Err(error), None),
        };
        let next = match claim {
            Some(Ok((jobs, buried))) => {
                report_buried(buried, self.options.max_attempts);
                jobs
            }
            Some(Err(error)) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "mail worker could not claim jobs"
                );
                Vec::new()
            }
            None => Vec::new(),
        };
        for f in finished {
            let _entered = f.claimed.span.enter();
            match &written {
                Ok(written) if written.contains(&f.claimed.job.id) => {}
                Ok(_) => lease_lost(),
                Err(error) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(error.duplicate())),
                    "could not record mail outcome"
                ),
            }
        }
        next
    }

    /// Schedules another attempt of a failed job, or buries it when the
    /// failure is permanent or it has no attempt left.
    async fn record_failure(
        &self,
        job: &MailJob,
        error: DeliveryError,
        now: i64,
    ) -> Result<(), StoreFailure> {
        let permanent = error.is_permanent();
        // Relays quote the recipient in their errors; keep it masked.
        let error = mask_address_in(
            &format!("{:#}", anyhow::Error::new(error)),
            &job.recipient,
            &mask(&job.recipient),
        );
        let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
        let written = if permanent || attempts >= self.options.max_attempts {
            if permanent {
                tracing::error!(%error, "mail failed permanently; dead letter");
            } else {
                tracing::error!(attempts, %error, "mail failed too often; dead letter");
            }
            self.metrics.mail_dead(job.kind.name());
            outbox::bury(&self.db, job, &error)
                .await
                .context("burying the job")?
        } else {
            let delay = backoff::delay(attempts, self.options.backoff_max);
            tracing::warn!(attempts, retry_in = ?delay, %error, "mail failed; will retry");
            self.metrics.mail_retried(job.kind.name());
            let next_attempt_at = now.saturating_add(duration_millis(delay));
            outbox::retry_later(&self.db, job, next_attempt_at, &error)
                .await
                .context("scheduling the retry")?
        };
        if !written {
            lease_lost();
        }
        Ok(())
    }
}

/// What a claim takes: due jobs, after burying those out of attempts
/// when `bury`.
#[derive(Debug, Clone, Copy)]
struct ClaimOrder {
    now: i64,
    lease_until: i64,
    batch: u64,
    max_attempts: u32,
    bury: bool,
}

/// The lease a batch holds: its claim's token and the jobs sent under it.
struct HeldLease {
    token: String,
    ids: Vec<i64>,
}

impl HeldLease {
    /// The lease of `batch`, all of one claim; none when nothing is held.
    fn of(batch: &[Claimed]) -> Option<Self> {
        let token = batch
            .iter()
            .find_map(|claimed| claimed.job.lease_token.clone())?;
        let ids = batch.iter().map(|claimed| claimed.job.id).collect();
        Some(Self { token, ids })
    }
}

/// The jobs a claim took and how many it buried.
type Claim = Result<(Vec<MailJob>, u64), StoreFailure>;

/// Buries (when the order says so) and claims, in `tx`.
async fn claim_in(
    tx: &DatabaseTransaction,
    order: ClaimOrder,
) -> Result<(Vec<MailJob>, u64), StoreFailure> {
    let buried = if order.bury {
        outbox::bury_exhausted(tx, order.now, order.max_attempts)
            .await
            .context("burying mail out of attempts")?
    } else {
        0
    };
    let jobs = outbox::claim_due(
        tx,
        order.now,
        order.lease_until,
        order.batch,
        order.max_attempts,
    )
    .await
    .context("claiming due mail")?;
    Ok((jobs, buried))
}

/// [`claim_in`] a savepoint of `tx`, undone if it fails: the rest of the
/// write is kept either way.
async fn claim_beside(tx: &DatabaseTransaction, order: ClaimOrder) -> Claim {
    let (claimed, _kept) = in_savepoint(
        tx,
        move |savepoint: &DatabaseTransaction| -> WorkFuture<'_, _, StoreFailure> {
            Box::pin(async move { claim_in(savepoint, order).await.map(Decision::Keep) })
        },
        || false,
    )
    .await?;
    Ok(claimed)
}

/// Logs the jobs a claim buried: out of attempts with no outcome recorded.
fn report_buried(buried: u64, max_attempts: u32) {
    if buried > 0 {
        tracing::error!(
            jobs = buried,
            max_attempts,
            "mail out of attempts with no outcome recorded; dead letters"
        );
    }
}

/// The span a job's delivery is logged in, linked to the trace that
/// queued it. Delivery records the kind once it knows it: a sign-up may
/// turn out to be "already registered".
fn job_span(job: &MailJob) -> tracing::Span {
    let span = tracing::info_span!(
        "mail_job",
        job = job.id,
        kind = tracing::field::Empty,
        to = %mask(&job.recipient),
    );
    traces::link_to_origin(&span, job.trace_context.as_deref());
    span
}

/// A job that ended without failing: sent, or skipped.
struct Finished {
    claimed: Claimed,
    status: MailStatus,
    /// The job's kind as the outbox keeps it.
    kind: MailKind,
    sent: Option<Sent>,
}

/// A sent job's request and the mail actually sent (the audit's detail).
struct Sent {
    request_id: Option<String>,
    detail: &'static str,
}

/// What the outcome write needs of a finished job, owned for the lane.
struct FinishedRow {
    id: i64,
    lease_token: String,
    status: MailStatus,
    kind: MailKind,
    mailed: Option<AuditRow>,
}

struct AuditRow {
    request_id: Option<String>,
    email_hint: String,
    detail: &'static str,
}

/// Ends the finished jobs, one statement per status and kind, each fenced
/// by its claim's lease token, and audits the sent ones that were written.
/// Returns the ids written.
async fn write_finished(
    tx: &DatabaseTransaction,
    rows: &[FinishedRow],
    now: i64,
) -> Result<HashSet<i64>, StoreFailure> {
    let mut groups: HashMap<(&str, MailStatus, MailKind), Vec<i64>> = HashMap::new();
    for row in rows {
        groups
            .entry((row.lease_token.as_str(), row.status, row.kind))
            .or_default()
            .push(row.id);
    }
    let mut written = HashSet::with_capacity(rows.len());
    for ((lease_token, status, kind), ids) in groups {
        let done = outbox::finish_many(tx, lease_token, &ids, status, kind, now)
            .await
            .context("recording the mail outcomes")?;
        written.extend(done);
    }
    let mailed = rows
        .iter()
        .filter(|row| written.contains(&row.id))
        .filter_map(|row| {
            row.mailed.as_ref().map(|audit| AuditEvent {
                request_id: audit.request_id.as_deref(),
                email_hint: Some(audit.email_hint.clone()),
                detail: Some(audit.detail),
                ..Default::default()
            })
        });
    audit::record_many(tx, AuditKind::Mailed, mailed, now)
        .await
        .context("auditing the sent mail")?;
    Ok(written)
}

/// Logs that this worker's lease on the job lapsed and its outcome was not
/// recorded: another worker holds the job, or it was buried meanwhile.
fn lease_lost() {
    tracing::warn!("lease lost before the outcome was recorded; another worker owns the job now");
}

/// Replaces every occurrence of `address` in `text`, in any letter case.
fn mask_address_in(text: &str, address: &str, masked: &str) -> String {
    // ASCII lower-casing keeps byte offsets, so matches index `text` directly.
    let haystack = text.to_ascii_lowercase();
    let needle = address.to_ascii_lowercase();
    if needle.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (start, _) in haystack.match_indices(&needle) {
        out.push_str(&text[rest..start]);
        out.push_str(masked);
        rest = start + needle.len();
    }
    out.push_str(&text[rest..]);
    out
}

fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_relay_errors_are_masked_in_any_case() {
        let masked = mask_address_in(
            "550 5.1.1 <Jane@Example.com>: unknown; jane@example.com",
            "jane@example.com",
            "j***@example.com",
        );
        assert_eq!(
            masked,
            "550 5.1.1 <j***@example.com>: unknown; j***@example.com"
        );
    }
}
