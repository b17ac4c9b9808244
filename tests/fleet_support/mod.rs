//! The fleet's test bench for the controller's MQTT side: a broker (embedded or mosquitto)
//! with agents `acp-x` and `acp-y` known, the controller's delivery on it feeding a recording
//! [`Inbox`], and rumqttc clients playing agents.

#![allow(dead_code)]

/// Debian's mosquitto, the same helper as the agent's and the whole fleet's tests.
#[path = "../common/mosquitto.rs"]
pub mod mosquitto;
#[path = "../common/skip.rs"]
mod skip;
#[path = "../common/test_ca.rs"]
pub mod test_ca;

use ferry::controller::broker::{self, BrokerHandle, BrokerOptions};
use ferry::controller::delivery::{Delivery, DeliveryHandle, DeliveryOptions, LocalIngest};
use ferry::controller::mosquitto::mosquitto_files;
use ferry::controller::ports::{BoxFuture, Credentials, Inbox, Outbox};
use ferry::controller::secrets;
use ferry::error::{Code, Error, Result};
use ferry::fleet::topics::{self, Kind};
use ferry::fleet::wire::{Hello, Order, Presence, Report};
use ferry::task::record::TaskView;
use mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const CONTROLLER: (&str, &str) = ("ferry-controller", "controller-secret");
pub const WAIT: Duration = Duration::from_secs(15);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(1500);

/// Agent passwords as the store keeps them: `$7$` hashes only.
pub struct Store(HashMap<String, String>);

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
    /// This stand-in keeps no bcrypt hashes (the mosquitto and embedded brokers need none).
    fn agent_bcrypt_hashes(&self) -> BoxFuture<'_, Result<ferry::controller::ports::BcryptHashes>> {
        let all = self.0.keys().map(|k| (k.clone(), None)).collect();
        Box::pin(async move { Ok(all) })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Report(Box<Report>),
    Hello(Hello),
    Presence(String, bool),
}

