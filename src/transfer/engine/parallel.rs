//! Parallel ranged transfers: a large object is cut into parts, up to `connections` parts are
//! fetched at once, each written where it belongs in the preallocated staging file
//! ([`PartSink`]), each retried on its own from the byte where it stopped.
//!
//! The transfer starts on one connection reading the whole object, part after part, and
//! opens more only while they bring more speed ([`Ramp`]): a fast source on a short path
//! costs one request and one connection's buffers, as with curl, while a throttled one gets
//! every connection within a quarter of a second.
//!
//! Every part states the version of the first answer (If-Range) and every answer is checked
//! against it: a changed object is never spliced, the transfer starts over from zero. Bytes
//! waiting between the network and the disk are bounded for the whole transfer by one
//! semaphore, whatever the number of connections. Checkpoints record the durable bytes of each
//! part, so a restarted daemon fetches only what is missing.

use super::ramp::Ramp;
use super::{cancelled, check_range, Ctx, Ended, Observer};
use crate::config::TransferConfig;
use crate::error::{Code, Error, Result};
use crate::task::record::ResumeState;
use crate::transfer::sink::{Layout, PartSink};
use crate::transfer::source::retry::Backoff;
use crate::transfer::source::{GetOptions, GetResult, SourceError, Validators};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Bytes received but not yet written, across all connections of one transfer; a connection
/// that would pass it waits (TCP then slows its sender). Besides this, hyper keeps its own
/// read buffers per connection (up to ~400 KiB each, not configurable through reqwest). On
/// the throttled 256 MiB bench with 8 connections the peak RSS was 16.4 MiB with 1 MiB here
/// and no lower with 512 KiB (17.8 MiB, noise); 2 MiB cost ~1.5 MiB more at the same speed;
/// copying chunks out of hyper's buffers made it worse.
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

/// How often a transfer measures its speed while [`Ramp`] decides its connections.
const MEASURE_EVERY: Duration = Duration::from_millis(250);

/// Why a part gave up, and with it the transfer.
enum Abort {
    /// The object is not the version the transfer started with: start over.
    Changed,
    /// A part was answered with the whole object of the same version: start over, bounded
    /// as a source that cannot resume, not as a change.
    PartRefused,
    Failed(Error),
}

/// A body being read and the object byte it has reached. A connection goes on reading it into
/// the next part while that part is still free, instead of asking again.
struct Reading {
    result: GetResult,
    at: u64,
    /// Where the body ends: the end of the range that was asked for.
    reaches: u64,
    /// What the last chunk held past the end of the previous part.
    pending: Option<Bytes>,
}

/// State shared by the workers of one transfer.
struct Shared {
    layout: Layout,
    validators: Validators,
    /// Parts no worker has taken yet, in order.
    queue: Mutex<VecDeque<usize>>,
    /// Bytes of each part already written when the run started.
    kept: Vec<u64>,
    /// Connections the transfer may use now; with more than one, a request asks for one part.
    allowed: AtomicUsize,
    /// Connections to close (each at the end of its part) since fewer are allowed.
    leaving: AtomicUsize,
    done: AtomicU64,
    since_checkpoint: AtomicU64,
    checkpoint_due: Notify,
    budget: Arc<Semaphore>,
    retries: AtomicU32,
}

impl Shared {
    /// The first byte of `part` not yet in the staging file.
    fn missing_from(&self, part: usize) -> u64 {
        self.layout.range(part).0 + self.kept[part]
    }

    /// The part `reading` has reached when it is still free, else the first free part.
    fn next_part(&self, reading: Option<&Reading>) -> Option<usize> {
        let mut queue = self.queue.lock().expect("part queue");
        let reached =
            reading.and_then(|r| queue.iter().position(|&p| self.missing_from(p) == r.at));
        match reached {
            Some(i) => queue.remove(i),
            None => queue.pop_front(),
        }
    }

    /// How far one request for `part` can be read: with several connections, to the end of
    /// the part; with one, on through the following parts while they are free and untouched
    /// (the queue is in order).
    fn reach(&self, part: usize) -> u64 {
        let (_, mut end) = self.layout.range(part);
        if self.allowed.load(Ordering::Relaxed) > 1 {
            return end;
        }
        let queue = self.queue.lock().expect("part queue");
        let mut next = part + 1;
        if let Ok(at) = queue.binary_search(&next) {
            for &free in queue.range(at..) {
                if free != next || self.kept[next] > 0 {
                    break;
                }
                end = self.layout.range(next).1;
                next += 1;
            }
        }
        end
    }

    fn free_parts(&self) -> usize {
        self.queue.lock().expect("part queue").len()
    }

