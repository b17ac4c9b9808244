//! The transfer engine: one object from a source into a staging file, then into place.
//!
//! It owns what every source shares: resume from partial data (only of the same version),
//! retries with backoff on transient failures, idle-read timeouts, size and digest checks,
//! the daemon's bandwidth cap, and checkpoints that let a killed daemon pick up where it
//! stopped.
//!
//! A fresh transfer first asks for `Range: bytes=0-`: a 206 for a large object with a
//! validator goes on in parts ([`parallel`]), starting with that very body on one connection
//! and opening more only while they bring speed ([`ramp`]); anything else (a 200, a small
//! object, no validator) is a single stream that goes on with that body ([`single`]).

mod pace;
mod parallel;
mod ramp;
mod restarts;
mod single;

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::paths::Dir;
use crate::task::landed_log::FolderOrigin;
use crate::task::record::{DoneObject, ResumeState};
use crate::transfer::sink::{self, Written};
use crate::transfer::source::limit::Bandwidth;
use crate::transfer::source::retry::Backoff;
use crate::transfer::source::{GetOptions, GetResult, ObjectMeta, Source, SourceError};
use pace::Pace;
use restarts::{NoResume, Restarts};
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often a source may change under us, or be fetched again whole because an attempt
/// could not be resumed, before the task gives up.
const MAX_RESTARTS: u32 = 3;

/// Receives progress from a running transfer.
pub trait Observer: Send + Sync {
    fn progress(&self, done: u64, total: Option<u64>);
    /// Persist this state so a restart can resume; awaited before the engine goes on.
    fn checkpoint(&self, state: ResumeState) -> impl Future<Output = ()> + Send;
    fn retrying(&self, _err: &SourceError, _delay: std::time::Duration) {}
    /// An object of a folder send is in place (its file fsync'd, renamed, its folder
    /// fsync'd): remember it so a re-run skips it. Awaited before the folder goes on.
    fn landed(&self, _origin: &FolderOrigin, _done: DoneObject) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// One object to fetch into `dir/final_name` via the hidden `staging` file.
pub struct Job {
    pub source: Arc<dyn Source>,
    pub dir: Arc<Dir>,
    pub final_name: String,
    /// Where `final_name` goes when it is not `dir` (files in sub-folders of a folder send).
    pub final_dir: Option<Arc<Dir>>,
    pub staging: String,
    /// State from an earlier, interrupted run of the same task.
    pub resume: Option<ResumeState>,
    pub md5: Option<[u8; 16]>,
    /// The daemon's bandwidth cap, shared by all its transfers.
    pub bandwidth: Arc<Bandwidth>,
}

/// How a transfer ended, beyond the file itself.
pub struct Outcome {
    pub written: Written,
    pub retries: u32,
    /// The Content-Encoding the file was sent with, saved as sent (see [`ObjectMeta`]).
    pub encoding: Option<String>,
}

/// The running boot, so a resume after a reboot trusts only fsync'd bytes.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How many bytes of an earlier staging file can be kept.
fn trusted_len(resume: &ResumeState, boot: &str) -> u64 {
    let has_version = resume.etag.is_some() || resume.last_modified.is_some();
    if !has_version {
        return 0;
    }
    if !boot.is_empty() && resume.boot_id == boot {
        // Same boot: the page cache survived the process, the whole file is good.
        resume.total.unwrap_or(u64::MAX)
    } else {
        resume.durable_bytes
    }
}

/// What every mode of one transfer shares.
struct Ctx<'a, O> {
    job: &'a Job,
    config: &'a Config,
    observer: &'a O,
    /// The task's cancellation, and the pace watchdog's: a transfer stopped for either syncs
    /// and checkpoints what it has, as for a shutdown.
    cancel: &'a CancellationToken,
    boot: String,
    pace: &'a Pace,
    /// The Content-Encoding of the bodies written, for the task's notes.
    encoding: std::sync::Mutex<Option<String>>,
}

impl<O> Ctx<'_, O> {
    /// Records the Content-Encoding of a body about to be written.
    fn saw(&self, meta: &ObjectMeta) {
        if meta.encoding.is_some() {
            *self.encoding.lock().expect("encoding") = meta.encoding.clone();
        }
    }
}

