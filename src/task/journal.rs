//! The journal: one JSON file per task in `STATE_DIR/tasks`, each replaced durably (write a
//! temporary file, fsync, rename, fsync the folder) so a crash leaves either the old or the new
//! record, never a torn one. Files are 0600: a record may hold STS credentials for resume.

use crate::error::{Code, Error, Result};
use crate::paths::{check_file_name, check_final_name, is_reserved, DevicePath};
use crate::task::payload;
use crate::task::record::TaskRecord;
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
        let mut records = Vec::new();
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
                _ => continue,
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| TaskRecord::decode(&bytes))
            {
                Ok(record) => match check_record(&record, &path, &allowed) {
                    Ok(()) => records.push(record),
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
        records.sort_by_key(|r| r.created_ms);
        Ok((Journal { dir }, records))
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
        let bytes = serde_json::to_vec_pretty(record)
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

    pub fn remove(&self, task_id: &str) -> Result<()> {
        let path = self.path_of(task_id)?;
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
