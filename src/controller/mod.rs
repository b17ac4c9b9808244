//! `ferry-controller`, the cloud side: Alibaba Cloud Phone's SendFile and DescribeTasks
//! (OpenAPI RPC style, version 2023-09-30, ACS3-HMAC-SHA256 signing) over a durable store,
//! delivering each phone's task to its agent over MQTT ([`crate::fleet`]).
//!
//! Built only with the `controller` feature: the phone binary links none of it.

pub mod api;
pub mod broker;
pub mod cli;
pub mod delivery;
pub mod model;
pub mod mosquitto;
pub mod nats;
pub mod ops;
pub mod ports;
pub mod secrets;
pub mod service;
pub mod store;
