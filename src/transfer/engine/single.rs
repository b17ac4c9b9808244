//! The single stream: one body from the first missing byte to the end, as for small objects,
//! servers without ranges or validators, and transfers that started that way. A failure
//! resumes with a range of the same version (If-Range); anything else starts over.

use super::{
    cancelled, check_range, trusted_len, wait_before_retry, Ctx, Ended, NoResume, Observer,
    Restarts,
};
use crate::error::{Code, Error, Result};
use crate::task::record::ResumeState;
use crate::transfer::sink::{self, Sink};
use crate::transfer::source::retry::Backoff;
use crate::transfer::source::{GetOptions, GetResult, Source, SourceError, Validators};

/// One stream from `have` to the end, resuming (same version only) after failures. When it
/// fails and its partial data can never be resumed (no validator, no range support), the
/// staging file is removed at once instead of being kept for a re-submit that would start
/// over anyway.
pub(super) async fn run<O: Observer>(
    ctx: &Ctx<'_, O>,
    resume: Option<ResumeState>,
    first: Option<GetResult>,
    restarts: &mut Restarts,
) -> Result<Ended> {
    let mut resumable = true;
    let ended = stream(ctx, resume, first, restarts, &mut resumable).await;
    if ended.is_err() && !resumable {
        sink::discard(&ctx.job.dir, &ctx.job.staging).ok();
    }
    ended
}

