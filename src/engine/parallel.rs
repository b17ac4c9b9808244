//! Parallel ranged transfers: a large object is cut into parts, up to `connections` parts are
//! fetched at once, each written where it belongs in the preallocated staging file
//! ([`PartSink`]), each retried on its own from the byte where it stopped.
//!
//! Every part states the version of the first answer (If-Range) and every answer is checked
//! against it: a changed object is never spliced, the transfer starts over from zero. Bytes
//! waiting between the network and the disk are bounded for the whole transfer by one
//! semaphore, whatever the number of connections. Checkpoints record the durable bytes of each
//! part, so a restarted daemon fetches only what is missing.

use super::{cancelled, Ctx, Ended, Observer};
use crate::config::TransferConfig;
use crate::error::{Code, Error, Result};
use crate::sink::{Layout, PartSink};
use crate::source::retry::Backoff;
use crate::source::{GetOptions, GetResult, SourceError, Validators};
use crate::task::ResumeState;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::{Notify, Semaphore};

/// Bytes received but not yet written, across all connections of one transfer; a connection
/// that would pass it waits (TCP then slows its sender). Besides this, hyper keeps its own
/// read buffers per connection (up to ~400 KiB each, not configurable through reqwest): on
/// loopback, 256 MiB with 8 connections peaked at ~20 MiB RSS with 1 MiB here, ~21.5 MiB with
/// 2 MiB (same speed), ~12.5 MiB as one stream. Copying chunks out of hyper's buffers made it
/// worse (22-23 MiB).
const IN_FLIGHT_BYTES: u64 = 1 << 20;

/// Parts per object at most; larger objects get larger parts (bounds the journal record and
/// the per-part state).
const MAX_PARTS: u64 = 4096;

/// What a parallel transfer fetches: the object's parts and the version they must all be of.
pub struct Plan {
    layout: Layout,
    validators: Validators,
    /// Bytes of each part already in the staging file (from the journal).
    kept: Option<Vec<u64>>,
}

impl Plan {
    pub fn new(total: u64, config: &TransferConfig, validators: Validators) -> Plan {
        let part_size = config.part_size().max(total.div_ceil(MAX_PARTS));
        Plan {
            layout: Layout { total, part_size },
            validators,
            kept: None,
        }
    }

    pub fn part_size(&self) -> u64 {
        self.layout.part_size
    }

    /// The plan of an interrupted parallel transfer; `None` when the record is unusable.
    pub fn resumed(state: &ResumeState) -> Option<Plan> {
        let validators = Validators {
            etag: state.etag.clone(),
            last_modified: state.last_modified.clone(),
        };
        let layout = Layout {
            total: state.total?,
            part_size: state.part_size,
        };
        if validators.is_empty() || layout.count() != state.parts.len() {
            return None;
        }
        Some(Plan {
            layout,
            validators,
            kept: Some(state.parts.clone()),
        })
    }
}

/// Why a part gave up, and with it the transfer.
enum Abort {
    /// The object is not the version the transfer started with: start over.
    Changed,
    Failed(Error),
}

/// State shared by the workers of one transfer.
struct Shared {
    layout: Layout,
    validators: Validators,
    /// Parts no worker has taken yet, in order.
    queue: Mutex<VecDeque<usize>>,
    /// Bytes of each part already written when the run started.
    kept: Vec<u64>,
    /// The probe's body: the beginning of part 0.
    first: Mutex<Option<GetResult>>,
    done: AtomicU64,
    since_checkpoint: AtomicU64,
    checkpoint_due: Notify,
    budget: Arc<Semaphore>,
    retries: AtomicU32,
}

type Worker<'a> = Pin<Box<dyn Future<Output = Result<(), Abort>> + Send + 'a>>;

enum Event {
    Cancelled,
    Checkpoint,
    Worker(Option<Result<(), Abort>>),
}

