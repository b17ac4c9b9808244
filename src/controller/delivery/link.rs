//! The connection loop: polls rumqttc, hands each publish to the worker owning its instance,
//! reconnects with backoff (to the next broker of the list, in NATS mode) and resubscribes.

use super::*;

/// A message as handed to a worker: the MQTT connection generation it arrived on
/// ([`RETRIED_ALONE`] for a JetStream or in-process message), and the message.
pub(super) type Job = (u64, Message);

/// The generation of JetStream and in-process messages: above any MQTT one, so never skipped
/// as poisoned (each failed one is retried alone: NAKed for the consumer to redeliver, or
/// answered with its error for [`super::local`] to hand over again).
pub(super) const RETRIED_ALONE: u64 = u64::MAX;

/// An agent message: its MQTT topic, body, and what acknowledges it.
pub(super) struct Message {
    pub(super) topic: String,
    pub(super) payload: bytes::Bytes,
    pub(super) source: Source,
}

pub(super) enum Source {
    Mqtt(Publish),
    Nats(Box<async_nats::jetstream::Message>),
    /// From the embedded broker's publish hook, which waits for this answer.
    Local(super::local::LocalMessage),
}

impl Message {
    fn mqtt(publish: Publish) -> Message {
        Message {
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
            source: Source::Mqtt(publish),
        }
    }
}

/// The worker owning an instance's messages (messages on a topic not ours: the first).
pub(super) fn shard(topic: &str, workers: usize) -> usize {
    match topics::parse(topic) {
        Some((instance, _)) => {
            let mut h = DefaultHasher::new();
            instance.hash(&mut h);
            (h.finish() % workers as u64) as usize
        }
        None => 0,
    }
}

/// The controller's subscriptions: every agent's reports, hellos and presences.
fn subscriptions() -> [rumqttc::SubscribeFilter; 3] {
    [Kind::Report, Kind::Hello, Kind::Presence]
        .map(|kind| rumqttc::SubscribeFilter::new(topics::every(kind), QoS::AtLeastOnce))
}

/// The connection loop: polls rumqttc, hands publishes to workers, reconnects.
pub(super) struct Link {
    pub(super) client: AsyncClient,
    pub(super) eventloop: EventLoop,
    /// The broker's addresses; a failed connection moves on to the next.
    pub(super) brokers: Vec<MqttOptions>,
    pub(super) current: usize,
    /// Subscribe to the agents' topics (not in NATS mode: JetStream brings their messages).
    pub(super) subscribe: bool,
    pub(super) retry_delay: Duration,
    pub(super) workers: Vec<mpsc::UnboundedSender<Job>>,
    pub(super) connected: watch::Sender<bool>,
    /// Counts connections; a worker's failure on generation g discards what g delivered.
    pub(super) generation: u64,
    pub(super) counters: Arc<DeliveryCounters>,
    pub(super) drain_timeout: Duration,
    /// Ends (`None`) once every worker ended.
    pub(super) workers_done: mpsc::Receiver<()>,
    /// The embedded broker's way to the workers, closed when draining.
    pub(super) local: Option<Arc<super::local::LocalIngest>>,
}

impl Link {
    pub(super) async fn run(
        mut self,
        stop: CancellationToken,
        mut retry: mpsc::UnboundedReceiver<u64>,
    ) {
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
                        tracing::info!(session_present = ack.session_present, broker = self.current, "connected to the broker");
                        if self.subscribe {
                            self.subscribe();
                        }
                        self.connected.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => self.dispatch(publish),
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            // Refused for now (a broker under a reconnect storm) or for good
                            // (its ACL): asked again, and said, every retry delay.
                            tracing::error!(retry_in_ms = self.retry_delay.as_millis() as u64, "the broker refused a subscription of the controller (check its ACL); asking again");
                            let (client, wait) = (self.client.clone(), self.retry_delay);
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                if let Err(e) = client.try_subscribe_many(subscriptions()) {
                                    tracing::error!(error = %e, "queueing the controller's subscriptions");
                                }
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if self.connected.send_replace(false) {
                            tracing::warn!(error = %e, "broker connection lost");
                        } else {
                            tracing::debug!(error = %e, "broker connection failed");
                        }
                        self.next_broker();
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
        if let Some(local) = &self.local {
            local.detach();
        }
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

    /// With a list of brokers (NATS' MQTT listeners), the next connection tries the next.
    fn next_broker(&mut self) {
        if self.brokers.len() > 1 {
            self.current = (self.current + 1) % self.brokers.len();
            self.eventloop.mqtt_options = self.brokers[self.current].clone();
        }
    }

    fn subscribe(&self) {
        if let Err(e) = self.client.try_subscribe_many(subscriptions()) {
            tracing::error!(error = %e, "queueing the controller's subscriptions");
        }
    }

    fn dispatch(&self, publish: Publish) {
        if self.workers.is_empty() {
            // NATS mode subscribes to nothing: not ours to handle (nor to ack).
            return;
        }
        let shard = shard(&publish.topic, self.workers.len());
        if publish.dup {
            bump(&self.counters.redelivered);
        }
        let _ = self.workers[shard].send((self.generation, Message::mqtt(publish)));
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
