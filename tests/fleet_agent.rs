//! The agent's fleet link against a real mosquitto (Debian's) with the fleet ACL, the test
//! acting as the controller with its own MQTT client: the real `ferry daemon` with a
//! `[fleet]` section takes orders and reports through to SUCCESS with the sha256; a repeated
//! order runs once; Hello lists held tasks on every connection; a broker restart mid-transfer
//! is survived; presence is retained true while up and false after `kill -9` (last will) or
//! a clean stop; Cancel cancels; a payload intake refuses is reported FAILED with its code.
//! Runs on an Android-like [`Target`] (natively, or the aarch64 build under qemu in a chroot
//! with `FERRY_TEST_CHROOT=1`).

mod cli_support;
mod common;
// nats.rs maps topics with the controller's own function: the NATS test needs that feature
// (the android-e2e run builds this file without it, for the phone binary).
#[cfg(feature = "controller")]
#[path = "common/nats.rs"]
mod nats;

use cli_support::{skip::skip, Daemon, Target};
use common::http_server::{Resource, TestServer};
use common::mosquitto::{fleet_auth, Message, Mosquitto, Peer};
use ferry::fleet::topics::{every, topic, Kind};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

const CONTROLLER_PW: &str = "controller-pw";
const WAIT: Duration = Duration::from_secs(30);

struct Fleet {
    /// Password file, ACL and TLS files of the broker.
    _auth: tempfile::TempDir,
    broker: Mosquitto,
    controller: Peer,
    daemon: Daemon,
    id: String,
}

/// mosquitto with the fleet ACL, a controller peer subscribed to every agent topic, and a
/// daemon for `id` whose `[fleet]` points at the broker.
fn fleet(id: &str) -> Option<Fleet> {
    fleet_with(id, None)
}

/// [`fleet`], the broker on TLS with a certificate for `tls.0` when given; the agent dials
/// `mqtts://tls.1:PORT` trusting the test CA through `ca_file`.
fn fleet_with(id: &str, tls: Option<(&str, &str)>) -> Option<Fleet> {
    let auth = tempfile::tempdir().unwrap();
    let auth_dir = auth.path().to_path_buf();
    let agent_pw = format!("pw-{id}-secret");
    if common::mosquitto::binary().is_none() {
        skip("mosquitto is not installed (apt-get install mosquitto)");
        return None;
    }
    let mut options = fleet_auth(&auth_dir, &[("controller", CONTROLLER_PW), (id, &agent_pw)]);
    if let Some((cert_name, _)) = tls {
        options.tls = Some(common::test_ca::files(&auth_dir, &[cert_name]));
    }
    let broker = Mosquitto::start(options.clone()).expect("mosquitto");
    let filters: Vec<String> = [Kind::Report, Kind::Hello, Kind::Presence]
        .into_iter()
        .map(every)
        .collect();
    // The test's controller speaks plain MQTT: a second, local listener of the same broker.
    let controller_port = match tls {
        Some(_) => broker.plain_port.expect("a plain listener beside TLS"),
        None => broker.port,
    };
    let controller = Peer::connect(
        controller_port,
        "controller",
        "controller",
        CONTROLLER_PW,
        &filters,
    );
    let target = Target::new();
    let mut toml = format!(
        "[fleet]\ninstance_id = \"{id}\"\npassword = \"{agent_pw}\"\nprogress_interval_ms = 200\nkeepalive_secs = 30\n"
    );
    match tls {
        Some((_, host)) => {
            let ca = std::fs::read(options.tls.as_ref().unwrap().0.clone()).unwrap();
            target.write("/data/local/tmp/broker-ca.pem", ca);
            toml.push_str(&format!(
                "broker = \"mqtts://{host}:{}\"\nca_file = \"{}\"\n",
                broker.port,
                target.arg("/data/local/tmp/broker-ca.pem").display()
            ));
        }
        None => toml.push_str(&format!("broker = \"{}\"\n", broker.url())),
    }
    let config = target.config("/data/local/tmp/ferry.toml", &toml);
    let daemon = target.daemon(&[&config[0], &config[1]]);
    Some(Fleet {
        _auth: auth,
        broker,
        controller,
        daemon,
        id: id.to_string(),
    })
}

impl Fleet {
    fn order(&self, order: &Value) {
        let topic = topic(&self.id, Kind::Order);
        self.controller
            .publish(&topic, order.to_string().as_bytes());
    }

    fn run_order(&self, task_id: &str, url: &str, path: &str) -> Value {
        json!({"Kind": "Run", "TaskId": task_id, "Payload": {
            "TaskId": task_id, "SourceFilePath": path, "UploadType": "DOWNLOAD_URL", "UploadUrl": url}})
    }

