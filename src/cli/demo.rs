//! `ferry demo`: the whole product on one machine in one command. A daemon (the same
//! `daemon::start` + `daemon::run` as `ferry daemon`, real HTTP API) and a local file server
//! start in-process in a fresh folder under /var/tmp; one DOWNLOAD_URL task goes through the
//! API with the real client; the result is checked against the served file's sha256; then
//! the daemon shuts down cleanly (or, with `--keep-running`, waits for Ctrl-C).

use super::progress::human_bytes;
use super::{report, send, GlobalArgs, EXIT_OK, EXIT_TASK_FAILED};
use crate::api::client::Client;
use crate::config::Config;
use crate::daemon::{self, auth, signals, Started};
use crate::demo_server::DemoServer;
use crate::error::{Code, Error, Result};
use crate::paths::{DevicePath, Roots};
use crate::task::record::{Phase, TaskView};
use clap::Args;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// Where the demo's file lands on the (stand-in) device.
const DEVICE_PATH: &str = "/sdcard/Download/ferry-demo.bin";

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keep the daemon running after the demo transfer, until Ctrl-C
    #[arg(long)]
    pub keep_running: bool,
    /// Size of the served file in MiB
    #[arg(long = "size-mib", value_name = "N", default_value_t = 64)]
    pub size_mib: u64,
}

pub async fn run(global: &GlobalArgs, args: DemoArgs) -> u8 {
    global.init_quiet_logging(None);
    match demo(args).await {
        Ok(status) => status,
        Err(e) => report(&e),
    }
}

async fn demo(args: DemoArgs) -> Result<u8> {
    let mut events = signals::watch(false)?;
    let dir = make_work_dir()?;
    println!("ferry demo: working in {}", dir.display());
    let config = Config {
        state_dir: dir.join("state"),
        device_root: Some(dir.join("device")),
        listen: Some(([127, 0, 0, 1], 0).into()),
        socket: None,
        ..Config::default()
    };
    let Started {
        manager,
        listeners,
        published,
    } = daemon::start(config.clone()).await?;
    let info = listeners.info();
    println!(
        "daemon:      API on http://{} and unix:{}",
        info.listen.as_deref().unwrap_or("-"),
        info.socket.as_deref().unwrap_or(Path::new("-")).display()
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon_task = tokio::spawn(daemon::run(manager, listeners, async {
        let _ = stop_rx.await;
    }));
    let outcome = match serve_file(&args).await {
        Ok(server) => {
            let outcome = transfer(&config, &server, &mut events).await;
            if let (Ok(EXIT_OK), true) = (&outcome, args.keep_running) {
                keep_running(&config, &server, &mut events).await;
            }
            outcome
        }
        Err(e) => Err(e),
    };
    println!("stopping the daemon");
    let _ = stop_tx.send(());
    match daemon_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("the daemon stopped with an error: {e}"),
        Err(e) => eprintln!("the daemon task failed: {e}"),
    }
    drop(published);
    println!(
        "done; files are kept in {} (remove it with rm -r)",
        dir.display()
    );
    outcome
}

async fn serve_file(args: &DemoArgs) -> Result<DemoServer> {
    let size = args.size_mib.saturating_mul(1 << 20);
    println!(
        "file server: preparing {} of pseudo-random data",
        human_bytes(size)
    );
    let server = DemoServer::start(size).await?;
    println!("file server: {} (sha256 {})", server.url(), server.sha256());
    Ok(server)
}

