//! What agents say: reports move a child's state forward only (a late or repeated message
//! changes nothing), a Hello is answered with the orders the agent misses, presence keeps
//! the instance list current; and expiry fails children no agent took in time.

use super::{run_order, Fleet};
use crate::controller::ports::{BoxFuture, Inbox};
use crate::controller::store::{Child, ChildChange, Seen, Status};
use crate::error::{Code, Error, Result};
use crate::fleet::topics::check_instance_id;
use crate::fleet::wire::{Hello, Order, Presence, Report};
use crate::task::payload::TaskPayload;
use crate::task::record::{Phase, TaskView};
use crate::timefmt::unix_millis_now;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn phase_rank(name: Option<&str>) -> u8 {
    match name {
        None => 0,
        Some("PENDING") => 1,
        Some("RUNNING") => 2,
        Some("INSTALLING") => 3,
        Some(_) => 4,
    }
}

/// DescribeTasks' status for an agent phase: held = RUNNING, then FINISHED or FAILED.
pub fn status_for_phase(phase: Phase) -> Status {
    match phase {
        Phase::Pending | Phase::Running | Phase::Installing => Status::Running,
        Phase::Success => Status::Finished,
        Phase::Failed | Phase::Cancelled => Status::Failed,
    }
}

/// Applies one report to a child: never backwards (a phase below the stored one, or any
/// change after a final state, is ignored); within a phase the byte count only grows unless
/// the total changed (a new run of the transfer).
fn apply_report(c: &mut Child, view: &TaskView, now: u64) -> bool {
    if c.status.is_final() {
        return false;
    }
    let name = view.phase.as_str();
    let (old_rank, new_rank) = (phase_rank(c.phase.as_deref()), phase_rank(Some(name)));
    if new_rank < old_rank {
        return false;
    }
    let same_run = new_rank == old_rank && c.bytes_total == view.bytes_total;
    let (bytes_done, progress) = if same_run {
        (
            c.bytes_done.max(view.bytes_done),
            c.progress.max(view.progress),
        )
    } else {
        (view.bytes_done, view.progress)
    };
    let before = c.clone();
    c.status = status_for_phase(view.phase);
    c.phase = Some(name.to_string());
    c.error_code = view
        .error_code
        .as_ref()
        .map(|code| code.as_str().to_string());
    c.error_msg = view.error_msg.clone();
    c.result_json = view
        .result
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok());
    c.progress = progress.min(100);
    c.bytes_done = bytes_done;
    c.bytes_total = view.bytes_total;
    if c.start_ms.is_none() && view.phase != Phase::Pending {
        c.start_ms = Some(now);
    }
    if c.status.is_final() {
        c.finish_ms = Some(now);
    }
    if *c == before {
        return false;
    }
    c.updated_ms = now;
    true
}

/// A report as a store change: the instance check and the transition see the same record
/// (inside the store's transaction).
fn report_change(report: &Report, now: u64) -> (String, ChildChange) {
    let view = report.task.clone();
    let from = report.instance_id.clone();
    (
        view.task_id.clone(),
        Box::new(move |c| c.instance_id == from && apply_report(c, &view, now)),
    )
}

