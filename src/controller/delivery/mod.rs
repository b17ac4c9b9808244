//! The controller's MQTT side: orders out ([`Outbox`]), reports, hellos and presence in
//! ([`Inbox`]), over one rumqttc connection as the controller's own broker user.
//!
//! - **Nothing is lost between broker and store.** The session is persistent
//!   (clean_session = false, a fixed client id), so the broker queues what agents send while
//!   the controller is away; acks are manual, and a message is acknowledged only after the
//!   [`Inbox`] made it durable. An Inbox failure that may pass (store I/O, shutting down:
//!   [`retry_later`]) leaves the message unacknowledged and drops the connection after
//!   [`DeliveryOptions::retry_delay`]; on reconnect the broker redelivers every unacknowledged
//!   message, in order. An Inbox refusal (unknown TaskId, another instance's task) is final:
//!   acked and dropped.
//! - **An agent speaks only for itself.** A report or hello whose `InstanceId` is not the
//!   instance its topic names is dropped and logged, whatever the broker's ACL let through.
//! - **Per-instance order.** Messages are handled by [`DeliveryOptions::workers`] workers,
//!   each owning the instances that hash to it, so one agent's reports stay in order while
//!   a slow store write for one does not hold up the others.
//! - **Group commit.** A worker ([`worker`]) takes everything waiting in its queue (up to [`MAX_GROUP`])
//!   and hands each run of consecutive reports to [`Inbox::reports`] at once, which the
//!   fleet logic applies in one store transaction: 500 phones reporting together cost a
//!   few fsyncs, not one each. The group is acknowledged, in order, only after it committed.
//! - **Reconnects** with exponential backoff (200 ms to 10 s) and resubscribes on every
//!   CONNACK (a restarted broker without storage has forgotten the session).
//! - **NATS mode** ([`DeliveryOptions::nats`], [`nats`]): for several controller replicas on a
//!   NATS cluster. Agent messages come from a JetStream work queue through one durable pull
//!   consumer shared by every replica, so each is handled by one replica; it goes to the same
//!   workers and is acked only after its commit (a failure that may pass: NAK, redelivered
//!   later, maybe to another replica). The MQTT connection then only publishes orders, fails
//!   over across the `broker` list, and subscribes to nothing.

use crate::controller::ops::metrics::{bump, DeliveryCounters};
use crate::controller::ports::{BoxFuture, Inbox, Outbox};
use crate::error::{Code, Error, Result};
use crate::fleet::topics::{self, Kind};
use crate::fleet::wire::{Hello, Order, Presence, Report};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod link;
pub mod local;
pub mod nats;
mod worker;

use link::{Job, Link, Message};
pub use local::LocalIngest;
pub use nats::NatsOptions;
use worker::Worker;
pub use worker::MAX_GROUP;

/// How the controller reaches its broker.
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`; in NATS mode a comma-separated list
    /// of the cluster's MQTT listeners, tried in turn.
    pub broker: String,
    /// The controller's MQTT user and password (the embedded broker's controller user, or
    /// the one in an external broker's password file).
    pub username: String,
    pub password: String,
    /// The persistent session's client id: one controller, one id.
    pub client_id: String,
    /// For `mqtts://`: trust this PEM bundle instead of the built-in web roots.
    pub ca_file: Option<PathBuf>,
    pub keep_alive: Duration,
    /// Parallel Inbox calls (each instance always goes to the same one).
    pub workers: usize,
    /// After an Inbox failure, how long before reconnecting to have the message redelivered.
    pub retry_delay: Duration,
    /// On stop, how long messages being handled get to commit and be acknowledged.
    pub drain_timeout: Duration,
    /// What delivery counts for `/metrics`.
    pub counters: Arc<DeliveryCounters>,
    /// Agent messages from NATS JetStream instead of an MQTT subscription.
    pub nats: Option<NatsOptions>,
    /// The embedded broker's hook: agents' reports, hellos and presence reach the workers
    /// in-process.
    pub local: Option<Arc<LocalIngest>>,
}

impl DeliveryOptions {
    pub fn new(broker: &str, username: &str, password: &str) -> Self {
        DeliveryOptions {
            broker: broker.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            client_id: username.to_string(),
            ca_file: None,
            keep_alive: Duration::from_secs(30),
            workers: 8,
            retry_delay: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            counters: Arc::default(),
            nats: None,
            local: None,
        }
    }
}

/// The largest message either way: a Hello lists every task an agent holds.
const MAX_PACKET: usize = 4 << 20;
/// Orders queued while the broker is unreachable, before [`Outbox::send`] fails.
const QUEUE: usize = 16_384;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A configured connection, not yet running: take its [`Delivery::outbox`] for the fleet
/// logic, then [`Delivery::run`] it with that logic as the [`Inbox`].
pub struct Delivery {
    client: AsyncClient,
    eventloop: EventLoop,
    /// The broker's addresses to try in turn (one unless in NATS mode).
    brokers: Vec<MqttOptions>,
    options: DeliveryOptions,
}

