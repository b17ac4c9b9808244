//! The transfer engine: one object from a source into a staging file, then into place.
//!
//! It owns what every source shares: resume from partial data (only of the same version),
//! retries with backoff on transient failures, idle-read timeouts, size and digest checks,
//! and checkpoints that let a killed daemon pick up where it stopped.

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::paths::Dir;
use crate::sink::{self, Sink, Written};
use crate::source::retry::Backoff;
use crate::source::{GetOptions, Source, SourceError, Validators};
use crate::task::ResumeState;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often a source may change under us before the task gives up.
const MAX_RESTARTS: u32 = 3;

/// Receives progress from a running transfer.
pub trait Observer: Send + Sync {
    fn progress(&self, done: u64, total: Option<u64>);
    /// Persist this state so a restart can resume; awaited before the engine goes on.
    fn checkpoint(&self, state: ResumeState) -> impl Future<Output = ()> + Send;
    fn retrying(&self, _err: &SourceError, _delay: std::time::Duration) {}
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
}

/// How a transfer ended, beyond the file itself.
pub struct Outcome {
    pub written: Written,
    pub retries: u32,
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

pub async fn transfer<O: Observer>(
    job: Job,
    config: &Config,
    observer: &O,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let boot = boot_id();
    let trusted = job.resume.as_ref().map(|r| trusted_len(r, &boot));
    let (sink, mut have) = Sink::open(
        job.dir.clone(),
        job.staging.clone(),
        trusted,
        job.md5.is_some(),
    )
    .await?;
    let mut expect: Option<Validators> = None;
    let mut total = None;
    if let Some(r) = job.resume.as_ref().filter(|_| have > 0) {
        expect = Some(Validators {
            etag: r.etag.clone(),
            last_modified: r.last_modified.clone(),
        });
        total = r.total;
    }
    let mut state = ResumeState {
        staging_name: job.staging.clone(),
        boot_id: boot,
        ..ResumeState::default()
    };
    let mut backoff = Backoff::new(&config.retry);
    let mut restarts = 0;
    let idle = config.http.read_idle_timeout();
    observer.progress(have, total);

    // Loop until the body has delivered every byte (or the staging file already holds them).
    while total != Some(have) || expect.is_none() {
        let response = tokio::select! {
            _ = cancel.cancelled() => return Err(stop(&sink).await),
            r = job.source.get(GetOptions { offset: have, end: None, expect: expect.clone() }) => r,
        };
        let mut result = match response {
            Ok(r) => r,
            Err(e) if e.code == Code::SourceRangeNotSatisfiable && have > 0 => {
                if expect.as_ref().is_some_and(|v| !v.is_empty()) {
                    // Same version (If-Range held) yet no byte past `have`: the length the
                    // source announced was wrong.
                    return Err(Error::new(
                        Code::IntegritySizeMismatch,
                        format!(
                            "{} announced {} bytes but has no data past byte {have}: its Content-Length disagrees with its data",
                            job.source.describe(),
                            total.map_or("more".to_string(), |t| t.to_string())
                        ),
                    ));
                }
                restart(
                    &sink,
                    &mut have,
                    &mut expect,
                    &mut total,
                    &mut restarts,
                    &*job.source,
                )
                .await?;
                continue;
            }
            Err(e) => {
                wait_before_retry(e, &mut backoff, observer, cancel, &sink).await?;
                continue;
            }
        };
        let same_version = expect
            .as_ref()
            .is_none_or(|v| v.matches(&result.meta.validators) && result.meta.size == total);
        if have > 0 && (result.offset != have || !same_version) {
            // Never splice two versions: start over, reusing this body if it is the whole object.
            restart(
                &sink,
                &mut have,
                &mut expect,
                &mut total,
                &mut restarts,
                &*job.source,
            )
            .await?;
            if result.offset != 0 {
                continue;
            }
        }
        if expect.is_none() {
            expect = Some(result.meta.validators.clone());
            total = result.meta.size;
            if let Some(t) = total {
                sink.reserve(t).await?;
            }
            state.etag = result.meta.validators.etag.clone();
            state.last_modified = result.meta.validators.last_modified.clone();
            state.total = total;
            state.durable_bytes = have;
            observer.checkpoint(state.clone()).await;
        }
        let mut since_checkpoint = 0u64;
        let failure = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(stop(&sink).await),
                r = tokio::time::timeout(idle, result.body.next_chunk()) => r,
            };
            match next {
                Err(_) => {
                    break SourceError::transient(
                        Code::NetworkTimeout,
                        format!(
                            "{} sent no data for {} s",
                            job.source.describe(),
                            idle.as_secs()
                        ),
                    )
                }
                Ok(Err(e)) => break e,
                Ok(Ok(None)) => {
                    if total.is_none() {
                        // No length announced: the end of the body is the end of the object.
                        total = Some(have);
                    }
                    if total == Some(have) {
                        break SourceError::permanent(Code::Internal, "complete");
                    }
                    break SourceError::transient(
                        Code::IntegritySizeMismatch,
                        format!(
                            "{} ended the body after {have} of {} bytes",
                            job.source.describe(),
                            total.unwrap_or_default()
                        ),
                    );
                }
                Ok(Ok(Some(chunk))) => {
                    let n = chunk.len() as u64;
                    if total.is_some_and(|t| have + n > t) {
                        sink::discard(&job.dir, &job.staging).ok();
                        return Err(Error::new(
                            Code::IntegritySizeMismatch,
                            format!(
                                "{} sent more than the {} bytes it announced",
                                job.source.describe(),
                                total.unwrap_or_default()
                            ),
                        ));
                    }
                    sink.write(chunk).await?;
                    have += n;
                    since_checkpoint += n;
                    backoff.progressed();
                    observer.progress(have, total);
                    if since_checkpoint >= config.checkpoint_bytes {
                        since_checkpoint = 0;
                        state.durable_bytes = sink.sync().await?;
                        observer.checkpoint(state.clone()).await;
                    }
                }
            }
        };
        if total == Some(have) {
            break;
        }
        wait_before_retry(failure, &mut backoff, observer, cancel, &sink).await?;
    }

    let written = sink.finish().await?;
    if let Some(expected) = job.md5 {
        if written.md5 != Some(expected) {
            sink::discard(&job.dir, &job.staging).ok();
            return Err(Error::new(
                Code::IntegrityMd5Mismatch,
                format!(
                    "{} has MD5 {}, but FileMd5 says {}; the partial file was removed",
                    job.source.describe(),
                    sink::hex(&written.md5.unwrap_or_default()),
                    sink::hex(&expected)
                ),
            ));
        }
    }
    let target = job.final_dir.as_ref().unwrap_or(&job.dir);
    sink::commit_into(&job.dir, &job.staging, target, &job.final_name)?;
    Ok(Outcome {
        written,
        retries: backoff.retries(),
    })
}

