//! Digests computed on their own thread, beside the writes: on two cores the network, the
//! disk and sha256 then overlap instead of queueing behind each other (measured on 1 GiB over
//! loopback: the writer thread doing both was the bottleneck). A single stream hands its
//! chunks to [`Hasher`]; a parallel transfer's parts arrive out of order, so [`Follower`]
//! reads the file back behind the contiguous written prefix instead.

use crate::error::{Code, Error, Result};
use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Read-back buffer of a [`Follower`].
const HASH_BUFFER: usize = 128 * 1024;

/// Chunks waiting to be hashed; they are shared with the writer, so this costs no copies.
const QUEUE_CHUNKS: usize = 4;

/// The digests of one file, updated in order.
#[derive(Clone)]
pub struct Digests {
    sha256: Sha256,
    md5: Option<Md5>,
}

impl Digests {
    pub fn new(want_md5: bool) -> Digests {
        Digests {
            sha256: Sha256::new(),
            md5: want_md5.then(Md5::new),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
    }

    fn reset(&mut self) {
        *self = Digests::new(self.md5.is_some());
    }

    pub fn finish(self) -> ([u8; 32], Option<[u8; 16]>) {
        (
            self.sha256.finalize().into(),
            self.md5.map(|m| m.finalize().into()),
        )
    }
}

enum Command {
    Data(Bytes),
    Reset,
}

/// Handle to the hashing thread; `finish` returns the digests of everything sent.
pub struct Hasher {
    tx: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<Digests>>,
}

impl Hasher {
    /// Starts from `digests` (which may already cover a resumed prefix).
    pub fn spawn(digests: Digests) -> std::io::Result<Hasher> {
        let (tx, rx) = sync_channel(QUEUE_CHUNKS);
        let thread = std::thread::Builder::new()
            .name("ferry-hash".into())
            .spawn(move || run(digests, rx))?;
        Ok(Hasher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn update(&self, chunk: Bytes) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Data(chunk));
        }
    }

    pub fn reset(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Reset);
        }
    }

    /// Waits for the queued chunks and returns the digests.
    pub fn finish(mut self) -> Digests {
        drop(self.tx.take());
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .expect("the hashing thread does not panic")
    }
}

fn run(mut digests: Digests, rx: Receiver<Command>) -> Digests {
    while let Ok(command) = rx.recv() {
        match command {
            Command::Data(chunk) => digests.update(&chunk),
            Command::Reset => digests.reset(),
        }
    }
    digests
}

/// The hash thread: digests `[0, target)` of the file as `target` grows.
pub struct Follower {
    shared: Arc<(Mutex<Follow>, Condvar)>,
    thread: Option<JoinHandle<std::io::Result<Digests>>>,
    path: std::path::PathBuf,
}

#[derive(Default)]
struct Follow {
    target: u64,
    /// No more growth: hash up to `target` and return.
    closed: bool,
    /// Stop at once; the digests will not be used.
    aborted: bool,
}

impl Follower {
    pub fn spawn(file: File, digests: Digests, path: std::path::PathBuf) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Follow::default()), Condvar::new()));
        let in_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-hash".into())
            .spawn(move || follow(file, digests, &in_thread))?;
        Ok(Follower {
            shared,
            thread: Some(thread),
            path,
        })
    }

    fn update(&self, change: impl FnOnce(&mut Follow)) {
        let (lock, wake) = &*self.shared;
        change(&mut lock.lock().expect("hash follower lock"));
        wake.notify_one();
    }

    /// Bytes `[0, target)` are written: hash them.
    pub fn advance(&self, target: u64) {
        self.update(|f| f.target = f.target.max(target));
    }

    /// Hashes up to the last target and returns the digests.
    pub fn finish(&mut self) -> Result<Digests> {
        self.update(|f| f.closed = true);
        let thread = self.thread.take().expect("finished once");
        match thread.join() {
            Ok(Ok(digests)) => Ok(digests),
            Ok(Err(e)) => Err(Error::io("reading back", &self.path, &e)),
            Err(_) => Err(Error::new(Code::Internal, "the hash thread panicked")),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.update(|f| f.aborted = true);
            let _ = thread.join();
        }
    }
}

fn follow(
    file: File,
    mut digests: Digests,
    shared: &(Mutex<Follow>, Condvar),
) -> std::io::Result<Digests> {
    let (lock, wake) = shared;
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut hashed = 0u64;
    loop {
        let target = {
            let mut f = lock.lock().expect("hash follower lock");
            while f.target <= hashed && !f.closed && !f.aborted {
                f = wake.wait(f).expect("hash follower lock");
            }
            if f.aborted || (f.closed && f.target <= hashed) {
                return Ok(digests);
            }
            f.target
        };
        while hashed < target {
            let n = buf.len().min((target - hashed) as usize);
            file.read_exact_at(&mut buf[..n], hashed)?;
            digests.update(&buf[..n]);
            hashed += n as u64;
            if lock.lock().expect("hash follower lock").aborted {
                return Ok(digests);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_in_order_and_resets() {
        let h = Hasher::spawn(Digests::new(true)).unwrap();
        h.update(Bytes::from_static(b"garbage"));
        h.reset();
        h.update(Bytes::from_static(b"hello "));
        h.update(Bytes::from_static(b"world"));
        let (sha, md5) = h.finish().finish();
        assert_eq!(
            crate::transfer::sink::hex(&sha),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(
            crate::transfer::sink::hex(&md5.unwrap()),
            "5eb63bbbe01eeed093cb22bb8f5acdc3"
        );
    }
}
