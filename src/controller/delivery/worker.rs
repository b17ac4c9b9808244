//! A worker: hands the messages of its instances to the Inbox in queue order (runs of
//! reports as one group commit) and acks each only once it is durable.

use super::link::{Source, RETRIED_ALONE};
use super::*;

/// The most messages a worker takes from its queue at once: one group commit of reports.
pub const MAX_GROUP: usize = 512;

/// Hands messages of its instances to the Inbox in queue order (runs of reports as one
/// group), acking each once handled.
pub(super) struct Worker {
    pub(super) inbox: Arc<dyn Inbox>,
    pub(super) client: AsyncClient,
    /// The newest generation on which some message failed: its later messages are left
    /// unacknowledged too, so the redelivery comes back in order.
    pub(super) poisoned: Arc<AtomicU64>,
    pub(super) retry: mpsc::UnboundedSender<u64>,
    pub(super) counters: Arc<DeliveryCounters>,
    /// NATS mode: how long before a NAKed message comes back.
    pub(super) retry_delay: Duration,
    /// NATS mode: while a message is being handled (its commit may wait long for the
    /// store), tell the server it is in progress this often, so it is not redelivered to
    /// another replica after the ack wait while this one still works on it.
    pub(super) progress_every: Option<Duration>,
}

impl Worker {
    /// Until its queue closes; `done` is dropped when it returns.
    pub(super) async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>, done: mpsc::Sender<()>) {
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
                let handled = self.holding(
                    std::slice::from_ref(&publish),
                    handle(&*self.inbox, &self.client, &publish, &self.counters),
                );
                match handled.await {
                    Ok(()) => self.ack(&publish).await,
                    Err(e) => self.failed(generation, &publish, &[], &e).await,
                }
            }
        }
    }

    /// Runs `work` on `messages`, telling the NATS server every [`Worker::progress_every`]
    /// that they are still in hand.
    async fn holding<T>(
        &self,
        messages: &[Message],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(every) = self.progress_every else {
            return work.await;
        };
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    for message in messages {
                        if let Source::Nats(m) = &message.source {
                            let _ = m.ack_with(async_nats::jetstream::AckKind::Progress).await;
                        }
                    }
                }
            }
        }
    }

    async fn ack(&self, publish: &Message) {
        let acked = match &publish.source {
            Source::Mqtt(p) => self.client.ack(p).await.map_err(|e| e.to_string()),
            Source::Nats(m) => m.ack().await.map_err(|e| e.to_string()),
            Source::Local(reply) => {
                super::local::answer(reply, Ok(()));
                Ok(())
            }
        };
        if let Err(e) = acked {
            tracing::warn!(error = %e, "acknowledging a message");
        }
    }

    /// MQTT: leaves this message and every later one of its connection unacknowledged, and
    /// has the link reconnect so the broker redelivers them in order. NATS: NAKs it (and the
    /// rest of its group, `later`) with a delay; the consumer redelivers each. In-process:
    /// answers each with the error; the broker's hook hands it over again.
    async fn failed(&self, generation: u64, publish: &Message, later: &[Message], error: &Error) {
        tracing::warn!(topic = %publish.topic, error = %error, "not handled now; the broker will redeliver it");
        bump(&self.counters.retried);
        if generation == RETRIED_ALONE {
            for message in std::iter::once(publish).chain(later) {
                match &message.source {
                    Source::Nats(m) => {
                        let nak = async_nats::jetstream::AckKind::Nak(Some(self.retry_delay));
                        if let Err(e) = m.ack_with(nak).await {
                            tracing::debug!(error = %e, "NAK (the consumer redelivers after its ack wait)");
                        }
                    }
                    Source::Local(reply) => super::local::answer(reply, Err(error.clone())),
                    Source::Mqtt(_) => {}
                }
            }
            return;
        }
        self.poisoned.fetch_max(generation, Ordering::SeqCst);
        let _ = self.retry.send(generation);
    }

    /// A run of report messages: those that are reports of their topic's instance go to the
    /// Inbox as one group; then each message is acked in order, up to the first failure
    /// worth another try.
    async fn reports(&self, generation: u64, publishes: Vec<Message>) {
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
            let results = self.holding(&publishes, self.inbox.reports(reports)).await;
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
            self.failed(generation, &publishes[acks], &publishes[acks + 1..], &error)
                .await;
        }
    }
}

fn is_report(publish: &Message) -> bool {
    matches!(topics::parse(&publish.topic), Some((_, Kind::Report)))
}

/// A report message's report, when it is valid JSON and speaks for its topic's instance.
fn check_report(publish: &Message, counters: &DeliveryCounters) -> Option<Report> {
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
    publish: &Message,
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

fn decode<T: serde::de::DeserializeOwned>(publish: &Message) -> Option<T> {
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
}
