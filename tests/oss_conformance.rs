//! One conformance suite run against every kind of source (STYLE 13): the same guarantees for
//! `DOWNLOAD_URL` (the fault-injecting HTTP server of `tests/common/http_server.rs`) and `OSS`
//! against two S3 implementations (s3s-fs, `tests/common/s3_server.rs`; moto with its auth on,
//! `tests/common/moto.rs`), through the real daemon on an Android-like [`Target`]:
//!
//! - a whole object arrives byte for byte, with `Result.Files[]` = Path, Size, Sha256;
//! - an empty object makes an empty file;
//! - nested folders are created (OSS: a folder send keeps the keys' relative paths);
//! - `kill -9` mid-transfer, restart: the task resumes from its partial data (fewer bytes
//!   asked for than the object has) and lands byte-exact;
//! - the object replaced while the daemon was down: restart from zero, the new version lands;
//! - the object replaced mid-transfer: one whole version lands, never a splice;
//! - OSS only: a folder send killed (`kill -9`) after some objects landed completes on
//!   restart, resuming the interrupted one from its partial data and skipping the landed
//!   objects when the listing carries ETags (moto; s3s-fs's listings carry none, so there they
//!   are fetched again, never with the interrupted one's partial data).
//!
//! Transfers are slowed with the daemon's own `bandwidth_limit_kib` (no proxy). Each test is
//! generated once per kind (`http::NAME`, `oss::NAME`, `moto::NAME`); `FERRY_TEST_CHROOT=1` runs
//! them on the aarch64 build in the chroot. Cases that only a server checking session tokens
//! can run (moto) are at the end.

mod cli_support;
mod common;
#[path = "common/moto.rs"]
mod moto_server;
/// The cases of the S3 servers only (`oss::…`, `moto::…`).
#[path = "oss_conformance/s3_cases.rs"]
mod s3_cases;
#[path = "common/s3_server.rs"]
mod s3_server;

use cli_support::results::{assert_success, pattern, result_files, sha256_hex, staging_files};
use cli_support::{Daemon, Target};
use common::http_server::{Resource, TestServer};
use moto_server::MotoServer;
use s3_cases::{
    bad_credentials_are_refused_with_their_codes, folder_resume_after_kill_9_skips_landed_objects,
};
use s3_server::{S3Server, SeenRequest, ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, SECURITY_TOKEN};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TASK_TIMEOUT: Duration = Duration::from_secs(60);
const CONFIG: &str = "/data/local/ferry.toml";
/// Size of the objects the slow tests interrupt: 16 s at the limit below.
const SLOW_SIZE: usize = 8 << 20;
const SLOW_LIMIT: &str = "bandwidth_limit_kib = 512\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Oss,
    Moto,
}

/// A server of one kind, holding objects by name (`a.bin`, `tree/sub/b.bin`).
enum Source {
    Http(TestServer),
    Oss(S3Server),
    Moto(MotoServer),
}

impl Source {
    /// The server, and the phone set up to reach it by name; `None` when the kind's server
    /// is not installed (moto: a skip, a failure under `CI=true`).
    fn start(kind: Kind) -> Option<(Source, Target)> {
        let t = Target::new();
        let source = match kind {
            Kind::Http => Source::Http(TestServer::start_blocking()),
            Kind::Oss => {
                let s3 = S3Server::start();
                t.add_hosts(&s3.hostnames(&[BUCKET]));
                Source::Oss(s3)
            }
            Kind::Moto => {
                let moto = MotoServer::start()?;
                t.add_hosts(&moto.hostnames(&[BUCKET]));
                Source::Moto(moto)
            }
        };
        Some((source, t))
    }

    fn put(&self, name: &str, data: &[u8]) {
        match self {
            Source::Http(http) => http.put(&format!("/files/{name}"), Resource::new(data.to_vec())),
            Source::Oss(s3) => {
                s3.put_object(BUCKET, &format!("send/{name}"), data);
            }
            Source::Moto(moto) => {
                moto.put_object(BUCKET, &format!("send/{name}"), data);
            }
        }
    }

    /// Same as `put`, for an object that exists: new content, new validators.
    fn replace(&self, name: &str, data: &[u8]) {
        match self {
            Source::Http(http) => {
                http.replace(&format!("/files/{name}"), Resource::new(data.to_vec()))
            }
            Source::Oss(s3) => {
                s3.replace_object(BUCKET, &format!("send/{name}"), data);
            }
            Source::Moto(moto) => {
                moto.replace_object(BUCKET, &format!("send/{name}"), data);
            }
        }
    }

