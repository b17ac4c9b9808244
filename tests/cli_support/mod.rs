//! Helpers for `tests/cli_api.rs`: the real `ferry` binary (optionally through a runner such
//! as `qemu-aarch64-static` from `FERRY_TEST_RUNNER`, and another build from
//! `FERRY_TEST_BIN`), a daemon child that is killed when the test ends, a tiny HTTP/1.1
//! client over TCP or the unix socket that shows raw statuses, and the demo file server.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use ferry::demo_server::DemoServer;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Startup under qemu is slow; a native daemon is ready in milliseconds.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test, with the runner prefix, and no `FERRY_*` settings inherited.
pub fn ferry() -> Command {
    let bin =
        std::env::var("FERRY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ferry").into());
    let runner = std::env::var("FERRY_TEST_RUNNER").unwrap_or_default();
    let mut words: Vec<String> = runner.split_whitespace().map(str::to_string).collect();
    words.push(bin);
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]);
    for (key, _) in std::env::vars() {
        if key.starts_with("FERRY_") && key != "FERRY_TEST_RUNNER" && key != "FERRY_TEST_BIN" {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a finished command and returns its output, for `send`, `tasks`, `cancel`, `fetch`.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running ferry")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `ferry daemon` child in its own temporary folder; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub state: PathBuf,
    pub dev: PathBuf,
    /// `127.0.0.1:PORT` from api.json.
    pub addr: String,
    pub socket: PathBuf,
    pub token: String,
    pub log: PathBuf,
    /// Kept last so the folder outlives the child.
    pub _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Daemon::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        let state = dir.path().join("state");
        let dev = dir.path().join("dev");
        let log = dir.path().join("daemon.log");
        let child = ferry()
            .arg("--state-dir")
            .arg(&state)
            .arg("--device-root")
            .arg(&dev)
            .args(extra)
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting ferry daemon");
        let mut daemon = Daemon {
            child,
            state,
            dev,
            addr: String::new(),
            socket: PathBuf::new(),
            token: String::new(),
            log,
            _dir: dir,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let api = self.state.join("api.json");
        loop {
            if let Ok(bytes) = std::fs::read(&api) {
                let info: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                self.addr = info["Listen"].as_str().unwrap().to_string();
                self.socket = PathBuf::from(info["Socket"].as_str().unwrap());
                self.token = std::fs::read_to_string(self.state.join("token"))
                    .unwrap()
                    .trim()
                    .to_string();
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited early ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no api.json: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ferry --state-dir STATE ARGS...` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(ferry().arg("--state-dir").arg(&self.state).args(args))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the child to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.request("GET", path, Some(&self.token), None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        let stream = std::net::TcpStream::connect(&self.addr).unwrap();
        let (status, body) = exchange(stream, &request_bytes(method, path, token, body));
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Polls a task until its phase is one of `phases`.
    pub fn wait_phase(&self, id: &str, phases: &[&str], timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, view) = self.get(&format!("/v1/tasks/{id}"));
            assert_eq!(status, 200, "{view}");
            if phases.contains(&view["Phase"].as_str().unwrap_or("")) {
                return view;
            }
            assert!(Instant::now() < deadline, "task stuck: {view}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn request_bytes(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes a request (ignoring a server that stops reading early), reads the reply until the
/// server closes, and returns the status and body.
pub fn exchange<S: Read + Write>(mut stream: S, request: &[u8]) -> (u16, String) {
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // A reset after the reply (unread request bytes) still leaves the reply.
            Err(_) if !reply.is_empty() => break,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    let reply = text(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    (status, body.to_string())
}

pub fn unix_exchange(socket: &Path, request: &[u8]) -> (u16, String) {
    exchange(UnixStream::connect(socket).unwrap(), request)
}

/// The demo file server on its own runtime (declared first so it stops before the runtime).
pub struct Files {
    pub server: DemoServer,
    _rt: tokio::runtime::Runtime,
}

impl Files {
    pub fn start(size: u64) -> Files {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(DemoServer::start(size)).unwrap();
        Files { server, _rt: rt }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}
