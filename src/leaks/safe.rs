//! The safe counterpart of leak 2: the same tasks and channel, done right.
//!
//! Every value sent is received, every send has a timeout, and the run returns only once every
//! task it spawned has ended, so nothing outlives the request.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::FILL_BYTE;
use leakfinder_profiling::tasks::root;

/// The largest payload a safe task sends: the safe test is a comparison, not a load generator.
pub const MAX_SAFE_CHUNK_BYTES: usize = 64 * 1024;

/// What one safe run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeRun {
    /// Tasks spawned.
    pub tasks: usize,
    /// Values the receiver took.
    pub received: usize,
    /// Sends abandoned at their timeout (always 0 while the receiver keeps up).
    pub timed_out: usize,
    /// Bytes the receiver took.
    pub bytes_received: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Spawns `tasks` tasks that each allocate a chunk and send it, with a timeout, on a channel of
/// capacity 1 that is read until every sender is gone; waits for every task to end.
pub async fn run_safe_channel_tasks(
    tasks: usize,
    chunk_bytes: usize,
    send_timeout: Duration,
) -> SafeRun {
    let started = Instant::now();
    let len = chunk_bytes.min(MAX_SAFE_CHUNK_BYTES);
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(1);
    let mut senders = JoinSet::new();
    for _ in 0..tasks {
        let sender = sender.clone();
        senders.spawn(root(async move {
            let chunk = vec![FILL_BYTE; len];
            // A bounded wait: if the receiver ever stopped, the task would give up, not block.
            tokio::time::timeout(send_timeout, sender.send(chunk))
                .await
                .is_ok_and(|sent| sent.is_ok())
        }));
    }
    // Only the tasks hold senders now, so `recv` ends once the last of them is done.
    drop(sender);

    let receive_all = async {
        let (mut received, mut bytes) = (0, 0u64);
        while let Some(chunk) = receiver.recv().await {
            received += 1;
            bytes += chunk.len() as u64;
        }
        (received, bytes)
    };
    let join_all = async {
        let mut timed_out = 0;
        while let Some(sent) = senders.join_next().await {
            if !matches!(sent, Ok(true)) {
                timed_out += 1;
            }
        }
        timed_out
    };
    let ((received, bytes_received), timed_out) = tokio::join!(receive_all, join_all);
    SafeRun {
        tasks,
        received,
        timed_out,
        bytes_received,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_value_is_received_and_every_task_ends() {
        let run = run_safe_channel_tasks(50, 1024, Duration::from_secs(5)).await;
        assert_eq!(run.tasks, 50);
        assert_eq!(run.received, 50);
        assert_eq!(run.timed_out, 0);
        assert_eq!(run.bytes_received, 50 * 1024);
    }

    #[tokio::test]
    async fn payloads_are_bounded() {
        let run = run_safe_channel_tasks(2, 10 << 20, Duration::from_secs(5)).await;
        assert_eq!(run.bytes_received, 2 * MAX_SAFE_CHUNK_BYTES as u64);
    }
}
