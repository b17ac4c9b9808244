//! Moving bytes: a [`source`] says how to ask for them, the [`engine`] drives the reads
//! (retries, resume, parallel parts, pacing) and the [`sink`] stages, verifies and commits them.

pub mod engine;
pub mod sink;
pub mod source;
