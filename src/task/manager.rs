//! The task manager: intake, the queue, bounded concurrency, cancel, and the journal.
//!
//! Every state change of a task is saved before it is acknowledged; on start, tasks that were
//! RUNNING when the daemon died go back to the queue and resume from their partial data.

use crate::config::Config;
use crate::error::{Code, Error, Result, TaskCode};
use crate::install;
use crate::pipeline::{self, Services};
use crate::task::journal::Journal;
use crate::task::payload::{self, TaskPayload, ValidTask};
use crate::task::record::{Phase, ResumeState, TaskRecord, TaskResult, TaskView};
use crate::timefmt::unix_millis_now;
use crate::transfer::engine;
use crate::transfer::source::SourceError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long `cancel` waits for a running transfer to stop and clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for running transfers to checkpoint.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// First and longest pause between attempts to save a task's outcome that the journal refused.
const JOURNAL_RETRY_FIRST: Duration = Duration::from_millis(200);
const JOURNAL_RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Submitted {
    pub view: TaskView,
    /// False when the TaskId or ClientToken was already known and nothing new started.
    pub created: bool,
}

pub struct Metrics {
    pub tasks_by_phase: Vec<(Phase, u64)>,
    pub submitted_total: u64,
    pub bytes_total: u64,
    pub failures_by_code: Vec<(TaskCode, u64)>,
    pub retries_total: u64,
}

#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration, HTTP client, bandwidth cap and install lock every run shares;
    /// replaced whole by `reload`.
    services: RwLock<Arc<Services>>,
    /// Lock order: `journal` before `state`. Every journal write happens under this lock and
    /// saves the record as it is at that moment, so disk never goes back to an older state.
    journal: Mutex<Journal>,
    state: Mutex<State>,
    wake: Notify,
    shutdown: CancellationToken,
    stopping: AtomicBool,
    workers: TaskTracker,
    submitted: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Slot>,
    /// ClientToken → TaskId, for idempotent submits without a TaskId.
    tokens: HashMap<String, String>,
    /// Tasks holding a transfer slot (INSTALLING ones have given theirs back).
    running: usize,
    failures: HashMap<TaskCode, u64>,
}

/// A task's outcome ready to be saved and then shown (see `Inner::commit_outcome`).
struct Settled {
    record: TaskRecord,
    /// Remove the partial data: the task will not resume.
    discard: bool,
    failure: Option<TaskCode>,
    /// The task still holds a transfer slot (it did not reach INSTALLING).
    held_slot: bool,
}

struct Slot {
    record: TaskRecord,
    run: Option<Running>,
}

struct Running {
    cancel: CancellationToken,
    /// Set by `cancel`: the worker then discards the partial file instead of keeping it.
    by_user: bool,
    /// Past the transfer: the task gave back its slot in `running` when it started installing.
    installing: bool,
}

/// Runs blocking file I/O from sync code without stalling a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn new_task_id() -> String {
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let suffix: String = (0..16)
        .map(|_| alphabet[fastrand::usize(..alphabet.len())] as char)
        .collect();
    format!("t-{suffix}")
}

/// Two submissions are the same request when they differ at most in credentials (a retry
/// may carry fresh STS tokens) and in whether the TaskId was spelled out.
fn same_request(a: &TaskPayload, b: &TaskPayload) -> bool {
    let strip = |p: &TaskPayload| TaskPayload {
        task_id: None,
        credentials: None,
        ..p.clone()
    };
    strip(a) == strip(b)
}

