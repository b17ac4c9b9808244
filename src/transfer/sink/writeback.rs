//! Streaming writeback: start flushing each window of the staging file as soon as it is
//! written, and wait for the window before it, so dirty pages never pile up.
//!
//! Without this a 1 GiB transfer leaves ~1 GiB dirty in the page cache and the final fsync
//! (which ferry needs before the atomic rename) stalls for the whole flush at the end; phones
//! with little RAM also get writeback storms. With it, the disk works while the network does.

use std::os::fd::{AsRawFd, RawFd};

/// Bytes per window: large enough for efficient I/O, small against a phone's RAM.
const WINDOW: u64 = 8 << 20;

pub struct Writeback {
    /// Start of the window being filled.
    window_start: u64,
}

impl Writeback {
    pub fn new(offset: u64) -> Writeback {
        Writeback {
            window_start: offset - offset % WINDOW,
        }
    }

    /// Call after the file grew to `len`. Best effort: errors surface at the final fsync.
    pub fn advance(&mut self, file: &impl AsRawFd, len: u64) {
        let fd = file.as_raw_fd();
        while len >= self.window_start + WINDOW {
            let start = self.window_start;
            sync_range(fd, start, WINDOW, SYNC_FILE_RANGE_WRITE);
            if start >= WINDOW {
                let previous = start - WINDOW;
                sync_range(
                    fd,
                    previous,
                    WINDOW,
                    SYNC_FILE_RANGE_WAIT_BEFORE
                        | SYNC_FILE_RANGE_WRITE
                        | SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            self.window_start += WINDOW;
        }
    }

    /// The file was truncated: windows start again at 0.
    pub fn reset(&mut self) {
        self.window_start = 0;
    }
}

const SYNC_FILE_RANGE_WAIT_BEFORE: u32 = 1;
const SYNC_FILE_RANGE_WRITE: u32 = 2;
const SYNC_FILE_RANGE_WAIT_AFTER: u32 = 4;

#[cfg(target_os = "android")]
fn sync_range(fd: RawFd, offset: u64, len: u64, flags: u32) {
    // The libc crate does not bind bionic's wrapper; the syscall is the same.
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sync_file_range,
            fd,
            offset as i64,
            len as i64,
            flags,
        );
    }
}

#[cfg(not(target_os = "android"))]
fn sync_range(fd: RawFd, offset: u64, len: u64, flags: u32) {
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    unsafe {
        nix::libc::sync_file_range(fd, offset as i64, len as i64, flags);
    }
}
