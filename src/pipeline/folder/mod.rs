//! Sending an OSS folder: list it (bounded in time), check every key ([`keys`]), then land
//! the objects, skipping those an earlier run of the task already landed: small ones up to
//! `oss.folder_concurrency` at once (each with a staging file of its own), a large one alone,
//! with progress over the whole folder and the result in key order. Each landed object is reported once
//! ([`Observer::landed`]: one line of the task's landed log), never by rewriting a record
//! that lists them all.

mod keys;
mod resume;

use super::land::{Landed, Landing};
use super::target::{open_folder, staging_name_in_slot};
use super::Ctx;
use crate::error::{Code, Error, Result};
use crate::paths::{DevicePath, Dir, Entry};
use crate::task::landed_log::FolderOrigin;
use crate::task::payload::OssObject;
use crate::task::record::{DoneObject, ResumeState};
use crate::transfer::engine::Observer;
use crate::transfer::source::oss::OssClient;
use crate::transfer::source::SourceError;
use keys::FolderEntry;
use resume::resumed_object;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

/// Sends every object under a prefix; see [`keys`] for why keys are all checked first.
pub(super) async fn send<O: Observer>(
    ctx: &Ctx<'_>,
    client: &OssClient,
    object: &OssObject,
    folder: &DevicePath,
    rename: &Option<String>,
    observer: &O,
) -> Result<Vec<Landed>> {
    let config = &ctx.services.config;
    let shown = format!("oss://{}/{}", object.bucket, object.key);
    // The listing runs before any transfer (and its low-speed watch): bounded by the retry
    // budget, or by transfer.deadline_secs when that is shorter, so a server that drips its
    // listing cannot hold the task slot for ever.
    let budget = config.retry.budget_secs;
    let limit = match config.transfer.deadline_secs {
        0 => budget,
        deadline => deadline.min(budget),
    };
    let listing = client.list(
        &object.bucket,
        &object.key,
        config.oss.list_page_size,
        config.oss.max_folder_objects,
    );
    let listed = tokio::select! {
        _ = ctx.cancel.cancelled() => return Err(Error::new(Code::Cancelled, "the task was stopped")),
        r = tokio::time::timeout(Duration::from_secs(limit), listing) => match r {
            Ok(listed) => listed.map_err(Error::from)?,
            Err(_) => return Err(Error::new(
                Code::NetworkTimeout,
                format!("listing {shown} took longer than {limit} s (retry.budget_secs, or transfer.deadline_secs when shorter); nothing of the folder was written"),
            )),
        },
    };
    let entries = keys::plan(&object.key, listed, &shown)?;
    let base = match rename {
        Some(name) => folder.join(name),
        None => folder.clone(),
    };
    let base_dir = open_folder(&ctx.roots, base.clone()).await?;
    let mut resume = ctx.resume.clone();
    let done_before = resume
        .as_mut()
        .map(|r| std::mem::take(&mut r.folder_done))
        .unwrap_or_default();
    let done_before: HashMap<&str, &DoneObject> =
        done_before.iter().map(|d| (d.key.as_str(), d)).collect();
    let resumed_key = resumed_object(&entries, &done_before, resume.as_ref());
    let total = entries.iter().map(|e| e.size).sum();
    let folder_observer = FolderObserver {
        outer: observer,
        bytes: Mutex::new(0),
        total,
    };
    let origin = FolderOrigin {
        prefix: object.key.clone(),
        base: base.to_string(),
    };
    // Objects that go as parallel parts or record checkpoints go alone (their connections
    // are `transfer.connections`); smaller ones up to `at_once` together, one connection each.
    let at_once = config
        .oss
        .folder_concurrency
        .min(config.transfer.connections)
        .max(1);
    let alone_from = config
        .checkpoint_bytes
        .min(config.transfer.parallel_min_size_mib << 20);
    let mut files: Vec<Option<Landed>> = vec![None; entries.len()];
    let mut running = InFlight::default();
    // Slot 0, the staging name checkpoints record, is for objects that go alone, so that no
    // small object truncates the recorded partial data of a large one that comes later.
    let mut free_slots: Vec<usize> = (1..=at_once).rev().collect();
    let mut alone_in_flight = false;
    // The failure of the first object (in key order) that failed.
    let mut failed: Option<(usize, Error)> = None;
    // Entries are sorted by key, so the objects of one sub-folder come together.
    let mut current: (Vec<String>, Arc<Dir>) = (Vec::new(), base_dir.clone());
    for (index, entry) in entries.iter().enumerate() {
        // A folder that cannot be opened fails like an object: those in flight finish first.
        if entry.dirs != current.0 {
            match entry_dir(ctx, &base, &base_dir, entry).await {
                Ok(dir) => current = (entry.dirs.clone(), dir),
                Err(e) => {
                    settle(&mut files, &mut failed, (index, Err(e)));
                    break;
                }
            }
        }
        let final_dir = current.1.clone();
        let done = match still_done(&done_before, entry, &final_dir) {
            Ok(done) => done,
            Err(e) => {
                settle(&mut files, &mut failed, (index, Err(e)));
                break;
            }
        };
        if let Some(done) = done {
            files[index] = Some(Landed {
                dir: final_dir,
                name: entry.name.clone(),
                size: done.file.size,
                sha256: done.file.sha256.clone(),
                content_encoding: done.file.content_encoding.clone(),
            });
            folder_observer.moved(0, done.file.size);
            continue;
        }
        let alone = entry.size >= alone_from;
        while !running.is_empty() && (alone || alone_in_flight || free_slots.is_empty()) {
            let (slot, outcome) = running.next().await;
            if slot != 0 {
                free_slots.push(slot);
            }
            settle(&mut files, &mut failed, outcome);
        }
        alone_in_flight = alone;
        // A failure (or a stop) starts nothing more; what is in flight finishes below.
        if failed.is_some() || ctx.cancel.is_cancelled() {
            break;
        }
        let slot = match alone {
            true => 0,
            false => free_slots.pop().expect("a slot is free"),
        };
        let landing = Landing {
            source: Arc::new(client.object(&object.bucket, &entry.key)),
            staging_dir: base_dir.clone(),
            final_dir,
            final_name: entry.name.clone(),
            // Partial data is only ever recorded for an object that goes alone, in slot 0, and
            // only ever handed to the object it names (see [`resume`]).
            resume: if alone && resumed_key == Some(entry.key.as_str()) {
                resume.take()
            } else {
                None
            },
            md5: None,
            slot,
        };
        let (folder_observer, origin) = (&folder_observer, &origin);
        running.push(Box::pin(async move {
            let object = ObjectObserver {
                folder: folder_observer,
                key: &entry.key,
                last: Mutex::new(0),
                alone,
            };
            let outcome = ctx.land(landing, &object).await;
            match &outcome {
                Ok(file) => {
                    object.progress(file.size, None);
                    let done = DoneObject {
                        key: entry.key.clone(),
                        etag: entry.etag.clone().unwrap_or_default(),
                        file: file.to_result(),
                    };
                    folder_observer.outer.landed(origin, done).await;
                }
                Err(_) => object.progress(0, None),
            }
            (slot, (index, outcome))
        }));
    }
    while !running.is_empty() {
        let (_, outcome) = running.next().await;
        settle(&mut files, &mut failed, outcome);
    }
    if let Some((index, e)) = failed {
        let landed = files.iter().flatten().count();
        return Err(Error::new(
            e.code,
            format!(
                "{} (object {} of {}: {}); {landed} files of the folder are in place and a re-submit of this TaskId skips them",
                e.message,
                index + 1,
                entries.len(),
                entries[index].key
            ),
        ));
    }
    if ctx.cancel.is_cancelled() {
        return Err(Error::new(Code::Cancelled, "the task was stopped"));
    }
    remove_slot_leftovers(&base_dir, ctx.task_id).await;
    Ok(files
        .into_iter()
        .map(|f| f.expect("every object landed"))
        .collect())
}

