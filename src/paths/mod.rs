//! Path safety: which device paths a payload may write to, and how to reach them without
//! ever following a symlink out of an allowed root.
//!
//! Device paths (`/sdcard/Download/a.apk`) are checked lexically first (absolute, no `.`/`..`,
//! no NUL, bounded lengths, inside an allowed root), then opened one component at a time with
//! `openat(O_NOFOLLOW)` from the root's descriptor, so a symlink planted inside a root cannot
//! redirect a write. The roots themselves are trusted configuration and may be symlinks
//! (`/sdcard` is one on Android). With `--device-root DIR`, device paths live under `DIR`.

use crate::error::{Code, Error, Result};
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Linux NAME_MAX and PATH_MAX.
const MAX_NAME_BYTES: usize = 255;
const MAX_PATH_BYTES: usize = 4096;

/// Why a single name is not a plain file name, or Ok.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.contains('/') {
        return Err("it contains '/'".into());
    }
    if name.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("it contains NUL or control characters".into());
    }
    if let Some(c) = name.chars().find(|c| is_hidden_char(*c)) {
        return Err(format!(
            "it contains the invisible or direction-changing character U+{:04X}",
            c as u32
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("it is longer than {MAX_NAME_BYTES} bytes"));
    }
    Ok(())
}

/// C1 controls, line and paragraph separators, interlinear annotation marks, and every
/// Unicode Default_Ignorable_Code_Point (bidirectional overrides and marks, zero-width and
/// joiner characters, soft hyphen, variation selectors, Hangul fillers, tags): a name holding
/// one displays as something else (`evil\u{202E}kpa.exe` reads as `evilexe.apk`), and a
/// case-folding filesystem (ext4/f2fs casefold behind Android's /sdcard) may ignore it, so
/// `.\u{AD}ferry-…` could name the same file as a staging name.
fn is_hidden_char(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{ad}'
        | '\u{034f}'
        | '\u{061c}'
        | '\u{115f}'..='\u{1160}'
        | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{3164}'
        | '\u{fe00}'..='\u{fe0f}'
        | '\u{feff}'
        | '\u{ffa0}'
        | '\u{fff0}'..='\u{fffb}'
        | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}'
    )
}

/// The prefix of ferry's staging files; no final name may start with it, in any case
/// (Android's shared storage ignores case).
pub const RESERVED_PREFIX: &str = ".ferry-";

/// Whether `name` starts with [`RESERVED_PREFIX`], ignoring ASCII case.
pub fn is_reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// [`check_file_name`] for a name that a task's data ends up under (or a folder on its way):
/// ferry's staging names are refused, so a task can never land on another task's partial file.
pub fn check_final_name(name: &str) -> std::result::Result<(), String> {
    check_file_name(name)?;
    if is_reserved(name) {
        return Err(format!(
            "names starting with {RESERVED_PREFIX} (in any case) are reserved for ferry's staging files"
        ));
    }
    Ok(())
}

/// An absolute, normalised path on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePath {
    components: Vec<String>,
}

impl DevicePath {
    /// Accepts `/a/b/c` (repeated or trailing slashes allowed), refuses anything ambiguous.
    pub fn parse(text: &str) -> std::result::Result<DevicePath, String> {
        if text.len() > MAX_PATH_BYTES {
            return Err(format!("the path is longer than {MAX_PATH_BYTES} bytes"));
        }
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is not an absolute path (it must start with /)"
            ));
        }
        let mut components = Vec::new();
        for part in text.split('/').filter(|p| !p.is_empty()) {
            check_file_name(part)
                .map_err(|why| format!("component {part:?} of {text:?}: {why}"))?;
            components.push(part.to_string());
        }
        Ok(DevicePath { components })
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    pub fn parent(&self) -> DevicePath {
        let mut components = self.components.clone();
        components.pop();
        DevicePath { components }
    }

    pub fn join(&self, name: &str) -> DevicePath {
        let mut components = self.components.clone();
        components.push(name.to_string());
        DevicePath { components }
    }

    pub fn starts_with(&self, prefix: &DevicePath) -> bool {
        self.components.starts_with(&prefix.components)
    }
}

