//! Leak 2, the blocked channel: tasks send on a channel that nobody reads, and block forever.
//!
//! This is the Rust twin of the seed's goroutine leak. [`LEAKY_CHANNEL_2`] has room for one value
//! and its receiver is kept alive but never read, so the first send fills the buffer and every
//! later sender waits forever, holding its chunk. The task profile (`/debug/pprof/goroutine`) shows
//! the tasks piling up at the `send` line of [`run_leaker_job2_channel_task_block`]; the heap
//! profile shows their chunks at its allocation line.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{FILL_BYTE, LeakJob, Reservation, lock};
use leakfinder_profiling::tasks::root;

/// The channel of leak 2. Global on purpose: the receiver lives here, alive and never read, which
/// is exactly why no send can ever complete. `None` until leak 2 first starts, and again after a
/// reset, which drops the receiver and so releases every blocked sender.
pub static LEAKY_CHANNEL_2: Mutex<Option<LeakyChannel>> = Mutex::new(None);

/// A chunk held by a blocked task (or by the channel's one-slot buffer), counted while it lives.
pub struct HeldChunk {
    _data: Vec<u8>,
    _reservation: Reservation,
}

/// Both ends of leak 2's channel: the receiver is kept so that the channel stays open.
pub struct LeakyChannel {
    sender: mpsc::Sender<HeldChunk>,
    _receiver: mpsc::Receiver<HeldChunk>,
}

/// The sender of [`LEAKY_CHANNEL_2`], opening the channel (capacity 1) if it is not open yet.
fn sender() -> mpsc::Sender<HeldChunk> {
    lock(&LEAKY_CHANNEL_2)
        .get_or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(1);
            LeakyChannel {
                sender,
                _receiver: receiver,
            }
        })
        .sender
        .clone()
}

/// Leak 2's producer: every tick it spawns a task that allocates a chunk and sends it on
/// [`LEAKY_CHANNEL_2`]. Only the first send completes; every later task blocks at the send forever.
#[inline(never)]
pub async fn run_leaker_job2_channel_task_block(job: LeakJob, blocked: TaskTracker) {
    let sender = sender();
    let mut ticks = job.ticks();
    while job.next_tick(&mut ticks).await {
        let len = job.chunk_bytes();
        let reservation = job.counters().reserve(len);
        let sender = sender.clone();
        blocked.spawn(root(async move {
            let chunk = vec![FILL_BYTE; len]; // job 2's allocation line
            let held = HeldChunk {
                _data: chunk,
                _reservation: reservation,
            };
            // Nobody receives: once the buffer is full this await never returns, until a reset
            // drops the receiver and the send fails, which drops the chunk.
            let _ = sender.send(held).await; // the leak: blocks, as nobody reads LEAKY_CHANNEL_2
        }));
    }
}

/// Closes leak 2's channel. Every blocked sender wakes with an error and drops its chunk, and the
/// buffered chunk is dropped with the receiver. Returns whether a channel was open.
pub(crate) fn release() -> bool {
    let channel = lock(&LEAKY_CHANNEL_2).take();
    channel.is_some()
}
