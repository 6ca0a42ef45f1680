//! Dedicated hashing threads, one per hashing slot. Each keeps its Argon2
//! memory between hashes and runs at a lower scheduling priority than the
//! async runtime, so health probes and cheap calls are answered promptly
//! while every core hashes.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, mpsc},
};

use argon2::Params;
use tokio::sync::oneshot;

use super::argon::BlockMemory;

/// Niceness of the hashing threads: the runtime's threads win the CPU
/// when both want it, hashing still gets every idle cycle.
const HASHING_NICENESS: i32 = 19;

type Job = Box<dyn FnOnce(&mut BlockMemory) + Send>;

/// The threads stop when the last handle is dropped.
#[derive(Clone)]
pub struct HashThreads {
    jobs: mpsc::Sender<Job>,
}

/// The hashing threads are gone (they only stop when the pool is dropped).
#[derive(Debug, thiserror::Error)]
#[error("the hashing threads stopped")]
pub struct ThreadsGone;

impl HashThreads {
    pub fn start(count: usize, params: &Params) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count.max(1) {
            let queue = queue.clone();
            let mut memory = BlockMemory::for_params(params);
            std::thread::Builder::new()
                .name(format!("rekey-hash-{index}"))
                .spawn(move || {
                    lower_priority();
                    while let Some(job) = next_job(&queue) {
                        // A panicking job loses its caller's answer, not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a hashing thread with that thread's memory.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut BlockMemory) -> T + Send + 'static,
    ) -> Result<T, ThreadsGone> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move |memory| {
                let _ = answer.send(work(memory));
            }))
            .map_err(|_| ThreadsGone)?;
        answered.await.map_err(|_| ThreadsGone)
    }
}

fn next_job(queue: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    queue.lock().ok()?.recv().ok()
}

/// On Linux niceness is per thread: this lowers only the calling thread.
fn lower_priority() {
    if let Err(error) = rustix::process::setpriority_process(None, HASHING_NICENESS) {
        tracing::debug!(%error, "hashing threads keep the default priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_at_a_lower_priority_than_its_caller() {
        let callers_niceness = rustix::process::getpriority_process(None).unwrap();
        let params = Params::new(64, 1, 1, None).unwrap();
        let threads = HashThreads::start(1, &params).unwrap();
        let niceness = threads
            .run(|_| rustix::process::getpriority_process(None))
            .await
            .unwrap();
        assert_eq!(niceness.unwrap(), HASHING_NICENESS);
        // Only the hashing thread is lowered.
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            callers_niceness
        );
    }
}