/// What became of a report, from the child as the store has it now.
fn report_outcome(report: &Report, child: Option<Child>) -> Result<()> {
    let id = &report.task.task_id;
    match child {
        None => Err(Error::new(
            Code::ApiNotFound,
            format!(
                "report from {} for task {id}, which this controller never created",
                report.instance_id
            ),
        )),
        Some(c) if c.instance_id != report.instance_id => Err(Error::new(
            Code::ApiUnauthorized,
            format!(
                "report from {} for task {id} of instance {}: refused",
                report.instance_id, c.instance_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

impl Fleet {
    async fn report_now(&self, report: Report) -> Result<()> {
        let (id, change) = report_change(&report, unix_millis_now());
        let child = self.store.update_child(id, change).await?;
        report_outcome(&report, child)
    }

    /// A group commit: every report in one store transaction, in order (a task's later
    /// report sees its earlier one); a failed transaction fails them all.
    async fn reports_now(&self, reports: Vec<Report>) -> Vec<Result<()>> {
        let now = unix_millis_now();
        let changes = reports.iter().map(|r| report_change(r, now)).collect();
        match self.store.update_children(changes).await {
            Ok(children) => reports
                .iter()
                .zip(children)
                .map(|(report, child)| report_outcome(report, child))
                .collect(),
            Err(e) => reports.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn hello_now(&self, hello: Hello) -> Result<Vec<Order>> {
        let instance = hello.instance_id;
        check_instance_id(&instance)?;
        let seen = Seen {
            now_ms: unix_millis_now(),
            online: Some(true),
            connection: None,
            agent_json: serde_json::to_string(&hello.agent).ok(),
        };
        if !self.store.touch_instance(instance.clone(), seen).await? {
            return Err(unknown_instance(&instance));
        }
        let mut held: HashMap<String, Phase> = hello
            .held
            .into_iter()
            .map(|t| (t.task_id, t.phase))
            .collect();
        let mut orders = Vec::new();
        let mut runs = Vec::new();
        for child in self.store.open_children(instance.clone()).await? {
            match held.remove(&child.task_id) {
                Some(phase) if child.cancel_requested => {
                    if !phase.is_finished() {
                        orders.push(Order::Cancel {
                            task_id: child.task_id,
                        });
                    }
                }
                Some(phase) => {
                    if child.status == Status::Pending && !phase.is_finished() {
                        // The agent has it: acknowledged, whatever its reports said so far.
                        let name = phase.as_str().to_string();
                        self.store
                            .update_child(
                                child.task_id,
                                Box::new(move |c| {
                                    if c.status != Status::Pending {
                                        return false;
                                    }
                                    c.status = Status::Running;
                                    c.phase = Some(name);
                                    c.updated_ms = unix_millis_now();
                                    true
                                }),
                            )
                            .await?;
                    }
                }
                // Cancelled while the agent never had it: it ends here.
                None if child.cancel_requested => {
                    self.store
                        .update_child(child.task_id, Box::new(cancel_before_delivery))
                        .await?;
                }
                None => runs.push(child),
            }
        }
        // Tasks the agent still runs that ended here (expired, cancelled): stop them.
        for (task_id, phase) in held {
            if phase.is_finished() {
                continue;
            }
            if let Some(child) = self.store.child(task_id.clone()).await? {
                if child.instance_id == instance && child.status.is_final() {
                    orders.push(Order::Cancel { task_id });
                }
            }
        }
        let mut payloads = HashMap::new();
        let mut resent = Vec::new();
        for child in runs {
            let Some(payload) = self.payload(&mut payloads, &child.batch_id).await? else {
                continue;
            };
            orders.push(run_order(payload, &child.task_id));
            resent.push(child.task_id);
        }
        if !resent.is_empty() {
            self.store.mark_sent(resent).await?;
        }
        Ok(orders)
    }

    async fn presence_now(&self, instance_id: &str, presence: Presence) -> Result<()> {
        let seen = Seen {
            now_ms: unix_millis_now(),
            online: Some(presence.online),
            connection: presence.connection,
            agent_json: None,
        };
        if self
            .store
            .touch_instance(instance_id.to_string(), seen)
            .await?
        {
            Ok(())
        } else {
            Err(unknown_instance(instance_id))
        }
    }

    /// Fails every child no agent took within the expiry (`Fleet.InstanceOffline`); returns
    /// their TaskIds.
    pub async fn expire_due(&self) -> Result<Vec<String>> {
        let expiry_ms = self.config.expiry.as_millis() as u64;
        let cutoff = unix_millis_now().saturating_sub(expiry_ms);
        let mut expired = Vec::new();
        for child in self.store.pending_before(cutoff).await? {
            let expiry = self.config.expiry;
            // Set only by the rule that moved the row: another replica that expired the child
            // first leaves it FAILED with the same code, and this one must not claim it too.
            let moved = Arc::new(AtomicBool::new(false));
            let moved_here = Arc::clone(&moved);
            let updated = self
                .store
                .update_child(
                    child.task_id.clone(),
                    Box::new(move |c| {
                        if c.status != Status::Pending {
                            return false;
                        }
                        moved_here.store(true, Ordering::Relaxed);
                        let now = unix_millis_now();
                        c.status = Status::Failed;
                        c.phase = Some("FAILED".into());
                        c.error_code = Some(Code::FleetInstanceOffline.as_str().into());
                        c.error_msg = Some(format!(
                            "instance {} did not take the task within {} s of SendFile (offline or unreachable); it never ran",
                            c.instance_id,
                            expiry.as_secs()
                        ));
                        c.finish_ms = Some(now);
                        c.updated_ms = now;
                        true
                    }),
                )
                .await?;
            // The store returned after its commit, so the change the rule made is durable.
            if updated.is_some() && moved.load(Ordering::Relaxed) {
                tracing::info!(task_id = %child.task_id, instance = %child.instance_id, "task expired");
                expired.push(child.task_id);
            }
        }
        Ok(expired)
    }

    /// Sends the Run order again of every child still PENDING [`FleetConfig::resend`] after
    /// SendFile whose instance is shown online (it would have reported on a delivered order);
    /// returns their TaskIds. An agent ignores a Run of a task it holds, so a resend that
    /// crossed the agent's first report changes nothing. Offline instances are left to their
    /// Hello, which brings every missing order when they connect.
    ///
    /// [`FleetConfig::resend`]: super::FleetConfig::resend
    pub async fn resend_due(&self) -> Result<Vec<String>> {
        let cutoff = unix_millis_now().saturating_sub(self.config.resend.as_millis() as u64);
        let pending = self.store.pending_before(cutoff).await?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let online: std::collections::HashSet<String> = self
            .store
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.online)
            .map(|i| i.instance_id)
            .collect();
        let mut payloads = HashMap::new();
        let mut resent = Vec::new();
        for child in pending {
            if child.cancel_requested || !online.contains(&child.instance_id) {
                continue;
            }
            let Some(payload) = self.payload(&mut payloads, &child.batch_id).await? else {
                continue;
            };
            let order = run_order(payload, &child.task_id);
            match self.outbox.send(&child.instance_id, order).await {
                Ok(()) => resent.push(child.task_id),
                Err(e) => {
                    tracing::warn!(instance = %child.instance_id, task_id = %child.task_id, error = %e, "Run order not sent again; next check retries");
                }
            }
        }
        if !resent.is_empty() {
            tracing::info!(
                orders = resent.len(),
                "sent again the Run orders of tasks their online agents have not taken"
            );
            self.store.mark_sent(resent.clone()).await?;
        }
        Ok(resent)
    }

    /// A batch's agent payload, read once per call of its user (`cache`); `None` when the
    /// batch is gone.
    async fn payload<'c>(
        &self,
        cache: &'c mut HashMap<String, Option<TaskPayload>>,
        batch_id: &str,
    ) -> Result<Option<&'c TaskPayload>> {
        if !cache.contains_key(batch_id) {
            let payload = match self.store.batch_payload(batch_id.to_string()).await? {
                Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                    Error::new(
                        Code::Internal,
                        format!("stored payload of batch {batch_id}: {e}"),
                    )
                })?),
                None => None,
            };
            cache.insert(batch_id.to_string(), payload);
        }
        Ok(cache[batch_id].as_ref())
    }

    /// Sends untaken orders again every [`FleetConfig::resend`] until `shutdown`.
    ///
    /// [`FleetConfig::resend`]: super::FleetConfig::resend
    pub async fn run_resend(&self, shutdown: impl Future<Output = ()>) {
        let every = self.config.resend.max(Duration::from_secs(1));
        let what = "sending untaken orders again";
        periodically(every, every, shutdown, what, || self.resend_due()).await
    }

    /// How often [`Fleet::run_expiry`] checks: a tenth of the expiry, at least a second.
    pub fn expiry_interval(&self) -> Duration {
        (self.config.expiry / 10).max(Duration::from_secs(1))
    }

    /// Checks for expired children every [`Fleet::expiry_interval`] until `shutdown`.
    pub async fn run_expiry(&self, shutdown: impl Future<Output = ()>) {
        let every = self.expiry_interval();
        let what = "checking for expired tasks";
        periodically(Duration::ZERO, every, shutdown, what, || self.expire_due()).await
    }
}

/// Runs `check` after `first`, then every `every`, until `shutdown`; a failure is logged
/// (`what` failed) and the next round tries again.
async fn periodically<T, F: Future<Output = Result<T>>>(
    first: Duration,
    every: Duration,
    shutdown: impl Future<Output = ()>,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if let Err(e) = check().await {
                    tracing::warn!(error = %e, "{what}");
                }
            }
        }
    }
}

