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
//! - **Group commit.** A worker takes everything waiting in its queue (up to [`MAX_GROUP`])
//!   and hands each run of consecutive reports to [`Inbox::reports`] at once, which the
//!   fleet logic applies in one store transaction: 500 phones reporting together cost a
//!   few fsyncs, not one each. The group is acknowledged, in order, only after it committed.
//! - **Reconnects** with exponential backoff (200 ms to 10 s) and resubscribes on every
//!   CONNACK (a restarted broker without storage has forgotten the session).

use super::ops::metrics::{bump, DeliveryCounters};
use super::ports::{BoxFuture, Inbox, Outbox};
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

/// How the controller reaches its broker.
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
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
    options: DeliveryOptions,
}

impl Delivery {
    pub fn new(options: DeliveryOptions) -> Result<Delivery> {
        let mqtt = mqtt_options(&options)?;
        let (client, eventloop) = AsyncClient::new(mqtt, QUEUE);
        Ok(Delivery {
            client,
            eventloop,
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
                };
                (tx, tokio::spawn(worker.run(rx, done_tx.clone())))
            })
            .collect();
        let (senders, worker_tasks): (Vec<_>, Vec<_>) = workers.into_iter().unzip();
        let link = Link {
            client: self.client,
            eventloop: self.eventloop,
            retry_delay: self.options.retry_delay,
            workers: senders,
            connected: connected_tx,
            generation: 0,
            counters: self.options.counters.clone(),
            drain_timeout: self.options.drain_timeout,
            workers_done: done_rx,
        };
        let task = tokio::spawn(link.run(stop.clone(), retry_rx));
        DeliveryHandle {
            stop,
            task,
            worker_tasks,
            connected,
        }
    }
}

/// A running delivery.
pub struct DeliveryHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
    worker_tasks: Vec<JoinHandle<()>>,
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
        let _ = self.task.await;
        for worker in self.worker_tasks {
            worker.abort();
            let _ = worker.await;
        }
    }
}