async fn stream<O: Observer>(
    ctx: &Ctx<'_, O>,
    resume: Option<ResumeState>,
    mut first: Option<GetResult>,
    restarts: &mut Restarts,
    resumable: &mut bool,
) -> Result<Ended> {
    let (job, config, observer, cancel) = (ctx.job, ctx.config, ctx.observer, ctx.cancel);
    let trusted = resume.as_ref().map(|r| trusted_len(r, &ctx.boot));
    let (sink, mut have) = Sink::open(
        job.dir.clone(),
        job.staging.clone(),
        trusted,
        job.md5.is_some(),
    )
    .await?;
    let mut expect: Option<Validators> = None;
    let mut total = None;
    if let Some(r) = resume.as_ref().filter(|_| have > 0) {
        expect = Some(Validators {
            etag: r.etag.clone(),
            last_modified: r.last_modified.clone(),
        });
        total = r.total;
    }
    let mut state = ResumeState {
        staging_name: job.staging.clone(),
        boot_id: ctx.boot.clone(),
        ..ResumeState::default()
    };
    let mut backoff = Backoff::new(&config.retry);
    // What ended the last body early: the code a source that cannot resume fails with.
    let mut last_failure: Option<SourceError> = None;
    let idle = config.http.read_idle_timeout();
    observer.progress(have, total);

    // Loop until the body has delivered every byte (or the staging file already holds them).
    while total != Some(have) || expect.is_none() {
        // What was asked, to check a range answer against; the probe checked its own.
        let mut asked = None;
        let response = match first.take() {
            Some(result) => Ok(result),
            None => {
                let options = GetOptions {
                    offset: have,
                    expect: expect.clone(),
                    ..GetOptions::default()
                };
                asked = Some(options.clone());
                tokio::select! {
                    _ = cancel.cancelled() => return Err(stop(&sink).await),
                    r = job.source.get(options) => r,
                }
            }
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
                *resumable = false;
                let why = Some(NoResume::NoValidator);
                restarts
                    .restart(
                        &sink,
                        &mut have,
                        &mut total,
                        why,
                        last_failure.as_ref(),
                        &*job.source,
                    )
                    .await?;
                expect = None;
                continue;
            }
            Err(e) => {
                if !wait_before_retry(ctx, e, &mut backoff).await? {
                    return Err(stop(&sink).await);
                }
                continue;
            }
        };
        let same_validators = expect
            .as_ref()
            .is_none_or(|v| v.matches(&result.meta.validators));
        if let Some(asked) = &asked {
            // Every answer to a request sent is checked; its size only against the same
            // version (another version is a change, handled below).
            let known = if same_validators { total } else { None };
            check_range(asked, &result, known, &*job.source)?;
            if same_validators {
                ctx.saw(&result.meta);
            }
        }
        let same_version = same_validators && (expect.is_none() || result.meta.size == total);
        // Another version also when nothing is written yet: the version expected (and its
        // size) must not outlive it, or its bytes would be taken for the old one's.
        if (have > 0 && result.offset != have) || !same_version {
            // Never splice two versions: start over, reusing this body if it is the whole object.
            // Only another version counts as a change; a source that cannot resume is bounded
            // on its own.
            let why = if expect.as_ref().is_none_or(Validators::is_empty) {
                Some(NoResume::NoValidator)
            } else if same_version && result.offset == 0 && !result.meta.ranges {
                Some(NoResume::NoRanges)
            } else {
                None
            };
            *resumable &= why.is_none();
            restarts
                .restart(
                    &sink,
                    &mut have,
                    &mut total,
                    why,
                    last_failure.as_ref(),
                    &*job.source,
                )
                .await?;
            expect = None;
            if result.offset != 0 {
                continue;
            }
        }
        if result.offset != have {
            // Unreachable by the rules above; a last guard against writing a body anywhere
            // but where the staging file ends.
            return Err(Error::new(
                Code::SourceBadContentRange,
                format!(
                    "{} sent data from byte {} where byte {have} was needed; nothing of it was written",
                    job.source.describe(),
                    result.offset
                ),
            ));
        }
        if expect.is_none() {
            *resumable &= !result.meta.validators.is_empty();
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
        // `None`: every byte is here.
        let failure = loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(stop(&sink).await),
                r = tokio::time::timeout(idle, result.body.next_chunk()) => r,
            };
            match next {
                Err(_) => {
                    break Some(SourceError::transient(
                        Code::NetworkTimeout,
                        format!(
                            "{} sent no data for {} s",
                            job.source.describe(),
                            idle.as_secs()
                        ),
                    ))
                }
                Ok(Err(e)) => break Some(e),
                Ok(Ok(None)) => {
                    if total.is_none() {
                        // No length announced: the end of the body is the end of the object.
                        total = Some(have);
                    }
                    if total == Some(have) {
                        break None;
                    }
                    break Some(SourceError::transient(
                        Code::IntegritySizeMismatch,
                        format!(
                            "{} ended the body after {have} of {} bytes",
                            job.source.describe(),
                            total.unwrap_or_default()
                        ),
                    ));
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
                    ctx.pace.add(n);
                    have += n;
                    since_checkpoint += n;
                    backoff.progressed();
                    observer.progress(have, total);
                    if since_checkpoint >= config.checkpoint_bytes {
                        since_checkpoint = 0;
                        state.durable_bytes = sink.sync().await?;
                        observer.checkpoint(state.clone()).await;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(stop(&sink).await),
                        _ = job.bandwidth.take(n) => {}
                    }
                }
            }
        };
        let Some(failure) = failure else { break };
        if total == Some(have) {
            // Every byte arrived before the failure.
            break;
        }
        if expect.as_ref().is_none_or(Validators::is_empty) {
            // Nothing to resume with: the retry starts over, and that is bounded.
            let why = NoResume::NoValidator;
            restarts.refetch(have, total, Some(&failure), why, &*job.source)?;
        }
        last_failure = Some(failure.clone());
        if !wait_before_retry(ctx, failure, &mut backoff).await? {
            return Err(stop(&sink).await);
        }
    }

    let written = sink.finish().await?;
    Ok(Ended {
        written: Some(written),
        retries: backoff.retries(),
        part_refused: None,
    })
}

/// Cancellation: make what was written durable (a shutdown resumes from it) and say so.
async fn stop(sink: &Sink) -> Error {
    let _ = sink.sync().await;
    cancelled()
}

impl Restarts {
    /// Counts a restart from zero (a change when `why` is `None`), then truncates the staging
    /// file; the caller forgets the version it expected. A failure without a validator is
    /// counted as it happens instead.
    async fn restart(
        &mut self,
        sink: &Sink,
        have: &mut u64,
        total: &mut Option<u64>,
        why: Option<NoResume>,
        failure: Option<&SourceError>,
        source: &dyn Source,
    ) -> Result<()> {
        match why {
            None => self.changed(source)?,
            // Counted when the failure happened: no request is spent to learn the obvious.
            Some(NoResume::NoValidator) => {}
            Some(why) => self.refetch(*have, *total, failure, why, source)?,
        }
        tracing::info!(source = %source.describe(), "source changed or cannot resume: starting over");
        sink.truncate().await?;
        *have = 0;
        *total = None;
        Ok(())
    }
}
