//! The fleet logic: SendFile and DescribeTasks over the [`Store`], what agents report
//! ([`Inbox`]), expiry, cancel and the instance list. [`Fleet`] implements the ports the API
//! ([`Actions`], [`Credentials`]) and delivery ([`Inbox`]) call, and hands orders to an
//! [`Outbox`] only once the tasks they concern are durable.

mod agents;
mod describe;
mod ids;
mod operator;

pub use crate::controller::model::{CancelResponse, InstanceView};
pub use ids::{new_access_key, new_task_id};

use super::model::{
    ApiError, DescribeTasksQuery, DescribeTasksResponse, InstanceList, InstanceTask,
    SendFileRequest, SendFileResponse,
};
use super::ports::{Actions, BoxFuture, Credentials, Outbox};
use super::store::{BatchIds, NewBatch, Store};
use crate::error::{Code, Result};
use crate::fleet::topics::check_instance_id;
use crate::fleet::wire::Order;
use crate::task::payload::TaskPayload;
use crate::timefmt::unix_millis_now;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The fleet logic's settings.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// A child no agent has taken this long after SendFile fails with
    /// `Fleet.InstanceOffline`.
    pub expiry: Duration,
    /// The roots a payload's target must lie in: the agent's defaults on Android.
    pub allowed_roots: Vec<String>,
    /// A child still PENDING this long after SendFile, on an instance shown online, gets its
    /// Run order again ([`Fleet::resend_due`]): an order the broker lost (agents subscribing
    /// at QoS 0 on NATS, a broker that lost its sessions) costs this long, not the expiry.
    pub resend: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            expiry: Duration::from_secs(24 * 3600),
            resend: Duration::from_secs(30),
            allowed_roots: crate::config::ANDROID_ROOTS
                .iter()
                .map(|r| r.to_string())
                .collect(),
        }
    }
}

pub struct Fleet {
    store: Arc<dyn Store>,
    outbox: Arc<dyn Outbox>,
    config: FleetConfig,
}

/// The most instances one SendFile may name (the answer lists them all).
pub const MAX_INSTANCES: usize = 10_000;

