//! The journal: one JSON file per task in `STATE_DIR/tasks`, each replaced durably (write a
//! temporary file, fsync, rename, fsync the folder) so a crash leaves either the old or the new
//! record, never a torn one. Files are 0600: a record may hold STS credentials for resume.
//!
//! Beside a record, a folder send's [`landed_log`] (`TASKID.landed`) holds the objects landed
//! since the record was last written whole. The record is authoritative for what it holds,
//! the log for what came after; both are unions of "this object landed", so replaying a log
//! twice changes nothing. Loading merges each log into its record, saves the record, then
//! removes the log (a crash between the two leaves both, and the next load merges again);
//! the worker does the same when a run ends. A log whose record is gone is removed.

use super::landed_log::{self, FolderOrigin, LandedLog};
use crate::error::{Code, Error, Result};
use crate::paths::{check_file_name, check_final_name, is_reserved, DevicePath};
use crate::task::payload;
use crate::task::record::TaskRecord;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating) the journal and loads every record; unreadable ones are set aside as
    /// `*.corrupt`, and readable ones that break a rule of intake (a TaskId that could walk
    /// out of `tasks/`, a record filed under another task's name, a path intake refuses) as
    /// `*.bad`, each with a warning rather than stopping the daemon. No set-aside record is
    /// ever used to build a path. Landed paths (result files, a folder's landed objects) must
    /// lie inside `allowed_roots` (the configured ones) with no staging name on the way.
    pub fn open(state_dir: &Path, allowed_roots: &[String]) -> Result<(Journal, Vec<TaskRecord>)> {
        let allowed: Vec<DevicePath> = allowed_roots
            .iter()
            .filter_map(|r| DevicePath::parse(r).ok())
            .collect();
        let dir = state_dir.join("tasks");
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating journal folder", &dir, &e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("securing journal folder", &dir, &e))?;
        let journal = Journal { dir: dir.clone() };
        let mut records = Vec::new();
        let mut logs = Vec::new();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("listing journal", &dir, &e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io("listing journal", &dir, &e))?
                .path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                // A temporary file is a save that never completed: the old record stands.
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                Some(landed_log::EXTENSION) => {
                    logs.push(path);
                    continue;
                }
                _ => continue,
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| TaskRecord::decode(&bytes))
            {
                Ok(mut record) => match check_record(&record, &path, &allowed)
                    .and_then(|()| journal.replay_log(&mut record))
                    .and_then(|replayed| check_record(&record, &path, &allowed).map(|()| replayed))
                {
                    Ok(replayed) => {
                        if replayed {
                            journal.compact(&record);
                        }
                        records.push(record);
                    }
                    Err(why) => {
                        tracing::warn!(path = %path.display(), %why, "invalid task record set aside as .bad");
                        let _ = fs::rename(&path, path.with_extension("bad"));
                    }
                },
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "unreadable task record set aside");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        // Logs whose record was set aside, or removed by a prune that a crash interrupted.
        let kept: HashSet<&str> = records.iter().map(|r| r.task_id.as_str()).collect();
        for log in logs {
            let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            if !kept.contains(stem) {
                tracing::info!(path = %log.display(), "removing a landed log without a task record");
                let _ = fs::remove_file(&log);
            }
        }
        records.sort_by_key(|r| r.created_ms);
        Ok((journal, records))
    }

    /// Merges the task's landed log, if any, into its record (in memory). Returns whether
    /// there was a log; a finished record that keeps no resume state (SUCCESS) ignores it.
    fn replay_log(&self, record: &mut TaskRecord) -> std::result::Result<bool, String> {
        let path = landed_log::path_in(&self.dir, &record.task_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("reading its landed log {}: {e}", path.display())),
        };
        let replayed = landed_log::replay(&bytes, &record.task_id);
        if let Some(why) = &replayed.dropped {
            tracing::warn!(task = %record.task_id, %why, "landed log cut short; those objects are fetched again");
        }
        record.state.remember_landed(replayed.landed);
        Ok(true)
    }

    /// Saves a record holding everything its log held, then removes the log. A failure
    /// keeps the log (the next load merges it again); the record in memory is complete.
    fn compact(&self, record: &TaskRecord) {
        let saved = self
            .save(record)
            .and_then(|()| self.remove_log(&record.task_id));
        if let Err(e) = saved {
            tracing::warn!(task = %record.task_id, error = %e, "cannot merge a landed log into its record; it is merged again on the next start");
        }
    }

    /// Starts the landed log of a run of `task_id` (see [`LandedLog::create`]).
    pub fn start_log(
        &self,
        task_id: &str,
        origin: FolderOrigin,
        sync_bytes: u64,
    ) -> Result<LandedLog> {
        payload::check_task_id(task_id)?;
        let path = landed_log::path_in(&self.dir, task_id);
        LandedLog::create(path.clone(), task_id, origin, sync_bytes)
            .map_err(|e| Error::io("starting the landed log", &path, &e))
    }

    /// Removes a task's landed log, once a saved record holds what it held.
    pub fn remove_log(&self, task_id: &str) -> Result<()> {
        payload::check_task_id(task_id)?;
        let path = landed_log::path_in(&self.dir, task_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing the landed log", &path, &e)),
        }
    }

    /// The record file of a task; the id is checked again so no caller can make a journal
    /// path from an unchecked one.
    fn path_of(&self, task_id: &str) -> Result<PathBuf> {
        payload::check_task_id(task_id)?;
        Ok(self.dir.join(format!("{task_id}.json")))
    }

    /// Replaces the record of `record.task_id` durably.
    pub fn save(&self, record: &TaskRecord) -> Result<()> {
        let path = self.path_of(&record.task_id)?;
        let tmp = path.with_extension("tmp");
        // Compact: the record of a large folder lists every file, and indentation made it
        // a third larger (`jq .` shows it indented).
        let bytes = serde_json::to_vec(record)
            .map_err(|e| Error::new(Code::Internal, format!("encoding task record: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io("saving task record", &path, &e))
    }

    /// Removes a task's record, its landed log first (a log never outlives its record).
    pub fn remove(&self, task_id: &str) -> Result<()> {
        let path = self.path_of(task_id)?;
        self.remove_log(task_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing task record", &path, &e)),
        }
    }
}

/// Why a loaded record must not be used, if it must not: every field that names a file is
/// checked with intake's rules, and the record must be filed under its own TaskId.
fn check_record(
    record: &TaskRecord,
    file: &Path,
    allowed: &[DevicePath],
) -> std::result::Result<(), String> {
    payload::check_task_id(&record.task_id).map_err(|e| e.message)?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem != record.task_id {
        return Err(format!(
            "the record of TaskId {:?} is filed as {stem:?}",
            record.task_id
        ));
    }
    if record
        .payload
        .task_id
        .as_deref()
        .is_some_and(|id| id != record.task_id)
    {
        return Err("its payload names another TaskId".into());
    }
    payload::check_stored(&record.payload).map_err(|e| e.message)?;
    if let Some(resume) = record.state.resume() {
        let name = &resume.staging_name;
        if !name.is_empty() && (check_file_name(name).is_err() || !is_reserved(name)) {
            return Err(format!("its staging name {name:?} is not a staging name"));
        }
        for done in &resume.folder_done {
            check_landed(&done.file.path, allowed)
                .map_err(|why| format!("a landed file: {why}"))?;
        }
    }
    for file in record.state.result().iter().flat_map(|r| &r.files) {
        check_landed(&file.path, allowed).map_err(|why| format!("a result file: {why}"))?;
    }
    Ok(())
}

/// A path a task says it landed a file at: absolute, every component a final name (never a
/// staging file), strictly inside one of `allowed`.
fn check_landed(text: &str, allowed: &[DevicePath]) -> std::result::Result<(), String> {
    let path = DevicePath::parse(text)?;
    for name in path.components() {
        check_final_name(name).map_err(|why| format!("{text:?}: component {name:?}: {why}"))?;
    }
    let inside = allowed
        .iter()
        .any(|root| path.starts_with(root) && path.components().len() > root.components().len());
    if !inside {
        return Err(format!("{text:?} is not inside an allowed root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Vec<String> {
        crate::config::ANDROID_ROOTS
            .iter()
            .map(|r| r.to_string())
            .collect()
    }
    use crate::task::payload::TaskPayload;
    use crate::task::record::{Phase, ResumeState};
    use crate::task::state::TaskState;

    fn running(resume: Option<ResumeState>) -> TaskState {
        TaskState::Running {
            started_ms: 1,
            progress: Default::default(),
            resume,
        }
    }

    #[test]
    fn saves_loads_and_sets_aside_corrupt_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, records) = Journal::open(tmp.path(), &roots()).unwrap();
        assert!(records.is_empty());
        let payload = TaskPayload {
            source_file_path: "/sdcard/Download/a.bin".into(),
            upload_type: "DOWNLOAD_URL".into(),
            upload_url: "https://example.com/a.bin".into(),
            ..TaskPayload::default()
        };
        let mut rec = TaskRecord::new("t-1".into(), payload, vec![]);
        rec.state = running(None);
        journal.save(&rec).unwrap();
        let mode = fs::metadata(tmp.path().join("tasks/t-1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(tmp.path().join("tasks/t-2.json"), b"{not json").unwrap();
        fs::write(tmp.path().join("tasks/t-3.tmp"), b"half").unwrap();
        let (_, records) = Journal::open(tmp.path(), &roots()).unwrap();
        assert_eq!(records, vec![rec]);
        assert!(tmp.path().join("tasks/t-2.corrupt").exists());
        assert!(!tmp.path().join("tasks/t-3.tmp").exists());
    }

    /// A record is JSON anyone with the state folder could plant: its TaskId must not walk
    /// out of `tasks/` when the record is saved again, nor its payload name a path intake
    /// refuses.
    #[test]
    fn planted_records_with_unsafe_fields_are_set_aside_and_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), &roots()).unwrap();
        let good = TaskPayload {
            source_file_path: "/sdcard/Download/a.bin".into(),
            upload_type: "DOWNLOAD_URL".into(),
            upload_url: "https://example.com/a.bin".into(),
            ..TaskPayload::default()
        };
        let ok = TaskRecord::new("t-ok".into(), good.clone(), vec![]);
        journal.save(&ok).unwrap();
        let plant = |file: &str, id: &str, payload: TaskPayload, staging: Option<&str>| {
            let mut rec = TaskRecord::new(id.into(), payload, vec![]);
            rec.state = running(staging.map(|s| ResumeState {
                staging_name: s.into(),
                ..Default::default()
            }));
            fs::write(
                tmp.path().join("tasks").join(file),
                serde_json::to_vec(&rec).unwrap(),
            )
            .unwrap();
        };
        plant("escape.json", "../../x", good.clone(), None);
        plant("other.json", "t-ok2", good.clone(), None);
        plant(
            "t-path.json",
            "t-path",
            TaskPayload {
                source_file_path: "/sdcard/../../etc/x".into(),
                ..good.clone()
            },
            None,
        );
        plant(
            "t-stage.json",
            "t-stage",
            TaskPayload {
                source_file_path: "/sdcard/Download/.ferry-t-ok.part".into(),
                ..good.clone()
            },
            None,
        );
        plant("t-name.json", "t-name", good.clone(), Some("../../x"));
        let mut other_id = good.clone();
        other_id.task_id = Some("t-ok".into());
        plant("t-mixed.json", "t-mixed", other_id, None);
        let (journal, records) = Journal::open(tmp.path(), &roots()).unwrap();
        assert_eq!(records, vec![ok]);
        for bad in ["escape", "other", "t-path", "t-stage", "t-name", "t-mixed"] {
            let aside = tmp.path().join(format!("tasks/{bad}.bad"));
            assert!(aside.exists(), "{bad} was not set aside");
        }
        assert!(!tmp.path().join("x").exists() && !tmp.path().join("x.json").exists());
        // And no caller can make the journal write outside its folder.
        let mut escape = TaskRecord::new("../../x".into(), good, vec![]);
        escape.state = running(None);
        assert_eq!(journal.save(&escape).unwrap_err().code, Code::InvalidTaskId);
        assert!(journal.remove("../x").is_err());
        assert!(!tmp.path().parent().unwrap().join("x.json").exists());
    }

    /// A landed path read back must be one ferry could have written: AutoInstall reads it.
    #[test]
    fn landed_paths_outside_the_roots_or_on_staging_names_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), &roots()).unwrap();
        let payload = TaskPayload {
            source_file_path: "/sdcard/Download/a.bin".into(),
            upload_type: "DOWNLOAD_URL".into(),
            upload_url: "https://example.com/a.bin".into(),
            ..TaskPayload::default()
        };
        let file = |path: &str| crate::task::record::FileResult {
            path: path.into(),
            size: 1,
            sha256: String::new(),
            content_encoding: None,
        };
        let cases = [
            ("ok", "/sdcard/Download/a.bin"),
            ("outside", "/data/data/com.victim/secret.db"),
            ("root", "/sdcard"),
            ("staging", "/sdcard/Download/.ferry-t2-0123456789ab.part"),
            ("staged-dir", "/sdcard/.FERRY-x/a.bin"),
        ];
        for (id, path) in cases {
            let mut rec = TaskRecord::new(format!("r-{id}"), payload.clone(), vec![]);
            rec.state = TaskState::Success {
                started_ms: None,
                finished_ms: 1,
                result: crate::task::record::TaskResult {
                    files: vec![file(path)],
                    install: None,
                    notes: vec![],
                },
            };
            journal.save(&rec).unwrap();
            let mut rec = TaskRecord::new(format!("f-{id}"), payload.clone(), vec![]);
            rec.state = running(Some(ResumeState {
                folder_done: vec![crate::task::record::DoneObject {
                    key: "p/a.bin".into(),
                    etag: "e".into(),
                    file: file(path),
                }],
                ..Default::default()
            }));
            journal.save(&rec).unwrap();
        }
        let (_, records) = Journal::open(tmp.path(), &roots()).unwrap();
        let mut kept: Vec<&str> = records.iter().map(|r| r.task_id.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["f-ok", "r-ok"]);
        for (id, _) in &cases[1..] {
            for kind in ["r", "f"] {
                let aside = tmp.path().join(format!("tasks/{kind}-{id}.bad"));
                assert!(aside.exists(), "{kind}-{id} was not set aside");
            }
        }
    }

    fn folder_task(id: &str, state: TaskState) -> TaskRecord {
        let payload = TaskPayload {
            source_file_path: "/sdcard/Download".into(),
            upload_type: "DOWNLOAD_URL".into(),
            upload_url: "https://example.com/a.bin".into(),
            ..TaskPayload::default()
        };
        let mut rec = TaskRecord::new(id.into(), payload, vec![]);
        rec.state = state;
        rec
    }

    fn origin() -> FolderOrigin {
        FolderOrigin {
            prefix: "send/p/".into(),
            base: "/sdcard/Download/p".into(),
        }
    }

    fn done(name: &str) -> crate::task::record::DoneObject {
        crate::task::record::DoneObject {
            key: format!("send/p/{name}"),
            etag: format!("\"{name}\""),
            file: crate::task::record::FileResult {
                path: format!("/sdcard/Download/p/{name}"),
                size: 4,
                sha256: "ab".repeat(32),
                content_encoding: None,
            },
        }
    }

    fn keys(record: &TaskRecord) -> Vec<String> {
        let resume = record.state.resume().expect("resume state");
        resume.folder_done.iter().map(|d| d.key.clone()).collect()
    }

    fn on_disk(state: &Path, id: &str) -> TaskRecord {
        TaskRecord::decode(&fs::read(state.join(format!("tasks/{id}.json"))).unwrap()).unwrap()
    }

    /// kill -9 mid-folder: the record holds what it held when last written whole, the log
    /// what landed since (its last line torn). Loading merges the intact lines, writes the
    /// record, removes the log; a crash between those two steps merges again, to the same.
    #[test]
    fn a_landed_log_is_merged_into_its_record_on_load_even_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), &roots()).unwrap();
        let base = ResumeState {
            folder_done: vec![done("a")],
            ..Default::default()
        };
        journal
            .save(&folder_task("t-f", running(Some(base))))
            .unwrap();
        let mut log = journal.start_log("t-f", origin(), 64 << 20).unwrap();
        for name in ["b", "a", "c"] {
            log.append(&done(name)).unwrap();
        }
        drop(log);
        let log_path = tmp.path().join("tasks/t-f.landed");
        let intact = fs::read(&log_path).unwrap();
        let mut torn = intact.clone();
        torn.extend_from_slice(&intact[intact.len() - 60..intact.len() - 1]);
        fs::write(&log_path, &torn).unwrap();

        let (_, records) = Journal::open(tmp.path(), &roots()).unwrap();
        assert_eq!(keys(&records[0]), ["send/p/a", "send/p/b", "send/p/c"]);
        assert!(!log_path.exists(), "the log outlived its compaction");
        assert_eq!(on_disk(tmp.path(), "t-f"), records[0]);

        // The crash between "record saved" and "log removed": the same log is back.
        fs::write(&log_path, &intact).unwrap();
        let (_, again) = Journal::open(tmp.path(), &roots()).unwrap();
        assert_eq!(again, records);
        assert!(!log_path.exists());
    }

    #[test]
    fn logs_of_finished_removed_or_unsafe_records_are_never_merged() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), &roots()).unwrap();
        let success = TaskState::Success {
            started_ms: None,
            finished_ms: 1,
            result: Default::default(),
        };
        journal.save(&folder_task("t-ok", success.clone())).unwrap();
        journal
            .start_log("t-ok", origin(), 1)
            .unwrap()
            .append(&done("a"))
            .unwrap();
        // A log whose record is gone (a prune cut short), and one of a record set aside.
        journal
            .start_log("t-gone", origin(), 1)
            .unwrap()
            .append(&done("a"))
            .unwrap();
        journal.save(&folder_task("t-evil", running(None))).unwrap();
        let escape = FolderOrigin {
            prefix: "send/p/".into(),
            base: "/data/data/com.victim".into(),
        };
        let mut evil = done("secret.db");
        evil.file.path = "/data/data/com.victim/secret.db".into();
        journal
            .start_log("t-evil", escape, 1)
            .unwrap()
            .append(&evil)
            .unwrap();

        let (journal, records) = Journal::open(tmp.path(), &roots()).unwrap();
        let kept: Vec<_> = records
            .iter()
            .map(|r| (r.task_id.as_str(), &r.state))
            .collect();
        assert_eq!(kept, [("t-ok", &success)]);
        assert!(tmp.path().join("tasks/t-evil.bad").exists());
        for id in ["t-ok", "t-gone", "t-evil"] {
            assert!(
                !tmp.path().join(format!("tasks/{id}.landed")).exists(),
                "{id}"
            );
        }
        // Removing a record removes its log first.
        journal.start_log("t-ok", origin(), 1).unwrap();
        journal.remove("t-ok").unwrap();
        assert!(!tmp.path().join("tasks/t-ok.landed").exists());
        assert!(!tmp.path().join("tasks/t-ok.json").exists());
    }

    /// Records written by earlier builds must keep loading (STYLE: keep old journal files).
    #[test]
    fn loads_version_1_records() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1");
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("tasks")).unwrap();
        for entry in fs::read_dir(&fixtures).unwrap() {
            let path = entry.unwrap().path();
            fs::copy(
                &path,
                tmp.path().join("tasks").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
        let (_, records) = Journal::open(tmp.path(), &roots()).unwrap();
        assert_eq!(records.len(), 3);
        // Written before AutoInstall worked: the install result reads back as it was.
        let old = records
            .iter()
            .find(|r| r.task_id == "t-autoinstall")
            .unwrap();
        let install = old.state.result().unwrap().install.as_ref().unwrap();
        assert_eq!(
            install.error_code,
            Some(crate::error::Code::UnsupportedAutoInstall.into())
        );
        assert_eq!(install.package, None);
        assert!(records
            .iter()
            .any(|r| r.phase() == Phase::Running && r.state.resume().is_some()));
        assert!(records
            .iter()
            .any(|r| r.phase() == Phase::Success && r.state.result().is_some()));
    }
}
