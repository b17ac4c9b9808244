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

    /// The session `task_id` left open, if any (a record that is not valid counts as none
    /// and is removed, see [`Sessions::all`]).
    pub fn recorded(&self, task_id: &str) -> Option<u32> {
        checked(&self.path_of(task_id), task_id)
    }

    /// Every recorded session: task id and session id. Records are not trusted as found
    /// (each leads to `pm install-abandon ID`): the task id in the name must pass the
    /// payload's TaskId rules, the record must be a regular file (opened with `O_NOFOLLOW`
    /// and `O_NONBLOCK`, so a FIFO cannot stall startup) holding only a decimal session id.
    /// Anything else is removed with a warning.
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
                Some((task.to_string(), checked(&e.path(), task)?))
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

/// The session id of a valid record; an invalid one is removed with a warning (a missing
/// one is simply none).
fn checked(path: &Path, task_id: &str) -> Option<u32> {
    match read_id(path, task_id) {
        Ok(id) => id,
        Err(why) => {
            tracing::warn!("removing the pm session record {}: {why}", path.display());
            let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
            let removed = if is_dir {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove {}", path.display());
            }
            None
        }
    }
}

/// `Ok(None)`: no record; `Err`: why the record found is not valid.
fn read_id(path: &Path, task_id: &str) -> std::result::Result<Option<u32>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    crate::task::payload::check_task_id(task_id).map_err(|e| e.to_string())?;
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it ({e})")),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    let mut text = String::new();
    (&mut file)
        .take(32)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it ({e})"))?;
    let digits = text.strip_suffix('\n').unwrap_or(&text);
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("it does not hold a decimal session id only".into());
    }
    digits
        .parse()
        .map(Some)
        .map_err(|_| "its session id is out of range".to_string())
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

    #[test]
    fn invalid_session_records_are_removed_not_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        let sessions = Sessions::new(install.clone());
        sessions.record("good", 7).unwrap();
        std::fs::write(install.join("bad id!.session"), "8\n").unwrap();
        std::fs::write(install.join("words.session"), "9; rm -rf /\n").unwrap();
        std::fs::write(install.join("signed.session"), "+10\n").unwrap();
        std::fs::write(install.join("spaced.session"), " 11 \n").unwrap();
        std::fs::create_dir(install.join("folder.session")).unwrap();
        std::fs::write(dir.path().join("target"), "12\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), install.join("link.session"))
            .unwrap();
        nix::unistd::mkfifo(
            &install.join("fifo.session"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(sessions.all(), [("good".to_string(), 7)]);
        let mut left: Vec<_> = std::fs::read_dir(&install)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["good.session"]);
        assert!(
            dir.path().join("target").exists(),
            "a link's target is kept"
        );
        std::fs::write(install.join("words.session"), "x").unwrap();
        assert_eq!(sessions.recorded("words"), None);
        assert!(!install.join("words.session").exists());
    }
}
