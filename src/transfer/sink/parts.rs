//! The sink of a parallel transfer: parts written with positional writes into one staging
//! file, on a dedicated writer thread, while a hash thread follows the contiguous written
//! prefix by reading it back (`pread`), so sha256 (and MD5) cover the whole file in order with
//! a fixed buffer, whatever the size and the order in which parts arrive.
//!
//! Memory: a chunk is freed once written; the engine bounds how many bytes wait here with a
//! semaphore whose permits travel with each chunk and are released after its write.

use super::hasher::{Digests, Follower};
use super::writeback::Writeback;
use super::{reserve, start_writer, writer_error, Written};
use crate::error::{Code, Error, Result};
use crate::paths::Dir;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

/// How an object is cut into parts: part `i` is `[i * part_size, min((i + 1) * part_size, total))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub total: u64,
    pub part_size: u64,
}

impl Layout {
    pub fn count(&self) -> usize {
        self.total.div_ceil(self.part_size) as usize
    }

    /// Start and (exclusive) end of part `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.part_size;
        (start, (start + self.part_size).min(self.total))
    }

    pub fn len(&self, i: usize) -> u64 {
        let (start, end) = self.range(i);
        end - start
    }

    /// Bytes from 0 that are complete, given the bytes done of each part.
    pub fn prefix(&self, done: &[u64]) -> u64 {
        let mut prefix = 0;
        for (i, d) in done.iter().enumerate() {
            prefix += d;
            if *d < self.len(i) {
                break;
            }
        }
        prefix
    }
}

enum Command {
    Data {
        part: usize,
        offset: u64,
        data: Bytes,
        /// Returned to the engine's in-flight budget once the bytes are written.
        _permit: OwnedSemaphorePermit,
    },
    Sync(oneshot::Sender<Result<Vec<u64>>>),
    Finish(oneshot::Sender<Result<Written>>),
    /// Answered once every earlier write is done and both threads have stopped.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread of one parallel staging file.
pub struct PartSink {
    tx: mpsc::UnboundedSender<Command>,
    failed: Arc<Mutex<Option<Error>>>,
}

impl PartSink {
    /// Opens (or creates) `staging`. With `kept` (from the journal) the bytes it lists per part
    /// are kept, as far as the file really holds them; without it the file starts empty.
    /// Free space for the rest is checked and the whole file preallocated. Returns the sink
    /// and the bytes done of each part.
    pub async fn open(
        dir: Arc<Dir>,
        staging: String,
        layout: Layout,
        kept: Option<Vec<u64>>,
        want_md5: bool,
    ) -> Result<(PartSink, Vec<u64>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(Mutex::new(None));
        let failed_in_thread = failed.clone();
        let done = start_writer(
            "ferry-parts",
            move || {
                PartWriter::open(dir, staging, layout, kept, want_md5).map(|w| (w.done.clone(), w))
            },
            move |writer| writer.run(rx, failed_in_thread),
        )
        .await?;
        Ok((PartSink { tx, failed }, done))
    }

    fn writer_error(&self) -> Error {
        writer_error(&self.failed)
    }

    /// Queues `data` for `offset`, the next byte of `part` (each part is written in order).
    pub fn write(
        &self,
        part: usize,
        offset: u64,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> Result<()> {
        let command = Command::Data {
            part,
            offset,
            data,
            _permit: permit,
        };
        self.tx.send(command).map_err(|_| self.writer_error())
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| self.writer_error())?;
        answer.await.map_err(|_| self.writer_error())?
    }

    /// Flushes to stable storage; returns the durable bytes of each part.
    pub async fn sync(&self) -> Result<Vec<u64>> {
        self.ask(Command::Sync).await
    }

    /// Once every part is written: syncs and returns the length and digests of the file.
    pub async fn finish(self) -> Result<Written> {
        self.ask(Command::Finish).await
    }

    /// Stops the threads after the queued writes, so the file can be reopened or removed
    /// without a write landing afterwards.
    pub async fn close(self) {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).is_ok() {
            let _ = answer.await;
        }
    }
}

