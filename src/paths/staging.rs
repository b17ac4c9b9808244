//! Opening a staging file: only ever ferry's own plain file, never anything planted under
//! its name.

use super::Dir;
use crate::error::{Code, Error, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// A regular file with no other name: safe to truncate and write as a staging file.
fn is_own_file(st: &nix::sys::stat::FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG && st.st_nlink == 1
}

impl Dir {
    /// Opens a staging file for writing, keeping its data only when it is a plain file that
    /// nothing else links to. Whatever else sits under the name (a symlink, a FIFO, a socket, a
    /// device node, a hard link to some other file) was not made by ferry: it is removed, never
    /// opened for writing (a FIFO would block, a hard link would truncate its other name), and a
    /// fresh file is created with `O_EXCL`. A folder in the way is refused.
    pub fn open_staging(&self, name: &str) -> Result<File> {
        let name = self.plain(name)?;
        let at = Some(self.fd.as_raw_fd());
        let path = self.host_path(name);
        match fstatat(at, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_own_file(&st) => {
                // O_NONBLOCK: should a FIFO be swapped in after the check, open does not block.
                let flags =
                    OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                match openat(at, name, flags, Mode::empty()) {
                    Ok(raw) => {
                        // SAFETY: `openat` just returned this descriptor and nothing owns it.
                        let file = unsafe { File::from_raw_fd(raw) };
                        let st = nix::sys::stat::fstat(file.as_raw_fd())
                            .map_err(|e| Error::io("inspecting", &path, &e.into()))?;
                        if is_own_file(&st) {
                            return Ok(file);
                        }
                        return Err(self.foreign_staging(name, "changed while being opened"));
                    }
                    Err(nix::errno::Errno::ENOENT) => {}
                    Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENXIO) => {
                        return Err(self.foreign_staging(name, "changed while being opened"))
                    }
                    Err(e) => return Err(Error::io("opening", &path, &e.into())),
                }
            }
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(self.foreign_staging(name, "is a folder"));
            }
            Ok(_) => {
                tracing::warn!(
                    path = %self.device.join(name),
                    "removing a link, hard link or special file planted at a staging name"
                );
                self.remove(name)?;
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::io("inspecting", &path, &e.into())),
        }
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        match openat(at, name, flags, Mode::from_bits_truncate(0o644)) {
            // SAFETY: `openat` just returned this descriptor and nothing else owns it.
            Ok(raw) => Ok(unsafe { File::from_raw_fd(raw) }),
            Err(nix::errno::Errno::EEXIST) => {
                Err(self.foreign_staging(name, "was created by someone else meanwhile"))
            }
            Err(e) => Err(Error::io("creating", &path, &e.into())),
        }
    }

    fn foreign_staging(&self, name: &str, what: &str) -> Error {
        Error::new(
            Code::StoragePathNotAllowed,
            format!(
                "the staging file {} {what}; ferry only writes to files it created. Remove it and submit again",
                self.device.join(name)
            ),
        )
    }
}
