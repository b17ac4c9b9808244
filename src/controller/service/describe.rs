//! DescribeTasks: the query checked and turned into a [`TaskFilter`], the store's records
//! into Alibaba's rows (Level 1 batches with their counts, Level 2 children with the agent's
//! code, message and result), with an opaque NextToken for keyset paging.

use crate::controller::model::{ApiError, DescribeTasksQuery, DescribeTasksResponse, TaskRow};
use crate::controller::store::{Child, Status, Store, TaskFilter, TaskRecord};
use crate::error::{Code, Error};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

pub const DEFAULT_MAX_RESULTS: u32 = 10;
pub const MAX_RESULTS: u32 = 100;
pub const TASK_TYPE: &str = "SendFile";
const TOKEN_PREFIX: &str = "ferry1:";

fn bad(code: Code, message: String) -> ApiError {
    ApiError::from(Error::new(code, message))
}

/// NextToken: the sort key of the last row returned, opaque to callers.
pub fn encode_token(key: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{key}"))
}

pub fn decode_token(token: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(TOKEN_PREFIX)?.parse().ok()
}

fn filter_from(query: DescribeTasksQuery) -> Result<Option<TaskFilter>, ApiError> {
    let limit = match query.max_results {
        0 => DEFAULT_MAX_RESULTS,
        n if n <= MAX_RESULTS => n,
        n => {
            return Err(bad(
                Code::InvalidMaxResults,
                format!("MaxResults {n} is not between 1 and {MAX_RESULTS}"),
            ))
        }
    };
    if let Some(level) = query.level.filter(|l| !matches!(l, 1 | 2)) {
        return Err(bad(
            Code::InvalidLevel,
            format!("Level {level} is not 1 (batch) or 2 (one instance)"),
        ));
    }
    let statuses = query
        .task_statuses
        .iter()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                bad(
                    Code::InvalidTaskStatus,
                    format!("TaskStatus {s:?} is not one of PENDING, RUNNING, FINISHED, FAILED"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let after = match &query.next_token {
        Some(token) if !token.is_empty() => Some(decode_token(token).ok_or_else(|| {
            bad(
                Code::InvalidNextToken,
                "NextToken was not issued by this controller; pass the NextToken of the previous answer unchanged".into(),
            )
        })?),
        _ => None,
    };
    // Every task here is a SendFile: asking for other types only is asking for nothing.
    if !query.task_types.is_empty()
        && !query
            .task_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(TASK_TYPE))
    {
        return Ok(None);
    }
    Ok(Some(TaskFilter {
        task_ids: query.task_ids,
        parent_task_id: query.parent_task_id.filter(|s| !s.is_empty()),
        instance_id: query.instance_id.filter(|s| !s.is_empty()),
        statuses,
        level: query.level,
        invoke_id: query.invoke_id.filter(|s| !s.is_empty()),
        after,
        limit,
    }))
}

pub async fn describe(
    store: &dyn Store,
    query: DescribeTasksQuery,
) -> Result<DescribeTasksResponse, ApiError> {
    let Some(filter) = filter_from(query)? else {
        return Ok(DescribeTasksResponse {
            total_count: 0,
            next_token: None,
            data: Vec::new(),
        });
    };
    let page = store.describe(filter).await?;
    Ok(DescribeTasksResponse {
        total_count: page.total,
        next_token: page.last_key.map(encode_token),
        data: page.rows.into_iter().map(row).collect(),
    })
}

/// `2026-12-01T10:00:00Z`: ISO 8601 UTC to the second, as Alibaba's API writes times.
pub fn iso(ms: u64) -> String {
    let text = crate::timefmt::rfc3339(ms);
    match text.split_once('.') {
        Some((seconds, _)) => format!("{seconds}Z"),
        None => text,
    }
}

fn row(record: TaskRecord) -> TaskRow {
    match record {
        TaskRecord::Batch(b) => TaskRow {
            task_id: b.task_id,
            parent_task_id: None,
            task_type: TASK_TYPE.into(),
            task_status: b.status.as_str().into(),
            instance_id: None,
            level: 1,
            invoke_id: Some(b.request_id),
            error_code: None,
            error_msg: None,
            result: None,
            start_time: Some(iso(b.created_ms)),
            finish_time: b.finish_ms.map(iso),
            total_child_count: Some(b.counts.total()),
            success_child_count: Some(b.counts.finished),
            failed_child_count: Some(b.counts.failed),
            running_child_count: Some(b.counts.pending + b.counts.running),
        },
        TaskRecord::Child(c, invoke_id) => TaskRow {
            result: Some(result_text(&c)),
            task_id: c.task_id,
            parent_task_id: Some(c.batch_id),
            task_type: TASK_TYPE.into(),
            task_status: c.status.as_str().into(),
            instance_id: Some(c.instance_id),
            level: 2,
            invoke_id: Some(invoke_id),
            error_code: c.error_code,
            error_msg: c.error_msg,
            start_time: c.start_ms.map(iso),
            finish_time: c.finish_ms.map(iso),
            total_child_count: None,
            success_child_count: None,
            failed_child_count: None,
            running_child_count: None,
        },
    }
}

/// A child's `Result` (a JSON text, as the SDK models it): the agent's phase and progress,
/// then its result (`Files` with final path, size and sha256; `Install`; `Notes`).
fn result_text(c: &Child) -> String {
    let mut out = Map::new();
    out.insert(
        "Phase".into(),
        Value::from(c.phase.clone().unwrap_or_else(|| "QUEUED".into())),
    );
    out.insert("Progress".into(), Value::from(c.progress));
    out.insert("BytesDone".into(), Value::from(c.bytes_done));
    out.insert(
        "BytesTotal".into(),
        c.bytes_total.map(Value::from).unwrap_or(Value::Null),
    );
    if let Some(Ok(Value::Object(result))) =
        c.result_json.as_deref().map(serde_json::from_str::<Value>)
    {
        out.extend(result);
    }
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode_token(&encode_token(4242)), Some(4242));
        assert_eq!(decode_token("abc"), None);
        assert_eq!(decode_token(&URL_SAFE_NO_PAD.encode("other:1")), None);
        assert_eq!(iso(1_795_820_080_123), "2026-11-27T22:54:40Z");
    }
}
