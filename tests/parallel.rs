//! Parallel ranged transfers and the bandwidth cap, end to end: the real engine, sink and
//! manager against the fault-injecting HTTP server on 127.0.0.1, with parts of 1 MiB so
//! objects of a few MiB have several.

mod common;

use common::http_server::{Fault, Recorded, Resource, TestServer};
use ferry::config::Config;
use ferry::error::{Code, Error};
use ferry::manager::Manager;
use ferry::payload;
use ferry::runner::{fetch_once, ProgressFn};
use ferry::task::{Phase, TaskResult, TaskView};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

fn config(tmp: &tempfile::TempDir) -> Config {
    let mut config = Config {
        state_dir: tmp.path().join("state"),
        device_root: Some(tmp.path().join("dev")),
        ..Config::default()
    };
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 100;
    config.retry.max_retries = 4;
    config.retry.budget_secs = 30;
    config.http.read_idle_timeout_secs = 1;
    config.transfer.connections = 4;
    config.transfer.part_size_mib = 1;
    config.transfer.parallel_min_size_mib = 2;
    config
}

fn body(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn payload_json(url: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "SourceFilePath": format!("/sdcard/Download/{name}"),
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": url,
    })
}

async fn fetch(
    config: &Config,
    url: &str,
    name: &str,
    progress: ProgressFn,
) -> Result<TaskResult, Error> {
    let json = payload_json(url, name).to_string();
    let task = payload::validate(payload::parse(json.as_bytes())?)?;
    fetch_once(config, task, progress, CancellationToken::new()).await
}

fn no_progress() -> ProgressFn {
    Arc::new(|_, _| {})
}

fn landed(tmp: &tempfile::TempDir, name: &str) -> Vec<u8> {
    std::fs::read(tmp.path().join("dev/sdcard/Download").join(name)).unwrap()
}

fn download_dir_names(tmp: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("dev/sdcard/Download"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// (first, last) of every GET's `Range`, in order; a GET without one panics.
fn ranges(requests: &[Recorded]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .map(|r| {
            let (first, last) = r.range().unwrap_or_else(|| panic!("no Range: {r:?}"));
            (first, last.expect("bounded range"))
        })
        .collect()
}

/// The request ranges of every part of an object of `len` bytes, 1 MiB each.
fn part_ranges(len: u64) -> Vec<(u64, u64)> {
    (0..len.div_ceil(MIB))
        .map(|i| (i * MIB, ((i + 1) * MIB).min(len) - 1))
        .collect()
}

#[tokio::test]
async fn large_object_goes_parallel_with_one_request_per_part_and_exact_sha256() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let len = 8 * MIB + 12_345;
    let data = body(len, 1);
    let resource = Resource::new(data.clone());
    let etag = resource.etag.clone().unwrap();
    server.put("/big.bin", resource);
    // Slow enough that the parts overlap.
    server.set_rate("/big.bin", Some(4 * MIB));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let progress: ProgressFn = {
        let seen = seen.clone();
        Arc::new(move |done, total| seen.lock().unwrap().push((done, total)))
    };
    let result = fetch(&config, &server.url("/big.bin"), "big.bin", progress)
        .await
        .unwrap();
    assert_eq!(result.files[0].size, len);
    assert_eq!(result.files[0].sha256, sha(&data));
    assert!(landed(&tmp, "big.bin") == data);
    assert_eq!(
        download_dir_names(&tmp),
        ["big.bin"],
        "no staging file left"
    );
    let requests = server.requests("/big.bin");
    let mut got = ranges(&requests);
    assert_eq!(got[0], (0, MIB - 1), "the probe asks for the first part");
    assert_eq!(requests[0].header("if-range"), None);
    for r in &requests[1..] {
        assert_eq!(r.header("if-range"), Some(etag.as_str()), "{r:?}");
    }
    got.sort();
    assert_eq!(got, part_ranges(len), "each part exactly once");
    assert_eq!(
        server.max_in_flight("/big.bin"),
        4,
        "transfer.connections parts at once"
    );
    let seen = seen.lock().unwrap();
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "monotonic");
    assert_eq!(
        seen.last().unwrap(),
        &(len, Some(len)),
        "bytes of all parts"
    );
}