    /// A payload fetching object `name` into device folder `folder` (as `folder/BASENAME`).
    fn payload(&self, id: &str, name: &str, folder: &str) -> Value {
        let base = name.rsplit('/').next().unwrap();
        match self {
            Source::Http(http) => json!({
                "TaskId": id,
                "UploadType": "DOWNLOAD_URL",
                "SourceFilePath": format!("{folder}/{base}"),
                "UploadUrl": http.url(&format!("/files/{name}")),
            }),
            Source::Oss(_) | Source::Moto(_) => {
                self.oss_payload(id, &format!("send/{name}"), folder)
            }
        }
    }

    /// An `OSS` payload of `oss://BUCKET/key` into device folder `folder`, with the
    /// credentials the server accepts (moto: the phone role's STS session).
    fn oss_payload(&self, id: &str, key: &str, folder: &str) -> Value {
        let (endpoint, id_key, secret, token) = match self {
            Source::Oss(s3) => (
                s3.endpoint(),
                ACCESS_KEY_ID,
                ACCESS_KEY_SECRET,
                SECURITY_TOKEN,
            ),
            Source::Moto(moto) => {
                let keys = moto.phone();
                let token = keys.token.as_deref().unwrap();
                (
                    moto.endpoint(),
                    keys.id.as_str(),
                    keys.secret.as_str(),
                    token,
                )
            }
            Source::Http(_) => panic!("an OSS payload for the HTTP server"),
        };
        json!({
            "TaskId": id,
            "UploadType": "OSS",
            "SourceFilePath": folder,
            "UploadUrl": format!("oss://{BUCKET}/{key}"),
            "UploadEndpoint": endpoint,
            "Credentials": {
                "AccessKeyId": id_key,
                "AccessKeySecret": secret,
                "SecurityToken": token,
            },
        })
    }

    /// Every request the OSS server has seen (s3s-fs's log, moto's recorder).
    fn s3_requests(&self) -> Vec<SeenRequest> {
        match self {
            Source::Oss(s3) => s3.requests(),
            Source::Moto(moto) => moto.requests(),
            Source::Http(_) => panic!("S3 requests of the HTTP server"),
        }
    }

    /// The `Range` header of every GET of object `name` so far (`None`: the whole object).
    fn ranges(&self, name: &str) -> Vec<Option<String>> {
        match self {
            Source::Http(http) => http
                .requests(&format!("/files/{name}"))
                .iter()
                .filter(|r| r.method == "GET")
                .map(|r| r.header("range").map(str::to_string))
                .collect(),
            Source::Oss(_) | Source::Moto(_) => {
                let requests = self.s3_requests();
                let gets = S3Server::object_gets(&requests, BUCKET, &format!("send/{name}"));
                gets.iter()
                    .map(|r| r.header("range").map(str::to_string))
                    .collect()
            }
        }
    }
}

/// Bytes a list of GETs asked for, `len` being the object's size.
fn bytes_asked(ranges: &[Option<String>], len: u64) -> u64 {
    ranges
        .iter()
        .map(|range| {
            let Some(range) = range else { return len };
            let spec = range.trim_start_matches("bytes=");
            let (first, last) = spec.split_once('-').expect("a single byte range");
            match (first.parse::<u64>(), last.parse::<u64>()) {
                (Ok(first), Ok(last)) => last.min(len - 1) + 1 - first,
                (Ok(first), Err(_)) => len - first,
                (Err(_), Ok(suffix)) => suffix.min(len),
                _ => panic!("odd range {range}"),
            }
        })
        .sum()
}

/// A daemon with `toml` as its config file.
fn daemon(t: &Target, toml: &str) -> Daemon {
    let flags = t.config(CONFIG, toml);
    t.daemon(&[&flags[0], &flags[1]])
}

