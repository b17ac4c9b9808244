//! The task record: what the journal stores and the API shows for one SendFile task.
//!
//! Status mirrors the cloud API's DescribeTasks (`TaskStatus` Processing/Finished/Failed) so a
//! control plane can read it unchanged, with ferry's finer `Phase` beside it.

use super::state::TaskState;
use crate::error::{Code, TaskCode};
use crate::task::payload::TaskPayload;
use crate::timefmt::{rfc3339, unix_millis_now};
use serde::{Deserialize, Serialize};

/// Journal format version; bump it when a field changes meaning, and keep loading old ones.
pub const RECORD_VERSION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Pending,
    Running,
    Installing,
    Success,
    Failed,
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Installing,
        Phase::Success,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Success | Phase::Failed | Phase::Cancelled)
    }

    /// The name as the wire shows it (`PENDING`, `SUCCESS`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Installing => "INSTALLING",
            Phase::Success => "SUCCESS",
            Phase::Failed => "FAILED",
            Phase::Cancelled => "CANCELLED",
        }
    }

    /// The coarse status of the cloud API's DescribeTasks.
    pub fn task_status(self) -> &'static str {
        match self {
            Phase::Pending | Phase::Running | Phase::Installing => "Processing",
            Phase::Success => "Finished",
            Phase::Failed | Phase::Cancelled => "Failed",
        }
    }
}

/// One file that landed under its final name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FileResult {
    /// Device path of the final file.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The Content-Encoding the file was sent with and saved in (the task's notes say so);
    /// not part of the API's file record.
    #[serde(skip)]
    pub content_encoding: Option<String>,
}

/// What the install step did; set only when AutoInstall was requested.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstallResult {
    /// `None` when pm installed the package; else why not (`Install.*`).
    pub error_code: Option<TaskCode>,
    /// What happened, for a person: the package and version, or what to do about a failure.
    pub message: String,
    /// From the APK's binary manifest, once it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_code: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_name: Option<String>,
    /// The APKs given to pm, base first (`base.apk`, `split_config.fr.apk`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apks: Vec<String>,
    /// XAPK expansion files placed under the OBB folder (device paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obb_files: Vec<String>,
    /// pm's own verdict line (`Success`, `Failure [INSTALL_FAILED_…: …]`, `Error: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_output: Option<String>,
}

impl InstallResult {
    /// The code that fails the task: every install error except `Install.NotAnApk`, which
    /// only says there was nothing to install (the transfer itself succeeded).
    pub fn failure(&self) -> Option<&TaskCode> {
        self.error_code
            .as_ref()
            .filter(|c| **c != Code::InstallNotAnApk)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskResult {
    pub files: Vec<FileResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallResult>,
    /// Steps after the transfer that did not work but do not fail the task, such as a media
    /// scan whose command is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a RUNNING task needs to pick up its partial data after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResumeState {
    /// Name of the hidden staging file inside the target folder.
    pub staging_name: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub total: Option<u64>,
    /// Bytes known to be on stable storage (fsync'd); after a reboot only these are trusted.
    pub durable_bytes: u64,
    /// Kernel boot id when `durable_bytes` was written: same boot means the page cache
    /// survived a process kill and the whole staging file can be trusted. Empty for a
    /// parallel transfer, whose file has holes: only `parts` say what is there.
    pub boot_id: String,
    /// Bytes per part of a parallel transfer; 0 for a single stream (and in records written
    /// before parallel transfers existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part_size: u64,
    /// Durable bytes of each part from its start, fsync'd before they were recorded. Part `i`
    /// starts at `i * part_size`. `durable_bytes` then holds the contiguous durable prefix, so
    /// a build that knows nothing of parts still resumes correctly from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
    /// Folder sends: objects already in place, skipped on resume while their ETag holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folder_done: Vec<DoneObject>,
    /// Folder sends: the key of the object the partial data belongs to, so that a restart
    /// hands it to that object only (never to another one fetched first, such as a landed
    /// object fetched again). None in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_key: Option<String>,
}

impl ResumeState {
    /// What survives when the partial file is dropped: the folder objects already in place,
    /// which a re-submit still skips (they are complete, verified files).
    pub fn landed_only(self) -> Option<ResumeState> {
        (!self.folder_done.is_empty()).then(|| ResumeState {
            folder_done: self.folder_done,
            ..ResumeState::default()
        })
    }
}

/// One object of a folder send that landed, as remembered for resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DoneObject {
    pub key: String,
    pub etag: String,
    pub file: FileResult,
}

impl ResumeState {
    /// Whether this is the state of a parallel transfer (its staging file has holes).
    pub fn is_parallel(&self) -> bool {
        self.part_size > 0 && !self.parts.is_empty()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The durable record of one task, as kept in the journal: what was asked (`payload`), what
/// a person should know (`notes`) and where the task is (`state`, which carries its data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRecord {
    pub version: u32,
    pub task_id: String,
    /// The payload as submitted; the journal file is 0600 because it may carry credentials.
    pub payload: TaskPayload,
    /// Remarks a person should see, such as "TargetFileName has no effect for DOWNLOAD_URL".
    #[serde(default)]
    pub notes: Vec<String>,
    /// Times are milliseconds since the Unix epoch (UTC).
    pub created_ms: u64,
    pub updated_ms: u64,
    pub state: TaskState,
}

impl TaskRecord {
    /// Reads a journal record of this build or, failing that, of version 1 (flat fields
    /// beside a data-less `Phase`, see [`super::record_v1`]). Straight from the bytes, no
    /// intermediate JSON tree: the phone binary pays for one deserializer per format only.
    pub fn decode(bytes: &[u8]) -> Result<TaskRecord, String> {
        match serde_json::from_slice::<TaskRecord>(bytes) {
            Ok(record) => Ok(record),
            Err(current) => super::record_v1::read(bytes).map_err(|_| current.to_string()),
        }
    }