    /// The first report (from `from`) of `task` in `phase`.
    fn report(&self, from: usize, task: &str, phase: &str) -> (usize, Value) {
        let report_topic = topic(&self.id, Kind::Report);
        let (i, m) = self.controller.wait_from(
            from,
            self.daemon.target.timeout(WAIT),
            &format!("{phase} report of {task}"),
            |m: &Message| {
                m.topic == report_topic
                    && m.body["Task"]["TaskId"] == task
                    && m.body["Task"]["Phase"] == phase
            },
        );
        assert_eq!(m.body["InstanceId"], self.id.as_str());
        (i, m.body["Task"].clone())
    }

    fn hello(&self, from: usize) -> (usize, Value) {
        let hello_topic = topic(&self.id, Kind::Hello);
        let (i, m) =
            self.controller
                .wait_from(from, self.daemon.target.timeout(WAIT), "hello", |m| {
                    m.topic == hello_topic
                });
        (i, m.body)
    }

    /// A fresh subscriber's view of the retained presence.
    fn retained_presence(&self, online: bool) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = Peer::connect(
            self.broker.plain_port.unwrap_or(self.broker.port),
            &format!("presence-check-{n}"),
            "controller",
            CONTROLLER_PW,
            &[topic(&self.id, Kind::Presence)],
        );
        p.wait(
            self.daemon.target.timeout(WAIT),
            &format!("retained presence {online}"),
            // Every presence names the agent connection it speaks for (a number).
            |m| m.retain && m.body["Online"] == json!(online) && m.body["Connection"].is_u64(),
        );
        p.disconnect();
    }
}

