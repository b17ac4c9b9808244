//! The seams between the controller's parts, as traits so each is built and tested on its
//! own: the API calls the fleet logic ([`Actions`]) after checking callers ([`Credentials`]);
//! the logic hands out orders ([`Outbox`]) and delivery hands in what agents say ([`Inbox`]).

use super::model::{
    ApiError, CancelResponse, DescribeTasksQuery, DescribeTasksResponse, InstanceList,
    SendFileRequest, SendFileResponse,
};
use crate::error::Result;
use crate::fleet::wire::{Hello, Order, Presence, Report};
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `(InstanceId, bcrypt hash)` of every instance, by id; `None` for one registered before
/// bcrypt hashes were kept.
pub type BcryptHashes = Vec<(String, Option<String>)>;

/// Implemented by delivery: publish an order to one instance (QoS 1). Called only after the
/// order's task is durable, so a crash between the two loses nothing: the agent's next
/// `Hello` brings a resend.
pub trait Outbox: Send + Sync {
    fn send(&self, instance_id: &str, order: Order) -> BoxFuture<'_, Result<()>>;
}

/// Implemented by the fleet logic: what agents said, already checked by delivery to come
/// from the instance its topic names. Each call is durable before it returns (delivery acks
/// the MQTT message only then).
pub trait Inbox: Send + Sync {
    /// A task changed on an agent. Unknown TaskIds, or TaskIds of another instance, are
    /// refused (`Err`) and dropped by delivery.
    fn report(&self, report: Report) -> BoxFuture<'_, Result<()>>;
    /// Several reports, as delivery drained them from its queue, in order: each one's
    /// outcome, in the same order, every `Ok` durable when this returns. It may stop after
    /// the first failure worth another try ([`retry_later`]): the reports after it have no
    /// outcome and stay unhandled (delivery leaves them unacknowledged, to be redelivered).
    /// This one-at-a-time default suits any Inbox; the fleet logic applies the whole group
    /// in one store transaction (a group commit).
    fn reports(&self, reports: Vec<Report>) -> BoxFuture<'_, Vec<Result<()>>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(reports.len());
            for report in reports {
                let outcome = self.report(report).await;
                let stop = outcome.as_ref().is_err_and(retry_later);
                outcomes.push(outcome);
                if stop {
                    break;
                }
            }
            outcomes
        })
    }
    /// An agent (re)connected: record what it is, then answer with the orders it misses
    /// (Run for its unfinished tasks not held, Cancel still owed), which delivery sends.
    fn hello(&self, hello: Hello) -> BoxFuture<'_, Result<Vec<Order>>>;
    fn presence(&self, instance_id: &str, presence: Presence) -> BoxFuture<'_, Result<()>>;
}

/// Inbox errors worth another try (the message stays unacknowledged and comes back);
/// anything else is a refusal of that message, which is acked and dropped.
pub fn retry_later(error: &crate::error::Error) -> bool {
    use crate::error::Code;
    matches!(
        error.code,
        Code::Internal
            | Code::StorageIo
            | Code::StorageDiskFull
            | Code::StoragePermissionDenied
            | Code::ApiShuttingDown
    )
}

/// Implemented by the fleet logic, called by the HTTP API once a request's signature holds.
pub trait Actions: Send + Sync {
    fn send_file(
        &self,
        request: SendFileRequest,
    ) -> BoxFuture<'_, Result<SendFileResponse, ApiError>>;
    fn describe_tasks(
        &self,
        query: DescribeTasksQuery,
    ) -> BoxFuture<'_, Result<DescribeTasksResponse, ApiError>>;
    /// ferry's own `FerryCancelTask` (a name no Alibaba action has): a batch or one phone's
    /// task. An endpoint without it answers as for an unknown action.
    fn ferry_cancel_task(
        &self,
        _task_id: String,
    ) -> BoxFuture<'_, Result<CancelResponse, ApiError>> {
        Box::pin(async { Err(not_served("FerryCancelTask")) })
    }
    /// ferry's own `FerryListInstances`: every instance, online or not, with its agent.
    fn ferry_list_instances(&self) -> BoxFuture<'_, Result<InstanceList, ApiError>> {
        Box::pin(async { Err(not_served("FerryListInstances")) })
    }
}

fn not_served(action: &str) -> ApiError {
    let code = crate::error::Code::OpenApiApiNotFound;
    ApiError::new(
        crate::api::status_for(code),
        code.as_str(),
        format!("{action} is not served by this endpoint"),
    )
}

/// Implemented by the store: the secrets the API and the broker check callers against.
pub trait Credentials: Send + Sync {
    /// The secret of an API AccessKey (ACS3 signs with it, so it is kept as is), or `None`
    /// for an unknown or disabled key.
    fn access_key_secret(&self, access_key_id: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// The `$7$` hash ([`super::secrets`]) of an agent's MQTT password, or `None` for an
    /// unknown instance.
    fn agent_password_hash(&self, instance_id: &str) -> BoxFuture<'_, Result<Option<String>>>;
    /// Every instance with its password hash, for an external broker's password file.
    fn agent_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>>;
    /// Every instance with its password's bcrypt hash (`$2a$…`), for nats-server's users;
    /// `None` for an instance registered before bcrypt hashes were kept.
    fn agent_bcrypt_hashes(&self) -> BoxFuture<'_, Result<BcryptHashes>>;
}
