//! Dropping root once the daemon holds what only root could get. An image may start ferry as
//! root (to bind its sockets and create its state folder anywhere); `run_as` then switches it
//! to a plain uid/gid with a few supplementary groups (`inet` 3003 for sockets, `sdcard_rw`
//! 1015 or `media_rw` 1023 for shared storage) before any task runs, so a bug in a transfer
//! cannot act as root.
//!
//! Order matters and is checked: the state folder is handed to the new uid first (the daemon
//! must still write its journal), then supplementary groups, gid and uid are set, in that
//! order (after `setuid` the process could no longer change its groups), and the ids are read
//! back; a process that could become root again is refused. Ids are numeric: Android has no
//! /etc/passwd.

use crate::config::RunAs;
use crate::error::{Code, Error, Result};
use nix::unistd::{self, Gid, Uid};
use std::path::Path;

/// Whether the process must change identity for `run_as` (it may already run as it).
pub fn needed(run_as: &RunAs) -> bool {
    !already(run_as)
}

/// Hands `state_dir` (recursively) and `socket` to the `run_as` identity; blocking file work,
/// done before [`switch`]. Refused unless the process runs as root.
pub fn hand_over(run_as: &RunAs, state_dir: &Path, socket: &Path) -> Result<()> {
    if !Uid::effective().is_root() {
        let hint = "start ferry as root to use run_as";
        return Err(denied("uid", run_as.uid, nix::errno::Errno::EPERM, hint));
    }
    let (uid, gid) = (Uid::from_raw(run_as.uid), Gid::from_raw(run_as.gid));
    chown_tree(state_dir, uid, gid)?;
    if !socket.starts_with(state_dir) {
        chown(socket, uid, gid)?;
    }
    Ok(())
}

/// Sets the supplementary groups, the gid and the uid, in that order, then checks them. Call
/// it on the thread that goes on to run the tasks: the kernel changes ids per thread, and
/// while musl and glibc apply the change to every thread of the process, a libc that only
/// passes the call on (as bionic may, in the NDK build) would leave older threads as they
/// were; on Android builds every thread is therefore checked, and a leftover is refused.
pub fn switch(run_as: &RunAs) -> Result<()> {
    let groups: Vec<Gid> = run_as.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    unistd::setgroups(&groups).map_err(|e| denied("groups", run_as.gid, e, "need root"))?;
    unistd::setgid(Gid::from_raw(run_as.gid))
        .map_err(|e| denied("gid", run_as.gid, e, "need root"))?;
    unistd::setuid(Uid::from_raw(run_as.uid))
        .map_err(|e| denied("uid", run_as.uid, e, "need root"))?;
    verify(run_as)?;
    tracing::info!(
        uid = run_as.uid,
        gid = run_as.gid,
        groups = ?run_as.groups,
        "dropped root privileges"
    );
    Ok(())
}

/// Whether real and effective ids and the groups already are those of `run_as`.
fn already(run_as: &RunAs) -> bool {
    let ids = [unistd::getuid().as_raw(), unistd::geteuid().as_raw()];
    let gids = [unistd::getgid().as_raw(), unistd::getegid().as_raw()];
    ids == [run_as.uid; 2] && gids == [run_as.gid; 2] && same_groups(run_as)
}

fn same_groups(run_as: &RunAs) -> bool {
    let Ok(current) = unistd::getgroups() else {
        return false;
    };
    let mut current: Vec<u32> = current.iter().map(|g| g.as_raw()).collect();
    let mut wanted = run_as.groups.clone();
    // The kernel may list the primary gid among the groups as well.
    current.retain(|g| *g != run_as.gid || wanted.contains(g));
    current.sort_unstable();
    current.dedup();
    wanted.sort_unstable();
    wanted.dedup();
    current == wanted
}