fn sha(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

#[test]
fn run_order_lands_the_file_reports_to_success_and_a_repeat_runs_once() {
    let Some(f) = fleet("acp-run1") else { return };
    let server = TestServer::start_blocking();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    server.put("/a.bin", Resource::new(body.clone()));
    let (h, hello) = f.hello(0);
    assert_eq!(hello["InstanceId"], "acp-run1");
    assert_eq!(hello["Held"], json!([]));
    assert_eq!(hello["Agent"]["Version"], env!("CARGO_PKG_VERSION"));
    assert!(!hello["Agent"]["Abi"].as_str().unwrap().is_empty());
    let roots = hello["Agent"]["Roots"].as_array().unwrap();
    assert!(
        roots
            .iter()
            .any(|r| r["Root"] == "/sdcard" && r["FreeBytes"].as_u64().unwrap() > 0),
        "{hello}"
    );
    f.retained_presence(true);

    let order = f.run_order("t-run-1", &server.url("/a.bin"), "/sdcard/Download/a.bin");
    f.order(&order);
    let (i, _) = f.report(h, "t-run-1", "RUNNING");
    let (i, done) = f.report(i, "t-run-1", "SUCCESS");
    assert_eq!(done["TaskStatus"], "Finished");
    assert_eq!(done["Result"]["Files"][0]["Sha256"], sha(&body));
    assert_eq!(done["Result"]["Files"][0]["Path"], "/sdcard/Download/a.bin");
    assert_eq!(
        std::fs::read(f.daemon.target.host("/sdcard/Download/a.bin")).unwrap(),
        body
    );

    // At-least-once delivery: the same order again starts nothing and says where it stands.
    f.order(&order);
    let (_, again) = f.report(i + 1, "t-run-1", "SUCCESS");
    assert_eq!(again["Result"]["Files"][0]["Sha256"], sha(&body));
    assert_eq!(
        server.hits("/a.bin"),
        1,
        "a repeated order ran the task again"
    );
    let (status, list) = f.daemon.get("/v1/tasks");
    assert_eq!(status, 200);
    assert_eq!(list["Tasks"].as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn broker_restart_mid_transfer_reconnects_says_hello_and_finishes_then_kill_9_leaves_presence_false(
) {
    let Some(mut f) = fleet("acp-restart1") else {
        return;
    };
    let server = TestServer::start_blocking();
    let body = vec![7u8; 400_000];
    server.put("/slow.bin", Resource::new(body.clone()));
    server.set_rate("/slow.bin", Some(100_000));
    let (h, _) = f.hello(0);
    f.order(&f.run_order(
        "t-slow-1",
        &server.url("/slow.bin"),
        "/sdcard/Download/slow.bin",
    ));
    let (i, _) = f.report(h, "t-slow-1", "RUNNING");

    f.broker.restart();
    let (_, hello) = f.hello(i + 1);
    assert_eq!(
        hello["Held"],
        json!([{"TaskId": "t-slow-1", "Phase": "RUNNING"}]),
        "the Hello after the restart lists the task in flight"
    );
    let (_, done) = f.report(i + 1, "t-slow-1", "SUCCESS");
    assert_eq!(done["Result"]["Files"][0]["Sha256"], sha(&body));
    f.retained_presence(true);

    f.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = f.daemon.wait_exit(Duration::from_secs(10));
    f.retained_presence(false);
}

#[test]
fn cancel_order_cancels_bad_payloads_fail_with_intake_codes_and_sigterm_says_offline() {
    let Some(mut f) = fleet("acp-cancel1") else {
        return;
    };
    let server = TestServer::start_blocking();
    server.put("/slow.bin", Resource::new(vec![1u8; 2_000_000]));
    server.set_rate("/slow.bin", Some(50_000));
    let (h, _) = f.hello(0);
    f.order(&f.run_order(
        "t-cancel-1",
        &server.url("/slow.bin"),
        "/sdcard/Download/c.bin",
    ));
    let (i, _) = f.report(h, "t-cancel-1", "RUNNING");
    f.order(&json!({"Kind": "Cancel", "TaskId": "t-cancel-1"}));
    let (_, cancelled) = f.report(i, "t-cancel-1", "CANCELLED");
    assert_eq!(cancelled["TaskStatus"], "Failed");
    assert!(!f.daemon.target.host("/sdcard/Download/c.bin").exists());

    let bad = [
        (
            "t-bad-root",
            json!({"TaskId": "t-bad-root", "SourceFilePath": "/etc/x", "UploadType": "DOWNLOAD_URL", "UploadUrl": "http://127.0.0.1:1/x"}),
            "InvalidParameter.SourceFilePath",
        ),
        (
            "t-bad-field",
            json!({"TaskId": "t-bad-field", "SourceFilePath": "/sdcard/Download/x", "UploadType": "DOWNLOAD_URL", "UploadUrl": "http://127.0.0.1:1/x", "Colour": 1}),
            "InvalidParameter.UnknownField",
        ),
        (
            "t-bad-id",
            json!({"TaskId": "t-other", "SourceFilePath": "/sdcard/Download/x", "UploadType": "DOWNLOAD_URL", "UploadUrl": "http://127.0.0.1:1/x"}),
            "InvalidParameter.TaskId",
        ),
    ];
    for (id, payload, code) in bad {
        f.order(&json!({"Kind": "Run", "TaskId": id, "Payload": payload}));
        let (_, failed) = f.report(0, id, "FAILED");
        assert_eq!(failed["ErrorCode"], code, "{failed}");
        assert_eq!(failed["TaskStatus"], "Failed");
        let (status, _) = f.daemon.get(&format!("/v1/tasks/{id}"));
        assert_eq!(status, 404, "{id}: a refused order creates no record");
    }
    // Neither a malformed order nor a cancel of an unknown task stops the link.
    f.controller
        .publish(&topic(&f.id, Kind::Order), b"{not json");
    f.order(&json!({"Kind": "Cancel", "TaskId": "t-never"}));
    let after = f.run_order("t-after", &server.url("/none"), "/sdcard/Download/n.bin");
    f.order(&after);
    let (i, failed) = f.report(0, "t-after", "FAILED");
    assert_eq!(failed["ErrorCode"], "Source.NotFound", "{failed}");
    let hits = server.hits("/none");
    // A redelivered order for a failed task answers with its state; it does not run again.
    f.order(&after);
    f.report(i + 1, "t-after", "FAILED");
    assert_eq!(
        server.hits("/none"),
        hits,
        "a repeated order re-ran a failed task"
    );
    assert!(
        !f.daemon.log_text().contains("pw-acp-cancel1-secret"),
        "the fleet password reached the log"
    );

    f.daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(f.daemon.wait_exit(Duration::from_secs(15)).is_some());
    f.retained_presence(false);
    // Said by the agent itself before a clean DISCONNECT, not by the last will.
    let log = f.broker.log_text();
    assert!(
        log.contains("Client acp-cancel1 disconnected."),
        "no clean disconnect in the broker's log: {log}"
    );
}

#[test]
fn mqtts_broker_with_a_private_ca_is_trusted_through_ca_file_and_checked_by_host_name() {
    // The certificate names "localhost"; ferry resolves it itself and still checks the name.
    let Some(f) = fleet_with("acp-tls1", Some(("localhost", "localhost"))) else {
        return;
    };
    let (_, hello) = f.hello(0);
    assert_eq!(hello["InstanceId"], "acp-tls1");
    f.retained_presence(true);
    if !f.daemon.target.is_emulated() {
        // Idle with the link open: nothing but the keepalive (30 s here) may wake the daemon.
        std::thread::sleep(Duration::from_millis(1500));
        let pid = f.daemon.child.id();
        let before = context_switches(pid);
        std::thread::sleep(Duration::from_secs(4));
        let after = context_switches(pid);
        let woke: u64 = after
            .iter()
            .map(|(tid, n)| n - before.get(tid).copied().unwrap_or(0))
            .sum();
        assert!(woke <= 6, "the idle agent woke {woke} times in 4 s");
    }
}

/// Voluntary + involuntary context switches of each thread of `pid`.
fn context_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut counts = std::collections::HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let entry = entry.unwrap();
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        counts.insert(entry.file_name().to_string_lossy().into_owned(), n);
    }
    counts
}

#[test]
fn mqtts_broker_whose_certificate_names_another_host_is_refused() {
    let Some(f) = fleet_with("acp-tls2", Some(("broker.example", "localhost"))) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        f.controller
            .messages()
            .iter()
            .all(|m| !m.topic.contains("acp-tls2")),
        "the agent connected to a broker whose certificate is for another name"
    );
    let log = f.daemon.log_text();
    assert!(log.contains("fleet link down"), "{log}");
    // Checked against the configured host name, not the address ferry resolved it to.
    assert!(
        log.contains(r#"certificate not valid for name "localhost""#),
        "{log}"
    );
}

/// The broker refuses the agent's order subscription: nats-server answers SUBSCRIBE with
/// 0x80 when it cannot create the subscription's JetStream consumer in time (seen in a
/// reconnect storm of 5,000 agents) or when the user may not subscribe. The agent says so
/// and asks again, backing off, rather than waiting for ever for orders that cannot come;
/// once its permission is back (users reloaded), the next try gets it and an order runs.
/// (mosquitto's acl_file grants every SUBSCRIBE and filters at delivery, so NATS it is.)
#[cfg(feature = "controller")]
#[test]
fn a_refused_order_subscription_is_asked_again_until_the_broker_grants_it() {
    if nats::binary().is_none() {
        skip("nats-server is not installed (scripts/test.sh installs it)");
        return;
    }
    let (id, agent_pw) = ("acp-sub", "pw-acp-sub-secret");
    let granted = nats::fleet_users(("controller", CONTROLLER_PW), &[(id, agent_pw)]);
    let own_order = format!(
        "subscribe: {{allow: [{:?}]}}",
        nats::subject(&topic(id, Kind::Order))
    );
    let refused = granted.replace(&own_order, "subscribe: {deny: [\">\"]}");
    assert_ne!(refused, granted);
    let cluster = nats::NatsCluster::start(3, &refused).expect("nats-server");
    let url = cluster.mqtt_url(0);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let filters: Vec<String> = [Kind::Report, Kind::Hello, Kind::Presence]
        .into_iter()
        .map(every)
        .collect();
    let controller = Peer::connect(port, "controller", "controller", CONTROLLER_PW, &filters);
    let target = Target::new();
    let toml = format!(
        "[fleet]\ninstance_id = \"{id}\"\npassword = \"{agent_pw}\"\nbroker = \"{url}\"\nprogress_interval_ms = 200\nkeepalive_secs = 30\n"
    );
    let config = target.config("/data/local/tmp/ferry.toml", &toml);
    let daemon = target.daemon(&[&config[0], &config[1]]);

    let refusal = "the broker refused the order subscription";
    let deadline = std::time::Instant::now() + target.timeout(WAIT);
    while daemon.log_text().matches(refusal).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second refusal logged: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.set_users(&granted);

    let server = TestServer::start_blocking();
    server.put("/sub.bin", Resource::new(b"granted".to_vec()));
    let source = server.url("/sub.bin");
    // An order every 2 s until one is taken: the broker drops those sent before the agent's
    // next try got the subscription.
    let reported = |task_id: &str| {
        controller
            .messages()
            .iter()
            .any(|m| m.body["Task"]["TaskId"] == task_id)
    };
    let mut taken = None;
    for n in 0..40 {
        let task_id = format!("t-sub-{n}");
        let order = json!({"Kind": "Run", "TaskId": task_id, "Payload": {
            "TaskId": task_id, "SourceFilePath": "/sdcard/Download/sub.bin",
            "UploadType": "DOWNLOAD_URL", "UploadUrl": source}});
        controller.publish(&topic(id, Kind::Order), order.to_string().as_bytes());
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until && !reported(&task_id) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if reported(&task_id) {
            taken = Some(task_id);
            break;
        }
    }
    let task = taken.expect("no order reached the agent once its subscription was allowed");
    controller.wait(target.timeout(WAIT), "its SUCCESS report", |m| {
        m.body["Task"]["TaskId"] == task.as_str() && m.body["Task"]["Phase"] == "SUCCESS"
    });
    assert_eq!(
        std::fs::read(target.host("/sdcard/Download/sub.bin")).unwrap(),
        b"granted"
    );
}
