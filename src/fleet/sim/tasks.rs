//! The simulator's task table: what `ferry-fleet-sim` gives each session's fleet client in
//! place of the task manager ([`TaskHost`]). Intake is the agent's own (`payload::parse` and
//! `validate` with the agent's default roots, so a payload a phone would refuse is refused
//! here with the same code); an admitted task goes PENDING → RUNNING → progress every
//! `progress` → SUCCESS or FAILED after `duration`. No byte is fetched and no file is
//! written: the SUCCESS result names the target path with size 0 and the sha256 of zero
//! bytes, and a note says it was simulated.

use crate::config::Config;
use crate::error::{Code, Error, Result, TaskCode};
use crate::fleet::agent::host::TaskHost;
use crate::task::manager::Submitted;
use crate::task::payload::{self, Plan, ValidTask};
use crate::task::record::{FileResult, Phase, TaskResult, TaskView};
use crate::timefmt::{rfc3339, unix_millis_now};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

/// sha256 of zero bytes: what a simulated SUCCESS reports, as no file was written.
pub const SHA256_OF_NOTHING: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The note every simulated result carries.
pub const SIMULATED_NOTE: &str =
    "simulated by ferry-fleet-sim: no file was transferred (size 0, sha256 of zero bytes)";
/// Changes a session's reporter may fall behind by (the manager keeps 1024).
const EVENT_BACKLOG: usize = 64;

/// How simulated tasks behave; one for the whole process.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// From RUNNING to the final state (zero: at once).
    pub duration: Duration,
    /// How often a running task's progress changes.
    pub progress: Duration,
    /// Share of tasks that end FAILED, 0.0–1.0, spread evenly over the process's tasks.
    pub fail_ratio: f64,
    /// The agent error code a failing task reports.
    pub fail_code: Code,
    /// BytesTotal reported while a task "runs" (BytesDone moves towards it).
    pub bytes: u64,
}

/// Counts over every session of the process.
#[derive(Debug, Default)]
pub struct Counters {
    pub admitted: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Tasks that reached the end of their run (the failure mix counts these).
    ended: AtomicU64,
}

impl Counters {
    /// Whether the `n`-th admitted task (0-based) fails: ⌊(n+1)·r⌋ > ⌊n·r⌋, so exactly
    /// ⌊N·r⌋ of the first N fail, evenly spread, the same on every run.
    fn fails(n: u64, ratio: f64) -> bool {
        ((n + 1) as f64 * ratio).floor() > (n as f64 * ratio).floor()
    }
}

struct Entry {
    seq: u64,
    view: TaskView,
    runner: Option<AbortHandle>,
}

struct Inner {
    config: Arc<Config>,
    behaviour: Arc<Behaviour>,
    counters: Arc<Counters>,
    table: Mutex<(u64, HashMap<String, Entry>)>,
    events: broadcast::Sender<TaskView>,
}

/// One simulated agent's tasks.
#[derive(Clone)]
pub struct SimTasks {
    inner: Arc<Inner>,
}

impl SimTasks {
    pub fn new(config: Arc<Config>, behaviour: Arc<Behaviour>, counters: Arc<Counters>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        SimTasks {
            inner: Arc::new(Inner {
                config,
                behaviour,
                counters,
                table: Mutex::new((0, HashMap::new())),
                events,
            }),
        }
    }

    fn admit(&self, task: ValidTask) -> Result<Submitted> {
        let id = task.payload.task_id.clone().ok_or_else(|| {
            Error::new(
                Code::InvalidTaskId,
                "the simulator takes tasks with a TaskId",
            )
        })?;
        let mut table = self.inner.lock();
        if let Some(held) = table.1.get(&id) {
            return Ok(Submitted {
                view: held.view.clone(),
                created: false,
            });
        }
        let view = pending_view(&id, &task);
        let seq = table.0;
        table.0 += 1;
        let runner = tokio::spawn(self.clone().run(id.clone(), target_path(&task.plan)));
        table.1.insert(
            id,
            Entry {
                seq,
                view: view.clone(),
                runner: Some(runner.abort_handle()),
            },
        );
        self.inner.counters.admitted.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.events.send(view.clone());
        Ok(Submitted {
            view,
            created: true,
        })
    }