impl std::fmt::Display for DevicePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// The allowed roots and the optional host folder standing in for the device's `/`.
#[derive(Clone, Debug)]
pub struct Roots {
    device_root: Option<PathBuf>,
    allowed: Vec<DevicePath>,
}

impl Roots {
    pub fn new(device_root: Option<PathBuf>, allowed: &[String]) -> Result<Roots> {
        let allowed = allowed
            .iter()
            .map(|r| {
                DevicePath::parse(r).map_err(|why| {
                    Error::new(Code::InvalidConfig, format!("allowed root {r:?}: {why}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Roots {
            device_root,
            allowed,
        })
    }

    /// Where a device path lives on this machine's filesystem.
    pub fn host_path(&self, path: &DevicePath) -> PathBuf {
        let mut host = self
            .device_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"));
        host.extend(path.components());
        host
    }

    /// The most specific allowed root containing `path`.
    pub fn root_of(&self, path: &DevicePath) -> Result<&DevicePath> {
        self.allowed
            .iter()
            .filter(|root| path.starts_with(root))
            .max_by_key(|root| root.components().len())
            .ok_or_else(|| {
                let roots: Vec<String> = self.allowed.iter().map(|r| r.to_string()).collect();
                Error::new(
                    Code::StoragePathNotAllowed,
                    format!(
                        "{path} is outside the allowed roots ({}); choose a folder under one of them",
                        roots.join(", ")
                    ),
                )
            })
    }

    /// Opens the folder `dir`, creating missing folders below its root, refusing symlinks.
    pub fn open_dir(&self, dir: &DevicePath, create: bool) -> Result<Dir> {
        let root = self.root_of(dir)?;
        let root_host = self.host_path(root);
        if self.device_root.is_some() && create {
            // Desktop and test use: the stand-in device tree may not have the root yet.
            // create_dir_all stats each folder and takes "may not look" (EACCES) for
            // "missing", then fails with EEXIST: the open below reports the real error.
            match std::fs::create_dir_all(&root_host) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io("creating allowed root", &root_host, &e));
                }
                _ => {}
            }
        }
        let mut fd = open_path(&root_host).map_err(|e| {
            let mut err = Error::io("opening allowed root", &root_host, &e);
            if e.kind() == std::io::ErrorKind::NotFound {
                err.code = Code::StoragePathNotAllowed;
            }
            err
        })?;
        let mut walked = root.clone();
        for name in &dir.components()[root.components().len()..] {
            walked = walked.join(name);
            fd = step_into(&fd, name, create, &walked, &self.host_path(&walked))?;
        }
        Ok(Dir {
            fd,
            device: dir.clone(),
            host: self.host_path(dir),
        })
    }
}

fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let raw = nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens (or creates) one folder below `parent` without following a symlink.
fn step_into(
    parent: &OwnedFd,
    name: &str,
    create: bool,
    device: &DevicePath,
    host: &Path,
) -> Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = || openat(Some(parent.as_raw_fd()), name, flags, Mode::empty());
    let raw = match open() {
        Err(nix::errno::Errno::ENOENT) if create => {
            match mkdirat(
                Some(parent.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o775),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(Error::io("creating folder", host, &e.into())),
            }
            open()
        }
        other => other,
    };
    match raw {
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        Ok(raw) => Ok(unsafe { OwnedFd::from_raw_fd(raw) }),
        Err(nix::errno::Errno::ELOOP) => Err(Error::new(
            Code::StoragePathNotAllowed,
            format!(
                "{device} is a symbolic link; ferry never follows links inside the allowed roots"
            ),
        )),
        Err(nix::errno::Errno::ENOTDIR) => Err(Error::new(
            Code::StoragePathNotAllowed,
            format!("{device} is not a folder (a file or a symbolic link is in the way)"),
        )),
        Err(nix::errno::Errno::ENOENT) => Err(Error::new(
            Code::StorageIo,
            format!("folder {device} does not exist"),
        )),
        Err(e) => Err(Error::io("opening folder", host, &e.into())),
    }
}

