//! The task manager in-process: queue, idempotency, cancel, journal resume, pruning.

mod common;

use common::http_server::{Resource, TestServer};
use ferry::config::Config;
use ferry::error::Code;
use ferry::task::manager::Manager;
use ferry::task::record::{Phase, TaskView};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

fn config(tmp: &tempfile::TempDir) -> Config {
    let mut config = Config {
        state_dir: tmp.path().join("state"),
        device_root: Some(tmp.path().join("dev")),
        max_concurrent_tasks: 1,
        ..Config::default()
    };
    config.retry.initial_backoff_ms = 10;
    config.checkpoint_bytes = 64 * 1024;
    config
}

fn payload(id: &str, url: &str, name: &str) -> Vec<u8> {
    serde_json::json!({
        "TaskId": id,
        "SourceFilePath": format!("/sdcard/Download/{name}"),
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": url,
    })
    .to_string()
    .into_bytes()
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

async fn wait_for(m: &Manager, id: &str, what: impl Fn(&TaskView) -> bool) -> TaskView {
    for _ in 0..1000 {
        let view = m.describe(id).unwrap();
        if what(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "task {id} never reached the state: {:?}",
        m.describe(id).unwrap()
    );
}

fn staging(tmp: &tempfile::TempDir, id: &str) -> PathBuf {
    tmp.path().join(format!(
        "dev/sdcard/Download/{}",
        ferry::pipeline::staging_name(id)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_runs_and_resubmit_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body = data(100_000);
    server.put("/a.bin", Resource::new(body.clone()));
    let m = Manager::start(config(&tmp)).await.unwrap();
    let first = m
        .submit(&payload("t-a", &server.url("/a.bin"), "a.bin"))
        .await
        .unwrap();
    assert!(first.created);
    let done = wait_for(&m, "t-a", |v| v.phase.is_finished()).await;
    assert_eq!(done.phase, Phase::Success, "{done:?}");
    assert_eq!(done.task_status, "Finished");
    assert_eq!(done.progress, 100);
    assert_eq!(done.result.as_ref().unwrap().files[0].sha256, sha(&body));
    let again = m
        .submit(&payload("t-a", &server.url("/a.bin"), "a.bin"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(server.hits("/a.bin"), 1, "idempotent: no second download");
    let conflict = m
        .submit(&payload("t-a", &server.url("/a.bin"), "other.bin"))
        .await
        .err()
        .unwrap();
    assert_eq!(conflict.code, Code::ApiTaskIdConflict);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_makes_submits_idempotent_without_task_id() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/k.bin", Resource::new(data(10)));
    let m = Manager::start(config(&tmp)).await.unwrap();
    let json = serde_json::json!({
        "ClientToken": "token-1",
        "SourceFilePath": "/sdcard/Download/k.bin",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url("/k.bin"),
    })
    .to_string();
    let a = m.submit(json.as_bytes()).await.unwrap();
    let b = m.submit(json.as_bytes()).await.unwrap();
    assert!(a.view.task_id.starts_with("t-"));
    assert_eq!(a.view.task_id, b.view.task_id);
    assert!(!b.created);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_and_cancel_removes_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/slow.bin", Resource::new(data(2 << 20)));
    server.set_rate("/slow.bin", Some(256 * 1024));
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(&payload("t-1", &server.url("/slow.bin"), "one.bin"))
        .await
        .unwrap();
    m.submit(&payload("t-2", &server.url("/slow.bin"), "two.bin"))
        .await
        .unwrap();
    wait_for(&m, "t-1", |v| v.bytes_done > 0).await;
    assert_eq!(
        m.describe("t-2").unwrap().phase,
        Phase::Pending,
        "max_concurrent_tasks = 1"
    );
    assert!(staging(&tmp, "t-1").exists());
    let view = m.cancel("t-1").await.unwrap();
    assert_eq!(view.phase, Phase::Cancelled);
    assert_eq!(view.error_code, Some(Code::Cancelled.into()));
    assert!(
        !staging(&tmp, "t-1").exists(),
        "cancel removes staging data"
    );
    assert!(!tmp.path().join("dev/sdcard/Download/one.bin").exists());
    wait_for(&m, "t-2", |v| v.phase == Phase::Running).await;
    let view = m.cancel("t-2").await.unwrap();
    assert_eq!(view.phase, Phase::Cancelled);
    assert!(m.cancel("nope").await.is_err());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_checkpoints_and_a_restart_resumes_from_the_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body = data(3 << 20);
    server.put("/r.bin", Resource::new(body.clone()));
    server.set_rate("/r.bin", Some(1 << 20));
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(&payload("t-r", &server.url("/r.bin"), "r.bin"))
        .await
        .unwrap();
    wait_for(&m, "t-r", |v| v.bytes_done > 512 * 1024).await;
    m.shutdown().await;
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("state/tasks/t-r.json")).unwrap())
            .unwrap();
    assert_eq!(common::journal_phase(&journal).0, "RUNNING");
    let kept = std::fs::metadata(staging(&tmp, "t-r")).unwrap().len();
    assert!(kept > 0);
    assert!(!tmp.path().join("dev/sdcard/Download/r.bin").exists());
    server.set_rate("/r.bin", None);
    let m = Manager::start(config(&tmp)).await.unwrap();
    let done = wait_for(&m, "t-r", |v| v.phase.is_finished()).await;
    assert_eq!(done.phase, Phase::Success, "{done:?}");
    assert_eq!(done.result.unwrap().files[0].sha256, sha(&body));
    let last = server.requests("/r.bin").pop().unwrap();
    assert_eq!(
        last.header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(!staging(&tmp, "t-r").exists());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oss_failures_name_the_endpoint_and_a_bad_apk_fails_auto_install() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/app.apk", Resource::new(data(100)));
    let mut cfg = config(&tmp);
    cfg.retry.max_retries = 2;
    let m = Manager::start(cfg).await.unwrap();
    let oss = serde_json::json!({
        "TaskId": "t-oss",
        "SourceFilePath": "/sdcard/Download",
        "UploadType": "OSS",
        "UploadUrl": "oss://cloudphone-saved-bucket-example/send/a.txt",
        // A closed port on loopback: refused at once, retried, then reported.
        "UploadEndpoint": format!("http://127.0.0.1:{}", closed_port()),
    });
    m.submit(oss.to_string().as_bytes()).await.unwrap();
    let view = wait_for(&m, "t-oss", |v| v.phase.is_finished()).await;
    assert_eq!(
        view.error_code,
        Some(Code::NetworkConnect.into()),
        "{view:?}"
    );
    assert_eq!(view.task_status, "Failed");
    let apk = serde_json::json!({
        "TaskId": "t-apk",
        "SourceFilePath": "/sdcard/Download/app.apk",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url("/app.apk"),
        "TargetFileName": "ignored.apk",
        "AutoInstall": true,
    });
    m.submit(apk.to_string().as_bytes()).await.unwrap();
    let view = wait_for(&m, "t-apk", |v| v.phase.is_finished()).await;
    // Bytes named .apk that are no zip: AutoInstall fails the task before pm runs, and the
    // file stays where it landed.
    assert_eq!(view.phase, Phase::Failed, "{view:?}");
    assert_eq!(view.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(view
        .notes
        .iter()
        .any(|n| n.contains("TargetFileName has no effect")));
    let result = view.result.unwrap();
    assert_eq!(result.files[0].size, 100);
    let install = result.install.unwrap();
    assert_eq!(install.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(install.message.contains("not a zip"), "{}", install.message);
    assert!(tmp.path().join("dev/sdcard/Download/app.apk").is_file());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_task_resubmitted_runs_again_and_finished_records_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let mut cfg = config(&tmp);
    cfg.prune.max_finished = 2;
    let m = Manager::start(cfg.clone()).await.unwrap();
    m.submit(&payload("t-late", &server.url("/late.bin"), "late.bin"))
        .await
        .unwrap();
    let view = wait_for(&m, "t-late", |v| v.phase.is_finished()).await;
    assert_eq!(view.error_code, Some(Code::SourceNotFound.into()));
    server.put("/late.bin", Resource::new(data(1000)));
    let again = m
        .submit(&payload("t-late", &server.url("/late.bin"), "late.bin"))
        .await
        .unwrap();
    assert!(again.created);
    let view = wait_for(&m, "t-late", |v| v.phase.is_finished()).await;
    assert_eq!(view.phase, Phase::Success);
    for i in 0..3 {
        let id = format!("t-p{i}");
        m.submit(&payload(
            &id,
            &server.url("/late.bin"),
            &format!("p{i}.bin"),
        ))
        .await
        .unwrap();
        wait_for(&m, &id, |v| v.phase.is_finished()).await;
    }
    // The worker prunes after it recorded the outcome: give it a moment.
    let mut left = m.list();
    for _ in 0..200 {
        if left.len() <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = m.list();
    }
    assert_eq!(
        left.len(),
        2,
        "{:?}",
        left.iter().map(|v| &v.task_id).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("state/tasks"))
            .unwrap()
            .count(),
        2
    );
    m.shutdown().await;
    let after = Manager::start(cfg).await.unwrap();
    assert!(after
        .submit(&payload("t-x", "http://127.0.0.1:9/x", "x"))
        .await
        .is_ok());
    after.shutdown().await;
    assert_eq!(
        after
            .submit(&payload("t-y", "http://127.0.0.1:9/y", "y"))
            .await
            .err()
            .unwrap()
            .code,
        Code::ApiShuttingDown
    );
}

/// A failed task re-submitted the moment it shows FAILED must not race the worker still
/// saving that outcome (it once lost the record: two writers shared one temporary file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_right_as_a_task_fails_keeps_the_journal_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let m = Manager::start(config(&tmp)).await.unwrap();
    let body = payload("t-race", &server.url("/missing.bin"), "missing.bin");
    for round in 0..40 {
        let submitted = m
            .submit(&body)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(submitted.created, "round {round}");
        loop {
            if m.describe("t-race").unwrap().phase.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    m.shutdown().await;
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("state/tasks/t-race.json")).unwrap())
            .unwrap();
    assert_eq!(common::journal_phase(&saved).0, "FAILED", "{saved}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("state/tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "t-race.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn journal_of(tmp: &tempfile::TempDir, id: &str) -> serde_json::Value {
    let path = tmp.path().join(format!("state/tasks/{id}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A SUCCESS the journal could not save must not be shown: after a restart the task would run
/// (and AutoInstall) again. The task stays RUNNING, says why, and shows SUCCESS once saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_journal_cannot_save_is_not_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body = data(1 << 20);
    server.put("/j.bin", Resource::new(body.clone()));
    server.set_rate("/j.bin", Some(1 << 20));
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(&payload("t-j", &server.url("/j.bin"), "j.bin"))
        .await
        .unwrap();
    // Bytes flow only after the RUNNING record was saved.
    wait_for(&m, "t-j", |v| v.bytes_done > 0).await;
    // The journal writes `t-j.tmp` then renames it: a folder there makes every save fail
    // (chmod would not stop root).
    let blocker = tmp.path().join("state/tasks/t-j.tmp");
    // A checkpoint may be writing that very file right now: try again until it is gone.
    let mut tries = 0;
    while let Err(e) = std::fs::create_dir(&blocker) {
        tries += 1;
        assert!(tries < 500, "cannot plant {}: {e}", blocker.display());
        std::thread::sleep(Duration::from_millis(2));
    }
    let final_path = tmp.path().join("dev/sdcard/Download/j.bin");
    for _ in 0..500 {
        if final_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(final_path.exists(), "the transfer never finished");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = m.describe("t-j").unwrap();
    assert_eq!(view.phase, Phase::Running, "{view:?}");
    assert!(
        view.notes
            .iter()
            .any(|n| n.contains("could not be saved to the journal")),
        "{view:?}"
    );
    assert_eq!(common::journal_phase(&journal_of(&tmp, "t-j")).0, "RUNNING");
    std::fs::remove_dir(&blocker).unwrap();
    let done = wait_for(&m, "t-j", |v| v.phase.is_finished()).await;
    assert_eq!(done.phase, Phase::Success, "{done:?}");
    assert!(done.notes.is_empty(), "{done:?}");
    assert_eq!(done.result.unwrap().files[0].sha256, sha(&body));
    assert_eq!(common::journal_phase(&journal_of(&tmp, "t-j")).0, "SUCCESS");
    m.shutdown().await;
}

/// Cancelling a PENDING task whose CANCELLED the journal cannot save fails the call and
/// leaves the task PENDING in the API too: after a restart it would run again otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_journal_cannot_save_is_not_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/slow.bin", Resource::new(data(2 << 20)));
    server.set_rate("/slow.bin", Some(256 * 1024));
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(&payload("t-run", &server.url("/slow.bin"), "run.bin"))
        .await
        .unwrap();
    m.submit(&payload("t-wait", &server.url("/slow.bin"), "wait.bin"))
        .await
        .unwrap();
    wait_for(&m, "t-run", |v| v.bytes_done > 0).await;
    assert_eq!(m.describe("t-wait").unwrap().phase, Phase::Pending);
    // A folder where the journal writes `t-wait.tmp` makes its saves fail (even for root).
    let blocker = tmp.path().join("state/tasks/t-wait.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(
        m.cancel("t-wait").await.is_err(),
        "the cancel was not saved"
    );
    assert_eq!(m.describe("t-wait").unwrap().phase, Phase::Pending);
    assert_eq!(
        common::journal_phase(&journal_of(&tmp, "t-wait")).0,
        "PENDING"
    );
    std::fs::remove_dir(&blocker).unwrap();
    let view = m.cancel("t-wait").await.unwrap();
    assert_eq!(view.phase, Phase::Cancelled);
    assert_eq!(
        common::journal_phase(&journal_of(&tmp, "t-wait")).0,
        "CANCELLED"
    );
    m.cancel("t-run").await.unwrap();
    m.shutdown().await;
}

/// A ClientToken names one task for good: a different TaskId (or request) under it is refused,
/// also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_stays_bound_to_its_first_task() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/c.bin", Resource::new(data(10)));
    let with_token = |id: &str, name: &str| {
        serde_json::json!({
            "TaskId": id,
            "ClientToken": "ct-1",
            "SourceFilePath": format!("/sdcard/Download/{name}"),
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": server.url("/c.bin"),
        })
        .to_string()
    };
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(with_token("t-a", "a.bin").as_bytes())
        .await
        .unwrap();
    wait_for(&m, "t-a", |v| v.phase.is_finished()).await;
    let err = m
        .submit(with_token("t-b", "b.bin").as_bytes())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::ApiClientTokenConflict, "{}", err.message);
    assert!(err.message.contains("t-a"), "{}", err.message);
    assert!(m.describe("t-b").is_err(), "nothing was created");
    let no_id = serde_json::json!({
        "ClientToken": "ct-1",
        "SourceFilePath": "/sdcard/Download/other.bin",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url("/c.bin"),
    })
    .to_string();
    let err = m.submit(no_id.as_bytes()).await.err().unwrap();
    assert_eq!(err.code, Code::ApiClientTokenConflict, "{}", err.message);
    m.shutdown().await;
    let m = Manager::start(config(&tmp)).await.unwrap();
    let err = m
        .submit(with_token("t-b", "b.bin").as_bytes())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::ApiClientTokenConflict, "after a restart");
    let again = m
        .submit(with_token("t-a", "a.bin").as_bytes())
        .await
        .unwrap();
    assert!(!again.created);
    m.shutdown().await;
}

/// A record left RUNNING by a build that named staging files `.ferry-ID.part` still resumes
/// from its partial data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_the_old_staging_name_still_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body = data(3 << 20);
    server.put("/o.bin", Resource::new(body.clone()));
    server.set_rate("/o.bin", Some(1 << 20));
    let m = Manager::start(config(&tmp)).await.unwrap();
    m.submit(&payload("t-old", &server.url("/o.bin"), "o.bin"))
        .await
        .unwrap();
    wait_for(&m, "t-old", |v| v.bytes_done > 512 * 1024).await;
    m.shutdown().await;
    // Make it look as the older build left it.
    let legacy = tmp.path().join("dev/sdcard/Download/.ferry-t-old.part");
    std::fs::rename(staging(&tmp, "t-old"), &legacy).unwrap();
    let mut record = journal_of(&tmp, "t-old");
    assert_eq!(common::journal_phase(&record).0, "RUNNING");
    record["State"]["RUNNING"]["Resume"]["StagingName"] = ".ferry-t-old.part".into();
    std::fs::write(
        tmp.path().join("state/tasks/t-old.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let kept = std::fs::metadata(&legacy).unwrap().len();
    assert!(kept > 0);
    server.set_rate("/o.bin", None);
    let m = Manager::start(config(&tmp)).await.unwrap();
    let done = wait_for(&m, "t-old", |v| v.phase.is_finished()).await;
    assert_eq!(done.phase, Phase::Success, "{done:?}");
    assert_eq!(done.result.unwrap().files[0].sha256, sha(&body));
    let last = server.requests("/o.bin").pop().unwrap();
    assert_eq!(
        last.header("range"),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(!legacy.exists() && !staging(&tmp, "t-old").exists());
    m.shutdown().await;
}

/// The stream a fleet reporter subscribes to: every transition in order, progress on the
/// way, the final state last, and each change exactly as `describe` shows it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_state_change_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body = data(2 << 20);
    server.put("/s.bin", Resource::new(body.clone()));
    server.set_rate("/s.bin", Some(4 << 20));
    let m = Manager::start(config(&tmp)).await.unwrap();
    let mut changes = m.subscribe();
    m.submit(&payload("t-s", &server.url("/s.bin"), "s.bin"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let last = loop {
        let view = tokio::time::timeout(Duration::from_secs(30), changes.recv())
            .await
            .expect("a change within 30 s")
            .unwrap();
        assert_eq!(view.task_id, "t-s");
        seen.push((view.phase, view.progress));
        if view.phase.is_finished() {
            break view;
        }
    };
    assert_eq!(last.phase, Phase::Success, "{last:?}");
    assert_eq!(last, m.describe("t-s").unwrap());
    let phases: Vec<Phase> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases.first(), Some(&Phase::Pending), "{seen:?}");
    assert_eq!(phases[1], Phase::Running, "{seen:?}");
    assert!(
        phases[1..phases.len() - 1]
            .iter()
            .all(|p| *p == Phase::Running),
        "{seen:?}"
    );
    let percents: Vec<u8> = seen[1..seen.len() - 1].iter().map(|(_, p)| *p).collect();
    assert!(percents.len() >= 3, "progress on the way: {seen:?}");
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    // A cancel is a change too.
    m.submit(&payload("t-c", &server.url("/s.bin"), "c.bin"))
        .await
        .unwrap();
    m.cancel("t-c").await.unwrap();
    let cancelled = loop {
        let view = tokio::time::timeout(Duration::from_secs(30), changes.recv())
            .await
            .expect("a change within 30 s")
            .unwrap();
        if view.task_id == "t-c" && view.phase.is_finished() {
            break view;
        }
    };
    assert_eq!(cancelled.phase, Phase::Cancelled);
    m.shutdown().await;
}