    /// Whether the calling connection should close, as one fewer is allowed.
    fn leave(&self) -> bool {
        self.leaving
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The speed of a transfer between two measures.
struct Meter {
    done: u64,
    since: tokio::time::Instant,
}

impl Meter {
    fn new(done: u64) -> Meter {
        Meter {
            done,
            since: tokio::time::Instant::now(),
        }
    }

    /// Bytes per second since the last call.
    fn rate(&mut self, done: u64) -> f64 {
        let now = tokio::time::Instant::now();
        let secs = now.duration_since(self.since).as_secs_f64();
        let bytes = done.saturating_sub(self.done) as f64;
        (self.done, self.since) = (done, now);
        bytes / secs.max(1e-3)
    }
}

type Worker<'a> = Pin<Box<dyn Future<Output = Result<(), Abort>> + Send + 'a>>;

enum Event {
    Cancelled,
    Checkpoint,
    Measure,
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
        ..ResumeState::default()
    };
    ctx.observer.checkpoint(state.clone()).await;
    let queue: VecDeque<usize> = (0..layout.count())
        .filter(|i| kept[*i] < layout.len(*i))
        .collect();
    let transfer = &ctx.config.transfer;
    let connections = transfer.connections.max(1);
    let shared = Shared {
        layout,
        validators: plan.validators,
        kept,
        allowed: AtomicUsize::new(1),
        leaving: AtomicUsize::new(0),
        done: AtomicU64::new(done),
        since_checkpoint: AtomicU64::new(0),
        checkpoint_due: Notify::new(),
        budget: Arc::new(Semaphore::new(IN_FLIGHT_BYTES as usize)),
        retries: AtomicU32::new(0),
        queue: Mutex::new(queue),
    };
    // The probe's body covers the whole object from byte 0: the first connection reads on.
    let first = first.map(|result| Reading {
        result,
        at: 0,
        reaches: layout.total,
        pending: None,
    });
    let mut workers: Vec<Worker<'_>> = vec![Box::pin(worker(ctx, &shared, &sink, first))];
    let mut ramp = Ramp::new(connections, transfer.split_below_mib_s);
    resize(ctx, &shared, &sink, &mut workers, ramp.connections());
    let mut meter = Meter::new(done);
    let mut measure =
        tokio::time::interval_at(tokio::time::Instant::now() + MEASURE_EVERY, MEASURE_EVERY);
    let outcome = loop {
        let measuring = !ramp.settled();
        let event = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Event::Cancelled,
            _ = shared.checkpoint_due.notified() => Event::Checkpoint,
            _ = measure.tick(), if measuring => Event::Measure,
            r = next_done(&mut workers) => Event::Worker(r),
        };
        match event {
            Event::Worker(None) => break Ok(()),
            Event::Worker(Some(Ok(()))) => {}
            Event::Worker(Some(Err(abort))) => break Err(abort),
            Event::Cancelled => break Err(Abort::Failed(cancelled())),
            Event::Measure => {
                let rate = meter.rate(shared.done.load(Ordering::Relaxed));
                if let Some(n) = ramp.measured(rate) {
                    resize(ctx, &shared, &sink, &mut workers, n);
                }
            }
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
            part_refused: None,
        }),
        Err(abort @ (Abort::Changed | Abort::PartRefused)) => {
            tracing::info!(source = %job.source.describe(), "source changed or refused a part during a parallel transfer: starting over");
            sink.close().await;
            let refused = matches!(abort, Abort::PartRefused);
            Ok(Ended {
                written: None,
                retries,
                part_refused: refused.then(|| shared.done.load(Ordering::Relaxed)),
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

/// Sets the connections to `n`: opens the missing ones (as many as there are free parts for)
/// or asks the extra ones to close after their part.
fn resize<'a, O: Observer>(
    ctx: &'a Ctx<'_, O>,
    shared: &'a Shared,
    sink: &'a PartSink,
    workers: &mut Vec<Worker<'a>>,
    n: usize,
) {
    shared.allowed.store(n, Ordering::Relaxed);
    let open = workers.len();
    if n < open {
        shared.leaving.store(open - n, Ordering::Relaxed);
        tracing::info!(
            connections = n,
            "more connections brought no speed: closing some"
        );
        return;
    }
    shared.leaving.store(0, Ordering::Relaxed);
    let more = (n - open).min(shared.free_parts());
    if more > 0 {
        tracing::info!(connections = open + more, "opening more connections");
    }
    for _ in 0..more {
        workers.push(Box::pin(worker(ctx, shared, sink, None)));
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

/// One connection: takes the next part until none is left, reading on into the following
/// part while its body reaches it.
async fn worker<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
    mut reading: Option<Reading>,
) -> Result<(), Abort> {
    while !shared.leave() {
        let Some(part) = shared.next_part(reading.as_ref()) else {
            break;
        };
        if reading
            .as_ref()
            .is_some_and(|r| r.at != shared.missing_from(part))
        {
            // Another connection has the part this body reaches: stop reading it.
            reading = None;
        }
        reading = fetch_part(ctx, shared, sink, part, reading).await?;
    }
    Ok(())
}

/// Fetches one part, resuming after failures from the byte where it stopped. Returns the
/// body when it goes on past the part.
async fn fetch_part<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
    part: usize,
    mut reading: Option<Reading>,
) -> Result<Option<Reading>, Abort> {
    let (_, end) = shared.layout.range(part);
    let mut at = shared.missing_from(part);
    let mut backoff = Backoff::new(&ctx.config.retry);
    while at < end {
        let opened = match reading.take() {
            Some(r) => Ok(r),
            None => request(ctx, shared, part, at).await?,
        };
        let failure = match opened {
            Err(e) => e,
            Ok(mut current) => match stream(ctx, shared, sink, part, &mut current, end).await? {
                None => return Ok((current.at < current.reaches).then_some(current)),
                Some(failure) => {
                    if current.at > at {
                        backoff.progressed();
                    }
                    at = current.at;
                    failure
                }
            },
        };
        let Some(delay) = backoff.next_delay(&failure) else {
            return Err(Abort::Failed(backoff.give_up(failure).into()));
        };
        tracing::warn!(part, code = %failure.code, error = %failure.message, delay_ms = delay.as_millis() as u64, "retrying part");
        shared.retries.fetch_add(1, Ordering::Relaxed);
        ctx.observer.retrying(&failure, delay);
        tokio::time::sleep(delay).await;
    }
    Ok(None)
}

/// Asks for the object from `at` in `part`, of the transfer's version, as far as
/// [`Shared::reach`] allows.
async fn request<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    part: usize,
    at: u64,
) -> Result<Result<Reading, SourceError>, Abort> {
    let total = shared.layout.total;
    let reaches = shared.reach(part);
    let options = GetOptions {
        offset: at,
        end: Some(reaches),
        expect: Some(shared.validators.clone()),
        range_from_start: false,
    };
    let result = match ctx.job.source.get(options.clone()).await {
        // The object no longer reaches this far: it changed.
        Err(e) if e.code == Code::SourceRangeNotSatisfiable => return Err(Abort::Changed),
        Err(e) => return Ok(Err(e)),
        Ok(result) => result,
    };
    let meta = &result.meta;
    if !shared.validators.matches(&meta.validators) {
        return Err(Abort::Changed);
    }
    if !meta.ranges {
        // The whole object, same version and size: ranges refused, nothing changed.
        let same_size = meta.size == Some(total);
        return Err(if same_size {
            Abort::PartRefused
        } else {
            Abort::Changed
        });
    }
    // The same version: a range other than the one asked for is a broken server, not a change.
    check_range(&options, &result, Some(total), &*ctx.job.source).map_err(Abort::Failed)?;
    ctx.saw(meta);
    Ok(Ok(Reading {
        result,
        at,
        reaches,
        pending: None,
    }))
}

/// Writes the body into the part until `end`; `None` once the part is complete, else the
/// failure to retry.
async fn stream<O: Observer>(
    ctx: &Ctx<'_, O>,
    shared: &Shared,
    sink: &PartSink,
    part: usize,
    reading: &mut Reading,
    end: u64,
) -> Result<Option<SourceError>, Abort> {
    let idle = ctx.config.http.read_idle_timeout();
    let total = shared.layout.total;
    // Alone, a connection is the whole transfer, which the pace watchdog measures.
    let connections = shared.allowed.load(Ordering::Relaxed);
    let mut pace = (connections > 1)
        .then(|| ctx.pace.part_pace(connections))
        .flatten();
    while reading.at < end {
        let chunk = match reading.pending.take() {
            Some(chunk) => chunk,
            None => match tokio::time::timeout(idle, reading.result.body.next_chunk()).await {
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
                            "{} ended part {part} at byte {} of {start}-{end}",
                            ctx.job.source.describe(),
                            reading.at,
                            start = shared.layout.range(part).0,
                        ),
                    )))
                }
                Ok(Ok(Some(chunk))) => chunk,
            },
        };
        // Bytes past the part belong to the next one (or, past the range, to nobody).
        let fits = chunk.len().min((end - reading.at) as usize);
        if fits < chunk.len() && end < reading.reaches {
            reading.pending = Some(chunk.slice(fits..));
        }
        let chunk = chunk.slice(..fits);
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
        sink.write(part, reading.at, chunk, permit)
            .map_err(Abort::Failed)?;
        reading.at += n;
        ctx.pace.add(n);
        let done = shared.done.fetch_add(n, Ordering::Relaxed) + n;
        ctx.observer.progress(done, Some(total));
        let since = shared.since_checkpoint.fetch_add(n, Ordering::Relaxed) + n;
        if since >= ctx.config.checkpoint_bytes {
            shared.since_checkpoint.store(0, Ordering::Relaxed);
            shared.checkpoint_due.notify_one();
        }
        ctx.job.bandwidth.take(n).await;
        if pace
            .as_mut()
            .is_some_and(|p| p.too_slow(n, tokio::time::Instant::now()))
        {
            // A stuck connection while the others flow: drop it and ask again from here.
            return Ok(Some(SourceError::transient(
                Code::NetworkTooSlow,
                format!(
                    "{} sent part {part} slower than its share of transfer.low_speed_limit_bytes_s; asking again from byte {}",
                    ctx.job.source.describe(),
                    reading.at
                ),
            )));
        }
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
        assert_eq!((plan.layout.part_size, plan.layout.count()), (8 << 20, 13));
        let huge = Plan::new(MAX_PARTS * (16 << 20), &config, validators());
        assert_eq!(huge.layout.part_size, 16 << 20);
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
