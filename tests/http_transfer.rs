//! The HTTP source end to end, in-process: a real fault-injecting HTTP server on 127.0.0.1,
//! the real engine and sink writing under a temporary device root.

mod common;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::{Fault, Resource, TestServer};
use ferry::config::Config;
use ferry::error::{Code, Error};
use ferry::pipeline::{fetch_once, ProgressFn};
use ferry::task::payload;
use ferry::task::record::TaskResult;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: Config,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dev");
    let mut config = Config {
        state_dir: tmp.path().join("state"),
        device_root: Some(root.clone()),
        ..Config::default()
    };
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 100;
    config.retry.max_retries = 4;
    config.retry.budget_secs = 30;
    config.http.read_idle_timeout_secs = 1;
    Fixture {
        _tmp: tmp,
        root,
        config,
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

/// Runs a DOWNLOAD_URL payload to `/sdcard/Download/NAME`.
async fn fetch(fx: &Fixture, url: &str, name: &str) -> Result<TaskResult, Error> {
    common::fetch_payload(&fx.config, &common::download(url, name)).await
}

async fn fetch_json(fx: &Fixture, json: &serde_json::Value) -> Result<TaskResult, Error> {
    common::fetch_payload(&fx.config, json).await
}

fn download_dir(fx: &Fixture) -> PathBuf {
    fx.root.join("sdcard/Download")
}

/// Only the final files named here exist; no staging file was left behind.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    assert_eq!(found, names, "files in {}", dir.display());
}

