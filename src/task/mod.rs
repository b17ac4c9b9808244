//! Tasks: intake ([`payload`]: a SendFile payload checked into a plan), the durable
//! [`record`] of each task with its [`state`] and transitions, the [`journal`] that stores
//! records (and a folder send's [`landed_log`]), and the [`manager`] that queues and schedules them ([`commands`] are its journal
//! writes, [`worker`] runs one task).

mod commands;
pub mod journal;
pub mod landed_log;
pub mod manager;
pub mod payload;
pub mod record;
mod record_v1;
pub mod state;
mod table;
mod worker;
