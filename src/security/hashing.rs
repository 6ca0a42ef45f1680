//! Argon2id hashing off the async runtime, on a bounded pool: at most
//! `concurrency` hashes at once (each holds `memory_kib` of RAM) and at most
//! `queue_depth` callers waiting. A caller beyond that is told to come back
//! later instead of growing memory or latency without bound.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    argon::{self, BlockMemory},
    hash_threads::{HashThreads, ThreadsGone},
};

use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot and queue place is taken.
    #[error("password hashing is saturated")]
    Busy,
    #[error("drawing a salt from the OS random source")]
    Salt(#[source] rand::rand_core::OsError),
    #[error("argon2id failed")]
    Argon2(#[source] argon2::password_hash::Error),
    #[error("starting the hashing threads")]
    Start(#[source] std::io::Error),
    #[error(transparent)]
    Threads(#[from] ThreadsGone),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub matched: bool,
    /// A fresh hash under the current parameters, when the stored one used
    /// others and the password matched.
    pub rehashed: Option<String>,
}

/// A snapshot of the pool's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashUsage {
    pub running: usize,
    pub queued: usize,
    pub concurrency: usize,
}

/// Hashes and verifies passwords with Argon2id on dedicated threads.
#[derive(Clone)]
pub struct PasswordHasher {
    argon: Argon2<'static>,
    threads: HashThreads,
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    /// Admission places in all: running plus queued.
    capacity: usize,
    /// Hashes that may run at once.
    concurrency: usize,
    metrics: Metrics,
    /// Hashes computed since start (hashing or verifying).
    completed: Arc<AtomicU64>,
    /// Checked for unknown accounts so they cost what a real check costs.
    dummy_hash: Arc<str>,
}

/// A place in the pool, taken before any other work of the call, so a
/// saturated pool refuses at once and a refusal costs no database work.
/// The place is held until every piece of work run under it has ended.
pub struct HashSlot {
    pool: PasswordHasher,
    admitted: Arc<OwnedSemaphorePermit>,
}

impl PasswordHasher {
    /// A pool hashing with `params`, `concurrency` hashes at once, and at
    /// most `queue_depth` callers waiting for a slot.
    pub fn new(params: Params, concurrency: usize, queue_depth: usize) -> Result<Self, HashError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let concurrency = concurrency.max(1);
        let threads = HashThreads::start(concurrency, argon.params()).map_err(HashError::Start)?;
        let dummy_hash = argon::unmatchable(&argon)?;
        Ok(Self {
            argon,
            threads,
            running: Arc::new(Semaphore::new(concurrency)),
            admitted: Arc::new(Semaphore::new(concurrency + queue_depth)),
            capacity: concurrency + queue_depth,
            concurrency,
            metrics: Metrics::disabled(),
            completed: Arc::new(AtomicU64::new(0)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Records how long hashes wait for a slot into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Running and queued hashes, and how many may run at once.
    pub fn usage(&self) -> HashUsage {
        let in_use = self.in_use();
        let running = self.concurrency - self.running.available_permits();
        HashUsage {
            running,
            queued: in_use.saturating_sub(running),
            concurrency: self.concurrency,
        }
    }

    /// Hashes computed since start.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Hashes running or waiting for a slot right now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    /// Takes a place in the pool, or fails at once with [`HashError::Busy`].
    pub fn admit(&self) -> Result<HashSlot, HashError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        Ok(HashSlot {
            pool: self.clone(),
            admitted: Arc::new(admitted),
        })
    }

    /// Hashes a new password into a PHC string, in a place of its own.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        self.admit()?.hash(password).await
    }

    /// Checks `password` against `stored` (or the dummy hash), in a place
    /// of its own; see [`HashSlot::verify_with_fallback`].
    pub async fn verify(
        &self,
        stored: Option<String>,
        password: &str,
    ) -> Result<Verification, HashError> {
        self.admit()?
            .verify_with_fallback(stored, password, None)
            .await
    }
}

impl HashSlot {
    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = SecretString::from(password);
        let argon = self.pool.argon.clone();
        self.run(true, move |memory| {
            argon::hash(&argon, password.expose_secret().as_bytes(), memory)
        })
        .await
    }

    /// Checks `password` against `stored`, or against a dummy hash when
    /// there is no account, so that both cases take the same time. Then,
    /// if that fails, `fallback` (the form a password had before it was
    /// normalized), in the same run. The second check depends only on the
    /// inputs, never on whether the account exists. A fallback match is
    /// rehashed from `password`, so the stored hash moves to the normalized
    /// form.
    pub async fn verify_with_fallback(
        &self,
        stored: Option<String>,
        password: &str,
        fallback: Option<&str>,
    ) -> Result<Verification, HashError> {
        let password = SecretString::from(password);
        let fallback = fallback.map(SecretString::from);
        let argon = self.pool.argon.clone();
        let dummy = self.pool.dummy_hash.clone();
        self.run(true, move |memory| {
            let is_real = stored.is_some();
            let stored = stored.as_deref().unwrap_or(&dummy);
            let parsed = PasswordHash::new(stored).map_err(HashError::Argon2)?;
            let mut matches = |candidate: &SecretString| {
                argon::verify(&parsed, candidate.expose_secret().as_bytes(), memory)
            };
            let mut outdated = !argon::uses_params(&argon, &parsed);
            let mut matched = matches(&password)?;
            if let (false, Some(fallback)) = (matched, &fallback) {
                matched = matches(fallback)?;
                outdated = true;
            }
            let matched = matched && is_real;
            let rehashed = if matched && outdated {
                Some(argon::hash(
                    &argon,
                    password.expose_secret().as_bytes(),
                    memory,
                )?)
            } else {
                None
            };
            Ok(Verification { matched, rehashed })
        })
        .await
    }

    /// Runs other CPU-heavy password work (a strength estimate) under the
    /// same bounds as hashing. Not counted in [`PasswordHasher::completed`].
    pub async fn run_bounded<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.run(false, move |_| Ok(work())).await
    }

    /// Runs `work` on a hashing thread once a thread is free. The permits
    /// travel with the work, so a caller that gives up (deadline, reset
    /// stream) does not free a place while its hash still runs.
    async fn run<T: Send + 'static>(
        &self,
        counted: bool,
        work: impl FnOnce(&mut BlockMemory) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let pool = &self.pool;
        let queued_at = std::time::Instant::now();
        let running = pool
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Busy)?;
        pool.metrics.hash_waited(queued_at.elapsed());
        let admitted = self.admitted.clone();
        let completed = pool.completed.clone();
        pool.threads
            .run(move |memory| {
                let _permits = (admitted, running);
                let result = work(memory);
                if counted {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                result
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(memory_kib: u32) -> PasswordHasher {
        PasswordHasher::new(Params::new(memory_kib, 1, 1, None).unwrap(), 1, 1).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_are_argon2id() {
        let hasher = pool(1024);
        let hash = hasher.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        let ok = hasher
            .verify(Some(hash.clone()), "correct horse battery")
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verification {
                matched: true,
                rehashed: None
            }
        );
        let wrong = hasher.verify(Some(hash), "incorrect horse").await.unwrap();
        assert!(!wrong.matched);
    }

    #[tokio::test]
    async fn an_unknown_account_never_matches() {
        let hasher = pool(1024);
        let result = hasher
            .verify(None, "rekey dummy password for unknown accounts")
            .await
            .unwrap();
        assert!(!result.matched);
    }

    #[tokio::test]
    async fn old_parameters_are_rehashed_after_a_match() {
        let old = pool(1024);
        let hash = old.hash("correct horse battery").await.unwrap();
        let current = pool(2048);
        let result = current
            .verify(Some(hash), "correct horse battery")
            .await
            .unwrap();
        let rehashed = result.rehashed.unwrap();
        assert!(rehashed.starts_with("$argon2id$v=19$m=2048,"));
    }

    #[tokio::test]
    async fn a_fallback_match_is_rehashed_from_the_primary_form() {
        let hasher = pool(1024);
        let legacy = hasher.hash("cafe\u{301} au lait please").await.unwrap();
        let normalized = "caf\u{e9} au lait please";
        assert!(
            !hasher
                .verify(Some(legacy.clone()), normalized)
                .await
                .unwrap()
                .matched
        );
        let result = hasher
            .admit()
            .unwrap()
            .verify_with_fallback(Some(legacy), normalized, Some("cafe\u{301} au lait please"))
            .await
            .unwrap();
        assert!(result.matched);
        let rehashed = result.rehashed.unwrap();
        assert!(
            hasher
                .verify(Some(rehashed), normalized)
                .await
                .unwrap()
                .matched
        );
        let unknown = hasher
            .admit()
            .unwrap()
            .verify_with_fallback(None, normalized, Some("cafe\u{301} au lait please"))
            .await
            .unwrap();
        assert!(!unknown.matched);
    }

    #[tokio::test]
    async fn bounded_work_is_not_counted_as_a_hash() {
        let hasher = pool(1024);
        assert_eq!(
            hasher.admit().unwrap().run_bounded(|| 2 + 2).await.unwrap(),
            4
        );
        assert_eq!(hasher.completed(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_keeps_its_slot_until_the_hash_ends() {
        let hasher = PasswordHasher::new(Params::new(65_536, 4, 1, None).unwrap(), 1, 0).unwrap();
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            hasher.hash("first one"),
        )
        .await;
        assert!(abandoned.is_err(), "the first hash should still be running");
        assert!(matches!(
            hasher.hash("second one").await,
            Err(HashError::Busy)
        ));
        // Once the abandoned hash finishes, its slot is free again.
        let mut freed = false;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if hasher.in_use() == 0 {
                freed = true;
                break;
            }
        }
        assert!(freed);
        hasher.hash("third one").await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_is_refused() {
        let hasher = pool(1024);
        // Take both admission places (one running, one queued) ourselves.
        let _held = hasher.admitted.clone().try_acquire_many_owned(2).unwrap();
        assert!(matches!(
            hasher.hash("whatever password").await,
            Err(HashError::Busy)
        ));
    }
}