/// Waits until the task has at least `bytes` done (it is slowed, so it is still running).
fn wait_progress(d: &Daemon, id: &str, bytes: u64) {
    let deadline = Instant::now() + d.target.timeout(Duration::from_secs(30));
    loop {
        let view = d.get(&format!("/v1/tasks/{id}")).1;
        if view["BytesDone"].as_u64().unwrap_or(0) >= bytes {
            assert_eq!(view["Phase"], "RUNNING", "{view}");
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {view}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_9(mut d: Daemon) {
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
}

fn whole_object(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    let data = pattern((1 << 20) + 123, 1);
    source.put("a.bin", &data);
    let d = t.daemon(&[]);
    let view = d.run_task(
        &source.payload("t-whole", "a.bin", "/sdcard/Download"),
        TASK_TIMEOUT,
    );
    assert_success(&view);
    let expected = (
        "/sdcard/Download/a.bin".to_string(),
        data.len() as u64,
        sha256_hex(&data),
    );
    assert_eq!(result_files(&view), [expected]);
    assert_eq!(
        std::fs::read(t.host("/sdcard/Download/a.bin")).unwrap(),
        data
    );
    assert_eq!(view["BytesDone"], data.len() as u64, "{view}");
    assert!(staging_files(&t.host("/sdcard/Download")).is_empty());
}

fn empty_object(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    source.put("empty.bin", b"");
    let d = t.daemon(&[]);
    let view = d.run_task(
        &source.payload("t-empty", "empty.bin", "/sdcard/Download"),
        TASK_TIMEOUT,
    );
    assert_success(&view);
    let expected = ("/sdcard/Download/empty.bin".to_string(), 0, sha256_hex(b""));
    assert_eq!(result_files(&view), [expected]);
    let meta = std::fs::metadata(t.host("/sdcard/Download/empty.bin")).unwrap();
    assert!(meta.is_file() && meta.len() == 0);
    assert!(staging_files(&t.host("/sdcard/Download")).is_empty());
}

fn nested_folders(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    let d = t.daemon(&[]);
    match &source {
        Source::Http(_) => {
            let data = pattern(70_000, 2);
            source.put("c.bin", &data);
            // None of x/y/z exists yet.
            let view = d.run_task(
                &source.payload("t-nest", "c.bin", "/sdcard/Download/x/y/z"),
                TASK_TIMEOUT,
            );
            assert_success(&view);
            let expected = (
                "/sdcard/Download/x/y/z/c.bin".to_string(),
                70_000,
                sha256_hex(&data),
            );
            assert_eq!(result_files(&view), [expected]);
            assert_eq!(
                std::fs::read(t.host("/sdcard/Download/x/y/z/c.bin")).unwrap(),
                data
            );
        }
        Source::Oss(_) | Source::Moto(_) => {
            let tree: Vec<(&str, Vec<u8>)> = vec![
                ("a.bin", pattern(10_000, 3)),
                ("sub/b.bin", pattern(20_000, 4)),
                ("sub/deeper/c d ü.bin", pattern(30_000, 5)),
                ("sub/empty.bin", Vec::new()),
            ];
            for (name, data) in &tree {
                source.put(&format!("tree/{name}"), data);
            }
            // Neighbours sharing the prefix's text but outside the folder stay out.
            source.put("tree-sibling/no.bin", b"no");
            source.put("treeish.bin", b"no");
            let view = d.run_task(
                &source.oss_payload("t-tree", "send/tree/", "/sdcard/Download/t"),
                TASK_TIMEOUT,
            );
            assert_success(&view);
            let mut expected: Vec<_> = tree
                .iter()
                .map(|(name, data)| {
                    let path = format!("/sdcard/Download/t/{name}");
                    (path, data.len() as u64, sha256_hex(data))
                })
                .collect();
            expected.sort();
            assert_eq!(result_files(&view), expected);
            for (name, data) in &tree {
                let host = t.host(format!("/sdcard/Download/t/{name}"));
                assert_eq!(&std::fs::read(&host).unwrap(), data, "{name}");
            }
            assert!(!t.host("/sdcard/Download/t/no.bin").exists());
            assert!(!t.host("/sdcard/Download/treeish.bin").exists());
            assert!(!t.host("/sdcard/Download/t/tree-sibling").exists());
        }
    }
    assert!(staging_files(&t.host("/sdcard/Download")).is_empty());
}

fn resume_after_kill_9(kind: Kind) {
    resume_after_kill_9_with(kind, SLOW_LIMIT);
}

/// The same with the object fetched as parallel parts (1 MiB parts, checkpoints every
/// 256 KiB): the journal's per-part progress is what the restart resumes from.
fn parallel_resume_after_kill_9(kind: Kind) {
    let Some(source) = resume_after_kill_9_with(
        kind,
        &format!(
            "{SLOW_LIMIT}checkpoint_bytes = 262144\n[transfer]\nparallel_min_size_mib = 2\npart_size_mib = 1\n"
        ),
    ) else {
        return;
    };
    let ranges = source.ranges("big.bin");
    let part_starts = ranges
        .iter()
        .flatten()
        .filter(|r| !r.starts_with("bytes=0-"))
        .count();
    assert!(
        part_starts >= 2,
        "the transfer did not go as parallel parts: {ranges:?}"
    );
}

fn resume_after_kill_9_with(kind: Kind, toml: &str) -> Option<Source> {
    let (source, t) = Source::start(kind)?;
    let data = pattern(SLOW_SIZE, 6);
    source.put("big.bin", &data);
    let d = daemon(&t, toml);
    let payload = source.payload("t-resume", "big.bin", "/sdcard/Download");
    let (status, view) = d.submit(&payload);
    assert_eq!(status, 201, "{view}");
    wait_progress(&d, "t-resume", 1 << 20);
    let state = d.state.clone();
    kill_9(d);

    let final_path = t.host("/sdcard/Download/big.bin");
    assert!(!final_path.exists(), "a final file after kill -9");
    assert!(
        !staging_files(&t.host("/sdcard/Download")).is_empty(),
        "no partial data kept"
    );
    let record: Value =
        serde_json::from_slice(&std::fs::read(state.join("tasks/t-resume.json")).unwrap()).unwrap();
    assert_eq!(common::journal_phase(&record).0, "RUNNING");
    let before = source.ranges("big.bin").len();

    // Restart without the limit: the journal's RUNNING task resumes by itself.
    let d = daemon(&t, "");
    let view = d.wait_phase(
        "t-resume",
        &["SUCCESS", "FAILED", "CANCELLED"],
        TASK_TIMEOUT,
    );
    assert_success(&view);
    assert_eq!(result_files(&view)[0].2, sha256_hex(&data));
    assert_eq!(std::fs::read(&final_path).unwrap(), data);
    assert!(staging_files(&t.host("/sdcard/Download")).is_empty());

    let after = source.ranges("big.bin")[before..].to_vec();
    assert!(!after.is_empty(), "no GET after the restart");
    let asked = bytes_asked(&after, data.len() as u64);
    assert!(
        asked < data.len() as u64,
        "restarted from zero instead of resuming: asked {asked} bytes with {after:?}"
    );
    Some(source)
}

fn validator_change_while_stopped_restarts_from_zero(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    let v1 = pattern(SLOW_SIZE, 7);
    let v2 = pattern(SLOW_SIZE, 8); // same size: only the validators tell them apart
    source.put("big.bin", &v1);
    let d = daemon(&t, SLOW_LIMIT);
    let (status, view) = d.submit(&source.payload("t-change", "big.bin", "/sdcard/Download"));
    assert_eq!(status, 201, "{view}");
    wait_progress(&d, "t-change", 1 << 20);
    kill_9(d);
    source.replace("big.bin", &v2);

    let d = daemon(&t, "");
    let view = d.wait_phase(
        "t-change",
        &["SUCCESS", "FAILED", "CANCELLED"],
        TASK_TIMEOUT,
    );
    assert_success(&view);
    let landed = std::fs::read(t.host("/sdcard/Download/big.bin")).unwrap();
    assert!(
        landed == v2,
        "not the new version (spliced: {})",
        landed != v1
    );
    assert_eq!(result_files(&view)[0].2, sha256_hex(&v2));
    assert!(staging_files(&t.host("/sdcard/Download")).is_empty());
}

fn replaced_mid_transfer_lands_one_whole_version(kind: Kind) {
    let Some((source, t)) = Source::start(kind) else {
        return;
    };
    let v1 = pattern(SLOW_SIZE, 9);
    let v2 = pattern(SLOW_SIZE, 10);
    source.put("big.bin", &v1);
    let d = daemon(&t, "bandwidth_limit_kib = 2048\n");
    let (status, view) = d.submit(&source.payload("t-mid", "big.bin", "/sdcard/Download"));
    assert_eq!(status, 201, "{view}");
    wait_progress(&d, "t-mid", 1 << 20);
    source.replace("big.bin", &v2);
    let view = d.wait_phase("t-mid", &["SUCCESS", "FAILED", "CANCELLED"], TASK_TIMEOUT);
    assert_success(&view);
    let landed = std::fs::read(t.host("/sdcard/Download/big.bin")).unwrap();
    // A stream begun before the change may finish the old version; anything mixed is a bug.
    assert!(
        landed == v1 || landed == v2,
        "two versions spliced together"
    );
    assert_eq!(result_files(&view)[0].2, sha256_hex(&landed));
}

/// Generates `http::NAME`, `oss::NAME` (s3s-fs) and `moto::NAME` for each case of `every`,
/// the last two for each case of `s3`, and `moto::NAME` for each case of `moto` (no argument).
macro_rules! conformance {
    (every: [$($name:ident),* $(,)?], s3: [$($s3:ident),* $(,)?], moto: [$($m:ident),* $(,)?] $(,)?) => {
        mod http {
            $(#[test] fn $name() { super::$name(super::Kind::Http) })*
        }
        mod oss {
            $(#[test] fn $name() { super::$name(super::Kind::Oss) })*
            $(#[test] fn $s3() { super::$s3(super::Kind::Oss) })*
        }
        mod moto {
            $(#[test] fn $name() { super::$name(super::Kind::Moto) })*
            $(#[test] fn $s3() { super::$s3(super::Kind::Moto) })*
            $(#[test] fn $m() { super::$m() })*
        }
    };
}

conformance!(
    every: [
        whole_object,
        empty_object,
        nested_folders,
        resume_after_kill_9,
        parallel_resume_after_kill_9,
        validator_change_while_stopped_restarts_from_zero,
        replaced_mid_transfer_lands_one_whole_version,
    ],
    s3: [folder_resume_after_kill_9_skips_landed_objects],
    moto: [bad_credentials_are_refused_with_their_codes],
);
