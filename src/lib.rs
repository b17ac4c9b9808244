//! ferry: the on-device transfer agent for Android cloud phones.
//!
//! A SendFile task payload flows through the folders in order: [`task`] (intake into a
//! validated plan, the durable record, the journal and the queue) → [`pipeline`] (one plan
//! run end to end) → [`transfer`] (sources, engine, sink) over [`net`], with [`paths`]
//! guarding every write → [`install`] (AutoInstall) → [`android`] (media scan, logcat,
//! privileges). [`daemon`] serves the local API whose contract is [`api`]; [`cli`] is the
//! command line.

pub mod alloc;
pub mod android;
pub mod api;
pub mod cli;
pub mod config;
#[cfg(feature = "controller")]
pub mod controller;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo_server;
pub mod error;
pub mod fleet;
pub mod install;
pub mod logging;
pub mod net;
pub mod paths;
pub mod pipeline;
pub mod prometheus;
pub mod redact;
pub mod task;
#[cfg(test)]
pub(crate) mod testing;
pub mod timefmt;
pub mod transfer;
