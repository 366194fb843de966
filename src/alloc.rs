//! Process-wide allocator settings for training.
//!
//! A training step frees and reallocates the same tens of MiB of activations
//! every step. With glibc's defaults those buffers go back to the kernel
//! (heap trimming, or `mmap` for blocks above a moving threshold) and return
//! as fresh zeroed pages, so page faults and kernel time were ≈ 20 % of a CPU
//! training step (docs/BENCHMARKS.md). Keeping them in the heap removes that.

/// Keep freed memory for reuse: blocks up to 32 MiB (glibc's largest mmap
/// threshold) come from the heap, and up to 1 GiB of free heap top is kept
/// rather than trimmed. Call before starting threads.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