#[tokio::test]
async fn whole_object_lands_with_its_sha256() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(300_000, 1);
    server.put("/a.bin", Resource::new(data.clone()));
    let result = fetch(&fx, &server.url("/a.bin"), "a.bin").await.unwrap();
    assert_eq!(result.files[0].path, "/sdcard/Download/a.bin");
    assert_eq!(result.files[0].size, data.len() as u64);
    assert_eq!(result.files[0].sha256, sha(&data));
    assert_eq!(
        std::fs::read(download_dir(&fx).join("a.bin")).unwrap(),
        data
    );
    assert_only(&download_dir(&fx), &["a.bin"]);
    let req = &server.requests("/a.bin")[0];
    assert_eq!(req.header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn truncated_body_resumes_with_range_and_if_range() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(500_000, 2);
    let resource = Resource::new(data.clone());
    let etag = resource.etag.clone().unwrap();
    server.put("/t.bin", resource);
    server.push_fault("/t.bin", Fault::TruncateAfter(123_456));
    let result = fetch(&fx, &server.url("/t.bin"), "t.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    let requests = server.requests("/t.bin");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("range"), Some("bytes=123456-"));
    assert_eq!(requests[1].header("if-range"), Some(etag.as_str()));
    assert_only(&download_dir(&fx), &["t.bin"]);
}

#[tokio::test]
async fn reset_mid_body_resumes() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(400_000, 3);
    server.put("/r.bin", Resource::new(data.clone()));
    server.push_fault("/r.bin", Fault::ResetAfter(100_000));
    let result = fetch(&fx, &server.url("/r.bin"), "r.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    assert!(server.requests("/r.bin")[1].header("range").is_some());
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(300_000, 4);
    server.put("/n.bin", Resource::new(data.clone()).no_range());
    server.push_fault("/n.bin", Fault::TruncateAfter(50_000));
    let result = fetch(&fx, &server.url("/n.bin"), "n.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    assert_eq!(
        std::fs::read(download_dir(&fx).join("n.bin")).unwrap(),
        data
    );
}

#[tokio::test]
async fn validator_less_source_restarts_instead_of_splicing() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(200_000, 5);
    server.put(
        "/v.bin",
        Resource::new(data.clone()).etag(None).last_modified(None),
    );
    server.push_fault("/v.bin", Fault::TruncateAfter(70_000));
    let result = fetch(&fx, &server.url("/v.bin"), "v.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    assert_eq!(server.requests("/v.bin")[1].header("range"), None);
}

/// The object changes between the first request and the retry: the result is the new
/// version in full, never the old head spliced onto the new tail.
async fn changed_source_case(lying_server: bool) {
    let fx = fixture();
    let server = TestServer::start().await;
    let v1 = body(400_000, 6);
    let v2 = body(400_000, 7);
    let old = Resource::new(v1);
    server.put(
        "/c.bin",
        if lying_server {
            old.ignore_if_range()
        } else {
            old
        },
    );
    // The stall outlasts the 1 s idle timeout, so the client gives up and retries.
    server.push_fault("/c.bin", Fault::Stall(Duration::from_secs(3)));
    let url = server.url("/c.bin");
    let fetcher = tokio::spawn({
        let fx_config = fx.config.clone();
        async move {
            let fx2 = Fixture {
                _tmp: tempfile::tempdir().unwrap(),
                root: fx_config.device_root.clone().unwrap(),
                config: fx_config,
            };
            fetch(&fx2, &url, "c.bin").await
        }
    });
    while server.hits("/c.bin") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = Resource::new(v2.clone());
    server.replace(
        "/c.bin",
        if lying_server {
            new.ignore_if_range()
        } else {
            new
        },
    );
    let result = fetcher.await.unwrap().unwrap();
    assert_eq!(result.files[0].sha256, sha(&v2));
    assert_eq!(std::fs::read(download_dir(&fx).join("c.bin")).unwrap(), v2);
}

#[tokio::test]
async fn etag_change_between_requests_restarts_from_zero() {
    changed_source_case(false).await;
}

#[tokio::test]
async fn etag_change_on_a_server_ignoring_if_range_is_detected() {
    changed_source_case(true).await;
}

#[tokio::test]
async fn transient_statuses_are_retried() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(10_000, 8);
    server.put("/s.bin", Resource::new(data.clone()));
    for status in [503, 500, 408] {
        server.push_fault("/s.bin", Fault::Status(status));
    }
    let result = fetch(&fx, &server.url("/s.bin"), "s.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    assert_eq!(server.hits("/s.bin"), 4);
}

#[tokio::test]
async fn too_many_requests_honours_retry_after() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/q.bin", Resource::new(body(1000, 9)));
    server.push_fault(
        "/q.bin",
        Fault::TooManyRequests {
            retry_after: "1".into(),
        },
    );
    let started = Instant::now();
    fetch(&fx, &server.url("/q.bin"), "q.bin").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn persistent_5xx_fails_after_retries_with_a_count() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/f.bin", Resource::new(body(1000, 10)));
    for _ in 0..10 {
        server.push_fault("/f.bin", Fault::Status(502));
    }
    let err = fetch(&fx, &server.url("/f.bin"), "f.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceHttp5xx);
    assert!(
        err.message.contains("after 4 retries in"),
        "{}",
        err.message
    );
    assert_only(&download_dir(&fx), &[]);
}

#[tokio::test]
async fn missing_and_forbidden_are_permanent() {
    let fx = fixture();
    let server = TestServer::start().await;
    let err = fetch(&fx, &server.url("/nope.bin"), "nope.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceNotFound);
    assert_eq!(server.hits("/nope.bin"), 1, "404 is not retried");
    server.put("/x.bin", Resource::new(body(10, 1)));
    server.push_fault("/x.bin", Fault::Status(403));
    let err = fetch(&fx, &server.url("/x.bin"), "x.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceAccessDenied);
    assert_only(&download_dir(&fx), &[]);
}

#[tokio::test]
async fn content_length_longer_than_the_body_is_an_error_not_a_success() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(5000, 11);
    server.put("/w.bin", Resource::new(data.clone()));
    for _ in 0..10 {
        server.push_fault("/w.bin", Fault::WrongContentLength { declared: 9000 });
    }
    let err = fetch(&fx, &server.url("/w.bin"), "w.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::IntegritySizeMismatch, "{}", err.message);
    assert_only(&download_dir(&fx), &[]);
}

#[tokio::test]
async fn redirects_are_followed_up_to_ten() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(2000, 12);
    server.put("/final.bin", Resource::new(data.clone()));
    let first = server.redirect_chain("/ok", 10, "/final.bin");
    let result = fetch(&fx, &server.url(&first), "final.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    let first = server.redirect_chain("/loop", 11, "/final.bin");
    let err = fetch(&fx, &server.url(&first), "loop.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceTooManyRedirects, "{}", err.message);
}

#[tokio::test]
async fn slow_body_reports_growing_progress() {
    let fx = fixture();
    let server = TestServer::start().await;
    let data = body(256 * 1024, 13);
    server.put("/slow.bin", Resource::new(data.clone()));
    server.set_rate("/slow.bin", Some(256 * 1024));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let progress: ProgressFn = {
        let seen = seen.clone();
        Arc::new(move |done, total| seen.lock().unwrap().push((done, total)))
    };
    let task = payload::validate(
        payload::parse(
            serde_json::json!({
                "SourceFilePath": "/sdcard/Download/slow.bin",
                "UploadType": "DOWNLOAD_URL",
                "UploadUrl": server.url("/slow.bin"),
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap(),
        &fx.config.allowed_roots,
    )
    .unwrap();
    let result = fetch_once(&fx.config, task, progress, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 3, "progress updates: {}", seen.len());
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(
        seen.last().unwrap(),
        &(data.len() as u64, Some(data.len() as u64))
    );
}

#[tokio::test]
async fn empty_object_gives_an_empty_file() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/e.bin", Resource::new(Vec::new()));
    let result = fetch(&fx, &server.url("/e.bin"), "e.bin").await.unwrap();
    assert_eq!(result.files[0].size, 0);
    assert_eq!(result.files[0].sha256, sha(b""));
    assert_only(&download_dir(&fx), &["e.bin"]);
}

#[tokio::test]
async fn md5_mismatch_leaves_nothing() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/m.bin", Resource::new(body(1000, 14)));
    let err = fetch_json(
        &fx,
        &serde_json::json!({
            "SourceFilePath": "/sdcard/Download/m.bin",
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": server.url("/m.bin"),
            "FileMd5": "00000000000000000000000000000000",
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::IntegrityMd5Mismatch);
    assert_only(&download_dir(&fx), &[]);
}

#[tokio::test]
async fn existing_file_is_replaced_atomically() {
    let fx = fixture();
    let server = TestServer::start().await;
    std::fs::create_dir_all(download_dir(&fx)).unwrap();
    std::fs::write(download_dir(&fx).join("o.bin"), b"old contents").unwrap();
    let data = body(50_000, 15);
    server.put("/o.bin", Resource::new(data.clone()));
    fetch(&fx, &server.url("/o.bin"), "o.bin").await.unwrap();
    assert_eq!(
        std::fs::read(download_dir(&fx).join("o.bin")).unwrap(),
        data
    );
    assert_only(&download_dir(&fx), &["o.bin"]);
}

#[tokio::test]
async fn symlink_inside_the_root_pointing_out_is_refused() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/p.bin", Resource::new(body(100, 16)));
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fx.root.join("sdcard")).unwrap();
    std::os::unix::fs::symlink(outside.path(), fx.root.join("sdcard/Download")).unwrap();
    let err = fetch(&fx, &server.url("/p.bin"), "p.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::StoragePathNotAllowed, "{}", err.message);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert_eq!(server.hits("/p.bin"), 0, "refused before any download");
}

#[tokio::test]
async fn symlink_as_the_final_name_is_refused() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/l.bin", Resource::new(body(100, 17)));
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    std::fs::create_dir_all(download_dir(&fx)).unwrap();
    std::os::unix::fs::symlink(&victim, download_dir(&fx).join("l.bin")).unwrap();
    let err = fetch(&fx, &server.url("/l.bin"), "l.bin")
        .await
        .unwrap_err();
    // One check, one code (the sink's), asked before any byte is fetched.
    assert_eq!(err.code, Code::StoragePathNotAllowed, "{}", err.message);
    assert_eq!(server.hits("/l.bin"), 0, "refused before fetching");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

#[tokio::test]
async fn escapes_and_outside_roots_are_refused_before_any_request() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/z.bin", Resource::new(body(100, 18)));
    let url = server.url("/z.bin");
    let cases = [
        ("/sdcard/../etc/passwd", Code::InvalidSourceFilePath, None),
        // Refused at intake now, before a task exists.
        ("/etc/ferry-test", Code::InvalidSourceFilePath, None),
        (
            "/proc/self/root/sdcard/x",
            Code::InvalidSourceFilePath,
            None,
        ),
        ("/sdcard", Code::InvalidSourceFilePath, None),
        (
            "/sdcard/Download/z.bin",
            Code::InvalidTargetFileName,
            Some("/etc/passwd"),
        ),
        (
            "/sdcard/Download/z.bin",
            Code::InvalidTargetFileName,
            Some("../../z"),
        ),
    ];
    for (path, code, target) in cases {
        let mut json = serde_json::json!({
            "SourceFilePath": path, "UploadType": "DOWNLOAD_URL", "UploadUrl": url,
        });
        if let Some(t) = target {
            json["TargetFileName"] = t.into();
        }
        let err = fetch_json(&fx, &json).await.unwrap_err();
        assert_eq!(err.code, code, "{path} {target:?}: {}", err.message);
    }
    assert_eq!(server.hits("/z.bin"), 0);
    assert!(!fx.root.join("etc").exists());
}

#[tokio::test]
async fn metadata_address_is_refused() {
    let fx = fixture();
    let err = fetch(&fx, "http://100.100.100.200/latest/meta-data/", "meta")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NetworkAddressNotAllowed);
}

/// Disk full on a real small filesystem: needs root to mount a tmpfs (CI runs as root).
#[tokio::test]
async fn disk_full_on_a_small_tmpfs_leaves_nothing_behind() {
    if !nix::unistd::geteuid().is_root() {
        skip::skip("disk_full_on_a_small_tmpfs_leaves_nothing_behind needs root to mount a tmpfs");
        return;
    }
    let fx = fixture();
    let mount_point = fx.root.join("sdcard");
    std::fs::create_dir_all(&mount_point).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount_point)
        .status()
        .expect("running mount");
    assert!(status.success(), "mount -t tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount_point.clone());
    let server = TestServer::start().await;
    server.put("/big.bin", Resource::new(body(4 << 20, 19)));
    let err = fetch(&fx, &server.url("/big.bin"), "big.bin")
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::StorageDiskFull, "{}", err.message);
    assert_only(&download_dir(&fx), &[]);
}
