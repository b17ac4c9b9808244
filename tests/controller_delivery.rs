//! The controller's MQTT side (src/controller/delivery.rs) against real brokers on
//! 127.0.0.1: the embedded one (src/controller/broker.rs) and Debian's mosquitto with the
//! files `mosquitto_files` writes. Agents are plain rumqttc clients logging in as their
//! instance; the fleet logic is a recording [`Inbox`].

mod common;
#[path = "common/skip.rs"]
mod skip;

use common::mosquitto::Mosquitto;
use ferry::controller::broker::{self, BrokerHandle, BrokerOptions};
use ferry::controller::delivery::{Delivery, DeliveryHandle, DeliveryOptions};
use ferry::controller::mosquitto::mosquitto_files;
use ferry::controller::ports::{BoxFuture, Credentials, Inbox, Outbox};
use ferry::controller::secrets;
use ferry::error::{Code, Error, Result};
use ferry::fleet::topics::{self, Kind};
use ferry::fleet::wire::{AgentInfo, Hello, Order, Presence, Report};
use ferry::task::record::TaskView;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const CONTROLLER: (&str, &str) = ("ferry-controller", "controller-secret");
const WAIT: Duration = Duration::from_secs(15);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(1500);

/// Agent passwords as the store keeps them: `$7$` hashes only.
struct Store(HashMap<String, String>);

impl Credentials for Store {
    fn access_key_secret(&self, _: &str) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async { Ok(None) })
    }
    fn agent_password_hash(&self, id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        let hash = self.0.get(id).cloned();
        Box::pin(async move { Ok(hash) })
    }
    fn agent_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        let all = self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Box::pin(async move { Ok(all) })
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Call {
    Report(Box<Report>),
    Hello(Hello),
    Presence(String, bool),
}

/// The fleet logic's stand-in: records every call; can fail the next reports (as a store
/// that cannot write) and answer hellos with given orders.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    fail_reports: AtomicUsize,
    failed: AtomicUsize,
    answer: Mutex<Vec<Order>>,
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Call]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(&self.calls()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; calls: {:#?}",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Inbox for Recorder {
    fn report(&self, report: Report) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self
                .fail_reports
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(Error::new(Code::StorageIo, "the store cannot write (test)"));
            }
            self.calls
                .lock()
                .unwrap()
                .push(Call::Report(Box::new(report)));
            Ok(())
        })
    }
    fn hello(&self, hello: Hello) -> BoxFuture<'_, Result<Vec<Order>>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Call::Hello(hello));
            Ok(self.answer.lock().unwrap().clone())
        })
    }
    fn presence(&self, id: &str, presence: Presence) -> BoxFuture<'_, Result<()>> {
        let call = Call::Presence(id.to_string(), presence.online);
        Box::pin(async move {
            self.calls.lock().unwrap().push(call);
            Ok(())
        })
    }
}

enum Server {
    Embedded(Option<BrokerHandle>, SocketAddr, Arc<Store>),
    Mosquitto(Mosquitto),
}

/// A broker with agents `acp-x` and `acp-y` known, and the controller's delivery on it.
struct Fleet {
    server: Server,
    secrets: HashMap<String, String>,
    inbox: Arc<Recorder>,
    outbox: Arc<dyn Outbox>,
    delivery: Option<DeliveryHandle>,
}

fn agents() -> (HashMap<String, String>, Arc<Store>) {
    let secrets: HashMap<String, String> = ["acp-x", "acp-y"]
        .into_iter()
        .map(|id| (id.to_string(), secrets::new_secret()))
        .collect();
    let store = Store(
        secrets
            .iter()
            .map(|(id, s)| (id.clone(), secrets::hash(s)))
            .collect(),
    );
    (secrets, Arc::new(store))
}

fn controller_user() -> (String, String) {
    (CONTROLLER.0.to_string(), CONTROLLER.1.to_string())
}

impl Fleet {
    async fn embedded() -> Fleet {
        let (secrets, store) = agents();
        let handle = broker::start(
            BrokerOptions::plain("127.0.0.1:0".parse().unwrap()),
            store.clone(),
            controller_user(),
        )
        .await
        .expect("starting the embedded broker");
        let addr = handle.local_addr();
        Self::with(Server::Embedded(Some(handle), addr, store), secrets).await
    }

    async fn mosquitto() -> Option<Fleet> {
        let (secrets, store) = agents();
        let (passwd, acl) = mosquitto_files(&*store, CONTROLLER.0, CONTROLLER.1)
            .await
            .expect("mosquitto files");
        let started = Mosquitto::start_with(|dir| {
            std::fs::write(dir.join("passwd"), &passwd).unwrap();
            std::fs::write(dir.join("acl"), &acl).unwrap();
            format!(
                "allow_anonymous false\npassword_file {0}/passwd\nacl_file {0}/acl\nuse_username_as_clientid true\n",
                dir.display()
            )
        });
        match started {
            Ok(m) => Some(Self::with(Server::Mosquitto(m), secrets).await),
            Err(reason) => {
                skip::skip(&reason);
                None
            }
        }
    }

