//! The controller's durable state behind one interface, [`Store`]: access keys, instances,
//! batches (SendFile calls) and their children (one task per phone). SQLite
//! ([`sqlite::SqliteStore`]) is the first implementation; nothing in the trait is specific to
//! it, so a PostgreSQL store can follow (row locks where SQLite takes its write lock).
//!
//! The store keeps records and answers queries; what a transition means (monotonic phases,
//! expiry, cancel) is the fleet logic's ([`super::service`]), handed in as a [`ChildChange`]
//! that the store applies inside one transaction.

#[cfg(feature = "postgres")]
#[cfg(test)]
mod contract_tests;
pub mod postgres;
pub mod sqlite;

use super::ports::BoxFuture;
use crate::error::Result;

/// A child's TaskStatus as DescribeTasks shows it (Alibaba's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Created, not yet acknowledged by its agent (no report, not in a Hello).
    Pending,
    /// The agent holds it: its phase is PENDING, RUNNING or INSTALLING.
    Running,
    /// The agent reported SUCCESS.
    Finished,
    /// The agent reported FAILED or CANCELLED, or the controller failed it (expiry, cancel
    /// before delivery).
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Running,
        Status::Finished,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Finished => "FINISHED",
            Status::Failed => "FAILED",
        }
    }

    /// Case-insensitive, as callers spell it either way.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Finished | Status::Failed)
    }
}

/// Children of one batch per status: a batch's counts and its aggregated status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u32,
    pub running: u32,
    pub finished: u32,
    pub failed: u32,
}

impl Counts {
    pub fn total(&self) -> u32 {
        self.pending + self.running + self.finished + self.failed
    }

    pub fn slot(&mut self, status: Status) -> &mut u32 {
        match status {
            Status::Pending => &mut self.pending,
            Status::Running => &mut self.running,
            Status::Finished => &mut self.finished,
            Status::Failed => &mut self.failed,
        }
    }

    /// A batch is PENDING while no child was acknowledged, RUNNING while any child is not
    /// final, then FINISHED when every child finished or FAILED when any failed (the counts
    /// say how many).
    pub fn batch_status(&self) -> Status {
        if self.pending + self.running == 0 {
            if self.failed > 0 {
                Status::Failed
            } else {
                Status::Finished
            }
        } else if self.pending == self.total() {
            Status::Pending
        } else {
            Status::Running
        }
    }
}

/// A new batch: one SendFile call.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub task_id: String,
    /// The SendFile RequestId (DescribeTasks' `InvokeId`).
    pub request_id: String,
    pub client_token: Option<String>,
    /// Fingerprint of the request (instances and payload), to tell a repeat from a conflict
    /// under the same ClientToken.
    pub request_hash: String,
    /// The agent payload as JSON, credentials included (agents need them); never returned
    /// by DescribeTasks.
    pub payload_json: String,
    pub created_ms: u64,
    /// `(instance id, child TaskId)` in request order.
    pub children: Vec<(String, String)>,
}

/// The ids a batch was given, for a repeated SendFile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchIds {
    pub task_id: String,
    pub request_hash: String,
    pub children: Vec<(String, String)>,
}

/// One phone's task as the controller keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub task_id: String,
    pub batch_id: String,
    pub instance_id: String,
    pub status: Status,
    /// The agent's last phase (`RUNNING`…), or `CANCELLED`/`FAILED` set by the controller.
    pub phase: Option<String>,
    pub error_code: Option<String>,
    pub error_msg: Option<String>,
    /// The agent's `Result` (files, install) as JSON.
    pub result_json: Option<String>,
    pub progress: u8,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub start_ms: Option<u64>,
    pub finish_ms: Option<u64>,
    /// A Run order was handed to the broker at least once.
    pub sent: bool,
    pub cancel_requested: bool,
}

/// A transition the fleet logic computes from a child's current record, applied by the
/// store in one transaction; it returns whether it changed anything (nothing is written
/// otherwise).
pub type ChildChange = Box<dyn FnOnce(&mut Child) -> bool + Send>;