impl Fleet {
    pub fn new(store: Arc<dyn Store>, outbox: Arc<dyn Outbox>, config: FleetConfig) -> Fleet {
        Fleet {
            store,
            outbox,
            config,
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    async fn send_file_now(&self, request: SendFileRequest) -> Result<SendFileResponse, ApiError> {
        let ids = request.instance_ids;
        check_instance_list(&ids)?;
        let mut payload = request.payload;
        payload.task_id = None;
        crate::task::payload::validate(payload.clone(), &self.config.allowed_roots)?;
        let hash = request_hash(&ids, &payload);
        if let Some(token) = &payload.client_token {
            if let Some(existing) = self.store.batch_by_client_token(token.clone()).await? {
                return same_request(existing, &hash);
            }
        }
        let unknown = self.store.unknown_instances(ids.clone()).await?;
        if !unknown.is_empty() {
            let shown: Vec<&str> = unknown.iter().take(10).map(String::as_str).collect();
            return Err(ApiError::new(
                400,
                Code::FleetUnknownInstance.as_str(),
                format!(
                    "{} of AndroidInstanceIdList {} not registered with this controller: {}{}; register them with `ferry-controller instance add`",
                    unknown.len(),
                    if unknown.len() == 1 { "is" } else { "are" },
                    shown.join(", "),
                    if unknown.len() > shown.len() { ", …" } else { "" },
                ),
            ));
        }
        // The agents get the payload without the ClientToken: the controller answers repeats
        // itself, and each child has its own TaskId.
        let mut agent_payload = payload.clone();
        agent_payload.client_token = None;
        let payload_json = serde_json::to_string(&agent_payload)
            .map_err(|e| ApiError::new(500, Code::Internal.as_str(), e.to_string()))?;
        let batch = NewBatch {
            task_id: new_task_id(),
            request_id: request.request_id,
            client_token: payload.client_token.clone(),
            request_hash: hash.clone(),
            payload_json,
            created_ms: unix_millis_now(),
            children: ids.iter().map(|id| (id.clone(), new_task_id())).collect(),
        };
        if let Some(existing) = self.store.create_batch(batch.clone()).await? {
            return same_request(existing, &hash);
        }
        tracing::info!(
            task_id = %batch.task_id,
            request_id = %batch.request_id,
            instances = batch.children.len(),
            "SendFile batch created"
        );
        // Durable now: publish in the background, so the answer does not wait for the
        // broker. A lost publish costs nothing: the agent's next Hello brings a resend.
        let (store, outbox) = (Arc::clone(&self.store), Arc::clone(&self.outbox));
        let children = batch.children.clone();
        tokio::spawn(publish_runs(store, outbox, agent_payload, children));
        Ok(response(batch.task_id, batch.children))
    }
}

/// Hands each child's Run order to the outbox, then records which were handed over.
async fn publish_runs(
    store: Arc<dyn Store>,
    outbox: Arc<dyn Outbox>,
    payload: TaskPayload,
    children: Vec<(String, String)>,
) {
    let mut sent = Vec::with_capacity(children.len());
    for (instance, task_id) in children {
        let order = run_order(&payload, &task_id);
        match outbox.send(&instance, order).await {
            Ok(()) => sent.push(task_id),
            Err(e) => {
                tracing::warn!(%instance, %task_id, error = %e, "Run order not published; the agent's next Hello brings it")
            }
        }
    }
    if let Err(e) = store.mark_sent(sent).await {
        tracing::warn!(error = %e, "recording published orders");
    }
}

pub(crate) fn run_order(payload: &TaskPayload, task_id: &str) -> Order {
    let mut payload = payload.clone();
    payload.task_id = Some(task_id.to_string());
    Order::Run {
        task_id: task_id.to_string(),
        payload: Box::new(payload),
    }
}

fn check_instance_list(ids: &[String]) -> Result<(), ApiError> {
    let invalid = |message: String| {
        ApiError::from(crate::error::Error::new(
            Code::InvalidInstanceIdList,
            message,
        ))
    };
    if ids.is_empty() {
        return Err(invalid(
            "AndroidInstanceIdList is empty: name at least one instance (AndroidInstanceIdList.1)"
                .into(),
        ));
    }
    if ids.len() > MAX_INSTANCES {
        return Err(invalid(format!(
            "AndroidInstanceIdList names {} instances; at most {MAX_INSTANCES} per SendFile",
            ids.len()
        )));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        check_instance_id(id).map_err(|mut e| {
            e.message = format!("AndroidInstanceIdList.{}: {}", i + 1, e.message);
            ApiError::from(e)
        })?;
        if !seen.insert(id.as_str()) {
            return Err(invalid(format!(
                "AndroidInstanceIdList.{} repeats instance {id}; name each instance once",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Fingerprint of what a SendFile asks for, to tell a repeat from a conflicting request
/// under the same ClientToken.
fn request_hash(ids: &[String], payload: &TaskPayload) -> String {
    let text = serde_json::to_vec(&(ids, payload)).unwrap_or_default();
    Sha256::digest(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same_request(existing: BatchIds, hash: &str) -> Result<SendFileResponse, ApiError> {
    if existing.request_hash != hash {
        return Err(ApiError::from(crate::error::Error::new(
            Code::ApiClientTokenConflict,
            format!(
                "ClientToken is already bound to batch {} with a different request; use a new ClientToken for a new SendFile",
                existing.task_id
            ),
        )));
    }
    Ok(response(existing.task_id, existing.children))
}

fn response(task_id: String, children: Vec<(String, String)>) -> SendFileResponse {
    SendFileResponse {
        task_id,
        data: children
            .into_iter()
            .map(|(android_instance_id, task_id)| InstanceTask {
                android_instance_id,
                task_id,
            })
            .collect(),
    }
}

impl Actions for Fleet {
    fn send_file(
        &self,
        request: SendFileRequest,
    ) -> BoxFuture<'_, Result<SendFileResponse, ApiError>> {
        Box::pin(self.send_file_now(request))
    }

    fn describe_tasks(
        &self,
        query: DescribeTasksQuery,
    ) -> BoxFuture<'_, Result<DescribeTasksResponse, ApiError>> {
        Box::pin(describe::describe(&*self.store, query))
    }

    fn ferry_cancel_task(
        &self,
        task_id: String,
    ) -> BoxFuture<'_, Result<CancelResponse, ApiError>> {
        Box::pin(async move { self.cancel_task(&task_id).await })
    }

    fn ferry_list_instances(&self) -> BoxFuture<'_, Result<InstanceList, ApiError>> {
        Box::pin(async move {
            Ok(InstanceList {
                instances: self.list_instances().await?,
            })
        })
    }
}

/// The credentials kept in a store: what the API's signature check and the embedded broker's
/// login check ask.
pub struct StoreCredentials(pub Arc<dyn Store>);

impl Credentials for StoreCredentials {
    fn access_key_secret(&self, access_key_id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        self.0.access_key_secret(access_key_id.to_string())
    }

    fn agent_password_hash(&self, instance_id: &str) -> BoxFuture<'_, Result<Option<String>>> {
        self.0.instance_password_hash(instance_id.to_string())
    }

    fn agent_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        self.0.instance_password_hashes()
    }

    fn agent_bcrypt_hashes(&self) -> BoxFuture<'_, Result<crate::controller::ports::BcryptHashes>> {
        self.0.instance_bcrypt_hashes()
    }
}