    async fn with(server: Server, secrets: HashMap<String, String>) -> Fleet {
        let url = match &server {
            Server::Embedded(_, addr, _) => format!("mqtt://{addr}"),
            Server::Mosquitto(m) => m.url(),
        };
        let mut options = DeliveryOptions::new(&url, CONTROLLER.0, CONTROLLER.1);
        options.retry_delay = Duration::from_millis(200);
        let outbox = Delivery::new(options).unwrap().outbox();
        let mut fleet = Fleet {
            server,
            secrets,
            inbox: Arc::new(Recorder::default()),
            outbox,
            delivery: None,
        };
        fleet.start_delivery().await;
        fleet
    }

    /// A new delivery (same client id, so the same persistent session) on `self.inbox`.
    async fn start_delivery(&mut self) {
        let mut options = DeliveryOptions::new(&self.url(), CONTROLLER.0, CONTROLLER.1);
        options.retry_delay = Duration::from_millis(200);
        let delivery = Delivery::new(options).unwrap();
        self.outbox = delivery.outbox();
        let delivery = delivery.run(self.inbox.clone());
        assert!(
            delivery.wait_connected(WAIT).await,
            "delivery connects to the broker"
        );
        self.delivery = Some(delivery);
    }

    fn url(&self) -> String {
        match &self.server {
            Server::Embedded(_, addr, _) => format!("mqtt://{addr}"),
            Server::Mosquitto(m) => m.url(),
        }
    }

    async fn agent(&self, id: &str) -> Agent {
        Agent::connect(&self.url(), id, id, &self.secrets[id], true).await
    }

    async fn restart_broker(&mut self) {
        match &mut self.server {
            Server::Embedded(handle, addr, store) => {
                handle.take().unwrap().stop().await;
                let again = broker::start(
                    BrokerOptions::plain(*addr),
                    store.clone(),
                    controller_user(),
                )
                .await
                .expect("restarting the embedded broker on its port");
                *handle = Some(again);
            }
            Server::Mosquitto(m) => m.restart(),
        }
    }

    async fn stop(mut self) {
        self.delivery.take().unwrap().stop().await;
        if let Server::Embedded(Some(handle), _, _) = self.server {
            handle.stop().await;
        }
    }
}

/// A rumqttc client playing an agent: what arrives on its subscriptions, its SUBACK codes.
struct Agent {
    id: String,
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subacks: Arc<Mutex<Vec<rumqttc::SubscribeReasonCode>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Connects (waiting for the CONNACK), sets the last will on its presence topic and
    /// subscribes to `subscribe_own` its order topic.
    async fn connect(
        url: &str,
        id: &str,
        user: &str,
        password: &str,
        subscribe_own: bool,
    ) -> Agent {
        Self::try_connect(url, id, user, password, subscribe_own)
            .await
            .unwrap_or_else(|e| panic!("agent {id} connects: {e}"))
    }

    async fn try_connect(
        url: &str,
        id: &str,
        user: &str,
        password: &str,
        subscribe_own: bool,
    ) -> std::result::Result<Agent, String> {
        let addr: SocketAddr = url.trim_start_matches("mqtt://").parse().unwrap();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options
            .set_credentials(user, password)
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_last_will(LastWill::new(
                topics::topic(id, Kind::Presence),
                r#"{"Online":false}"#,
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            other => return Err(format!("{other:?}")),
        }
        let (tx, received) = mpsc::unbounded_channel();
        let subacks = Arc::new(Mutex::new(Vec::new()));
        let acks = subacks.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        acks.lock().unwrap().extend(s.return_codes);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let agent = Agent {
            id: id.to_string(),
            client,
            received,
            subacks,
            task,
        };
        if subscribe_own {
            agent.subscribe(&topics::topic(id, Kind::Order)).await;
        }
        Ok(agent)
    }

    async fn subscribe(&self, filter: &str) {
        let before = self.subacks.lock().unwrap().len();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.subacks.lock().unwrap().len() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no SUBACK for {filter}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn publish(&self, topic: &str, body: impl serde::Serialize, retain: bool) {
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                retain,
                serde_json::to_vec(&body).unwrap(),
            )
            .await
            .unwrap();
    }

    async fn report(&self, topic_instance: &str, claimed: &str, task_id: &str) {
        let report = Report {
            instance_id: claimed.to_string(),
            task: task_view(task_id),
        };
        self.publish(&topics::topic(topic_instance, Kind::Report), report, false)
            .await;
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("{} received nothing", self.id))
            .unwrap()
    }

