//! Orders from the controller, handled one at a time in arrival order. `Run` goes to the
//! manager's intake (idempotent by TaskId: a redelivered order finds its task and starts
//! nothing); a payload intake refuses is reported FAILED with intake's own code, with no
//! record created. `Cancel` cancels. The report of a change comes through the manager's
//! stream; only answers the stream does not carry (a repeat, a refusal) are published here.

use super::host::TaskHost;
use super::reports;
use crate::error::{Code, Error};
use crate::fleet::topics::{topic, Kind};
use crate::task::payload::{self, TaskPayload};
use crate::task::record::{Phase, TaskView};
use crate::timefmt::{rfc3339, unix_millis_now};
use rumqttc::AsyncClient;
use serde::Deserialize;
use tokio::sync::mpsc;

/// An order as received, its payload kept raw so intake sees exactly what was sent (and
/// names a bad field with its own code). Its shape is [`crate::fleet::wire::Order`]'s.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    kind: String,
    task_id: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

pub async fn run<T: TaskHost>(
    manager: T,
    client: AsyncClient,
    instance_id: String,
    mut orders: mpsc::UnboundedReceiver<bytes::Bytes>,
) {
    let report_topic = topic(&instance_id, Kind::Report);
    while let Some(body) = orders.recv().await {
        if let Some(view) = handle(&manager, &body).await {
            reports::publish(&client, report_topic.clone(), instance_id.clone(), view).await;
        }
    }
}

/// Carries out one order; returns the view to report when the manager's stream will not.
pub async fn handle<T: TaskHost>(manager: &T, body: &[u8]) -> Option<TaskView> {
    let order: Envelope = match serde_json::from_slice(body) {
        Ok(order) => order,
        Err(e) => {
            // serde's message quotes at most a short token, never the whole body.
            tracing::warn!(bytes = body.len(), "dropping a malformed fleet order: {e}");
            return None;
        }
    };
    if let Err(e) = payload::check_task_id(&order.task_id) {
        tracing::warn!("dropping a fleet order: {}", e.message);
        return None;
    }
    let id = order.task_id;
    match (order.kind.as_str(), order.payload) {
        ("Run", Some(raw)) => run_order(manager, id, raw).await,
        ("Cancel", _) => match manager.cancel(&id).await {
            // A task already finished emits nothing: say where it stands.
            Ok(view) if view.phase.is_finished() => Some(view),
            Ok(_) => None,
            Err(e) if e.code == Code::ApiNotFound => {
                tracing::info!(task = %id, "fleet cancel for a task this agent does not hold");
                None
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "fleet cancel failed");
                None
            }
        },
        (kind, _) => {
            tracing::warn!(task = %id, kind, "dropping a fleet order of unknown kind or without a payload");
            None
        }
    }
}

async fn run_order<T: TaskHost>(
    manager: &T,
    id: String,
    raw: serde_json::Value,
) -> Option<TaskView> {
    // Held already (running, or finished: a failed task is not re-run by a redelivered
    // order, though intake would resume it): answer with where it stands.
    if let Ok(held) = manager.describe(&id) {
        tracing::info!(task = %id, phase = ?held.phase, "fleet order repeated; nothing new started");
        return Some(held);
    }
    let json = raw.to_string().into_bytes();
    let parsed = payload::parse(&json);
    let checked = parsed.as_ref().map_err(Clone::clone).and_then(|p| {
        if p.task_id.as_deref() == Some(id.as_str()) {
            Ok(())
        } else {
            Err(Error::new(
                Code::InvalidTaskId,
                format!(
                    "the payload's TaskId {:?} differs from the order's TaskId {id:?}",
                    p.task_id.as_deref().unwrap_or("")
                ),
            ))
        }
    });
    let outcome = match checked {
        Ok(()) => manager.submit(&json).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(submitted) if submitted.created => None,
        // Admitted meanwhile by another path (the local API): where it stands.
        Ok(submitted) => Some(submitted.view),
        Err(e) => match manager.describe(&id) {
            // Never fail a task this agent holds because a second order for it was bad.
            Ok(held) => {
                tracing::warn!(task = %id, error = %e, "fleet order refused; reporting the task held under its id");
                Some(held)
            }
            Err(_) => {
                tracing::warn!(task = %id, code = %e.code, "fleet order refused by intake");
                Some(refused_view(&id, parsed.ok().as_ref(), &e))
            }
        },
    }
}

/// The FAILED view of an order intake refused: no record exists, the view says why.
pub fn refused_view(id: &str, payload: Option<&TaskPayload>, error: &Error) -> TaskView {
    let now = rfc3339(unix_millis_now());
    let payload = payload
        .map(TaskPayload::redacted)
        .unwrap_or_else(|| TaskPayload {
            task_id: Some(id.to_string()),
            ..TaskPayload::default()
        });
    TaskView {
        task_id: id.to_string(),
        client_token: payload.client_token.clone(),
        task_status: Phase::Failed.task_status().to_string(),
        phase: Phase::Failed,
        progress: 0,
        bytes_done: 0,
        bytes_total: None,
        error_code: Some(error.code.into()),
        error_msg: Some(error.message.clone()),
        result: None,
        notes: Vec::new(),
        payload,
        creation_time: now.clone(),
        start_time: None,
        finish_time: Some(now),
    }
}
