//! The API's bearer token: created once in `STATE_DIR/token` (mode 0600, 64 hex digits from
//! the kernel's random source), kept private, and compared in constant time.
//!
//! Anyone who can read the token file can drive the agent, so the file's permissions are
//! checked on every start and tightened if they are looser than 0600.

use crate::api::TOKEN_FILE;
use crate::error::{Code, Error, Result};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// Returns the daemon's token, creating the file on first start.
pub fn load_or_create_token(state_dir: &Path) -> Result<String> {
    let path = token_path(state_dir);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    "the API token file {} had mode {mode:o}; setting it to 600",
                    path.display()
                );
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io("restricting the API token file", &path, &e))?;
            }
            let token = read_token(&path)?;
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new_token(&path),
        Err(e) => Err(Error::io("inspecting the API token file", &path, &e)),
    }
}

/// Reads a token file, trimming the trailing newline editors add.
pub fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io("reading the API token file", path, &e))?;
    Ok(text.trim().to_string())
}

fn write_new_token(path: &Path) -> Result<String> {
    let token = random_hex(TOKEN_BYTES)?;
    let tmp = path.with_file_name(format!(".{TOKEN_FILE}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
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

    #[test]
    fn loose_token_permissions_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(dir.path()).unwrap(), "abc");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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
