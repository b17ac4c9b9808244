//! The journal: one JSON file per task in `STATE_DIR/tasks`, each replaced durably (write a
//! temporary file, fsync, rename, fsync the folder) so a crash leaves either the old or the new
//! record, never a torn one. Files are 0600: a record may hold STS credentials for resume.

use crate::error::{Code, Error, Result};
use crate::task::TaskRecord;
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
    /// `*.corrupt` with a warning rather than stopping the daemon.
    pub fn open(state_dir: &Path) -> Result<(Journal, Vec<TaskRecord>)> {
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
                .and_then(|bytes| {
                    serde_json::from_slice::<TaskRecord>(&bytes).map_err(|e| e.to_string())
                }) {
                Ok(record) => records.push(record),
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "unreadable task record set aside");
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        records.sort_by_key(|r| r.created_ms);
        Ok((Journal { dir }, records))
    }

    fn path_of(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{task_id}.json"))
    }

    /// Replaces the record of `record.task_id` durably.
    pub fn save(&self, record: &TaskRecord) -> Result<()> {
        let path = self.path_of(&record.task_id);
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
        let path = self.path_of(task_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing task record", &path, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::TaskPayload;
    use crate::task::Phase;

    #[test]
    fn saves_loads_and_sets_aside_corrupt_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, records) = Journal::open(tmp.path()).unwrap();
        assert!(records.is_empty());
        let mut rec = TaskRecord::new("t-1".into(), TaskPayload::default(), vec![]);
        rec.phase = Phase::Running;
        journal.save(&rec).unwrap();
        let mode = fs::metadata(tmp.path().join("tasks/t-1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(tmp.path().join("tasks/t-2.json"), b"{not json").unwrap();
        fs::write(tmp.path().join("tasks/t-3.tmp"), b"half").unwrap();
        let (_, records) = Journal::open(tmp.path()).unwrap();
        assert_eq!(records, vec![rec]);
        assert!(tmp.path().join("tasks/t-2.corrupt").exists());
        assert!(!tmp.path().join("tasks/t-3.tmp").exists());
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
        let (_, records) = Journal::open(tmp.path()).unwrap();
        assert_eq!(records.len(), 3);
        // Written before AutoInstall worked: the install result reads back as it was.
        let old = records
            .iter()
            .find(|r| r.task_id == "t-autoinstall")
            .unwrap();
        let install = old.result.as_ref().unwrap().install.as_ref().unwrap();
        assert_eq!(
            install.error_code,
            Some(crate::error::Code::UnsupportedAutoInstall.into())
        );
        assert_eq!(install.package, None);
        assert!(records
            .iter()
            .any(|r| r.phase == Phase::Running && r.resume.is_some()));
        assert!(records
            .iter()
            .any(|r| r.phase == Phase::Success && r.result.is_some()));
    }
}
