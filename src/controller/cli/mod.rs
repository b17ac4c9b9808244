//! The `ferry-controller` command line: `serve` runs the cloud side; `access-key`,
//! `instance` and `mosquitto-files` manage its credentials in the state folder; `send-file`,
//! `describe-tasks`, `list-instances` and `cancel` are one more client of the public API,
//! signing each request as Alibaba's SDK does.
//!
//! Exit statuses: 0 ok, 1 a task failed (`--watch`), 2 bad input or an API error.

mod admin;
pub mod client;
mod serve;
mod watch;

use crate::error::Error;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const EXIT_OK: u8 = 0;
pub const EXIT_TASK_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// tokio's blocking pool (default 512).
const MAX_BLOCKING_THREADS: usize = 16;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-controller",
    version,
    about = "The fleet side of ferry: Alibaba Cloud Phone's SendFile and DescribeTasks over MQTT",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API (and, without --broker, an embedded MQTT broker)
    Serve(serve::ServeArgs),
    /// API AccessKey pairs
    #[command(subcommand)]
    AccessKey(AccessKeyCommand),
    /// Phones (instances) and their agents' MQTT credentials
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Write mosquitto's password and ACL files for an external broker
    MosquittoFiles(admin::MosquittoArgs),
    /// Write nats-server's users (bcrypt passwords, per-agent permissions) for a NATS cluster
    NatsFiles(admin::NatsArgs),
    /// SendFile to one or more phones, signed like Alibaba's SDK
    SendFile(client::SendFileArgs),
    /// DescribeTasks: batches and per-phone tasks
    DescribeTasks(client::DescribeArgs),
    /// FerryListInstances: every phone, online or not, with its agent
    ListInstances(client::EndpointArgs),
    /// FerryCancelTask: a batch or one phone's task
    Cancel(client::CancelArgs),
}

#[derive(Subcommand, Debug)]
enum AccessKeyCommand {
    /// Create a pair; prints one line `ACCESS_KEY_ID ACCESS_KEY_SECRET`
    Create(StateDirArgs),
}

#[derive(Subcommand, Debug)]
enum InstanceCommand {
    /// Register a phone; prints the agent's `[fleet]` TOML (broker, instance id, password)
    Add(admin::InstanceAddArgs),
}

#[derive(Args, Debug, Clone)]
pub struct StateDirArgs {
    /// The controller's state folder (SQLite file, broker credentials)
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Keep tasks, instances and AccessKeys in this PostgreSQL database instead of the
    /// state folder's SQLite file (`postgres://USER@HOST:PORT/DB`; the password from
    /// `PGPASSWORD` when the URL has none)
    #[arg(long, value_name = "URL", value_parser = DatabaseUrl::parse)]
    pub database: Option<DatabaseUrl>,
}

/// A `--database` connection string. It may hold a password, so its `Debug` (and anything
/// that prints the parsed arguments) shows it redacted.
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// Takes any text: clap repeats a refused value in its message, password included, so
    /// the URL is checked when the store opens (`admin::open_store`), where errors show it
    /// redacted.
    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        Ok(DatabaseUrl(text.to_string()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", crate::redact::url(&self.0))
    }
}

pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not IP:PORT ({e})"))
}

/// Parses and runs; returns the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
        }
    };
    // The blocking pool serves the embedded broker's file I/O (tokio::fs) and the password
    // checks; the store has threads of its own. Bounded, so a burst of persisted messages
    // queues instead of growing hundreds of threads, each with its own stack.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-controller: cannot start the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let outcome: Result<u8, Error> = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| EXIT_OK),
            Command::AccessKey(AccessKeyCommand::Create(args)) => {
                admin::access_key_create(&args).await.map(|()| EXIT_OK)
            }
            Command::Instance(InstanceCommand::Add(args)) => {
                admin::instance_add(&args).await.map(|()| EXIT_OK)
            }
            Command::MosquittoFiles(args) => admin::mosquitto_files(&args).await.map(|()| EXIT_OK),
            Command::NatsFiles(args) => admin::nats_files(&args).await.map(|()| EXIT_OK),
            Command::SendFile(args) => client::send_file(args).await,
            Command::DescribeTasks(args) => client::describe_tasks(args).await,
            Command::ListInstances(args) => client::list_instances(args).await,
            Command::Cancel(args) => client::cancel(args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry-controller: {}: {}", e.code, e.message);
            EXIT_ERROR
        }
    }
}
