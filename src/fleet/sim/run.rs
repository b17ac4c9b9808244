//! The `ferry-fleet-sim` command: options, the sessions started at a steady rate on one
//! runtime, a status line every few seconds, and a clean stop (every session says goodbye).

use super::instances::{self, Login};
use super::tasks::{Behaviour, Counters, SimTasks};
use crate::config::{Config, FleetConfig};
use crate::error::{Code, Error, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A SIMULATOR of many ferry agents for scale runs of ferry-controller: no files move
/// (a SUCCESS names the target path with size 0 and the sha256 of zero bytes); correctness
/// is tested with real `ferry daemon`s. Each session runs the agent's own fleet client
/// (MQTT session, last will, presence, Hello, orders, throttled reports) over simulated tasks.
#[derive(Parser, Debug)]
#[command(name = "ferry-fleet-sim", version)]
pub struct Args {
    /// `INSTANCE_ID PASSWORD` lines, or the outputs of `ferry-controller instance add`
    /// concatenated
    #[arg(long, value_name = "FILE")]
    pub instances: PathBuf,
    /// The broker (`mqtt://HOST:PORT`); repeated for a cluster's nodes (each session then
    /// fails over across them like an agent with `brokers = [...]`); default: the first
    /// `broker = ` of the instances file
    #[arg(long, value_name = "URL")]
    pub broker: Vec<String>,
    /// Play only the first N instances of the file
    #[arg(long, value_name = "N")]
    pub sessions: Option<usize>,
    /// Sessions started per second (a steady ramp instead of every CONNECT at once)
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub connect_rate: u32,
    /// Simulated time from RUNNING to the final state, in milliseconds (0: at once)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub duration_ms: u64,
    /// A running task's progress changes (and is reported) this often, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub progress_ms: u64,
    /// Share of tasks that end FAILED (0 to 1), spread evenly over the process's tasks
    #[arg(long, value_name = "RATIO", default_value_t = 0.0)]
    pub fail_ratio: f64,
    /// The agent error code failing tasks report
    #[arg(long, value_name = "CODE", default_value = "Network.ConnectionReset")]
    pub fail_code: String,
    /// BytesTotal a simulated task reports while it runs
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub bytes: u64,
    /// MQTT keepalive of every session, in seconds
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub keepalive_secs: u64,
    /// QoS of every session's order subscription, as an agent's `fleet.order_qos` (0 on
    /// NATS: no JetStream consumer per session)
    #[arg(long, value_name = "0|1", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub order_qos: u8,
    /// Runtime worker threads (default: one per core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// A status line on stdout this often (0: never)
    #[arg(long, value_name = "S", default_value_t = 5)]
    pub status_secs: u64,
    /// Log level (tracing filter) on stderr
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    pub log_level: String,
}

/// Runs the simulator until SIGTERM or SIGINT; the process's exit status.
pub fn main(args: Args) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferry-fleet-sim: {}: {}", e.code, e.message);
            2
        }
    }
}

fn run(args: Args) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| Error::new(Code::InvalidConfig, format!("--log-level: {e}")))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if !(0.0..=1.0).contains(&args.fail_ratio) {
        return Err(Error::new(
            Code::InvalidConfig,
            "--fail-ratio must be between 0 and 1",
        ));
    }
    let fail_code = Code::parse(&args.fail_code).ok_or_else(|| {
        Error::new(
            Code::InvalidConfig,
            format!(
                "--fail-code {:?} is not an agent error code",
                args.fail_code
            ),
        )
    })?;
    let text = std::fs::read_to_string(&args.instances)
        .map_err(|e| Error::io("reading", &args.instances, &e))?;
    let (mut logins, file_broker) = instances::parse(&text)?;
    if let Some(n) = args.sessions {
        logins.truncate(n);
    }
    let brokers = match (args.broker.clone(), file_broker) {
        (given, _) if !given.is_empty() => given,
        (_, Some(file)) => vec![file],
        _ => {
            return Err(Error::new(
                Code::InvalidConfig,
                "no broker: pass --broker or an instances file with broker = lines",
            ))
        }
    };
    raise_open_files(logins.len());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            args.threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        )
        // Each session reads build.prop once and measures its roots per Hello: a few
        // threads serve them all.
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("cannot start the runtime: {e}")))?;
    let signals = crate::daemon::signals::watch(false)?;
    let behaviour = Behaviour {
        duration: Duration::from_millis(args.duration_ms),
        progress: Duration::from_millis(args.progress_ms.max(1)),
        fail_ratio: args.fail_ratio,
        fail_code,
        bytes: args.bytes,
    };
    runtime.block_on(sessions(args, brokers, logins, behaviour, signals))
}

async fn sessions(
    args: Args,
    brokers: Vec<String>,
    logins: Vec<Login>,
    behaviour: Behaviour,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<crate::daemon::signals::Event>,
) -> Result<()> {
    let config = Arc::new(Config::default());
    let behaviour = Arc::new(behaviour);
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let total = logins.len();
    let started = Instant::now();
    let pace = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    let mut handles = Vec::with_capacity(total);
    let mut stopped = false;
    println!(
        "ferry-fleet-sim: SIMULATED agents, no files move: {total} sessions to {}, duration {} ms, progress every {} ms, fail ratio {} ({})",
        brokers.join(" "),
        args.duration_ms,
        args.progress_ms,
        args.fail_ratio,
        behaviour.fail_code.as_str()
    );
    let mut ticker = tokio::time::interval(pace);
    for login in logins {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = signals.recv() => { stopped = true; break; }
        }
        let fleet = FleetConfig {
            broker: (brokers.len() == 1).then(|| brokers[0].clone()),
            brokers: if brokers.len() > 1 {
                brokers.clone()
            } else {
                Vec::new()
            },
            instance_id: login.instance_id,
            password: login.password,
            ca_file: None,
            keepalive_secs: args.keepalive_secs,
            progress_interval_ms: args.progress_ms,
            order_qos: args.order_qos,
        };
        let tasks = SimTasks::new(config.clone(), behaviour.clone(), counters.clone());
        handles.push(crate::fleet::agent::spawn(tasks, fleet, stop.clone())?);
    }
    println!(
        "ferry-fleet-sim: {} sessions started in {:.1} s",
        handles.len(),
        started.elapsed().as_secs_f64()
    );
    let status = |c: &Counters| {
        println!(
            "ferry-fleet-sim: t={:.0}s sessions={} admitted={} succeeded={} failed={} cancelled={}",
            started.elapsed().as_secs_f64(),
            handles.len(),
            c.admitted.load(Ordering::Relaxed),
            c.succeeded.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.cancelled.load(Ordering::Relaxed),
        );
    };
    if !stopped {
        let every = Duration::from_secs(args.status_secs.max(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every), if args.status_secs > 0 => status(&counters),
                event = signals.recv() => {
                    if matches!(event, Some(crate::daemon::signals::Event::Stop(_)) | None) {
                        break;
                    }
                }
            }
        }
    }
    status(&counters);
    stop.cancel();
    for handle in handles {
        let _ = handle.await;
    }
    println!("ferry-fleet-sim: every session said goodbye");
    Ok(())
}

/// Lifts the soft limit on open files to the hard one: each session holds a socket.
fn raise_open_files(sessions: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    if (lim.rlim_cur as usize) < sessions + 64 {
        tracing::warn!(
            limit = lim.rlim_cur,
            sessions,
            "the open-file limit is below one socket per session"
        );
    }
}
