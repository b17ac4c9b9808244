//! `ferry-fleet-sim` (feature `fleet-sim`): many simulated agents in one process for scale
//! runs of the controller. A SIMULATOR: no file moves; correctness is tested with real
//! `ferry daemon`s. Each session runs the agent's own fleet client ([`crate::fleet::agent`]:
//! MQTT options and last will, subscribe, presence, Hello, orders, throttled reports) over a
//! table of simulated tasks ([`tasks::SimTasks`]) instead of the task manager. All sessions
//! share one tokio runtime: a session is a few tasks and one MQTT connection, no thread.

pub mod instances;
pub mod run;
pub mod tasks;