fn mqtt_options(options: &DeliveryOptions) -> Result<MqttOptions> {
    let bad = |why: String| {
        Error::new(
            Code::InvalidConfig,
            format!("broker URL {:?}: {why}", options.broker),
        )
    };
    let url = url::Url::parse(&options.broker).map_err(|e| bad(e.to_string()))?;
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

/// A message as handed to a worker: the connection generation it arrived on.
type Job = (u64, Publish);

/// The connection loop: polls rumqttc, hands publishes to workers, reconnects.
struct Link {
    client: AsyncClient,
    eventloop: EventLoop,
    retry_delay: Duration,
    workers: Vec<mpsc::UnboundedSender<Job>>,
    connected: watch::Sender<bool>,
    /// Counts connections; a worker's failure on generation g discards what g delivered.
    generation: u64,
    counters: Arc<DeliveryCounters>,
    drain_timeout: Duration,
    /// Ends (`None`) once every worker ended.
    workers_done: mpsc::Receiver<()>,
}

impl Link {
    async fn run(mut self, stop: CancellationToken, mut retry: mpsc::UnboundedReceiver<u64>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(failed) = retry.recv() => {
                    // Only a failure on this connection needs a new one.
                    if failed == self.generation && *self.connected.borrow() {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(self.retry_delay) => {}
                        }
                        tracing::info!("reconnecting to the broker to have unacknowledged messages redelivered");
                        self.eventloop.clean();
                        self.connected.send_replace(false);
                    }
                }
                event = self.eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff = BACKOFF_MIN;
                        self.generation += 1;
                        tracing::info!(session_present = ack.session_present, "connected to the broker");
                        self.subscribe();
                        self.connected.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => self.dispatch(publish),
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!("the broker refused a subscription of the controller: check its ACL");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if self.connected.send_replace(false) {
                            tracing::warn!(error = %e, "broker connection lost");
                        } else {
                            tracing::debug!(error = %e, "broker connection failed");
                        }
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
        self.drain().await;
        self.disconnect().await;
    }

    /// Stops handing out messages and lets the workers finish theirs, polling the connection
    /// meanwhile so their acknowledgements reach the broker.
    async fn drain(&mut self) {
        self.workers.clear();
        // Draining is not serving: readiness sees the link as down from here.
        let connected = self.connected.send_replace(false);
        let finished = tokio::time::timeout(self.drain_timeout, async {
            loop {
                tokio::select! {
                    done = self.workers_done.recv() => if done.is_none() { break true },
                    event = self.eventloop.poll(), if connected => match event {
                        // Not handed out: unacknowledged, so the broker keeps it.
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "broker connection lost while draining");
                            break false;
                        }
                    },
                }
            }
        })
        .await;
        match finished {
            Ok(true) => tracing::info!("delivery drained: every message handed out was handled"),
            _ => tracing::warn!("delivery stopped before every message handed out was handled; the broker redelivers those"),
        }
        // Flush the acknowledgements the last workers queued.
        if connected {
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    if self.eventloop.poll().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
    }

    fn subscribe(&self) {
        let filters = [Kind::Report, Kind::Hello, Kind::Presence]
            .map(|kind| rumqttc::SubscribeFilter::new(topics::every(kind), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "queueing the controller's subscriptions");
        }
    }

    fn dispatch(&self, publish: Publish) {
        let shard = match topics::parse(&publish.topic) {
            Some((instance, _)) => {
                let mut h = DefaultHasher::new();
                instance.hash(&mut h);
                (h.finish() % self.workers.len() as u64) as usize
            }
            None => 0,
        };
        if publish.dup {
            bump(&self.counters.redelivered);
        }
        let _ = self.workers[shard].send((self.generation, publish));
    }

    /// A clean DISCONNECT, waiting at most a second for it to leave.
    async fn disconnect(&mut self) {
        self.connected.send_replace(false);
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// The most messages a worker takes from its queue at once: one group commit of reports.
pub const MAX_GROUP: usize = 512;

/// Hands messages of its instances to the Inbox in queue order (runs of reports as one
/// group), acking each once handled.
struct Worker {
    inbox: Arc<dyn Inbox>,
    client: AsyncClient,
    /// The newest generation on which some message failed: its later messages are left
    /// unacknowledged too, so the redelivery comes back in order.
    poisoned: Arc<AtomicU64>,
    retry: mpsc::UnboundedSender<u64>,
    counters: Arc<DeliveryCounters>,
}

impl Worker {
    /// Until its queue closes; `done` is dropped when it returns.
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>, done: mpsc::Sender<()>) {
        let _done = done;
        let mut group = Vec::with_capacity(MAX_GROUP);
        while jobs.recv_many(&mut group, MAX_GROUP).await > 0 {
            let mut queue = group.drain(..).peekable();
            while let Some((generation, publish)) = queue.next() {
                if generation <= self.poisoned.load(Ordering::SeqCst) {
                    continue;
                }
                if is_report(&publish) {
                    let mut reports = vec![publish];
                    while let Some((_, next)) =
                        queue.next_if(|(g, p)| *g == generation && is_report(p))
                    {
                        reports.push(next);
                    }
                    self.reports(generation, reports).await;
                    continue;
                }
                match handle(&*self.inbox, &self.client, &publish, &self.counters).await {
                    Ok(()) => self.ack(&publish).await,
                    Err(e) => self.failed(generation, &publish, &e),
                }
            }
        }
    }

    async fn ack(&self, publish: &Publish) {
        if let Err(e) = self.client.ack(publish).await {
            tracing::warn!(error = %e, "acknowledging a message");
        }
    }

    /// Leaves this message and every later one of its connection unacknowledged, and has
    /// the link reconnect so the broker redelivers them in order.
    fn failed(&self, generation: u64, publish: &Publish, error: &Error) {
        tracing::warn!(topic = %publish.topic, error = %error, "not handled now; the broker will redeliver it");
        bump(&self.counters.retried);
        self.poisoned.fetch_max(generation, Ordering::SeqCst);
        let _ = self.retry.send(generation);
    }

    /// A run of report messages: those that are reports of their topic's instance go to the
    /// Inbox as one group; then each message is acked in order, up to the first failure
    /// worth another try.
    async fn reports(&self, generation: u64, publishes: Vec<Publish>) {
        let mut outcomes: Vec<Option<Result<()>>> = Vec::with_capacity(publishes.len());
        let mut reports = Vec::with_capacity(publishes.len());
        let mut slots = Vec::with_capacity(publishes.len());
        for publish in &publishes {
            // Not a valid report of this instance: acked and dropped (logged by check).
            if let Some(report) = check_report(publish, &self.counters) {
                slots.push(outcomes.len());
                reports.push(report);
                outcomes.push(None);
            } else {
                outcomes.push(Some(Ok(())));
            }
        }
        if !reports.is_empty() {
            self.counters.group_size.observe(reports.len() as f64);
            let started = std::time::Instant::now();
            let results = self.inbox.reports(reports).await;
            self.counters
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            for (slot, outcome) in slots.into_iter().zip(results) {
                match &outcome {
                    Ok(()) => bump(&self.counters.reports),
                    Err(e) if !retry_later(e) => bump(&self.counters.refused),
                    Err(_) => {}
                }
                outcomes[slot] = Some(outcome);
            }
        }
        let (acks, stop) = settle(outcomes);
        for publish in &publishes[..acks] {
            self.ack(publish).await;
        }
        if let Some(error) = stop {
            self.failed(generation, &publishes[acks], &error);
        }
    }
}

