//! The controller's MQTT side (src/controller/delivery/) against real brokers on
//! 127.0.0.1: the embedded one (src/controller/broker.rs) and Debian's mosquitto with the
//! files `mosquitto_files` writes. Agents are plain rumqttc clients logging in as their
//! instance; the fleet logic is a recording `Inbox` (tests/fleet_support).

mod fleet_support;

use ferry::controller::broker::{BrokerOptions, BrokerTls};
use ferry::controller::delivery::Delivery;
use ferry::fleet::topics::{self, Kind};
use ferry::fleet::wire::{AgentInfo, Hello, Order, Presence};
use fleet_support::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Runs each scenario against both brokers, and on the embedded one with its in-process
/// ingest too: `SCENARIO: NAME_embedded, NAME_mosquitto, NAME_in_process;`.
macro_rules! on_both_brokers {
    ($($scenario:ident: $embedded:ident, $mosquitto:ident, $in_process:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $scenario(Fleet::embedded().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mosquitto() {
            if let Some(fleet) = Fleet::mosquitto().await {
                $scenario(fleet).await;
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $in_process() {
            $scenario(Fleet::embedded_in_process().await).await;
        }
    )*};
}

on_both_brokers! {
    orders_reach_their_agent_only_and_reports_reach_the_inbox: orders_and_reports_embedded, orders_and_reports_mosquitto, orders_and_reports_in_process;
    forged_messages_never_reach_the_inbox_or_another_agent: forged_embedded, forged_mosquitto, forged_in_process;
    a_hello_is_answered_with_the_orders_the_agent_misses: hello_embedded, hello_mosquitto, hello_in_process;
    a_message_the_inbox_fails_is_redelivered_and_handled_once: redelivery_embedded, redelivery_mosquitto, redelivery_in_process;
    delivery_reconnects_after_a_broker_restart: broker_restart_embedded, broker_restart_mosquitto, broker_restart_in_process;
    presence_arrives_and_the_last_will_says_offline_when_an_agent_dies: presence_embedded, presence_mosquitto, presence_in_process;
    reports_sent_while_the_controller_is_away_arrive_when_it_returns: controller_away_embedded, controller_away_mosquitto, controller_away_in_process;
    stopping_finishes_and_acks_the_reports_being_committed: drain_embedded, drain_mosquitto, drain_in_process;
}

async fn orders_reach_their_agent_only_and_reports_reach_the_inbox(fleet: Fleet) {
    let mut x = fleet.agent("acp-x").await;
    let mut y = fleet.agent("acp-y").await;
    fleet.outbox.send("acp-x", run_order("t-x1")).await.unwrap();
    let (topic, body) = x.next().await;
    assert_eq!(topic, "ferry/v1/i/acp-x/order");
    assert_eq!(
        serde_json::from_slice::<Order>(&body).unwrap(),
        run_order("t-x1")
    );
    y.assert_quiet().await;
    assert!(fleet.outbox.send("a/b", run_order("t-bad")).await.is_err());

    x.report("acp-x", "acp-x", "t-x1").await;
    fleet.wait_report("x's report", "t-x1").await;
    fleet.stop().await;
}

async fn forged_messages_never_reach_the_inbox_or_another_agent(fleet: Fleet) {
    let mut x = fleet.agent("acp-x").await;
    let mut y = fleet.agent("acp-y").await;
    // X's topic, Y's InstanceId: the broker lets it through, delivery drops it.
    x.report("acp-x", "acp-y", "t-forged-1").await;
    // Y's topic and InstanceId, published with X's credentials: the broker refuses it.
    x.report("acp-y", "acp-y", "t-forged-2").await;
    x.publish(
        &topics::topic("acp-y", Kind::Presence),
        Presence {
            online: false,
            connection: None,
        },
        true,
    )
    .await;
    // X may not read Y's orders, nor write orders.
    x.subscribe(&topics::topic("acp-y", Kind::Order)).await;
    x.subscribe("ferry/v1/i/+/order").await;
    x.publish(
        &topics::topic("acp-y", Kind::Order),
        run_order("t-forged-3"),
        false,
    )
    .await;
    fleet.outbox.send("acp-y", run_order("t-y1")).await.unwrap();
    let (topic, _) = y.next().await;
    assert_eq!(topic, "ferry/v1/i/acp-y/order");
    y.assert_quiet().await;
    x.assert_quiet().await;
    // A genuine report after the forged ones: once it is in, the forged ones had their turn.
    x.report("acp-x", "acp-x", "t-genuine").await;
    fleet.wait_report("the genuine report", "t-genuine").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = fleet.inbox.calls();
    for forged in ["t-forged-1", "t-forged-2"] {
        assert_eq!(reports_of(&calls, forged), 0, "{forged}: {calls:#?}");
    }
    assert!(
        !calls.contains(&Call::Presence("acp-y".into(), false)),
        "{calls:#?}"
    );

    // Wrong password, unknown instance, another agent's client id: refused at connect.
    let url = fleet.url();
    for (id, user, password) in [
        ("acp-x", "acp-x", "wrong"),
        ("acp-z", "acp-z", "anything"),
        ("acp-x", "acp-y", fleet.secrets["acp-y"].as_str()),
    ] {
        if let Ok(agent) = Agent::try_connect(&url, id, user, password, false).await {
            // mosquitto binds the client id to the user name instead of refusing: the
            // session is then Y's own, still confined to Y's topics.
            assert!(
                matches!(fleet.server, Server::Mosquitto(_)) && user == "acp-y",
                "{id} as {user} with a bad password connected"
            );
            agent.kill();
        }
    }
    fleet.stop().await;
}

async fn a_hello_is_answered_with_the_orders_the_agent_misses(fleet: Fleet) {
    let mut x = fleet.agent("acp-x").await;
    *fleet.inbox.answer.lock().unwrap() = vec![
        run_order("t-missed"),
        Order::Cancel {
            task_id: "t-owed".into(),
        },
    ];
    let hello = Hello {
        instance_id: "acp-x".into(),
        agent: AgentInfo {
            version: "0.1.0".into(),
            abi: "x86_64".into(),
            ..AgentInfo::default()
        },
        held: vec![],
    };
    x.publish(&topics::topic("acp-x", Kind::Hello), &hello, false)
        .await;
    let first: Order = serde_json::from_slice(&x.next().await.1).unwrap();
    let second: Order = serde_json::from_slice(&x.next().await.1).unwrap();
    assert_eq!(first, run_order("t-missed"));
    assert_eq!(second.task_id(), "t-owed");
    assert_eq!(fleet.inbox.calls(), vec![Call::Hello(hello)]);
    // A hello claiming another instance is dropped, unanswered.
    let forged = Hello {
        instance_id: "acp-y".into(),
        agent: AgentInfo::default(),
        held: vec![],
    };
    x.publish(&topics::topic("acp-x", Kind::Hello), &forged, false)
        .await;
    x.assert_quiet().await;
    assert_eq!(fleet.inbox.calls().len(), 1);
    fleet.stop().await;
}

async fn a_message_the_inbox_fails_is_redelivered_and_handled_once(fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    fleet.inbox.fail_reports.store(2, Ordering::SeqCst);
    x.report("acp-x", "acp-x", "t-retry").await;
    x.report("acp-x", "acp-x", "t-after").await;
    fleet
        .inbox
        .wait_for("the failed report, redelivered", |c| {
            reports_of(c, "t-retry") == 1 && reports_of(c, "t-after") == 1
        })
        .await;
    assert_eq!(fleet.inbox.failed.load(Ordering::SeqCst), 2);
    // In order: what came after the failed message was left for the redelivery too.
    let order: Vec<String> = fleet
        .inbox
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Report(r) => Some(r.task.task_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["t-retry", "t-after"]);
    fleet.stop().await;
}

async fn delivery_reconnects_after_a_broker_restart(mut fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    x.kill();
    fleet.restart_broker().await;
    let delivery = fleet.delivery.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    // The restart is seen (the link drops) and then the link comes back.
    while delivery.is_connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivery.wait_connected(WAIT).await, "delivery reconnects");
    let mut x = fleet.agent("acp-x").await;
    // Resubscribed (the embedded broker without storage lost the session): reports arrive.
    x.report("acp-x", "acp-x", "t-after-restart").await;
    fleet
        .wait_report("a report after the restart", "t-after-restart")
        .await;
    fleet.outbox.send("acp-x", run_order("t-o2")).await.unwrap();
    assert_eq!(x.next().await.0, "ferry/v1/i/acp-x/order");
    fleet.stop().await;
}

async fn presence_arrives_and_the_last_will_says_offline_when_an_agent_dies(fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    x.publish(
        &topics::topic("acp-x", Kind::Presence),
        Presence {
            online: true,
            connection: None,
        },
        true,
    )
    .await;
    let online = Call::Presence("acp-x".into(), true);
    let offline = Call::Presence("acp-x".into(), false);
    fleet
        .inbox
        .wait_for("online", |c| c.contains(&online))
        .await;
    x.kill();
    fleet
        .inbox
        .wait_for("the last will", |c| c.last() == Some(&offline))
        .await;
    fleet.stop().await;
}

/// Reports sent while the controller is away wait in its persistent session.
async fn reports_sent_while_the_controller_is_away_arrive_when_it_returns(mut fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    fleet.delivery.take().unwrap().stop().await;
    x.report("acp-x", "acp-x", "t-while-away").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.inbox = Arc::new(Recorder::default());
    fleet.start_delivery().await;
    fleet
        .wait_report("the report sent while away", "t-while-away")
        .await;
    fleet.stop().await;
}

/// A report the inbox is committing when delivery is told to stop is finished and
/// acknowledged before the clean disconnect: the next run on the same persistent session
/// does not get it again.
async fn stopping_finishes_and_acks_the_reports_being_committed(mut fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    fleet.inbox.hold_reports.store(true, Ordering::SeqCst);
    x.report("acp-x", "acp-x", "t-held").await;
    tokio::time::timeout(WAIT, fleet.inbox.held.notified())
        .await
        .expect("the report reaches the inbox");
    let delivery = fleet.delivery.take().unwrap();
    let mut connected = delivery.connected();
    let stopping = tokio::spawn(delivery.stop());
    // Draining has begun (the link reports itself down) while the commit is still open.
    tokio::time::timeout(WAIT, connected.wait_for(|up| !*up))
        .await
        .expect("the drain begins")
        .unwrap();
    fleet.inbox.release.notify_one();
    stopping.await.unwrap();
    assert_eq!(reports_of(&fleet.inbox.calls(), "t-held"), 1);
    // Redeliveries come first and in order: had t-held not been acked, it would arrive
    // again before t-next.
    fleet.start_delivery().await;
    x.report("acp-x", "acp-x", "t-next").await;
    fleet.wait_report("the next report", "t-next").await;
    assert_eq!(reports_of(&fleet.inbox.calls(), "t-held"), 1);
    fleet.stop().await;
}

/// In-process ingest keeps the MQTT path's promise to the agent: a final report is
/// acknowledged (PUBACK) only once committed, so an agent that loses its connection before
/// then sends it again. (Through MQTT the broker acks on receipt and the controller's session
/// holds it.) A progress report (RUNNING) is acked at once and committed in order behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_report_is_acknowledged_to_its_agent_only_once_committed() {
    let fleet = Fleet::embedded_in_process().await;
    let x = fleet.agent("acp-x").await;
    let wait_pubacks = |n: usize| {
        let pubacks = x.pubacks.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while pubacks.load(Ordering::SeqCst) < n {
                assert!(tokio::time::Instant::now() < deadline, "no PUBACK {n}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    fleet.inbox.hold_reports.store(true, Ordering::SeqCst);
    x.report("acp-x", "acp-x", "t-held").await;
    tokio::time::timeout(WAIT, fleet.inbox.held.notified())
        .await
        .expect("the report reaches the inbox");
    assert_eq!(
        x.pubacks.load(Ordering::SeqCst),
        0,
        "acked before its commit"
    );
    fleet.inbox.release.notify_one();
    wait_pubacks(1).await;
    assert_eq!(reports_of(&fleet.inbox.calls(), "t-held"), 1);
    // A progress report is acked while its commit is still held.
    fleet.inbox.hold_reports.store(true, Ordering::SeqCst);
    x.report_phase("acp-x", "acp-x", "t-progress", "RUNNING")
        .await;
    tokio::time::timeout(WAIT, fleet.inbox.held.notified())
        .await
        .expect("the progress report reaches the inbox");
    wait_pubacks(2).await;
    fleet.inbox.release.notify_one();
    fleet.wait_report("the progress report", "t-progress").await;
    fleet.stop().await;
}

/// In-process presence keeps no retained message (mqtt5 matches every SUBSCRIBE against
/// every retained one), and clears the will an agent's earlier connection left retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_presence_is_recorded_and_clears_what_is_retained() {
    let fleet = Fleet::embedded_in_process().await;
    let url = fleet.url();
    let (user, password) = controller_user();
    let retained = |probe: &'static str| {
        let (url, user, password) = (url.clone(), user.clone(), password.clone());
        async move {
            let probe = Agent::connect(&url, probe, &user, &password, false).await;
            probe.subscribe("ferry/v1/i/+/presence").await;
            probe
        }
    };
    let online = Presence {
        online: true,
        connection: Some(1),
    };
    let x = fleet.agent("acp-x").await;
    x.publish(&topics::topic("acp-x", Kind::Presence), online, true)
        .await;
    let seen = Call::Presence("acp-x".into(), true);
    fleet.inbox.wait_for("online", |c| c.contains(&seen)).await;
    retained("probe-1").await.assert_quiet().await;
    // A will is the broker's own publish: retained, and through MQTT to the controller.
    x.kill();
    let offline = Call::Presence("acp-x".into(), false);
    fleet
        .inbox
        .wait_for("the last will", |c| c.last() == Some(&offline))
        .await;
    let mut probe = retained("probe-2").await;
    let (topic, body) = probe.next().await;
    assert_eq!(topic, "ferry/v1/i/acp-x/presence");
    assert!(!serde_json::from_slice::<Presence>(&body).unwrap().online);
    // Back online: the will is cleared, not replaced.
    let back = fleet.agent("acp-x").await;
    let again = Presence {
        online: true,
        connection: Some(2),
    };
    back.publish(&topics::topic("acp-x", Kind::Presence), again, true)
        .await;
    fleet
        .inbox
        .wait_for("online again", |c| c.last() == Some(&seen))
        .await;
    retained("probe-3").await.assert_quiet().await;
    fleet.stop().await;
}

/// An order for an agent that is offline waits in its persistent session, across a broker
/// restart: the agent gets it when it comes back.
async fn orders_for_an_offline_agent_wait_across_a_broker_restart(mut fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    x.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet
        .outbox
        .send("acp-x", run_order("t-queued"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.restart_broker().await;
    let url = fleet.url();
    let secret = fleet.secrets["acp-x"].clone();
    let mut back = Agent::connect(&url, "acp-x", "acp-x", &secret, false).await;
    let (topic, body) = back.next().await;
    assert_eq!(topic, "ferry/v1/i/acp-x/order");
    assert_eq!(
        serde_json::from_slice::<Order>(&body).unwrap(),
        run_order("t-queued")
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_orders_survive_a_restart_embedded_with_storage() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        storage_dir: Some(dir.path().join("broker")),
        ..BrokerOptions::plain("127.0.0.1:0".parse().unwrap())
    };
    let fleet = Fleet::embedded_with(options, |_, _| {}).await;
    orders_for_an_offline_agent_wait_across_a_broker_restart(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_orders_survive_a_restart_mosquitto() {
    if let Some(fleet) = Fleet::mosquitto().await {
        orders_for_an_offline_agent_wait_across_a_broker_restart(fleet).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reaches_the_embedded_broker_over_tls_trusting_only_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca::files(dir.path(), &["127.0.0.1"]);
    let options = BrokerOptions {
        tls: Some(BrokerTls {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_file: cert,
            key_file: key,
        }),
        ..BrokerOptions::plain("127.0.0.1:0".parse().unwrap())
    };
    let fleet = Fleet::embedded_with(options, |delivery, broker| {
        let tls = broker.tls.as_ref().unwrap().listen;
        delivery.broker = format!("mqtts://{tls}");
        delivery.ca_file = Some(ca.clone());
    })
    .await;
    let mut x = fleet.agent("acp-x").await;
    fleet
        .outbox
        .send("acp-x", run_order("t-tls"))
        .await
        .unwrap();
    assert_eq!(x.next().await.0, "ferry/v1/i/acp-x/order");
    x.report("acp-x", "acp-x", "t-tls").await;
    fleet
        .wait_report("a report through the TLS link", "t-tls")
        .await;

    // The same broker is not trusted with the web roots only.
    let mut untrusting = fleet.delivery_options.clone();
    untrusting.ca_file = None;
    untrusting.client_id = "ferry-controller-2".into();
    let other = Delivery::new(untrusting)
        .unwrap()
        .run(Arc::new(Recorder::default()));
    assert!(!other.wait_connected(Duration::from_secs(2)).await);
    other.stop().await;
    fleet.stop().await;
}
