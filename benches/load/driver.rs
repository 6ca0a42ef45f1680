//! Drives calls: a closed loop of N callers for a fixed time, or an open
//! loop paced at a rate. Latencies go into HDR histograms (microseconds).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::{sync::Semaphore, task::JoinSet};
use tonic::Code;

pub type CallResult = Result<(), tonic::Status>;

/// Latency histogram in microseconds, up to ten minutes.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// What a stretch of calls did.
#[derive(Clone)]
pub struct Outcome {
    /// Latencies of the calls that succeeded.
    pub ok: Histogram<u64>,
    /// Latencies of the calls refused with RESOURCE_EXHAUSTED.
    pub rejected: Histogram<u64>,
    /// The same, without each caller's first call: every caller starts at
    /// once, so the first calls arrive as one burst.
    pub rejected_after_start: Histogram<u64>,
    /// Every other failure, by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// One failure's message, for the report.
    pub first_error: Option<String>,
    /// One refusal's message.
    pub first_rejection: Option<String>,
    /// Start to the last call's end.
    pub elapsed: Duration,
}

impl Outcome {
    fn new() -> Result<Self> {
        Ok(Self {
            ok: histogram()?,
            rejected: histogram()?,
            rejected_after_start: histogram()?,
            errors: BTreeMap::new(),
            first_error: None,
            first_rejection: None,
            elapsed: Duration::ZERO,
        })
    }

    fn record(&mut self, latency: Duration, result: CallResult) {
        self.record_call(latency, result, false);
    }

    fn record_call(&mut self, latency: Duration, result: CallResult, first: bool) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        match result {
            Ok(()) => self.ok.saturating_record(micros),
            Err(status) if status.code() == Code::ResourceExhausted => {
                self.rejected.saturating_record(micros);
                if !first {
                    self.rejected_after_start.saturating_record(micros);
                }
                if self.first_rejection.is_none() {
                    self.first_rejection = Some(status.message().to_owned());
                }
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
    }

    fn merge(&mut self, other: Outcome) -> Result<()> {
        self.ok.add(&other.ok)?;
        self.rejected.add(&other.rejected)?;
        self.rejected_after_start.add(&other.rejected_after_start)?;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        if self.first_rejection.is_none() {
            self.first_rejection = other.first_rejection;
        }
        Ok(())
    }

    /// The outcome of a closed loop run in a child process, as it prints it
    /// for [`Outcome::from_json`]: the successes' latencies (each recorded
    /// value and its count), the failures and the elapsed time.
    pub fn to_json(&self) -> serde_json::Value {
        let ok: Vec<[u64; 2]> = self
            .ok
            .iter_recorded()
            .map(|at| [at.value_iterated_to(), at.count_at_value()])
            .collect();
        serde_json::json!({
            "ok": ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": self.elapsed.as_secs_f64(),
        })
    }

    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let mut outcome = Outcome::new()?;
        for pair in json["ok"].as_array().into_iter().flatten() {
            let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                anyhow::bail!("a latency that is not [value, count]: {pair}");
            };
            outcome.ok.record_n(value, count)?;
        }
        outcome.errors = serde_json::from_value(json["errors"].clone())?;
        outcome.first_error = json["first_error"].as_str().map(str::to_owned);
        outcome.elapsed = Duration::from_secs_f64(
            json["seconds"]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("no elapsed seconds"))?,
        );
        Ok(outcome)
    }

    /// Successful calls per second.
    pub fn ok_rps(&self) -> f64 {
        self.ok.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn rejected_rps(&self) -> f64 {
        self.rejected.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A success latency quantile in milliseconds.
    pub fn ok_ms(&self, quantile: f64) -> f64 {
        self.ok.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn rejected_ms(&self, quantile: f64) -> f64 {
        self.rejected.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn rejected_after_start_ms(&self, quantile: f64) -> f64 {
        self.rejected_after_start.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// What went wrong, if anything: any error but RESOURCE_EXHAUSTED, and
    /// refusals beyond `tolerated` (a share of all calls; the server sheds
    /// load by design, so a few refusals at 64 callers are not a failure).
    pub fn failures(&self, tolerated: f64) -> Option<String> {
        let mut problems: Vec<String> = self
            .errors
            .iter()
            .map(|(code, n)| format!("{n} × {code}"))
            .collect();
        let calls = (self.ok.len() + self.rejected.len()).max(1) as f64;
        if self.rejected.len() as f64 > tolerated * calls {
            problems.push(format!(
                "{} × ResourceExhausted ({})",
                self.rejected.len(),
                self.first_rejection.as_deref().unwrap_or("-")
            ));
        }
        if self.ok.is_empty() {
            problems.push("no call succeeded".into());
        }
        let first = self
            .first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default();
        (!problems.is_empty()).then(|| format!("{}{first}", problems.join(", ")))
    }
}

/// `callers` tasks, each calling `call(caller)` back to back until
/// `duration` has passed.
pub async fn closed_loop<F, Fut>(callers: usize, duration: Duration, call: F) -> Result<Outcome>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    closed_loop_with(callers, duration, Pushback::Ignore, call).await
}

/// What a caller does after a refusal that carries `RetryInfo`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Calls again at once.
    Ignore,
    /// Waits the delay the server asked for, as gRPC clients that honour
    /// server pushback do (the wait is not part of any latency).
    Honour,
}

pub async fn closed_loop_with<F, Fut>(
    callers: usize,
    duration: Duration,
    pushback: Pushback,
    call: F,
) -> Result<Outcome>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let call = call.clone();
        tasks.spawn(async move {
            let mut outcome = Outcome::new()?;
            let mut first = true;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = call(caller).await;
                let wait = match (&result, pushback) {
                    (Err(status), Pushback::Honour) => retry_delay(status),
                    _ => None,
                };
                outcome.record_call(sent.elapsed(), result, first);
                first = false;
                if let Some(wait) = wait {
                    tokio::time::sleep_until(deadline.min(Instant::now() + wait).into()).await;
                }
            }
            anyhow::Ok(outcome)
        });
    }
    let mut total = Outcome::new()?;
    while let Some(outcome) = tasks.join_next().await {
        total.merge(outcome??)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// The `RetryInfo` delay of a RESOURCE_EXHAUSTED refusal.
fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
}

/// Calls `call(i)` at `rate` per second for `duration`, each in its own
/// task, at most `in_flight` at once (beyond that the pace slips, which
/// shows as a lower achieved rate).
pub async fn paced<F, Fut>(
    rate: f64,
    duration: Duration,
    in_flight: usize,
    call: F,
) -> Result<Outcome>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let total_calls = (rate * duration.as_secs_f64()).round() as usize;
    let mut tasks = JoinSet::new();
    let mut total = Outcome::new()?;
    for i in 0..total_calls {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits.clone().acquire_owned().await?;
        let call = call.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = call(i).await;
            drop(permit);
            (sent.elapsed(), result)
        });
        while let Some(done) = tasks.try_join_next() {
            let (latency, result) = done?;
            total.record(latency, result);
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (latency, result) = done?;
        total.record(latency, result);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
