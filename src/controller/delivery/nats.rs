//! NATS mode: agent messages from JetStream, for several controller replicas.
//!
//! nats-server's MQTT listener turns each agent publish into a NATS message on the topic's
//! subject (`/` → `.`, a `.` inside a level → `//`). The stream [`STREAM`] captures the
//! agents' report, hello and presence subjects as a work queue (file storage, replicated), and
//! every replica pulls from one durable consumer, [`CONSUMER`]: the server hands each message
//! to one puller, and takes it off the queue only when acked. So each message is handled once
//! across the replicas, and one a replica took but never acked (it died, or its store failed)
//! comes back after the ack wait, or after a NAK's delay, to whichever replica pulls next.
//!
//! Whichever replica starts creates or updates the stream and the consumer (idempotent); none
//! ever deletes them.

use super::link::{shard, Job, Message, Source, RETRIED_ALONE};
use super::*;
use crate::controller::nats::{subject, topic};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use std::sync::atomic::AtomicBool;

/// The JetStream stream of agent messages.
pub const STREAM: &str = "FERRY_AGENTS";
/// The durable pull consumer every replica shares.
pub const CONSUMER: &str = "ferry-controller";
/// Messages a replica asks for at once.
const BATCH: usize = 256;

/// Where and how the replicas share the agents' messages.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// `nats://host:4222` of the cluster's nodes (the client reconnects across them).
    pub servers: Vec<String>,
    /// The stream's replicas, fewer if the cluster has fewer nodes.
    pub replicas: usize,
    /// How long a message pulled and not acked stays with its replica before redelivery.
    pub ack_wait: Duration,
    /// Messages pulled and not yet acked, across the replicas, before the server waits.
    pub max_ack_pending: i64,
}

impl NatsOptions {
    pub fn new(servers: Vec<String>) -> Self {
        NatsOptions {
            servers,
            replicas: 3,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4096,
        }
    }
}

/// Pulls from the shared consumer and hands each message to the worker owning its instance.
pub(super) struct Consumer {
    pub(super) options: NatsOptions,
    pub(super) username: String,
    pub(super) password: String,
    /// The connection's name (the replica's MQTT client id), shown by the server.
    pub(super) name: String,
    pub(super) workers: Vec<mpsc::UnboundedSender<Job>>,
    pub(super) mqtt_up: watch::Receiver<bool>,
    /// Ready: NATS connected, the consumer pulling and the MQTT link up.
    pub(super) ready: watch::Sender<bool>,
    pub(super) counters: Arc<DeliveryCounters>,
}

