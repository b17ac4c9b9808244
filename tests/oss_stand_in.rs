//! OSS through stand-in servers, for what no real store (s3s-fs included) can show: a
//! listing with keys that would escape the folder (`..`, `a//b`, absolute), the zero-byte
//! `dir/` folder markers the OSS console makes, and error replies carrying OSS's request id.
//! The stand-ins answer on 127.0.0.1 under the bucket's virtual host (a line in the phone's
//! `/system/etc/hosts`) and check no signature. Runs natively and, with
//! `FERRY_TEST_CHROOT=1 FERRY_TEST_BIN=AARCH64_FERRY`, on the aarch64 build in the chroot.

mod cli_support;
mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use cli_support::results::{
    assert_failed, assert_success, files_under, pattern, result_files, sha256_hex,
};
use cli_support::Target;
use common::http_server::{Resource, TestServer};
use s3_server::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, DOMAIN, SECURITY_TOKEN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn credentials() -> Value {
    json!({
        "AccessKeyId": ACCESS_KEY_ID,
        "AccessKeySecret": ACCESS_KEY_SECRET,
        "SecurityToken": SECURITY_TOKEN,
    })
}

/// A phone whose hosts file sends the test bucket's virtual host to 127.0.0.1.
fn phone() -> Target {
    let t = Target::new();
    t.add_hosts(&format!("127.0.0.1 {BUCKET}.{DOMAIN}\n"));
    t
}

