#![allow(dead_code)]

pub mod http_server;
pub mod mosquitto;
pub mod test_ca;

use ferry::config::Config;
use ferry::error::Error;
use ferry::pipeline::{fetch_once, ProgressFn};
use ferry::task::record::TaskResult;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One payload in-process, as `ferry fetch` runs it: intake with `config`'s roots, then
/// `fetch_once` (no journal, no daemon).
pub async fn fetch_payload(config: &Config, json: &serde_json::Value) -> Result<TaskResult, Error> {
    let task = ferry::task::payload::validate(
        ferry::task::payload::parse(json.to_string().as_bytes())?,
        &config.allowed_roots,
    )?;
    let progress: ProgressFn = Arc::new(|_, _| {});
    fetch_once(config, task, progress, CancellationToken::new()).await
}

/// A DOWNLOAD_URL payload of `url` to `/sdcard/Download/NAME`.
pub fn download(url: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "SourceFilePath": format!("/sdcard/Download/{name}"),
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": url,
    })
}

/// The phase of a journal record read as JSON: its `State` holds one key, the phase
/// (`{"State": {"RUNNING": {...}}}`), and that key's object holds the state's data.
#[allow(dead_code)]
pub fn journal_phase(record: &serde_json::Value) -> (&str, &serde_json::Value) {
    let state = record["State"]
        .as_object()
        .unwrap_or_else(|| panic!("no State object in {record}"));
    assert_eq!(state.len(), 1, "one phase in {record}");
    let (phase, data) = state.iter().next().expect("one phase");
    (phase.as_str(), data)
}