impl Consumer {
    /// Until `stop`: then stops pulling, lets go of the workers' queues and returns the
    /// client, for the workers' last acks to be flushed.
    pub(super) async fn run(mut self, stop: CancellationToken) -> Option<async_nats::Client> {
        let connecting = async_nats::ConnectOptions::with_user_and_password(
            self.username.clone(),
            self.password.clone(),
        )
        .name(&self.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(self.options.servers.as_slice())
        .await;
        let client = match connecting {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "NATS connection options refused");
                return None;
            }
        };
        let pulling = Arc::new(AtomicBool::new(false));
        let readiness = tokio::spawn(readiness(
            client.clone(),
            pulling.clone(),
            self.mqtt_up.clone(),
            self.ready.clone(),
            stop.clone(),
        ));
        let js = jetstream::new(client.clone());
        let mut backoff = BACKOFF_MIN;
        'setup: while !stop.is_cancelled() {
            let consumer = tokio::select! {
                () = stop.cancelled() => break,
                consumer = self.setup(&js) => consumer,
            };
            let messages = match consumer {
                Ok(consumer) => consumer
                    .stream()
                    .max_messages_per_batch(BATCH)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(|e| Error::new(Code::NetworkConnect, format!("JetStream pull: {e}"))),
                Err(e) => Err(e),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "JetStream consumer not ready; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            tracing::info!(
                stream = STREAM,
                consumer = CONSUMER,
                "pulling agent messages from JetStream"
            );
            pulling.store(true, Ordering::SeqCst);
            // Heartbeats missed in a row: the server sends one every 5 s while a pull waits,
            // so a second miss means this pull is gone (its consumer's leader moved to
            // another node, say) and waiting on longer would stall every agent's messages.
            let mut missed = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break 'setup,
                    next = messages.next() => match next {
                        Some(Ok(message)) => {
                            backoff = BACKOFF_MIN;
                            missed = 0;
                            self.dispatch(message);
                        }
                        Some(Err(e)) => match e.kind() {
                            pull::MessagesErrorKind::MissingHeartbeat if missed >= 1 => {
                                tracing::warn!(error = %e, "no JetStream heartbeat for two periods; pulling anew");
                                break;
                            }
                            pull::MessagesErrorKind::MissingHeartbeat | pull::MessagesErrorKind::Pull => {
                                // The client reconnects and the stream pulls again.
                                if e.kind() == pull::MessagesErrorKind::MissingHeartbeat {
                                    missed += 1;
                                }
                                tracing::debug!(error = %e, "JetStream pull interrupted");
                            }
                            _ => {
                                tracing::warn!(error = %e, "JetStream consumer lost; setting it up again");
                                break;
                            }
                        },
                        None => break,
                    },
                }
            }
            pulling.store(false, Ordering::SeqCst);
        }
        // Stop pulling; messages pulled and not handed out are redelivered after the ack
        // wait. Then let the workers end once they handled what they hold.
        pulling.store(false, Ordering::SeqCst);
        self.workers.clear();
        let _ = readiness.await;
        Some(client)
    }

    /// Creates or updates the stream and the consumer.
    async fn setup(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(Code::NetworkConnect, format!("JetStream {what}: {e}"))
        };
        let config = |replicas: usize| stream::Config {
            name: STREAM.to_string(),
            subjects: [Kind::Report, Kind::Hello, Kind::Presence]
                .map(|kind| subject(&topics::every(kind)))
                .to_vec(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let wanted = self.options.replicas.max(1);
        match js.get_stream(STREAM).await {
            // There: bring it to our config; if it cannot change now (a node down), use it
            // as it is rather than lowering its replicas.
            Ok(_) => {
                if let Err(e) = js.update_stream(config(wanted)).await {
                    tracing::warn!(error = %e, "JetStream stream {STREAM} not updated; using it as it is");
                }
            }
            Err(_) => {
                let mut replicas = wanted;
                loop {
                    match js.create_or_update_stream(config(replicas)).await {
                        Ok(_) => break,
                        // Fewer nodes than replicas (or no cluster): as many as it has.
                        Err(e) if replicas > 1 && is_too_many_replicas(&e.to_string()) => {
                            tracing::warn!(replicas, error = %e, "fewer replicas for the JetStream stream");
                            replicas -= 1;
                        }
                        Err(e) => return Err(failed("creating the stream", &e)),
                    }
                }
                tracing::info!(stream = STREAM, replicas, "JetStream stream created");
            }
        }
        let stream = js
            .get_stream(STREAM)
            .await
            .map_err(|e| failed("the stream", &e))?;
        let ack_wait = self.options.ack_wait;
        stream
            .create_consumer(pull::Config {
                durable_name: Some(CONSUMER.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                // Unlimited, backing off: a message is never dropped for being retried.
                max_deliver: -1,
                backoff: vec![ack_wait, ack_wait * 2, ack_wait * 4],
                max_ack_pending: self.options.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("creating the consumer", &e))
    }

    fn dispatch(&self, message: jetstream::Message) {
        let topic = topic(message.subject.as_str());
        if message.info().is_ok_and(|info| info.delivered > 1) {
            bump(&self.counters.redelivered);
        }
        let shard = shard(&topic, self.workers.len());
        let message = Message {
            topic,
            payload: message.payload.clone(),
            source: Source::Nats(Box::new(message)),
        };
        let _ = self.workers[shard].send((RETRIED_ALONE, message));
    }
}

fn is_too_many_replicas(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("insufficient resources") || error.contains("replicas")
}

/// Keeps `ready` = NATS connected, consumer pulling, MQTT link up; false from `stop`.
async fn readiness(
    client: async_nats::Client,
    pulling: Arc<AtomicBool>,
    mqtt_up: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                let up = client.connection_state() == async_nats::connection::State::Connected
                    && pulling.load(Ordering::SeqCst)
                    && *mqtt_up.borrow();
                ready.send_if_modified(|was| std::mem::replace(was, up) != up);
            }
        }
    }
    ready.send_replace(false);
}
