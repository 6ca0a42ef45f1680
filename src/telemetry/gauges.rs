//! The gauges read when metrics are collected: outbox depth (from a cache
//! refreshed every few seconds, so a storm of scrapes costs no queries),
//! hash pool, database pool, readiness and build information.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{AsyncInstrument, ObservableGauge},
};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::metrics::MetricsPipeline;
use crate::{
    domain::Clock,
    security::hashing::PasswordHasher,
    store::{self, MailStatus, admin::OutboxDepth},
};

/// How often the outbox is counted while metrics are collected.
pub const OUTBOX_REFRESH: Duration = Duration::from_secs(5);

/// What `rekey.readiness` reports: readiness as last published to health.
#[derive(Debug, Clone, Default)]
pub struct ReadyGauge(Arc<AtomicBool>);

impl ReadyGauge {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The last outbox count; empty until the first refresh.
#[derive(Clone, Default)]
pub struct OutboxGauge(Arc<Mutex<Option<OutboxDepth>>>);

impl OutboxGauge {
    /// Counts the outbox every [`OUTBOX_REFRESH`] until `shutdown`.
    pub async fn refresh(self, db: DatabaseConnection, shutdown: CancellationToken) {
        loop {
            match store::admin::outbox_depth(&db).await {
                Ok(depth) => {
                    if let Ok(mut last) = self.0.lock() {
                        *last = Some(depth);
                    }
                }
                Err(error) => tracing::debug!(%error, "counting the outbox for metrics"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(OUTBOX_REFRESH) => {}
            }
        }
    }

    fn last(&self) -> Option<OutboxDepth> {
        self.0.lock().ok()?.clone()
    }
}

/// What the gauges read.
pub struct GaugeSources {
    pub hasher: PasswordHasher,
    pub db: DatabaseConnection,
    pub ready: ReadyGauge,
    pub outbox: OutboxGauge,
    pub clock: Arc<dyn Clock>,
}

/// The registered gauges; they report while this is kept.
pub struct Gauges {
    _counts: Vec<ObservableGauge<u64>>,
    _ages: Vec<ObservableGauge<f64>>,
}

/// Reads a gauge's value(s) when metrics are collected.
type Read = Box<dyn Fn(&dyn AsyncInstrument<u64>) + Send + Sync>;

/// Registers every gauge on `pipeline`'s meter.
pub fn register(pipeline: &MetricsPipeline, sources: GaugeSources) -> Gauges {
    let meter = pipeline.meter();
    let GaugeSources {
        hasher,
        db,
        ready,
        outbox,
        clock,
    } = sources;
    let gauge = |name: &'static str, description: &'static str, read: Read| {
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| read(observer))
            .build()
    };
    let usage = hasher.clone();
    let queue = hasher.clone();
    let capacity = hasher;
    let pool_count = db.clone();
    let pool_max = db;
    let mails = outbox.clone();
    let counts = vec![
        gauge(
            "rekey.outbox.mails",
            "Mail jobs in the outbox by status",
            Box::new(move |observer| {
                let Some(depth) = mails.last() else { return };
                for status in [MailStatus::Pending, MailStatus::Sent, MailStatus::Dead] {
                    let n = depth.by_status.get(&status).copied().unwrap_or(0);
                    observer.observe(n, &[KeyValue::new("status", status_name(status))]);
                }
            }),
        ),
        gauge(
            "rekey.hash.permits_in_use",
            "Password hashes running",
            Box::new(move |o| o.observe(count(usage.usage().running), &[])),
        ),
        gauge(
            "rekey.hash.queue_length",
            "Password hashes waiting for a slot",
            Box::new(move |o| o.observe(count(queue.usage().queued), &[])),
        ),
        gauge(
            "rekey.hash.permits_capacity",
            "Password hashes that may run at once",
            Box::new(move |o| o.observe(count(capacity.usage().concurrency), &[])),
        ),
        gauge(
            "db.client.connection.count",
            "Database connections by state",
            Box::new(move |observer| {
                let Some(pool) = store::pool_usage(&pool_count) else {
                    return;
                };
                observer.observe(u64::from(pool.used), &[KeyValue::new("state", "used")]);
                observer.observe(u64::from(pool.idle), &[KeyValue::new("state", "idle")]);
            }),
        ),
        gauge(
            "db.client.connection.max",
            "Database connections the pool may open",
            Box::new(move |observer| {
                if let Some(pool) = store::pool_usage(&pool_max) {
                    observer.observe(u64::from(pool.max), &[]);
                }
            }),
        ),
        gauge(
            "rekey.readiness",
            "1 while the server reports ready (SERVING), else 0",
            Box::new(move |o| o.observe(u64::from(ready.get()), &[])),
        ),
        gauge(
            "rekey.build_info",
            "Always 1; the version and git commit of this build",
            Box::new(|o| {
                o.observe(
                    1,
                    &[
                        KeyValue::new("version", env!("CARGO_PKG_VERSION")),
                        KeyValue::new("git_commit", env!("REKEY_GIT_COMMIT")),
                    ],
                );
            }),
        ),
    ];
    let oldest = meter
        .f64_observable_gauge("rekey.outbox.oldest_pending_age")
        .with_unit("s")
        .with_description("Age of the oldest pending mail job; 0 when none is pending")
        .with_callback(move |observer| {
            let Some(depth) = outbox.last() else { return };
            let age = depth.oldest_pending.map_or(0.0, |created| {
                let millis = clock.now_millis().saturating_sub(created).max(0);
                Duration::from_millis(u64::try_from(millis).unwrap_or(0)).as_secs_f64()
            });
            observer.observe(age, &[]);
        })
        .build();
    Gauges {
        _counts: counts,
        _ages: vec![oldest],
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn status_name(status: MailStatus) -> &'static str {
    match status {
        MailStatus::Pending => "pending",
        MailStatus::Sent => "sent",
        MailStatus::Skipped => "skipped",
        MailStatus::Dead => "dead",
    }
}