#[tokio::test]
async fn a_failing_part_is_retried_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let len = 6 * MIB;
    let data = body(len, 2);
    server.put("/f.bin", Resource::new(data.clone()));
    server.push_range_fault("/f.bin", 3 * MIB, Fault::ResetAfter(100_000));
    server.push_range_fault("/f.bin", 5 * MIB, Fault::Status(503));
    server.push_range_fault("/f.bin", 5 * MIB, Fault::TruncateAfter(200_000));
    let result = fetch(&config, &server.url("/f.bin"), "f.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    let got = ranges(&server.requests("/f.bin"));
    let in_part = |i: u64| -> Vec<(u64, u64)> {
        let mut v: Vec<_> = got
            .iter()
            .copied()
            .filter(|(first, _)| first / MIB == i)
            .collect();
        v.sort();
        v
    };
    for i in [0, 1, 2, 4] {
        assert_eq!(in_part(i), [(i * MIB, (i + 1) * MIB - 1)], "part {i}");
    }
    let part3 = in_part(3);
    assert_eq!(part3.len(), 2, "{part3:?}");
    assert_eq!(part3[0], (3 * MIB, 4 * MIB - 1));
    assert_eq!(part3[1].1, 4 * MIB - 1, "the retry stays inside its part");
    let part5 = in_part(5);
    assert_eq!(part5.len(), 3, "503, then a truncated body, then the rest");
    assert_eq!(part5[0], (5 * MIB, 6 * MIB - 1));
    assert_eq!(part5[1], (5 * MIB, 6 * MIB - 1));
    assert!(
        part5[2].0 > 5 * MIB && part5[2].0 <= 5 * MIB + 200_000,
        "resumed where the truncated body stopped: {part5:?}"
    );
}

/// The object changes while parts are in flight: the transfer starts over and lands the new
/// version whole (a lying server that ignores If-Range is caught by the ETag check).
async fn changed_mid_transfer(lying_server: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let len = 8 * MIB;
    let (v1, v2) = (body(len, 3), body(len, 4));
    let version = |data: &Vec<u8>| {
        let r = Resource::new(data.clone());
        if lying_server {
            r.ignore_if_range()
        } else {
            r
        }
    };
    server.put("/c.bin", version(&v1));
    server.set_rate("/c.bin", Some(2 * MIB));
    let url = server.url("/c.bin");
    let fetcher = tokio::spawn({
        let config = config.clone();
        async move { fetch(&config, &url, "c.bin", no_progress()).await }
    });
    while server.hits("/c.bin") < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.replace("/c.bin", version(&v2));
    server.set_rate("/c.bin", None);
    let result = fetcher.await.unwrap().unwrap();
    assert_eq!(result.files[0].sha256, sha(&v2));
    assert!(landed(&tmp, "c.bin") == v2);
    let probes = server
        .requests("/c.bin")
        .iter()
        .filter(|r| r.header("if-range").is_none())
        .count();
    assert_eq!(probes, 2, "the transfer started over once");
}

#[tokio::test]
async fn validator_change_mid_transfer_restarts_from_zero() {
    changed_mid_transfer(false).await;
}

#[tokio::test]
async fn validator_change_on_a_server_ignoring_if_range_restarts_from_zero() {
    changed_mid_transfer(true).await;
}

#[tokio::test]
async fn range_less_server_is_one_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let data = body(4 * MIB, 5);
    server.put("/n.bin", Resource::new(data.clone()).no_range());
    let result = fetch(&config, &server.url("/n.bin"), "n.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    assert_eq!(server.hits("/n.bin"), 1, "the 200 body is used as it is");
    assert!(landed(&tmp, "n.bin") == data);
}

