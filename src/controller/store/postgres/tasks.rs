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
    // Locked until commit: another replica's transition of this child waits, then
    // its rule sees what this one wrote.
    let Some(mut child) = children_where(&tx, "c.task_id = $1", &[&task_id], true)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let before = child.status;
    if !change(&mut child) {
        tx.rollback().await.db()?;
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
        let (mut counts, finish_ms) = counts_for_update(&tx, &child.batch_id).await?;
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
    tx.commit().await.db()?;
    Ok(Some(child))
}
