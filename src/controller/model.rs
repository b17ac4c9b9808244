//! The controller's API model: what SendFile and DescribeTasks take and answer, in Alibaba's
//! field names, between the HTTP layer (`api`) and the fleet logic (`service`).

use crate::error::Code;
use crate::fleet::wire::RootSpace;
use crate::task::payload::TaskPayload;
use serde::Serialize;

/// SendFile, parsed from its RPC parameters (not yet checked by the fleet logic).
#[derive(Clone, Debug, PartialEq)]
pub struct SendFileRequest {
    /// `AndroidInstanceIdList.1..N`, in order.
    pub instance_ids: Vec<String>,
    /// Every other SendFile parameter as the agent's payload (no TaskId: the controller
    /// makes one per phone); `ClientToken` is in it.
    pub payload: TaskPayload,
    /// The request's RequestId: the batch's `InvokeId`.
    pub request_id: String,
}

/// One phone of a SendFile answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceTask {
    pub android_instance_id: String,
    pub task_id: String,
}

/// SendFile's answer body (without RequestId, which the HTTP layer adds).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendFileResponse {
    /// The batch TaskId.
    pub task_id: String,
    pub data: Vec<InstanceTask>,
}

/// DescribeTasks filters, parsed from its RPC parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DescribeTasksQuery {
    pub task_ids: Vec<String>,
    pub parent_task_id: Option<String>,
    pub instance_id: Option<String>,
    /// `TaskStatus` and `TaskStatuses.N` together.
    pub task_statuses: Vec<String>,
    /// `TaskType` and `TaskTypes.N` together.
    pub task_types: Vec<String>,
    /// 1 batch, 2 per instance.
    pub level: Option<u8>,
    pub invoke_id: Option<String>,
    /// 1–100, default 10.
    pub max_results: u32,
    pub next_token: Option<String>,
    /// `ResourceIds.N`: for SendFile tasks the resource is the phone, so a row matches when
    /// its InstanceId is one of them (empty: no filter).
    pub resource_ids: Vec<String>,
}

/// One row of DescribeTasks (Alibaba's field names; ferry's own `Result` detail inside).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRow {
    pub task_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// `SendFile`.
    pub task_type: String,
    pub task_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub level: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoke_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
    /// Level 2: the agent's result (final path, size, sha256, install result, bytes done and
    /// total), as JSON text (the SDK models `Result` as a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// ISO 8601 UTC, `2026-12-01T10:00:00Z`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
    /// Level 1 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_child_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_child_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_child_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_child_count: Option<u32>,
}

/// DescribeTasks' answer body (without RequestId).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeTasksResponse {
    pub total_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    pub data: Vec<TaskRow>,
}

/// An API failure: Alibaba's error body `{RequestId, Code, Message}` with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Alibaba's code (`SignatureDoesNotMatch`, `InvalidParameter`…) or one of ferry's
    /// [`Code`]s for a payload the agent's rules refuse.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<crate::error::Error> for ApiError {
    /// The agent's own codes keep their spelling; their status follows the local API's.
    fn from(e: crate::error::Error) -> Self {
        ApiError::new(crate::api::status_for(e.code), e.code.as_str(), e.message)
    }
}

impl From<Code> for ApiError {
    fn from(code: Code) -> Self {
        ApiError::new(crate::api::status_for(code), code.as_str(), code.as_str())
    }
}

/// FerryCancelTask's answer: the children a Cancel was requested for (those already final
/// are left as they are).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CancelResponse {
    pub task_id: String,
    pub data: Vec<InstanceTask>,
}

/// One instance as FerryListInstances shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceView {
    pub instance_id: String,
    pub online: bool,
    /// ISO 8601 UTC; absent until the agent first connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub creation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub android_release: Option<String>,
    /// Free bytes per allowed root, from the agent's last Hello.
    pub roots: Vec<RootSpace>,
}

/// FerryListInstances' answer body (without RequestId).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceList {
    pub instances: Vec<InstanceView>,
}