/// Removes the staging files of slots an interrupted earlier run left (a run with more
/// objects at once, stopped by the daemon): this run has landed every object.
async fn remove_slot_leftovers(dir: &Arc<Dir>, task_id: &str) {
    let (dir, task_id) = (dir.clone(), task_id.to_string());
    let removed = tokio::task::spawn_blocking(move || {
        (1..=crate::config::MAX_FOLDER_CONCURRENCY)
            .try_for_each(|slot| dir.remove(&staging_name_in_slot(&task_id, slot)))
    })
    .await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(error = %e, "cannot remove a leftover staging file");
    }
}

/// Puts a finished object's file in its place, or keeps its failure if it is the first in
/// key order.
fn settle(
    files: &mut [Option<Landed>],
    failed: &mut Option<(usize, Error)>,
    (index, outcome): (usize, Result<Landed>),
) {
    match outcome {
        Ok(file) => files[index] = Some(file),
        Err(e) if failed.as_ref().is_none_or(|(first, _)| index < *first) => {
            *failed = Some((index, e))
        }
        Err(_) => {}
    }
}

/// One object's landing in flight: its staging slot, then its index and outcome.
type InFlightLanding<'a> =
    Pin<Box<dyn Future<Output = (usize, (usize, Result<Landed>))> + Send + 'a>>;

/// The objects of a folder in flight at once (a handful): each poll polls them all.
#[derive(Default)]
struct InFlight<'a> {
    futures: Vec<InFlightLanding<'a>>,
}

impl<'a> InFlight<'a> {
    fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    fn push(&mut self, future: InFlightLanding<'a>) {
        self.futures.push(future);
    }

