//! The controller's counters and `/metrics` text. Counters live in this process only: each
//! replica exports its own and Prometheus sums them (`sum by (…)`); an ingest rate is
//! `rate()` of a counter, never a gauge kept here. Gauges about the fleet (tasks by state,
//! agents online) come from the store, which every replica shares, so they are the same on
//! each replica.

use crate::controller::store::{OpsCounts, Status};
use crate::prometheus::{header, sample, Histogram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// API latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Group commit buckets (seconds) and sizes (reports).
const COMMIT_BOUNDS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];
const GROUP_BOUNDS: [f64; 8] = [1.0, 2.0, 8.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The actions the API counts by name; anything else a caller names is `other` (a caller
/// must not be able to grow the label set), and a request refused before its action was
/// read (method, path, signature) is `none`.
pub const ACTIONS: [&str; 6] = [
    "SendFile",
    "DescribeTasks",
    "FerryCancelTask",
    "FerryListInstances",
    "other",
    "none",
];

fn action_slot(action: Option<&str>) -> usize {
    match action {
        None => ACTIONS.len() - 1,
        Some(a) => ACTIONS[..4]
            .iter()
            .position(|known| *known == a)
            .unwrap_or(ACTIONS.len() - 2),
    }
}

/// What the HTTP API counts: requests by action and answer code, latency by action.
#[derive(Debug)]
pub struct ApiCounters {
    /// `(action slot, code)`: the code is an Alibaba error code (a fixed set: ours) or `OK`.
    requests: std::sync::Mutex<std::collections::BTreeMap<(usize, String), u64>>,
    latency: Vec<Histogram>,
    /// Requests being answered now (a drain waits for them).
    in_flight: AtomicU64,
}

impl Default for ApiCounters {
    fn default() -> Self {
        ApiCounters {
            in_flight: AtomicU64::new(0),
            requests: Default::default(),
            latency: ACTIONS
                .iter()
                .map(|_| Histogram::new(&LATENCY_BOUNDS))
                .collect(),
        }
    }
}

/// Counts one request in flight while it lives.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ApiCounters {
    /// A request began: in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        bump(&self.in_flight);
        InFlight(&self.in_flight)
    }

    /// One answered request.
    pub fn record(&self, action: Option<&str>, code: Option<&str>, took: Duration) {
        let slot = action_slot(action);
        let code = code.unwrap_or("OK").to_string();
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((slot, code)).or_default() += 1;
        }
        self.latency[slot].observe(took.as_secs_f64());
    }
}

/// What delivery counts, as it happens.
#[derive(Debug)]
pub struct DeliveryCounters {
    /// Orders queued for the broker: new ones and resends.
    pub orders_published: AtomicU64,
    /// Orders sent again answering an agent's Hello (it reconnected missing them).
    pub orders_resent: AtomicU64,
    /// Agent messages the broker delivered a second time (DUP set): unacknowledged when the
    /// controller's previous connection ended, resent after it reconnected.
    pub redelivered: AtomicU64,
    /// Messages handled and acknowledged, by kind (report, hello, presence).
    pub reports: AtomicU64,
    pub hellos: AtomicU64,
    pub presences: AtomicU64,
    /// Dropped: InstanceId not the topic's instance.
    pub forged: AtomicU64,
    /// Dropped: not valid JSON of its kind, or on a topic that is not ours.
    pub invalid: AtomicU64,
    /// Refused for good by the fleet logic (unknown TaskId, another instance's task).
    pub refused: AtomicU64,
    /// Handling failed in a way worth another try (store away): left for redelivery.
    pub retried: AtomicU64,
    /// One group commit of reports: its time and size.
    pub commit_seconds: Histogram,
    pub group_size: Histogram,
}