impl Delivery {
    pub fn new(options: DeliveryOptions) -> Result<Delivery> {
        let brokers = mqtt_options_list(&options)?;
        let (client, eventloop) = AsyncClient::new(brokers[0].clone(), QUEUE);
        Ok(Delivery {
            client,
            eventloop,
            brokers,
            options,
        })
    }

    /// Publishes orders through this connection; orders sent before [`Delivery::run`] or
    /// while the broker is away wait in its queue.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        Arc::new(MqttOutbox {
            client: self.client.clone(),
            counters: self.options.counters.clone(),
        })
    }

    /// Connects and keeps connecting until [`DeliveryHandle::stop`].
    pub fn run(self, inbox: Arc<dyn Inbox>) -> DeliveryHandle {
        let stop = CancellationToken::new();
        let (connected_tx, connected) = watch::channel(false);
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let poisoned = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = mpsc::channel(1);
        let workers: Vec<_> = (0..self.options.workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let worker = Worker {
                    inbox: inbox.clone(),
                    client: self.client.clone(),
                    poisoned: poisoned.clone(),
                    retry: retry_tx.clone(),
                    counters: self.options.counters.clone(),
                    retry_delay: self.options.retry_delay,
                    // A third of the ack wait: the server never sees a message in hand as
                    // abandoned while its commit waits for the store.
                    progress_every: self.options.nats.as_ref().map(|n| n.ack_wait / 3),
                };
                (tx, tokio::spawn(worker.run(rx, done_tx.clone())))
            })
            .collect();
        let (senders, worker_tasks): (Vec<_>, Vec<_>) = workers.into_iter().unzip();
        // In NATS mode the JetStream consumer feeds the workers and MQTT only carries orders.
        let (link_workers, nats) = match self.options.nats.clone() {
            None => (senders, None),
            Some(nats) => {
                let (ready_tx, ready) = watch::channel(false);
                let consumer = nats::Consumer {
                    options: nats,
                    username: self.options.username.clone(),
                    password: self.options.password.clone(),
                    name: self.options.client_id.clone(),
                    workers: senders,
                    mqtt_up: connected.clone(),
                    ready: ready_tx,
                    counters: self.options.counters.clone(),
                };
                let task = tokio::spawn(consumer.run(stop.clone()));
                (Vec::new(), Some((task, ready)))
            }
        };
        if let Some(local) = &self.options.local {
            local.attach(link_workers.clone(), self.options.retry_delay, stop.clone());
        }
        let subscribe = nats.is_none();
        let link = Link {
            client: self.client,
            eventloop: self.eventloop,
            brokers: self.brokers,
            current: 0,
            subscribe,
            retry_delay: self.options.retry_delay,
            workers: link_workers,
            connected: connected_tx,
            generation: 0,
            counters: self.options.counters.clone(),
            drain_timeout: self.options.drain_timeout,
            workers_done: done_rx,
            local: self.options.local.clone(),
        };
        let task = tokio::spawn(link.run(stop.clone(), retry_rx));
        let (nats_task, connected) = match nats {
            Some((task, ready)) => (Some(task), ready),
            None => (None, connected),
        };
        DeliveryHandle {
            stop,
            task,
            nats_task,
            worker_tasks,
            connected,
        }
    }
}

/// A running delivery.
pub struct DeliveryHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// NATS mode: the consumer, which returns its client once it stopped pulling.
    nats_task: Option<JoinHandle<Option<async_nats::Client>>>,
    worker_tasks: Vec<JoinHandle<()>>,
    /// Up: the MQTT link (and in NATS mode the JetStream consumer too).
    connected: watch::Receiver<bool>,
}

