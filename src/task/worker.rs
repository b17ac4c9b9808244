//! Running one task for the manager: the pipeline with an observer that turns progress,
//! checkpoints and the start of AutoInstall into state changes, then the outcome saved
//! (retrying while the journal refuses it) before it is shown.

use super::landed_log::{FolderOrigin, LandedLog};
use super::manager::{off_thread, Inner};
use super::record::{DoneObject, ResumeState, TaskResult, TaskView};
use super::state::Settlement;
use crate::error::{Code, Error, Result};
use crate::pipeline::{self, Run};
use crate::task::payload::ValidTask;
use crate::transfer::engine;
use crate::transfer::source::SourceError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// First and longest pause between attempts to save a task's outcome that the journal refused.
const JOURNAL_RETRY_FIRST: Duration = Duration::from_millis(200);
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(30);
/// Progress is announced to subscribers when its whole percent changes, or after this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The note a task shows while its outcome waits for the journal.
const UNSAVED_NOTE: &str = "the outcome of this task could not be saved";

impl Inner {
    pub(super) async fn work(
        self: Arc<Self>,
        id: String,
        plan: Result<Arc<ValidTask>>,
        resume: Option<ResumeState>,
        done_before: u64,
        cancel: CancellationToken,
    ) {
        self.save(&id).await;
        if let Ok(view) = self.table().view(&id) {
            self.emit(view);
        }
        tracing::info!(task = %id, "transfer started");
        let services = self.services();
        let (outcome, landed) = match &plan {
            Ok(task) => {
                let observer = TaskObserver {
                    inner: self.clone(),
                    id: id.clone(),
                    last: AtomicU64::new(done_before),
                    announced: Mutex::new((u8::MAX, Instant::now())),
                    landed: Mutex::new(Vec::new()),
                    log: Arc::new(Mutex::new(None)),
                };
                let run = Run {
                    task_id: &id,
                    resume,
                    cancel: cancel.clone(),
                };
                let outcome = pipeline::run(&services, task, run, &observer).await;
                let landed = std::mem::take(&mut *super::manager::lock(&observer.landed));
                (outcome, landed)
            }
            Err(e) => (Err(e.clone()), Vec::new()),
        };
        self.commit_outcome(&id, plan.ok(), outcome, landed).await;
        self.prune().await;
        self.wake.notify_one();
    }

    /// `persist` off the async thread; a failure is logged, the task carries on.
    async fn save(self: &Arc<Self>, id: &str) {
        let inner = self.clone();
        let owned = id.to_string();
        if let Err(e) = off_thread("saving", move || inner.persist(&owned)).await {
            tracing::error!(task = %id, error = %e, "cannot save task record");
        }
    }

    /// Saves the task's current record (nothing once it has been pruned).
    fn persist(&self, id: &str) -> Result<()> {
        let journal = self.journal();
        let record = self.table().get(id).map(|s| s.record.clone());
        record.map_or(Ok(()), |r| journal.save(&r))
    }

    /// The transfer is done and AutoInstall begins: the task shows INSTALLING with its files,
    /// and gives its transfer slot back so queued transfers start while it waits for pm.
    async fn installing(self: &Arc<Self>, id: &str, landed: &TaskResult) {
        let view = {
            let mut table = self.table();
            let Some(slot) = table.get_mut(id) else {
                return;
            };
            if slot
                .record
                .update(|s, _| s.install(landed.clone()))
                .is_err()
            {
                return;
            }
            if let Some(run) = slot.run.as_mut() {
                run.installing = true;
            }
            let view = slot.record.view();
            table.running -= 1;
            view
        };
        self.save(id).await;
        self.emit(view);
        self.wake.notify_one();
    }