impl Default for DeliveryCounters {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        DeliveryCounters {
            orders_published: zero(),
            orders_resent: zero(),
            redelivered: zero(),
            reports: zero(),
            hellos: zero(),
            presences: zero(),
            forged: zero(),
            invalid: zero(),
            refused: zero(),
            retried: zero(),
            commit_seconds: Histogram::new(&COMMIT_BOUNDS),
            group_size: Histogram::new(&GROUP_BOUNDS),
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Everything `/metrics` shows at one scrape.
pub struct Snapshot<'a> {
    pub api: &'a ApiCounters,
    pub delivery: &'a DeliveryCounters,
    /// From the store (possibly a few seconds old), `None` when it did not answer.
    pub counts: Option<&'a OpsCounts>,
    pub broker_connected: bool,
    pub ready: bool,
}

fn status_label(status: Status) -> &'static str {
    status.as_str()
}

pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let d = s.delivery;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    if let Some(counts) = s.counts {
        header(&mut out, "ferry_controller_tasks", "gauge", "Tasks in the store by level (batch: one SendFile; child: one phone's task) and DescribeTasks status; refreshed at most every few seconds.");
        for (level, by) in [("batch", &counts.batches), ("child", &counts.children)] {
            for (i, status) in Status::ALL.into_iter().enumerate() {
                sample(
                    &mut out,
                    "ferry_controller_tasks",
                    &[("level", level), ("status", status_label(status))],
                    by[i],
                );
            }
        }
        header(
            &mut out,
            "ferry_controller_agents_online",
            "gauge",
            "Instances whose agent is online (its presence), from the store.",
        );
        sample(
            &mut out,
            "ferry_controller_agents_online",
            &[],
            counts.agents_online,
        );
        header(
            &mut out,
            "ferry_controller_instances",
            "gauge",
            "Instances registered in the store.",
        );
        sample(
            &mut out,
            "ferry_controller_instances",
            &[],
            counts.instances,
        );
    }
    header(
        &mut out,
        "ferry_controller_orders_published_total",
        "counter",
        "Orders (run, cancel) queued for the broker by this replica, resends included.",
    );
    sample(
        &mut out,
        "ferry_controller_orders_published_total",
        &[],
        get(&d.orders_published),
    );
    header(
        &mut out,
        "ferry_controller_orders_resent_total",
        "counter",
        "Orders sent again answering an agent's Hello (it reconnected without them).",
    );
    sample(
        &mut out,
        "ferry_controller_orders_resent_total",
        &[],
        get(&d.orders_resent),
    );
    header(&mut out, "ferry_controller_messages_redelivered_total", "counter", "Agent messages delivered again, unacknowledged before: after this replica reconnected to its MQTT broker, or (serve --nats) by the shared JetStream consumer after a NAK or the ack wait.");
    sample(
        &mut out,
        "ferry_controller_messages_redelivered_total",
        &[],
        get(&d.redelivered),
    );
    header(
        &mut out,
        "ferry_controller_messages_total",
        "counter",
        "Agent messages handled and acknowledged, by kind; rate() of it is the ingest rate.",
    );
    for (kind, c) in [
        ("report", &d.reports),
        ("hello", &d.hellos),
        ("presence", &d.presences),
    ] {
        sample(
            &mut out,
            "ferry_controller_messages_total",
            &[("kind", kind)],
            get(c),
        );
    }
    header(&mut out, "ferry_controller_messages_dropped_total", "counter", "Agent messages acknowledged and dropped, by reason: forged (InstanceId not its topic's), invalid (not JSON of its kind), refused (the fleet logic said no: unknown or another instance's task).");
    for (reason, c) in [
        ("forged", &d.forged),
        ("invalid", &d.invalid),
        ("refused", &d.refused),
    ] {
        sample(
            &mut out,
            "ferry_controller_messages_dropped_total",
            &[("reason", reason)],
            get(c),
        );
    }
    header(
        &mut out,
        "ferry_controller_messages_retried_total",
        "counter",
        "Agent messages left unacknowledged for the broker to redeliver (the store failed).",
    );
    sample(
        &mut out,
        "ferry_controller_messages_retried_total",
        &[],
        get(&d.retried),
    );
    header(
        &mut out,
        "ferry_controller_report_commit_seconds",
        "histogram",
        "Time of one group commit of reports to the store.",
    );
    d.commit_seconds
        .render(&mut out, "ferry_controller_report_commit_seconds", &[]);
    header(
        &mut out,
        "ferry_controller_report_group_size",
        "histogram",
        "Reports in one group commit.",
    );
    d.group_size
        .render(&mut out, "ferry_controller_report_group_size", &[]);
    header(
        &mut out,
        "ferry_controller_api_requests_total",
        "counter",
        "API requests answered, by action and code (OK, or the Alibaba error code).",
    );
    if let Ok(map) = s.api.requests.lock() {
        for ((slot, code), n) in map.iter() {
            sample(
                &mut out,
                "ferry_controller_api_requests_total",
                &[("action", ACTIONS[*slot]), ("code", code)],
                n,
            );
        }
    }
    header(
        &mut out,
        "ferry_controller_api_requests_in_flight",
        "gauge",
        "API requests being answered now (headers read, answer not yet written).",
    );
    sample(
        &mut out,
        "ferry_controller_api_requests_in_flight",
        &[],
        get(&s.api.in_flight),
    );
    header(
        &mut out,
        "ferry_controller_api_request_duration_seconds",
        "histogram",
        "Time from a request's headers to its answer, by action.",
    );
    for (slot, action) in ACTIONS.iter().enumerate() {
        s.api.latency[slot].render(
            &mut out,
            "ferry_controller_api_request_duration_seconds",
            &[("action", action)],
        );
    }
    header(
        &mut out,
        "ferry_controller_broker_connected",
        "gauge",
        "1 while delivery is connected to its broker.",
    );
    sample(
        &mut out,
        "ferry_controller_broker_connected",
        &[],
        u8::from(s.broker_connected),
    );
    header(
        &mut out,
        "ferry_controller_ready",
        "gauge",
        "1 while /readyz answers 200.",
    );
    sample(&mut out, "ferry_controller_ready", &[], u8::from(s.ready));
    header(
        &mut out,
        "ferry_controller_build_info",
        "gauge",
        "The running build; always 1.",
    );
    sample(
        &mut out,
        "ferry_controller_build_info",
        &[("version", crate::api::VERSION)],
        1,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_actions_share_one_label_and_every_family_is_typed() {
        let api = ApiCounters::default();
        api.record(Some("SendFile"), None, Duration::from_millis(3));
        api.record(
            Some("Evil\"Action"),
            Some("InvalidAction.NotFound"),
            Duration::ZERO,
        );
        api.record(
            Some("Other2"),
            Some("InvalidAction.NotFound"),
            Duration::ZERO,
        );
        api.record(None, Some("IncompleteSignature"), Duration::ZERO);
        let delivery = DeliveryCounters::default();
        bump(&delivery.reports);
        let counts = OpsCounts {
            batches: [1, 0, 2, 0],
            children: [3, 4, 5, 6],
            agents_online: 7,
            instances: 9,
        };
        let text = render(&Snapshot {
            api: &api,
            delivery: &delivery,
            counts: Some(&counts),
            broker_connected: true,
            ready: false,
        });
        for line in [
            "ferry_controller_api_requests_total{action=\"SendFile\",code=\"OK\"} 1\n",
            "ferry_controller_api_requests_total{action=\"other\",code=\"InvalidAction.NotFound\"} 2\n",
            "ferry_controller_api_requests_total{action=\"none\",code=\"IncompleteSignature\"} 1\n",
            "ferry_controller_api_request_duration_seconds_bucket{action=\"SendFile\",le=\"0.005\"} 1\n",
            "ferry_controller_messages_total{kind=\"report\"} 1\n",
            "ferry_controller_tasks{level=\"batch\",status=\"FINISHED\"} 2\n",
            "ferry_controller_tasks{level=\"child\",status=\"FAILED\"} 6\n",
            "ferry_controller_agents_online 7\n",
            "ferry_controller_broker_connected 1\n",
            "ferry_controller_ready 0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Every sample's family has its TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }
}
