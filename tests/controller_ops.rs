//! `ferry-controller serve --ops-listen`: real processes on 127.0.0.1 (the fleet of
//! tests/fleet_e2e: `serve`, real `ferry daemon` agents, the signed client). `/metrics` is
//! scraped and parsed, and its counters must move by what the test did; `/readyz` follows
//! the broker (Debian's mosquitto stopped and started); SIGTERM mid-request and mid-batch
//! drains: the open request is answered, the process exits 0, and after a restart nothing
//! acknowledged is lost.

mod common;
#[path = "fleet_e2e/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::{Resource, TestServer};
use ferry::controller::api::acs3;
use ferry::fleet::topics::{topic, Kind};
use fleet::{free_port, Broker, Fleet, WAIT};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A fleet whose controller serves the ops endpoints; their `IP:PORT`.
fn fleet_with_ops(broker: Broker, prefix: &str, phones: usize) -> Option<(Fleet, String)> {
    let ops = format!("127.0.0.1:{}", free_port());
    let fleet = Fleet::start(broker, prefix, phones, &["--ops-listen", &ops])?;
    Some((fleet, ops))
}

/// `GET path` on `addr`: status and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The samples of one scrape, `name{labels}` → value, checked to be well-formed
/// exposition text: every sample's family has a TYPE line.
fn scrape(ops: &str) -> HashMap<String, f64> {
    let (status, text) = get(ops, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        samples.insert(key.to_string(), value.parse().expect("a number"));
    }
    samples
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// Scrapes until `key` has `want` (the store's counts are cached a few seconds).
async fn wait_metric(ops: &str, key: &str, want: f64) -> HashMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = scrape(ops);
        if value(&samples, key) == want {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached {want}: {:?}",
            samples.get(key)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_ready(ops: &str, want: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(ops, "/readyz");
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {want}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A report of `b_task` claiming to come from `claimed` (JSON a Report decodes).
fn report_claiming(claimed: &str, task_id: &str) -> Vec<u8> {
    json!({
        "InstanceId": claimed,
        "Task": {
            "TaskId": task_id, "ClientToken": null, "TaskStatus": "Failed", "Phase": "FAILED",
            "Progress": 0, "BytesDone": 0, "BytesTotal": null, "ErrorCode": "Cancelled",
            "ErrorMsg": "forged", "Result": null, "Notes": [],
            "Payload": {
                "TaskId": task_id, "SourceFilePath": "/sdcard/Download/m.bin",
                "UploadType": "DOWNLOAD_URL", "UploadUrl": "http://127.0.0.1:9/m.bin",
            },
            "CreationTime": "2026-12-02T00:00:00Z", "StartTime": null,
            "FinishTime": "2026-12-02T00:00:01Z",
        },
    })
    .to_string()
    .into_bytes()
}

/// One SendFile to two real agents moves the counters by what happened: one SendFile
/// answered OK (and timed), two orders published, the agents' hellos, presence and
/// reports ingested, both children and the batch FINISHED in the store's gauges; a forged
/// and an invalid message are counted as dropped; an agent killed goes offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_send_file_to_real_agents() {
    let server = TestServer::start().await;
    server.put("/m.bin", Resource::new(vec![7u8; 300_000]));
    let Some((mut fleet, ops)) = fleet_with_ops(Broker::Embedded, "acp-m", 2) else {
        return;
    };
    assert_eq!(get(&ops, "/healthz").0, 200);
    assert_eq!(get(&ops, "/nope").0, 404);
    let ids = fleet.ids.clone();
    fleet.start_agents(&ids);
    let before = wait_metric(&ops, "ferry_controller_agents_online", 2.0).await;
    wait_ready(&ops, 200).await;
    assert_eq!(value(&before, "ferry_controller_instances"), 2.0);
    assert!(value(&before, "ferry_controller_messages_total{kind=\"hello\"}") >= 2.0);
    assert!(
        value(
            &before,
            "ferry_controller_messages_total{kind=\"presence\"}"
        ) >= 2.0
    );
    assert_eq!(value(&before, "ferry_controller_broker_connected"), 1.0);

    let (batch, children) = fleet.send_file(&ids, "m.bin", &server.url("/m.bin"));
    assert_eq!(fleet.wait_batch_end(&batch).await["TaskStatus"], "FINISHED");
    let after = wait_metric(
        &ops,
        "ferry_controller_tasks{level=\"child\",status=\"FINISHED\"}",
        2.0,
    )
    .await;
    let delta = |key: &str| value(&after, key) - value(&before, key);
    let send_ok = "ferry_controller_api_requests_total{action=\"SendFile\",code=\"OK\"}";
    assert_eq!(delta(send_ok), 1.0);
    assert_eq!(
        delta("ferry_controller_api_request_duration_seconds_count{action=\"SendFile\"}"),
        1.0
    );
    assert_eq!(
        delta(
            "ferry_controller_api_request_duration_seconds_bucket{action=\"SendFile\",le=\"+Inf\"}"
        ),
        1.0
    );
    // The batch polls were DescribeTasks calls, each answered OK.
    assert!(
        delta("ferry_controller_api_requests_total{action=\"DescribeTasks\",code=\"OK\"}") >= 1.0
    );
    // One Run order per phone; none resent (no agent reconnected).
    assert_eq!(delta("ferry_controller_orders_published_total"), 2.0);
    assert_eq!(delta("ferry_controller_orders_resent_total"), 0.0);
    // At least the final report of each phone, committed in groups.
    assert!(delta("ferry_controller_messages_total{kind=\"report\"}") >= 2.0);
    assert!(delta("ferry_controller_report_commit_seconds_count") >= 1.0);
    assert_eq!(
        value(
            &after,
            "ferry_controller_tasks{level=\"batch\",status=\"FINISHED\"}"
        ),
        1.0
    );
    for status in ["PENDING", "RUNNING", "FAILED"] {
        let key = format!("ferry_controller_tasks{{level=\"child\",status=\"{status}\"}}");
        assert_eq!(value(&after, &key), 0.0, "{key}");
    }

    // Agent A's credentials on its own topic: a report claiming B (forged), then bytes that
    // are no report (invalid). A is killed first so the test owns its client id.
    let (a, b) = (ids[0].clone(), ids[1].clone());
    fleet.kill_agent(&a);
    wait_metric(&ops, "ferry_controller_agents_online", 1.0).await;
    let forger = fleet.mqtt_client(&a, &a, &fleet.agent_password(&a));
    forger.publish(
        &topic(&a, Kind::Report),
        &report_claiming(&b, &children[&b]),
    );
    forger.publish(&topic(&a, Kind::Report), b"not json");
    let forged = "ferry_controller_messages_dropped_total{reason=\"forged\"}";
    let dropped = wait_metric(&ops, forged, value(&before, forged) + 1.0).await;
    let invalid = "ferry_controller_messages_dropped_total{reason=\"invalid\"}";
    assert_eq!(value(&dropped, invalid) - value(&before, invalid), 1.0);
    forger.disconnect();
    assert_eq!(fleet.task(&children[&b])["TaskStatus"], "FINISHED");
}

/// `/readyz` is 503 (naming the broker) while the external broker is down and 200 again
/// once it is back; `/healthz` stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker() {
    let Some((mut fleet, ops)) = fleet_with_ops(Broker::Mosquitto, "acp-r", 1) else {
        return;
    };
    wait_ready(&ops, 200).await;
    fleet.mosquitto().unwrap().stop();
    let body = wait_ready(&ops, 503).await;
    let reasons: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reasons["ready"], false, "{body}");
    assert!(body.contains("broker"), "{body}");
    assert_eq!(get(&ops, "/healthz").0, 200);
    assert_eq!(
        value(&scrape(&ops), "ferry_controller_broker_connected"),
        0.0
    );
    fleet.mosquitto().unwrap().restart();
    wait_ready(&ops, 200).await;
}

