//! Tasks: intake ([`payload`]: a SendFile payload checked into a `Plan`), the durable
//! [`record`] of each task and its states, the [`journal`] that stores records, and the
//! [`manager`] that queues and schedules them.

pub mod journal;
pub mod manager;
pub mod payload;
pub mod record;
