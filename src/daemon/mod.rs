//! `ferry daemon`: the local HTTP API in front of the task manager.
//!
//! Shaped like mini-redis: [`run`] serves the bound [`Listeners`] until the `shutdown` future
//! completes (the CLI passes a signal future, tests a oneshot), then stops accepting, lets the
//! manager checkpoint its transfers, and closes the open connections. [`serve_forever`] is
//! the CLI's whole daemon: state directory, token, sockets, manager, signals, address file.

pub mod auth;
pub mod bind;
pub mod metrics;
pub mod routes;
pub mod signals;

pub use bind::{Listeners, Published};

use crate::config::{Config, Overrides};
use crate::error::{Code, Error, Result};
use crate::net::connections::{accept_failed, Connections};
use crate::task::manager::Manager;
use routes::Shared;
use signals::Event;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long open connections may take to finish their reply once the manager stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the fleet link may take to publish its offline presence and disconnect.
const FLEET_STOP_WAIT: Duration = Duration::from_secs(4);

/// A daemon that is ready to serve: what [`start`] prepared for [`run`].
pub struct Started {
    /// The task manager, journal opened and interrupted tasks resumed.
    pub manager: Manager,
    /// The bound sockets, not yet accepting: [`run`] serves them.
    pub listeners: Listeners,
    /// Removes `api.json` when dropped, after `run` returned.
    pub published: Published,
}

/// Creates the state directory and token, binds the sockets (refusing to start beside a
/// live daemon), switches to the `run_as` identity if one is set, starts the manager, and
/// publishes `api.json` once all of it worked.
pub async fn start(config: Config) -> Result<Started> {
    auth::create_state_dir(&config.state_dir)?;
    let token = auth::load_or_create_token(&config.state_dir)?;
    // Bind before the manager opens the journal: a second daemon on the same state
    // directory must fail here, not after touching the first one's tasks.
    let listeners = Listeners::bind(&config, token).await?;
    // Root is needed for nothing after this: drop it before the journal's tasks resume.
    if let Some(run_as) = config
        .run_as
        .clone()
        .filter(crate::android::privileges::needed)
    {
        let (state_dir, socket) = (config.state_dir.clone(), config.socket_path());
        let who = run_as.clone();
        tokio::task::spawn_blocking(move || {
            crate::android::privileges::hand_over(&who, &state_dir, &socket)
        })
        .await
        .map_err(|e| Error::new(Code::Internal, format!("handing over the state: {e}")))??;
        // On this thread, which runs the tasks (see `privileges::switch`).
        crate::android::privileges::switch(&run_as)?;
    }
    let state_dir = config.state_dir.clone();
    let manager = Manager::start(config).await?;
    let published = listeners.publish(&state_dir)?;
    Ok(Started {
        manager,
        listeners,
        published,
    })
}

/// Serves the API (and the fleet link when `[fleet]` is set) until `shutdown` completes,
/// then says goodbye to the fleet and shuts the manager down cleanly.
pub async fn run(
    manager: Manager,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let Listeners { tcp, unix, token } = listeners;
    let fleet_stop = CancellationToken::new();
    let fleet = match manager.config().fleet.clone() {
        Some(fleet) => Some(crate::fleet::agent::spawn(
            manager.clone(),
            fleet,
            fleet_stop.clone(),
        )?),
        None => None,
    };
    let shared = Arc::new(Shared {
        manager: manager.clone(),
        token,
        stopping: AtomicBool::new(false),
    });
    let stop = CancellationToken::new();
    let connections = Connections::new(stop.clone());
    let handle = {
        let shared = shared.clone();
        move |req| routes::handle(shared.clone(), req)
    };
    let (unix, socket_file) = match unix {
        Some((listener, file)) => (Some(listener), Some(file)),
        None => (None, None),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    connections.serve(stream, handle.clone());
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok(stream) => connections.serve(stream, handle.clone()),
                Err(e) => accept_failed(e).await,
            },
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    info!("shutting down: no new connections; checkpointing running transfers");
    drop((tcp, unix, socket_file));
    // Offline (retained) before the transfers stop: the controller must not take their
    // interruption for an outcome.
    fleet_stop.cancel();
    if let Some(fleet) = fleet {
        let _ = tokio::time::timeout(FLEET_STOP_WAIT, fleet).await;
    }
    manager.shutdown().await;
    stop.cancel();
    connections.drain(DRAIN_TIMEOUT).await;
    info!("stopped");
    Ok(())
}

