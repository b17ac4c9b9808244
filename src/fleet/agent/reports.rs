//! Reports: every change of the manager's stream, published as a [`Report`] on the
//! instance's report topic. Phase changes and final states go at once; progress within a
//! phase at most once per `progress_interval_ms` per task (the latest one is kept and sent
//! when its turn comes, so a stalled task still shows where it stopped). The manager's stream
//! is a broadcast channel: a reporter held up by a slow broker only makes this subscriber
//! lag, and a lagging reporter (or a new connection) sends every task's current state again.

use super::host::TaskHost;
use crate::fleet::topics::{topic, Kind};
use crate::fleet::wire::Report;
use crate::task::record::{Phase, TaskView};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Which views to publish now and which to hold back, per TaskId.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// Phase and time of the last view sent per task.
    sent: HashMap<String, (Phase, Instant)>,
    /// Progress held back, newest per task.
    held: HashMap<String, TaskView>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            sent: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// The view to publish now, if any: a new phase or a final state always; progress in
    /// the same phase once the interval since the last one sent has passed (else held).
    /// Every change is in the stream, so the last view published for a task is always its
    /// latest state, even when an older one from the stream follows a resync.
    pub fn offer(&mut self, view: TaskView, now: Instant) -> Option<TaskView> {
        match self.sent.get(&view.task_id) {
            Some((phase, at))
                if *phase == view.phase
                    && !phase.is_finished()
                    && now.duration_since(*at) < self.interval =>
            {
                self.held.insert(view.task_id.clone(), view);
                None
            }
            _ => Some(self.mark(view, now)),
        }
    }

    /// Records `view` as sent (a resync sends every view whatever the throttle says).
    pub fn mark(&mut self, view: TaskView, now: Instant) -> TaskView {
        self.held.remove(&view.task_id);
        self.sent.insert(view.task_id.clone(), (view.phase, now));
        view
    }

    /// When the oldest held-back progress is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held
            .keys()
            .filter_map(|id| self.sent.get(id).map(|(_, at)| *at + self.interval))
            .min()
    }

    /// Held-back progress whose interval has passed, now marked as sent.
    pub fn due(&mut self, now: Instant) -> Vec<TaskView> {
        let ids: Vec<String> = self
            .held
            .keys()
            .filter(|id| {
                self.sent
                    .get(*id)
                    .is_none_or(|(_, at)| now.duration_since(*at) >= self.interval)
            })
            .cloned()
            .collect();
        let views: Vec<TaskView> = ids
            .into_iter()
            .filter_map(|id| self.held.remove(&id))
            .collect();
        views.into_iter().map(|view| self.mark(view, now)).collect()
    }

    /// Forgets tasks the manager no longer holds (pruned), so the map stays bounded.
    pub fn retain(&mut self, known: &[TaskView]) {
        let ids: std::collections::HashSet<&str> =
            known.iter().map(|v| v.task_id.as_str()).collect();
        self.sent.retain(|id, _| ids.contains(id.as_str()));
        self.held.retain(|id, _| ids.contains(id.as_str()));
    }
}

/// Publishes reports; `resync` (a new connection) sends every task's current view.
pub async fn run<T: TaskHost>(
    manager: T,
    client: AsyncClient,
    instance_id: String,
    interval: Duration,
    resync: Arc<Notify>,
) {
    let mut events = manager.subscribe();
    let mut throttle = Throttle::new(interval);
    let topic = topic(&instance_id, Kind::Report);
    let publish = |view: TaskView| {
        let client = client.clone();
        let (topic, instance_id) = (topic.clone(), instance_id.clone());
        async move { publish(&client, topic, instance_id, view).await }
    };
    loop {
        let due = throttle.next_due();
        tokio::select! {
            event = events.recv() => match event {
                Ok(view) => {
                    if let Some(view) = throttle.offer(view, Instant::now()) {
                        publish(view).await;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "fleet reports fell behind; sending every task's state");
                    resend_all(&manager, &mut events, &mut throttle, &publish).await;
                }
                Err(RecvError::Closed) => return,
            },
            _ = resync.notified() => resend_all(&manager, &mut events, &mut throttle, &publish).await,
            _ = sleep_until(due), if due.is_some() => {
                for view in throttle.due(Instant::now()) {
                    publish(view).await;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn resend_all<T: TaskHost, F, Fut>(
    manager: &T,
    events: &mut broadcast::Receiver<TaskView>,
    throttle: &mut Throttle,
    publish: &F,
) where
    F: Fn(TaskView) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // What is queued is older than the list taken next: skip it rather than send it after.
    while !matches!(
        events.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
    let views = manager.list();
    throttle.retain(&views);
    // Oldest first, so a controller applying them in order sees the newest last.
    for view in views.into_iter().rev() {
        let view = throttle.mark(view, Instant::now());
        publish(view).await;
    }
}

/// One report, QoS 1, not retained. Waits while the connection's request queue is full.
pub async fn publish(client: &AsyncClient, topic: String, instance_id: String, task: TaskView) {
    let report = Report { instance_id, task };
    let body = match serde_json::to_vec(&report) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(task = %report.task.task_id, "cannot encode a fleet report: {e}");
            return;
        }
    };
    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, body).await {
        tracing::debug!(task = %report.task.task_id, "fleet report not queued: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, phase: Phase, done: u64) -> TaskView {
        let mut v = crate::fleet::agent::orders::refused_view(
            id,
            None,
            &crate::error::Error::new(crate::error::Code::Internal, "x"),
        );
        v.phase = phase;
        v.bytes_done = done;
        v
    }

    #[test]
    fn progress_is_throttled_per_task_but_phases_and_final_states_go_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Throttle::new(ms(2000));
        assert!(t.offer(view("a", Phase::Pending, 0), t0).is_some());
        assert!(
            t.offer(view("a", Phase::Running, 0), t0).is_some(),
            "new phase"
        );
        assert!(t
            .offer(view("a", Phase::Running, 10), t0 + ms(100))
            .is_none());
        assert!(
            t.offer(view("b", Phase::Running, 5), t0 + ms(100))
                .is_some(),
            "per task"
        );
        assert!(t
            .offer(view("a", Phase::Running, 20), t0 + ms(500))
            .is_none());
        assert_eq!(t.next_due(), Some(t0 + ms(2000)));
        assert!(t.due(t0 + ms(1999)).is_empty());
        let due = t.due(t0 + ms(2000));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].bytes_done, 20, "the newest held progress");
        assert_eq!(t.next_due(), None);
        assert!(t
            .offer(view("a", Phase::Running, 30), t0 + ms(4001))
            .is_some());
        assert!(t
            .offer(view("a", Phase::Running, 40), t0 + ms(4002))
            .is_none());
        let done = t
            .offer(view("a", Phase::Success, 50), t0 + ms(4003))
            .unwrap();
        assert_eq!(done.phase, Phase::Success);
        assert_eq!(t.next_due(), None, "the final state replaces held progress");
        assert!(t
            .offer(view("a", Phase::Success, 50), t0 + ms(4004))
            .is_some());
        // A failed task submitted again runs again: its new phases are reported.
        assert!(t
            .offer(view("a", Phase::Failed, 50), t0 + ms(4005))
            .is_some());
        assert!(t
            .offer(view("a", Phase::Pending, 0), t0 + ms(4006))
            .is_some());
        t.retain(&[view("b", Phase::Running, 5)]);
        assert!(
            t.offer(view("a", Phase::Running, 0), t0).is_some(),
            "forgotten"
        );
    }
}
