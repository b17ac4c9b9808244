//! Reading journal records of version 1, written before states carried their data: a
//! data-less `Phase` beside flat fields whose meaning depended on it. Each is read into the
//! [`TaskState`] it stood for, so a daemon upgraded mid-transfer resumes as before.

use super::record::{Phase, ResumeState, TaskRecord, TaskResult};
use super::state::{Progress, TaskState};
use crate::error::{Code, TaskCode};
use crate::task::payload::TaskPayload;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordV1 {
    task_id: String,
    payload: TaskPayload,
    phase: Phase,
    bytes_done: u64,
    bytes_total: Option<u64>,
    #[serde(default)]
    error_code: Option<TaskCode>,
    #[serde(default)]
    error_msg: Option<String>,
    #[serde(default)]
    result: Option<TaskResult>,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    resume: Option<ResumeState>,
    created_ms: u64,
    #[serde(default)]
    started_ms: Option<u64>,
    #[serde(default)]
    finished_ms: Option<u64>,
    updated_ms: u64,
}

pub(super) fn read(bytes: &[u8]) -> Result<TaskRecord, String> {
    let old: RecordV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let progress = Progress {
        done: old.bytes_done,
        total: old.bytes_total,
    };
    let started_ms = old.started_ms;
    let finished_ms = old.finished_ms.unwrap_or(old.updated_ms);
    let message = old.error_msg.unwrap_or_default();
    let state = match old.phase {
        Phase::Pending => TaskState::Pending {
            progress,
            resume: old.resume,
        },
        Phase::Running => TaskState::Running {
            started_ms: started_ms.unwrap_or(old.updated_ms),
            progress,
            resume: old.resume,
        },
        Phase::Installing => TaskState::Installing {
            started_ms: started_ms.unwrap_or(old.updated_ms),
            landed: old.result.unwrap_or_default(),
            resume: old.resume,
        },
        Phase::Success => TaskState::Success {
            started_ms,
            finished_ms,
            result: old.result.unwrap_or_default(),
        },
        Phase::Failed => TaskState::Failed {
            started_ms,
            finished_ms,
            code: old.error_code.unwrap_or(Code::Internal.into()),
            message,
            progress,
            result: old.result,
            resume: old.resume,
        },
        Phase::Cancelled => TaskState::Cancelled {
            started_ms,
            finished_ms,
            message,
            progress,
            resume: old.resume,
        },
    };
    Ok(TaskRecord {
        version: super::record::RECORD_VERSION,
        task_id: old.task_id,
        payload: old.payload,
        notes: old.notes,
        created_ms: old.created_ms,
        updated_ms: old.updated_ms,
        state,
    })
}
