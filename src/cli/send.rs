//! `ferry send`: submits a payload through the daemon's API (`POST /v1/tasks`) and, with
//! `--wait`, follows it (`GET /v1/tasks/{id}` every 250 ms) with a progress line until it
//! finishes: exit 0 on SUCCESS, 1 on FAILED or CANCELLED.

use super::payload_args::PayloadArgs;
use super::progress::Progress;
use super::{print_json, report, ConnectArgs, GlobalArgs, EXIT_OK, EXIT_TASK_FAILED};
use crate::api::client::Client;
use crate::error::{Code, Error, Result};
use crate::task::record::{Phase, TaskView};
use clap::Args;
use std::time::Duration;

const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Follow the task until it finishes; exit 1 if it fails or is cancelled
    #[arg(long)]
    pub wait: bool,
    /// Print the task (the final one with --wait) as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress line while waiting
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub payload: PayloadArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(global: &GlobalArgs, args: SendArgs) -> u8 {
    let payload = args.payload.clone();
    let loaded = tokio::task::spawn_blocking(move || payload.load())
        .await
        .unwrap_or_else(|e| {
            Err(Error::new(
                Code::Internal,
                format!("reading the payload: {e}"),
            ))
        });
    let json = match loaded {
        Ok((json, _)) => json,
        Err(e) => return report(&e),
    };
    let client = match global.client(&args.connect) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    let (view, created) = match client.submit(&json).await {
        Ok(submitted) => submitted,
        Err(e) => return report(&e),
    };
    if !created {
        eprintln!(
            "task {} was already known ({}); not submitted again",
            view.task_id,
            view.phase.as_str()
        );
    }
    if !args.json {
        println!("{}", view.task_id);
    }
    if !args.wait {
        if args.json {
            if let Err(e) = print_json(&view) {
                return report(&e);
            }
        }
        return EXIT_OK;
    }
    let last = match follow(&client, &view.task_id, !args.quiet).await {
        Ok(v) => v,
        Err(e) => return report(&e),
    };
    if args.json {
        if let Err(e) = print_json(&last) {
            return report(&e);
        }
    }
    outcome(&last)
}

/// Polls a task until it is finished, drawing its progress when `show` is set.
pub async fn follow(client: &Client, id: &str, show: bool) -> Result<TaskView> {
    let mut bar = show.then(|| Progress::new(id));
    loop {
        let view = client.describe(id).await?;
        if let Some(bar) = bar.as_mut() {
            if view.phase == Phase::Installing {
                bar.set_label(format!("{id} installing"));
            }
            bar.update(view.bytes_done, view.bytes_total);
        }
        if view.phase.is_finished() {
            if let Some(bar) = bar.as_mut() {
                bar.finish();
            }
            return Ok(view);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reports a finished task on stderr; the exit status follows its phase.
pub fn outcome(view: &TaskView) -> u8 {
    if view.phase == Phase::Success {
        for line in super::tasks::result_lines(view) {
            eprintln!("{line}");
        }
        return EXIT_OK;
    }
    let code = view
        .error_code
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_else(|| view.phase.as_str().to_string());
    let msg = view.error_msg.as_deref().unwrap_or("no message");
    eprintln!("{code}: {msg}");
    EXIT_TASK_FAILED
}