pub(super) async fn run<O: Observer>(
    ctx: &Ctx<'_, O>,
    plan: Plan,
    first: Option<GetResult>,
) -> Result<Ended> {
    let job = ctx.job;
    let layout = plan.layout;
    let (sink, kept) = PartSink::open(
        job.dir.clone(),
        job.staging.clone(),
        layout,
        plan.kept,
        job.md5.is_some(),
    )
    .await?;
    let done: u64 = kept.iter().sum();
    tracing::info!(
        source = %job.source.describe(),
        bytes = layout.total,
        parts = layout.count(),
        part_size = layout.part_size,
        kept = done,
        "parallel transfer"
    );
    ctx.observer.progress(done, Some(layout.total));
    let mut state = ResumeState {
        staging_name: job.staging.clone(),
        etag: plan.validators.etag.clone(),
        last_modified: plan.validators.last_modified.clone(),
        total: Some(layout.total),
        durable_bytes: layout.prefix(&kept),
        // Empty: the staging file has holes, its length proves nothing (see ResumeState).
        boot_id: String::new(),
        part_size: layout.part_size,
        parts: kept.clone(),
        folder_done: Vec::new(),
    };
    ctx.observer.checkpoint(state.clone()).await;
    let queue: VecDeque<usize> = (0..layout.count())
        .filter(|i| kept[*i] < layout.len(*i))
        .collect();
    let shared = Shared {
        layout,
        validators: plan.validators,
        kept,
        first: Mutex::new(first),
        done: AtomicU64::new(done),
        since_checkpoint: AtomicU64::new(0),
        checkpoint_due: Notify::new(),
        budget: Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize)),
        retries: AtomicU32::new(0),
        queue: Mutex::new(queue),
    };
    let connections = ctx.config.transfer.connections.max(1);
    let count = connections.min(shared.queue.lock().expect("part queue").len());
    let mut workers: Vec<Worker<'_>> = (0..count)
        .map(|_| Box::pin(worker(ctx, &shared, &sink)) as Worker<'_>)
        .collect();
    let outcome = loop {
        let event = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Event::Cancelled,
            _ = shared.checkpoint_due.notified() => Event::Checkpoint,
            r = next_done(&mut workers) => Event::Worker(r),
        };
        match event {
            Event::Worker(None) => break Ok(()),
            Event::Worker(Some(Ok(()))) => {}
            Event::Worker(Some(Err(abort))) => break Err(abort),
            Event::Cancelled => break Err(Abort::Failed(cancelled())),
            Event::Checkpoint => {
                if let Err(e) = checkpoint(ctx, &sink, &mut state).await {
                    break Err(Abort::Failed(e));
                }
            }
        }
    };
    drop(workers);
    let retries = shared.retries.load(Ordering::Relaxed);
    match outcome {
        Ok(()) => Ok(Ended {
            written: Some(sink.finish().await?),
            retries,
        }),
        Err(Abort::Changed) => {
            tracing::info!(source = %job.source.describe(), "source changed during a parallel transfer: starting over");
            sink.close().await;
            Ok(Ended {
                written: None,
                retries,
            })
        }
        Err(Abort::Failed(e)) => {
            // Keep what is durable so a shutdown or a re-submitted task resumes from it.
            let _ = checkpoint(ctx, &sink, &mut state).await;
            sink.close().await;
            Err(e)
        }
    }
}

/// Makes the written parts durable, then records them.
async fn checkpoint<O: Observer>(
    ctx: &Ctx<'_, O>,
    sink: &PartSink,
    state: &mut ResumeState,
) -> Result<()> {
    let parts = sink.sync().await?;
    if let Some(total) = state.total {
        state.durable_bytes = Layout {
            total,
            part_size: state.part_size,
        }
        .prefix(&parts);
    }
    state.parts = parts;
    ctx.observer.checkpoint(state.clone()).await;
    Ok(())
}

/// Polls every worker; resolves with the outcome of the first to finish (which leaves the
/// list), or `None` when none is left.
async fn next_done(workers: &mut Vec<Worker<'_>>) -> Option<Result<(), Abort>> {
    std::future::poll_fn(|cx| {
        if workers.is_empty() {
            return Poll::Ready(None);
        }
        for i in 0..workers.len() {
            if let Poll::Ready(outcome) = workers[i].as_mut().poll(cx) {
                drop(workers.swap_remove(i));
                return Poll::Ready(Some(outcome));
            }
        }
        Poll::Pending
    })
    .await
}

/// One connection: takes the next part until none is left.
async fn worker<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
) -> Result<(), Abort> {
    loop {
        let next = shared.queue.lock().expect("part queue").pop_front();
        let Some(part) = next else { return Ok(()) };
        fetch_part(ctx, shared, sink, part).await?;
    }
}