/// A signed SendFile whose body is still arriving when SIGTERM comes: readiness turns 503
/// (draining) while the request is open, the request is then answered 200, and the
/// controller exits 0 while a batch runs on two agents. After a restart, the drained
/// request's batch exists, nothing DescribeTasks had shown goes back, and both batches
/// finish on every phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_request_and_a_running_batch() {
    let server = TestServer::start().await;
    let body: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    server.put("/d.bin", Resource::new(body.clone()));
    server.set_rate("/d.bin", Some(256 << 10));
    let Some((mut fleet, ops)) = fleet_with_ops(Broker::Embedded, "acp-d", 2) else {
        return;
    };
    let ids = fleet.ids.clone();
    fleet.start_agents(&ids);
    wait_metric(&ops, "ferry_controller_agents_online", 2.0).await;
    let url = server.url("/d.bin");
    let (first, _) = fleet.send_file(&ids, "d.bin", &url);
    // Mid-batch: every phone is fetching and reporting progress.
    let deadline = Instant::now() + WAIT;
    while server.requests("/d.bin").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the phones never started fetching"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = fleet.children(&first);

    // The second SendFile, signed, its body sent in two halves around the SIGTERM.
    let mut params: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (format!("AndroidInstanceIdList.{}", i + 1), id.clone()))
        .collect();
    params.push(("SourceFilePath".into(), "/sdcard/Download/e.bin".into()));
    params.push(("UploadType".into(), "DOWNLOAD_URL".into()));
    params.push(("UploadUrl".into(), url.clone()));
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
        .into_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (ak, secret) = fleet.access_key();
    let headers = acs3::sign(&acs3::Signing {
        access_key_id: ak,
        secret,
        method: "POST",
        host: fleet.api(),
        action: "SendFile",
        version: "2023-09-30",
        query: &[],
        body: &form,
        content_type: Some("application/x-www-form-urlencoded"),
        date: &acs3::format_date(now),
        nonce: "drain-test-nonce-0001",
    });
    let mut tcp = TcpStream::connect(fleet.api()).unwrap();
    let mut head = "POST / HTTP/1.1\r\n".to_string();
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", form.len()));
    tcp.write_all(head.as_bytes()).unwrap();
    let half = form.len() / 2;
    tcp.write_all(&form[..half]).unwrap();
    tcp.flush().unwrap();
    // The request is open in the controller (accepted, its body being read).
    wait_metric(&ops, "ferry_controller_api_requests_in_flight", 1.0).await;

    fleet.sigterm_controller();
    let reasons = wait_ready(&ops, 503).await;
    assert!(reasons.contains("draining"), "{reasons}");
    tcp.write_all(&form[half..]).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let second = json["TaskId"].as_str().expect("a batch id").to_string();
    let status = fleet.wait_controller_exit().await;
    assert_eq!(status.code(), Some(0), "{}", fleet.log("controller"));
    let log = fleet.log("controller");
    assert!(log.contains("draining: readiness fails"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    fleet.start_controller();
    // Nothing DescribeTasks showed before the stop goes back.
    let rank = |s: &str| {
        ["PENDING", "RUNNING", "FINISHED", "FAILED"]
            .iter()
            .position(|x| *x == s)
    };
    let now: HashMap<String, String> = fleet
        .children(&first)
        .iter()
        .map(|c| {
            (
                c["TaskId"].as_str().unwrap().into(),
                c["TaskStatus"].as_str().unwrap().into(),
            )
        })
        .collect();
    for child in &seen {
        let id = child["TaskId"].as_str().unwrap();
        let before = child["TaskStatus"].as_str().unwrap();
        assert!(
            rank(&now[id]) >= rank(before),
            "{id}: {before} -> {}",
            now[id]
        );
    }
    assert_eq!(fleet.wait_batch_end(&first).await["TaskStatus"], "FINISHED");
    assert_eq!(
        fleet.wait_batch_end(&second).await["TaskStatus"],
        "FINISHED"
    );
    for id in &ids {
        for name in ["d.bin", "e.bin"] {
            let landed =
                std::fs::read(fleet.device(id).join("sdcard/Download").join(name)).unwrap();
            assert_eq!(landed, body, "{id} {name}");
        }
    }
}

/// A second SIGTERM while the first drains (an open request holds it) exits at once with
/// the forced-exit status, without waiting for the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let Some((mut fleet, ops)) = fleet_with_ops(Broker::Embedded, "acp-t", 1) else {
        return;
    };
    wait_ready(&ops, 200).await;
    // Headers announcing a body that never comes: the drain would wait for it.
    let mut tcp = TcpStream::connect(fleet.api()).unwrap();
    write!(
        tcp,
        "POST / HTTP/1.1\r\nHost: {}\r\ncontent-length: 100\r\n\r\nx",
        fleet.api()
    )
    .unwrap();
    wait_metric(&ops, "ferry_controller_api_requests_in_flight", 1.0).await;
    fleet.sigterm_controller();
    wait_ready(&ops, 503).await;
    fleet.sigterm_controller();
    let status = fleet.wait_controller_exit().await;
    assert_eq!(status.code(), Some(130), "{}", fleet.log("controller"));
    assert!(!fleet.log("controller").contains("stopped"));
}
