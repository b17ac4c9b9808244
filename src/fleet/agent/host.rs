//! What the fleet client needs of the tasks it reports on: intake of a `Run` order, cancel,
//! describe, list, the stream of changes and the configuration. `ferry daemon` gives it the
//! task [`Manager`]; `ferry-fleet-sim` (src/fleet/sim/) gives it a table of simulated tasks,
//! so the simulator's sessions run this same client, message for message.

use crate::config::Config;
use crate::error::Result;
use crate::task::manager::{Manager, Submitted};
use crate::task::record::TaskView;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The tasks behind one agent's fleet link.
pub trait TaskHost: Clone + Send + Sync + 'static {
    /// The agent's configuration (TLS trust and DNS for the link, roots for the Hello).
    fn config(&self) -> Arc<Config>;
    /// Intake of a payload: idempotent by TaskId (`created` is false for a repeat).
    fn submit(&self, json: &[u8]) -> impl Future<Output = Result<Submitted>> + Send;
    fn describe(&self, id: &str) -> Result<TaskView>;
    /// All tasks, newest first.
    fn list(&self) -> Vec<TaskView>;
    /// Every state change from now on; `Lagged` means `list` again.
    fn subscribe(&self) -> broadcast::Receiver<TaskView>;
    fn cancel(&self, id: &str) -> impl Future<Output = Result<TaskView>> + Send;
}

impl TaskHost for Manager {
    fn config(&self) -> Arc<Config> {
        Manager::config(self)
    }

    fn submit(&self, json: &[u8]) -> impl Future<Output = Result<Submitted>> + Send {
        Manager::submit(self, json)
    }

    fn describe(&self, id: &str) -> Result<TaskView> {
        Manager::describe(self, id)
    }

    fn list(&self) -> Vec<TaskView> {
        Manager::list(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskView> {
        Manager::subscribe(self)
    }

    fn cancel(&self, id: &str) -> impl Future<Output = Result<TaskView>> + Send {
        Manager::cancel(self, id)
    }
}