struct PartWriter {
    dir: Arc<Dir>,
    name: String,
    file: File,
    layout: Layout,
    done: Vec<u64>,
    writebacks: Vec<Writeback>,
    /// The first part not yet complete: the hashed prefix cannot pass its written bytes.
    first_open: usize,
    follower: Follower,
}

impl PartWriter {
    fn open(
        dir: Arc<Dir>,
        name: String,
        layout: Layout,
        kept: Option<Vec<u64>>,
        want_md5: bool,
    ) -> Result<PartWriter> {
        let file = dir.open_staging(&name)?;
        let path = dir.host_path(&name);
        let on_disk = file
            .metadata()
            .map_err(|e| Error::io("inspecting", &path, &e))?
            .len();
        let count = layout.count();
        let mut done = vec![0; count];
        match kept.filter(|k| k.len() == count) {
            Some(kept) => {
                for (i, d) in done.iter_mut().enumerate() {
                    let (start, _) = layout.range(i);
                    // A part is kept only as far as it is in the file and within the part.
                    *d = kept[i]
                        .min(layout.len(i))
                        .min(on_disk.saturating_sub(start));
                }
            }
            None => file
                .set_len(0)
                .map_err(|e| Error::io("truncating", &path, &e))?,
        }
        let needed = layout.total - done.iter().sum::<u64>();
        reserve(&dir, &file, 0, layout.total, needed)?;
        let reader = file
            .try_clone()
            .map_err(|e| Error::io("opening for hashing", &path, &e))?;
        let follower = Follower::spawn(reader, Digests::new(want_md5), path)
            .map_err(|e| Error::new(Code::Internal, format!("starting the hash thread: {e}")))?;
        let writebacks = (0..count)
            .map(|i| Writeback::new(layout.range(i).0 + done[i]))
            .collect();
        let mut writer = PartWriter {
            dir,
            name,
            file,
            layout,
            done,
            writebacks,
            first_open: 0,
            follower,
        };
        writer.advance_prefix();
        Ok(writer)
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.host_path(&self.name)
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, failed: Arc<Mutex<Option<Error>>>) {
        while let Some(command) = rx.blocking_recv() {
            let outcome = match command {
                Command::Data {
                    part, offset, data, ..
                } => self.write(part, offset, &data),
                Command::Sync(reply) => {
                    let synced = self
                        .file
                        .sync_data()
                        .map(|()| self.done.clone())
                        .map_err(|e| Error::io("syncing", &self.path(), &e));
                    let _ = reply.send(synced);
                    Ok(())
                }
                Command::Finish(reply) => {
                    let _ = reply.send(self.finish());
                    return;
                }
                Command::Close(reply) => {
                    drop(self);
                    let _ = reply.send(());
                    return;
                }
            };
            if let Err(e) = outcome {
                *failed.lock().expect("sink error lock") = Some(e);
                return;
            }
        }
        // Every handle is gone: the transfer was abandoned; `follower` stops when dropped.
    }

    fn write(&mut self, part: usize, offset: u64, data: &[u8]) -> Result<()> {
        let (start, end) = self.layout.range(part);
        let at = start + self.done[part];
        if offset != at || offset + data.len() as u64 > end {
            return Err(Error::new(
                Code::Internal,
                format!("part {part} written out of order: byte {offset}, expected {at}"),
            ));
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("writing", &self.path(), &e))?;
        self.done[part] += data.len() as u64;
        self.writebacks[part].advance(&self.file, start + self.done[part]);
        if part == self.first_open {
            self.advance_prefix();
        }
        Ok(())
    }

    fn advance_prefix(&mut self) {
        let count = self.layout.count();
        while self.first_open < count
            && self.done[self.first_open] == self.layout.len(self.first_open)
        {
            self.first_open += 1;
        }
        let prefix = match self.first_open {
            i if i == count => self.layout.total,
            i => self.layout.range(i).0 + self.done[i],
        };
        self.follower.advance(prefix);
    }