fn is_report(publish: &Publish) -> bool {
    matches!(topics::parse(&publish.topic), Some((_, Kind::Report)))
}

/// A report message's report, when it is valid JSON and speaks for its topic's instance.
fn check_report(publish: &Publish, counters: &DeliveryCounters) -> Option<Report> {
    let (instance, kind) = topics::parse(&publish.topic)?;
    let Some(report) = decode::<Report>(publish) else {
        bump(&counters.invalid);
        return None;
    };
    if report.instance_id != instance {
        let _ = forged(instance, &report.instance_id, kind, counters);
        return None;
    }
    Some(report)
}

/// How many of a group's messages, in order, are acknowledged: each done or refused for
/// good (the refusal is logged) up to the first one to retry, or one the Inbox gave no
/// outcome for (it stopped there); that one's error is returned.
fn settle(outcomes: Vec<Option<Result<()>>>) -> (usize, Option<Error>) {
    let all = outcomes.len();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) if !retry_later(&e) => {
                tracing::warn!(kind = Kind::Report.as_str(), error = %e, "the controller refused a message");
            }
            Some(Err(e)) => return (i, Some(e)),
            None => {
                let e = Error::new(Code::Internal, "the fleet logic left a report unhandled");
                return (i, Some(e));
            }
        }
    }
    (all, None)
}

