//! The real mosquitto (Debian's package) on 127.0.0.1, for the fleet's tests: its own config
//! and persistence in a temporary folder, restartable on the same port.
//!
//! `Mosquitto::start(extra)` returns `Err(reason)` when mosquitto is not installed and
//! `apt-get install -y mosquitto` could not install it: the caller passes the reason to
//! `skip::skip` (a skip, a failure under CI=true).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// The mosquitto binary, installing the Debian package once per test process if needed.
fn binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = || {
                ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
            };
            find().or_else(|| {
                let _ = Command::new("apt-get")
                    .args(["install", "-y", "-q", "mosquitto"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                find()
            })
        })
        .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

impl Mosquitto {
    /// Starts mosquitto listening on a free port of 127.0.0.1 with persistence in its folder,
    /// `extra` appended to its config (auth, ACL…). Files `extra` names may live in
    /// [`Mosquitto::dir`]'s folder, created before `extra` is written: use
    /// [`Mosquitto::start_with`] for that.
    pub fn start(extra: &str) -> Result<Mosquitto, String> {
        Self::start_with(|_| extra.to_string())
    }

    /// Like [`Mosquitto::start`], `extra` made from the broker's folder (to write a password
    /// or ACL file there first).
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Result<Mosquitto, String> {
        if binary().is_none() {
            return Err("mosquitto is not installed (apt-get install -y mosquitto)".into());
        }
        let dir = tempfile::tempdir().expect("a folder for mosquitto");
        let port = free_port();
        let extra = extra(dir.path());
        let config = format!(
            "listener {port} 127.0.0.1\n\
             user root\n\
             persistence true\n\
             persistence_location {}/\n\
             log_dest file {}/mosquitto.log\n\
             log_type all\n\
             {extra}\n",
            dir.path().display(),
            dir.path().display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("writing mosquitto.conf");
        let mut m = Mosquitto {
            dir,
            port,
            child: None,
        };
        m.spawn();
        Ok(m)
    }

    fn spawn(&mut self) {
        let child = Command::new(binary().expect("mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr()).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mosquitto exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGTERM (mosquitto saves its persistence) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Stop, then start again on the same port with the same config and persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
