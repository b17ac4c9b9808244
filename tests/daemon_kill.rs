//! The real binary under SIGKILL: a transfer interrupted by `kill -9` resumes after restart
//! from its partial data, lands with the right sha256, and its final name never shows a
//! partial file. Set `FERRY_TEST_RUNNER` (e.g. `qemu-aarch64-static`) and `FERRY_TEST_BIN`
//! to run the same test against a cross-built binary.

mod cli_support;
mod common;

use cli_support::{exchange, ferry, request_bytes};
use common::http_server::{Resource, TestServer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kills the daemon if a test fails before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(state: &Path, dev: &Path) -> (Daemon, String, String) {
    let _ = std::fs::remove_file(state.join("api.json"));
    let child = ferry()
        .arg("--state-dir")
        .arg(state)
        .arg("--device-root")
        .arg(dev)
        .args(["daemon", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting ferry daemon");
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(state.join("api.json")) {
            let api: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let listen = api["Listen"].as_str().unwrap().to_string();
            let token = std::fs::read_to_string(state.join("token")).unwrap();
            return (daemon, listen, token.trim().to_string());
        }
        assert!(Instant::now() < deadline, "daemon did not write api.json");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One API call over TCP; returns the status and the JSON body.
fn call(addr: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let request = request_bytes(method, path, Some(token), Some(body.as_bytes()));
    let (status, reply) = exchange(std::net::TcpStream::connect(addr).unwrap(), &request);
    (status, serde_json::from_str(&reply).unwrap_or_default())
}

fn describe(addr: &str, token: &str, id: &str) -> serde_json::Value {
    call(addr, token, "GET", &format!("/v1/tasks/{id}"), "").1
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls the final path and records every size seen there.
fn watch(
    path: PathBuf,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sizes = seen.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(meta) = std::fs::metadata(&path) {
                sizes.lock().unwrap().push(meta.len());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    (handle, seen)
}

#[test]
fn kill_9_mid_transfer_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, dev) = (tmp.path().join("state"), tmp.path().join("dev"));
    let server = TestServer::start_blocking();
    let body: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    server.put("/big.bin", Resource::new(body.clone()));
    server.set_rate("/big.bin", Some(1 << 20));
    let final_path = dev.join("sdcard/Download/big.bin");
    let staging = dev.join("sdcard/Download/.ferry-t-kill.part");
    let stop = Arc::new(AtomicBool::new(false));
    let (watcher, seen) = watch(final_path.clone(), stop.clone());

    let (mut daemon, api, token) = start_daemon(&state, &dev);
    let payload = serde_json::json!({
        "TaskId": "t-kill",
        "SourceFilePath": "/sdcard/Download/big.bin",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url("/big.bin"),
    })
    .to_string();
    let (status, view) = call(&api, &token, "POST", "/v1/tasks", &payload);
    assert_eq!(status, 201, "{view}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while describe(&api, &token, "t-kill")["BytesDone"]
        .as_u64()
        .unwrap_or(0)
        < 1 << 20
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.0.kill().unwrap(); // SIGKILL
    daemon.0.wait().unwrap();
    drop(daemon);

    assert!(
        !final_path.exists(),
        "no file under the final name after kill -9"
    );
    let kept = std::fs::metadata(&staging)
        .expect("staging file kept")
        .len();
    assert!(kept >= 1 << 20, "partial data kept: {kept}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("tasks/t-kill.json")).unwrap()).unwrap();
    assert_eq!(record["Phase"], "RUNNING");

    server.set_rate("/big.bin", Some(8 << 20));
    let (_daemon, _api, _token) = start_daemon(&state, &dev);
    // `ferry send --wait` on the same payload: idempotent, it follows the resumed task.
    let out = ferry()
        .arg("--state-dir")
        .arg(&state)
        .args(["send", "--wait", "--json", "--payload", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(payload.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "ferry send --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(view["Result"]["Files"][0]["Sha256"], sha(&body));
    assert_eq!(std::fs::read(&final_path).unwrap(), body);
    assert!(!staging.exists());

    let resumed = server.requests("/big.bin").pop().unwrap();
    let range = resumed
        .header("range")
        .expect("resumed with a Range request")
        .to_string();
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(
        from >= kept.min(1 << 20),
        "resumed from {from}, kept {kept}"
    );
    assert!(resumed.header("if-range").is_some());

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let sizes = seen.lock().unwrap();
    assert!(
        sizes.iter().all(|s| *s == body.len() as u64),
        "the final name showed a partial file: sizes {:?}",
        sizes
            .iter()
            .filter(|s| **s != body.len() as u64)
            .collect::<Vec<_>>()
    );
}