/// Fetches one part, resuming after failures from the byte where it stopped.
async fn fetch_part<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
    part: usize,
) -> Result<(), Abort> {
    let source = &ctx.job.source;
    let (start, end) = shared.layout.range(part);
    let mut at = start + shared.kept[part];
    let mut first = match part {
        0 => shared.first.lock().expect("first body").take(),
        _ => None,
    };
    let mut backoff = Backoff::new(&ctx.config.retry);
    while at < end {
        let response = match first.take() {
            Some(r) => Ok(r),
            None => {
                let options = GetOptions {
                    offset: at,
                    end: Some(end),
                    expect: Some(shared.validators.clone()),
                };
                source.get(options).await
            }
        };
        let failure = match response {
            // The object no longer reaches this far: it changed.
            Err(e) if e.code == Code::SourceRangeNotSatisfiable => return Err(Abort::Changed),
            Err(e) => e,
            Ok(mut result) => {
                let before = at;
                let meta = &result.meta;
                if !meta.ranges
                    || result.offset != at
                    || meta.size != Some(shared.layout.total)
                    || !shared.validators.matches(&meta.validators)
                {
                    return Err(Abort::Changed);
                }
                match stream(ctx, shared, sink, part, &mut result, &mut at, end).await? {
                    None => return Ok(()),
                    Some(failure) => {
                        if at > before {
                            backoff.progressed();
                        }
                        failure
                    }
                }
            }
        };
        let Some(delay) = backoff.next_delay(&failure) else {
            return Err(Abort::Failed(backoff.give_up(failure).into()));
        };
        tracing::warn!(part, code = %failure.code, error = %failure.message, delay_ms = delay.as_millis() as u64, "retrying part");
        shared.retries.fetch_add(1, Ordering::Relaxed);
        ctx.observer.retrying(&failure, delay);
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

/// Writes the body into the part until `end`; `None` once the part is complete, else the
/// failure to retry.
async fn stream<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
    part: usize,
    result: &mut GetResult,
    at: &mut u64,
    end: u64,
) -> Result<Option<SourceError>, Abort> {
    let idle = ctx.config.http.read_idle_timeout();
    let total = shared.layout.total;
    while *at < end {
        let chunk = match tokio::time::timeout(idle, result.body.next_chunk()).await {
            Err(_) => {
                return Ok(Some(SourceError::transient(
                    Code::NetworkTimeout,
                    format!(
                        "{} sent no data for {} s",
                        ctx.job.source.describe(),
                        idle.as_secs()
                    ),
                )))
            }
            Ok(Err(e)) => return Ok(Some(e)),
            Ok(Ok(None)) => {
                return Ok(Some(SourceError::transient(
                    Code::IntegritySizeMismatch,
                    format!(
                        "{} ended part {part} at byte {at} of {start}-{end}",
                        ctx.job.source.describe(),
                        start = shared.layout.range(part).0,
                    ),
                )))
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        // A source may send past the part (it ignored the end): keep only the part.
        let chunk = chunk.slice(..chunk.len().min((end - *at) as usize));
        let n = chunk.len() as u64;
        if n == 0 {
            continue;
        }
        let permits = n.min(IN_FLIGHT_BYTES) as u32;
        let permit = shared
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Abort::Failed(Error::new(Code::Internal, "in-flight budget closed")))?;
        sink.write(part, *at, chunk, permit)
            .map_err(Abort::Failed)?;
        *at += n;
        let done = shared.done.fetch_add(n, Ordering::Relaxed) + n;
        ctx.observer.progress(done, Some(total));
        let since = shared.since_checkpoint.fetch_add(n, Ordering::Relaxed) + n;
        if since >= ctx.config.checkpoint_bytes {
            shared.since_checkpoint.store(0, Ordering::Relaxed);
            shared.checkpoint_due.notify_one();
        }
        ctx.job.bandwidth.take(n).await;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validators() -> Validators {
        Validators {
            etag: Some("\"e\"".into()),
            last_modified: None,
        }
    }

    #[test]
    fn huge_objects_get_larger_parts_and_plans_resume_only_when_consistent() {
        let config = TransferConfig::default();
        let plan = Plan::new(100 << 20, &config, validators());
        assert_eq!((plan.part_size(), plan.layout.count()), (8 << 20, 13));
        let huge = Plan::new(MAX_PARTS * (16 << 20), &config, validators());
        assert_eq!(huge.part_size(), 16 << 20);
        assert_eq!(huge.layout.count() as u64, MAX_PARTS);
        let mut state = ResumeState {
            etag: Some("\"e\"".into()),
            total: Some(100 << 20),
            part_size: 8 << 20,
            parts: vec![0; 13],
            ..ResumeState::default()
        };
        let resumed = Plan::resumed(&state).unwrap();
        assert_eq!(resumed.kept.as_deref(), Some(&[0; 13][..]));
        state.parts.pop();
        assert!(
            Plan::resumed(&state).is_none(),
            "parts do not match the size"
        );
        state.parts.push(0);
        state.etag = None;
        assert!(Plan::resumed(&state).is_none(), "no validator, no resume");
    }
}