    /// One task's simulated life after PENDING.
    async fn run(self, id: String, path: String) {
        let b = self.inner.behaviour.clone();
        self.update(&id, |v| {
            v.phase = Phase::Running;
            v.bytes_total = Some(b.bytes);
            v.start_time = Some(rfc3339(unix_millis_now()));
        });
        let start = tokio::time::Instant::now();
        let end = start + b.duration;
        let step = b.progress.max(Duration::from_millis(1));
        loop {
            let next = tokio::time::Instant::now() + step;
            if next >= end {
                break;
            }
            tokio::time::sleep_until(next).await;
            let share = next.duration_since(start).as_secs_f64() / b.duration.as_secs_f64();
            self.update(&id, |v| {
                v.bytes_done = (b.bytes as f64 * share) as u64;
                v.progress = (share * 100.0) as u8;
            });
        }
        tokio::time::sleep_until(end).await;
        // The order of finishing over the whole process decides, so the mix holds for any
        // number of sessions.
        let nth = self.inner.counters.ended.fetch_add(1, Ordering::Relaxed);
        let fails = Counters::fails(nth, b.fail_ratio);
        let now = rfc3339(unix_millis_now());
        if fails {
            self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.update(&id, |v| {
                v.phase = Phase::Failed;
                v.error_code = Some(TaskCode::Fixed(b.fail_code));
                v.error_msg = Some(format!(
                    "simulated failure ({}) by ferry-fleet-sim --fail-ratio {}",
                    b.fail_code.as_str(),
                    b.fail_ratio
                ));
                v.notes = vec![SIMULATED_NOTE.to_string()];
                v.finish_time = Some(now.clone());
            });
        } else {
            self.inner
                .counters
                .succeeded
                .fetch_add(1, Ordering::Relaxed);
            self.update(&id, |v| {
                v.phase = Phase::Success;
                v.progress = 100;
                v.bytes_done = b.bytes;
                v.result = Some(TaskResult {
                    files: vec![FileResult {
                        path: path.clone(),
                        size: 0,
                        sha256: SHA256_OF_NOTHING.to_string(),
                        content_encoding: None,
                    }],
                    install: None,
                    notes: vec![SIMULATED_NOTE.to_string()],
                });
                v.notes = vec![SIMULATED_NOTE.to_string()];
                v.finish_time = Some(now.clone());
            });
        }
    }

    /// Changes a task's view and emits it, as the manager does after a save.
    fn update(&self, id: &str, change: impl FnOnce(&mut TaskView)) {
        let mut table = self.inner.lock();
        let Some(entry) = table.1.get_mut(id) else {
            return;
        };
        change(&mut entry.view);
        entry.view.task_status = entry.view.phase.task_status().to_string();
        if entry.view.phase.is_finished() {
            entry.runner = None;
        }
        let _ = self.inner.events.send(entry.view.clone());
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Entry>)> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device path a task would have written: the file, or the folder plus its new name.
fn target_path(plan: &Plan) -> String {
    match plan {
        Plan::Download { target, .. } => target.to_string(),
        Plan::Oss { folder, rename, .. } | Plan::OssBridged { folder, rename, .. } => {
            match rename {
                Some(name) => format!("{}/{name}", folder.to_string().trim_end_matches('/')),
                None => folder.to_string(),
            }
        }
    }
}

fn pending_view(id: &str, task: &ValidTask) -> TaskView {
    let payload = task.payload.redacted();
    TaskView {
        task_id: id.to_string(),
        client_token: payload.client_token.clone(),
        task_status: Phase::Pending.task_status().to_string(),
        phase: Phase::Pending,
        progress: 0,
        bytes_done: 0,
        bytes_total: None,
        error_code: None,
        error_msg: None,
        result: None,
        notes: task.notes.clone(),
        payload,
        creation_time: rfc3339(unix_millis_now()),
        start_time: None,
        finish_time: None,
    }
}

impl TaskHost for SimTasks {
    fn config(&self) -> Arc<Config> {
        self.inner.config.clone()
    }

    fn submit(&self, json: &[u8]) -> impl Future<Output = Result<Submitted>> + Send {
        let checked = payload::parse(json)
            .and_then(|p| payload::validate(p, &self.inner.config.allowed_roots))
            .and_then(|task| {
                if task.payload.auto_install && !self.inner.config.install.enabled {
                    Err(Error::new(
                        Code::UnsupportedAutoInstall,
                        "AutoInstall is turned off on this (simulated) device",
                    ))
                } else {
                    Ok(task)
                }
            });
        let admitted = checked.and_then(|task| self.admit(task));
        std::future::ready(admitted)
    }

    fn describe(&self, id: &str) -> Result<TaskView> {
        self.inner
            .lock()
            .1
            .get(id)
            .map(|e| e.view.clone())
            .ok_or_else(|| Error::new(Code::ApiNotFound, format!("no task {id}")))
    }

    fn list(&self) -> Vec<TaskView> {
        let table = self.inner.lock();
        let mut entries: Vec<&Entry> = table.1.values().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        entries.into_iter().map(|e| e.view.clone()).collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskView> {
        self.inner.events.subscribe()
    }

    fn cancel(&self, id: &str) -> impl Future<Output = Result<TaskView>> + Send {
        let held = self.describe(id);
        let result = held.map(|view| {
            if view.phase.is_finished() {
                return view;
            }
            if let Some(runner) = self
                .inner
                .lock()
                .1
                .get_mut(id)
                .and_then(|e| e.runner.take())
            {
                runner.abort();
            }
            self.inner
                .counters
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
            self.update(id, |v| {
                v.phase = Phase::Cancelled;
                v.error_code = Some(TaskCode::Fixed(Code::Cancelled));
                v.error_msg = Some("cancelled by the controller".into());
                v.finish_time = Some(rfc3339(unix_millis_now()));
            });
            self.describe(id).unwrap_or(view)
        });
        std::future::ready(result)
    }
}
