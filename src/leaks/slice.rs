//! Leak 1, the global slice: an endless task appends chunks to a global vector.
//!
//! The vector is global, so nothing ever drops it: stopping the task keeps every chunk, and only
//! an explicit reset frees them. The names are the walkthrough's: the heap profile's `top` shows
//! [`run_leaker_job1_simple_slice`], and `list` points at the `push` line below.

use std::sync::Mutex;

use super::{FILL_BYTE, LeakJob, lock};

/// The retained chunks of leak 1. Global on purpose: a global is the classic way a program keeps
/// memory alive that it no longer needs, and this one is the leak the heap profile must find.
pub static LEAKY_STORE_1: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Leak 1's producer: every tick it appends one chunk to [`LEAKY_STORE_1`], until stopped or capped.
#[inline(never)]
pub async fn run_leaker_job1_simple_slice(job: LeakJob) {
    let mut ticks = job.ticks();
    while job.next_tick(&mut ticks).await {
        let len = job.chunk_bytes();
        lock(&LEAKY_STORE_1).push(vec![FILL_BYTE; len]); // the leak: the global keeps every chunk
        job.counters().add(len);
    }
}

/// Frees everything leak 1 holds. Returns the number of chunks released.
pub(crate) fn release() -> usize {
    let chunks = std::mem::take(&mut *lock(&LEAKY_STORE_1));
    chunks.len()
}