    /// The next one to finish (there must be one in flight).
    async fn next(&mut self) -> (usize, (usize, Result<Landed>)) {
        std::future::poll_fn(|cx| {
            for i in 0..self.futures.len() {
                if let Poll::Ready(out) = self.futures[i].as_mut().poll(cx) {
                    drop(self.futures.swap_remove(i));
                    return Poll::Ready(out);
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Opens (creating) the sub-folder an entry lands in.
async fn entry_dir(
    ctx: &Ctx<'_>,
    base: &DevicePath,
    base_dir: &Arc<Dir>,
    entry: &FolderEntry,
) -> Result<Arc<Dir>> {
    if entry.dirs.is_empty() {
        return Ok(base_dir.clone());
    }
    let path = entry.dirs.iter().fold(base.clone(), |p, d| p.join(d));
    open_folder(&ctx.roots, path).await
}

/// An object landed by an earlier run of this task, unchanged since and still in place. The
/// stored path is not trusted: it must be the very path this entry lands at (the folder's
/// path, its sub-folders, its name), else the object is fetched again.
fn still_done<'a>(
    done: &HashMap<&str, &'a DoneObject>,
    entry: &FolderEntry,
    final_dir: &Dir,
) -> Result<Option<&'a DoneObject>> {
    let Some(etag) = entry.etag.as_deref() else {
        return Ok(None);
    };
    let Some(done) = done.get(entry.key.as_str()).filter(|d| d.etag == etag) else {
        return Ok(None);
    };
    if done.file.path != final_dir.device_path().join(&entry.name).to_string() {
        tracing::warn!(
            key = entry.key,
            stored = done.file.path,
            "a landed object's recorded path is not where it lands; fetching it again"
        );
        return Ok(None);
    }
    Ok(
        (final_dir.entry(&entry.name)? == Entry::File && done.file.size == entry.size)
            .then_some(done),
    )
}

/// Progress over the whole folder: the landed objects and those in flight.
struct FolderObserver<'a, O: Observer> {
    outer: &'a O,
    /// Bytes landed or in flight; the lock keeps the reports in order.
    bytes: Mutex<u64>,
    total: u64,
}

impl<O: Observer> FolderObserver<'_, O> {
    /// An object's bytes went from `from` to `to`.
    fn moved(&self, from: u64, to: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        *bytes = (*bytes + to).saturating_sub(from);
        self.outer.progress(*bytes, Some(self.total));
    }
}

/// One object of the folder in flight.
struct ObjectObserver<'f, 'a, O: Observer> {
    folder: &'f FolderObserver<'a, O>,
    /// Its key, named in its partial data so that a restart resumes this object only.
    key: &'f str,
    /// Its bytes as last reported.
    last: Mutex<u64>,
    /// Whether it goes alone, large enough for its partial data to be recorded.
    alone: bool,
}

impl<O: Observer> Observer for ObjectObserver<'_, '_, O> {
    fn progress(&self, done: u64, _total: Option<u64>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        self.folder.moved(*last, done);
        *last = done;
    }

    /// Only an object that goes alone (at least `checkpoint_bytes`, or parallel parts)
    /// records its partial data (each record is a whole journal write): a smaller one cut
    /// short is fetched again from zero, no more than a single file loses between its
    /// checkpoints. Its landing is remembered through [`Observer::landed`]. The state names
    /// the object's key: after a restart no other object resumes from it ([`resume`]).
    async fn checkpoint(&self, mut state: ResumeState) {
        if self.alone {
            state.folder_key = Some(self.key.to_string());
            self.folder.outer.checkpoint(state).await
        }
    }

    fn retrying(&self, err: &SourceError, delay: Duration) {
        self.folder.outer.retrying(err, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Roots;
    use crate::task::record::FileResult;

    /// A recorded landed object counts as done only at the path its entry lands at: an edited
    /// record must not make AutoInstall read some other file.
    #[test]
    fn a_landed_object_recorded_at_another_path_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::new(Some(tmp.path().to_path_buf()), &["/sdcard".to_string()]).unwrap();
        let dir = roots
            .open_dir(&DevicePath::parse("/sdcard/Download/p/sub").unwrap(), true)
            .unwrap();
        std::fs::write(tmp.path().join("sdcard/Download/p/sub/a.apk"), b"x").unwrap();
        std::fs::write(tmp.path().join("sdcard/Download/other.apk"), b"y").unwrap();
        let entry = FolderEntry {
            key: "p/sub/a.apk".into(),
            dirs: vec!["sub".into()],
            name: "a.apk".into(),
            size: 1,
            etag: Some("e".into()),
        };
        let done_at = |path: &str| DoneObject {
            key: entry.key.clone(),
            etag: "e".into(),
            file: FileResult {
                path: path.into(),
                size: 1,
                sha256: String::new(),
                content_encoding: None,
            },
        };
        let right = done_at("/sdcard/Download/p/sub/a.apk");
        let index = HashMap::from([(right.key.as_str(), &right)]);
        assert_eq!(still_done(&index, &entry, &dir).unwrap(), Some(&right));
        for wrong in [
            "/sdcard/Download/other.apk",
            "/sdcard/Download/p/a.apk",
            "/data/data/x/a.apk",
        ] {
            let done = done_at(wrong);
            let index = HashMap::from([(done.key.as_str(), &done)]);
            assert_eq!(still_done(&index, &entry, &dir).unwrap(), None, "{wrong}");
        }
    }
}