/// How one attempt ended: the file, or `None` when the source changed under a parallel
/// transfer and everything starts over.
struct Ended {
    written: Option<Written>,
    retries: u32,
    /// With no file: the source refused a range rather than changed (bytes fetched so far).
    part_refused: Option<u64>,
}

enum Start {
    Fresh,
    Resume(ResumeState),
    Parts(parallel::Plan),
}

pub async fn transfer<O: Observer>(
    mut job: Job,
    config: &Config,
    observer: &O,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let start = match job.resume.take() {
        Some(r) if r.is_parallel() => {
            parallel::Plan::resumed(&r).map_or(Start::Fresh, Start::Parts)
        }
        Some(r) => Start::Resume(r),
        None => Start::Fresh,
    };
    let stop = cancel.child_token();
    let pace = Pace::new(config);
    let ctx = Ctx {
        job: &job,
        config,
        observer,
        cancel: &stop,
        boot: boot_id(),
        pace: &pace,
        encoding: Default::default(),
    };
    let shown = job.source.describe();
    let watch = pace.watch(&shown);
    let attempts = attempts(&ctx, start);
    tokio::pin!(attempts);
    let (written, retries) = tokio::select! {
        r = &mut attempts => r?,
        err = watch => {
            // Stop the transfer as for a shutdown (its data synced and checkpointed), then
            // report why.
            tracing::warn!(code = %err.code, error = %err.message, "stopping the transfer");
            stop.cancel();
            match attempts.await {
                Err(e) if e.code == Code::Cancelled && !cancel.is_cancelled() => return Err(err),
                other => other?,
            }
        }
    };
    let target = job.final_dir.as_ref().unwrap_or(&job.dir);
    sink::verify_and_commit(
        &job.dir,
        &job.staging,
        &written,
        job.md5,
        &shown,
        target,
        &job.final_name,
    )?;
    let encoding = ctx.encoding.lock().expect("encoding").take();
    Ok(Outcome {
        written,
        retries,
        encoding,
    })
}

/// Transfers until the file is complete, starting over (boundedly) when the source changes;
/// returns it with the retries it took.
async fn attempts<O: Observer>(ctx: &Ctx<'_, O>, mut start: Start) -> Result<(Written, u32)> {
    let mut restarts = Restarts::default();
    let mut retries = 0;
    loop {
        let ended = match start {
            Start::Parts(plan) => parallel::run(ctx, plan, None).await?,
            Start::Resume(r) => single::run(ctx, Some(r), None, &mut restarts).await?,
            Start::Fresh => match probe(ctx, &mut retries).await? {
                Probed::Parallel(plan, first) => parallel::run(ctx, plan, Some(first)).await?,
                Probed::Single(first) => single::run(ctx, None, first, &mut restarts).await?,
            },
        };
        retries += ended.retries;
        match ended.written {
            Some(written) => return Ok((written, retries)),
            None => {
                let source = &*ctx.job.source;
                match ended.part_refused {
                    Some(sent) => {
                        restarts.refetch(sent, None, None, NoResume::PartRefused, source)?
                    }
                    None => restarts.changed(source)?,
                }
                start = Start::Fresh;
            }
        }
    }
}

/// The answer to the first request, whose body the chosen mode goes on reading.
enum Probed {
    Parallel(parallel::Plan, GetResult),
    Single(Option<GetResult>),
}

/// The first request of a fresh transfer: the whole object as a range from byte 0, to learn
/// the size and whether the source serves ranges of this version.
async fn probe<O: Observer>(ctx: &Ctx<'_, O>, retries: &mut u32) -> Result<Probed> {
    let transfer = &ctx.config.transfer;
    if transfer.connections <= 1 {
        return Ok(Probed::Single(None));
    }
    let mut backoff = Backoff::new(&ctx.config.retry);
    loop {
        let options = GetOptions {
            range_from_start: true,
            ..GetOptions::default()
        };
        let response = tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(cancelled()),
            r = ctx.job.source.get(options.clone()) => r,
        };
        match response {
            Ok(result) => {
                *retries += backoff.retries();
                check_range(&options, &result, None, &*ctx.job.source)?;
                ctx.saw(&result.meta);
                let meta = &result.meta;
                let parallel = meta.ranges
                    && result.offset == 0
                    && !meta.validators.is_empty()
                    && meta.size.is_some_and(|t| transfer.goes_parallel(t));
                if let (true, Some(total)) = (parallel, meta.size) {
                    let plan = parallel::Plan::new(total, transfer, meta.validators.clone());
                    return Ok(Probed::Parallel(plan, result));
                }
                return Ok(Probed::Single(Some(result)));
            }
            // No byte 0: an empty object. Ask again without a range.
            Err(e) if e.code == Code::SourceRangeNotSatisfiable => {
                *retries += backoff.retries();
                return Ok(Probed::Single(None));
            }
            Err(e) => {
                if !wait_before_retry(ctx, e, &mut backoff).await? {
                    return Err(cancelled());
                }
            }
        }
    }
}

