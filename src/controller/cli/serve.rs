//! `ferry-controller serve`: the store, the fleet logic, MQTT delivery (to the embedded broker
//! or `--broker`), expiry, the public API and (with `--ops-listen`) the operations endpoints,
//! until SIGTERM or SIGINT.
//!
//! The stop drains, in this order: readiness turns 503; the API stops accepting and answers
//! its open requests (up to 10 s); expiry stops; delivery stops handing out messages,
//! commits and acknowledges those its workers hold, then disconnects cleanly; the embedded
//! broker stops; the ops endpoints stop; the store closes (its last reference drops). A second SIGTERM or SIGINT
//! exits at once (the signal watcher's forced exit).

use super::admin::{controller_broker_password, open_store, store_shown, CONTROLLER_USER};
use super::{parse_addr, StateDirArgs};
use crate::controller::broker::{self, BrokerOptions};
use crate::controller::delivery::{Delivery, DeliveryOptions, LocalIngest, NatsOptions};
use crate::controller::ops::Ops;
use crate::controller::ports::{Actions, Credentials, Inbox};
use crate::controller::service::{Fleet, FleetConfig, StoreCredentials};
use crate::controller::store::Store;
use crate::error::{Code, Error, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The state folder (SQLite file, broker credentials and sessions) and `--database`
    #[command(flatten)]
    pub state: StateDirArgs,
    /// Where the API listens (Alibaba's SDK endpoint)
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded MQTT broker listens for agents
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr, default_value = "127.0.0.1:1883", conflicts_with = "broker")]
    pub mqtt_listen: SocketAddr,
    /// Use this external broker (`mqtt://HOST:PORT` or `mqtts://HOST:PORT`) instead of the
    /// embedded one; it must know the controller's user (see `mosquitto-files`). With
    /// `--nats`: the MQTT listeners of the NATS nodes, comma-separated (orders go out
    /// through one, failing over to the next)
    #[arg(long, value_name = "URL[,URL…]")]
    pub broker: Option<String>,
    /// Several controller replicas on a NATS cluster: its nodes (`nats://HOST:4222`,
    /// comma-separated). Agent messages are pulled from the JetStream stream FERRY_AGENTS
    /// through the durable consumer `ferry-controller` shared by every replica; needs
    /// `--broker` (the nodes' MQTT URLs) and a shared `--database postgres://…`
    #[arg(long, value_name = "URL[,URL…]", requires = "broker")]
    pub nats: Option<String>,
    /// The FERRY_AGENTS stream's replicas (fewer if the cluster has fewer nodes)
    #[arg(long, value_name = "N", default_value_t = 3, requires = "nats")]
    pub nats_replicas: usize,
    /// Seconds a message pulled by a replica and not acknowledged (the replica died) waits
    /// before another replica gets it
    #[arg(long, value_name = "SECONDS", default_value_t = 30, requires = "nats")]
    pub nats_ack_wait: u64,
    /// This replica's name, unique among the replicas: its MQTT client id is
    /// `ferry-controller-<ID>` (two replicas with one id would take each other's session).
    /// Random by default
    #[arg(long, value_name = "ID", requires = "nats")]
    pub replica_id: Option<String>,
    /// For an `mqtts://` broker with a private CA: its PEM bundle
    #[arg(long, value_name = "FILE")]
    pub broker_ca: Option<PathBuf>,
    /// A phone's task no agent took this long after SendFile fails (Fleet.InstanceOffline)
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub expiry_secs: u64,
    /// A phone's task still not taken this long after SendFile, while the phone is shown
    /// online, gets its order again (an order the broker lost; agents on NATS subscribe at
    /// QoS 0)
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub resend_secs: u64,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (unauthenticated: an internal
    /// address only); off by default
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr)]
    pub ops_listen: Option<SocketAddr>,
    /// Log filter (RUST_LOG syntax)
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    crate::logging::init(crate::config::LogFormat::Human, &args.log_level, None);
    if args.expiry_secs == 0 || args.resend_secs == 0 {
        return Err(Error::new(
            Code::InvalidConfig,
            "--expiry-secs and --resend-secs must be at least 1",
        ));
    }
    let store: Arc<dyn Store> = open_store(&args.state).await?;
    let password = controller_broker_password(&args.state.state_dir)?;
    let shutdown = CancellationToken::new();
    // The ops listener first: once the API answers, the ops endpoints do too.
    let ops_listener = match args.ops_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let api = bind(args.listen).await?;

    let (broker_url, embedded_opts) = match &args.broker {
        Some(url) => (url.clone(), None),
        None => {
            let mut opts = BrokerOptions::plain(args.mqtt_listen);
            opts.storage_dir = Some(args.state.state_dir.join("broker"));
            opts.ingest = Some(LocalIngest::new());
            (String::new(), Some(opts))
        }
    };
    // The fleet logic needs the outbox before delivery runs, and the broker checks agents
    // against the fleet's credentials: build delivery's options first, connect last.
    let mut options = DeliveryOptions::new(&broker_url, CONTROLLER_USER, &password);
    options.ca_file = args.broker_ca.clone();
    if let Some(nats) = &args.nats {
        options.nats = Some(nats_options(&args, nats)?);
        let replica = match &args.replica_id {
            Some(id) => replica_id(id)?,
            None => format!("{:016x}", fastrand::u64(..)),
        };
        options.client_id = format!("{CONTROLLER_USER}-{replica}");
    }
    let nats_shown = args.nats.as_deref().map(|urls| {
        let urls: Vec<String> = urls.split(',').map(crate::redact::url).collect();
        format!(", NATS {} as {}", urls.join(","), options.client_id)
    });
    let delivery_counters = options.counters.clone();
    let config = FleetConfig {
        expiry: Duration::from_secs(args.expiry_secs),
        resend: Duration::from_secs(args.resend_secs),
        ..FleetConfig::default()
    };
    let credentials: Arc<dyn Credentials> = Arc::new(StoreCredentials(store.clone()));
    let (fleet, broker, delivery) = match embedded_opts {
        Some(opts) => {
            options.local = opts.ingest.clone();
            // The embedded broker first (it checks logins against the store), then delivery.
            let broker = broker::start(
                opts,
                credentials.clone(),
                (CONTROLLER_USER.into(), password.clone()),
            )
            .await?;
            options.broker = format!("mqtt://{}", broker.local_addr());
            let delivery = Delivery::new(options)?;
            let fleet = Arc::new(Fleet::new(store.clone(), delivery.outbox(), config));
            (fleet, Some(broker), delivery)
        }
        None => {
            let delivery = Delivery::new(options)?;
            let fleet = Arc::new(Fleet::new(store.clone(), delivery.outbox(), config));
            (fleet, None, delivery)
        }
    };
    let mut mqtt_shown = broker
        .as_ref()
        .map(|b| format!("embedded broker on mqtt://{}", b.local_addr()))
        .unwrap_or_else(|| {
            let urls: Vec<String> = broker_url.split(',').map(crate::redact::url).collect();
            format!("broker {}", urls.join(","))
        });
    mqtt_shown.push_str(nats_shown.as_deref().unwrap_or(""));
    let delivering = delivery.run(fleet.clone() as Arc<dyn Inbox>);
    let settings = crate::controller::api::Settings::default();
    let ops = Arc::new(Ops::new(
        store.clone(),
        delivering.connected(),
        settings.counters.clone(),
        delivery_counters,
    ));
    let ops_stop = CancellationToken::new();
    let mut ops_shown = String::new();
    let ops_server = match ops_listener {
        Some(listener) => {
            if let Ok(addr) = listener.local_addr() {
                ops_shown = format!(", ops on http://{addr}");
            }
            Some(tokio::spawn(crate::controller::ops::serve(
                listener,
                ops.clone(),
                ops_stop.clone(),
            )))
        }
        None => None,
    };
    let expiry = {
        let (fleet, stop) = (fleet.clone(), shutdown.clone());
        tokio::spawn(async move { fleet.run_expiry(stop.cancelled_owned()).await })
    };
    let resend = {
        let (fleet, stop) = (fleet.clone(), shutdown.clone());
        tokio::spawn(async move { fleet.run_resend(stop.cancelled_owned()).await })
    };
    let api_addr = api
        .local_addr()
        .map_err(|e| Error::new(Code::Internal, e.to_string()))?;
    let api_runtime = api_runtime()?;
    let api = api
        .into_std()
        .map_err(|e| Error::new(Code::Internal, format!("the API listener: {e}")))?;
    let server = {
        let (actions, shutdown) = (fleet.clone() as Arc<dyn Actions>, shutdown.clone());
        api_runtime.spawn(async move {
            // Registered with this runtime's reactor, so its connections are too.
            match tokio::net::TcpListener::from_std(api) {
                Ok(api) => {
                    crate::controller::api::serve_with(
                        api,
                        settings,
                        actions,
                        credentials,
                        shutdown,
                    )
                    .await
                }
                Err(e) => tracing::error!(error = %e, "the API listener"),
            }
        })
    };
    tracing::info!(api = %api_addr, mqtt = %mqtt_shown, state = %args.state.state_dir.display(), store = %store_shown(&args.state), "ferry-controller serving");
    println!("ferry-controller: API on http://{api_addr}, {mqtt_shown}{ops_shown}");
    wait_for_stop().await?;
    tracing::info!("draining: readiness fails, the API answers its open requests");
    ops.start_draining();
    shutdown.cancel();
    let _ = server.await;
    let _ = expiry.await;
    let _ = resend.await;
    tracing::info!("draining: delivery finishes the messages it holds");
    delivering.stop().await;
    if let Some(broker) = broker {
        broker.stop().await;
    }
    // Its tasks ended with the server; nothing left to wait for.
    api_runtime.shutdown_background();
    ops_stop.cancel();
    if let Some(ops_server) = ops_server {
        let _ = ops_server.await;
    }
    // The last references to the store: its connections close.
    drop((fleet, ops, store));
    tracing::info!("stopped");
    Ok(())
}

