//! The tasks in memory: records with their checked plans, the ClientToken index, who holds a
//! transfer slot, and the failure counters. No I/O here: the manager saves to the journal
//! outside this table's lock and applies what was saved.

use super::record::{Phase, TaskRecord, TaskView};
use crate::error::{Code, Error, Result, TaskCode};
use crate::task::payload::{TaskPayload, ValidTask};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(super) struct Slot {
    pub record: TaskRecord,
    /// The payload checked into a plan once, at intake or when the journal was loaded; a
    /// stored payload this build refuses fails its task, with that error, when it runs.
    pub plan: Result<Arc<ValidTask>>,
    pub run: Option<Running>,
    /// A save of this record is under way outside the lock: the scheduler leaves it alone.
    pub saving: bool,
}

pub(super) struct Running {
    pub cancel: CancellationToken,
    /// Set by a cancel: the worker then discards the partial file instead of keeping it.
    pub by_user: bool,
    /// Past the transfer: the task gave its slot back when it started installing.
    pub installing: bool,
}

/// What intake decided about a submitted task.
pub(super) enum Admission {
    /// Known and not to run again: shown as it is.
    Known(TaskView),
    /// To save, then show: a new task, or a failed or cancelled one submitted again.
    Save(TaskRecord),
}

#[derive(Default)]
pub(super) struct Table {
    tasks: HashMap<String, Slot>,
    /// ClientToken → TaskId, for idempotent submits without a TaskId.
    tokens: HashMap<String, String>,
    /// Tasks holding a transfer slot (INSTALLING ones have given theirs back).
    pub running: usize,
    pub failures: HashMap<TaskCode, u64>,
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

pub(super) fn not_found(id: &str) -> Error {
    Error::new(Code::ApiNotFound, format!("no task with TaskId {id:?}"))
}

impl Table {
    /// Adds a record read from the journal (oldest first, so a token stays bound to its
    /// first task).
    pub fn load(&mut self, record: TaskRecord, plan: Result<Arc<ValidTask>>) {
        if let Some(token) = &record.payload.client_token {
            self.tokens
                .entry(token.clone())
                .or_insert_with(|| record.task_id.clone());
        }
        self.put(record, plan);
    }

    fn put(&mut self, record: TaskRecord, plan: Result<Arc<ValidTask>>) {
        let id = record.task_id.clone();
        self.tasks.insert(
            id,
            Slot {
                record,
                plan,
                run: None,
                saving: false,
            },
        );
    }

    pub fn get(&self, id: &str) -> Option<&Slot> {
        self.tasks.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Slot> {
        self.tasks.get_mut(id)
    }

    pub fn view(&self, id: &str) -> Result<TaskView> {
        self.get(id)
            .map(|s| s.record.view())
            .ok_or_else(|| not_found(id))
    }

    /// All tasks, newest first.
    pub fn views(&self) -> Vec<TaskView> {
        let mut records: Vec<&TaskRecord> = self.tasks.values().map(|s| &s.record).collect();
        records.sort_by(|a, b| {
            b.created_ms
                .cmp(&a.created_ms)
                .then(b.task_id.cmp(&a.task_id))
        });
        records.into_iter().map(TaskRecord::view).collect()
    }

    pub fn count(&self, phase: Phase) -> u64 {
        self.tasks
            .values()
            .filter(|s| s.record.phase() == phase)
            .count() as u64
    }

    /// Decides what a submitted task is: known (same request), new, a re-run of a failed
    /// or cancelled one, or a conflict with a different request under the same TaskId or
    /// ClientToken. A record to save is returned, not stored: see [`Table::admitted`].
    pub fn admit(&self, task: &ValidTask) -> Result<Admission> {
        let token_id = task
            .payload
            .client_token
            .as_ref()
            .and_then(|t| self.tokens.get(t).cloned());
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
        let Some(slot) = self.tasks.get(&id) else {
            return Ok(Admission::Save(TaskRecord::new(
                id,
                payload,
                task.notes.clone(),
            )));
        };
        if !same_request(&slot.record.payload, &payload) {
            if token_id.is_some() {
                return Err(token_conflict(&id));
            }
            return Err(Error::new(
                Code::ApiTaskIdConflict,
                format!("TaskId {id:?} (or its ClientToken) already names a different task; use a new TaskId"),
            ));
        }
        let mut record = slot.record.clone();
        if slot.saving || record.update(|s, _| s.rerun()).is_err() {
            return Ok(Admission::Known(slot.record.view()));
        }
        // A failed task submitted again runs again, resuming from kept partial data.
        record.payload = payload;
        record.notes = task.notes.clone();
        Ok(Admission::Save(record))
    }

    /// Puts a record that intake saved in place, with its plan.
    pub fn admitted(&mut self, record: TaskRecord, plan: Arc<ValidTask>) {
        if let Some(token) = &record.payload.client_token {
            self.tokens.insert(token.clone(), record.task_id.clone());
        }
        self.put(record, Ok(plan));
    }

    /// The oldest pending task not being saved, started in memory (RUNNING, slot taken).
    pub fn start_next(&mut self, cancel: CancellationToken) -> Option<&Slot> {
        let id = self
            .tasks
            .values()
            .filter(|s| s.record.phase() == Phase::Pending && s.run.is_none() && !s.saving)
            .min_by(|a, b| {
                a.record
                    .created_ms
                    .cmp(&b.record.created_ms)
                    .then(a.record.task_id.cmp(&b.record.task_id))
            })
            .map(|s| s.record.task_id.clone())?;
        let slot = self.tasks.get_mut(&id)?;
        slot.record.update(|s, now| s.start(now)).ok()?;
        slot.run = Some(Running {
            cancel,
            by_user: false,
            installing: false,
        });
        self.running += 1;
        self.tasks.get(&id)
    }

    /// Removes finished tasks beyond `max_finished` (newest kept) or older than the cutoff,
    /// and returns them (the caller removes their files).
    pub fn prune(&mut self, now_ms: u64, max_age_ms: u64, max_finished: usize) -> Vec<Slot> {
        let mut finished: Vec<&TaskRecord> = self
            .tasks
            .values()
            .filter(|s| s.run.is_none() && !s.saving && s.record.phase().is_finished())
            .map(|s| &s.record)
            .collect();
        finished.sort_by_key(|r| std::cmp::Reverse(r.finished_or_updated_ms()));
        let doomed: Vec<String> = finished
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                *i >= max_finished || now_ms.saturating_sub(r.finished_or_updated_ms()) > max_age_ms
            })
            .map(|(_, r)| r.task_id.clone())
            .collect();
        let mut removed = Vec::with_capacity(doomed.len());
        for id in doomed {
            let Some(slot) = self.tasks.remove(&id) else {
                continue;
            };
            if let Some(token) = &slot.record.payload.client_token {
                if self.tokens.get(token) == Some(&id) {
                    self.tokens.remove(token);
                }
            }
            removed.push(slot);
        }
        removed
    }
}
