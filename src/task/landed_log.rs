//! The landed log of a folder send: `STATE_DIR/tasks/TASKID.landed`, one line appended per
//! object that landed in this run, so that remembering an object costs a constant number of
//! bytes instead of a rewrite of the whole task record (which made a 3,000-object folder write
//! 2.75 GB).
//!
//! Format: a header line naming the task, the folder's key prefix and the device folder the
//! objects land under, then one line per object: `[RELATIVE, ETAG, SIZE, SHA256]` (the key is
//! `PREFIX + RELATIVE`, the file `BASE/RELATIVE`). Every line is JSON, a tab, 8 hex digits of
//! the sha256 of that JSON, and `\n`. Replay stops at the first line that is incomplete, fails
//! its checksum or does not parse (a torn tail after a crash): that line and any after it are
//! dropped, never misread, and their objects are simply fetched again.
//!
//! Durability: each line is written with one `write(2)` as soon as its object is in place
//! (file fsync'd, renamed, folder fsync'd), so a `kill -9` loses none (the page cache outlives
//! the process). The log itself is fsync'd every [`SYNC_LINES`] lines or once the objects
//! landed since the last sync reach `checkpoint_bytes` (the same bound a single file's
//! checkpoints give), so after a power cut at most that much is fetched again; an fsync per
//! line would write one flash page per object. The journal replays a log into its record and
//! removes it when it loads, and when the task ends ([`super::journal`]).

use super::record::{DoneObject, FileResult};
use crate::transfer::sink::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file name extension of a landed log.
pub const EXTENSION: &str = "landed";
/// The log is fsync'd at least every this many lines.
pub const SYNC_LINES: u32 = 256;
const MAGIC: &str = "ferry-landed";
const VERSION: u32 = 1;

/// Where the objects of a folder send come from and land: what every line is relative to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FolderOrigin {
    /// The folder's key prefix (`send/game/`).
    pub prefix: String,
    /// The device folder its objects land under (`/sdcard/Download/game`).
    pub base: String,
}

