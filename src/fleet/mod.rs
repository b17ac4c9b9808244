//! The fleet link between the controller and the agents: MQTT topics ([`topics`]) and the
//! messages on them ([`wire`]), shared by both sides so a renamed field breaks the build,
//! not a fleet.

pub mod topics;
pub mod wire;
