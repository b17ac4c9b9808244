//! DescribeTasks on SQLite: batches and children as one UNION ALL, filtered, counted, and
//! paged by the `seq` sort key.

use super::rows::{child_at, opt_u64, status_of, CHILD_COLS};
use crate::controller::store::{BatchRow, Counts, TaskFilter, TaskPage, TaskRecord};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

fn in_list(column: &str, values: &[String], args: &mut Vec<Value>) -> String {
    let marks: Vec<String> = values
        .iter()
        .map(|v| {
            args.push(Value::Text(v.clone()));
            format!("?{}", args.len())
        })
        .collect();
    format!("{column} IN ({})", marks.join(", "))
}

/// One half of DescribeTasks (batches or children) with its WHERE clause, its arguments
/// pushed onto `args`. Both halves have the same columns, so one UNION ALL sorts and pages
/// them together: the sort key, the level, the child columns (NULL for a batch), the
/// batch's InvokeId and its counts.
fn half(filter: &TaskFilter, batch: bool, args: &mut Vec<Value>) -> Option<String> {
    if filter.level.is_some_and(|l| l != if batch { 1 } else { 2 }) {
        return None;
    }
    if batch && (filter.parent_task_id.is_some() || filter.instance_id.is_some()) {
        return None;
    }
    let table = if batch { "b" } else { "c" };
    let mut wheres = vec!["1 = 1".to_string()];
    if !filter.task_ids.is_empty() {
        wheres.push(in_list(&format!("{table}.task_id"), &filter.task_ids, args));
    }
    if !filter.statuses.is_empty() {
        let names: Vec<String> = filter.statuses.iter().map(|s| s.as_str().into()).collect();
        wheres.push(in_list(&format!("{table}.status"), &names, args));
    }
    if let Some(invoke) = &filter.invoke_id {
        args.push(Value::Text(invoke.clone()));
        wheres.push(format!("b.request_id = ?{}", args.len()));
    }
    if !batch {
        if let Some(parent) = &filter.parent_task_id {
            args.push(Value::Text(parent.clone()));
            wheres.push(format!("c.batch_id = ?{}", args.len()));
        }
        if let Some(instance) = &filter.instance_id {
            args.push(Value::Text(instance.clone()));
            wheres.push(format!("c.instance_id = ?{}", args.len()));
        }
    }
    let sql = if batch {
        format!(
            "SELECT b.seq AS seq, 1 AS level, b.task_id, b.task_id, NULL, b.status, NULL, NULL, \
             NULL, NULL, 0, 0, NULL, b.created_ms, b.created_ms, NULL, b.finish_ms, 0, 0, \
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

pub(super) fn describe(c: &Connection, filter: &TaskFilter) -> rusqlite::Result<TaskPage> {
    let mut args = Vec::new();
    let halves: Vec<String> = [true, false]
        .into_iter()
        .filter_map(|batch| half(filter, batch, &mut args))
        .collect();
    if halves.is_empty() {
        return Ok(TaskPage::default());
    }
    let union = halves.join(" UNION ALL ");
    let total: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM ({union})"),
        params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut page_args = args.clone();
    let after = match filter.after {
        Some(key) => {
            page_args.push(Value::Integer(key));
            format!("WHERE seq < ?{}", page_args.len())
        }
        None => String::new(),
    };
    page_args.push(Value::Integer(i64::from(filter.limit) + 1));
    let sql = format!(
        "SELECT * FROM ({union}) {after} ORDER BY seq DESC LIMIT ?{}",
        page_args.len()
    );
    let mut stmt = c.prepare(&sql)?;
    let rows: Vec<(i64, TaskRecord)> = stmt
        .query_map(params_from_iter(page_args.iter()), |r| {
            let seq: i64 = r.get(0)?;
            let level: i64 = r.get(1)?;
            let invoke: String = r.get(19)?;
            let record = if level == 1 {
                TaskRecord::Batch(BatchRow {
                    task_id: r.get(2)?,
                    request_id: invoke,
                    status: status_of(&r.get::<_, String>(5)?)?,
                    counts: Counts {
                        pending: r.get(20)?,
                        running: r.get(21)?,
                        finished: r.get(22)?,
                        failed: r.get(23)?,
                    },
                    created_ms: r.get::<_, i64>(13)?.max(0) as u64,
                    finish_ms: opt_u64(r.get(16)?),
                })
            } else {
                TaskRecord::Child(child_at(r, 2)?, invoke)
            };
            Ok((seq, record))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(TaskPage::from_rows(rows, total, filter.limit))
}
