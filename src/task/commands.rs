//! The manager's journal-backed commands, each on a blocking thread under the journal lock:
//! admitting a submitted task, cancelling one, and pruning finished ones. Each decides in the
//! table, saves without the table lock, then applies what was saved.

use super::manager::{off_thread, Inner, Submitted};
use super::payload::ValidTask;
use super::record::TaskView;
use super::table::{not_found, Admission};
use crate::error::Result;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Inner {
    /// Intake on a blocking thread: the journal lock makes two submits of one TaskId (or a
    /// submit racing a cancel or the cleanup of a finished run) take turns.
    pub(super) fn admit(&self, task: ValidTask) -> Result<Submitted> {
        let journal = self.journal();
        let record = match self.table().admit(&task)? {
            Admission::Known(view) => {
                return Ok(Submitted {
                    view,
                    created: false,
                })
            }
            Admission::Save(record) => record,
        };
        journal.save(&record)?;
        let view = record.view();
        self.table().admitted(record, Arc::new(task));
        drop(journal);
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.emit(view.clone());
        self.wake.notify_one();
        Ok(Submitted {
            view,
            created: true,
        })
    }

    /// Cancels a pending task at once, or signals a running one to stop (`Ok(None)`).
    /// CANCELLED is shown only once the journal holds it; the partial data goes after that,
    /// still under the journal lock, so a re-submit cannot start a transfer this removes.
    pub(super) fn cancel(&self, id: &str) -> Result<Option<TaskView>> {
        let journal = self.journal();
        let record = {
            let mut table = self.table();
            let slot = table.get_mut(id).ok_or_else(|| not_found(id))?;
            if let Some(run) = slot.run.as_mut() {
                run.by_user = true;
                run.cancel.cancel();
                return Ok(None);
            }
            let mut record = slot.record.clone();
            if record.update(|s, now| s.cancel_pending(now)).is_err() {
                return Ok(Some(slot.record.view()));
            }
            slot.saving = true;
            record
        };
        let saved = journal.save(&record);
        let plan = {
            let mut table = self.table();
            let slot = table.get_mut(id).expect("a saving task stays in the table");
            slot.saving = false;
            saved?;
            slot.record = record.clone();
            slot.plan.clone()
        };
        if let Ok(plan) = plan {
            self.discard(&record.task_id, &plan);
        }
        self.emit(record.view());
        Ok(Some(record.view()))
    }

    /// Removes a task's staging data; failures are logged, the task outcome stands.
    pub(super) fn discard(&self, id: &str, task: &ValidTask) {
        let config = self.services().config.clone();
        if let Err(e) = crate::pipeline::discard_partial(&config, task, id) {
            tracing::warn!(task = %id, error = %e, "cannot remove partial data");
        }
    }

    /// Deletes finished records beyond the configured age and count, with their files.
    pub(super) async fn prune(self: &Arc<Self>) {
        let inner = self.clone();
        let pruned = off_thread("pruning", move || {
            let config = inner.services().config.clone();
            let max_age_ms = config.prune.max_age_hours.saturating_mul(3_600_000);
            let now = crate::timefmt::unix_millis_now();
            // Held throughout: a re-submit of a doomed TaskId waits, then finds it gone.
            let journal = inner.journal();
            let doomed = inner
                .table()
                .prune(now, max_age_ms, config.prune.max_finished);
            for slot in doomed {
                let id = &slot.record.task_id;
                if let (Some(_), Ok(plan)) = (slot.record.state.resume(), &slot.plan) {
                    inner.discard(id, plan);
                }
                if let Err(e) = journal.remove(id) {
                    tracing::warn!(task = %id, error = %e, "cannot prune task record");
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "pruning finished tasks failed");
        }
    }
}
