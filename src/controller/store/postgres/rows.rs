//! Reading the PostgreSQL store's rows: the child columns every child query selects, the
//! lookups several operations share, and database errors as ferry's.

use crate::controller::store::{BatchIds, Child, Counts, Status};
use crate::error::{Code, Error, Result};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub(super) const CHILD_COLS: &str =
    "c.task_id, c.batch_id, c.instance_id, c.status, c.phase, c.error_code, \
    c.error_msg, c.result_json, c.progress, c.bytes_done, c.bytes_total, c.created_ms, \
    c.updated_ms, c.start_ms, c.finish_ms, c.sent, c.cancel_requested";

pub(super) fn db_err(e: tokio_postgres::Error) -> Error {
    Error::new(
        Code::Internal,
        format!("controller state (PostgreSQL): {}", chain(&e)),
    )
}

/// An error with its causes: tokio-postgres shows a server's error as just "db error", its
/// text being the cause. None of them holds the connection's password.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// `?` on a database call: its error as ferry's.
pub(super) trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for std::result::Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T> {
        self.map_err(db_err)
    }
}

pub(super) fn status_of(text: &str) -> Result<Status> {
    Status::parse(text).ok_or_else(|| {
        Error::new(
            Code::Internal,
            format!("controller state (PostgreSQL): unknown status {text:?}"),
        )
    })
}

pub(super) fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

pub(super) fn count(v: i32) -> u32 {
    v.max(0) as u32
}

/// A child from [`CHILD_COLS`] starting at column `at`.
pub(super) fn child_at(row: &Row, at: usize) -> Result<Child> {
    Ok(Child {
        task_id: row.try_get(at).db()?,
        batch_id: row.try_get(at + 1).db()?,
        instance_id: row.try_get(at + 2).db()?,
        status: status_of(row.try_get(at + 3).db()?)?,
        phase: row.try_get(at + 4).db()?,
        error_code: row.try_get(at + 5).db()?,
        error_msg: row.try_get(at + 6).db()?,
        result_json: row.try_get(at + 7).db()?,
        progress: row.try_get::<_, i32>(at + 8).db()?.clamp(0, 100) as u8,
        bytes_done: row.try_get::<_, i64>(at + 9).db()?.max(0) as u64,
        bytes_total: opt_u64(row.try_get(at + 10).db()?),
        created_ms: row.try_get::<_, i64>(at + 11).db()?.max(0) as u64,
        updated_ms: row.try_get::<_, i64>(at + 12).db()?.max(0) as u64,
        start_ms: opt_u64(row.try_get(at + 13).db()?),
        finish_ms: opt_u64(row.try_get(at + 14).db()?),
        sent: row.try_get(at + 15).db()?,
        cancel_requested: row.try_get(at + 16).db()?,
    })
}

/// Children matching `condition` (over `c`), newest first; `lock` reads them FOR UPDATE
/// (inside a transaction).
pub(super) async fn children_where(
    conn: &impl GenericClient,
    condition: &str,
    args: &[&(dyn ToSql + Sync)],
    lock: bool,
) -> Result<Vec<Child>> {
    let sql = format!(
        "SELECT {CHILD_COLS} FROM children c WHERE {condition} ORDER BY c.seq DESC{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let stmt = conn.prepare_cached(&sql).await.db()?;
    let rows = conn.query(&stmt, args).await.db()?;
    rows.iter().map(|r| child_at(r, 0)).collect()
}

/// The ids of the batch holding ClientToken `token`, children in request order.
pub(super) async fn batch_by_token(
    conn: &impl GenericClient,
    token: &str,
) -> Result<Option<BatchIds>> {
    let Some(row) = conn
        .query_opt(
            "SELECT task_id, request_hash FROM batches WHERE client_token = $1",
            &[&token],
        )
        .await
        .db()?
    else {
        return Ok(None);
    };
    let (task_id, request_hash): (String, String) = (row.try_get(0).db()?, row.try_get(1).db()?);
    let children = conn
        .query(
            "SELECT instance_id, task_id FROM children WHERE batch_id = $1 ORDER BY seq DESC",
            &[&task_id],
        )
        .await
        .db()?
        .iter()
        .map(|r| Ok((r.try_get(0).db()?, r.try_get(1).db()?)))
        .collect::<Result<Vec<(String, String)>>>()?;
    Ok(Some(BatchIds {
        task_id,
        request_hash,
        children,
    }))
}

/// A batch's counts and finish time, its row locked until the transaction ends.
pub(super) async fn counts_for_update(
    conn: &impl GenericClient,
    batch_id: &str,
) -> Result<(Counts, Option<i64>)> {
    let read = conn
        .prepare_cached(
            "SELECT n_pending, n_running, n_finished, n_failed, finish_ms FROM batches \
             WHERE task_id = $1 FOR UPDATE",
        )
        .await
        .db()?;
    let row = conn.query_one(&read, &[&batch_id]).await.db()?;
    Ok((
        Counts {
            pending: count(row.try_get(0).db()?),
            running: count(row.try_get(1).db()?),
            finished: count(row.try_get(2).db()?),
            failed: count(row.try_get(3).db()?),
        },
        row.try_get(4).db()?,
    ))
}
