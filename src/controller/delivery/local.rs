//! Agents' reports and hellos taken from the embedded broker in-process.
//!
//! With the embedded broker, the controller is the only reader of its agents' reports, and
//! routing each one through the broker to the controller's own MQTT session cost more than
//! half of the controller at 5,000 phones (perf: mqtt5 storing every in-flight message for
//! the controller's session and writing each with its own `send`; rumqttc parsing it back).
//! The broker's publish hook hands them to delivery's workers instead ([`LocalIngest`]):
//! the agent's PUBACK goes out only once the worker committed the report, the same promise
//! as the MQTT path. Per-instance order holds: the broker handles one agent's packets one at
//! a time and waits for the hook, so an agent's next report is taken only after the last
//! one committed.
//!
//! Presence too: an agent's retained presence is taken here and, instead of being kept, it
//! clears its topic's retained message (see [`Taken::HandledClear`]). mqtt5 matches every
//! SUBSCRIBE against every retained message (a scan allocating per topic, under the lock
//! presence writes need): with 5,000 retained presences, 5,000 agents reconnecting cost
//! 25 million matches, and sessions took minutes to show online. The controller's store is
//! the record of presence; what stays retained is only the will of an agent that has not come
//! back (the broker publishes wills itself, through MQTT to the controller's session).
//!
//! **Progress is not waited for.** Waiting for every commit before the PUBACK held each agent
//! to one message per commit cycle: at 5,000 phones reporting every 100 ms the controller
//! committed 2,263 reports/s, a quarter of what it did with the broker acking on receipt. A
//! report of a task still RUNNING is superseded by the task's next report (and, after a
//! reconnect, by the resync of every task's state), so it is acked at once and committed in
//! order behind the agent's earlier messages; a failed commit of one is dropped. Phase
//! changes into PENDING or INSTALLING, final states, hellos and presence still wait for their
//! commit. [`IN_FLIGHT`] bounds what is queued so: past it, the next agent waits (flow
//! control, not memory).
//!
//! While delivery is not running or draining, everything goes through MQTT as before (the
//! hook lets the broker route it to the controller's persistent session, which keeps it for
//! the next run).

use super::link::{Job, Message, Source, RETRIED_ALONE};
use super::*;
use std::sync::RwLock;

/// The broker hook's way into delivery's workers; empty until [`Delivery::run`] and again
/// once delivery drains.
pub struct LocalIngest {
    route: RwLock<Option<Route>>,
    /// Progress reports handed over and not yet handled.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Progress reports queued for the workers at most (~1 KiB each).
pub const IN_FLIGHT: usize = 16_384;

impl Default for LocalIngest {
    fn default() -> Self {
        LocalIngest {
            route: RwLock::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }
}

/// An in-process message's way back: the waiting hook's answer (none for progress), and the
/// progress report's place in [`IN_FLIGHT`], given back when the message is dropped.
pub(super) struct LocalMessage {
    reply: std::sync::Mutex<Option<LocalReply>>,
    _in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
}

struct Route {
    workers: Vec<mpsc::UnboundedSender<Job>>,
    retry_delay: Duration,
    stop: CancellationToken,
}

/// What the broker should do with an agent's publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Committed (or refused for good, like the MQTT path acks it): answer the PUBACK.
    Handled,
    /// A presence, committed: answer the PUBACK and clear the topic's retained message (an
    /// earlier will) rather than keep this one.
    HandledClear,
    /// Not taken here: route it as usual (to the controller's session).
    Route,
}

/// Attempts of one message before it goes the MQTT way (whose redelivery then retries it):
/// the agent's connection waits meanwhile, and a store failing for long must not hold every
/// agent's connection past its keep-alive.
const ATTEMPTS: u32 = 3;

impl LocalIngest {
    pub fn new() -> Arc<LocalIngest> {
        Arc::default()
    }

