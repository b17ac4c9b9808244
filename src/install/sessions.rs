//! Open pm sessions, on disk: `STATE_DIR/install/TASK_ID.session` holds the id of the session
//! a task's install created, written durably (temporary file, fsync, rename, fsync the
//! folder) after `install-create` answered and before the first `install-write`, removed once
//! the session was committed or abandoned. A daemon killed in between leaves the file: on the
//! next start (and before that task's install runs again) the session is abandoned, so pm
//! does not keep a half-written session counting against its limit while a second one is
//! created. Blocking: call from `spawn_blocking`.
//!
//! Left open: a kill between pm creating the session and this record being written (pm has
//! no command to list the sessions of a caller, so that one is not found again).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".session";

/// The records of one state folder.
#[derive(Clone, Debug)]
pub struct Sessions {
    /// `STATE_DIR/install`.
    dir: PathBuf,
}

impl Sessions {
    pub fn new(install_dir: PathBuf) -> Sessions {
        Sessions { dir: install_dir }
    }

    fn path_of(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{task_id}{SUFFIX}"))
    }

    /// Records that `task_id` has session `id` open; durable when it returns.
    pub fn record(&self, task_id: &str, id: u32) -> Result<()> {
        let path = self.path_of(task_id);
        let tmp = self.dir.join(format!(".{task_id}{SUFFIX}.tmp"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let mut file = File::create(&tmp)?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("recording the open pm session in", &path, &e)
        })
    }

    /// The session `task_id` left open, if any (an unreadable record counts as none).
    pub fn recorded(&self, task_id: &str) -> Option<u32> {
        read_id(&self.path_of(task_id))
    }

    /// Every recorded session: task id and session id.
    pub fn all(&self) -> Vec<(String, u32)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(String, u32)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let task = name.strip_suffix(SUFFIX)?;
                if task.starts_with('.') {
                    return None;
                }
                Some((task.to_string(), read_id(&e.path())?))
            })
            .collect();
        found.sort();
        found
    }

    /// Whether `name` (an entry of the folder) is a record, kept by [`super::clean_stale`]
    /// when its session could not be abandoned.
    pub fn is_record(name: &str) -> bool {
        name.ends_with(SUFFIX) && !name.starts_with('.')
    }

    /// Drops the record once its session was committed or abandoned.
    pub fn forget(&self, task_id: &str) {
        let path = self.path_of(task_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Ok(dir) = File::open(&self.dir) {
                    let _ = dir.sync_all();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot remove {}", path.display()),
        }
    }
}

fn read_id(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_session_is_found_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path().join("install"));
        assert_eq!(sessions.recorded("t-1"), None);
        sessions.record("t-1", 1017).unwrap();
        sessions.record("t-2", 1034).unwrap();
        sessions.record("t-1", 1051).unwrap();
        assert_eq!(sessions.recorded("t-1"), Some(1051));
        assert_eq!(
            sessions.all(),
            [("t-1".to_string(), 1051), ("t-2".to_string(), 1034)]
        );
        sessions.forget("t-1");
        sessions.forget("t-1");
        assert_eq!(sessions.all(), [("t-2".to_string(), 1034)]);
        assert!(Sessions::is_record("t-2.session"));
        assert!(!Sessions::is_record(".t-2.session.tmp"));
        assert!(!Sessions::is_record("t-2"));
    }
}
