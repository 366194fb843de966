//! A process-wide pool of the large `f32` buffers a block needs every step.
//!
//! A training step allocates and frees the same tens of MiB of activations
//! and gradients each time. Fresh allocations cost a zeroing pass and, above
//! the allocator's mmap threshold, page faults on every first touch; drawn
//! from here they cost neither. Buffers come back with unspecified (but
//! initialised) contents: every caller overwrites what it takes.

use std::sync::Mutex;

/// Smaller buffers are left to the allocator.
const MIN_LEN: usize = 1 << 12;
/// The pool keeps at most this many floats (4 GiB); the rest are freed.
const MAX_POOLED: usize = 1 << 30;

static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` floats with unspecified contents.
pub(crate) fn take(len: usize) -> Vec<f32> {
    if len >= MIN_LEN {
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest pooled buffer that is long enough but not much longer:
        // a large one handed out for a small request would leave with it
        // (outputs become tensors) and the next large request would find none.
        let fits = |b: &Vec<f32>| b.len() >= len && b.len() <= len + len / 4;
        let best = free.iter().enumerate().filter(|(_, b)| fits(b)).min_by_key(|(_, b)| b.len()).map(|(i, _)| i);
        if let Some(i) = best {
            let mut b = free.swap_remove(i);
            b.truncate(len);
            return b;
        }
    }
    vec![0.0; len]
}

/// Returns buffers to the pool.
pub(crate) fn give(buffers: impl IntoIterator<Item = Vec<f32>>) {
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    let mut pooled: usize = free.iter().map(Vec::len).sum();
    for b in buffers {
        if b.len() >= MIN_LEN && pooled + b.len() <= MAX_POOLED {
            pooled += b.len();
            free.push(b);
        }
    }
}