#[tokio::test]
async fn objects_without_a_validator_or_below_the_threshold_are_one_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let plain = body(4 * MIB, 6);
    let resource = Resource::new(plain.clone()).etag(None).last_modified(None);
    server.put("/v.bin", resource);
    let result = fetch(&config, &server.url("/v.bin"), "v.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&plain));
    // The probe's first MiB, then the rest in one open-ended request (no validator: no
    // If-Range, so the server sends the whole object again and the stream starts over).
    assert_eq!(server.hits("/v.bin"), 2);
    let small = body(MIB + MIB / 2, 7);
    server.put("/s.bin", Resource::new(small.clone()));
    let result = fetch(&config, &server.url("/s.bin"), "s.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&small));
    let requests = server.requests("/s.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range(),
        Some((MIB, None)),
        "the rest, one stream"
    );
}

#[tokio::test]
async fn empty_object_one_part_and_two_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    server.put("/e.bin", Resource::new(Vec::new()));
    let result = fetch(&config, &server.url("/e.bin"), "e.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].size, 0);
    assert_eq!(result.files[0].sha256, sha(b""));
    assert!(landed(&tmp, "e.bin").is_empty());

    let one = body(MIB, 8);
    server.put("/one.bin", Resource::new(one.clone()));
    let result = fetch(&config, &server.url("/one.bin"), "one.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&one));
    assert_eq!(
        server.hits("/one.bin"),
        1,
        "exactly one part: the probe is all"
    );

    let two = body(2 * MIB, 9);
    server.put("/two.bin", Resource::new(two.clone()));
    let result = fetch(&config, &server.url("/two.bin"), "two.bin", no_progress())
        .await
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&two));
    let mut got = ranges(&server.requests("/two.bin"));
    got.sort();
    assert_eq!(got, part_ranges(2 * MIB));
    assert_eq!(
        download_dir_names(&tmp),
        ["e.bin", "one.bin", "two.bin"],
        "no staging file left"
    );
}

#[tokio::test]
async fn file_md5_is_checked_over_the_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let server = TestServer::start().await;
    let data = body(3 * MIB + 7, 13);
    server.put("/m.bin", Resource::new(data.clone()));
    let md5: String = md5::Md5::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for (name, md5, ok) in [
        ("good.bin", md5.as_str(), true),
        ("bad.bin", "00000000000000000000000000000000", false),
    ] {
        let mut json = payload_json(&server.url("/m.bin"), name);
        json["FileMd5"] = md5.into();
        let task = payload::validate(payload::parse(json.to_string().as_bytes()).unwrap()).unwrap();
        let result = fetch_once(&config, task, no_progress(), CancellationToken::new()).await;
        match ok {
            true => assert_eq!(result.unwrap().files[0].sha256, sha(&data)),
            false => assert_eq!(result.unwrap_err().code, Code::IntegrityMd5Mismatch),
        }
    }
    assert_eq!(download_dir_names(&tmp), ["good.bin"]);
    assert_eq!(server.hits("/m.bin"), 8, "both went in 4 parts");
}

fn manager_config(tmp: &tempfile::TempDir) -> Config {
    let mut config = config(tmp);
    config.max_concurrent_tasks = 2;
    config.checkpoint_bytes = 64 * 1024;
    config
}

fn submit_json(id: &str, url: &str, name: &str) -> Vec<u8> {
    let mut json = payload_json(url, name);
    json["TaskId"] = id.into();
    json.to_string().into_bytes()
}

