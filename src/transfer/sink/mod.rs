//! The sink: the only code that writes task data to shared storage.
//!
//! Bytes go to a hidden staging file in the target folder (same filesystem, so the final
//! rename is atomic), hashed as they are written, on a dedicated thread so no async worker
//! ever blocks on disk. `commit` syncs the file, renames it onto the final name and syncs the
//! folder, in that order, in one place: a final name only ever shows a complete file.

use crate::error::{Code, Error, Result};
use crate::paths::{Dir, Entry};
use bytes::Bytes;
mod hasher;
mod parts;
mod writeback;

pub use parts::{Layout, PartSink};

use hasher::{Digests, Hasher};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use writeback::Writeback;

/// Chunks queued between the network and the disk; bounds memory whatever the file size.
/// hyper hands out body chunks of at most ~408 KiB, so at most ~2 MiB wait here; measured
/// on 1 GiB over loopback, a deeper queue only added RSS (64 chunks: 28 MiB peak, 4: 13 MiB)
/// without making the transfer faster.
const QUEUE_CHUNKS: usize = 4;

/// Runs `open` on a new writer thread called `name`; when it succeeds the thread goes on with
/// `run(writer)` and the caller gets what `open` handed back, else `open`'s error.
async fn start_writer<W: 'static, R: Send + 'static>(
    name: &str,
    open: impl FnOnce() -> Result<(R, W)> + Send + 'static,
    run: impl FnOnce(W) + Send + 'static,
) -> Result<R> {
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match open() {
            Ok((ready, writer)) => {
                let _ = ready_tx.send(Ok(ready));
                run(writer);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::new(Code::Internal, format!("starting the writer thread: {e}")))?;
    ready_rx
        .await
        .map_err(|_| Error::new(Code::Internal, "the writer thread died while opening"))?
}

/// A writer thread's first failure, as its handle reports it.
fn writer_error(failed: &Mutex<Option<Error>>) -> Error {
    failed
        .lock()
        .expect("sink error lock")
        .clone()
        .unwrap_or_else(|| Error::new(Code::Internal, "the writer thread stopped"))
}

/// What the writer knows once the last byte is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub len: u64,
    pub sha256: [u8; 32],
    pub md5: Option<[u8; 16]>,
}

enum Command {
    Data(Bytes),
    Truncate(oneshot::Sender<Result<()>>),
    Reserve(u64, oneshot::Sender<Result<()>>),
    Sync(oneshot::Sender<Result<u64>>),
    Finish(oneshot::Sender<Result<Written>>),
}

/// Handle to the writer thread of one staging file.
pub struct Sink {
    tx: mpsc::Sender<Command>,
    /// The writer's first failure; data sends fail once it is set.
    failed: Arc<Mutex<Option<Error>>>,
}

impl Sink {
    /// Opens (or creates) `staging` in `dir`. With `trusted` set, the first `trusted` bytes of
    /// an existing file are kept and re-hashed (they were checked against their source when
    /// written); anything beyond is cut off. Returns the sink and how many bytes it holds.
    pub async fn open(
        dir: Arc<Dir>,
        staging: String,
        trusted: Option<u64>,
        want_md5: bool,
    ) -> Result<(Sink, u64)> {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let failed = Arc::new(Mutex::new(None));
        let failed_in_thread = failed.clone();
        let len = start_writer(
            "ferry-sink",
            move || Writer::open(dir, staging, trusted, want_md5).map(|w| (w.len, w)),
            move |writer| writer.run(rx, failed_in_thread),
        )
        .await?;
        Ok((Sink { tx, failed }, len))
    }

    fn writer_error(&self) -> Error {
        writer_error(&self.failed)
    }

    pub async fn write(&self, chunk: Bytes) -> Result<()> {
        self.tx
            .send(Command::Data(chunk))
            .await
            .map_err(|_| self.writer_error())
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| self.writer_error())?;
        answer.await.map_err(|_| self.writer_error())?
    }

    /// Drops everything written so far (the source changed): start again from byte 0.
    pub async fn truncate(&self) -> Result<()> {
        self.ask(Command::Truncate).await
    }

    /// Checks free space for `total` bytes and preallocates them when the filesystem can.
    pub async fn reserve(&self, total: u64) -> Result<()> {
        self.ask(|r| Command::Reserve(total, r)).await
    }

    /// Flushes to stable storage; returns the durable length.
    pub async fn sync(&self) -> Result<u64> {
        self.ask(Command::Sync).await
    }

    /// Syncs and returns the length and digests of the whole file.
    pub async fn finish(self) -> Result<Written> {
        self.ask(Command::Finish).await
    }
}

struct Writer {
    dir: Arc<Dir>,
    name: String,
    file: File,
    len: u64,
    /// Digests of the kept prefix while re-hashing at open; then moved to `hasher`.
    digests: Option<Digests>,
    hasher: Option<Hasher>,
    writeback: Writeback,
}

