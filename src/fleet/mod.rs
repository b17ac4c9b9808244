//! The fleet link between the controller and the agents: MQTT topics ([`topics`]) and the
//! messages on them ([`wire`]), shared by both sides so a renamed field breaks the build,
//! not a fleet; and the agent's end of the link ([`agent`]), run by `ferry daemon` (and by
//! every session of `ferry-fleet-sim`, [`sim`], feature `fleet-sim`).

pub mod agent;
#[cfg(feature = "fleet-sim")]
pub mod sim;
pub mod topics;
pub mod wire;
