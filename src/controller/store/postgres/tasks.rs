//! The two multi-statement transactions: a batch with all its children, and a child's
//! transition with its batch's counts. Both are what keeps several replicas on one database
//! consistent (see the module above).

use super::rows::{batch_by_token, children_where, counts_for_update, Db};
use super::{ms, PgStore, CHILD_BITS};
use crate::controller::store::{BatchIds, Child, ChildChange, Counts, NewBatch};
use crate::error::{Code, Error, Result};

/// [`Store::create_batch`](crate::controller::store::Store::create_batch).
pub(super) async fn create_batch(store: &PgStore, batch: NewBatch) -> Result<Option<BatchIds>> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.db()?;
    let number: i64 = tx
        .query_one("SELECT nextval('batch_numbers')", &[])
        .await
        .db()?
        .try_get(0)
        .db()?;
    let base = number << CHILD_BITS;
    let n = batch.children.len() as i64;
    let counts = Counts {
        pending: n as u32,
        ..Counts::default()
    };
    // A concurrent SendFile with this ClientToken (on any replica) that committed, or
    // commits while this waits on its row, wins: nothing is inserted here.
    let inserted = tx
        .execute(
            "INSERT INTO batches (task_id, seq, request_id, client_token, request_hash, \
             payload_json, created_ms, status, n_pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (client_token) DO NOTHING",
            &[
                &batch.task_id,
                &(base + n + 1),
                &batch.request_id,
                &batch.client_token,
                &batch.request_hash,
                &batch.payload_json,
                &ms(batch.created_ms),
                &counts.batch_status().as_str(),
                &(n as i32),
            ],
        )
        .await
        .db()?;
    if inserted == 0 {
        let token = batch.client_token.as_deref().unwrap_or_default();
        let existing = batch_by_token(&tx, token).await?;
        tx.rollback().await.db()?;
        return match existing {
            Some(ids) => Ok(Some(ids)),
            None => Err(Error::new(
                Code::Internal,
                format!("controller state (PostgreSQL): ClientToken {token:?} conflicted, yet no batch holds it"),
            )),
        };
    }
    let (instances, task_ids): (Vec<String>, Vec<String>) = batch.children.iter().cloned().unzip();
    let seqs: Vec<i64> = (0..n).map(|i| base + n - i).collect();
    tx.execute(
        "INSERT INTO children (task_id, seq, batch_id, instance_id, status, created_ms, updated_ms) \
         SELECT u.task_id, u.seq, $4, u.instance_id, 'PENDING', $5, $5 \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS u (task_id, seq, instance_id)",
        &[&task_ids, &seqs, &instances, &batch.task_id, &ms(batch.created_ms)],
    )
    .await
    .db()?;
    tx.commit().await.db()?;
    Ok(None)
}

/// [`Store::update_child`](crate::controller::store::Store::update_child).
pub(super) async fn update_child(
    store: &PgStore,
    task_id: String,
    change: ChildChange,
) -> Result<Option<Child>> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.db()?;
    let child = apply_change(&tx, task_id, change).await?;
    tx.commit().await.db()?;
    Ok(child)
}

/// How often a group is tried when the database breaks a lock cycle (or a serialization
/// conflict) while its rows are being locked.
const GROUP_ATTEMPTS: u32 = 5;

/// [`Store::update_children`](crate::controller::store::Store::update_children): the group
/// in one transaction. Every child it names, then every batch of those, is locked first, each
/// set in task id order, so two replicas applying overlapping groups wait for each other
/// instead of deadlocking (and a single transition, child then batch, cannot close a cycle
/// with a group either). Should the database still break a cycle while the locks are taken
/// (another writer locking in some other order), the whole group is tried again, at most
/// [`GROUP_ATTEMPTS`] times: no rule has run yet then. The changes are then applied in order,
/// each exactly as [`update_child`] applies one, under locks already held.
pub(super) async fn update_children(
    store: &PgStore,
    changes: Vec<(String, ChildChange)>,
) -> Result<Vec<Option<Child>>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<String> = changes.iter().map(|(id, _)| id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut client = store.client().await?;
    let mut attempt = 1;
    loop {
        let tx = client.transaction().await.db()?;
        match lock_group(&tx, &ids).await {
            Ok(()) => {
                let mut children = Vec::with_capacity(changes.len());
                for (task_id, change) in changes {
                    children.push(apply_change(&tx, task_id, change).await?);
                }
                tx.commit().await.db()?;
                return Ok(children);
            }
            Err(e) if attempt < GROUP_ATTEMPTS && is_lock_conflict(&e) => {
                tx.rollback().await.db()?;
                tracing::debug!(
                    attempt,
                    "controller state (PostgreSQL): group of transitions retried after {}",
                    super::rows::chain(&e)
                );
                tokio::time::sleep(std::time::Duration::from_millis(
                    fastrand::u64(1..=10) * u64::from(attempt),
                ))
                .await;
                attempt += 1;
            }
            Err(e) => return Err(super::rows::db_err(e)),
        }
    }
}

