//! The whole fleet, real processes only, each scenario against both brokers (the embedded
//! one and Debian's mosquitto with the files `mosquitto-files` writes): `ferry-controller
//! serve` (SQLite), twenty `ferry daemon` agents each on its own device root, files served over
//! HTTP on 127.0.0.1, and Alibaba's official Python SDK or ferry-controller's own signed
//! client as the API client. The test HTTP server records every request, so "ran once" is
//! "one request from byte 0 per phone" and "resumed" is "a request from a later byte".

#[path = "common/alibaba_sdk.rs"]
mod alibaba_sdk;
mod common;
#[path = "fleet_e2e/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::{Fault, TestServer};
use ferry::fleet::topics::{topic, Kind};
use fleet::{fetches, serve_body, sha256_hex, wait_fetching, Broker, Fleet, WAIT};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const AGENTS: usize = 20;

/// Runs each scenario against both brokers: `SCENARIO: NAME_embedded, NAME_mosquitto;`.
macro_rules! on_both_brokers {
    ($($scenario:ident: $embedded:ident, $mosquitto:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $scenario(Broker::Embedded).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mosquitto() {
            $scenario(Broker::Mosquitto).await;
        }
    )*};
}

on_both_brokers! {
    lands_everywhere_through_crashes_and_a_late_phone: crashes_embedded, crashes_mosquitto;
    a_broker_restart_mid_batch_still_lands_everywhere_once:
        broker_restart_embedded, broker_restart_mosquitto;
    an_order_delivered_twice_runs_once: duplicate_order_embedded, duplicate_order_mosquitto;
    a_batch_cancel_stops_every_phone_and_a_phone_that_never_connects_expires:
        cancel_and_expiry_embedded, cancel_and_expiry_mosquitto;
    a_forged_report_never_changes_another_phones_row:
        forged_report_embedded, forged_report_mosquitto;
}

/// Every phone of `ids` holds `/sdcard/Download/NAME` with `body`'s digest.
fn assert_landed(fleet: &Fleet, ids: &[String], name: &str, body: &[u8]) {
    let want = sha256_hex(body);
    for id in ids {
        let landed = std::fs::read(fleet.device(id).join("sdcard/Download").join(name))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(sha256_hex(&landed), want, "{id}");
    }
}

/// [`assert_landed`], each phone having fetched the file once, from byte 0 and never again.
fn assert_landed_once(fleet: &Fleet, server: &TestServer, ids: &[String], name: &str, body: &[u8]) {
    assert_landed(fleet, ids, name, body);
    let fetched = fetches(server, &format!("/{name}"));
    assert_eq!(fetched, (ids.len(), 0), "one fetch per phone");
}

