//! The time source of the use cases and the mail worker. Production reads
//! the system clock; tests move an [`AdjustableClock`] instead of waiting or
//! rewriting rows.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Tells the time as Unix milliseconds, the unit every stored timestamp uses.
pub trait Clock: Send + Sync {
    fn now_millis(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        system_millis()
    }
}

/// The system clock plus an offset that only moves forward. Time keeps
/// running, so retries and leases still fall due; `advance` jumps ahead.
#[derive(Debug, Default)]
pub struct AdjustableClock {
    offset_millis: AtomicI64,
}

impl AdjustableClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this clock `by` into the future.
    pub fn advance(&self, by: Duration) {
        self.offset_millis
            .fetch_add(duration_millis(by), Ordering::SeqCst);
    }
}

impl Clock for AdjustableClock {
    fn now_millis(&self) -> i64 {
        system_millis().saturating_add(self.offset_millis.load(Ordering::SeqCst))
    }
}

/// A duration in whole milliseconds, saturating.
pub fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The non-negative span from `from` to `to`, both Unix milliseconds.
pub fn millis_between(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

fn system_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_runs_and_jumps_ahead() {
        let clock = AdjustableClock::new();
        let before = SystemClock.now_millis();
        clock.advance(Duration::from_secs(3600));
        let after = clock.now_millis();
        assert!(after >= before + 3_600_000, "{before} -> {after}");
        assert!(after < SystemClock.now_millis() + 3_601_000);
    }

    #[test]
    fn spans_never_go_negative() {
        assert_eq!(millis_between(10, 5), Duration::ZERO);
        assert_eq!(millis_between(5, 1005), Duration::from_secs(1));
    }
}
