//! DescribeTasks on PostgreSQL: batches and children as one UNION ALL, filtered, counted, and
//! paged by the `seq` sort key, as on SQLite. Each half's filter is an index on
//! `(filter column, seq)` (see the migration), so a page is a backward index scan of both
//! halves merged (Merge Append) that stops after MaxResults + 1 rows.

use super::rows::{child_at, count, opt_u64, status_of, Db, CHILD_COLS};
use crate::controller::store::{BatchRow, Counts, TaskFilter, TaskPage, TaskRecord};
use crate::error::Result;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// One query argument, owned until the query runs.
enum Arg {
    Text(String),
    Texts(Vec<String>),
    Int(i64),
}

impl Arg {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Arg::Text(v) => v,
            Arg::Texts(v) => v,
            Arg::Int(v) => v,
        }
    }
}

fn push(args: &mut Vec<Arg>, arg: Arg) -> String {
    args.push(arg);
    format!("${}", args.len())
}

/// One half of DescribeTasks (batches or children) with its WHERE clause, its arguments
/// pushed onto `args`; both halves have the same columns (see SQLite's `query.rs`).
fn half(filter: &TaskFilter, batch: bool, args: &mut Vec<Arg>) -> Option<String> {
    if filter.level.is_some_and(|l| l != if batch { 1 } else { 2 }) {
        return None;
    }
    if batch && (filter.parent_task_id.is_some() || filter.instance_id.is_some()) {
        return None;
    }
    let table = if batch { "b" } else { "c" };
    let mut wheres = vec!["TRUE".to_string()];
    if !filter.task_ids.is_empty() {
        let mark = push(args, Arg::Texts(filter.task_ids.clone()));
        wheres.push(format!("{table}.task_id = ANY({mark}::text[])"));
    }
    if !filter.statuses.is_empty() {
        let names = filter.statuses.iter().map(|s| s.as_str().into()).collect();
        let mark = push(args, Arg::Texts(names));
        wheres.push(format!("{table}.status = ANY({mark}::text[])"));
    }
    if let Some(invoke) = &filter.invoke_id {
        let mark = push(args, Arg::Text(invoke.clone()));
        wheres.push(format!("b.request_id = {mark}"));
    }
    if !batch {
        if let Some(parent) = &filter.parent_task_id {
            let mark = push(args, Arg::Text(parent.clone()));
            wheres.push(format!("c.batch_id = {mark}"));
        }
        if let Some(instance) = &filter.instance_id {
            let mark = push(args, Arg::Text(instance.clone()));
            wheres.push(format!("c.instance_id = {mark}"));
        }
    }
    let sql = if batch {
        format!(
            "SELECT b.seq AS seq, 1 AS level, b.task_id, b.task_id, NULL::text, b.status, \
             NULL::text, NULL::text, NULL::text, NULL::text, 0, 0::bigint, NULL::bigint, \
             b.created_ms, b.created_ms, NULL::bigint, b.finish_ms, FALSE, FALSE, \
             b.request_id, b.n_pending, b.n_running, b.n_finished, b.n_failed \
             FROM batches b WHERE {}",
            wheres.join(" AND ")
        )
    } else {
        format!(
            "SELECT c.seq AS seq, 2 AS level, {CHILD_COLS}, b.request_id, 0, 0, 0, 0 \
             FROM children c JOIN batches b ON b.task_id = c.batch_id WHERE {}",
            wheres.join(" AND ")
        )
    };
    Some(sql)
}

pub(super) async fn describe(c: &impl GenericClient, filter: &TaskFilter) -> Result<TaskPage> {
    let mut args = Vec::new();
    let halves: Vec<String> = [true, false]
        .into_iter()
        .filter_map(|batch| half(filter, batch, &mut args))
        .collect();
    if halves.is_empty() {
        return Ok(TaskPage::default());
    }
    let union = halves.join(" UNION ALL ");
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(Arg::sql).collect();
    let total: i64 = c
        .query_one(&format!("SELECT COUNT(*) FROM ({union}) u"), &params)
        .await
        .db()?
        .try_get(0)
        .db()?;
    let after = match filter.after {
        Some(key) => format!("WHERE seq < {}", push(&mut args, Arg::Int(key))),
        None => String::new(),
    };
    let limit = push(&mut args, Arg::Int(i64::from(filter.limit) + 1));
    let sql = format!("SELECT * FROM ({union}) u {after} ORDER BY seq DESC LIMIT {limit}");
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(Arg::sql).collect();
    let mut rows = Vec::new();
    for r in c.query(&sql, &params).await.db()? {
        let seq: i64 = r.try_get(0).db()?;
        let level: i32 = r.try_get(1).db()?;
        let invoke: String = r.try_get(19).db()?;
        let record = if level == 1 {
            TaskRecord::Batch(BatchRow {
                task_id: r.try_get(2).db()?,
                request_id: invoke,
                status: status_of(r.try_get(5).db()?)?,
                counts: Counts {
                    pending: count(r.try_get(20).db()?),
                    running: count(r.try_get(21).db()?),
                    finished: count(r.try_get(22).db()?),
                    failed: count(r.try_get(23).db()?),
                },
                created_ms: r.try_get::<_, i64>(13).db()?.max(0) as u64,
                finish_ms: opt_u64(r.try_get(16).db()?),
            })
        } else {
            TaskRecord::Child(child_at(&r, 2)?, invoke)
        };
        rows.push((seq, record));
    }
    let more = rows.len() > filter.limit as usize;
    rows.truncate(filter.limit as usize);
    Ok(TaskPage {
        total: total.max(0) as u64,
        last_key: if more {
            rows.last().map(|(k, _)| *k)
        } else {
            None
        },
        rows: rows.into_iter().map(|(_, r)| r).collect(),
    })
}
