//! Retention: what rekey keeps, and for how long. A periodic task on every
//! replica deletes in batches what is past its time; the deletes are
//! idempotent, so replicas running at once only share the work.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{Clock, clock::duration_millis},
    store::{StoreContext, StoreFailure, rate_limits, retention},
};

/// Rows deleted per statement.
const BATCH: u64 = 500;

/// How long each kind of record is kept once it is finished.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Used, revoked or expired requests and their token digests; also
    /// everything about an address that never had an account.
    pub requests: Duration,
    /// Sent mail jobs. Dead letters stay until retried or purged.
    pub mail: Duration,
    pub audit: Duration,
    /// How often the cleanup runs.
    pub interval: Duration,
}

/// What one cleanup deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub requests: u64,
    pub mail: u64,
    pub audit: u64,
    pub rate_limits: u64,
}

/// Deletes everything past its retention at `now`.
pub async fn purge_expired(
    db: &DatabaseConnection,
    policy: &RetentionPolicy,
    now: i64,
) -> Result<Purged, StoreFailure> {
    let before = |kept: Duration| now.saturating_sub(duration_millis(kept));
    let requests = drain(|| retention::purge_requests(db, before(policy.requests), BATCH))
        .await
        .context("deleting finished requests past retention")?;
    let mail =
        drain(|| retention::purge_mail(db, before(policy.mail), before(policy.requests), BATCH))
            .await
            .context("deleting sent mail past retention")?;
    let audit = drain(|| retention::purge_audit(db, before(policy.audit), BATCH))
        .await
        .context("deleting audit events past retention")?;
    let rate_limits = rate_limits::purge_idle(db, now)
        .await
        .context("deleting idle rate-limit counters")?;
    let purged = Purged {
        requests,
        mail,
        audit,
        rate_limits,
    };
    Ok(purged)
}

/// Repeats a batched delete until a batch comes back short.
async fn drain<F, Fut, E>(mut batch: F) -> Result<u64, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    let mut total = 0;
    loop {
        let deleted = batch().await?;
        total += deleted;
        if deleted < BATCH {
            return Ok(total);
        }
    }
}

/// Runs the cleanup every `policy.interval` until `stop`.
pub async fn run_retention(
    db: DatabaseConnection,
    policy: RetentionPolicy,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(policy.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match purge_expired(&db, &policy, clock.now_millis()).await {
            Ok(purged) if purged != Purged::default() => {
                tracing::info!(
                    requests = purged.requests,
                    mail = purged.mail,
                    audit = purged.audit,
                    rate_limits = purged.rate_limits,
                    "retention: deleted records past their time"
                );
            }
            Ok(_) => {}
            Err(error) => {
                let error = anyhow::Error::new(error);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "retention cleanup failed; retrying later"
                );
            }
        }
    }
}