/// A cancelled child no agent runs (never taken, or no longer held): failed here with
/// `Cancelled`.
pub(crate) fn cancel_before_delivery(c: &mut Child) -> bool {
    if c.status.is_final() {
        return false;
    }
    let now = unix_millis_now();
    c.cancel_requested = true;
    c.status = Status::Failed;
    c.phase = Some("CANCELLED".into());
    c.error_code = Some(Code::Cancelled.as_str().into());
    c.error_msg = Some(format!(
        "cancelled while instance {} was not running the task",
        c.instance_id
    ));
    c.finish_ms = Some(now);
    c.updated_ms = now;
    true
}

fn unknown_instance(id: &str) -> Error {
    Error::new(
        Code::FleetUnknownInstance,
        format!("message from instance {id}, which is not registered with this controller"),
    )
}

impl Inbox for Fleet {
    fn report(&self, report: Report) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.report_now(report))
    }

    fn reports(&self, reports: Vec<Report>) -> BoxFuture<'_, Vec<Result<()>>> {
        Box::pin(self.reports_now(reports))
    }

    fn hello(&self, hello: Hello) -> BoxFuture<'_, Result<Vec<Order>>> {
        Box::pin(self.hello_now(hello))
    }

    fn presence(&self, instance_id: &str, presence: Presence) -> BoxFuture<'_, Result<()>> {
        let instance_id = instance_id.to_string();
        Box::pin(async move { self.presence_now(&instance_id, presence).await })
    }
}
