//! What the engine refuses or bounds, end to end against the fault-injecting HTTP server on
//! 127.0.0.1: range answers that are not the range asked for, sources that can never resume,
//! slow drips and deadlines, rate limits beyond the budget, encoded bodies.

mod common;

use common::http_server::{Fault, Resource, TestServer};
use ferry::config::Config;
use ferry::error::{Code, Error};
use ferry::task::manager::Manager;
use ferry::task::record::{Phase, TaskResult, TaskView};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

struct Fixture {
    tmp: tempfile::TempDir,
    config: Config,
}

/// Quick retries, a 1 s idle timeout; `connections` 1 is a single stream without a probe.
fn fixture(connections: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
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
    config.transfer.connections = connections;
    config.transfer.part_size_mib = 1;
    config.transfer.parallel_min_size_mib = 2;
    config.transfer.split_below_mib_s = 0;
    Fixture { tmp, config }
}

fn body(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn sha(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

async fn fetch(fx: &Fixture, url: &str, name: &str) -> Result<TaskResult, Error> {
    common::fetch_payload(&fx.config, &common::download(url, name)).await
}

fn download_dir(fx: &Fixture) -> PathBuf {
    fx.tmp.path().join("dev/sdcard/Download")
}

fn staging(fx: &Fixture, id: &str) -> PathBuf {
    download_dir(fx).join(ferry::pipeline::staging_name(id))
}

/// Submits `url` as task `id` to a daemon's manager and waits until the task is finished.
/// (`fetch_once` removes every partial on failure; the daemon keeps what can resume.)
async fn run_task(m: &Manager, id: &str, url: &str, name: &str) -> TaskView {
    let json = serde_json::json!({
        "TaskId": id,
        "SourceFilePath": format!("/sdcard/Download/{name}"),
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": url,
    });
    m.submit(json.to_string().as_bytes()).await.unwrap();
    for _ in 0..1500 {
        let view = m.describe(id).unwrap();
        if view.phase.is_finished() {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {id} never finished: {:?}", m.describe(id).unwrap());
}

/// The final name was never written.
fn assert_not_landed(fx: &Fixture, name: &str) {
    assert!(
        !download_dir(fx).join(name).exists(),
        "{name} landed although the transfer failed"
    );
}

fn lie(first: u64, last: u64, content_range: Option<String>) -> Fault {
    Fault::Partial {
        first,
        last,
        content_range,
    }
}

/// Serves `len` bytes at `/x.bin`, queues `faults` for its next GETs, fetches it with
/// `connections`, and returns the error the task must end with.
async fn refused(connections: usize, len: u64, faults: Vec<Fault>) -> Error {
    let fx = fixture(connections);
    let server = TestServer::start().await;
    server.put("/x.bin", Resource::new(body(len, 1)));
    for fault in faults {
        server.push_fault("/x.bin", fault);
    }
    let err = fetch(&fx, &server.url("/x.bin"), "x.bin")
        .await
        .expect_err("a lying Content-Range must not land");
    assert_not_landed(&fx, "x.bin");
    err
}

fn assert_bad_range(err: &Error, says: &str) {
    assert_eq!(err.code, Code::SourceBadContentRange, "{err}");
    assert!(err.message.contains(says), "{err}");
}

#[tokio::test]
async fn a_range_answer_starting_elsewhere_is_refused_from_byte_zero() {
    // With a probe (bytes=0-) and without (a plain GET): the body of bytes 100.. must never be
    // written at 0 and land as a success.
    for connections in [8, 1] {
        let lying = lie(100, 999, Some("bytes 100-999/1000".into()));
        let err = refused(connections, 1000, vec![lying]).await;
        assert_bad_range(&err, "starts at byte 100 instead of 0");
    }
}

/// `bytes 0-99/*` to an open-ended range: the object may go on past the body, so the body
/// must not land as the whole file.
#[tokio::test]
async fn a_range_answer_naming_no_object_size_is_refused() {
    for connections in [8, 1] {
        let unknown = lie(0, 99, Some("bytes 0-99/*".into()));
        let err = refused(connections, 1000, vec![unknown]).await;
        assert_bad_range(&err, "names no object size");
    }
}

/// The first answer (version A) dies before its first byte; the retry is answered by another
/// version with a range nobody asked for. Version A must not outlive its body: the answer is
/// checked like any other, and nothing of it is written.
#[tokio::test]
async fn another_version_before_the_first_byte_is_checked_not_spliced() {
    let mut fx = fixture(1);
    fx.config.retry.initial_backoff_ms = 400;
    fx.config.retry.max_backoff_ms = 400;
    let server = TestServer::start().await;
    server.put("/v.bin", Resource::new(body(1000, 1)).etag(Some("\"A\"")));
    server.push_fault("/v.bin", Fault::ResetAfter(0));
    server.push_fault("/v.bin", lie(500, 999, Some("bytes 500-999/1000".into())));
    let url = server.url("/v.bin");
    let config = fx.config.clone();
    let tmp = fx.tmp.path().to_path_buf();
    let fetcher = tokio::spawn(async move {
        let fx = Fixture {
            tmp: tempfile::tempdir_in(tmp).unwrap(),
            config,
        };
        fetch(&fx, &url, "v.bin").await
    });
    while server.hits("/v.bin") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.replace("/v.bin", Resource::new(body(1000, 2)).etag(Some("\"B\"")));
    let err = fetcher
        .await
        .unwrap()
        .expect_err("a body of bytes 500.. must not land at 0");
    assert_bad_range(&err, "starts at byte 500 instead of 0");
    assert_not_landed(&fx, "v.bin");
}

#[tokio::test]
async fn a_range_answer_with_the_wrong_end_or_total_is_refused() {
    let short = lie(0, 499, Some("bytes 0-499/1000".into()));
    let err = refused(8, 1000, vec![short]).await;
    assert_bad_range(&err, "ends at byte 499 instead of 999");
    let bigger = lie(0, 999, Some("bytes 0-999/2000".into()));
    let err = refused(8, 1000, vec![bigger]).await;
    assert_bad_range(&err, "ends at byte 999 instead of 1999");
}

#[tokio::test]
async fn a_range_answer_without_content_range_is_refused() {
    let err = refused(8, 1000, vec![lie(0, 999, None)]).await;
    assert_bad_range(&err, "without a usable Content-Range");
    let err = refused(8, 1000, vec![lie(0, 999, Some("bytes 0-999".into()))]).await;
    assert_bad_range(&err, "without a usable Content-Range");
}

#[tokio::test]
async fn a_resumed_range_starting_elsewhere_is_refused() {
    // The first body stops at 400; the resume (bytes=400-, same ETag) is answered from 500.
    let faults = vec![
        Fault::TruncateAfter(400),
        lie(500, 999, Some("bytes 500-999/1000".into())),
    ];
    let err = refused(1, 1000, faults).await;
    assert_bad_range(&err, "starts at byte 500 instead of 400");
    let faults = vec![
        Fault::TruncateAfter(400),
        lie(400, 999, Some("bytes 400-999/1200".into())),
    ];
    let err = refused(1, 1000, faults).await;
    assert_bad_range(&err, "ends at byte 999 instead of 1199");
}

/// A parallel transfer of 4 MiB + 1 whose part at `first` gets `fault`.
async fn lying_part(first: u64, fault: Fault) -> Error {
    let fx = fixture(4);
    let server = TestServer::start().await;
    let len = 4 * MIB + 1;
    server.put("/p.bin", Resource::new(body(len, 2)));
    server.push_range_fault("/p.bin", first, fault);
    let err = fetch(&fx, &server.url("/p.bin"), "p.bin")
        .await
        .expect_err("a lying part must not land");
    assert_not_landed(&fx, "p.bin");
    err
}

#[tokio::test]
async fn every_parallel_part_is_checked_against_its_content_range() {
    let len = 4 * MIB + 1;
    // The probe (bytes=0-) answered from byte 5.
    let cr = format!("bytes 5-{}/{len}", len - 1);
    let err = lying_part(0, lie(5, len - 1, Some(cr))).await;
    assert_bad_range(&err, "starts at byte 5 instead of 0");
    // Part 2 answered with part 3.
    let cr = format!("bytes {}-{}/{len}", 3 * MIB, 4 * MIB - 1);
    let err = lying_part(2 * MIB, lie(3 * MIB, 4 * MIB - 1, Some(cr))).await;
    assert_bad_range(
        &err,
        &format!("starts at byte {} instead of {}", 3 * MIB, 2 * MIB),
    );
    // Part 1 answered with half of itself.
    let half = MIB + MIB / 2 - 1;
    let cr = format!("bytes {MIB}-{half}/{len}");
    let err = lying_part(MIB, lie(MIB, half, Some(cr))).await;
    assert_bad_range(
        &err,
        &format!("ends at byte {half} instead of {}", 2 * MIB - 1),
    );
    // Part 3 answered with the right bytes of an object of another size.
    let cr = format!("bytes {}-{}/{}", 3 * MIB, 4 * MIB - 1, len + 7);
    let err = lying_part(3 * MIB, lie(3 * MIB, 4 * MIB - 1, Some(cr))).await;
    assert_bad_range(
        &err,
        &format!("gives the object {} bytes instead of {len}", len + 7),
    );
    // Part 1 without any Content-Range.
    let err = lying_part(MIB, lie(MIB, 2 * MIB - 1, None)).await;
    assert_bad_range(&err, "without a usable Content-Range");
}

/// No `.ferry-*` staging file is left in the download folder.
fn assert_no_staging(fx: &Fixture) {
    let left: Vec<String> = std::fs::read_dir(download_dir(fx))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".ferry-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "partial data that cannot resume was kept: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_less_partial_is_removed_when_its_task_fails() {
    // It could never resume, so it is not kept for a re-submit (nor for prune's 168 h).
    let fx = fixture(1);
    let server = TestServer::start().await;
    let resource = Resource::new(body(1000, 7)).etag(None).last_modified(None);
    server.put("/gone.bin", resource);
    for _ in 0..10 {
        server.push_fault("/gone.bin", Fault::WrongContentLength { declared: 1100 });
    }
    let m = Manager::start(fx.config.clone()).await.unwrap();
    let view = run_task(&m, "t-gone", &server.url("/gone.bin"), "gone.bin").await;
    assert_eq!(view.phase, Phase::Failed, "{view:?}");
    assert_eq!(view.error_code.unwrap(), Code::IntegritySizeMismatch);
    assert!(!staging(&fx, "t-gone").exists(), "unresumable partial kept");
    m.shutdown().await;
}

#[tokio::test]
async fn a_validator_less_short_body_gives_up_after_three_restarts() {
    let fx = fixture(1);
    let server = TestServer::start().await;
    let resource = Resource::new(body(1000, 4)).etag(None).last_modified(None);
    server.put("/short.bin", resource);
    for _ in 0..10 {
        let short = Fault::WrongContentLength { declared: 1100 };
        server.push_fault("/short.bin", short);
    }
    let err = fetch(&fx, &server.url("/short.bin"), "short.bin")
        .await
        .expect_err("a body that is always short cannot succeed");
    assert_eq!(err.code, Code::IntegritySizeMismatch, "{err}");
    assert!(
        err.message
            .contains("sent 1000 of 1100 bytes 4 times and cannot resume (no ETag/Last-Modified)"),
        "{err}"
    );
    assert_eq!(server.hits("/short.bin"), 4, "three restarts, no more");
    assert_not_landed(&fx, "short.bin");
    assert_no_staging(&fx);
}

#[tokio::test]
async fn a_server_without_ranges_dropping_the_connection_is_not_a_change() {
    // Same ETag and length every time: not Integrity.SourceChanged, but said as it is.
    let fx = fixture(1);
    let server = TestServer::start().await;
    server.put("/drop.bin", Resource::new(body(200_000, 5)).no_range());
    for _ in 0..10 {
        server.push_fault("/drop.bin", Fault::TruncateAfter(50_000));
    }
    let err = fetch(&fx, &server.url("/drop.bin"), "drop.bin")
        .await
        .expect_err("a server that always drops cannot succeed");
    assert_ne!(err.code, Code::IntegritySourceChanged, "{err}");
    assert!(
        err.message
            .contains("does not support ranges and dropped the transfer 4 times"),
        "{err}"
    );
    assert_not_landed(&fx, "drop.bin");
    assert_no_staging(&fx);
}

#[tokio::test]
async fn a_validator_less_source_that_recovers_still_lands() {
    let fx = fixture(1);
    let server = TestServer::start().await;
    let data = body(1000, 6);
    let resource = Resource::new(data.clone()).etag(None).last_modified(None);
    server.put("/ok.bin", resource);
    for _ in 0..3 {
        server.push_fault("/ok.bin", Fault::TruncateAfter(300));
    }
    let result = fetch(&fx, &server.url("/ok.bin"), "ok.bin").await.unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_source_fails_as_too_slow_and_a_resubmit_resumes() {
    let mut fx = fixture(1);
    fx.config.transfer.low_speed_limit_bytes_s = 1024;
    fx.config.transfer.low_speed_time_secs = 2;
    let server = TestServer::start().await;
    let data = body(100_000, 8);
    server.put("/drip.bin", Resource::new(data.clone()));
    // 200 bytes/s in pieces of 10: never idle, never fast enough.
    server.set_rate("/drip.bin", Some(200));
    let m = Manager::start(fx.config.clone()).await.unwrap();
    let started = Instant::now();
    let view = run_task(&m, "t-drip", &server.url("/drip.bin"), "drip.bin").await;
    assert_eq!(view.phase, Phase::Failed, "{view:?}");
    assert_eq!(
        view.error_code.clone().unwrap(),
        Code::NetworkTooSlow,
        "{view:?}"
    );
    let msg = view.error_msg.clone().unwrap();
    assert!(msg.contains("below the limit of 1024 bytes/s"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        staging(&fx, "t-drip").exists(),
        "partial data kept for a re-submit"
    );
    server.set_rate("/drip.bin", None);
    let view = run_task(&m, "t-drip", &server.url("/drip.bin"), "drip.bin").await;
    assert_eq!(view.phase, Phase::Success, "{view:?}");
    assert_eq!(view.result.unwrap().files[0].sha256, sha(&data));
    let resumed = server.requests("/drip.bin").last().unwrap().range();
    assert!(
        resumed.is_some_and(|(first, _)| first > 0),
        "the re-submit resumed: {resumed:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn a_deadline_ends_a_transfer_that_would_take_longer() {
    let mut fx = fixture(1);
    fx.config.transfer.deadline_secs = 1;
    fx.config.transfer.low_speed_limit_bytes_s = 0;
    let server = TestServer::start().await;
    server.put("/long.bin", Resource::new(body(1_000_000, 9)));
    server.set_rate("/long.bin", Some(50_000));
    let started = Instant::now();
    let err = fetch(&fx, &server.url("/long.bin"), "long.bin")
        .await
        .expect_err("20 s of data with a 1 s deadline");
    assert_eq!(err.code, Code::TransferDeadlineExceeded, "{err}");
    assert!(
        err.message.contains("transfer.deadline_secs (1 s)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_not_landed(&fx, "long.bin");
}

#[tokio::test]
async fn a_parallel_transfer_slow_over_all_its_connections_fails_as_too_slow() {
    let mut fx = fixture(4);
    fx.config.transfer.low_speed_limit_bytes_s = 8192;
    fx.config.transfer.low_speed_time_secs = 2;
    let server = TestServer::start().await;
    server.put("/slow.bin", Resource::new(body(4 * MIB + 1, 10)));
    // Every connection shares 2000 bytes/s.
    server.set_link_rate("/slow.bin", 2000);
    let started = Instant::now();
    let url = server.url("/slow.bin");
    let fetched = fetch(&fx, &url, "slow.bin");
    let err = tokio::time::timeout(Duration::from_secs(30), fetched)
        .await
        .expect("the task must end")
        .expect_err("2000 bytes/s is below the limit");
    assert_eq!(err.code, Code::NetworkTooSlow, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stuck_part_is_asked_again_while_the_others_flow() {
    let mut fx = fixture(4);
    fx.config.transfer.low_speed_limit_bytes_s = 64 * 1024;
    fx.config.transfer.low_speed_time_secs = 1;
    let server = TestServer::start().await;
    let data = body(4 * MIB + 1, 11);
    server.put("/stuck.bin", Resource::new(data.clone()));
    // The others bring ~768 KiB/s together; part 2 drips at 1000 bytes/s once.
    server.set_rate("/stuck.bin", Some(256 * 1024));
    server.push_range_fault("/stuck.bin", 2 * MIB, Fault::Drip(1000));
    let url = server.url("/stuck.bin");
    let fetched = fetch(&fx, &url, "stuck.bin");
    let result = tokio::time::timeout(Duration::from_secs(30), fetched)
        .await
        .expect("a stuck part must not hold the transfer")
        .unwrap();
    assert_eq!(result.files[0].sha256, sha(&data));
    let part2 = server
        .requests("/stuck.bin")
        .iter()
        .filter_map(|r| r.range())
        .filter(|(first, _)| first / MIB == 2)
        .count();
    assert_eq!(part2, 2, "the dripping part was asked again once");
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_fails_at_once_and_says_why() {
    let fx = fixture(1);
    let server = TestServer::start().await;
    server.put("/busy.bin", Resource::new(body(1000, 12)));
    let busy = Fault::TooManyRequests {
        retry_after: "100000".into(),
    };
    server.push_fault("/busy.bin", busy);
    let started = Instant::now();
    let err = fetch(&fx, &server.url("/busy.bin"), "busy.bin")
        .await
        .expect_err("a wait of 100000 s does not fit a 30 s budget");
    assert_eq!(err.code, Code::SourceHttp4xx, "{err}");
    assert!(
        err.message
            .contains("the server asked to retry after 100000 s (beyond the 30 s budget"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.hits("/busy.bin"), 1, "no retry");
}

#[tokio::test]
async fn an_encoded_body_is_saved_as_sent_with_a_note() {
    // ferry asks for identity; a server that sends gzip anyway gets its bytes saved as they
    // are, sized and hashed as such, and the task says so.
    for connections in [1, 4] {
        let fx = fixture(connections);
        let server = TestServer::start().await;
        let stored = body(3 * MIB, 13);
        let resource = Resource::new(stored.clone()).content_encoding("gzip");
        server.put("/z.bin", resource);
        let result = fetch(&fx, &server.url("/z.bin"), "z.bin").await.unwrap();
        assert_eq!(result.files[0].size, stored.len() as u64);
        assert_eq!(result.files[0].sha256, sha(&stored));
        let note = result.notes.iter().find(|n| n.contains("Content-Encoding"));
        let note = note.unwrap_or_else(|| panic!("no note: {:?}", result.notes));
        assert!(
            note.contains("Content-Encoding: gzip; it is saved as sent, not decoded"),
            "{note}"
        );
        assert!(note.starts_with("/sdcard/Download/z.bin"), "{note}");
    }
}

#[tokio::test]
async fn a_part_answered_whole_is_not_a_change_and_is_bounded() {
    // Same ETag and size each time: the server refuses ranges now and then, it did not change.
    let len = 4 * MIB + 1;
    let data = body(len, 14);
    let once = {
        let fx = fixture(4);
        let server = TestServer::start().await;
        server.put("/part.bin", Resource::new(data.clone()));
        server.push_range_fault("/part.bin", MIB, Fault::Whole);
        let result = fetch(&fx, &server.url("/part.bin"), "part.bin").await;
        result.unwrap().files[0].sha256.clone()
    };
    assert_eq!(once, sha(&data), "one refusal: started over and landed");
    let err = lying_part_times(MIB, 6, Fault::Whole).await;
    assert_eq!(err.code, Code::SourceBadContentRange, "{err}");
    assert!(
        err.message
            .contains("answered a part of the same version with the whole object 4 times"),
        "{err}"
    );
}

/// As [`lying_part`], with `fault` queued `times` for the part at `first`.
async fn lying_part_times(first: u64, times: usize, fault: Fault) -> Error {
    let fx = fixture(4);
    let server = TestServer::start().await;
    server.put("/p.bin", Resource::new(body(4 * MIB + 1, 2)));
    for _ in 0..times {
        server.push_range_fault("/p.bin", first, fault.clone());
    }
    let err = fetch(&fx, &server.url("/p.bin"), "p.bin")
        .await
        .expect_err("a source refusing parts every time must not land");
    assert_not_landed(&fx, "p.bin");
    err
}
