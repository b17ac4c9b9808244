//! The messages of protocol v1, JSON with the API's PascalCase names. Every message that
//! concerns a task carries its TaskId, so each is idempotent: a redelivered order or report
//! changes nothing the first one did not.

use crate::task::payload::TaskPayload;
use crate::task::record::{Phase, TaskView};
use serde::{Deserialize, Serialize};

/// Controller → agent, on `…/{id}/order`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "Kind",
    rename_all = "PascalCase",
    rename_all_fields = "PascalCase"
)]
pub enum Order {
    /// Run this payload (its `TaskId` is the per-phone TaskId, the same as `task_id`).
    Run {
        task_id: String,
        payload: Box<TaskPayload>,
    },
    Cancel {
        task_id: String,
    },
}

impl Order {
    pub fn task_id(&self) -> &str {
        match self {
            Order::Run { task_id, .. } | Order::Cancel { task_id } => task_id,
        }
    }
}

/// Agent → controller, on `…/{id}/report`: one task as the agent's API shows it (payload
/// redacted), sent on every change (progress throttled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub instance_id: String,
    pub task: TaskView,
}

/// A task the agent holds, as listed in its [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HeldTask {
    pub task_id: String,
    pub phase: Phase,
}

/// Free space in one allowed root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootSpace {
    pub root: String,
    pub free_bytes: u64,
}

/// What the agent is, for the controller's instance list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentInfo {
    pub version: String,
    /// `arm64-v8a`, `x86_64`… (ro.product.cpu.abi, or the build's architecture off Android).
    pub abi: String,
    /// ro.build.version.release; empty off Android.
    #[serde(default)]
    pub android_release: String,
    #[serde(default)]
    pub roots: Vec<RootSpace>,
}

/// Agent → controller on every (re)connect, on `…/{id}/hello`: what it is and every task it
/// holds, so the controller resends what is missing and takes finished states it missed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Hello {
    pub instance_id: String,
    pub agent: AgentInfo,
    pub held: Vec<HeldTask>,
}

/// Agent → controller, RETAINED on `…/{id}/presence`; `{"Online":false}` is the last will.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Presence {
    pub online: bool,
    /// The agent's connection this speaks for: unix milliseconds at its CONNECT, increasing
    /// within an agent process. A broker publishes a dropped connection's will when it notices
    /// the drop, which can be after the agent's next connection said it is online (a session
    /// taken over by the reconnect, a half-open socket): the controller ignores a presence of
    /// an older connection than the newest it has seen. Absent from agents before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_tagged_by_kind() {
        let cancel = Order::Cancel {
            task_id: "t-1".into(),
        };
        let text = serde_json::to_string(&cancel).unwrap();
        assert_eq!(text, r#"{"Kind":"Cancel","TaskId":"t-1"}"#);
        assert_eq!(serde_json::from_str::<Order>(&text).unwrap(), cancel);
        let run: Order = serde_json::from_str(
            r#"{"Kind":"Run","TaskId":"t-2","Payload":{"TaskId":"t-2","SourceFilePath":"/sdcard/Download/a","UploadType":"DOWNLOAD_URL","UploadUrl":"https://x/a"}}"#,
        )
        .unwrap();
        assert_eq!(run.task_id(), "t-2");
        assert!(serde_json::from_str::<Order>(r#"{"Kind":"Erase","TaskId":"t"}"#).is_err());
    }
}
