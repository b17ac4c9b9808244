//! The fleet link between the controller and the agents: MQTT topics ([`topics`]) and the
//! messages on them ([`wire`]), shared by both sides so a renamed field breaks the build,
//! not a fleet; and the agent's end of the link ([`agent`]), run by `ferry daemon`.

pub mod agent;
pub mod topics;
pub mod wire;