/// Reads the ids back (this thread, then every thread in /proc/self/task when /proc is
/// there) and makes sure root cannot be regained.
fn verify(run_as: &RunAs) -> Result<()> {
    let failed = |what: String| {
        Err(Error::new(
            Code::Internal,
            format!(
                "after switching to uid {} gid {} groups {:?}, {what}; refusing to run tasks",
                run_as.uid, run_as.gid, run_as.groups
            ),
        ))
    };
    if !already(run_as) {
        return failed(format!(
            "the process runs as uid {}/{} gid {}/{} groups {:?}",
            unistd::getuid(),
            unistd::geteuid(),
            unistd::getgid(),
            unistd::getegid(),
            unistd::getgroups().unwrap_or_default(),
        ));
    }
    // Not on musl/glibc builds, whose libc covers every thread: there, the only other thread
    // a check could find is an emulator's own (qemu-user keeps a helper thread as root).
    if cfg!(target_os = "android") {
        if let Some(thread) = thread_with_other_ids(run_as) {
            return failed(format!(
                "thread {thread} still has other ids (this libc changes ids per thread; set user and group in the init .rc instead)"
            ));
        }
    }
    if run_as.uid != 0 && unistd::setuid(Uid::from_raw(0)).is_ok() {
        return failed("the process could become root again".into());
    }
    Ok(())
}

/// A thread whose `Uid:`/`Gid:` lines in /proc/self/task/TID/status differ from `run_as`.
fn thread_with_other_ids(run_as: &RunAs) -> Option<String> {
    let uid = format!("{0}\t{0}\t{0}\t{0}", run_as.uid);
    let gid = format!("{0}\t{0}\t{0}\t{0}", run_as.gid);
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |key: &str| {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap_or("");
            line[key.len().min(line.len())..].trim().to_string()
        };
        if field("Uid:") != uid || field("Gid:") != gid {
            return Some(task.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

fn denied(what: &str, id: u32, errno: nix::errno::Errno, hint: &str) -> Error {
    Error::new(
        Code::InvalidConfig,
        format!("cannot switch to {what} {id}: {errno} ({hint})"),
    )
}

fn chown(path: &Path, uid: Uid, gid: Gid) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
        .map_err(|e| Error::io(&format!("handing over to uid {uid} (run_as)"), path, &e))
}

/// `chown -R` without following links: the state folder is small (journal, token, socket).
fn chown_tree(dir: &Path, uid: Uid, gid: Gid) -> Result<()> {
    chown(dir, uid, gid)?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io("listing the state directory for run_as", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing the state directory", dir, &e))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            chown_tree(&path, uid, gid)?;
        } else {
            chown(&path, uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staying_the_same_user_changes_nothing() {
        let me = RunAs {
            uid: unistd::getuid().as_raw(),
            gid: unistd::getgid().as_raw(),
            groups: unistd::getgroups()
                .unwrap()
                .iter()
                .map(|g| g.as_raw())
                .collect(),
        };
        assert!(!needed(&me));
        let other = RunAs {
            uid: me.uid + 1,
            ..me
        };
        assert!(needed(&other));
    }

    #[test]
    fn every_thread_is_read_from_proc() {
        let me = RunAs {
            uid: unistd::getuid().as_raw(),
            gid: unistd::getgid().as_raw(),
            groups: vec![],
        };
        let worker =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert_eq!(thread_with_other_ids(&me), None);
        let other = RunAs {
            uid: me.uid + 1,
            ..me
        };
        assert!(thread_with_other_ids(&other).is_some());
        worker.join().unwrap();
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e = denied(
            "uid",
            65534,
            nix::errno::Errno::EPERM,
            "start ferry as root to use run_as",
        );
        assert_eq!(e.code, Code::InvalidConfig);
        assert_eq!(
            e.message,
            "cannot switch to uid 65534: EPERM: Operation not permitted (start ferry as root to use run_as)"
        );
        if !Uid::effective().is_root() {
            let run_as = RunAs {
                uid: 65534,
                gid: 65534,
                groups: vec![],
            };
            let dir = tempfile::tempdir().unwrap();
            let err = hand_over(&run_as, dir.path(), &dir.path().join("s")).unwrap_err();
            assert_eq!(err.message, e.message);
        }
    }
}
