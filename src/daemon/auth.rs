//! The API's bearer token: created once in `STATE_DIR/token` (mode 0600, 64 hex digits from
//! the kernel's random source), kept private, and compared in constant time.
//!
//! Anyone who can read the token file can drive the agent, so it is checked on every start:
//! a token file that others could read or write (mode looser than 0600), that another user
//! owns, that has other hard links, or that is a symbolic link or not a regular file may have
//! leaked or been planted. It is then not trusted: a fresh token replaces it atomically.

use crate::api::TOKEN_FILE;
use crate::error::{Code, Error, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Bytes of randomness in a token; it is stored as twice as many hex digits.
const TOKEN_BYTES: usize = 32;

/// Creates the state directory (mode 0700) if it does not exist yet.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating the state directory", dir, &e))
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// Returns the daemon's token, creating the file on first start and replacing it when it
/// cannot be trusted (see the module text). The token itself is never logged.
pub fn load_or_create_token(state_dir: &Path) -> Result<String> {
    let path = token_path(state_dir);
    // O_NOFOLLOW: a symlink is judged, never read through; O_NONBLOCK: a FIFO cannot stall us.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return write_new_token(&path),
        // A directory opened read-only succeeds on Linux; EISDIR et al. are handled here too.
        Err(e) if e.raw_os_error() == Some(nix::libc::EISDIR) => {
            return move_aside_and_replace(&path, "is a directory")
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return replace_untrusted(&path, "is a symbolic link")
        }
        Err(e) => return Err(Error::io("opening the API token file", &path, &e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("inspecting the API token file", &path, &e))?;
    if !meta.file_type().is_file() {
        drop(file);
        return move_aside_and_replace(&path, "is not a regular file");
    }
    if let Some(why) = untrusted(&meta) {
        return replace_untrusted(&path, &why);
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io("reading the API token file", &path, &e))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        // A crash between creating and writing the file leaves it empty.
        warn!(
            "the API token file {} was empty; making a new token",
            path.display()
        );
        return write_new_token(&path);
    }
    Ok(token)
}

/// Why a token file cannot be trusted to be private, if it cannot.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if !meta.file_type().is_file() {
        Some("is not a regular file".into())
    } else if meta.uid() != nix::unistd::geteuid().as_raw() {
        Some(format!(
            "is owned by uid {}, not by the daemon's user",
            meta.uid()
        ))
    } else if mode & 0o077 != 0 {
        Some(format!(
            "had mode {mode:o}: other users could read or change it"
        ))
    } else if meta.nlink() != 1 {
        Some("has other hard links, through which it could be read".into())
    } else {
        None
    }
}

/// Replaces a token file that may have leaked: whoever read it must not keep access.
fn replace_untrusted(path: &Path, why: &str) -> Result<String> {
    warn!(
        "the API token file {} {why}; it is replaced by a new token (clients read the new file, \
         FERRY_TOKEN users must update it)",
        path.display()
    );
    write_new_token(path)
}

/// Something that is not a regular file (a directory, a FIFO, a socket) sits at the token
/// path: `rename` cannot replace a directory, so it is first moved aside to
/// `token.bad-<unix time>` (kept for a person to inspect), then a fresh token is written.
fn move_aside_and_replace(path: &Path, why: &str) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = path.with_file_name(format!("{TOKEN_FILE}.bad-{now}"));
    std::fs::rename(path, &aside)
        .map_err(|e| Error::io("moving aside what sits at the API token path", path, &e))?;
    warn!(
        "the API token path {} {why}; it was moved to {} and a new token file made",
        path.display(),
        aside.display()
    );
    write_new_token(path)
}

/// Reads a token file, trimming the trailing newline editors add.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("reading the API token file", path, &e))?;
    Ok(text.trim().to_string())
}

