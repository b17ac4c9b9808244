//! `GET /metrics`: the manager's counters in the Prometheus text exposition format 0.0.4.
//!
//! Every phase is reported, zeros included, so a dashboard's series do not appear and vanish
//! as tasks come and go.

use crate::api::VERSION;
use crate::task::manager::Metrics;
use crate::task::record::Phase;
use std::fmt::Write;

pub use crate::prometheus::CONTENT_TYPE;
use crate::prometheus::{escape, header};

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Running => "running",
        Phase::Installing => "installing",
        Phase::Success => "success",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
    }
}

pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "ferry_tasks",
        "gauge",
        "Tasks the daemon knows, by phase.",
    );
    for phase in Phase::ALL {
        let count: u64 = m
            .tasks_by_phase
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, n)| *n)
            .sum();
        let _ = writeln!(
            out,
            "ferry_tasks{{phase=\"{}\"}} {count}",
            phase_label(phase)
        );
    }
    header(
        &mut out,
        "ferry_tasks_submitted_total",
        "counter",
        "Tasks accepted since the daemon started.",
    );
    let _ = writeln!(out, "ferry_tasks_submitted_total {}", m.submitted_total);
    header(
        &mut out,
        "ferry_bytes_downloaded_total",
        "counter",
        "Bytes written by transfers since the daemon started.",
    );
    let _ = writeln!(out, "ferry_bytes_downloaded_total {}", m.bytes_total);
    header(
        &mut out,
        "ferry_task_failures_total",
        "counter",
        "Tasks that failed, by error code.",
    );
    for (code, n) in &m.failures_by_code {
        let _ = writeln!(
            out,
            "ferry_task_failures_total{{code=\"{}\"}} {n}",
            escape(code.as_str())
        );
    }
    header(
        &mut out,
        "ferry_retries_total",
        "counter",
        "Transfer attempts retried after a transient failure.",
    );
    let _ = writeln!(out, "ferry_retries_total {}", m.retries_total);
    header(
        &mut out,
        "ferry_build_info",
        "gauge",
        "The running build; always 1.",
    );
    let _ = writeln!(out, "ferry_build_info{{version=\"{}\"}} 1", escape(VERSION));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics {
            tasks_by_phase: vec![(Phase::Running, 2), (Phase::Success, 5)],
            submitted_total: 7,
            bytes_total: 1024,
            failures_by_code: vec![(Code::SourceNotFound.into(), 1)],
            retries_total: 3,
        };
        let text = render(&m);
        assert!(
            text.contains("ferry_tasks{phase=\"running\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ferry_tasks{phase=\"pending\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("ferry_tasks_submitted_total 7\n"));
        assert!(text.contains("ferry_bytes_downloaded_total 1024\n"));
        assert!(text.contains("ferry_task_failures_total{code=\"Source.NotFound\"} 1\n"));
        assert!(text.contains("ferry_retries_total 3\n"));
        assert!(text.contains("# TYPE ferry_tasks gauge\n"));
        assert!(text.contains(&format!("ferry_build_info{{version=\"{VERSION}\"}} 1\n")));
    }
}