impl Manager {
    pub async fn start(config: Config) -> Result<Manager> {
        let state_dir = config.state_dir.clone();
        let for_cleanup = config.clone();
        let (journal, records) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&state_dir)
                .map_err(|e| Error::io("creating state folder", &state_dir, &e))?;
            // Unpacked bundles of installs a crash interrupted: they start over.
            install::clean_stale(&for_cleanup);
            Journal::open(&state_dir, &for_cleanup.allowed_roots)
        })
        .await
        .map_err(|e| Error::new(Code::Internal, format!("opening the journal: {e}")))??;
        // Building the client reads the CA folders: keep that file I/O off the async thread.
        let services = {
            let config = Arc::new(config);
            tokio::task::spawn_blocking(move || Services::build(config))
                .await
                .map_err(|e| {
                    Error::new(Code::Internal, format!("building the HTTP client: {e}"))
                })??
        };
        let mut state = State::default();
        for mut record in records {
            if matches!(record.phase, Phase::Running | Phase::Installing) {
                // Interrupted by a crash or a stop: back to the queue, partial data kept.
                record.phase = Phase::Pending;
                record.updated_ms = unix_millis_now();
                journal.save(&record)?;
                tracing::info!(task = %record.task_id, bytes = record.bytes_done, "resuming interrupted task");
            }
            if let Some(token) = &record.payload.client_token {
                // Records load oldest first: a token stays bound to its first task.
                state
                    .tokens
                    .entry(token.clone())
                    .or_insert_with(|| record.task_id.clone());
            }
            state
                .tasks
                .insert(record.task_id.clone(), Slot { record, run: None });
        }
        let inner = Arc::new(Inner {
            services: RwLock::new(Arc::new(services)),
            journal: Mutex::new(journal),
            state: Mutex::new(state),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            workers: TaskTracker::new(),
            submitted: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        blocking(|| inner.prune());
        let scheduler = inner.clone();
        tokio::spawn(async move { scheduler.schedule().await });
        Ok(Manager { inner })
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.config()
    }

    pub fn submit(&self, json: &[u8]) -> Result<Submitted> {
        let config = self.config();
        let task = payload::validate(payload::parse(json)?, &config.allowed_roots)?;
        if task.payload.auto_install && !config.install.enabled {
            return Err(Error::new(
                Code::UnsupportedAutoInstall,
                "AutoInstall is turned off on this device (install.enabled = false in the ferry configuration); send the task with AutoInstall false, or enable it there",
            ));
        }
        self.inner.submit(task)
    }

    pub fn describe(&self, id: &str) -> Result<TaskView> {
        let state = self.inner.lock();
        state
            .tasks
            .get(id)
            .map(|s| s.record.view())
            .ok_or_else(|| not_found(id))
    }

    /// All tasks, newest first.
    pub fn list(&self) -> Vec<TaskView> {
        let state = self.inner.lock();
        let mut records: Vec<&TaskRecord> = state.tasks.values().map(|s| &s.record).collect();
        records.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then(b.task_id.cmp(&a.task_id))
        });
        records.into_iter().map(TaskRecord::view).collect()
    }

    pub async fn cancel(&self, id: &str) -> Result<TaskView> {
        let inner = self.inner.clone();
        let owned = id.to_string();
        // A pending task is cancelled here; a running one is told to stop (`None`).
        let done = tokio::task::spawn_blocking(move || inner.cancel(&owned))
            .await
            .map_err(|e| Error::new(Code::Internal, format!("cancelling: {e}")))??;
        if let Some(view) = done {
            return Ok(view);
        }
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let view = self.describe(id)?;
            if view.phase.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGHUP: new settings for every decision from now on. The state folder and the API
    /// listeners are fixed for the life of the process.
    pub async fn reload(&self, mut config: Config) {
        let old = self.inner.config();
        if config.state_dir != old.state_dir {
            tracing::warn!(
                "state_dir cannot change while running; keeping {}",
                old.state_dir.display()
            );
            config.state_dir = old.state_dir.clone();
        }
        // A new client reads the CA folders: off the async thread.
        let (old, config) = (self.inner.services(), Arc::new(config));
        let reloaded = {
            let (old, config) = (old.clone(), config.clone());
            tokio::task::spawn_blocking(move || old.reload(config))
                .await
                .map_err(|e| Error::new(Code::Internal, format!("building the HTTP client: {e}")))
                .and_then(|built| built)
        };
        let services = reloaded.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "keeping the old HTTP client");
            Services {
                config,
                ..(*old).clone()
            }
        });
        *self.inner.services.write().expect("services lock") = Arc::new(services);
        self.inner.wake.notify_one();
        tracing::info!("configuration reloaded");
    }

    pub fn metrics(&self) -> Metrics {
        let state = self.inner.lock();
        let tasks_by_phase = Phase::ALL
            .iter()
            .map(|p| {
                (
                    *p,
                    state
                        .tasks
                        .values()
                        .filter(|s| s.record.phase == *p)
                        .count() as u64,
                )
            })
            .collect();
        let mut failures_by_code: Vec<(TaskCode, u64)> = state
            .failures
            .iter()
            .map(|(c, n)| (c.clone(), *n))
            .collect();
        failures_by_code.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Metrics {
            tasks_by_phase,
            submitted_total: self.inner.submitted.load(Ordering::Relaxed),
            bytes_total: self.inner.bytes.load(Ordering::Relaxed),
            failures_by_code,
            retries_total: self.inner.retries.load(Ordering::Relaxed),
        }
    }

    /// Stops intake, interrupts running transfers (they keep their partial data and resume
    /// on the next start) and waits for them to checkpoint.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.workers.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.inner.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "transfers did not stop in time; their journal records still allow resume"
            );
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::new(Code::ApiNotFound, format!("no task with TaskId {id:?}"))
}

