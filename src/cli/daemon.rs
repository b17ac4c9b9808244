//! `ferry daemon`: builds the configuration from file, environment and flags, starts
//! logging, and hands over to [`crate::daemon::serve_forever`] until a stop signal.

use super::{exit_for, report, GlobalArgs, TransferArgs, EXIT_OK};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Loopback TCP address for the API (IP:PORT, port 0 picks one), or "off"
    #[arg(long, value_name = "ADDR|off")]
    pub listen: Option<String>,
    /// Unix socket for the API (default: STATE_DIR/ferry.sock)
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How many transfers run at once
    #[arg(long = "max-concurrent", value_name = "N")]
    pub max_concurrent: Option<usize>,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

pub async fn run(global: &GlobalArgs, args: DaemonArgs) -> u8 {
    let overrides = crate::config::Overrides {
        listen: args.listen,
        socket: args.socket,
        max_concurrent_tasks: args.max_concurrent,
        ..args.transfer.apply(global.overrides())
    };
    let config = match global.load_config(&overrides) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    crate::logging::init(config.log_format, &config.log_level, Some(&config));
    tracing::info!(
        "ferry {} starting; state directory {}",
        crate::api::VERSION,
        config.state_dir.display()
    );
    match crate::daemon::serve_forever(config, global.config.clone(), overrides).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!("the daemon stopped: {e}");
            exit_for(e.code)
        }
    }
}