async fn accept_tcp(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// The whole `ferry daemon`: serve until SIGTERM/SIGINT, reload the configuration on SIGHUP
/// from the same file, environment and flags it was first built from.
pub async fn serve_forever(
    config: Config,
    config_file: Option<PathBuf>,
    overrides: Overrides,
) -> Result<()> {
    // Watch signals first, so a SIGTERM during startup is not lost.
    let events = signals::watch(true)?;
    let Started {
        manager,
        listeners,
        published,
    } = start(config).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(follow_signals(
        events,
        manager.clone(),
        config_file,
        overrides,
        stop_tx,
    ));
    let result = run(manager, listeners, async {
        let _ = stop_rx.await;
    })
    .await;
    drop(published);
    result
}

async fn follow_signals(
    mut events: mpsc::UnboundedReceiver<Event>,
    manager: Manager,
    config_file: Option<PathBuf>,
    overrides: Overrides,
    stop_tx: oneshot::Sender<()>,
) {
    let mut stop_tx = Some(stop_tx);
    while let Some(event) = events.recv().await {
        match event {
            Event::Stop(name) => {
                info!("{name} received: stopping cleanly (send it again to exit at once)");
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
            Event::Reload => reload(&manager, config_file.clone(), overrides.clone()).await,
        }
    }
}

/// SIGHUP: builds the configuration again; a bad file is reported and the old one kept.
pub async fn reload(manager: &Manager, file: Option<PathBuf>, overrides: Overrides) {
    let source = describe_source(file.as_deref());
    let loaded = tokio::task::spawn_blocking(move || {
        Config::load(file.as_deref(), &|k| std::env::var(k).ok(), &overrides)
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::new(
            Code::Internal,
            format!("loading the configuration: {e}"),
        ))
    });
    let old = manager.config();
    // run_as only changes at a restart: the daemon still runs as the old one.
    let loaded = loaded.and_then(
        |new| match new.install_identity_problem(old.run_as.as_ref()) {
            Some(problem) => Err(Error::new(
                Code::InvalidConfig,
                format!("{problem} (the daemon runs as the run_as it started with)"),
            )),
            None => Ok(new),
        },
    );
    match loaded {
        Ok(new) => {
            for field in restart_only_changes(&old, &new) {
                warn!("SIGHUP: {field} changed in {source}; that takes a restart to apply");
            }
            manager.reload(new).await;
            info!("SIGHUP: configuration reloaded from {source}");
        }
        Err(e) => {
            error!("SIGHUP: keeping the running configuration; reloading {source} failed: {e}")
        }
    }
}

fn describe_source(file: Option<&Path>) -> String {
    match file {
        Some(f) => f.display().to_string(),
        None => "the defaults, environment and flags".to_string(),
    }
}

/// Settings read once at start (sockets, state, logging, identity) that a reload cannot change.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.state_dir != new.state_dir {
        changed.push("state_dir");
    }
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.socket_path() != new.socket_path() {
        changed.push("socket");
    }
    if old.log_format != new.log_format
        || old.log_level != new.log_level
        || old.logcat != new.logcat
    {
        changed.push("logging");
    }
    if old.run_as != new.run_as {
        changed.push("run_as");
    }
    if old.fleet != new.fleet {
        changed.push("fleet");
    }
    changed
}