/// Cancellation: make what was written durable (a shutdown resumes from it) and say so.
async fn stop(sink: &Sink) -> Error {
    let _ = sink.sync().await;
    Error::new(Code::Cancelled, "the task was stopped")
}

async fn restart(
    sink: &Sink,
    have: &mut u64,
    expect: &mut Option<Validators>,
    total: &mut Option<u64>,
    restarts: &mut u32,
    source: &dyn Source,
) -> Result<()> {
    // A source without validators cannot resume at all; only a proven change counts.
    if expect.as_ref().is_some_and(|v| !v.is_empty()) {
        *restarts += 1;
    }
    if *restarts > MAX_RESTARTS {
        return Err(Error::new(
            Code::IntegritySourceChanged,
            format!(
                "{} changed {MAX_RESTARTS} times during the transfer; retry when it is stable",
                source.describe()
            ),
        ));
    }
    tracing::info!(source = %source.describe(), "source changed or ignored the range: starting over");
    sink.truncate().await?;
    *have = 0;
    *expect = None;
    *total = None;
    Ok(())
}

async fn wait_before_retry<O: Observer>(
    err: SourceError,
    backoff: &mut Backoff,
    observer: &O,
    cancel: &CancellationToken,
    sink: &Sink,
) -> Result<()> {
    let Some(delay) = backoff.next_delay(&err) else {
        return Err(backoff.give_up(err).into());
    };
    tracing::warn!(code = %err.code, error = %err.message, delay_ms = delay.as_millis() as u64, "retrying");
    observer.retrying(&err, delay);
    tokio::select! {
        _ = cancel.cancelled() => Err(stop(sink).await),
        _ = tokio::time::sleep(delay) => Ok(()),
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