/// The fleet logic's stand-in: records every call; can fail the next reports (as a store
/// that cannot write) and answer hellos with given orders.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    pub fail_reports: AtomicUsize,
    pub failed: AtomicUsize,
    pub answer: Mutex<Vec<Order>>,
    /// When set, the next report waits in the inbox (a commit in progress): `held` is
    /// notified, and it goes on once `release` is.
    pub hold_reports: std::sync::atomic::AtomicBool,
    pub held: tokio::sync::Notify,
    pub release: tokio::sync::Notify,
}

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Call]) -> bool) {
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
            if self.hold_reports.swap(false, Ordering::SeqCst) {
                self.held.notify_one();
                self.release.notified().await;
            }
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

pub enum Server {
    /// The embedded broker: its handle while running, the options to start it again (their
    /// listeners on the ports it got), the store it checks agents against.
    Embedded(Option<BrokerHandle>, BrokerOptions, Arc<Store>),
    Mosquitto(Mosquitto),
}

/// A broker with agents `acp-x` and `acp-y` known, and the controller's delivery on it.
pub struct Fleet {
    pub server: Server,
    pub secrets: HashMap<String, String>,
    pub inbox: Arc<Recorder>,
    pub outbox: Arc<dyn Outbox>,
    pub delivery: Option<DeliveryHandle>,
    /// What [`Fleet::start_delivery`] connects with.
    pub delivery_options: DeliveryOptions,
}

pub fn agents() -> (HashMap<String, String>, Arc<Store>) {
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

pub fn controller_user() -> (String, String) {
    (CONTROLLER.0.to_string(), CONTROLLER.1.to_string())
}

/// The embedded broker started with `options`, which then name the ports it got.
async fn start_embedded(
    mut options: BrokerOptions,
    store: Arc<Store>,
) -> (BrokerHandle, BrokerOptions) {
    let handle = broker::start(options.clone(), store, controller_user())
        .await
        .expect("starting the embedded broker");
    options.listen = handle.local_addr();
    if let (Some(tls), Some(addr)) = (options.tls.as_mut(), handle.tls_addr()) {
        tls.listen = addr;
    }
    (handle, options)
}

impl Fleet {
    pub async fn embedded() -> Fleet {
        Self::embedded_with(
            BrokerOptions::plain("127.0.0.1:0".parse().unwrap()),
            |_, _| {},
        )
        .await
    }

    /// The embedded broker with `options`; `delivery` adjusts how the controller connects
    /// (given the plain URL; the options name the real ports).
    pub async fn embedded_with(
        options: BrokerOptions,
        delivery: impl FnOnce(&mut DeliveryOptions, &BrokerOptions),
    ) -> Fleet {
        let (secrets, store) = agents();
        let (handle, options) = start_embedded(options, store.clone()).await;
        let mut template = Self::template(&format!("mqtt://{}", options.listen));
        delivery(&mut template, &options);
        Self::with(
            Server::Embedded(Some(handle), options, store),
            secrets,
            template,
        )
        .await
    }

    /// The embedded broker handing agents' reports and hellos to delivery in-process, as
    /// `ferry-controller serve` runs it.
    pub async fn embedded_in_process() -> Fleet {
        let ingest = LocalIngest::new();
        let mut options = BrokerOptions::plain("127.0.0.1:0".parse().unwrap());
        options.ingest = Some(ingest.clone());
        Self::embedded_with(options, |delivery, _| delivery.local = Some(ingest)).await
    }

    pub async fn mosquitto() -> Option<Fleet> {
        let (secrets, store) = agents();
        let (passwd, acl) = mosquitto_files(&*store, CONTROLLER.0, CONTROLLER.1)
            .await
            .expect("mosquitto files");
        let started = Mosquitto::start_in(|dir| {
            std::fs::write(dir.join("passwd"), &passwd).unwrap();
            std::fs::write(dir.join("acl"), &acl).unwrap();
            mosquitto::Options {
                password_file: Some(dir.join("passwd")),
                acl_file: Some(dir.join("acl")),
                tls: None,
                extra: "use_username_as_clientid true".into(),
            }
        });
        let Some(m) = started else {
            skip::skip("mosquitto is not installed (Debian package mosquitto)");
            return None;
        };
        let template = Self::template(&m.url());
        Some(Self::with(Server::Mosquitto(m), secrets, template).await)
    }

    fn template(url: &str) -> DeliveryOptions {
        let mut options = DeliveryOptions::new(url, CONTROLLER.0, CONTROLLER.1);
        options.retry_delay = Duration::from_millis(200);
        options
    }

    async fn with(
        server: Server,
        secrets: HashMap<String, String>,
        delivery_options: DeliveryOptions,
    ) -> Fleet {
        let outbox = Delivery::new(delivery_options.clone()).unwrap().outbox();
        let mut fleet = Fleet {
            server,
            secrets,
            inbox: Arc::new(Recorder::default()),
            outbox,
            delivery: None,
            delivery_options,
        };
        fleet.start_delivery().await;
        fleet
    }

    /// A new delivery (same client id, so the same persistent session) on `self.inbox`.
    pub async fn start_delivery(&mut self) {
        let delivery = Delivery::new(self.delivery_options.clone()).unwrap();
        self.outbox = delivery.outbox();
        let delivery = delivery.run(self.inbox.clone());
        assert!(
            delivery.wait_connected(WAIT).await,
            "delivery connects to the broker"
        );
        self.delivery = Some(delivery);
    }

    /// Waits until the inbox holds exactly one report of `task_id`.
    pub async fn wait_report(&self, what: &str, task_id: &str) {
        self.inbox
            .wait_for(what, |c| reports_of(c, task_id) == 1)
            .await;
    }

    /// The plain listener, where agents connect.
    pub fn url(&self) -> String {
        match &self.server {
            Server::Embedded(_, options, _) => format!("mqtt://{}", options.listen),
            Server::Mosquitto(m) => m.url(),
        }
    }

    pub async fn agent(&self, id: &str) -> Agent {
        Agent::connect(&self.url(), id, id, &self.secrets[id], true).await
    }

    /// Stops the broker and starts it again on the same ports (and storage, if any).
    pub async fn restart_broker(&mut self) {
        match &mut self.server {
            Server::Embedded(handle, options, store) => {
                handle.take().unwrap().stop().await;
                let (again, _) = start_embedded(options.clone(), store.clone()).await;
                *handle = Some(again);
            }
            Server::Mosquitto(m) => m.restart(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(delivery) = self.delivery.take() {
            delivery.stop().await;
        }
        if let Server::Embedded(Some(handle), _, _) = self.server {
            handle.stop().await;
        }
    }
}

/// A rumqttc client playing an agent: what arrives on its subscriptions, its SUBACK codes.
pub struct Agent {
    pub id: String,
    pub client: AsyncClient,
    pub received: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    pub subacks: Arc<Mutex<Vec<rumqttc::SubscribeReasonCode>>>,
    /// PUBACKs the broker sent for this agent's QoS 1 publishes.
    pub pubacks: Arc<std::sync::atomic::AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Connects (waiting for the CONNACK), sets the last will on its presence topic and
    /// subscribes to `subscribe_own` its order topic.
    pub async fn connect(
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

    pub async fn try_connect(
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
        let pubacks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pubacked = pubacks.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        acks.lock().unwrap().extend(s.return_codes);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        pubacked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
            pubacks,
            task,
        };
        if subscribe_own {
            agent.subscribe(&topics::topic(id, Kind::Order)).await;
        }
        Ok(agent)
    }

    pub async fn subscribe(&self, filter: &str) {
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

    pub async fn publish(&self, topic: &str, body: impl serde::Serialize, retain: bool) {
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

    /// A task's final report (SUCCESS): one that must reach the controller.
    pub async fn report(&self, topic_instance: &str, claimed: &str, task_id: &str) {
        self.report_phase(topic_instance, claimed, task_id, "SUCCESS")
            .await;
    }

    pub async fn report_phase(
        &self,
        topic_instance: &str,
        claimed: &str,
        task_id: &str,
        phase: &str,
    ) {
        let report = Report {
            instance_id: claimed.to_string(),
            task: task_view(task_id, phase),
        };
        self.publish(&topics::topic(topic_instance, Kind::Report), report, false)
            .await;
    }

    pub async fn next(&mut self) -> (String, Vec<u8>) {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("{} received nothing", self.id))
            .unwrap()
    }

    pub async fn assert_quiet(&mut self) {
        if let Ok(Some((topic, body))) = tokio::time::timeout(QUIET, self.received.recv()).await {
            panic!(
                "{} received {topic}: {}",
                self.id,
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// Gone without a DISCONNECT, like a killed process: the broker sends the will.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// A task's view in `phase` (`SUCCESS` or `RUNNING`).
pub fn task_view(task_id: &str, phase: &str) -> TaskView {
    let status = if phase == "SUCCESS" {
        "Finished"
    } else {
        "Processing"
    };
    serde_json::from_value(serde_json::json!({
        "TaskId": task_id,
        "ClientToken": null,
        "TaskStatus": status,
        "Phase": phase,
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

pub fn run_order(task_id: &str) -> Order {
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

pub fn reports_of(calls: &[Call], task_id: &str) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Report(r) if r.task.task_id == task_id))
        .count()
}