impl FolderOrigin {
    /// The part of `done` relative to this folder, when its key and path both lie under it.
    fn relative<'a>(&self, done: &'a DoneObject) -> Option<&'a str> {
        let relative = done.key.strip_prefix(&self.prefix)?;
        let path = done.file.path.strip_prefix(&self.base)?.strip_prefix('/')?;
        (path == relative && !relative.is_empty()).then_some(relative)
    }

    fn object(&self, relative: &str, etag: String, size: u64, sha256: String) -> DoneObject {
        DoneObject {
            key: format!("{}{relative}", self.prefix),
            etag,
            file: FileResult {
                path: format!("{}/{relative}", self.base),
                size,
                sha256,
                content_encoding: None,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Header {
    log: String,
    version: u32,
    task_id: String,
    #[serde(flatten)]
    origin: FolderOrigin,
}

/// `[RELATIVE, ETAG, SIZE, SHA256]`
type Line = (String, String, u64, String);

/// One framed line: JSON, tab, checksum, newline.
fn frame(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(json);
    line.push(b'\t');
    line.extend_from_slice(checksum(json).as_bytes());
    line.push(b'\n');
    line
}

fn checksum(json: &[u8]) -> String {
    hex(&Sha256::digest(json)[..4])
}

/// The JSON of one complete, intact line; `None` for anything else.
fn unframe(line: &[u8]) -> Option<&[u8]> {
    let tab = line.iter().rposition(|b| *b == b'\t')?;
    let (json, sum) = (&line[..tab], &line[tab + 1..]);
    (sum == checksum(json).as_bytes()).then_some(json)
}

/// What a log held: the objects of its intact lines, in order, and why it stopped early.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    pub landed: Vec<DoneObject>,
    /// Set when a line was dropped (torn, corrupt, or the log is not this task's).
    pub dropped: Option<String>,
}

/// Reads a log of task `task_id`: every intact line up to the first one that is not.
pub fn replay(bytes: &[u8], task_id: &str) -> Replayed {
    let mut replayed = Replayed::default();
    let mut lines = bytes.split_inclusive(|b| *b == b'\n');
    let header = lines
        .next()
        .and_then(|l| unframe(l.strip_suffix(b"\n")?))
        .and_then(|json| serde_json::from_slice::<Header>(json).ok());
    let origin = match header {
        Some(h) if h.log == MAGIC && h.version == VERSION && h.task_id == task_id => h.origin,
        Some(_) => {
            replayed.dropped = Some("the log belongs to another task or format".into());
            return replayed;
        }
        None if bytes.is_empty() => return replayed,
        None => {
            replayed.dropped = Some("its header is torn or corrupt".into());
            return replayed;
        }
    };
    for (n, line) in lines.enumerate() {
        let parsed = line
            .strip_suffix(b"\n")
            .and_then(unframe)
            .and_then(|json| serde_json::from_slice::<Line>(json).ok());
        match parsed {
            Some((relative, etag, size, sha256)) if !relative.is_empty() => {
                replayed
                    .landed
                    .push(origin.object(&relative, etag, size, sha256));
            }
            _ => {
                replayed.dropped = Some(format!(
                    "line {} and after are torn or corrupt ({} bytes dropped)",
                    n + 2,
                    bytes.len() - offset_of(bytes, line)
                ));
                break;
            }
        }
    }
    replayed
}

fn offset_of(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Appends the objects one run lands to a task's log (a new log: see [`LandedLog::create`]).
#[derive(Debug)]
pub struct LandedLog {
    file: File,
    path: PathBuf,
    origin: FolderOrigin,
    sync_bytes: u64,
    unsynced_lines: u32,
    unsynced_bytes: u64,
    /// Whether the folder holding the log was fsync'd since it was created.
    dir_synced: bool,
}

impl LandedLog {
    /// Starts the log of one run at `path`, replacing any left there: whatever an earlier
    /// log held was merged into the task record when the journal loaded it, or when that run
    /// ended. `sync_bytes` is `checkpoint_bytes`.
    pub fn create(
        path: PathBuf,
        task_id: &str,
        origin: FolderOrigin,
        sync_bytes: u64,
    ) -> std::io::Result<LandedLog> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let header = Header {
            log: MAGIC.into(),
            version: VERSION,
            task_id: task_id.into(),
            origin: origin.clone(),
        };
        file.write_all(&frame(&serde_json::to_vec(&header)?))?;
        Ok(LandedLog {
            file,
            path,
            origin,
            sync_bytes,
            unsynced_lines: 0,
            unsynced_bytes: 0,
            dir_synced: false,
        })
    }

    pub fn origin(&self) -> &FolderOrigin {
        &self.origin
    }

    /// Appends one landed object (one `write(2)`), and fsyncs when one is due. An object
    /// outside this log's folder is refused: it would be fetched again after a crash.
    pub fn append(&mut self, done: &DoneObject) -> std::io::Result<()> {
        let Some(relative) = self.origin.relative(done) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{:?} is not under the log's folder", done.key),
            ));
        };
        let line: (&str, &str, u64, &str) =
            (relative, &done.etag, done.file.size, &done.file.sha256);
        self.file.write_all(&frame(&serde_json::to_vec(&line)?))?;
        self.unsynced_lines += 1;
        self.unsynced_bytes += done.file.size;
        if self.unsynced_lines >= SYNC_LINES || self.unsynced_bytes >= self.sync_bytes {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every line written so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if !self.dir_synced {
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            self.dir_synced = true;
        }
        self.unsynced_lines = 0;
        self.unsynced_bytes = 0;
        Ok(())
    }
}

/// The log file of a task in journal folder `dir` (the TaskId is checked by the caller).
pub fn path_in(dir: &Path, task_id: &str) -> PathBuf {
    dir.join(format!("{task_id}.{EXTENSION}"))
}