/// Writes a new token durably and atomically: a fresh temporary file (`O_EXCL`, so nothing
/// planted under its name is written through; mode 0600 from its creation), then a rename
/// over the old name, which replaces a symlink or hard link itself, not what it points to.
fn write_new_token(path: &Path) -> Result<String> {
    let token = random_hex(TOKEN_BYTES)?;
    let tmp = path.with_file_name(format!(".{TOKEN_FILE}.{}.tmp", random_hex(8)?));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("creating the API token file", path, &e)
    })?;
    Ok(token)
}

/// `n` bytes from `/dev/urandom`, as lowercase hex.
pub fn random_hex(n: usize) -> Result<String> {
    let urandom = Path::new("/dev/urandom");
    let mut bytes = vec![0u8; n];
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading randomness from", urandom, &e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without an early exit, so response timing does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Authorization` header value carries `token` as a bearer credential.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header else {
        return false;
    };
    let Some((scheme, credential)) = split_scheme(value) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer") && constant_time_eq(credential, token.as_bytes())
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let start = rest.iter().position(|b| *b != b' ')?;
    Some((scheme, rest[start..].trim_ascii_end()))
}

/// The 401 error, telling the caller where the token lives.
pub fn unauthorized(state_dir: &Path) -> Error {
    Error::new(
        Code::ApiUnauthorized,
        format!(
            "missing or wrong API token: send `Authorization: Bearer TOKEN` with the token from {} (readable by the daemon's user only)",
            token_path(state_dir).display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_state_dir(&state).unwrap();
        let token = load_or_create_token(&state).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(token_path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(&state).unwrap(), token);
    }

    fn assert_fresh_private_token(path: &Path, token: &str, old: &str) {
        assert_ne!(token, old, "a token that may have leaked must not be kept");
        assert_eq!(token.len(), 64);
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.nlink(), 1);
        assert_eq!(std::fs::read_to_string(path).unwrap().trim(), token);
    }

    #[test]
    fn loose_token_file_is_replaced_not_kept() {
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            let dir = tempfile::tempdir().unwrap();
            let path = token_path(dir.path());
            std::fs::write(&path, "abc\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let token = load_or_create_token(dir.path()).unwrap();
            assert_fresh_private_token(&path, &token, "abc");
            assert_eq!(
                load_or_create_token(dir.path()).unwrap(),
                token,
                "then kept"
            );
        }
    }

    #[test]
    fn token_symlink_or_hard_link_is_replaced_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        let elsewhere = dir.path().join("planted");
        std::fs::write(&elsewhere, "abc\n").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_fresh_private_token(&path, &token, "abc");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "abc\n");

        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&elsewhere, &path).unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_fresh_private_token(&path, &token, "abc");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "abc\n");
    }

    #[test]
    fn token_file_of_another_owner_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let me = nix::unistd::geteuid();
        if !me.is_root() {
            crate::testing::skip::skip(
                "token_file_of_another_owner_is_replaced needs root to give the token file to \
                 another user",
            );
            return;
        }
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(me.as_raw() + 1)),
            None,
        )
        .expect("chown the token file to another uid (needs root)");
        let token = load_or_create_token(dir.path()).unwrap();
        assert_fresh_private_token(&path, &token, "abc");
    }

    #[test]
    fn directory_or_fifo_at_token_path_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "x").unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_fresh_private_token(&path, &token, "");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{TOKEN_FILE}.bad-")))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(dir.path().join(&aside[0]).join("inside").is_file());
        assert_eq!(load_or_create_token(dir.path()).unwrap(), token);

        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let token = load_or_create_token(dir.path()).unwrap();
        assert_fresh_private_token(&path, &token, "");
    }

    #[test]
    fn bearer_header_is_checked_exactly() {
        assert!(bearer_matches(Some(b"Bearer abc"), "abc"));
        assert!(bearer_matches(Some(b"bearer   abc "), "abc"));
        assert!(!bearer_matches(Some(b"Bearer abd"), "abc"));
        assert!(!bearer_matches(Some(b"Bearer ab"), "abc"));
        assert!(!bearer_matches(Some(b"Basic abc"), "abc"));
        assert!(!bearer_matches(Some(b"abc"), "abc"));
        assert!(!bearer_matches(None, "abc"));
    }
}
