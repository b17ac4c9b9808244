//! `ferry cancel ID`: asks the daemon to cancel a task (`POST /v1/tasks/{id}/cancel`) and
//! prints the task's phase afterwards.

use super::{print_json, report, ConnectArgs, GlobalArgs, EXIT_OK};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// The TaskId to cancel
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print the task as JSON on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(global: &GlobalArgs, args: CancelArgs) -> u8 {
    let client = match global.client(&args.connect) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    match client.cancel(&args.id).await {
        Ok(view) if args.json => match print_json(&view) {
            Ok(()) => EXIT_OK,
            Err(e) => report(&e),
        },
        Ok(view) => {
            println!("{} {}", view.task_id, view.phase.as_str());
            EXIT_OK
        }
        Err(e) => report(&e),
    }
}