/// An open folder inside an allowed root; every file operation is relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    device: DevicePath,
    host: PathBuf,
}

/// What currently sits under a name in a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Missing,
    File,
    Other,
}

impl Dir {
    /// Every operation takes a single plain name: `a/b`, `..` or `/x` would walk past the
    /// checks `open_dir` made.
    fn plain<'a>(&self, name: &'a str) -> Result<&'a str> {
        check_file_name(name).map(|()| name).map_err(|why| {
            Error::new(
                Code::StoragePathNotAllowed,
                format!(
                    "{name:?} in {} is not a plain file name: {why}",
                    self.device
                ),
            )
        })
    }

    pub fn device_path(&self) -> &DevicePath {
        &self.device
    }

    pub fn host_path(&self, name: &str) -> PathBuf {
        self.host.join(name)
    }

    /// Opens `name` for read and write, creating it when asked; never follows a symlink.
    pub fn open_file(&self, name: &str, create: bool) -> Result<Option<File>> {
        let name = self.plain(name)?;
        let mut flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if create {
            flags |= OFlag::O_CREAT;
        }
        match openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags,
            Mode::from_bits_truncate(0o644),
        ) {
            // SAFETY: `openat` just returned this descriptor and nothing else owns it.
            Ok(raw) => Ok(Some(unsafe { File::from_raw_fd(raw) })),
            Err(nix::errno::Errno::ENOENT) if !create => Ok(None),
            Err(nix::errno::Errno::ELOOP) => Err(Error::new(
                Code::StoragePathNotAllowed,
                format!(
                    "{} is a symbolic link; ferry never writes through links",
                    self.device.join(name)
                ),
            )),
            Err(e) => Err(Error::io("opening", &self.host_path(name), &e.into())),
        }
    }

    pub fn entry(&self, name: &str) -> Result<Entry> {
        let name = self.plain(name)?;
        match fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {
                Ok(Entry::File)
            }
            Ok(_) => Ok(Entry::Other),
            Err(nix::errno::Errno::ENOENT) => Ok(Entry::Missing),
            Err(e) => Err(Error::io("inspecting", &self.host_path(name), &e.into())),
        }
    }

    /// Atomically replaces `to` with `from` (both in this folder).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_into(from, self, to)
    }

    /// Atomically replaces `to` in `target` with `from` of this folder (same filesystem).
    pub fn rename_into(&self, from: &str, target: &Dir, to: &str) -> Result<()> {
        let (from, to) = (self.plain(from)?, target.plain(to)?);
        renameat(
            Some(self.fd.as_raw_fd()),
            from,
            Some(target.fd.as_raw_fd()),
            to,
        )
        .map_err(|e| Error::io("renaming into place", &target.host_path(to), &e.into()))
    }

    /// Removes a file; a missing file is not an error.
    pub fn remove(&self, name: &str) -> Result<()> {
        let name = self.plain(name)?;
        match unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::io("removing", &self.host_path(name), &e.into())),
        }
    }

    /// Makes renames and creations in this folder durable.
    pub fn sync(&self) -> Result<()> {
        nix::unistd::fsync(self.fd.as_raw_fd())
            .map_err(|e| Error::io("syncing folder", &self.host, &e.into()))
    }

    /// Bytes available to an unprivileged writer on this folder's filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(self.fd.as_fd())
            .map_err(|e| Error::io("checking free space of", &self.host, &e.into()))?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }
}

mod staging;

#[cfg(test)]
mod tests;