/// Submits the served file through the API, follows it, verifies the result.
async fn transfer(
    config: &Config,
    server: &DemoServer,
    events: &mut mpsc::UnboundedReceiver<signals::Event>,
) -> Result<u8> {
    let client = Client::discover(&config.state_dir, None, None, None)?;
    let payload = serde_json::json!({
        "SourceFilePath": DEVICE_PATH,
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": server.url(),
    });
    let (view, _) = client.submit(payload.to_string().as_bytes()).await?;
    println!(
        "submitted:   task {} through {}",
        view.task_id,
        client.endpoint()
    );
    let view = tokio::select! {
        followed = send::follow(&client, &view.task_id, true) => followed?,
        _ = next_stop(events) => {
            eprintln!("interrupted: cancelling {}", view.task_id);
            client.cancel(&view.task_id).await?;
            return Ok(EXIT_TASK_FAILED);
        }
    };
    Ok(show_result(config, &view, server))
}

fn show_result(config: &Config, view: &TaskView, server: &DemoServer) -> u8 {
    println!("task:        {} {}", view.task_id, view.phase.as_str());
    if view.phase != Phase::Success {
        send::outcome(view);
        return EXIT_TASK_FAILED;
    }
    let Some(file) = view.result.as_ref().and_then(|r| r.files.first()) else {
        eprintln!("Internal: the task succeeded but reports no file");
        return EXIT_TASK_FAILED;
    };
    let host = Roots::new(config.device_root.clone(), &config.allowed_roots)
        .ok()
        .zip(DevicePath::parse(&file.path).ok())
        .map(|(roots, path)| roots.host_path(&path));
    println!("device path: {}", file.path);
    if let Some(host) = &host {
        println!("host path:   {}", host.display());
    }
    println!(
        "size:        {} bytes ({})",
        file.size,
        human_bytes(file.size)
    );
    println!("sha256:      {}", file.sha256);
    let on_disk = host
        .as_ref()
        .and_then(|h| std::fs::metadata(h).ok())
        .map(|m| m.len());
    if file.sha256 == server.sha256() && file.size == server.size() && on_disk == Some(file.size) {
        println!("verified:    sha256 and size match the served file");
        EXIT_OK
    } else {
        eprintln!(
            "Integrity: the result does not match the served file (sha256 {}, {} bytes)",
            server.sha256(),
            server.size()
        );
        EXIT_TASK_FAILED
    }
}

async fn keep_running(
    config: &Config,
    server: &DemoServer,
    events: &mut mpsc::UnboundedReceiver<signals::Event>,
) {
    let state = config.state_dir.display();
    println!();
    println!("the daemon and the file server keep running; press Ctrl-C to stop. Meanwhile, try:");
    println!("  ferry tasks --state-dir {state}");
    println!(
        "  ferry send --state-dir {state} --url {} --source-path /sdcard/Download/copy.bin --wait",
        server.url()
    );
    println!(
        "  ferry send --state-dir {state} --url '{}?rate=1000000' --source-path /sdcard/Download/slow.bin --wait",
        server.url()
    );
    println!("  curl -H \"Authorization: Bearer $(cat {state}/token)\" --unix-socket {state}/ferry.sock http://localhost/metrics");
    next_stop(events).await;
}

async fn next_stop(events: &mut mpsc::UnboundedReceiver<signals::Event>) {
    while let Some(event) = events.recv().await {
        if let signals::Event::Stop(_) = event {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// A fresh private folder `ferry-demo-XXXXXXXX` under /var/tmp, else `$TMPDIR`, else
/// /data/local/tmp: a phone has neither /var/tmp nor /tmp.
fn make_work_dir() -> Result<PathBuf> {
    let tmpdir = std::env::var_os("TMPDIR").map(PathBuf::from);
    let base = [
        Some(PathBuf::from("/var/tmp")),
        tmpdir,
        Some(PathBuf::from("/data/local/tmp")),
    ]
    .into_iter()
    .flatten()
    .find(|d| d.is_dir())
    .unwrap_or_else(std::env::temp_dir);
    for _ in 0..8 {
        let dir = base.join(format!("ferry-demo-{}", auth::random_hex(4)?));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating the demo folder", &dir, &e)),
        }
    }
    Err(Error::new(
        Code::StorageIo,
        format!("could not create a fresh demo folder in {}", base.display()),
    ))
}