/// `base` with `landed` merged in, in one pass: an object landed again (a new ETag, or its
/// file was gone) replaces the earlier entry of its key, where it stood.
pub fn merge(base: &mut Vec<DoneObject>, landed: impl IntoIterator<Item = DoneObject>) {
    let mut at: std::collections::HashMap<String, usize> = base
        .iter()
        .enumerate()
        .map(|(i, d)| (d.key.clone(), i))
        .collect();
    for done in landed {
        match at.get(&done.key) {
            Some(&i) => base[i] = done,
            None => {
                at.insert(done.key.clone(), base.len());
                base.push(done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> FolderOrigin {
        FolderOrigin {
            prefix: "send/game/".into(),
            base: "/sdcard/Download/game".into(),
        }
    }

    fn done(relative: &str, etag: &str, size: u64) -> DoneObject {
        origin().object(relative, etag.into(), size, format!("{size:064x}"))
    }

    fn written(objects: &[DoneObject]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = path_in(tmp.path(), "t-1");
        let mut log = LandedLog::create(path.clone(), "t-1", origin(), 64 << 20).unwrap();
        for d in objects {
            log.append(d).unwrap();
        }
        (tmp, path)
    }

    #[test]
    fn lines_replay_into_the_objects_they_were_written_from() {
        let objects = [
            done("a.apk", "\"e1\"", 10),
            done("sub/deeper/c d ü\t.bin", "\"tab\tin\nit\"", 0),
        ];
        let (_tmp, path) = written(&objects);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            replay(&bytes, "t-1"),
            Replayed {
                landed: objects.to_vec(),
                dropped: None
            }
        );
        // Only the relative part is written per object: constant bytes for any folder size.
        let last = bytes.split(|b| *b == b'\n').nth(2).unwrap();
        assert!(!String::from_utf8_lossy(last).contains("/sdcard"));
    }

    /// A crash can leave any prefix of the last write, or garbage (zeroes) on some
    /// filesystems after a power cut: the intact lines before it count, nothing after it.
    #[test]
    fn a_torn_or_corrupt_tail_is_dropped_and_never_misread() {
        let objects: Vec<_> = (0..3).map(|i| done(&format!("f{i}"), "\"e\"", i)).collect();
        let (_tmp, path) = written(&objects);
        let bytes = std::fs::read(&path).unwrap();
        let line3 = bytes.len() - (bytes.rsplit(|b| *b == b'\n').nth(1).unwrap().len() + 1);
        // Every cut inside the last line: two objects, and the tail reported dropped.
        for cut in line3 + 1..bytes.len() {
            let replayed = replay(&bytes[..cut], "t-1");
            assert_eq!(replayed.landed, objects[..2], "cut at {cut}");
            assert!(replayed.dropped.is_some(), "cut at {cut}");
        }
        assert_eq!(replay(&bytes[..line3], "t-1").landed, objects[..2]);
        // One changed letter in the key of the second object (still valid JSON, another
        // key): its checksum fails, so it and all after it are dropped.
        let mut flipped = bytes.clone();
        let second = bytes
            .split(|b| *b == b'\n')
            .take(2)
            .map(|l| l.len() + 1)
            .sum::<usize>();
        assert_eq!(&flipped[second..second + 4], b"[\"f1");
        flipped[second + 2] = b'g';
        let replayed = replay(&flipped, "t-1");
        assert_eq!(replayed.landed, objects[..1]);
        // Zeroes where the tail was.
        let mut zeroed = bytes.clone();
        zeroed[line3..].fill(0);
        assert_eq!(replay(&zeroed, "t-1").landed, objects[..2]);
        // A torn header: nothing.
        let replayed = replay(&bytes[..10], "t-1");
        assert!(replayed.landed.is_empty() && replayed.dropped.is_some());
    }

    #[test]
    fn a_log_of_another_task_or_an_empty_one_holds_nothing() {
        let (_tmp, path) = written(&[done("a", "e", 1)]);
        let bytes = std::fs::read(&path).unwrap();
        let other = replay(&bytes, "t-2");
        assert!(other.landed.is_empty() && other.dropped.is_some());
        assert_eq!(replay(b"", "t-1"), Replayed::default());
    }

    #[test]
    fn objects_outside_the_folder_are_refused_and_a_new_log_starts_empty() {
        let (tmp, path) = written(&[done("a", "e", 1)]);
        let mut log = LandedLog::create(path.clone(), "t-1", origin(), 64 << 20).unwrap();
        let mut elsewhere = done("b", "e", 1);
        elsewhere.file.path = "/sdcard/Download/other/b".into();
        assert!(log.append(&elsewhere).is_err());
        let mut other_key = done("b", "e", 1);
        other_key.key = "send/other/b".into();
        assert!(log.append(&other_key).is_err());
        log.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(replay(&bytes, "t-1"), Replayed::default());
        drop(tmp);
    }

    #[test]
    fn merging_replaces_objects_landed_again_in_place() {
        let mut base = vec![done("a", "e1", 1), done("b", "e1", 2)];
        merge(
            &mut base,
            [done("c", "e1", 3), done("a", "e2", 4), done("c", "e3", 5)],
        );
        assert_eq!(
            base,
            [done("a", "e2", 4), done("b", "e1", 2), done("c", "e3", 5)]
        );
    }
}
