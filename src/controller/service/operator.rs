//! ferry's own operations beside Alibaba's actions (the API names them `FerryCancelTask`
//! and `FerryListInstances`), and the credentials an operator issues.

use super::agents::cancel_before_delivery;
use super::describe::iso;
use super::{new_access_key, Fleet};
use crate::controller::model::{ApiError, CancelResponse, InstanceTask, InstanceView};
use crate::controller::secrets;
use crate::controller::store::Status;
use crate::error::{Code, Error, Result};
use crate::fleet::topics::check_instance_id;
use crate::fleet::wire::{AgentInfo, Order};
use crate::timefmt::unix_millis_now;

impl Fleet {
    /// Cancels a batch (every child not yet final) or one child. Each is marked durably
    /// first; one no agent took yet fails here at once (`Cancelled`); for the others a Cancel
    /// order goes out now, and again in answer to the agent's next Hello while it holds the
    /// task.
    pub async fn cancel_task(&self, task_id: &str) -> Result<CancelResponse, ApiError> {
        let children = if self.store.is_batch(task_id.to_string()).await? {
            self.store.batch_children(task_id.to_string()).await?
        } else {
            match self.store.child(task_id.to_string()).await? {
                Some(child) => vec![child],
                None => {
                    return Err(ApiError::from(Error::new(
                        Code::ApiNotFound,
                        format!("no task {task_id} (neither a batch nor one instance's task)"),
                    )))
                }
            }
        };
        let mut data = Vec::new();
        for child in children.into_iter().filter(|c| !c.status.is_final()) {
            let updated = self
                .store
                .update_child(
                    child.task_id.clone(),
                    Box::new(|c| {
                        if c.status.is_final() || c.cancel_requested {
                            return false;
                        }
                        if c.status == Status::Pending {
                            return cancel_before_delivery(c);
                        }
                        c.cancel_requested = true;
                        c.updated_ms = unix_millis_now();
                        true
                    }),
                )
                .await?;
            if !updated.is_some_and(|c| c.cancel_requested) {
                continue;
            }
            // Even a child failed here may have a Run order in flight: the Cancel follows it
            // on the same topic.
            let order = Order::Cancel {
                task_id: child.task_id.clone(),
            };
            if let Err(e) = self.outbox.send(&child.instance_id, order).await {
                tracing::warn!(task_id = %child.task_id, error = %e, "Cancel order not published; the agent's next Hello brings it");
            }
            data.push(InstanceTask {
                android_instance_id: child.instance_id,
                task_id: child.task_id,
            });
        }
        Ok(CancelResponse {
            task_id: task_id.to_string(),
            data,
        })
    }

    /// Every registered instance with what its agent last said.
    pub async fn list_instances(&self) -> Result<Vec<InstanceView>> {
        let instances = self.store.instances().await?;
        Ok(instances
            .into_iter()
            .map(|i| {
                let agent: Option<AgentInfo> = i
                    .agent_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok());
                InstanceView {
                    instance_id: i.instance_id,
                    online: i.online,
                    last_seen: i.last_seen_ms.map(iso),
                    creation_time: iso(i.created_ms),
                    agent_version: agent.as_ref().map(|a| a.version.clone()),
                    abi: agent.as_ref().map(|a| a.abi.clone()),
                    android_release: agent.as_ref().map(|a| a.android_release.clone()),
                    roots: agent.map(|a| a.roots).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// A new API AccessKey pair, stored; `(AccessKeyId, AccessKeySecret)`.
    pub async fn create_access_key(&self) -> Result<(String, String)> {
        let (id, secret) = new_access_key();
        self.store
            .add_access_key(id.clone(), secret.clone(), unix_millis_now())
            .await?;
        Ok((id, secret))
    }

    /// Registers an instance and returns its new MQTT password (only its hash is kept).
    /// An existing instance is refused (`Fleet.InstanceExists`) unless `rotate`, which
    /// replaces its password.
    pub async fn add_instance(&self, instance_id: &str, rotate: bool) -> Result<String> {
        check_instance_id(instance_id)?;
        let secret = secrets::new_secret();
        let for_bcrypt = secret.clone();
        // bcrypt is slow by design: off the async workers.
        let bcrypt_hash = tokio::task::spawn_blocking(move || secrets::bcrypt_hash(&for_bcrypt))
            .await
            .map_err(|e| Error::new(Code::Internal, format!("hashing a password: {e}")))?;
        let stored = self
            .store
            .put_instance(
                instance_id.to_string(),
                secrets::hash(&secret),
                bcrypt_hash,
                rotate,
                unix_millis_now(),
            )
            .await?;
        if !stored {
            return Err(Error::new(
                Code::FleetInstanceExists,
                format!("instance {instance_id} is already registered; pass --rotate to give it a new password"),
            ));
        }
        Ok(secret)
    }
}
