//! The fleet on a 3-node NATS cluster (JetStream, MQTT listeners), as real processes: the
//! cluster's users come from `ferry-controller nats-files`, one `ferry-controller serve --nats`
//! takes agent messages from JetStream and sends orders over MQTT (both failing over across
//! the nodes), and every `ferry daemon` lists the three nodes (`[fleet] brokers`). A node
//! dies (-9) mid-transfer: its agents move to another node with their
//! session and keep reporting, every phone lands the file once, and the node rejoins.

mod common;
#[path = "fleet_e2e/fleet.rs"]
mod fleet;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::{Resource, TestServer};
use ferry::fleet::agent::link::first_broker;
use fleet::{fetches, sha256_hex, Broker, Fleet, WAIT};
use std::time::{Duration, Instant};

const AGENTS: usize = 20;

/// The tests run one at a time: each starts a cluster on ports it picked free and released,
/// which a second cluster starting at once could pick too.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until agent `id` logged its `times`-th connection; fails showing its log's end.
async fn wait_connected(fleet: &Fleet, id: &str, times: usize) {
    let deadline = Instant::now() + WAIT;
    while fleet.log(id).matches("fleet link connected").count() < times {
        if Instant::now() > deadline {
            let log = fleet.log(id);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!("{id} never connected {times} time(s): {tail:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `HOST:PORT` of the last broker an agent's log says it connected to.
fn connected_to(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("fleet link connected"))?;
    let rest = line.split("broker=").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// A node dies mid-transfer: the agents that were on it reconnect to another node, every task
/// ends FINISHED with the verified file fetched once from byte 0, and the node comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_killed_mid_transfer_loses_no_phone_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let body: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(7) % 251) as u8)
        .collect();
    server.put("/app.bin", Resource::new(body.clone()));
    // About 8 s a phone, so the node dies while every phone is still fetching.
    server.set_rate("/app.bin", Some(256 << 10));
    let Some(mut fleet) = Fleet::start(Broker::Nats, "nats-a", AGENTS, &[]) else {
        return;
    };
    let ids = fleet.ids.clone();
    fleet.start_agents(&ids);
    for id in &ids {
        fleet
            .wait_log(id, || fleet.log(id), "fleet link connected", 1)
            .await;
    }
    // Agents spread over the nodes by their id's hash (`first_broker`), but one whose first
    // CONNECT timed out on a loaded machine moved on already: what counts is where each is
    // connected now, the last node its log says it connected to.
    let starts = (0..3).filter(|&n| ids.iter().any(|id| first_broker(id, 3) == n));
    assert_eq!(starts.count(), 3, "the ids spread over the three nodes");

    let (batch, children) = fleet.send_file(&ids, "app.bin", &server.url("/app.bin"));
    let deadline = Instant::now() + WAIT;
    while server.requests("/app.bin").len() < AGENTS {
        assert!(Instant::now() < deadline, "the phones never all fetched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node to kill: the one most agents are on now.
    let nodes: Vec<String> = {
        let nats = fleet.nats().unwrap();
        (0..3)
            .map(|n| nats.mqtt_url(n).trim_start_matches("mqtt://").to_string())
            .collect()
    };
    let addr = |node: usize| nodes[node].clone();
    let on = |node: usize| -> Vec<(String, usize)> {
        ids.iter()
            .filter(|id| connected_to(&fleet.log(id)) == Some(addr(node)))
            .map(|id| {
                (
                    id.clone(),
                    fleet.log(id).matches("fleet link connected").count(),
                )
            })
            .collect()
    };
    let victim_node = (0..3).max_by_key(|&n| on(n).len()).unwrap();
    let moved = on(victim_node);
    assert!(!moved.is_empty(), "no agent is on node {victim_node}");
    // kill -9 the node mid-transfer.
    fleet.nats().unwrap().kill(victim_node);
    for (id, connections) in &moved {
        wait_connected(&fleet, id, connections + 1).await;
    }

    let row = fleet.wait_batch_end(&batch).await;
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_eq!(row["SuccessChildCount"], AGENTS, "{row}");
    for child in fleet.children(&batch) {
        assert_eq!(child["TaskStatus"], "FINISHED", "{child}");
    }
    for id in &ids {
        assert_eq!(fleet.task(&children[id])["TaskStatus"], "FINISHED", "{id}");
    }
    let want = sha256_hex(&body);
    for id in &ids {
        let landed = std::fs::read(fleet.device(id).join("sdcard/Download/app.bin"))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(sha256_hex(&landed), want, "{id}");
    }
    assert_eq!(
        fetches(&server, "/app.bin"),
        (AGENTS, 0),
        "one fetch per phone, from byte 0"
    );
    // The agents that lost their node moved on to the next one in their list.
    for (id, _) in &moved {
        let log = fleet.log(id);
        assert!(log.contains("trying the next broker"), "{id}: {log}");
    }

    // The node restarts and rejoins the cluster (ready: JetStream current with the leader).
    let nats = fleet.nats().unwrap();
    nats.start_node(victim_node);
    assert!(
        nats.log(victim_node).contains("Server is ready"),
        "{}",
        nats.log(victim_node)
    );
}

/// An agent whose first broker is dead reaches the next one in its list (and would never
/// connect without failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_first_broker_is_dead_reaches_the_next() {
    let _serial = SERIAL.lock().await;
    let Some(mut fleet) = Fleet::start(Broker::Nats, "nats-f", 2, &[]) else {
        return;
    };
    let dead = format!("mqtt://127.0.0.1:{}", fleet::free_port());
    let live = fleet.nats().unwrap().mqtt_url(2);
    let ids = fleet.ids.clone();
    for id in &ids {
        // Dead where the agent starts, live after it.
        let mut urls = vec![live.clone(), live.clone()];
        urls[first_broker(id, 2)] = dead.clone();
        fleet.set_agent_brokers(id, &urls);
    }
    fleet.start_agents(&ids);
    let live_port = live.trim_start_matches("mqtt://");
    let dead_port = dead.trim_start_matches("mqtt://");
    for id in &ids {
        wait_connected(&fleet, id, 1).await;
        let log = fleet.log(id);
        let tried = log
            .find(&format!("broker={dead_port}"))
            .expect("tried the dead one");
        let connected = log.find("fleet link connected").unwrap();
        assert!(tried < connected, "{id}: {log}");
        assert!(
            log[connected..].contains(&format!("broker={live_port}")),
            "{id}: {log}"
        );
    }
}