/// A server that answers every request with one fixed response and closes; stops on drop.
struct FixedReply {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FixedReply {
    fn start(response: String) -> FixedReply {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let _ = conn.write_all(response.as_bytes());
            }
        });
        FixedReply {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FixedReply {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// OSS puts a request id in every error (`x-oss-request-id`, `<RequestId>`; S3:
/// `x-amz-request-id`); support needs it, so the task's message must carry it. s3s-fs sends
/// none, hence a stand-in that refuses everything the way OSS does.
#[test]
fn oss_error_messages_carry_the_request_id() {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>\
               <Message>You have no right to access this object.</Message>\
               <RequestId>5F1A2B3C4D5E6F7081920A1B</RequestId><HostId>oss.test</HostId></Error>";
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
         x-oss-request-id: 5F1A2B3C4D5E6F7081920A1B\r\nx-amz-request-id: 5F1A2B3C4D5E6F7081920A1B\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    let server = FixedReply::start(reply);
    let t = phone();
    let d = t.daemon(&[]);
    let mut payload = json!({
        "TaskId": "t-rid",
        "UploadType": "OSS",
        "SourceFilePath": "/sdcard/Download",
        "UploadUrl": format!("oss://{BUCKET}/send/a.bin"),
        "UploadEndpoint": format!("http://{}:{}", DOMAIN, server.port),
        "Credentials": credentials(),
    });
    let view = d.run_task(&payload, TASK_TIMEOUT);
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["ErrorCode"], "Source.AccessDenied", "{view}");
    let msg = view["ErrorMsg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("5F1A2B3C4D5E6F7081920A1B"),
        "no request id in {msg:?}"
    );
    // A folder send fails on its listing the same way.
    payload["TaskId"] = json!("t-rid-dir");
    payload["UploadUrl"] = json!(format!("oss://{BUCKET}/send/dir/"));
    let view = d.run_task(&payload, TASK_TIMEOUT);
    assert_eq!(view["ErrorCode"], "Source.AccessDenied", "{view}");
    let msg = view["ErrorMsg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("5F1A2B3C4D5E6F7081920A1B"),
        "no request id in {msg:?}"
    );
}

/// A ListObjectsV2 reply as S3/OSS send it, for a stand-in server that must list keys no
/// real store can hold (`a/../b`, `a//b`, `/abs`): `(key, size)` pairs, not truncated.
pub fn list_objects_v2_xml(bucket: &str, prefix: &str, objects: &[(&str, u64)]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    xml += &format!(
        "<Name>{}</Name><Prefix>{}</Prefix><MaxKeys>1000</MaxKeys><KeyCount>{}</KeyCount>\
         <IsTruncated>false</IsTruncated>",
        xml_escape(bucket),
        xml_escape(prefix),
        objects.len()
    );
    for (key, size) in objects {
        xml += &format!(
            "<Contents><Key>{}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>\
             <ETag>\"{}\"</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass>\
             </Contents>",
            xml_escape(key),
            s3_server::md5_hex(key.as_bytes())
        );
    }
    xml + "</ListBucketResult>"
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A stand-in for the bucket that lists `keys` (no real store can hold unsafe keys) and
/// serves the safe ones. It checks no signature.
fn stand_in(prefix: &str, keys: &[(&str, &[u8])]) -> TestServer {
    let http = TestServer::start_blocking();
    let listed: Vec<(&str, u64)> = keys.iter().map(|(k, b)| (*k, b.len() as u64)).collect();
    let xml = list_objects_v2_xml(BUCKET, prefix, &listed);
    http.put("/", Resource::new(xml.into_bytes()));
    for (key, data) in keys {
        http.put(&format!("/{key}"), Resource::new(data.to_vec()));
    }
    http
}

fn stand_in_payload(id: &str, http: &TestServer, prefix: &str, folder: &str) -> Value {
    json!({
        "TaskId": id,
        "UploadType": "OSS",
        "SourceFilePath": folder,
        "UploadUrl": format!("oss://{BUCKET}/{prefix}"),
        "UploadEndpoint": format!("http://{}:{}", DOMAIN, http.addr().port()),
        "Credentials": credentials(),
    })
}

#[test]
fn oss_unsafe_object_keys_fail_the_whole_folder_and_write_nothing() {
    let t = phone();
    let d = t.daemon(&[]);
    let ok: &[u8] = b"a safe object listed first";
    let cases = [
        ("dotdot", "send/f/../escape.bin"),
        ("dotdot-deep", "send/f/sub/../../escape.bin"),
        ("empty-segment", "send/f/a//b.bin"),
        ("absolute", "send/f//abs.bin"),
    ];
    for (name, bad_key) in cases {
        let http = stand_in("send/f/", &[("send/f/ok.bin", ok), (bad_key, b"evil")]);
        let folder = format!("/sdcard/Download/{name}/inner");
        let view = d.run_task(
            &stand_in_payload(&format!("t-{name}"), &http, "send/f/", &folder),
            TASK_TIMEOUT,
        );
        assert_failed(&view, "Source.UnsafeObjectKey");
        let msg = view["ErrorMsg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(bad_key),
            "{name}: message names the key: {msg}"
        );
        let written = files_under(&t.host(format!("/sdcard/Download/{name}")));
        assert!(written.is_empty(), "{name}: wrote {written:?}");
    }
    // Nothing escaped, and no staging file was left anywhere.
    let everything = files_under(&t.host("/sdcard"));
    assert!(everything.is_empty(), "{everything:?}");
    assert!(!t.host("/sdcard/Download/escape.bin").exists());
    assert!(!t.host("/abs.bin").exists());
}

/// Beyond the written contract, but what real buckets hold: the OSS console's "create
/// folder" makes zero-byte objects named `FOLDER/`. They are folders, not files, and must not
/// count as keys with an empty last segment.
#[test]
fn oss_folder_marker_objects_are_not_files() {
    let t = phone();
    let d = t.daemon(&[]);
    let (a, b) = (pattern(1000, 7), pattern(2000, 8));
    let http = stand_in(
        "send/f/",
        &[
            ("send/f/", b""),
            ("send/f/a.bin", &a),
            ("send/f/sub/", b""),
            ("send/f/sub/b.bin", &b),
        ],
    );
    let view = d.run_task(
        &stand_in_payload("t-markers", &http, "send/f/", "/sdcard/Download/m"),
        TASK_TIMEOUT,
    );
    assert_success(&view);
    assert_eq!(
        result_files(&view),
        [
            ("/sdcard/Download/m/a.bin".into(), 1000, sha256_hex(&a)),
            ("/sdcard/Download/m/sub/b.bin".into(), 2000, sha256_hex(&b)),
        ]
    );
    assert_eq!(
        files_under(&t.host("/sdcard/Download/m")),
        ["a.bin", "sub/b.bin"]
    );
}

/// A folder send killed with `kill -9` part way resumes on restart and skips the objects
/// already in place (listed with the ETag they landed with): each was remembered by one line
/// of the task's landed log, which the restart merges into the record. Only objects whose
/// files landed in the instant before the kill, their lines not yet written, may be fetched
/// again: at most the 8 in flight at once (`oss.folder_concurrency`). s3s-fs lists no ETags,
/// so this needs a stand-in.
#[test]
fn oss_folder_resumed_after_kill_9_skips_the_objects_already_landed() {
    const OBJECTS: usize = 40;
    let t = phone();
    let objects: Vec<(String, Vec<u8>)> = (0..OBJECTS)
        .map(|i| (format!("send/r/f{i:02}.bin"), pattern(32 * 1024, i as u32)))
        .collect();
    let listed: Vec<(&str, &[u8])> = objects
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    let http = stand_in("send/r/", &listed);
    let gets = |key: &str| {
        let requests = http.requests(&format!("/{key}"));
        requests.iter().filter(|r| r.method == "GET").count()
    };
    // 32 KiB objects at 256 KiB/s: about 8 a second.
    let flags = t.config(
        "/data/local/ferry.toml",
        "bandwidth_limit_kib = 256
",
    );
    let mut d = t.daemon(&[&flags[0], &flags[1]]);
    let payload = stand_in_payload("t-kill", &http, "send/r/", "/sdcard/Download/r");
    let (status, view) = d.submit(&payload);
    assert_eq!(status, 201, "{view}");
    let folder = t.host("/sdcard/Download/r");
    let in_place = || -> Vec<String> {
        let files = files_under(&folder);
        files
            .into_iter()
            .filter(|f| !f.starts_with(".ferry-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + t.timeout(Duration::from_secs(30));
    while in_place().len() < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let landed = in_place();
    assert!(
        landed.len() < OBJECTS,
        "the whole folder landed before the kill"
    );
    let tasks = d.state.join("tasks");
    assert!(tasks.join("t-kill.landed").exists(), "no landed log");
    let record: Value =
        serde_json::from_slice(&std::fs::read(tasks.join("t-kill.json")).unwrap()).unwrap();
    assert_eq!(common::journal_phase(&record).0, "RUNNING", "{record}");
    let before: Vec<usize> = objects.iter().map(|(k, _)| gets(k)).collect();
    drop(d);

    let d = t.daemon(&[]);
    let view = d.wait_phase("t-kill", &["SUCCESS", "FAILED", "CANCELLED"], TASK_TIMEOUT);
    assert_success(&view);
    let expected: Vec<_> = objects
        .iter()
        .map(|(k, data)| {
            let name = k.strip_prefix("send/r/").unwrap();
            (
                format!("/sdcard/Download/r/{name}"),
                data.len() as u64,
                sha256_hex(data),
            )
        })
        .collect();
    assert_eq!(result_files(&view), expected);
    let mut landed_again = Vec::new();
    for ((key, data), before) in objects.iter().zip(before) {
        let name = key.strip_prefix("send/r/").unwrap();
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), data, "{name}");
        let fetched_again = gets(key) > before;
        if landed.iter().any(|l| l == name) {
            if fetched_again {
                landed_again.push(name);
            }
        } else {
            assert!(
                fetched_again,
                "{name} was not in place yet was never fetched after the restart"
            );
        }
    }
    assert!(
        landed_again.len() <= 8,
        "objects in place before the kill were fetched again: {landed_again:?} (of {} in place)",
        landed.len()
    );
    assert!(
        !tasks.join("t-kill.landed").exists(),
        "the landed log outlived the task"
    );
    assert!(files_under(&folder)
        .iter()
        .all(|f| !f.starts_with(".ferry-")));
}

/// A signed OSS request carries `Authorization` and `x-amz-security-token`: a redirect from
/// the endpoint must not take them anywhere. The endpoint answers 307 to a second server,
/// which must receive nothing; the task fails saying where the redirect pointed, without the
/// redirect's query.
#[test]
fn oss_redirects_are_not_followed_and_the_target_receives_nothing() {
    let target = TestServer::start_blocking();
    target.put("/send/a.bin", Resource::new(b"stolen".to_vec()));
    let endpoint = TestServer::start_blocking();
    for status in [301, 302, 307, 308] {
        let location = format!(
            "http://127.0.0.1:{}/send/a.bin?X-Amz-Signature=SECRETSIG&security-token=SECRETTOKEN",
            target.addr().port()
        );
        endpoint.add_redirect("/send/a.bin", &location, status);
        endpoint.add_redirect("/", &location, status);
        let t = phone();
        let d = t.daemon(&[]);
        for (id, key) in [("t-redir", "send/a.bin"), ("t-redir-dir", "send/")] {
            let view = d.run_task(
                &stand_in_payload(id, &endpoint, key, "/sdcard/Download"),
                TASK_TIMEOUT,
            );
            assert_failed(&view, "Source.RedirectNotAllowed");
            let msg = view["ErrorMsg"].as_str().unwrap_or_default();
            assert!(
                msg.contains(&format!("127.0.0.1:{}", target.addr().port())),
                "{status} {id}: the message names the redirect's host: {msg}"
            );
            assert!(!msg.contains("SECRET"), "{status} {id}: {msg}");
        }
        assert!(files_under(&t.host("/sdcard")).is_empty());
    }
    let seen = target.requests("/send/a.bin");
    assert!(seen.is_empty(), "the redirect target received {seen:?}");
}

/// The OSS endpoint falls under the address policy like a DOWNLOAD_URL: by literal address
/// (refused before the SDK runs) or by a name the phone's hosts file maps to a refused
/// address, IPv6 forms embedding one included (refused by the resolver, before any connect).
#[test]
fn oss_endpoint_at_a_refused_address_is_address_not_allowed() {
    let t = phone();
    t.add_hosts(&format!(
        "169.254.169.254 {BUCKET}.metadata.test\n\
         64:ff9b::a9fe:a9fe {BUCKET}.nat64.test\n\
         ::ffff:100.100.100.200 {BUCKET}.mapped.test\n"
    ));
    let d = t.daemon(&[]);
    for (i, endpoint) in [
        "http://metadata.test:9000",
        "http://nat64.test:9000",
        "http://mapped.test",
        "http://169.254.169.254",
        "http://[64:ff9b::a9fe:a9fe]:9000",
        "[2002:a9fe:a9fe::1]:9000",
    ]
    .iter()
    .enumerate()
    {
        let view = d.run_task(
            &json!({
                "TaskId": format!("t-addr-{i}"),
                "UploadType": "OSS",
                "SourceFilePath": "/sdcard/Download",
                "UploadUrl": format!("oss://{BUCKET}/send/a.bin"),
                "UploadEndpoint": endpoint,
                "Credentials": credentials(),
            }),
            TASK_TIMEOUT,
        );
        assert_eq!(view["Phase"], "FAILED", "{endpoint}: {view}");
        assert_eq!(
            view["ErrorCode"], "Network.AddressNotAllowed",
            "{endpoint}: {view}"
        );
    }
}

/// A server whose listing never ends (always "truncated", the same continuation token, or
/// empty pages) must not hold the task forever: the listing stops with a clear error.
#[test]
fn oss_listing_that_never_ends_fails_instead_of_looping() {
    let t = phone();
    let d = t.daemon(&[]);
    let endless = list_objects_v2_xml(BUCKET, "send/f/", &[("send/f/a.bin", 3)]).replace(
        "<IsTruncated>false</IsTruncated>",
        "<IsTruncated>true</IsTruncated><NextContinuationToken>again</NextContinuationToken>",
    );
    let http = TestServer::start_blocking();
    http.put("/", Resource::new(endless.into_bytes()));
    let view = d.run_task(
        &stand_in_payload("t-endless", &http, "send/f/", "/sdcard/Download/endless"),
        TASK_TIMEOUT,
    );
    assert_failed(&view, "Source.S3Error");
    let msg = view["ErrorMsg"].as_str().unwrap_or_default();
    assert!(msg.contains("same continuation token twice"), "{msg}");
    assert!(files_under(&t.host("/sdcard/Download/endless")).is_empty());
}

/// A listing dripped a few bytes a second (never idle, never done) ends at the retry budget
/// as `Network.Timeout`, before anything of the folder is written.
#[test]
fn oss_listing_dripped_slowly_ends_at_the_retry_budget() {
    let t = phone();
    t.write("/data/local/tmp/ferry.toml", "[retry]\nbudget_secs = 2\n");
    let config = t.arg("/data/local/tmp/ferry.toml");
    let d = t.daemon(&["--config", config.to_str().unwrap()]);
    let xml = list_objects_v2_xml(BUCKET, "send/f/", &[("send/f/a.bin", 3)]);
    let http = TestServer::start_blocking();
    http.put("/", Resource::new(xml.into_bytes()));
    http.set_rate("/", Some(20));
    let view = d.run_task(
        &stand_in_payload("t-drip-list", &http, "send/f/", "/sdcard/Download/drip"),
        TASK_TIMEOUT,
    );
    assert_failed(&view, "Network.Timeout");
    let msg = view["ErrorMsg"].as_str().unwrap_or_default();
    assert!(msg.contains("took longer than 2 s"), "{msg}");
    assert!(files_under(&t.host("/sdcard/Download/drip")).is_empty());
}