fn is_lock_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Locks a group's children, then their batches, each set in task id order.
async fn lock_group(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[String],
) -> std::result::Result<(), tokio_postgres::Error> {
    let children = tx
        .prepare_cached(
            "SELECT task_id FROM children WHERE task_id = ANY($1::text[]) \
             ORDER BY task_id FOR UPDATE",
        )
        .await?;
    tx.query(&children, &[&ids]).await?;
    let batches = tx
        .prepare_cached(
            "SELECT task_id FROM batches WHERE task_id IN \
             (SELECT batch_id FROM children WHERE task_id = ANY($1::text[])) \
             ORDER BY task_id FOR UPDATE",
        )
        .await?;
    tx.query(&batches, &[&ids]).await?;
    Ok(())
}

/// Applies one [`ChildChange`] inside the caller's transaction: the child's row, and its
/// batch's counts when its status moved. `None` for an unknown TaskId.
async fn apply_change(
    tx: &deadpool_postgres::Transaction<'_>,
    task_id: String,
    change: ChildChange,
) -> Result<Option<Child>> {
    // Locked until commit: another replica's transition of this child waits, then
    // its rule sees what this one wrote.
    let Some(mut child) = children_where(tx, "c.task_id = $1", &[&task_id], true)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let before = child.status;
    if !change(&mut child) {
        return Ok(Some(child));
    }
    let write = tx
        .prepare_cached(
            "UPDATE children SET status = $2, phase = $3, error_code = $4, error_msg = $5, \
             result_json = $6, progress = $7, bytes_done = $8, bytes_total = $9, \
             updated_ms = $10, start_ms = $11, finish_ms = $12, sent = $13, \
             cancel_requested = $14 WHERE task_id = $1 AND status = $15",
        )
        .await
        .db()?;
    let updated = tx
        .execute(
            &write,
            &[
                &child.task_id,
                &child.status.as_str(),
                &child.phase,
                &child.error_code,
                &child.error_msg,
                &child.result_json,
                &i32::from(child.progress),
                &ms(child.bytes_done),
                &child.bytes_total.map(ms),
                &ms(child.updated_ms),
                &child.start_ms.map(ms),
                &child.finish_ms.map(ms),
                &child.sent,
                &child.cancel_requested,
                &before.as_str(),
            ],
        )
        .await
        .db()?;
    if updated != 1 {
        // Cannot happen under the row lock; refuse rather than write blind.
        return Err(Error::new(
            Code::Internal,
            format!("controller state (PostgreSQL): task {task_id} changed under its row lock"),
        ));
    }
    if before != child.status {
        let (mut counts, finish_ms) = counts_for_update(tx, &child.batch_id).await?;
        let old = counts.slot(before);
        *old = old.saturating_sub(1);
        *counts.slot(child.status) += 1;
        let status = counts.batch_status();
        let finish_ms = match (status.is_final(), finish_ms) {
            (true, None) => Some(ms(child.updated_ms)),
            (true, kept) => kept,
            (false, _) => None,
        };
        let write = tx
            .prepare_cached(
                "UPDATE batches SET status = $2, n_pending = $3, n_running = $4, \
                 n_finished = $5, n_failed = $6, finish_ms = $7 WHERE task_id = $1",
            )
            .await
            .db()?;
        tx.execute(
            &write,
            &[
                &child.batch_id,
                &status.as_str(),
                &(counts.pending as i32),
                &(counts.running as i32),
                &(counts.finished as i32),
                &(counts.failed as i32),
                &finish_ms,
            ],
        )
        .await
        .db()?;
    }
    Ok(Some(child))
}
