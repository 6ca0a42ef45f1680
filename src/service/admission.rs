//! Load shedding before a call touches the database: while the database
//! is known to be down, or its pool is exhausted, a call is told at once to
//! come back later instead of each one waiting out the pool.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::DatabaseConnection;

use super::{ServiceError, error::spread_retry_delay};
use crate::{
    store::{self, PoolActivity},
    telemetry::metrics::Metrics,
};

/// Whether the database was reachable (and migrated) at the last health
/// check. Set by the readiness watcher, read by every call.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready: `App::build` has just connected and migrated.
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// Decides whether a call that needs the database may start.
#[derive(Clone)]
pub struct Admission {
    db: DatabaseConnection,
    readiness: Readiness,
    activity: PoolActivity,
    /// How long a call that finds every connection taken waits for one.
    queue_wait: Duration,
    metrics: Metrics,
}

impl Admission {
    pub fn new(
        db: DatabaseConnection,
        readiness: Readiness,
        activity: PoolActivity,
        queue_wait: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            db,
            readiness,
            activity,
            queue_wait,
            metrics,
        }
    }

    /// `NotReady` while the database is known to be down; `Busy` when every
    /// connection is taken and none comes back to the pool within the queue
    /// wait. A burst, whose queue moves, is admitted and waits its turn
    /// (within the acquire timeout); a pool held by slow work is not.
    pub async fn admit(&self) -> Result<(), ServiceError> {
        if !self.readiness.is_ready() {
            return Err(ServiceError::NotReady {
                retry_after: spread_retry_delay(),
            });
        }
        if store::pool_exhausted(&self.db) {
            let returned = self.activity.returned();
            let waiting = std::time::Instant::now();
            let freed = store::connection_freed_within(&self.db, self.queue_wait).await;
            self.metrics.db_waited(waiting.elapsed());
            if freed || self.activity.returned() != returned {
                return Ok(());
            }
            tracing::info!("database connection pool exhausted; call refused");
            return Err(ServiceError::Busy {
                retry_after: spread_retry_delay(),
            });
        }
        Ok(())
    }
}
