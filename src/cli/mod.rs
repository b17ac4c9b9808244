//! The `ferry` command line: global flags, one subcommand per file, one dispatch `match`,
//! and the mapping from errors to exit statuses (0 ok, 1 task failed, 2 bad input or usage,
//! 3 no daemon reachable).
//!
//! Client subcommands (`send`, `tasks`, `cancel`) pair with the daemon's routes; `fetch`
//! runs a payload in-process; `demo` (only in builds with the `demo` feature) runs a daemon
//! and a file server in-process.

pub mod cancel;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fetch;
pub mod payload_args;
pub mod progress;
pub mod send;
pub mod tasks;

use crate::api::client::Client;
use crate::config::{Config, LogFormat, Overrides};
use crate::error::{Code, Error, Result};
use crate::task::record::TaskView;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Exit statuses, stable for scripts.
pub const EXIT_OK: u8 = 0;
pub const EXIT_TASK_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "On-device transfer agent for Android cloud phones",
    disable_help_subcommand = true
)]
#[cfg_attr(
    feature = "demo",
    command(
        long_about = "ferry takes SendFile task payloads (DOWNLOAD_URL, OSS, OSS_BRIDGED), fetches \
            the files with resume and verification, and reports their status.\n\n\
            Try `ferry demo` for a self-contained run."
    )
)]
#[cfg_attr(
    not(feature = "demo"),
    command(
        long_about = "ferry takes SendFile task payloads (DOWNLOAD_URL, OSS, OSS_BRIDGED), fetches \
            the files with resume and verification, and reports their status."
    )
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Configuration file (TOML)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory: journal, API token, api.json, socket
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Host folder standing in for the device's / (desktop use and tests)
    #[arg(long, global = true, value_name = "DIR")]
    pub device_root: Option<PathBuf>,
    /// Host folder standing in for the device's system files (/system, /etc, /dev/socket)
    #[arg(long, global = true, value_name = "DIR")]
    pub system_root: Option<PathBuf>,
    /// Log format on stderr: human or json
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or ferry=debug (default: info for the daemon, warn otherwise)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: accept task payloads over the local API and run the transfers
    Daemon(daemon::DaemonArgs),
    /// Submit a task payload to a daemon and optionally follow it
    Send(send::SendArgs),
    /// Run one task payload in-process, without a daemon
    Fetch(fetch::FetchArgs),
    /// List a daemon's tasks, or show one
    Tasks(tasks::TasksArgs),
    /// Cancel a task on a daemon
    Cancel(cancel::CancelArgs),
    /// Run a daemon and a local file server in-process and send one file through the API
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

/// How a client subcommand finds its daemon.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Daemon connection")]
pub struct ConnectArgs {
    /// Daemon TCP address HOST:PORT (default: from STATE_DIR/api.json)
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "socket")]
    pub addr: Option<String>,
    /// Daemon unix socket (default: from STATE_DIR/api.json)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// API token file (default: STATE_DIR/token; FERRY_TOKEN overrides)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Transfer settings that the daemon and `ferry fetch` take as flags (they win over the file).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Transfers")]
pub struct TransferArgs {
    /// Ranged requests at once for one large object (1 = always one stream)
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Download bandwidth cap in KiB/s shared by all transfers (0 = unlimited)
    #[arg(long, value_name = "KIB")]
    pub bandwidth_limit_kib: Option<u64>,
}

impl TransferArgs {
    pub fn apply(&self, overrides: Overrides) -> Overrides {
        Overrides {
            connections: self.connections,
            bandwidth_limit_kib: self.bandwidth_limit_kib,
            ..overrides
        }
    }
}

fn parse_log_format(s: &str) -> std::result::Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format; use human or json")),
    }
}

impl GlobalArgs {
    /// The flag overrides every subcommand shares; subcommands add their own.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            state_dir: self.state_dir.clone(),
            device_root: self.device_root.clone(),
            system_root: self.system_root.clone(),
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            ..Overrides::default()
        }
    }

    pub fn load_config(&self, overrides: &Overrides) -> Result<Config> {
        Config::load(
            self.config.as_deref(),
            &|k| std::env::var(k).ok(),
            overrides,
        )
    }

    /// Logging for the short-lived commands: quiet unless asked, so stdout/stderr stay theirs.
    pub fn init_quiet_logging(&self, config: Option<&Config>) {
        let format = self
            .log_format
            .or(config.map(|c| c.log_format))
            .unwrap_or(LogFormat::Human);
        crate::logging::init(format, self.log_level.as_deref().unwrap_or("warn"), config);
    }

    /// A client for the daemon of the configured state directory.
    pub fn client(&self, connect: &ConnectArgs) -> Result<Client> {
        let config = self.load_config(&self.overrides())?;
        self.init_quiet_logging(Some(&config));
        Client::discover(
            &config.state_dir,
            connect.addr.clone(),
            connect.socket.clone(),
            connect.token_file.clone(),
        )
    }
}

/// The exit status an error implies.
pub fn exit_for(code: Code) -> u8 {
    let name = code.as_str();
    if name.starts_with("Network.") || matches!(code, Code::ApiUnauthorized | Code::ApiShuttingDown)
    {
        return EXIT_UNREACHABLE;
    }
    if name.starts_with("InvalidParameter.")
        || name.starts_with("Unsupported.")
        || matches!(
            code,
            Code::InvalidConfig
                | Code::ApiBadRequest
                | Code::ApiNotFound
                | Code::ApiPayloadTooLarge
                | Code::ApiTaskIdConflict
        )
    {
        return EXIT_USAGE;
    }
    EXIT_TASK_FAILED
}

/// Prints `CODE: message` on stderr and returns the matching exit status.
pub fn report(e: &Error) -> u8 {
    eprintln!("{}: {}", e.code, e.message);
    exit_for(e.code)
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(Code::Internal, format!("encoding JSON output: {e}")))?;
    println!("{text}");
    Ok(())
}

/// The device path a task wrote (its first result file), else the payload's path.
pub fn task_path(view: &TaskView) -> String {
    view.result
        .as_ref()
        .and_then(|r| r.files.first())
        .map(|f| f.path.clone())
        .unwrap_or_else(|| view.payload.source_file_path.clone())
}

/// Parses the arguments, runs the subcommand, and returns the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    // One async thread: transfers spend their CPU on their own writer and hash threads, the
    // rest is socket I/O. Measured on 2 cores (1 GiB over loopback), the multi-threaded
    // scheduler's work stealing cost ~15% wall time and 3 MiB RSS for nothing in return.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ferry")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Internal: starting the async runtime: {e}");
            return EXIT_TASK_FAILED;
        }
    };
    let status = runtime.block_on(dispatch(cli));
    // Connection tasks left behind must not keep a finished command alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    status
}

async fn dispatch(cli: Cli) -> u8 {
    let global = cli.global;
    match cli.command {
        Command::Daemon(args) => daemon::run(&global, args).await,
        Command::Send(args) => send::run(&global, args).await,
        Command::Fetch(args) => fetch::run(&global, args).await,
        Command::Tasks(args) => tasks::run(&global, args).await,
        Command::Cancel(args) => cancel::run(&global, args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(&global, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_for(Code::NetworkConnect), EXIT_UNREACHABLE);
        assert_eq!(exit_for(Code::InvalidUploadUrl), EXIT_USAGE);
        assert_eq!(exit_for(Code::ApiNotFound), EXIT_USAGE);
        assert_eq!(exit_for(Code::SourceNotFound), EXIT_TASK_FAILED);
    }
}