impl DeliveryHandle {
    /// Whether the broker connection is up now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the connection is up (true) or `timeout` passed (false).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver of the connection state (true while up), for readiness.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Drains, then disconnects cleanly: messages arriving from now on are left
    /// unacknowledged (the broker keeps them for the next run); those already handed to
    /// workers are committed and acknowledged first when they can be within
    /// [`DeliveryOptions::drain_timeout`] and while the broker is reachable, the rest are
    /// redelivered to the next run.
    pub async fn stop(self) {
        self.stop.cancel();
        // NATS mode: the consumer stops pulling and lets go of the workers' queues; the link
        // waits for the workers to finish (their acks go out on the NATS client).
        let client = match self.nats_task {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        let _ = self.task.await;
        for worker in self.worker_tasks {
            worker.abort();
            let _ = worker.await;
        }
        if let Some(client) = client {
            // The last acks leave before the connection closes.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
    }
}

/// The connection options for each URL of [`DeliveryOptions::broker`]: one URL, or in NATS
/// mode a comma-separated list (the cluster's nodes, tried in turn).
fn mqtt_options_list(options: &DeliveryOptions) -> Result<Vec<MqttOptions>> {
    let urls: Vec<&str> = options.broker.split(',').map(str::trim).collect();
    if urls.len() > 1 && options.nats.is_none() {
        return Err(Error::new(
            Code::InvalidConfig,
            "a list of broker URLs needs --nats (one mosquitto is one URL)",
        ));
    }
    urls.into_iter()
        .map(|url| mqtt_options(options, url))
        .collect()
}

fn mqtt_options(options: &DeliveryOptions, broker: &str) -> Result<MqttOptions> {
    let bad = |why: String| {
        Error::new(
            Code::InvalidConfig,
            format!("broker URL {:?}: {why}", crate::redact::url(broker)),
        )
    };
    let url = url::Url::parse(broker).map_err(|e| bad(e.to_string()))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => return Err(bad(format!("scheme {other:?} is not mqtt or mqtts"))),
    };
    let host = url
        .host_str()
        .ok_or_else(|| bad("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut mqtt = MqttOptions::new(&options.client_id, host, port);
    mqtt.set_credentials(&options.username, &options.password)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(options.keep_alive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(100);
    if tls {
        mqtt.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(options.ca_file.as_deref())?)),
        ));
    }
    Ok(mqtt)
}

/// rustls with ring (the backend the rest of ferry uses), trusting `ca_file` or the web roots.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::new(
                        Code::InvalidConfig,
                        format!("reading the CA file {}: {e}", path.display()),
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::new(
                    Code::InvalidConfig,
                    format!("the CA file {} holds no usable certificate", path.display()),
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| Error::new(Code::NetworkTls, format!("TLS setup: {e}")))
}

/// [`Outbox`] over the connection's request queue.
struct MqttOutbox {
    client: AsyncClient,
    counters: Arc<DeliveryCounters>,
}

impl Outbox for MqttOutbox {
    fn send(&self, instance_id: &str, order: Order) -> BoxFuture<'_, Result<()>> {
        let sent = topics::check_instance_id(instance_id)
            .and_then(|()| publish_order(&self.client, instance_id, &order));
        if sent.is_ok() {
            bump(&self.counters.orders_published);
        }
        Box::pin(async move { sent })
    }
}

/// Queues one order (QoS 1, not retained) without waiting: a full queue (broker away for
/// long) is an error, and the order goes out again with the agent's next Hello.
fn publish_order(client: &AsyncClient, instance_id: &str, order: &Order) -> Result<()> {
    let body = serde_json::to_vec(order)
        .map_err(|e| Error::new(Code::Internal, format!("encoding an order: {e}")))?;
    client
        .try_publish(
            topics::topic(instance_id, Kind::Order),
            QoS::AtLeastOnce,
            false,
            body,
        )
        .map_err(|e| {
            Error::new(
                Code::Internal,
                format!(
                    "queueing order {} for {instance_id} to the broker: {e}",
                    order.task_id()
                ),
            )
        })
}

pub use super::ports::retry_later;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_mqtt_or_mqtts_with_default_ports() {
        let plain = mqtt_options_list(&DeliveryOptions::new("mqtt://127.0.0.1", "c", "p"))
            .unwrap()
            .remove(0);
        assert_eq!(plain.broker_address(), ("127.0.0.1".to_string(), 1883));
        assert!(!plain.clean_session());
        let tls = mqtt_options_list(&DeliveryOptions::new(
            "mqtts://broker.example:9999",
            "c",
            "p",
        ));
        assert_eq!(
            tls.unwrap()[0].broker_address(),
            ("broker.example".to_string(), 9999)
        );
        for bad in ["http://x", "mqtt://", "x", "mqtt://a,mqtt://b"] {
            let err = mqtt_options_list(&DeliveryOptions::new(bad, "c", "p")).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{bad}");
        }
        // In NATS mode a list names the cluster's MQTT listeners.
        let mut nats = DeliveryOptions::new("mqtt://a:1, mqtt://b:2", "c", "p");
        nats.nats = Some(NatsOptions::new(vec!["nats://a:4222".into()]));
        let list = mqtt_options_list(&nats).unwrap();
        assert_eq!(list[1].broker_address(), ("b".to_string(), 2));
    }

    #[test]
    fn only_passing_failures_are_retried() {
        assert!(retry_later(&Error::new(Code::StorageIo, "x")));
        assert!(!retry_later(&Error::new(Code::ApiNotFound, "x")));
        assert!(!retry_later(&Error::new(Code::InvalidInstanceId, "x")));
    }
}