    pub fn new(task_id: String, payload: TaskPayload, notes: Vec<String>) -> Self {
        let now = unix_millis_now();
        TaskRecord {
            version: RECORD_VERSION,
            task_id,
            payload,
            notes,
            created_ms: now,
            updated_ms: now,
            state: TaskState::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Applies a transition of [`TaskState`] and stamps the record as updated.
    pub fn update<T>(&mut self, change: impl FnOnce(&mut TaskState, u64) -> T) -> T {
        let now = unix_millis_now();
        self.updated_ms = now;
        change(&mut self.state, now)
    }

    /// When the task ended, or when it was last touched if it has not.
    pub fn finished_or_updated_ms(&self) -> u64 {
        self.state.finished_ms().unwrap_or(self.updated_ms)
    }

    /// Progress in whole percent; unknown totals report 0 until the end.
    pub fn percent(&self) -> u8 {
        let progress = self.state.progress();
        match (self.phase(), progress.total) {
            (Phase::Success, _) => 100,
            (_, Some(0)) | (_, None) => 0,
            (_, Some(total)) => ((progress.done.min(total) * 100) / total) as u8,
        }
    }

    /// The API view: secrets removed, times as RFC 3339 UTC.
    pub fn view(&self) -> TaskView {
        let phase = self.phase();
        let progress = self.state.progress();
        let error = self.state.error();
        TaskView {
            task_id: self.task_id.clone(),
            client_token: self.payload.client_token.clone(),
            task_status: phase.task_status().to_string(),
            phase,
            progress: self.percent(),
            bytes_done: progress.done,
            bytes_total: progress.total,
            error_code: error.as_ref().map(|(code, _)| code.clone()),
            error_msg: error.map(|(_, message)| message.to_string()),
            result: self.state.result().cloned(),
            notes: self.notes.clone(),
            payload: self.payload.redacted(),
            creation_time: rfc3339(self.created_ms),
            start_time: self.state.started_ms().map(rfc3339),
            finish_time: self.state.finished_ms().map(rfc3339),
        }
    }
}

/// A task as the API returns it (DescribeTasks field names, plus ferry's own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskView {
    pub task_id: String,
    pub client_token: Option<String>,
    /// Processing / Finished / Failed, as the cloud API's DescribeTasks reports.
    pub task_status: String,
    pub phase: Phase,
    pub progress: u8,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub error_code: Option<TaskCode>,
    pub error_msg: Option<String>,
    pub result: Option<TaskResult>,
    pub notes: Vec<String>,
    pub payload: TaskPayload,
    pub creation_time: String,
    pub start_time: Option<String>,
    pub finish_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_states_without_parts_still_load_and_parts_round_trip() {
        let old = r#"{"StagingName":".p","Etag":"\"e\"","LastModified":null,"Total":10,
            "DurableBytes":4,"BootId":"b"}"#;
        let state: ResumeState = serde_json::from_str(old).unwrap();
        assert!(!state.is_parallel());
        assert_eq!((state.part_size, state.parts.len()), (0, 0));
        let text = serde_json::to_string(&state).unwrap();
        assert!(
            !text.contains("Parts"),
            "single-stream records keep their old form: {text}"
        );
        let parallel = ResumeState {
            part_size: 4,
            parts: vec![4, 1, 0],
            ..state
        };
        let text = serde_json::to_string(&parallel).unwrap();
        assert!(text.contains(r#""PartSize":4,"Parts":[4,1,0]"#), "{text}");
        let back: ResumeState = serde_json::from_str(&text).unwrap();
        assert!(back.is_parallel());
        assert_eq!(back, parallel);
    }
}