/// Handles one message: `Ok` to ack it (done or refused for good), `Err` to have it again.
async fn handle(
    inbox: &dyn Inbox,
    client: &AsyncClient,
    publish: &Publish,
    counters: &DeliveryCounters,
) -> Result<()> {
    let invalid = || {
        bump(&counters.invalid);
        Ok(())
    };
    let Some((instance, kind)) = topics::parse(&publish.topic) else {
        tracing::warn!(topic = %publish.topic, "dropped a message on a topic that is not ours");
        return invalid();
    };
    let outcome = match kind {
        Kind::Report => match decode::<Report>(publish) {
            Some(report) if report.instance_id == instance => inbox.report(report).await,
            Some(report) => return forged(instance, &report.instance_id, kind, counters),
            None => return invalid(),
        },
        Kind::Hello => match decode::<Hello>(publish) {
            Some(hello) if hello.instance_id == instance => {
                inbox.hello(hello).await.and_then(|orders| {
                    orders.iter().try_for_each(|order| {
                        publish_order(client, instance, order)?;
                        bump(&counters.orders_published);
                        bump(&counters.orders_resent);
                        Ok(())
                    })
                })
            }
            Some(hello) => return forged(instance, &hello.instance_id, kind, counters),
            None => return invalid(),
        },
        // Presence carries no id: its topic is its instance, and only that instance (or its
        // will, published by the broker for it) may write there. An empty retained message
        // (a cleared presence) says nothing.
        Kind::Presence if publish.payload.is_empty() => return Ok(()),
        Kind::Presence => match decode::<Presence>(publish) {
            Some(presence) => inbox.presence(instance, presence).await,
            None => return invalid(),
        },
        Kind::Order => return invalid(),
    };
    match outcome {
        Ok(()) => {
            bump(match kind {
                Kind::Hello => &counters.hellos,
                Kind::Presence => &counters.presences,
                _ => &counters.reports,
            });
            Ok(())
        }
        Err(e) if retry_later(&e) => Err(e),
        Err(e) => {
            bump(&counters.refused);
            tracing::warn!(instance, kind = kind.as_str(), error = %e, "the controller refused a message");
            Ok(())
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(publish: &Publish) -> Option<T> {
    match serde_json::from_slice(&publish.payload) {
        Ok(message) => Some(message),
        Err(e) => {
            tracing::warn!(topic = %publish.topic, error = %e, "dropped a message that is not valid JSON of its kind");
            None
        }
    }
}

fn forged(
    topic_instance: &str,
    claimed: &str,
    kind: Kind,
    counters: &DeliveryCounters,
) -> Result<()> {
    bump(&counters.forged);
    tracing::warn!(
        topic_instance,
        claimed,
        kind = kind.as_str(),
        "dropped a message whose InstanceId is not the instance of its topic"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_mqtt_or_mqtts_with_default_ports() {
        let plain = mqtt_options(&DeliveryOptions::new("mqtt://127.0.0.1", "c", "p")).unwrap();
        assert_eq!(plain.broker_address(), ("127.0.0.1".to_string(), 1883));
        assert!(!plain.clean_session());
        let tls = mqtt_options(&DeliveryOptions::new(
            "mqtts://broker.example:9999",
            "c",
            "p",
        ));
        assert_eq!(
            tls.unwrap().broker_address(),
            ("broker.example".to_string(), 9999)
        );
        for bad in ["http://x", "mqtt://", "x"] {
            let err = mqtt_options(&DeliveryOptions::new(bad, "c", "p")).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{bad}");
        }
    }

    #[test]
    fn a_group_is_acked_in_order_up_to_its_first_failure_to_retry() {
        let refused = || Some(Err(Error::new(Code::ApiNotFound, "unknown task")));
        let io = || Some(Err(Error::new(Code::StorageIo, "disk")));
        assert_eq!(settle(vec![Some(Ok(())), Some(Ok(()))]), (2, None));
        // A refusal is final: acked like a success, and the group goes on.
        assert_eq!(settle(vec![refused(), Some(Ok(()))]), (2, None));
        let (acks, stop) = settle(vec![Some(Ok(())), io(), Some(Ok(()))]);
        assert_eq!(acks, 1);
        assert_eq!(stop.unwrap().code, Code::StorageIo);
        // No outcome (the Inbox stopped early) is a failure too: nothing after it is acked.
        let (acks, stop) = settle(vec![Some(Ok(())), None]);
        assert_eq!(acks, 1);
        assert_eq!(stop.unwrap().code, Code::Internal);
    }

    #[test]
    fn only_passing_failures_are_retried() {
        assert!(retry_later(&Error::new(Code::StorageIo, "x")));
        assert!(!retry_later(&Error::new(Code::ApiNotFound, "x")));
        assert!(!retry_later(&Error::new(Code::InvalidInstanceId, "x")));
    }
}
