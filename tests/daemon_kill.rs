//! The real binary under SIGKILL: a transfer interrupted by `kill -9` resumes after restart
//! from its partial data, lands with the right sha256, and its final name never shows a
//! partial file. Runs on an Android-like [`Target`]; `FERRY_TEST_CHROOT=1
//! FERRY_TEST_BIN=AARCH64_FERRY` runs it on the aarch64 build under qemu in a chroot.

mod cli_support;
mod common;

use cli_support::{Daemon, Target};
use common::http_server::{Resource, TestServer};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn describe(d: &Daemon, id: &str) -> serde_json::Value {
    d.get(&format!("/v1/tasks/{id}")).1
}

fn sha(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
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
    let t = Target::new();
    let server = TestServer::start_blocking();
    let body: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    server.put("/big.bin", Resource::new(body.clone()));
    server.set_rate("/big.bin", Some(1 << 20));
    let final_path = t.host("/sdcard/Download/big.bin");
    let staging = t.host(format!(
        "/sdcard/Download/{}",
        ferry::pipeline::staging_name("t-kill")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (watcher, seen) = watch(final_path.clone(), stop.clone());

    let mut daemon = t.daemon(&[]);
    let payload = serde_json::json!({
        "TaskId": "t-kill",
        "SourceFilePath": "/sdcard/Download/big.bin",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url("/big.bin"),
    })
    .to_string();
    let (status, view) = daemon.request(
        "POST",
        "/v1/tasks",
        Some(&daemon.token),
        Some(payload.as_bytes()),
    );
    assert_eq!(status, 201, "{view}");
    let deadline = Instant::now() + t.timeout(Duration::from_secs(30));
    while describe(&daemon, "t-kill")["BytesDone"]
        .as_u64()
        .unwrap_or(0)
        < 1 << 20
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    let state = daemon.state.clone();
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
    assert_eq!(common::journal_phase(&record).0, "RUNNING");

    server.set_rate("/big.bin", Some(8 << 20));
    let _daemon = t.daemon(&[]);
    // `ferry send --wait` on the same payload: idempotent, it follows the resumed task.
    let out = t
        .command()
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