fn nats_options(args: &ServeArgs, urls: &str) -> Result<NatsOptions> {
    let servers: Vec<String> = urls
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if servers.is_empty() || args.nats_replicas == 0 || args.nats_ack_wait == 0 {
        return Err(Error::new(
            Code::InvalidConfig,
            "--nats needs at least one URL, --nats-replicas and --nats-ack-wait at least 1",
        ));
    }
    let mut options = NatsOptions::new(servers);
    options.replicas = args.nats_replicas;
    options.ack_wait = Duration::from_secs(args.nats_ack_wait);
    Ok(options)
}

/// A `--replica-id` usable in an MQTT client id on any broker: 1–32 of `A-Z a-z 0-9 - _`.
fn replica_id(id: &str) -> Result<String> {
    let ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(Error::new(
            Code::InvalidConfig,
            format!("--replica-id {id:?} must be 1 to 32 characters of A-Z a-z 0-9 - _"),
        ))
    }
}

/// The API's own threads. On the main runtime an API call queued behind the broker's and
/// delivery's tasks (thousands at 5,000 phones): DescribeTasks' p99 was 5× its p50 though each
/// query takes under a millisecond. Here the kernel shares the CPU between its threads and the
/// rest, and no broker task is ever ahead of it in a queue.
fn api_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(API_THREADS)
        .thread_name("ferry-api")
        .enable_all()
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("starting the API threads: {e}")))
}

/// Threads serving the API (SendFile, DescribeTasks…): its work is signature checks, JSON and
/// waiting for the store's own threads.
const API_THREADS: usize = 2;

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(Code::InvalidConfig, format!("cannot listen on {addr}: {e}")))
}

/// SIGTERM or SIGINT (through the daemon's signal watcher).
async fn wait_for_stop() -> Result<()> {
    let mut events = crate::daemon::signals::watch(false)?;
    while let Some(event) = events.recv().await {
        if let crate::daemon::signals::Event::Stop(name) = event {
            tracing::info!(signal = name, "stop requested");
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_plain_short_names() {
        assert_eq!(replica_id("r-1_a").unwrap(), "r-1_a");
        for bad in ["", "a/b", "a+b", "a#", "a b", &"x".repeat(33)] {
            let e = replica_id(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{bad:?}");
        }
    }
}
