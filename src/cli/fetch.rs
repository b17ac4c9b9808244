//! `ferry fetch`: one payload in-process, no daemon and no journal (scripts, benchmarks).
//! The payload is checked exactly as the daemon would (exit 2 when invalid), the transfer
//! shows a progress line, and Ctrl-C cancels it cleanly (the staging file is removed).

use super::payload_args::PayloadArgs;
use super::progress::Progress;
use super::{print_json, GlobalArgs, TransferArgs, EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE};
use crate::config::Config;
use crate::daemon::signals::{self, Event};
use crate::error::{Code, Error};
use crate::paths::{DevicePath, Roots};
use crate::pipeline::{self, ProgressFn};
use crate::task::payload;
use crate::task::record::TaskResult;
use clap::Args;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Print the result ({"Files": [...]}) as JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// No progress line
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub payload: PayloadArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

pub async fn run(global: &GlobalArgs, args: FetchArgs) -> u8 {
    let config = match global.load_config(&args.transfer.apply(global.overrides())) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    global.init_quiet_logging(Some(&config));
    let payload = args.payload.clone();
    let loaded = tokio::task::spawn_blocking(move || payload.load())
        .await
        .unwrap_or_else(|e| {
            Err(Error::new(
                Code::Internal,
                format!("reading the payload: {e}"),
            ))
        });
    let task = match loaded.and_then(|(_, parsed)| payload::validate(parsed, &config.allowed_roots))
    {
        Ok(task) => task,
        Err(e) => return usage(&e),
    };
    for note in &task.notes {
        eprintln!("note: {note}");
    }
    let cancel = CancellationToken::new();
    match signals::watch(false) {
        Ok(mut events) => {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let Event::Stop(name) = event {
                        eprintln!("\n{name}: cancelling (again to exit at once)");
                        cancel.cancel();
                    }
                }
            });
        }
        Err(e) => tracing::warn!("Ctrl-C will not cancel cleanly: {e}"),
    }
    let bar = Arc::new(Mutex::new((!args.quiet).then(|| Progress::new(""))));
    let on_progress: ProgressFn = {
        let bar = bar.clone();
        Arc::new(move |done, total| {
            if let Some(bar) = bar.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                bar.update(done, total);
            }
        })
    };
    let result = pipeline::fetch_once(&config, task, on_progress, cancel).await;
    if let Some(bar) = bar.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        match &result {
            Ok(_) => bar.finish(),
            Err(_) => bar.clear_line(),
        }
    }
    match result {
        Ok(result) => print_result(&config, &result, args.json),
        Err(e) => {
            eprintln!("{}: {}", e.code, e.message);
            EXIT_TASK_FAILED
        }
    }
}

fn usage(e: &Error) -> u8 {
    eprintln!("{}: {}", e.code, e.message);
    EXIT_USAGE
}

/// Prints what landed; the exit status is a failure when AutoInstall was refused, as the
/// daemon then marks the task FAILED.
fn print_result(config: &Config, result: &TaskResult, json: bool) -> u8 {
    let verdict = match result.install.as_ref().and_then(|i| i.failure()) {
        Some(_) => EXIT_TASK_FAILED,
        None => EXIT_OK,
    };
    if json {
        return match print_json(result) {
            Ok(()) => verdict,
            Err(e) => {
                eprintln!("{}: {}", e.code, e.message);
                EXIT_TASK_FAILED
            }
        };
    }
    let roots = config
        .device_root
        .as_ref()
        .and_then(|_| Roots::new(config.device_root.clone(), &config.allowed_roots).ok());
    for f in &result.files {
        let host = roots
            .as_ref()
            .zip(DevicePath::parse(&f.path).ok())
            .map(|(r, p)| format!(" (host {})", r.host_path(&p).display()))
            .unwrap_or_default();
        println!("{}{host} {} sha256 {}", f.path, f.size, f.sha256);
    }
    for note in &result.notes {
        eprintln!("note: {note}");
    }
    if let Some(install) = &result.install {
        let code = install
            .error_code
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "Success".into());
        println!("install: {code}: {}", install.message);
    }
    verdict
}
