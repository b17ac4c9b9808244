//! A task's state, and the one place its transitions and their rules live.
//!
//! Each state carries the data that only makes sense in it (a RUNNING task's progress and
//! partial data, a finished task's result or error), so no field's meaning depends on another.
//! The manager only calls these transitions; it never edits a state by hand.

use super::record::{DoneObject, Phase, ResumeState, TaskResult};
use crate::error::{Code, Error, TaskCode};
use serde::{Deserialize, Serialize};

/// Bytes landed so far, and the total once the source said it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

impl Progress {
    /// Everything of a result that landed: done and total are its size.
    fn of(result: &TaskResult) -> Progress {
        let size = result.files.iter().map(|f| f.size).sum();
        Progress {
            done: size,
            total: Some(size),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// Stored externally tagged (`{"RUNNING": {"StartedMs": …}}`): the phase is the one key. An
/// internal tag would buffer every record through serde's `Content` and build a second copy
/// of every nested deserializer into the phone binary.
#[serde(rename_all = "SCREAMING_SNAKE_CASE", rename_all_fields = "PascalCase")]
pub enum TaskState {
    /// Queued. `resume` is the partial data of an earlier run (a restart, or a re-submit
    /// after a failure that kept it); `progress` is how far that run got.
    Pending {
        #[serde(default)]
        progress: Progress,
        #[serde(default)]
        resume: Option<ResumeState>,
    },
    Running {
        started_ms: u64,
        progress: Progress,
        #[serde(default)]
        resume: Option<ResumeState>,
    },
    /// The files are in place; AutoInstall is waiting for, or running, pm.
    Installing {
        started_ms: u64,
        landed: TaskResult,
        #[serde(default)]
        resume: Option<ResumeState>,
    },
    Success {
        started_ms: Option<u64>,
        finished_ms: u64,
        result: TaskResult,
    },
    /// `resume` is what a re-submit of the TaskId picks up: the partial file when the
    /// failure may pass, else only the objects of a folder send that landed. `result` is set
    /// when the files landed but AutoInstall was refused.
    Failed {
        started_ms: Option<u64>,
        finished_ms: u64,
        code: TaskCode,
        message: String,
        progress: Progress,
        #[serde(default)]
        result: Option<TaskResult>,
        #[serde(default)]
        resume: Option<ResumeState>,
    },
    Cancelled {
        started_ms: Option<u64>,
        finished_ms: u64,
        message: String,
        progress: Progress,
        /// Only the landed objects of a folder send: a cancel removes the partial file.
        #[serde(default)]
        resume: Option<ResumeState>,
    },
}

/// A transition the current state does not allow: a bug in the caller, reported rather than
/// applied so the record never holds an impossible state.
#[derive(Debug, thiserror::Error)]
#[error("a {from:?} task cannot {action}")]
pub struct IllegalTransition {
    pub from: Phase,
    pub action: &'static str,
}

impl From<IllegalTransition> for Error {
    fn from(e: IllegalTransition) -> Self {
        Error::new(Code::Internal, e.to_string())
    }
}

/// What the manager must do after a run's outcome was applied.
#[derive(Debug, PartialEq, Eq)]
pub struct Settlement {
    /// Remove the partial data: the task will not resume from it.
    pub discard: bool,
    /// The code the task failed with, for the failure counters.
    pub failure: Option<TaskCode>,
}

fn cancelled_by_user() -> Error {
    Error::new(
        Code::Cancelled,
        "the task was cancelled; its partial data was removed",
    )
}

impl Default for TaskState {
    fn default() -> Self {
        TaskState::Pending {
            progress: Progress::default(),
            resume: None,
        }
    }
}

impl TaskState {
    pub fn phase(&self) -> Phase {
        match self {
            TaskState::Pending { .. } => Phase::Pending,
            TaskState::Running { .. } => Phase::Running,
            TaskState::Installing { .. } => Phase::Installing,
            TaskState::Success { .. } => Phase::Success,
            TaskState::Failed { .. } => Phase::Failed,
            TaskState::Cancelled { .. } => Phase::Cancelled,
        }
    }

    fn illegal(&self, action: &'static str) -> IllegalTransition {
        IllegalTransition {
            from: self.phase(),
            action,
        }
    }

    pub fn progress(&self) -> Progress {
        match self {
            TaskState::Pending { progress, .. }
            | TaskState::Running { progress, .. }
            | TaskState::Failed { progress, .. }
            | TaskState::Cancelled { progress, .. } => *progress,
            TaskState::Installing { landed, .. } => Progress::of(landed),
            TaskState::Success { result, .. } => Progress::of(result),
        }
    }

    pub fn resume(&self) -> Option<&ResumeState> {
        match self {
            TaskState::Pending { resume, .. }
            | TaskState::Running { resume, .. }
            | TaskState::Installing { resume, .. }
            | TaskState::Failed { resume, .. }
            | TaskState::Cancelled { resume, .. } => resume.as_ref(),
            TaskState::Success { .. } => None,
        }
    }

    /// The landed files: final for SUCCESS, so far for INSTALLING, kept for a refused install.
    pub fn result(&self) -> Option<&TaskResult> {
        match self {
            TaskState::Installing { landed, .. } => Some(landed),
            TaskState::Success { result, .. } => Some(result),
            TaskState::Failed { result, .. } => result.as_ref(),
            _ => None,
        }
    }

    /// The error code and message of a FAILED or CANCELLED task.
    pub fn error(&self) -> Option<(TaskCode, &str)> {
        match self {
            TaskState::Failed { code, message, .. } => Some((code.clone(), message)),
            TaskState::Cancelled { message, .. } => Some((Code::Cancelled.into(), message)),
            _ => None,
        }
    }

    pub fn started_ms(&self) -> Option<u64> {
        match self {
            TaskState::Pending { .. } => None,
            TaskState::Running { started_ms, .. } | TaskState::Installing { started_ms, .. } => {
                Some(*started_ms)
            }
            TaskState::Success { started_ms, .. }
            | TaskState::Failed { started_ms, .. }
            | TaskState::Cancelled { started_ms, .. } => *started_ms,
        }
    }

    pub fn finished_ms(&self) -> Option<u64> {
        match self {
            TaskState::Success { finished_ms, .. }
            | TaskState::Failed { finished_ms, .. }
            | TaskState::Cancelled { finished_ms, .. } => Some(*finished_ms),
            _ => None,
        }
    }

    /// PENDING → RUNNING.
    pub fn start(&mut self, now_ms: u64) -> Result<(), IllegalTransition> {
        let TaskState::Pending { progress, resume } = self else {
            return Err(self.illegal("start"));
        };
        *self = TaskState::Running {
            started_ms: now_ms,
            progress: *progress,
            resume: resume.take(),
        };
        Ok(())
    }

    /// Bytes landed by a RUNNING task; other states ignore late reports.
    pub fn advance(&mut self, done: u64, total: Option<u64>) {
        if let TaskState::Running { progress, .. } = self {
            *progress = Progress { done, total };
        }
    }

    /// What a RUNNING task needs to resume; other states ignore late checkpoints. The
    /// engine's state says nothing of a folder's landed objects: those already in the record
    /// stay (the objects landed since are in the landed log, see [`super::landed_log`]).
    pub fn checkpoint(&mut self, mut state: ResumeState) {
        if let TaskState::Running { resume, .. } = self {
            if state.folder_done.is_empty() {
                state.folder_done = resume.take().map(|r| r.folder_done).unwrap_or_default();
            }
            *resume = Some(state);
        }
    }

    /// Folder objects landed since the record last held them (from the landed log): merged
    /// into what a re-run skips. SUCCESS keeps no resume state and ignores them.
    pub fn remember_landed(&mut self, landed: Vec<DoneObject>) {
        if landed.is_empty() {
            return;
        }
        let resume = match self {
            TaskState::Pending { resume, .. }
            | TaskState::Running { resume, .. }
            | TaskState::Installing { resume, .. }
            | TaskState::Failed { resume, .. }
            | TaskState::Cancelled { resume, .. } => resume,
            TaskState::Success { .. } => return,
        };
        let resume = resume.get_or_insert_with(ResumeState::default);
        super::landed_log::merge(&mut resume.folder_done, landed);
    }

    /// RUNNING → INSTALLING: the files are in place.
    pub fn install(&mut self, landed: TaskResult) -> Result<(), IllegalTransition> {
        let TaskState::Running {
            started_ms, resume, ..
        } = self
        else {
            return Err(self.illegal("start installing"));
        };
        *self = TaskState::Installing {
            started_ms: *started_ms,
            landed,
            resume: resume.take(),
        };
        Ok(())
    }

    /// RUNNING or INSTALLING interrupted by a stop or a crash → PENDING, partial data kept.
    /// Returns whether the state changed.
    pub fn interrupted(&mut self) -> bool {
        let progress = self.progress();
        let resume = match self {
            TaskState::Running { resume, .. } | TaskState::Installing { resume, .. } => {
                resume.take()
            }
            _ => return false,
        };
        *self = TaskState::Pending { progress, resume };
        true
    }

    /// PENDING → CANCELLED before it ever ran (again); a folder send keeps its landed objects.
    pub fn cancel_pending(&mut self, now_ms: u64) -> Result<(), IllegalTransition> {
        let TaskState::Pending { progress, resume } = self else {
            return Err(self.illegal("be cancelled while queued"));
        };
        *self = TaskState::Cancelled {
            started_ms: None,
            finished_ms: now_ms,
            message: cancelled_by_user().message,
            progress: *progress,
            resume: resume.take().and_then(ResumeState::landed_only),
        };
        Ok(())
    }

    /// FAILED or CANCELLED submitted again → PENDING, resuming from what it kept.
    pub fn rerun(&mut self) -> Result<(), IllegalTransition> {
        let (progress, resume) = match self {
            TaskState::Failed {
                progress, resume, ..
            }
            | TaskState::Cancelled {
                progress, resume, ..
            } => (*progress, resume.take()),
            _ => return Err(self.illegal("run again")),
        };
        *self = TaskState::Pending { progress, resume };
        Ok(())
    }

    /// A run's outcome applied to a RUNNING or INSTALLING task. The rules:
    /// - files landed: SUCCESS, unless AutoInstall was refused (FAILED with pm's code; the
    ///   files stay and the result lists them; `Install.NotAnApk` is no refusal);
    /// - stopped by the daemon (not the user): unchanged, so the next start resumes it;
    /// - cancelled by the user: CANCELLED, partial data removed;
    /// - failed: FAILED, partial data kept only when there is some and the code may pass.
    pub fn settle(
        &mut self,
        outcome: Result<TaskResult, Error>,
        by_user: bool,
        now_ms: u64,
    ) -> Result<Settlement, IllegalTransition> {
        if !matches!(
            self,
            TaskState::Running { .. } | TaskState::Installing { .. }
        ) {
            return Err(self.illegal("settle a run"));
        }
        let started_ms = self.started_ms();
        let progress = self.progress();
        let mut settlement = Settlement {
            discard: false,
            failure: None,
        };
        *self = match outcome {
            Ok(result) => {
                let refused = result
                    .install
                    .as_ref()
                    .and_then(|i| i.failure().map(|code| (code.clone(), i.message.clone())));
                match refused {
                    Some((code, message)) => {
                        settlement.failure = Some(code.clone());
                        TaskState::Failed {
                            started_ms,
                            finished_ms: now_ms,
                            code,
                            message,
                            progress: Progress::of(&result),
                            result: Some(result),
                            resume: None,
                        }
                    }
                    None => TaskState::Success {
                        started_ms,
                        finished_ms: now_ms,
                        result,
                    },
                }
            }
            Err(e) if e.code == Code::Cancelled && !by_user => return Ok(settlement),
            Err(e) => {
                let e = if by_user { cancelled_by_user() } else { e };
                let resume = self.resume().cloned();
                settlement.discard = by_user || !e.code.keeps_partial() || progress.done == 0;
                let resume = if settlement.discard {
                    resume.and_then(ResumeState::landed_only)
                } else {
                    resume
                };
                settlement.failure = Some(e.code.into());
                if e.code == Code::Cancelled {
                    TaskState::Cancelled {
                        started_ms,
                        finished_ms: now_ms,
                        message: e.message,
                        progress,
                        resume,
                    }
                } else {
                    TaskState::Failed {
                        started_ms,
                        finished_ms: now_ms,
                        code: e.code.into(),
                        message: e.message,
                        progress,
                        result: None,
                        resume,
                    }
                }
            }
        };
        Ok(settlement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::record::{FileResult, InstallResult};

    fn file(size: u64) -> FileResult {
        FileResult {
            path: "/sdcard/Download/a.apk".into(),
            size,
            sha256: "00".into(),
            content_encoding: None,
        }
    }

    fn partial() -> ResumeState {
        ResumeState {
            staging_name: ".ferry-t-1.part".into(),
            durable_bytes: 5,
            ..ResumeState::default()
        }
    }

    fn running(done: u64) -> TaskState {
        let mut state = TaskState::default();
        state.start(1).unwrap();
        state.advance(done, Some(10));
        state.checkpoint(partial());
        state
    }

    #[test]
    fn a_run_goes_from_pending_through_installing_to_success() {
        let mut state = running(10);
        assert_eq!(state.phase(), Phase::Running);
        let landed = TaskResult {
            files: vec![file(10)],
            ..TaskResult::default()
        };
        state.install(landed.clone()).unwrap();
        assert_eq!(state.phase(), Phase::Installing);
        assert_eq!(state.progress().done, 10);
        let settled = state.settle(Ok(landed), false, 2).unwrap();
        assert_eq!(settled.failure, None);
        assert_eq!(state.phase(), Phase::Success);
        assert_eq!(
            (state.started_ms(), state.finished_ms()),
            (Some(1), Some(2))
        );
        assert_eq!(state.resume(), None);
    }

    #[test]
    fn transitions_a_state_does_not_allow_are_refused_and_change_nothing() {
        let mut pending = TaskState::default();
        assert!(pending.install(TaskResult::default()).is_err());
        assert!(pending.rerun().is_err());
        assert!(pending.settle(Ok(TaskResult::default()), false, 1).is_err());
        assert_eq!(pending, TaskState::default());
        let mut run = running(3);
        assert!(run.start(2).is_err());
        assert!(run.cancel_pending(2).is_err());
        assert_eq!(run, running(3));
    }

    #[test]
    fn a_refused_install_fails_the_task_and_keeps_its_files() {
        let mut state = running(10);
        let result = TaskResult {
            files: vec![file(10)],
            install: Some(InstallResult {
                error_code: TaskCode::pm_reason("INSTALL_FAILED_VERSION_DOWNGRADE"),
                message: "older".into(),
                ..InstallResult::default()
            }),
            notes: vec![],
        };
        let settled = state.settle(Ok(result), false, 2).unwrap();
        assert_eq!(state.phase(), Phase::Failed);
        assert_eq!(
            settled.failure.as_ref().map(TaskCode::as_str),
            Some("Install.INSTALL_FAILED_VERSION_DOWNGRADE")
        );
        assert_eq!(
            state.error().unwrap().0.as_str(),
            "Install.INSTALL_FAILED_VERSION_DOWNGRADE"
        );
        assert_eq!(state.result().unwrap().files.len(), 1);
        assert!(!settled.discard);
    }

    #[test]
    fn failures_keep_partial_data_only_when_they_may_pass() {
        let passing = Error::new(Code::NetworkReset, "reset");
        let mut state = running(5);
        let settled = state.settle(Err(passing.clone()), false, 2).unwrap();
        assert!(!settled.discard);
        assert_eq!(state.resume(), Some(&partial()));
        state.rerun().unwrap();
        assert_eq!(state.phase(), Phase::Pending);
        assert_eq!(state.resume(), Some(&partial()), "a re-submit resumes");

        let mut nothing_yet = running(0);
        assert!(nothing_yet.settle(Err(passing), false, 2).unwrap().discard);

        let mut for_good = running(5);
        let settled = for_good
            .settle(Err(Error::new(Code::SourceNotFound, "gone")), false, 2)
            .unwrap();
        assert!(settled.discard);
        assert_eq!(for_good.resume(), None);
    }

    #[test]
    fn a_stop_leaves_the_task_running_and_a_user_cancel_ends_it() {
        let stop = Error::new(Code::Cancelled, "stopped");
        let mut state = running(5);
        let settled = state.settle(Err(stop.clone()), false, 2).unwrap();
        assert_eq!((state.phase(), settled.discard), (Phase::Running, false));
        assert!(state.interrupted());
        assert_eq!(state.phase(), Phase::Pending);
        assert_eq!(state.progress().done, 5);

        let mut state = running(5);
        state.checkpoint(ResumeState {
            folder_done: vec![DoneObject {
                key: "p/a".into(),
                etag: "e".into(),
                file: file(1),
            }],
            ..partial()
        });
        let settled = state.settle(Err(stop), true, 2).unwrap();
        assert!(settled.discard);
        assert_eq!(state.phase(), Phase::Cancelled);
        let kept = state.resume().unwrap();
        assert_eq!(
            (kept.staging_name.as_str(), kept.folder_done.len()),
            ("", 1)
        );
    }

    #[test]
    fn states_round_trip_through_json_with_their_phase_as_key() {
        let state = running(5);
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.starts_with(r#"{"RUNNING":{"StartedMs":1,"#), "{text}");
        assert_eq!(serde_json::from_str::<TaskState>(&text).unwrap(), state);
    }
}