fn cancelled() -> Error {
    Error::new(
        Code::Cancelled,
        "the task was cancelled; its partial data was removed",
    )
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("task state lock")
    }

    fn services(&self) -> Arc<Services> {
        self.services.read().expect("services lock").clone()
    }

    fn config(&self) -> Arc<Config> {
        self.services().config.clone()
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().expect("journal lock")
    }

    /// Saves the task's current record (nothing once it has been pruned).
    fn persist(&self, id: &str) -> Result<()> {
        let journal = self.journal();
        let record = self.lock().tasks.get(id).map(|s| s.record.clone());
        record.map_or(Ok(()), |r| journal.save(&r))
    }

    /// Cancels a pending task at once, or signals a running one to stop (`Ok(None)`).
    /// CANCELLED is shown only once the journal holds it (the state lock is kept over the
    /// save, as in `submit`, so the scheduler cannot start the task meanwhile); the partial
    /// data goes after that. The journal lock is held until it is gone, so a re-submit of
    /// the same TaskId cannot start a new transfer that this cleanup would then delete.
    fn cancel(&self, id: &str) -> Result<Option<TaskView>> {
        let journal = self.journal();
        let record = {
            let mut state = self.lock();
            let slot = state.tasks.get_mut(id).ok_or_else(|| not_found(id))?;
            match (&mut slot.run, slot.record.phase) {
                (Some(run), _) => {
                    run.by_user = true;
                    run.cancel.cancel();
                    return Ok(None);
                }
                (None, Phase::Pending) => {
                    let mut record = slot.record.clone();
                    record.fail(&cancelled());
                    record.resume = record.resume.take().and_then(ResumeState::landed_only);
                    journal.save(&record)?;
                    slot.record = record.clone();
                    record
                }
                (None, _) => return Ok(Some(slot.record.view())),
            }
        };
        self.discard(&record);
        Ok(Some(record.view()))
    }

    fn submit(&self, task: ValidTask) -> Result<Submitted> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::new(
                Code::ApiShuttingDown,
                "the daemon is shutting down; submit again once it is back",
            ));
        }
        let journal = self.journal();
        let mut state = self.lock();
        let token_id = task
            .payload
            .client_token
            .as_ref()
            .and_then(|t| state.tokens.get(t).cloned());
        let token_conflict = |bound: &str| {
            Error::new(
                Code::ApiClientTokenConflict,
                format!("ClientToken is already bound to task {bound:?} with a different request; use a new ClientToken for a new task"),
            )
        };
        let id = match (&task.payload.task_id, &token_id) {
            (Some(id), Some(bound)) if id != bound => return Err(token_conflict(bound)),
            (Some(id), _) => id.clone(),
            (None, Some(id)) => id.clone(),
            (None, None) => new_task_id(),
        };
        let mut payload = task.payload.clone();
        payload.task_id = Some(id.clone());
        if let Some(slot) = state.tasks.get_mut(&id) {
            if !same_request(&slot.record.payload, &payload) {
                if token_id.is_some() {
                    return Err(token_conflict(&id));
                }
                return Err(Error::new(
                    Code::ApiTaskIdConflict,
                    format!("TaskId {id:?} (or its ClientToken) already names a different task; use a new TaskId"),
                ));
            }
            if !matches!(slot.record.phase, Phase::Failed | Phase::Cancelled) {
                return Ok(Submitted {
                    view: slot.record.view(),
                    created: false,
                });
            }
            // A failed task submitted again runs again, resuming from kept partial data.
            // Shown as PENDING only once the journal holds it.
            let mut record = slot.record.clone();
            record.payload = payload;
            record.phase = Phase::Pending;
            record.error_code = None;
            record.error_msg = None;
            record.result = None;
            record.notes = task.notes;
            record.started_ms = None;
            record.finished_ms = None;
            record.updated_ms = unix_millis_now();
            blocking(|| journal.save(&record))?;
            slot.record = record.clone();
            drop(state);
            self.submitted.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
            return Ok(Submitted {
                view: record.view(),
                created: true,
            });
        }
        let record = TaskRecord::new(id.clone(), payload, task.notes);
        // Saved under the lock so two submits of one TaskId cannot both create it.
        blocking(|| journal.save(&record))?;
        if let Some(token) = &record.payload.client_token {
            state.tokens.insert(token.clone(), id.clone());
        }
        let view = record.view();
        state.tasks.insert(id, Slot { record, run: None });
        drop(state);
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(Submitted {
            view,
            created: true,
        })
    }

    async fn schedule(self: Arc<Self>) {
        loop {
            self.start_ready();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Starts the oldest pending tasks while there is room.
    fn start_ready(self: &Arc<Self>) {
        let max = self.config().max_concurrent_tasks;
        let mut state = self.lock();
        while state.running < max && !self.shutdown.is_cancelled() {
            let next = state
                .tasks
                .values()
                .filter(|s| s.record.phase == Phase::Pending && s.run.is_none())
                .min_by(|a, b| {
                    a.record
                        .created_ms
                        .cmp(&b.record.created_ms)
                        .then(a.record.task_id.cmp(&b.record.task_id))
                })
                .map(|s| s.record.task_id.clone());
            let Some(id) = next else { break };
            let cancel = self.shutdown.child_token();
            let slot = state.tasks.get_mut(&id).expect("picked from the map");
            slot.run = Some(Running {
                cancel: cancel.clone(),
                by_user: false,
                installing: false,
            });
            slot.record.phase = Phase::Running;
            let now = unix_millis_now();
            slot.record.started_ms = Some(now);
            slot.record.updated_ms = now;
            let record = slot.record.clone();
            state.running += 1;
            let inner = self.clone();
            self.workers
                .spawn(async move { inner.work(record, cancel).await });
        }
    }

    /// `persist` off the async thread; a failure is logged, the task carries on.
    async fn save(self: &Arc<Self>, id: &str) {
        let inner = self.clone();
        let owned = id.to_string();
        let outcome = tokio::task::spawn_blocking(move || inner.persist(&owned)).await;
        if let Ok(Err(e)) | Err(e) = outcome.map_err(|e| Error::new(Code::Internal, e.to_string()))
        {
            tracing::error!(task = %id, error = %e, "cannot save task record");
        }
    }

    async fn work(self: Arc<Self>, record: TaskRecord, cancel: CancellationToken) {
        let id = record.task_id.clone();
        self.save(&id).await;
        tracing::info!(task = %id, "transfer started");
        let services = self.services();
        let outcome =
            match payload::validate(record.payload.clone(), &services.config.allowed_roots) {
                Ok(task) => {
                    let run = pipeline::Run {
                        task_id: &id,
                        resume: record.resume.clone(),
                        cancel,
                    };
                    let observer = TaskObserver {
                        inner: self.clone(),
                        id: id.clone(),
                        last: AtomicU64::new(record.bytes_done),
                    };
                    pipeline::run(&services, &task, run, &observer).await
                }
                Err(e) => Err(e),
            };
        let settled = self.settle(&id, outcome);
        self.commit_outcome(settled).await;
        let inner = self.clone();
        let _ = tokio::task::spawn_blocking(move || inner.prune()).await;
        self.wake.notify_one();
    }

    /// The transfer is done and AutoInstall begins: the task shows INSTALLING with its files,
    /// and gives its transfer slot back so queued transfers start while it waits for pm.
    async fn start_installing(self: &Arc<Self>, id: &str, landed: &TaskResult) {
        {
            let mut state = self.lock();
            let Some(slot) = state.tasks.get_mut(id) else {
                return;
            };
            let record = &mut slot.record;
            record.phase = Phase::Installing;
            record.bytes_done = landed.files.iter().map(|f| f.size).sum();
            record.bytes_total = Some(record.bytes_done);
            record.result = Some(landed.clone());
            record.updated_ms = unix_millis_now();
            if let Some(run) = slot.run.as_mut() {
                run.installing = true;
            }
            state.running -= 1;
        }
        self.save(id).await;
        self.wake.notify_one();
    }

    /// Saves a task's outcome and only then shows it, retrying with backoff while the journal
    /// refuses the write: the API never reports an outcome the journal does not hold (a
    /// SUCCESS shown but lost would run the task, and its AutoInstall, again after a restart).
    /// Meanwhile the task stays RUNNING (or INSTALLING) with a note saying why. A daemon
    /// stopping gives up: the journal still says RUNNING and the next start resumes the task.
    async fn commit_outcome(self: &Arc<Self>, settled: Settled) {
        let settled = Arc::new(settled);
        let mut delay = JOURNAL_RETRY_FIRST;
        loop {
            let (inner, attempt) = (self.clone(), settled.clone());
            let saved = tokio::task::spawn_blocking(move || inner.finish(&attempt))
                .await
                .map_err(|e| Error::new(Code::Internal, format!("finishing the task: {e}")))
                .and_then(|r| r);
            let Err(e) = saved else { return };
            let id = &settled.record.task_id;
            tracing::error!(task = %id, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot save the task's outcome; it stays running until the journal takes it");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(JOURNAL_RETRY_MAX);
        }
    }

    /// A transfer's outcome applied to a copy of its record; nothing is shown yet.
    fn settle(&self, id: &str, outcome: Result<TaskResult>) -> Settled {
        let state = self.lock();
        let slot = state.tasks.get(id).expect("running tasks stay in the map");
        let by_user = slot.run.as_ref().is_some_and(|r| r.by_user);
        let held_slot = !slot.run.as_ref().is_some_and(|r| r.installing);
        let mut record = slot.record.clone();
        let mut discard = false;
        let mut failure = None;
        match outcome {
            Ok(result) => {
                // AutoInstall is part of the task: a refused install fails it (the file
                // stays in place and the result still lists it); NotAnApk does not.
                let refused = result
                    .install
                    .as_ref()
                    .and_then(|i| i.failure().map(|code| (code.clone(), i.message.clone())));
                record.phase = Phase::Success;
                record.bytes_done = result.files.iter().map(|f| f.size).sum();
                record.bytes_total = Some(record.bytes_done);
                record.result = Some(result);
                record.resume = None;
                if let Some((code, message)) = refused {
                    record.phase = Phase::Failed;
                    record.error_code = Some(code.clone());
                    record.error_msg = Some(message);
                    failure = Some(code);
                }
                record.finish_now();
            }
            Err(e) if e.code == Code::Cancelled && !by_user => {
                // Daemon stopping: stay RUNNING in the journal so the next start resumes.
                record.updated_ms = unix_millis_now();
            }
            Err(e) => {
                let e = if by_user { cancelled() } else { e };
                // Keep partial data only when there is some and the failure may pass.
                discard = by_user || !e.code.keeps_partial() || record.bytes_done == 0;
                if discard {
                    record.resume = record.resume.take().and_then(ResumeState::landed_only);
                }
                record.fail(&e);
                failure = Some(e.code.into());
            }
        }
        Settled {
            record,
            discard,
            failure,
            held_slot,
        }
    }

    /// Saves a settled outcome, then shows it. The journal lock is held from before the save
    /// until the record in memory is replaced (and the partial data removed, when the outcome
    /// calls for it), so a re-submit of this TaskId waits for that and never races the
    /// cleanup or the write. When the save fails nothing is shown but a note.
    fn finish(&self, settled: &Settled) -> Result<()> {
        let journal = self.journal();
        let record = &settled.record;
        let id = record.task_id.as_str();
        if settled.discard {
            self.discard(record);
        }
        if let Err(e) = journal.save(record) {
            let note = format!(
                "the outcome of this task could not be saved to the journal ({e}); it shows as running until the save succeeds (retrying)"
            );
            if let Some(slot) = self.lock().tasks.get_mut(id) {
                slot.record
                    .notes
                    .retain(|n| !n.starts_with("the outcome of this task could not be saved"));
                slot.record.notes.push(note);
            }
            return Err(e);
        }
        {
            let mut state = self.lock();
            if let Some(slot) = state.tasks.get_mut(id) {
                slot.record = record.clone();
                slot.run = None;
            }
            if settled.held_slot {
                state.running -= 1;
            }
            if let Some(code) = &settled.failure {
                *state.failures.entry(code.clone()).or_default() += 1;
            }
        }
        match (&record.error_code, record.phase) {
            (Some(code), _) => {
                tracing::warn!(task = %id, code = %code, error = record.error_msg.as_deref().unwrap_or(""), "task failed")
            }
            (None, Phase::Success) => tracing::info!(task = %id, "task succeeded"),
            _ => tracing::info!(task = %id, "task interrupted; it resumes on the next start"),
        }
        Ok(())
    }

    /// Removes a task's staging data; failures are logged, the task outcome stands.
    fn discard(&self, record: &TaskRecord) {
        if let Ok(task) = payload::validate(record.payload.clone(), &self.config().allowed_roots) {
            if let Err(e) = pipeline::discard_partial(&self.config(), &task, &record.task_id) {
                tracing::warn!(task = %record.task_id, error = %e, "cannot remove partial data");
            }
        }
    }

    /// Deletes finished records beyond the configured age and count.
    fn prune(&self) {
        let config = self.config();
        let max_age_ms = config.prune.max_age_hours.saturating_mul(3_600_000);
        let now = unix_millis_now();
        // Held throughout: a re-submit of a doomed TaskId waits, then finds it gone.
        let journal = self.journal();
        let doomed: Vec<TaskRecord> = {
            let mut state = self.lock();
            let mut finished: Vec<&TaskRecord> = state
                .tasks
                .values()
                .filter(|s| s.run.is_none() && s.record.phase.is_finished())
                .map(|s| &s.record)
                .collect();
            finished.sort_by_key(|r| std::cmp::Reverse(r.finished_ms.unwrap_or(r.updated_ms)));
            let doomed: Vec<TaskRecord> = finished
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    *i >= config.prune.max_finished
                        || now.saturating_sub(r.finished_ms.unwrap_or(r.updated_ms)) > max_age_ms
                })
                .map(|(_, r)| (*r).clone())
                .collect();
            for record in &doomed {
                state.tasks.remove(&record.task_id);
                if let Some(token) = &record.payload.client_token {
                    if state.tokens.get(token) == Some(&record.task_id) {
                        state.tokens.remove(token);
                    }
                }
            }
            doomed
        };
        for record in doomed {
            if record.resume.is_some() {
                self.discard(&record);
            }
            if let Err(e) = journal.remove(&record.task_id) {
                tracing::warn!(task = %record.task_id, error = %e, "cannot prune task record");
            }
        }
    }
}

