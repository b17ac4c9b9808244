//! ferry: the on-device transfer agent for Android cloud phones.
//!
//! The pipeline follows a SendFile task payload: [`payload`] (intake) → [`manager`] and
//! [`task`] (queue, journal, status) → [`runner`] and [`engine`] (transfer) over a
//! [`source`] into the [`sink`] (staging, verify, atomic rename), with [`paths`] guarding
//! every write; [`install`] runs AutoInstall after the transfer. [`daemon`] serves the local API, [`client`] and [`cli`] talk to it.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo_server;
pub mod engine;
pub mod error;
pub mod folder;
pub mod install;
pub mod journal;
pub mod logcat;
pub mod logging;
pub mod manager;
pub mod media_scan;
pub mod paths;
pub mod payload;
pub mod privileges;
pub mod redact;
pub mod runner;
pub mod sink;
pub mod source;
pub mod task;
pub mod timefmt;