    fn finish(&mut self) -> Result<Written> {
        if self.first_open != self.layout.count() {
            return Err(Error::new(
                Code::Internal,
                format!("finishing with part {} incomplete", self.first_open),
            ));
        }
        self.file
            .sync_all()
            .map_err(|e| Error::io("syncing", &self.path(), &e))?;
        let (sha256, md5) = self.follower.finish()?.finish();
        Ok(Written {
            len: self.layout.total,
            sha256,
            md5,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::{DevicePath, Roots};
    use sha2::{Digest, Sha256};
    use tokio::sync::Semaphore;

    fn folder(root: &std::path::Path) -> Arc<Dir> {
        let roots = Roots::new(Some(root.to_path_buf()), &["/sdcard".to_string()]).unwrap();
        Arc::new(
            roots
                .open_dir(&DevicePath::parse("/sdcard/Download").unwrap(), true)
                .unwrap(),
        )
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 % 251) as u8).collect()
    }

    #[test]
    fn layout_cuts_parts_and_finds_the_prefix() {
        let l = Layout {
            total: 10,
            part_size: 4,
        };
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(2), (8, 10));
        assert_eq!(l.prefix(&[4, 2, 2]), 6);
        assert_eq!(l.prefix(&[3, 4, 2]), 3);
        assert_eq!(l.prefix(&[4, 4, 2]), 10);
    }

    #[tokio::test]
    async fn parts_out_of_order_hash_as_the_whole_file_and_resume_keeps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        let body = data(1_000_000);
        let layout = Layout {
            total: body.len() as u64,
            part_size: 300_000,
        };
        let budget = Arc::new(Semaphore::new(1 << 20));
        let permit = || budget.clone().try_acquire_owned().unwrap();
        let (sink, done) = PartSink::open(dir.clone(), ".p.part".into(), layout, None, true)
            .await
            .unwrap();
        assert_eq!(done, vec![0; 4]);
        // The last part and half of the second arrive first.
        let chunk = |a: usize, b: usize| Bytes::copy_from_slice(&body[a..b]);
        sink.write(3, 900_000, chunk(900_000, 1_000_000), permit())
            .unwrap();
        sink.write(1, 300_000, chunk(300_000, 450_000), permit())
            .unwrap();
        assert_eq!(sink.sync().await.unwrap(), vec![0, 150_000, 0, 100_000]);
        drop(sink);
        let kept = Some(vec![0, 150_000, 0, 100_000]);
        let (sink, done) = PartSink::open(dir.clone(), ".p.part".into(), layout, kept, true)
            .await
            .unwrap();
        assert_eq!(done, vec![0, 150_000, 0, 100_000]);
        sink.write(2, 600_000, chunk(600_000, 900_000), permit())
            .unwrap();
        sink.write(0, 0, chunk(0, 300_000), permit()).unwrap();
        sink.write(1, 450_000, chunk(450_000, 600_000), permit())
            .unwrap();
        let written = sink.finish().await.unwrap();
        assert_eq!(written.len, body.len() as u64);
        assert_eq!(written.sha256.as_slice(), Sha256::digest(&body).as_slice());
        assert!(written.md5.is_some());
        let on_disk = std::fs::read(tmp.path().join("sdcard/Download/.p.part")).unwrap();
        assert!(on_disk == body);
        assert_eq!(budget.available_permits(), 1 << 20, "permits come back");
    }

    #[tokio::test]
    async fn kept_parts_beyond_the_file_are_dropped_and_writes_must_follow_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = folder(tmp.path());
        std::fs::write(tmp.path().join("sdcard/Download/.k.part"), data(150)).unwrap();
        let layout = Layout {
            total: 400,
            part_size: 100,
        };
        let kept = Some(vec![100, 80, 60, 0]);
        let (sink, done) = PartSink::open(dir, ".k.part".into(), layout, kept, false)
            .await
            .unwrap();
        assert_eq!(done, vec![100, 50, 0, 0], "the file holds only 150 bytes");
        let budget = Arc::new(Semaphore::new(10));
        let permit = budget.try_acquire_owned().unwrap();
        sink.write(2, 210, Bytes::from_static(b"x"), permit)
            .unwrap();
        let err = sink.sync().await.unwrap_err();
        assert_eq!(err.code, Code::Internal, "{}", err.message);
    }
}