impl Writer {
    fn open(dir: Arc<Dir>, name: String, trusted: Option<u64>, want_md5: bool) -> Result<Writer> {
        let file = dir.open_staging(&name)?;
        let path = dir.host_path(&name);
        let on_disk = file
            .metadata()
            .map_err(|e| Error::io("inspecting", &path, &e))?
            .len();
        let keep = trusted.unwrap_or(0).min(on_disk);
        file.set_len(keep)
            .map_err(|e| Error::io("truncating", &path, &e))?;
        let mut writer = Writer {
            dir,
            name,
            file,
            len: 0,
            digests: Some(Digests::new(want_md5)),
            hasher: None,
            writeback: Writeback::new(keep),
        };
        writer.rehash(keep)?;
        let digests = writer.digests.take().expect("set above");
        writer.hasher =
            Some(Hasher::spawn(digests).map_err(|e| {
                Error::new(Code::Internal, format!("starting the hash thread: {e}"))
            })?);
        Ok(writer)
    }

    /// Hashes the kept prefix so the final digest covers the whole file.
    fn rehash(&mut self, keep: u64) -> Result<()> {
        let path = self.dir.host_path(&self.name);
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("reading back", &path, &e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = keep;
        while left > 0 {
            let want = buf.len().min(left as usize);
            self.file
                .read_exact(&mut buf[..want])
                .map_err(|e| Error::io("reading back", &path, &e))?;
            if let Some(d) = &mut self.digests {
                d.update(&buf[..want]);
            }
            left -= want as u64;
        }
        self.len = keep;
        Ok(())
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.host_path(&self.name)
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>, failed: Arc<Mutex<Option<Error>>>) {
        while let Some(command) = rx.blocking_recv() {
            let outcome = match command {
                Command::Data(chunk) => self.write(chunk),
                Command::Truncate(reply) => {
                    let _ = reply.send(self.truncate());
                    Ok(())
                }
                Command::Reserve(total, reply) => {
                    let _ = reply.send(self.reserve(total));
                    Ok(())
                }
                Command::Sync(reply) => {
                    let _ = reply.send(self.sync().map(|()| self.len));
                    Ok(())
                }
                Command::Finish(reply) => {
                    let _ = reply.send(self.finish());
                    return;
                }
            };
            if let Err(e) = outcome {
                *failed.lock().expect("sink error lock") = Some(e);
                return;
            }
        }
    }

    fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.file
            .write_all(&chunk)
            .map_err(|e| Error::io("writing", &self.path(), &e))?;
        self.len += chunk.len() as u64;
        self.writeback.advance(&self.file, self.len);
        if let Some(h) = &self.hasher {
            h.update(chunk);
        }
        Ok(())
    }

    fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| Error::io("truncating", &self.path(), &e))?;
        self.len = 0;
        self.writeback.reset();
        if let Some(h) = &self.hasher {
            h.reset();
        }
        Ok(())
    }

    fn reserve(&mut self, total: u64) -> Result<()> {
        let needed = total.saturating_sub(self.len);
        reserve(&self.dir, &self.file, self.len, needed, needed)
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("syncing", &self.path(), &e))
    }

    fn finish(&mut self) -> Result<Written> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing", &self.path(), &e))?;
        let hasher = self.hasher.take().expect("finish is the last command");
        let (sha256, md5) = hasher.finish().finish();
        Ok(Written {
            len: self.len,
            sha256,
            md5,
        })
    }
}

/// Checks that `needed` more bytes fit in `dir`'s filesystem and preallocates `len` bytes
/// from `offset` when the filesystem can (ranges already allocated cost nothing).
fn reserve(dir: &Dir, file: &File, offset: u64, len: u64, needed: u64) -> Result<()> {
    let free = dir.free_bytes()?;
    if needed > free {
        return Err(Error::new(
            Code::StorageDiskFull,
            format!(
                "{} needs {} more bytes but only {} are free on its filesystem; free some space and retry",
                dir.device_path(),
                needed,
                free
            ),
        ));
    }
    if needed == 0 || len == 0 {
        return Ok(());
    }
    // KEEP_SIZE: blocks are reserved but the length still says how much was written,
    // which is what resume relies on.
    match nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(file),
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ENOSPC) | Err(nix::errno::Errno::EDQUOT) => Err(Error::new(
            Code::StorageDiskFull,
            format!(
                "cannot reserve {needed} bytes in {}: no space left on the device",
                dir.device_path()
            ),
        )),
        // FUSE (Android's /sdcard) and some filesystems cannot preallocate: not an error.
        Err(_) => Ok(()),
    }
}

/// Whether a file may land at `final_name` in `target`: a final name (never another task's
/// staging file; intake refuses those already) that is free or a regular file, never a folder
/// or a link ferry would replace. The pipeline asks before fetching a byte; the commit asks
/// again, as the folder may have changed meanwhile.
pub fn check_final_target(target: &Dir, final_name: &str) -> Result<()> {
    if let Err(why) = crate::paths::check_final_name(final_name) {
        return Err(Error::new(
            Code::StoragePathNotAllowed,
            format!(
                "{} cannot be a final name: {why}",
                target.device_path().join(final_name)
            ),
        ));
    }
    if target.entry(final_name)? == Entry::Other {
        return Err(Error::new(
            Code::StoragePathNotAllowed,
            format!(
                "{} exists and is not a regular file (a folder or a link); ferry will not replace it",
                target.device_path().join(final_name)
            ),
        ));
    }
    Ok(())
}

