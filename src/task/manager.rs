//! The task manager: the queue, its locks, journal writes and scheduling. It exposes submit,
//! cancel, describe, list and a stream of state changes; running one task is
//! [`super::worker`]'s job, and the task's rules are [`super::state`]'s.
//!
//! Every state change is saved before subscribers hear of it, and an outcome (success,
//! failure, cancel) before any caller sees it; only RUNNING shows in `describe` a moment
//! before its save, as the worker's first step. Journal writes happen on blocking threads
//! under the journal lock, which serialises them; the table lock is only ever held for
//! in-memory work, so an API call never waits for an fsync. Both locks survive a panic of
//! their holder (see [`lock`]): one bug must not take the API down.

use super::journal::Journal;
use super::payload;
use super::record::{Phase, TaskView};
use super::table::Table;
use crate::config::Config;
use crate::error::{Code, Error, Result, TaskCode};
use crate::install;
use crate::pipeline::Services;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long `cancel` waits for a running transfer to stop and clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for running transfers to checkpoint.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// State changes a subscriber may fall behind by before it is told it lagged.
const EVENT_BACKLOG: usize = 1024;

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

pub(super) struct Inner {
    /// The configuration and what is built from it, replaced whole on SIGHUP.
    services: RwLock<Arc<Services>>,
    /// Lock order: `journal` before `table`. Taken only on blocking threads.
    journal: Mutex<Journal>,
    table: Mutex<Table>,
    /// Every state change, as the API would show it (the fleet reporter subscribes).
    pub(super) events: broadcast::Sender<TaskView>,
    pub(super) wake: Notify,
    pub(super) shutdown: CancellationToken,
    stopping: AtomicBool,
    workers: TaskTracker,
    pub(super) submitted: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) retries: AtomicU64,
}

/// Locks a mutex even when an earlier holder panicked: the data is still the last state a
/// transition left (transitions never leave a state half-applied), and refusing every later
/// call would turn one bug into an outage.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking work (journal writes, folder removal) off the async threads.
pub(super) async fn off_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(Code::Internal, format!("{what}: {e}")))?
}

impl Manager {
    pub async fn start(config: Config) -> Result<Manager> {
        let config = Arc::new(config);
        let (services, journal, table) = off_thread("opening the journal", {
            let config = config.clone();
            move || {
                let dir = &config.state_dir;
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io("creating state folder", dir, &e))?;
                // Unpacked bundles of installs a crash interrupted: they start over.
                install::clean_stale(&config);
                let (journal, records) = Journal::open(dir, &config.allowed_roots)?;
                let mut table = Table::default();
                for mut record in records {
                    if record.update(|s, _| s.interrupted()) {
                        // Interrupted by a crash or a stop: back to the queue, data kept.
                        journal.save(&record)?;
                        tracing::info!(task = %record.task_id, "resuming interrupted task");
                    }
                    let plan = payload::validate(record.payload.clone(), &config.allowed_roots);
                    table.load(record, plan.map(Arc::new));
                }
                // Reads the CA folders: built here, off the async threads, too.
                Ok((Services::build(config.clone())?, journal, table))
            }
        })
        .await?;
        let inner = Arc::new(Inner {
            services: RwLock::new(Arc::new(services)),
            journal: Mutex::new(journal),
            table: Mutex::new(table),
            events: broadcast::channel(EVENT_BACKLOG).0,
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            workers: TaskTracker::new(),
            submitted: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        inner.prune().await;
        let scheduler = inner.clone();
        tokio::spawn(async move { scheduler.schedule().await });
        Ok(Manager { inner })
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.services().config.clone()
    }

    /// Checks a payload with intake's rules, then queues it (or answers for the task it
    /// repeats). The record is durable before this returns.
    pub async fn submit(&self, json: &[u8]) -> Result<Submitted> {
        let config = self.config();
        let task = payload::validate(payload::parse(json)?, &config.allowed_roots)?;
        if task.payload.auto_install && !config.install.enabled {
            return Err(Error::new(
                Code::UnsupportedAutoInstall,
                "AutoInstall is turned off on this device (install.enabled = false in the ferry configuration); send the task with AutoInstall false, or enable it there",
            ));
        }
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(Error::new(
                Code::ApiShuttingDown,
                "the daemon is shutting down; submit again once it is back",
            ));
        }
        let inner = self.inner.clone();
        off_thread("submitting", move || inner.admit(task)).await
    }

    pub fn describe(&self, id: &str) -> Result<TaskView> {
        self.inner.table().view(id)
    }

    /// All tasks, newest first.
    pub fn list(&self) -> Vec<TaskView> {
        self.inner.table().views()
    }

    /// Every state change from now on, as `describe` would show it. A subscriber that falls
    /// more than 1024 changes behind gets `Lagged` and should `list` again.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskView> {
        self.inner.events.subscribe()
    }

    pub async fn cancel(&self, id: &str) -> Result<TaskView> {
        let inner = self.inner.clone();
        let owned = id.to_string();
        // A pending task is cancelled there; a running one is told to stop (`None`).
        if let Some(view) = off_thread("cancelling", move || inner.cancel(&owned)).await? {
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
        let old = self.inner.services();
        if config.state_dir != old.config.state_dir {
            tracing::warn!(
                "state_dir cannot change while running; keeping {}",
                old.config.state_dir.display()
            );
            config.state_dir = old.config.state_dir.clone();
        }
        let config = Arc::new(config);
        let rebuilt = {
            let (old, config) = (old.clone(), config.clone());
            off_thread("reloading", move || old.reload(config)).await
        };
        let services = rebuilt.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "keeping the old HTTP client");
            old.bandwidth
                .set_rate(config.bandwidth_limit_kib.saturating_mul(1024));
            Services {
                config,
                client: old.client.clone(),
                bandwidth: old.bandwidth.clone(),
                install_lock: old.install_lock.clone(),
            }
        });
        *self
            .inner
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(services);
        self.inner.wake.notify_one();
        tracing::info!("configuration reloaded");
    }

    pub fn metrics(&self) -> Metrics {
        let table = self.inner.table();
        let tasks_by_phase = Phase::ALL.iter().map(|p| (*p, table.count(*p))).collect();
        let mut failures_by_code: Vec<(TaskCode, u64)> = table
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

impl Inner {
    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    pub(super) fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    pub(super) fn services(&self) -> Arc<Services> {
        self.services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn emit(&self, view: TaskView) {
        // No subscriber is no error.
        let _ = self.events.send(view);
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
        let max = self.services().config.max_concurrent_tasks;
        let mut table = self.table();
        while table.running < max && !self.shutdown.is_cancelled() {
            let cancel = self.shutdown.child_token();
            let Some(slot) = table.start_next(cancel.clone()) else {
                break;
            };
            let (id, plan) = (slot.record.task_id.clone(), slot.plan.clone());
            let resume = slot.record.state.resume().cloned();
            let done = slot.record.state.progress().done;
            let inner = self.clone();
            self.workers.spawn(async move {
                inner.work(id, plan, resume, done, cancel).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while the table is locked must not make every later API call fail.
    #[test]
    fn a_lock_whose_holder_panicked_still_serves() {
        let table = Arc::new(Mutex::new(vec![1]));
        let held = table.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("a bug while holding the lock");
        })
        .join();
        assert!(table.is_poisoned());
        lock(&table).push(2);
        assert_eq!(*lock(&table), vec![1, 2]);
    }
}
