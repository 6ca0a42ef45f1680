//! How many rekey calls are being answered right now. The gRPC layer counts
//! them; the mail worker reads the count to give way to a burst of calls.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// Calls in flight at or above which the server counts as busy. On the
/// bench's two cores 1,000 `SignUp`/s, answered in 1–2 ms, keep one or two
/// in flight (rate × time); a burst of 64 callers keeps about 64.
pub const BUSY_AT: usize = 16;

/// Counts calls in flight. Cheap to clone; clones share the count.
#[derive(Clone, Default)]
pub struct CallsInFlight {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    count: AtomicUsize,
    /// Notified when the count falls below [`BUSY_AT`].
    quiet: Notify,
}

/// One call being answered; dropping it ends the call.
pub struct InFlight {
    shared: Arc<Shared>,
}

impl CallsInFlight {
    /// Counts a call until the returned guard is dropped.
    pub fn enter(&self) -> InFlight {
        self.shared.count.fetch_add(1, Ordering::Relaxed);
        InFlight {
            shared: self.shared.clone(),
        }
    }

    pub fn is_busy(&self) -> bool {
        self.shared.count.load(Ordering::Relaxed) >= BUSY_AT
    }

    /// Waits until the server is not busy.
    pub async fn quiet(&self) {
        loop {
            let notified = self.shared.quiet.notified();
            if !self.is_busy() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.shared.count.fetch_sub(1, Ordering::Relaxed) == BUSY_AT {
            self.shared.quiet.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn busy_from_the_threshold_until_a_call_ends() {
        let calls = CallsInFlight::default();
        let mut held: Vec<InFlight> = (1..BUSY_AT).map(|_| calls.enter()).collect();
        assert!(!calls.is_busy());
        held.push(calls.enter());
        assert!(calls.is_busy());
        held.pop();
        assert!(!calls.is_busy());
    }

    #[tokio::test]
    async fn quiet_waits_until_the_count_falls_below_the_threshold() {
        let calls = CallsInFlight::default();
        let mut held: Vec<InFlight> = (0..=BUSY_AT).map(|_| calls.enter()).collect();
        let waiting = tokio::spawn({
            let calls = calls.clone();
            async move { calls.quiet().await }
        });
        tokio::task::yield_now().await;
        held.pop();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still {BUSY_AT} calls in flight");
        held.pop();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("quiet once below the threshold")
            .expect("the waiter ran");
    }

    #[tokio::test]
    async fn quiet_returns_at_once_when_not_busy() {
        let calls = CallsInFlight::default();
        let _one = calls.enter();
        tokio::time::timeout(Duration::from_secs(5), calls.quiet())
            .await
            .expect("not busy");
    }
}
