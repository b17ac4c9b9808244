//! Reading the store's rows: the child columns every child query selects, and the lookups
//! several operations share.

use crate::controller::store::{BatchIds, Child, Counts, Status};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension, Row};

pub(super) const CHILD_COLS: &str =
    "c.task_id, c.batch_id, c.instance_id, c.status, c.phase, c.error_code, \
    c.error_msg, c.result_json, c.progress, c.bytes_done, c.bytes_total, c.created_ms, \
    c.updated_ms, c.start_ms, c.finish_ms, c.sent, c.cancel_requested";

pub(super) fn status_of(text: &str) -> rusqlite::Result<Status> {
    Status::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown status {text:?}").into(),
        )
    })
}

pub(super) fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

/// A child from [`CHILD_COLS`] starting at column `at`.
pub(super) fn child_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Child> {
    Ok(Child {
        task_id: row.get(at)?,
        batch_id: row.get(at + 1)?,
        instance_id: row.get(at + 2)?,
        status: status_of(&row.get::<_, String>(at + 3)?)?,
        phase: row.get(at + 4)?,
        error_code: row.get(at + 5)?,
        error_msg: row.get(at + 6)?,
        result_json: row.get(at + 7)?,
        progress: row.get::<_, i64>(at + 8)?.clamp(0, 100) as u8,
        bytes_done: row.get::<_, i64>(at + 9)?.max(0) as u64,
        bytes_total: opt_u64(row.get(at + 10)?),
        created_ms: row.get::<_, i64>(at + 11)?.max(0) as u64,
        updated_ms: row.get::<_, i64>(at + 12)?.max(0) as u64,
        start_ms: opt_u64(row.get(at + 13)?),
        finish_ms: opt_u64(row.get(at + 14)?),
        sent: row.get(at + 15)?,
        cancel_requested: row.get(at + 16)?,
    })
}

pub(super) fn children_where(
    conn: &Connection,
    condition: &str,
    args: Vec<Value>,
) -> rusqlite::Result<Vec<Child>> {
    let sql = format!("SELECT {CHILD_COLS} FROM children c WHERE {condition} ORDER BY c.seq DESC");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| child_at(r, 0))?;
    rows.collect()
}

pub(super) fn batch_ids(
    conn: &Connection,
    condition: &str,
    arg: &str,
) -> rusqlite::Result<Option<BatchIds>> {
    let found: Option<(String, String)> = conn
        .query_row(
            &format!("SELECT task_id, request_hash FROM batches WHERE {condition}"),
            [arg],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((task_id, request_hash)) = found else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT instance_id, task_id FROM children WHERE batch_id = ?1 ORDER BY seq DESC",
    )?;
    let children = stmt
        .query_map([&task_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    Ok(Some(BatchIds {
        task_id,
        request_hash,
        children,
    }))
}

pub(super) fn counts_of(
    tx: &Connection,
    batch_id: &str,
) -> rusqlite::Result<(Counts, Option<i64>)> {
    tx.query_row(
        "SELECT n_pending, n_running, n_finished, n_failed, finish_ms FROM batches WHERE task_id = ?1",
        [batch_id],
        |r| {
            Ok((
                Counts {
                    pending: r.get(0)?,
                    running: r.get(1)?,
                    finished: r.get(2)?,
                    failed: r.get(3)?,
                },
                r.get(4)?,
            ))
        },
    )
}
