//! Opening the API's sockets and announcing them: loopback TCP and the unix socket with
//! pueue's hygiene (a socket that answers means a daemon is already running; a dead one is
//! removed; the new one is made 0600 and removed on exit), then `STATE_DIR/api.json`.

use crate::api::{ApiInfo, VERSION};
use crate::config::Config;
use crate::error::{Code, Error, Result};
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tracing::{info, warn};

/// The bound sockets of one daemon and the token they demand.
pub struct Listeners {
    /// Loopback TCP, for clients that cannot reach the state directory (adb forward).
    pub tcp: Option<TcpListener>,
    /// The unix socket, for local clients; its file is removed when this is dropped.
    pub unix: Option<(UnixListener, SocketFile)>,
    /// The bearer token every route except `/healthz` requires.
    pub token: String,
}

/// Removes the unix socket's file when dropped, so a stopped daemon leaves no dead socket.
pub struct SocketFile(PathBuf);

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_if_present(&self.0);
    }
}

/// Removes `STATE_DIR/api.json` when dropped: a clean exit leaves no stale address behind.
pub struct Published(PathBuf);

impl Drop for Published {
    fn drop(&mut self) {
        remove_if_present(&self.0);
    }
}

fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            warn!("could not remove {}: {e}", path.display());
        }
    }
}

impl Listeners {
    /// Binds the unix socket (checking for a live daemon first) and the TCP address.
    pub async fn bind(config: &Config, token: String) -> Result<Listeners> {
        let unix = Some(bind_unix(&config.socket_path()).await?);
        let tcp = match config.listen {
            None => None,
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    return Err(Error::new(
                        Code::InvalidConfig,
                        format!("listen address {addr} is not loopback; the API must stay on this device"),
                    ));
                }
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    let hint = if e.kind() == ErrorKind::AddrInUse {
                        " (another program, perhaps another ferry daemon, uses it; choose another with --listen, or --listen off)"
                    } else {
                        ""
                    };
                    Error::new(Code::Internal, format!("cannot listen on {addr}: {e}{hint}"))
                })?;
                Some(listener)
            }
        };
        Ok(Listeners { tcp, unix, token })
    }

    /// What `api.json` says about these sockets: the real TCP port, the socket path.
    pub fn info(&self) -> ApiInfo {
        ApiInfo {
            listen: self
                .tcp
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string()),
            socket: self.unix.as_ref().map(|(_, f)| f.path().to_path_buf()),
            pid: Some(std::process::id()),
            version: Some(VERSION.to_string()),
        }
    }

    /// Writes `api.json` and logs where the daemon listens.
    pub fn publish(&self, state_dir: &Path) -> Result<Published> {
        let info = self.info();
        info.write(state_dir)?;
        let mut places = Vec::new();
        if let Some(addr) = &info.listen {
            places.push(format!("http://{addr}"));
        }
        if let Some(socket) = &info.socket {
            places.push(format!("unix:{}", socket.display()));
        }
        info!(
            "listening on {} (address file {})",
            places.join(" and "),
            ApiInfo::path(state_dir).display()
        );
        Ok(Published(ApiInfo::path(state_dir)))
    }
}

async fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("inspecting the API socket", path, &e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::new(
                Code::InvalidConfig,
                format!(
                    "{} exists and is not a socket; move it away or choose another --socket",
                    path.display()
                ),
            ))
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(Error::new(
                    Code::Internal,
                    format!(
                        "a ferry daemon is already running on {}; stop it first or use another --state-dir",
                        path.display()
                    ),
                ))
            }
            Err(e) => {
                info!(
                    "removing the stale socket {} left by a daemon that is gone ({e})",
                    path.display()
                );
                std::fs::remove_file(path)
                    .map_err(|e| Error::io("removing the stale API socket", path, &e))?;
            }
        },
    }
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io("binding the API socket", path, &e))?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("restricting the API socket", path, &e))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_socket_refuses_and_dead_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (first, file) = bind_unix(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = bind_unix(&path).await.err().expect("second bind must fail");
        assert!(err.message.contains("already running"), "{}", err.message);
        // Simulate a crashed daemon: the listener is gone but the file stays.
        drop(first);
        std::mem::forget(file);
        assert!(path.exists());
        let (_again, file) = bind_unix(&path).await.unwrap();
        drop(file);
        assert!(!path.exists());
    }
}