    async fn assert_quiet(&mut self) {
        if let Ok(Some((topic, body))) = tokio::time::timeout(QUIET, self.received.recv()).await {
            panic!(
                "{} received {topic}: {}",
                self.id,
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// Gone without a DISCONNECT, like a killed process: the broker sends the will.
    fn kill(self) {
        self.task.abort();
    }
}

fn task_view(task_id: &str) -> TaskView {
    serde_json::from_value(serde_json::json!({
        "TaskId": task_id,
        "ClientToken": null,
        "TaskStatus": "Processing",
        "Phase": "RUNNING",
        "Progress": 0,
        "BytesDone": 0,
        "BytesTotal": null,
        "ErrorCode": null,
        "ErrorMsg": null,
        "Result": null,
        "Notes": [],
        "Payload": {
            "TaskId": task_id,
            "SourceFilePath": "/sdcard/Download/a.bin",
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": "https://files.example/a.bin",
        },
        "CreationTime": "2026-12-02T00:00:00Z",
        "StartTime": null,
        "FinishTime": null,
    }))
    .expect("a TaskView")
}

fn run_order(task_id: &str) -> Order {
    serde_json::from_value(serde_json::json!({
        "Kind": "Run",
        "TaskId": task_id,
        "Payload": {
            "TaskId": task_id,
            "SourceFilePath": "/sdcard/Download/a.bin",
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": "https://files.example/a.bin",
        },
    }))
    .unwrap()
}

fn reports_of(calls: &[Call], task_id: &str) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Report(r) if r.task.task_id == task_id))
        .count()
}

/// Runs one scenario against both brokers: `NAME_embedded` and `NAME_mosquitto`.
macro_rules! on_both_brokers {
    ($name:ident, $embedded:ident, $mosquitto:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $name(Fleet::embedded().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mosquitto() {
            if let Some(fleet) = Fleet::mosquitto().await {
                $name(fleet).await;
            }
        }
    };
}

on_both_brokers!(
    orders_reach_their_agent_only_and_reports_reach_the_inbox,
    orders_and_reports_embedded,
    orders_and_reports_mosquitto
);
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
    fleet
        .inbox
        .wait_for("x's report", |c| reports_of(c, "t-x1") == 1)
        .await;
    fleet.stop().await;
}

on_both_brokers!(
    forged_messages_never_reach_the_inbox_or_another_agent,
    forged_embedded,
    forged_mosquitto
);
async fn forged_messages_never_reach_the_inbox_or_another_agent(fleet: Fleet) {
    let mut x = fleet.agent("acp-x").await;
    let mut y = fleet.agent("acp-y").await;
    // X's topic, Y's InstanceId: the broker lets it through, delivery drops it.
    x.report("acp-x", "acp-y", "t-forged-1").await;
    // Y's topic and InstanceId, published with X's credentials: the broker refuses it.
    x.report("acp-y", "acp-y", "t-forged-2").await;
    x.publish(
        &topics::topic("acp-y", Kind::Presence),
        Presence { online: false },
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
    fleet
        .inbox
        .wait_for("the genuine report", |c| reports_of(c, "t-genuine") == 1)
        .await;
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

on_both_brokers!(
    a_hello_is_answered_with_the_orders_the_agent_misses,
    hello_embedded,
    hello_mosquitto
);
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

on_both_brokers!(
    a_message_the_inbox_fails_is_redelivered_and_handled_once,
    redelivery_embedded,
    redelivery_mosquitto
);
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

on_both_brokers!(
    delivery_reconnects_after_a_broker_restart,
    broker_restart_embedded,
    broker_restart_mosquitto
);
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
        .inbox
        .wait_for("a report after the restart", |c| {
            reports_of(c, "t-after-restart") == 1
        })
        .await;
    fleet.outbox.send("acp-x", run_order("t-o2")).await.unwrap();
    assert_eq!(x.next().await.0, "ferry/v1/i/acp-x/order");
    fleet.stop().await;
}

on_both_brokers!(
    presence_arrives_and_the_last_will_says_offline_when_an_agent_dies,
    presence_embedded,
    presence_mosquitto
);
async fn presence_arrives_and_the_last_will_says_offline_when_an_agent_dies(fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    x.publish(
        &topics::topic("acp-x", Kind::Presence),
        Presence { online: true },
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

on_both_brokers!(
    reports_sent_while_the_controller_is_away_arrive_when_it_returns,
    controller_away_embedded,
    controller_away_mosquitto
);
/// Reports sent while the controller is away wait in its persistent session.
async fn reports_sent_while_the_controller_is_away_arrive_when_it_returns(mut fleet: Fleet) {
    let x = fleet.agent("acp-x").await;
    fleet.delivery.take().unwrap().stop().await;
    x.report("acp-x", "acp-x", "t-while-away").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.inbox = Arc::new(Recorder::default());
    fleet.start_delivery().await;
    fleet
        .inbox
        .wait_for("the report sent while away", |c| {
            reports_of(c, "t-while-away") == 1
        })
        .await;
    fleet.stop().await;
}