/// A registered phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub created_ms: u64,
    pub online: bool,
    pub last_seen_ms: Option<u64>,
    /// The agent's last `Hello.Agent` as JSON.
    pub agent_json: Option<String>,
}

/// What an agent's message says about its instance.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub now_ms: u64,
    pub online: Option<bool>,
    /// The agent connection `online` speaks for ([`Presence::connection`]): applied only if
    /// it is not older than the newest connection the instance's row has seen. `None` (a
    /// Hello, an agent from before) applies `online` as it comes.
    ///
    /// [`Presence::connection`]: crate::fleet::wire::Presence::connection
    pub connection: Option<u64>,
    pub agent_json: Option<String>,
}

/// DescribeTasks' filters as the store applies them (the service has checked them).
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub task_ids: Vec<String>,
    pub parent_task_id: Option<String>,
    pub instance_id: Option<String>,
    pub statuses: Vec<Status>,
    pub level: Option<u8>,
    pub invoke_id: Option<String>,
    /// Keyset pagination: only rows sorted after this key (see [`TaskPage::last_key`]).
    pub after: Option<i64>,
    pub limit: u32,
}

/// A batch as DescribeTasks shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRow {
    pub task_id: String,
    pub request_id: String,
    pub status: Status,
    pub counts: Counts,
    pub created_ms: u64,
    pub finish_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRecord {
    Batch(BatchRow),
    /// The child and its batch's RequestId (InvokeId).
    Child(Child, String),
}

/// One page of DescribeTasks, newest batch first, each batch followed by its children in
/// request order.
#[derive(Clone, Debug, Default)]
pub struct TaskPage {
    pub total: u64,
    pub rows: Vec<TaskRecord>,
    /// The sort key of the last row, when more rows follow.
    pub last_key: Option<i64>,
}

impl TaskPage {
    /// A page from up to `limit + 1` rows read with their sort keys: the extra row only
    /// tells that more follow.
    pub fn from_rows(mut rows: Vec<(i64, TaskRecord)>, total: i64, limit: u32) -> TaskPage {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        TaskPage {
            total: total.max(0) as u64,
            last_key: if more {
                rows.last().map(|(k, _)| *k)
            } else {
                None
            },
            rows: rows.into_iter().map(|(_, r)| r).collect(),
        }
    }
}

/// What `/metrics` shows of the store, each array in [`Status::ALL`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpsCounts {
    /// Batches by their aggregated status.
    pub batches: [u64; 4],
    /// Children by status: the sums of the batches' own counters, so no children row is read.
    pub children: [u64; 4],
    /// Instances whose agent's last presence said online.
    pub agents_online: u64,
    pub instances: u64,
}

impl OpsCounts {
    /// Adds `n` batches of `status` holding `children` (pending, running, finished, failed).
    pub fn add(&mut self, status: &str, n: i64, children: [i64; 4]) {
        if let Some(i) =
            Status::parse(status).and_then(|s| Status::ALL.iter().position(|x| *x == s))
        {
            self.batches[i] += n.max(0) as u64;
        }
        for (slot, c) in self.children.iter_mut().zip(children) {
            *slot += c.max(0) as u64;
        }
    }
}

/// Batches by status with their children's counts summed; then online and all instances.
pub const OPS_COUNTS_SQL: [&str; 2] = [
    "SELECT status, COUNT(*), COALESCE(SUM(n_pending), 0), COALESCE(SUM(n_running), 0), \
     COALESCE(SUM(n_finished), 0), COALESCE(SUM(n_failed), 0) FROM batches GROUP BY status",
    "SELECT COALESCE(SUM(CASE WHEN online THEN 1 ELSE 0 END), 0), COUNT(*) FROM instances",
];

/// The controller's durable state. Every method that changes something has committed it
/// durably when its future resolves.
pub trait Store: Send + Sync {
    fn add_access_key(&self, id: String, secret: String, now_ms: u64) -> BoxFuture<'_, Result<()>>;
    fn access_key_secret(&self, id: String) -> BoxFuture<'_, Result<Option<String>>>;

