//! Allocator tuning for glibc builds (desktop, CI, benchmarks; the Android build uses musl).
//!
//! hyper reads each connection into buffers of up to ~400 KiB that body chunks are cut from.
//! glibc's dynamic mmap threshold rises to the size of the largest block freed, after which
//! such buffers come from the heap arenas, and a heap fragmented by eight connections' worth
//! of them is not given back: measured on a 256 MiB download over 8 throttled connections,
//! peak anonymous memory fell from 11 to 6–8 MiB with a fixed 64 KiB threshold (large blocks
//! are then mapped and unmapped, returned the moment they are freed). musl's allocator
//! already maps large blocks on its own.

/// Call once, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 64 * 1024;
        // SAFETY: mallopt only sets an allocator parameter; called before other threads run.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}