/// Bytes written so far into staging files (not yet under their final name) in a phone's
/// Download folder.
fn staged_bytes(device: &Path) -> u64 {
    std::fs::read_dir(device.join("sdcard/Download"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The phone among `ids` whose partial file has stood at exactly `bytes` for a second: the
/// one whose response the server stalled there. Others pass that size within milliseconds.
async fn stalled_phone(fleet: &Fleet, ids: &[String], bytes: u64) -> String {
    let deadline = Instant::now() + WAIT;
    let mut since: Option<(String, Instant)> = None;
    loop {
        assert!(Instant::now() < deadline, "no phone held {bytes} bytes");
        let held = ids
            .iter()
            .find(|id| staged_bytes(&fleet.device(id)) == bytes);
        since = match (held, since) {
            (Some(id), Some((seen, at))) if *id == seen => {
                if at.elapsed() >= Duration::from_secs(1) {
                    return seen;
                }
                Some((seen, at))
            }
            (Some(id), _) => Some((id.clone(), Instant::now())),
            (None, _) => None,
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One SendFile (Alibaba's SDK) lands the verified file on every phone through: one phone
/// killed with -9 mid-transfer and restarted (it resumes from its partial file), the
/// controller killed with -9 mid-batch and restarted on the same state (no phone fetches
/// twice), a repeat of the call with the same ClientToken after the restart (same ids), and
/// a phone that was offline at SendFile time and comes online afterwards.
async fn lands_everywhere_through_crashes_and_a_late_phone(broker: Broker) {
    let Some(python) = alibaba_sdk::python() else {
        return;
    };
    let server = TestServer::start().await;
    // Slow enough (about 4 s a phone) that the crashes fall mid-transfer.
    let body = serve_body(&server, "/app.bin", 4_000_000, Some(1 << 20));
    // The first phone to ask gets half the file, then nothing for longer than the test needs
    // to find it: it is mid-transfer when killed however loaded the machine is (a kill timed
    // by the phone's progress alone once came after the phone had the whole file).
    server.push_fault("/app.bin", Fault::Stall(Duration::from_secs(25)));
    let Some(mut fleet) = Fleet::start(broker, "acp-a", AGENTS, &[]) else {
        return;
    };
    let ids = fleet.ids.clone();
    let late = ids[AGENTS - 1].clone();
    fleet.start_agents(&ids[..AGENTS - 1]);
    let request = json!({
        "android_instance_id_list": ids,
        "source_file_path": "/sdcard/Download/app.bin",
        "upload_type": "DOWNLOAD_URL",
        "upload_url": server.url("/app.bin"),
        "client_token": "e2e-batch-1",
    });
    let sent = fleet.sdk(&python, "send_file", request.clone());
    let answer = &sent["ok"];
    let batch = answer["TaskId"]
        .as_str()
        .expect("a batch TaskId")
        .to_string();
    assert_eq!(answer["Data"].as_array().unwrap().len(), AGENTS, "{sent}");

    // kill -9 the phone that holds half of the file.
    let victim = stalled_phone(&fleet, &ids[..AGENTS - 1], body.len() as u64 / 2).await;
    fleet.kill_agent(&victim);
    // kill -9 the controller mid-batch, then bring it back on the same state.
    fleet.kill_controller();
    fleet.start_controller();
    let again = fleet.sdk(&python, "send_file", request);
    assert_eq!(again["ok"]["TaskId"], answer["TaskId"], "{again}");
    assert_eq!(again["ok"]["Data"], answer["Data"]);
    fleet.start_agent(&victim);
    fleet.start_agent(&late);

    let row = fleet.wait_batch_end(&batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_eq!(row["SuccessChildCount"], AGENTS, "{row}");
    assert_landed(&fleet, &ids, "app.bin", &body);
    // Orders resent after the restart ran nothing twice, and the killed phone asked for the
    // rest of its file, never the whole file again.
    let (from_zero, resumed) = fetches(&server, "/app.bin");
    assert_eq!(from_zero, AGENTS, "one whole fetch per phone");
    assert!(resumed >= 1, "{victim} resumed with a range request");

    // DescribeTasks through the SDK: one row per phone, each with the agent's result.
    let described = fleet.sdk(
        &python,
        "describe_tasks",
        json!({"parent_task_id": batch, "level": 2, "max_results": 100}),
    );
    let rows = described["ok"]["Data"].as_array().unwrap();
    assert_eq!(rows.len(), AGENTS, "{described}");
    let want = sha256_hex(&body);
    for row in rows {
        assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
        let result: Value = serde_json::from_str(row["Result"].as_str().unwrap()).unwrap();
        assert_eq!(result["Files"][0]["Sha256"], want.as_str(), "{result}");
        assert_eq!(result["Files"][0]["Path"], "/sdcard/Download/app.bin");
        assert!(row["StartTime"].as_str().unwrap().ends_with('Z'), "{row}");
    }
}

/// The broker restarts while every phone is fetching: mosquitto is stopped and started on
/// its port and saved state; the embedded broker lives in the controller, so there the
/// controller's kill -9 and restart IS the broker restart. Every phone still ends with the
/// verified file, each fetched once, and every row converges to FINISHED.
async fn a_broker_restart_mid_batch_still_lands_everywhere_once(broker: Broker) {
    let server = TestServer::start().await;
    let body = serve_body(&server, "/big.bin", 2_000_000, Some(512 << 10));
    let Some(mut fleet) = Fleet::online(broker, "acp-b", AGENTS) else {
        return;
    };
    let ids = fleet.ids.clone();
    let (batch, _) = fleet.send_file(&ids, "big.bin", &server.url("/big.bin"));
    wait_fetching(&server, "/big.bin", AGENTS).await;
    fleet.restart_broker();

    let row = fleet.wait_batch_end(&batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_landed_once(&fleet, &server, &ids, "big.bin", &body);
    let rows = fleet.children(&batch);
    assert_eq!(rows.len(), AGENTS);
    for row in &rows {
        assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    }
}

/// A Run order for a task a phone already finished, published again on every phone's order
/// topic as the controller's broker user (what a redelivery looks like to the agent): each
/// agent answers where the task stands and downloads nothing; every row stays as it was.
async fn an_order_delivered_twice_runs_once(broker: Broker) {
    const REPEATED: &str = "fleet order repeated; nothing new started";
    let server = TestServer::start().await;
    let body = serve_body(&server, "/small.bin", 200_000, None);
    let Some(fleet) = Fleet::online(broker, "acp-c", AGENTS) else {
        return;
    };
    let ids = fleet.ids.clone();
    let url = server.url("/small.bin");
    let (batch, children) = fleet.send_file(&ids, "small.bin", &url);
    let row = fleet.wait_batch_end(&batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    let before = fleet.children(&batch);
    let seen: Vec<usize> = ids
        .iter()
        .map(|id| fleet.log(id).matches(REPEATED).count())
        .collect();

    let controller = fleet.mqtt_client(
        "ferry-e2e-repeat",
        "ferry-controller",
        &fleet.controller_password(),
    );
    for id in &ids {
        let task = &children[id];
        let order = json!({
            "Kind": "Run",
            "TaskId": task,
            "Payload": {
                "TaskId": task,
                "SourceFilePath": "/sdcard/Download/small.bin",
                "UploadType": "DOWNLOAD_URL",
                "UploadUrl": url,
            },
        });
        controller.publish(&topic(id, Kind::Order), order.to_string().as_bytes());
    }
    for (id, seen) in ids.iter().zip(seen) {
        fleet
            .wait_log(id, || fleet.log(id), REPEATED, seen + 1)
            .await;
    }
    controller.disconnect();
    assert_landed_once(&fleet, &server, &ids, "small.bin", &body);
    let after = fleet.children(&batch);
    for (was, is) in before.iter().zip(&after) {
        for field in ["TaskId", "TaskStatus", "Result", "FinishTime"] {
            assert_eq!(was[field], is[field], "{field}: {was} then {is}");
        }
    }
}

/// FerryCancelTask on a running batch of twenty phones stops every one (their tasks end
/// FAILED with `Cancelled`, no file under its final name, no partial data left), and a phone
/// that never connects fails with `Fleet.InstanceOffline` once the expiry passes.
async fn a_batch_cancel_stops_every_phone_and_a_phone_that_never_connects_expires(broker: Broker) {
    let server = TestServer::start().await;
    serve_body(&server, "/slow.bin", 8 << 20, Some(256 << 10));
    let Some(mut fleet) = Fleet::start(broker, "acp-d", AGENTS + 1, &["--expiry-secs", "3"]) else {
        return;
    };
    let ids = fleet.ids[..AGENTS].to_vec();
    let never = fleet.ids[AGENTS].clone();
    fleet.start_agents(&ids);
    let url = server.url("/slow.bin");
    let (batch, _) = fleet.send_file(&ids, "slow.bin", &url);
    wait_fetching(&server, "/slow.bin", AGENTS).await;
    let cancelled = fleet.client(&["cancel", &batch]);
    assert_eq!(
        cancelled["Data"].as_array().unwrap().len(),
        AGENTS,
        "{cancelled}"
    );
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let rows = fleet.children(&batch);
        if rows.len() == AGENTS && rows.iter().all(|r| r["TaskStatus"] == "FAILED") {
            break rows;
        }
        assert!(Instant::now() < deadline, "not all cancelled: {rows:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for row in &rows {
        assert_eq!(row["ErrorCode"], "Cancelled", "{row}");
    }
    for id in &ids {
        let folder = fleet.device(id).join("sdcard/Download");
        let left: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
        assert!(left.is_empty(), "{id}: {left:?} left behind");
    }

    // A phone that never connects: its task fails once the expiry (3 s) passes.
    let (_, lone) = fleet.send_file(std::slice::from_ref(&never), "x.bin", &url);
    let deadline = Instant::now() + WAIT;
    let row = loop {
        let row = fleet.task(&lone[&never]);
        if row["TaskStatus"] == "FAILED" {
            break row;
        }
        assert!(Instant::now() < deadline, "never expired: {row}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(row["ErrorCode"], "Fleet.InstanceOffline", "{row}");
}

/// A real agent's broker credentials (phone A's user and password, its daemon killed) publish
/// a report that B failed while B is still fetching: once on A's own topic claiming B's
/// InstanceId (the broker lets it through, the controller drops it) and once on B's topic
/// (the broker refuses it). B's row is never FAILED: it ends FINISHED with B's own result,
/// and A, restarted, finishes too.
async fn a_forged_report_never_changes_another_phones_row(broker: Broker) {
    let server = TestServer::start().await;
    // About 8 s a phone: the forged reports arrive while B is still fetching.
    let body = serve_body(&server, "/f.bin", 2_000_000, Some(256 << 10));
    let Some(mut fleet) = Fleet::online(broker, "acp-e", AGENTS) else {
        return;
    };
    let ids = fleet.ids.clone();
    let url = server.url("/f.bin");
    let (batch, children) = fleet.send_file(&ids, "f.bin", &url);
    wait_fetching(&server, "/f.bin", AGENTS).await;
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let b_task = children[&b].clone();

    fleet.kill_agent(&a);
    let forger = fleet.mqtt_client(&a, &a, &fleet.agent_password(&a));
    let forged = json!({
        "InstanceId": b,
        "Task": {
            "TaskId": b_task,
            "ClientToken": null,
            "TaskStatus": "Failed",
            "Phase": "FAILED",
            "Progress": 0,
            "BytesDone": 0,
            "BytesTotal": null,
            "ErrorCode": "Cancelled",
            "ErrorMsg": "forged",
            "Result": null,
            "Notes": [],
            "Payload": {
                "TaskId": b_task,
                "SourceFilePath": "/sdcard/Download/f.bin",
                "UploadType": "DOWNLOAD_URL",
                "UploadUrl": url,
            },
            "CreationTime": "2026-12-02T00:00:00Z",
            "StartTime": null,
            "FinishTime": "2026-12-02T00:00:01Z",
        },
    })
    .to_string();
    forger.publish(&topic(&a, Kind::Report), forged.as_bytes());
    forger.publish(&topic(&b, Kind::Report), forged.as_bytes());
    let dropped = "dropped a message whose InstanceId is not the instance of its topic";
    fleet
        .wait_log(
            "the report claiming B",
            || fleet.log("controller"),
            dropped,
            1,
        )
        .await;
    let refused = match broker {
        Broker::Embedded => "MQTT publish refused by the fleet ACL",
        Broker::Mosquitto => "Denied PUBLISH",
        Broker::External => unreachable!("fleet_e2e runs the embedded broker or mosquitto"),
        Broker::Nats => unreachable!("nats-server drops a forbidden publish without a log line"),
    };
    fleet
        .wait_log("A on B's topic", || fleet.broker_log(), refused, 1)
        .await;
    forger.disconnect();
    let row = fleet.task(&b_task);
    assert_ne!(row["TaskStatus"], "FAILED", "{row}");

    fleet.start_agent(&a);
    let row = fleet.wait_batch_end(&batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_landed(&fleet, &ids, "f.bin", &body);
    let row = fleet.task(&b_task);
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    let result: Value = serde_json::from_str(row["Result"].as_str().unwrap()).unwrap();
    assert_eq!(result["Files"][0]["Sha256"], sha256_hex(&body).as_str());
}