    /// Registers an instance with its password's `$7$` and bcrypt hashes, or replaces both
    /// when `rotate`; `false` when it exists and `rotate` is not set (nothing changed).
    fn put_instance(
        &self,
        id: String,
        password_hash: String,
        bcrypt_hash: String,
        rotate: bool,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<bool>>;
    fn instance_password_hash(&self, id: String) -> BoxFuture<'_, Result<Option<String>>>;
    fn instance_password_hashes(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>>;
    /// Every instance with its bcrypt hash, by id; `None` for one registered before bcrypt
    /// hashes were kept (schema 2) and not rotated since.
    fn instance_bcrypt_hashes(
        &self,
    ) -> BoxFuture<'_, Result<crate::controller::ports::BcryptHashes>>;
    /// Those of `ids` that are not registered, in the given order.
    fn unknown_instances(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<String>>>;
    fn instances(&self) -> BoxFuture<'_, Result<Vec<Instance>>>;
    /// Records what an agent said about itself; `false` for an unknown instance.
    fn touch_instance(&self, id: String, seen: Seen) -> BoxFuture<'_, Result<bool>>;

    fn batch_by_client_token(&self, token: String) -> BoxFuture<'_, Result<Option<BatchIds>>>;
    /// Creates a batch and all its children in one transaction. When its ClientToken is
    /// already taken (a concurrent repeat), nothing is created and the existing ids return.
    fn create_batch(&self, batch: NewBatch) -> BoxFuture<'_, Result<Option<BatchIds>>>;
    /// A batch's payload JSON (with credentials), to build Run orders.
    fn batch_payload(&self, batch_id: String) -> BoxFuture<'_, Result<Option<String>>>;
    fn is_batch(&self, task_id: String) -> BoxFuture<'_, Result<bool>>;

    fn child(&self, task_id: String) -> BoxFuture<'_, Result<Option<Child>>>;
    fn batch_children(&self, batch_id: String) -> BoxFuture<'_, Result<Vec<Child>>>;
    /// An instance's children that are not final.
    fn open_children(&self, instance_id: String) -> BoxFuture<'_, Result<Vec<Child>>>;
    /// PENDING children created before `created_before_ms` (expiry candidates).
    fn pending_before(&self, created_before_ms: u64) -> BoxFuture<'_, Result<Vec<Child>>>;
    /// Applies `change` to a child (and its batch's counts) in one transaction; `None` for
    /// an unknown TaskId, else the child as it now is.
    fn update_child(
        &self,
        task_id: String,
        change: ChildChange,
    ) -> BoxFuture<'_, Result<Option<Child>>>;
    /// A group commit: applies every change in order, each as [`Store::update_child`]
    /// would, in one transaction, so many transitions cost one durable write. The children
    /// as they now are, in the same order (`None` for an unknown TaskId). On an error
    /// nothing of the group is committed.
    fn update_children(
        &self,
        changes: Vec<(String, ChildChange)>,
    ) -> BoxFuture<'_, Result<Vec<Option<Child>>>>;
    fn mark_sent(&self, task_ids: Vec<String>) -> BoxFuture<'_, Result<()>>;

    fn describe(&self, filter: TaskFilter) -> BoxFuture<'_, Result<TaskPage>>;

    /// A trivial query, for readiness: `Ok` when the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<()>>;
    /// Tasks by level and status and agents online ([`OPS_COUNTS_SQL`]): one scan of the
    /// batches (not of the children) and one of the instances.
    fn ops_counts(&self) -> BoxFuture<'_, Result<OpsCounts>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_pending_then_running_then_finished_or_failed() {
        let counts = |pending, running, finished, failed| Counts {
            pending,
            running,
            finished,
            failed,
        };
        assert_eq!(counts(3, 0, 0, 0).batch_status(), Status::Pending);
        assert_eq!(counts(2, 1, 0, 0).batch_status(), Status::Running);
        assert_eq!(counts(2, 0, 1, 0).batch_status(), Status::Running);
        assert_eq!(counts(0, 0, 3, 0).batch_status(), Status::Finished);
        assert_eq!(counts(0, 0, 2, 1).batch_status(), Status::Failed);
        assert_eq!(Status::parse("finished"), Some(Status::Finished));
        assert_eq!(Status::parse("Processing"), None);
    }
}