async fn wait_for(m: &Manager, id: &str, what: impl Fn(&TaskView) -> bool) -> TaskView {
    for _ in 0..1500 {
        let view = m.describe(id).unwrap();
        if what(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {id} never got there: {:?}", m.describe(id).unwrap());
}

fn staging(tmp: &tempfile::TempDir, id: &str) -> PathBuf {
    tmp.path()
        .join(format!("dev/sdcard/Download/.ferry-{id}.part"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_fetches_only_the_missing_bytes_of_each_part() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let len = 8 * MIB;
    let data = body(len, 10);
    server.put("/r.bin", Resource::new(data.clone()));
    server.set_rate("/r.bin", Some(MIB));
    let m = Manager::start(manager_config(&tmp)).await.unwrap();
    m.submit(&submit_json("t-r", &server.url("/r.bin"), "r.bin"))
        .unwrap();
    wait_for(&m, "t-r", |v| v.bytes_done > 2 * MIB).await;
    m.shutdown().await;
    let before = server.hits("/r.bin");
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("state/tasks/t-r.json")).unwrap())
            .unwrap();
    assert_eq!(journal["Phase"], "RUNNING");
    let resume = &journal["Resume"];
    assert_eq!(resume["PartSize"], MIB);
    let parts: Vec<u64> = resume["Parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(parts.len(), 8);
    let kept: u64 = parts.iter().sum();
    assert!(kept > MIB, "checkpointed at shutdown: {parts:?}");
    assert!(
        parts.iter().any(|p| *p < MIB),
        "unfinished parts: {parts:?}"
    );
    assert!(staging(&tmp, "t-r").exists());

    server.set_rate("/r.bin", None);
    let m = Manager::start(manager_config(&tmp)).await.unwrap();
    let done = wait_for(&m, "t-r", |v| v.phase.is_finished()).await;
    assert_eq!(done.phase, Phase::Success, "{done:?}");
    assert_eq!(done.result.unwrap().files[0].sha256, sha(&data));
    assert!(landed(&tmp, "r.bin") == data);
    assert!(!staging(&tmp, "t-r").exists());
    let mut again = ranges(&server.requests("/r.bin")[before..]);
    again.sort();
    let missing: Vec<(u64, u64)> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| **p < MIB)
        .map(|(i, p)| (i as u64 * MIB + p, (i as u64 + 1) * MIB - 1))
        .collect();
    assert_eq!(
        again, missing,
        "only the missing bytes, each part from its own end"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parallel_transfer_removes_its_staging_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/x.bin", Resource::new(body(8 * MIB, 14)));
    server.set_rate("/x.bin", Some(MIB));
    let m = Manager::start(manager_config(&tmp)).await.unwrap();
    m.submit(&submit_json("t-x", &server.url("/x.bin"), "x.bin"))
        .unwrap();
    wait_for(&m, "t-x", |v| v.bytes_done > MIB).await;
    assert!(server.max_in_flight("/x.bin") > 1);
    let view = m.cancel("t-x").await.unwrap();
    assert_eq!(view.phase, Phase::Cancelled);
    assert!(!staging(&tmp, "t-x").exists());
    assert_eq!(download_dir_names(&tmp), Vec::<String>::new());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_is_shared_by_concurrent_transfers() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let parallel = body(2 * MIB, 11);
    let single = body(2 * MIB, 12);
    server.put("/p.bin", Resource::new(parallel.clone()));
    server.put("/s.bin", Resource::new(single.clone()).no_range());
    let mut config = manager_config(&tmp);
    config.bandwidth_limit_kib = 2048;
    let m = Manager::start(config).await.unwrap();
    let started = Instant::now();
    m.submit(&submit_json("t-p", &server.url("/p.bin"), "p.bin"))
        .unwrap();
    m.submit(&submit_json("t-s", &server.url("/s.bin"), "s.bin"))
        .unwrap();
    let p = wait_for(&m, "t-p", |v| v.phase.is_finished()).await;
    let s = wait_for(&m, "t-s", |v| v.phase.is_finished()).await;
    let took = started.elapsed();
    assert_eq!(p.result.unwrap().files[0].sha256, sha(&parallel));
    assert_eq!(s.result.unwrap().files[0].sha256, sha(&single));
    assert!(
        server.hits("/p.bin") >= 2,
        "the capped transfer still went in parts"
    );
    // 4 MiB under a shared 2 MiB/s cap: about 2 s (less the burst), never ~1 s.
    assert!(
        took >= Duration::from_millis(1500),
        "4 MiB at 2 MiB/s took only {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    m.shutdown().await;
}