/// Checks that a range answer (206) is the range asked for: it starts at the byte asked, ends
/// where asked (asked open-ended: at the object's last byte), and states the object's size
/// when the transfer already knows it. Every ranged read goes through here before a byte of
/// its body is written: a body of another range, written where the asked one belongs, would
/// splice the file. A 206 without a usable Content-Range is refused by the source itself.
fn check_range(
    asked: &GetOptions,
    got: &GetResult,
    known_size: Option<u64>,
    source: &dyn Source,
) -> Result<()> {
    if !got.meta.ranges {
        return Ok(());
    }
    let size = got.meta.size;
    let show = |v: Option<u64>| v.map_or("*".to_string(), |v| v.to_string());
    let last = |end: Option<u64>| show(end.map(|e| e.saturating_sub(1)));
    let wrong = if got.offset != asked.offset {
        format!("starts at byte {} instead of {}", got.offset, asked.offset)
    } else if let Some(end) = asked.end.or(size).filter(|e| got.end != Some(*e)) {
        format!(
            "ends at byte {} instead of {}",
            last(got.end),
            end.saturating_sub(1)
        )
    } else if let Some(known) = known_size.filter(|k| size != Some(*k)) {
        format!("gives the object {} bytes instead of {known}", show(size))
    } else if size.is_none() && asked.end.is_none() {
        // `bytes 0-99/*` to `bytes=0-`: whether the object goes on past the body is unknown,
        // and a short file would be taken for the whole one.
        "names no object size, so whether the object ends there is unknown".to_string()
    } else {
        return Ok(());
    };
    Err(Error::new(
        Code::SourceBadContentRange,
        format!(
            "{} answered a request for bytes {}-{} with Content-Range bytes {}-{}/{}, which {wrong}; nothing of it was written (the server's range support is broken)",
            source.describe(),
            asked.offset,
            asked.end.map_or(String::new(), |e| e.saturating_sub(1).to_string()),
            got.offset,
            last(got.end),
            show(size),
        ),
    ))
}

fn cancelled() -> Error {
    Error::new(Code::Cancelled, "the task was stopped")
}

/// Waits out the backoff for `err`: `Ok(true)` to retry, `Ok(false)` when cancelled
/// meanwhile, the final error when retrying is over.
/// The wait does not count against the low-speed limit (the retry budget bounds it).
async fn wait_before_retry<O: Observer>(
    ctx: &Ctx<'_, O>,
    err: SourceError,
    backoff: &mut Backoff,
) -> Result<bool> {
    let Some(delay) = backoff.next_delay(&err) else {
        return Err(backoff.give_up(err).into());
    };
    tracing::warn!(code = %err.code, error = %err.message, delay_ms = delay.as_millis() as u64, "retrying");
    ctx.observer.retrying(&err, delay);
    let _paused = ctx.pace.pause();
    tokio::select! {
        _ = ctx.cancel.cancelled() => Ok(false),
        _ = tokio::time::sleep(delay) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_depends_on_boot_and_validators() {
        let mut r = ResumeState {
            etag: Some("\"a\"".into()),
            total: Some(100),
            durable_bytes: 40,
            boot_id: "b1".into(),
            ..Default::default()
        };
        assert_eq!(trusted_len(&r, "b1"), 100);
        assert_eq!(trusted_len(&r, "b2"), 40);
        r.etag = None;
        assert_eq!(trusted_len(&r, "b1"), 0, "no validator, no resume");
    }
}