    /// Hands `payload`, published by an agent on `topic`, to its instance's worker and waits
    /// until it is committed. Reports, hellos and presence; anything else is routed.
    pub async fn take(&self, topic: &str, payload: bytes::Bytes) -> Taken {
        let done = match topics::parse(topic) {
            Some((_, Kind::Report)) if is_progress(&payload) => {
                return self.pass(topic, payload).await
            }
            Some((_, Kind::Report | Kind::Hello)) => Taken::Handled,
            Some((_, Kind::Presence)) => Taken::HandledClear,
            _ => return Taken::Route,
        };
        for attempt in 1..=ATTEMPTS {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let waiting = LocalMessage {
                reply: std::sync::Mutex::new(Some(reply)),
                _in_flight: None,
            };
            let Some((retry_delay, stop)) = self.hand_over(topic, payload.clone(), waiting) else {
                return Taken::Route;
            };
            match answer.await {
                Ok(Ok(())) => return done,
                // Dropped unanswered: delivery is stopping.
                Err(_) => return Taken::Route,
                // Failed in a way that may pass (the worker said so and counted it).
                Ok(Err(_)) if attempt < ATTEMPTS => {
                    tokio::select! {
                        () = stop.cancelled() => return Taken::Route,
                        () = tokio::time::sleep(retry_delay) => {}
                    }
                }
                Ok(Err(_)) => {}
            }
        }
        Taken::Route
    }

    /// A progress report: queued behind the agent's earlier messages, acked without waiting
    /// for its commit once it has a place in [`IN_FLIGHT`].
    async fn pass(&self, topic: &str, payload: bytes::Bytes) -> Taken {
        let Ok(place) = self.in_flight.clone().acquire_owned().await else {
            return Taken::Route;
        };
        let message = LocalMessage {
            reply: std::sync::Mutex::new(None),
            _in_flight: Some(place),
        };
        match self.hand_over(topic, payload, message) {
            Some(_) => Taken::Handled,
            None => Taken::Route,
        }
    }

    /// Queues the message on its worker; `None` when delivery does not run.
    fn hand_over(
        &self,
        topic: &str,
        payload: bytes::Bytes,
        local: LocalMessage,
    ) -> Option<(Duration, CancellationToken)> {
        let route = self.route.read().unwrap_or_else(|e| e.into_inner());
        let route = route.as_ref()?;
        let message = Message {
            topic: topic.to_string(),
            payload,
            source: Source::Local(local),
        };
        let worker = &route.workers[link::shard(topic, route.workers.len())];
        worker.send((RETRIED_ALONE, message)).ok()?;
        Some((route.retry_delay, route.stop.clone()))
    }

    /// From [`Delivery::run`]: messages go to these workers from now on.
    pub(super) fn attach(
        &self,
        workers: Vec<mpsc::UnboundedSender<Job>>,
        retry_delay: Duration,
        stop: CancellationToken,
    ) {
        if workers.is_empty() {
            return;
        }
        *self.route.write().unwrap_or_else(|e| e.into_inner()) = Some(Route {
            workers,
            retry_delay,
            stop,
        });
    }

    /// Draining: nothing more is handed out (the workers' queues can close).
    pub(super) fn detach(&self) {
        self.route.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// How a worker answers an in-process message: once, with its outcome (a progress report
/// has nobody waiting).
pub(super) fn answer(message: &LocalMessage, outcome: Result<()>) {
    if let Some(reply) = message
        .reply
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        let _ = reply.send(outcome);
    }
}

/// Whether a report's task is RUNNING: progress, superseded by its next report.
fn is_progress(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "Task")]
        task: PeekTask,
    }
    #[derive(serde::Deserialize)]
    struct PeekTask {
        #[serde(rename = "Phase")]
        phase: crate::task::record::Phase,
    }
    serde_json::from_slice::<Peek>(payload)
        .is_ok_and(|peek| peek.task.phase == crate::task::record::Phase::Running)
}

impl std::fmt::Debug for LocalIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = self.route.read().map(|r| r.is_some()).unwrap_or(false);
        f.debug_struct("LocalIngest")
            .field("attached", &attached)
            .finish()
    }
}

pub(super) type LocalReply = tokio::sync::oneshot::Sender<Result<()>>;