    /// Saves a task's outcome and only then shows it, retrying with backoff while the journal
    /// refuses the write: the API never reports an outcome the journal does not hold (a
    /// SUCCESS shown but lost would run the task, and its AutoInstall, again after a restart).
    /// Meanwhile the task stays RUNNING (or INSTALLING) with a note saying why. A daemon
    /// stopping gives up: the journal still says RUNNING and the next start resumes the task.
    /// `landed` are the folder objects this run landed (also in its landed log).
    async fn commit_outcome(
        self: &Arc<Self>,
        id: &str,
        plan: Option<Arc<ValidTask>>,
        outcome: Result<TaskResult>,
        landed: Vec<DoneObject>,
    ) {
        let outcome = Arc::new(outcome);
        let landed = Arc::new(landed);
        let mut delay = JOURNAL_RETRY_FIRST;
        loop {
            let (inner, owned, plan, outcome, landed) = (
                self.clone(),
                id.to_string(),
                plan.clone(),
                outcome.clone(),
                landed.clone(),
            );
            let saved = off_thread("finishing the task", move || {
                inner.finish(&owned, plan.as_deref(), &outcome, &landed)
            })
            .await;
            let Err(e) = saved else { return };
            tracing::error!(task = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot save the task's outcome; it stays running until the journal takes it");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(JOURNAL_RETRY_MAX);
        }
    }

    /// Applies the outcome to a copy of the record, saves it, then shows it. The journal lock
    /// is held from before the save until the record in memory is replaced (and the partial
    /// data removed, when the outcome calls for it), so a re-submit of this TaskId waits for
    /// that and never races the cleanup or the write. When the save fails nothing is shown
    /// but a note. The saved record holds the folder objects of `landed`, so the run's
    /// landed log is removed after it (a crash in between: the next load merges it again).
    fn finish(
        &self,
        id: &str,
        plan: Option<&ValidTask>,
        outcome: &Result<TaskResult>,
        landed: &[DoneObject],
    ) -> Result<()> {
        let journal = self.journal();
        let (mut record, by_user, held_slot) = {
            let table = self.table();
            let slot = table.get(id).expect("running tasks stay in the table");
            let run = slot.run.as_ref();
            (
                slot.record.clone(),
                run.is_some_and(|r| r.by_user),
                !run.is_some_and(|r| r.installing),
            )
        };
        // An earlier attempt's note says the outcome is unsaved: not part of the outcome.
        record.notes.retain(|n| !n.starts_with(UNSAVED_NOTE));
        record.update(|s, _| s.remember_landed(landed.to_vec()));
        let Settlement { discard, failure } =
            record.update(|s, now| s.settle(outcome.clone(), by_user, now))?;
        if discard {
            if let Some(plan) = plan {
                self.discard(id, plan);
            }
        }
        if let Err(e) = journal.save(&record) {
            if let Some(slot) = self.table().get_mut(id) {
                let notes = &mut slot.record.notes;
                notes.retain(|n| !n.starts_with(UNSAVED_NOTE));
                notes.push(format!("{UNSAVED_NOTE} to the journal ({e}); it shows as running until the save succeeds (retrying)"));
            }
            return Err(e);
        }
        if let Err(e) = journal.remove_log(id) {
            tracing::warn!(task = %id, error = %e, "cannot remove the landed log; the next start merges it again");
        }
        let view = record.view();
        {
            let mut table = self.table();
            if let Some(slot) = table.get_mut(id) {
                slot.record = record;
                slot.run = None;
            }
            if held_slot {
                table.running -= 1;
            }
            if let Some(code) = &failure {
                *table.failures.entry(code.clone()).or_default() += 1;
            }
        }
        drop(journal);
        log_outcome(&view);
        self.emit(view);
        Ok(())
    }
}

fn log_outcome(view: &TaskView) {
    let id = &view.task_id;
    match (&view.error_code, view.phase.is_finished()) {
        (Some(code), _) => {
            tracing::warn!(task = %id, code = %code, error = view.error_msg.as_deref().unwrap_or(""), "task failed")
        }
        (None, true) => tracing::info!(task = %id, "task succeeded"),
        _ => tracing::info!(task = %id, "task interrupted; it resumes on the next start"),
    }
}

/// Feeds the pipeline's progress into the task record and its checkpoints into the journal.
struct TaskObserver {
    inner: Arc<Inner>,
    id: String,
    last: AtomicU64,
    /// The percent last announced to subscribers, and when.
    announced: Mutex<(u8, Instant)>,
    /// Folder objects landed in this run, in order: merged into the record when it ends.
    landed: Mutex<Vec<DoneObject>>,
    /// This run's landed log, started at its first landed object.
    log: Arc<Mutex<Option<LandedLog>>>,
}

impl TaskObserver {
    /// Whether to announce progress now: its percent moved, or a while passed.
    fn due(&self, percent: u8) -> bool {
        let mut last = super::manager::lock(&self.announced);
        let due = last.0 != percent || last.1.elapsed() >= PROGRESS_EVERY;
        if due {
            *last = (percent, Instant::now());
        }
        due
    }
}

impl engine::Observer for TaskObserver {
    fn progress(&self, done: u64, total: Option<u64>) {
        let before = self.last.swap(done, Ordering::Relaxed);
        self.inner
            .bytes
            .fetch_add(done.saturating_sub(before), Ordering::Relaxed);
        let view = {
            let mut table = self.inner.table();
            let Some(slot) = table.get_mut(&self.id) else {
                return;
            };
            slot.record.state.advance(done, total);
            self.due(slot.record.percent()).then(|| slot.record.view())
        };
        if let Some(view) = view {
            self.inner.emit(view);
        }
    }

    fn checkpoint(&self, resume: ResumeState) -> impl Future<Output = ()> + Send {
        if let Some(slot) = self.inner.table().get_mut(&self.id) {
            slot.record.update(|s, _| s.checkpoint(resume));
        }
        let inner = self.inner.clone();
        let id = self.id.clone();
        async move { inner.save(&id).await }
    }

    fn retrying(&self, _err: &SourceError, _delay: Duration) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// One line in the task's landed log (a constant number of bytes, whatever the size of
    /// the folder). A log that cannot be written only costs a fetch again after a crash:
    /// the run's list in memory still reaches the record when the run ends.
    fn landed(&self, origin: &FolderOrigin, done: DoneObject) -> impl Future<Output = ()> + Send {
        super::manager::lock(&self.landed).push(done.clone());
        let (inner, id, log, origin) = (
            self.inner.clone(),
            self.id.clone(),
            self.log.clone(),
            origin.clone(),
        );
        async move {
            let task = id.clone();
            let appended = off_thread("remembering a landed object", move || {
                let mut log = super::manager::lock(&log);
                if log.as_ref().map(LandedLog::origin) != Some(&origin) {
                    let sync_bytes = inner.services().config.checkpoint_bytes;
                    *log = Some(inner.journal().start_log(&id, origin, sync_bytes)?);
                }
                let log = log.as_mut().expect("started above");
                log.append(&done).map_err(|e| {
                    Error::new(
                        Code::StorageIo,
                        format!("appending to the landed log of {id}: {e}"),
                    )
                })
            })
            .await;
            if let Err(e) = appended {
                tracing::warn!(task = %task, error = %e, "cannot remember a landed object durably; after a crash it is fetched again");
            }
        }
    }
}

impl pipeline::Observer for TaskObserver {
    fn installing(&self, landed: &TaskResult) -> impl Future<Output = ()> + Send {
        let (inner, id, landed) = (self.inner.clone(), self.id.clone(), landed.clone());
        async move { inner.installing(&id, &landed).await }
    }
}