/// Feeds engine progress into the task record and checkpoints into the journal.
struct TaskObserver {
    inner: Arc<Inner>,
    id: String,
    last: AtomicU64,
}

impl engine::Observer for TaskObserver {
    fn progress(&self, done: u64, total: Option<u64>) {
        let before = self.last.swap(done, Ordering::Relaxed);
        self.inner
            .bytes
            .fetch_add(done.saturating_sub(before), Ordering::Relaxed);
        let mut state = self.inner.lock();
        if let Some(slot) = state.tasks.get_mut(&self.id) {
            slot.record.bytes_done = done;
            slot.record.bytes_total = total;
        }
    }

    fn checkpoint(&self, resume: ResumeState) -> impl Future<Output = ()> + Send {
        if let Some(slot) = self.inner.lock().tasks.get_mut(&self.id) {
            slot.record.resume = Some(resume);
            slot.record.updated_ms = unix_millis_now();
        }
        let inner = self.inner.clone();
        let id = self.id.clone();
        async move { inner.save(&id).await }
    }

    fn retrying(&self, _err: &SourceError, _delay: Duration) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }
}

impl pipeline::Observer for TaskObserver {
    async fn installing(&self, landed: &TaskResult) {
        self.inner.start_installing(&self.id, landed).await
    }
}