/// Checks a finished staging file against what the task expects of it (FileMd5, when
/// given), then commits it. A mismatch removes the staging file: nothing takes the final name.
pub fn verify_and_commit(
    dir: &Dir,
    staging: &str,
    written: &Written,
    md5: Option<[u8; 16]>,
    source: &str,
    target: &Dir,
    final_name: &str,
) -> Result<()> {
    if let Some(expected) = md5 {
        if written.md5 != Some(expected) {
            discard(dir, staging).ok();
            return Err(Error::new(
                Code::IntegrityMd5Mismatch,
                format!(
                    "{source} has MD5 {}, but FileMd5 says {}; the partial file was removed",
                    hex(&written.md5.unwrap_or_default()),
                    hex(&expected)
                ),
            ));
        }
    }
    commit_into(dir, staging, target, final_name)
}

/// Moves a finished staging file onto its final name, atomically and durably.
pub fn commit(dir: &Dir, staging: &str, final_name: &str) -> Result<()> {
    commit_into(dir, staging, dir, final_name)
}

/// `commit` into another folder of the same filesystem (a folder send stages every file in
/// the target folder and moves each into its sub-folder).
pub fn commit_into(dir: &Dir, staging: &str, target: &Dir, final_name: &str) -> Result<()> {
    check_final_target(target, final_name)?;
    dir.rename_into(staging, target, final_name)?;
    target.sync()
}

pub fn discard(dir: &Dir, staging: &str) -> Result<()> {
    dir.remove(staging)?;
    dir.sync()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::{DevicePath, Roots};

    fn folder(root: &std::path::Path) -> Arc<Dir> {
        let roots = Roots::new(Some(root.to_path_buf()), &["/sdcard".to_string()]).unwrap();
        Arc::new(
            roots
                .open_dir(&DevicePath::parse("/sdcard/Download").unwrap(), true)
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn writes_hashes_and_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let (sink, len) = Sink::open(dir.clone(), ".s.part".into(), None, true)
            .await
            .unwrap();
        assert_eq!(len, 0);
        sink.reserve(11).await.unwrap();
        sink.write(Bytes::from_static(b"hello ")).await.unwrap();
        sink.write(Bytes::from_static(b"world")).await.unwrap();
        let w = sink.finish().await.unwrap();
        assert_eq!(w.len, 11);
        assert_eq!(
            hex(&w.sha256),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(hex(&w.md5.unwrap()), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        let final_path = tmp.path().join("sdcard/Download/a.txt");
        assert!(!final_path.exists());
        commit(&dir, ".s.part", "a.txt").unwrap();
        assert_eq!(std::fs::read(&final_path).unwrap(), b"hello world");
        assert!(!tmp.path().join("sdcard/Download/.s.part").exists());
    }

    /// Defence in depth behind intake: the sink itself never lands a file on a name that is
    /// (in any case) another task's staging file.
    #[tokio::test]
    async fn commit_refuses_staging_names_as_final_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let (sink, _) = Sink::open(dir.clone(), ".ferry-a.part".into(), None, false)
            .await
            .unwrap();
        sink.write(Bytes::from_static(b"evil")).await.unwrap();
        sink.finish().await.unwrap();
        let victim = tmp.path().join("sdcard/Download/.ferry-t1.part");
        std::fs::write(&victim, b"victim").unwrap();
        for name in [".ferry-t1.part", ".FERRY-T1.PART"] {
            let err = commit(&dir, ".ferry-a.part", name).unwrap_err();
            assert_eq!(err.code, Code::StoragePathNotAllowed, "{name}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    }

    #[tokio::test]
    async fn resume_keeps_only_the_trusted_prefix_and_hashes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        std::fs::write(
            tmp.path().join("sdcard/Download/.r.part"),
            b"hello wor-garbage",
        )
        .unwrap();
        let (sink, len) = Sink::open(dir, ".r.part".into(), Some(9), false)
            .await
            .unwrap();
        assert_eq!(len, 9);
        sink.write(Bytes::from_static(b"ld")).await.unwrap();
        let w = sink.finish().await.unwrap();
        assert_eq!(
            hex(&w.sha256),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[tokio::test]
    async fn too_little_space_is_disk_full() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let (sink, _) = Sink::open(dir, ".f.part".into(), None, false)
            .await
            .unwrap();
        let err = sink.reserve(u64::MAX / 2).await.unwrap_err();
        assert_eq!(err.code, Code::StorageDiskFull);
    }

    #[tokio::test]
    async fn a_folder_under_the_final_name_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        std::fs::create_dir(tmp.path().join("sdcard/Download/taken")).unwrap();
        let (sink, _) = Sink::open(dir.clone(), ".t.part".into(), None, false)
            .await
            .unwrap();
        sink.finish().await.unwrap();
        let err = commit(&dir, ".t.part", "taken").unwrap_err();
        assert_eq!(err.code, Code::StoragePathNotAllowed);
    }
}
