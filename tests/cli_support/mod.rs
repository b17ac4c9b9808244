//! Helpers for the tests that drive the real `ferry` binary (`tests/cli_api.rs`,
//! `tests/daemon_kill.rs`, `tests/android_*.rs`): [`Target`], a fresh Android-like root and
//! the binary set up to run against it, natively or as the aarch64 build under qemu in a
//! chroot (see `target.rs`); [`Daemon`], a daemon child on a target that is killed when the
//! test ends; a tiny HTTP/1.1 client over TCP or the unix socket that shows raw statuses;
//! and the demo file server (with the `demo` feature; the tests using it require it).
//! [`results`]: what the transfer tests check after a task (`Result.Files`, files on disk).
//!
//! ```ignore
//! mod cli_support;
//! use cli_support::Target;
//!
//! let t = Target::new();
//! t.write("/system/etc/security/cacerts/abcd1234.0", pem);
//! let d = t.daemon(&[]);
//! let out = d.cli(&["send", "--url", &url, "--source-path", "/sdcard/Download/a", "--wait"]);
//! assert_eq!(std::fs::read(t.host("/sdcard/Download/a")).unwrap(), body);
//! ```

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod results;
#[path = "../common/skip.rs"]
pub mod skip;
pub mod target;

pub use target::Target;

#[cfg(feature = "demo")]
use ferry::demo_server::DemoServer;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Startup of a native daemon takes milliseconds; see [`Target::timeout`] for emulation.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a finished command and returns its output, for `send`, `tasks`, `cancel`, `fetch`.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running ferry")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `ferry daemon` child on a [`Target`]; killed on drop.
pub struct Daemon {
    pub child: Child,
    /// Host path of the state folder ([`target::STATE_DIR`] on the device).
    pub state: PathBuf,
    /// `127.0.0.1:PORT` from api.json.
    pub addr: String,
    /// Host path of the unix socket.
    pub socket: PathBuf,
    pub token: String,
    /// The daemon's stderr (outside the root).
    pub log: PathBuf,
    /// Kept last so the root outlives the child.
    pub target: Target,
}

impl Daemon {
    /// A daemon on a fresh [`Target`].
    pub fn start(extra: &[&str]) -> Daemon {
        Target::new().daemon(extra)
    }

    /// `ferry [EXTRA] daemon --listen 127.0.0.1:0` on `target`; a stale api.json is removed
    /// first so a restart waits for the new daemon.
    pub fn start_on(target: Target, extra: &[&str]) -> Daemon {
        let state = target.host(target::STATE_DIR);
        let _ = std::fs::remove_file(state.join("api.json"));
        let log = target.log_path("daemon");
        let child = target
            .command()
            .args(extra)
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting ferry daemon");
        let mut daemon = Daemon {
            child,
            state,
            addr: String::new(),
            socket: PathBuf::new(),
            token: String::new(),
            log,
            target,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.target.timeout(START_TIMEOUT);
        let api = self.state.join("api.json");
        loop {
            // The daemon writes api.json atomically once both listeners are bound.
            if let Ok(bytes) = std::fs::read(&api) {
                let info: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                self.addr = info["Listen"].as_str().unwrap().to_string();
                self.socket = self
                    .target
                    .host_of_reported(info["Socket"].as_str().unwrap());
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

    /// `POST /v1/tasks` with this payload.
    pub fn submit(&self, payload: &serde_json::Value) -> (u16, serde_json::Value) {
        let body = payload.to_string();
        self.request(
            "POST",
            "/v1/tasks",
            Some(&self.token),
            Some(body.as_bytes()),
        )
    }

    /// Submits a payload (expecting 201) and waits until the task is SUCCESS, FAILED or
    /// CANCELLED; returns the task view.
    pub fn run_task(&self, payload: &serde_json::Value, timeout: Duration) -> serde_json::Value {
        let (status, view) = self.submit(payload);
        assert_eq!(status, 201, "{payload} -> {view}");
        let id = view["TaskId"].as_str().unwrap();
        self.wait_phase(id, &["SUCCESS", "FAILED", "CANCELLED"], timeout)
    }

    /// The daemon's peak resident set (`VmHWM` of /proc/PID/status) in KiB. Meaningful for
    /// a native binary only: under emulation the process is qemu (or unshare).
    /// Samples the daemon's anonymous memory (heap, stacks: what ferry allocates, unlike the
    /// binary's mapped pages, which VmHWM also counts) every 10 ms until the sampler is
    /// finished; `finish` returns the peak in KiB.
    pub fn sample_anon_kib(&self) -> AnonSampler {
        let pid = self.child.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    break;
                };
                if let Some(kib) = status
                    .lines()
                    .find(|l| l.starts_with("RssAnon:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        AnonSampler { stop, thread }
    }

    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the daemon's /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/PID/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `ferry ARGS...` on this daemon's target (same state folder).
    pub fn cli(&self, args: &[&str]) -> Output {
        run(self.target.command().args(args))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the child to exit on its own; `timeout` is for a native binary and is
    /// stretched under emulation ([`Target::timeout`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + self.target.timeout(timeout);
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

    /// Polls a task until its phase is one of `phases`; `timeout` as in [`Daemon::wait_exit`].
    pub fn wait_phase(&self, id: &str, phases: &[&str], timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + self.target.timeout(timeout);
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
#[cfg(feature = "demo")]
pub struct Files {
    pub server: DemoServer,
    _rt: tokio::runtime::Runtime,
}

#[cfg(feature = "demo")]
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

/// See [`Daemon::sample_anon_kib`].
pub struct AnonSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl AnonSampler {
    pub fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler thread")
    }
}

/// Whether the test runs as root. When it does not, a test that needs root says so and
/// returns early, except under `CI=true`, where the missing privilege fails the test.
pub fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip::skip(&format!("{what} needs the test to run as root"));
    false
}
