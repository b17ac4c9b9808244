//! `--watch`: one batch followed through DescribeTasks until every phone is done, as a live
//! per-phone table (status, percent, speed, error code).

use super::client::Caller;
use super::{EXIT_OK, EXIT_TASK_FAILED};
use crate::error::Result;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_secs(1);

/// Bytes done per TaskId at the last poll, for the speed column.
type Seen = HashMap<String, (u64, Instant)>;

/// Polls until the batch is final; exit 0 when every phone FINISHED, 1 otherwise.
pub async fn follow(caller: &Caller, batch: &str) -> Result<u8> {
    let tty = std::io::stdout().is_terminal();
    let mut seen = Seen::new();
    let mut drawn = 0usize;
    let mut last_text = String::new();
    loop {
        let rows = children(caller, batch).await?;
        let summary = caller
            .call(
                "DescribeTasks",
                vec![("TaskIds.1".into(), batch.to_string())],
            )
            .await?;
        let batch_row = summary["Data"][0].clone();
        let status = batch_row["TaskStatus"].as_str().unwrap_or("").to_string();
        let mut text = table(&rows, Some(&mut seen));
        text.push_str(&format!(
            "batch {batch}: {status}  finished {} failed {} running {} of {}\n",
            batch_row["SuccessChildCount"],
            batch_row["FailedChildCount"],
            batch_row["RunningChildCount"],
            batch_row["TotalChildCount"]
        ));
        let mut out = std::io::stdout().lock();
        if tty {
            // Redraw in place.
            if drawn > 0 {
                let _ = write!(out, "\x1b[{drawn}A\x1b[J");
            }
            let _ = write!(out, "{text}");
            drawn = text.lines().count();
        } else if text != last_text {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
        last_text = text;
        if status == "FINISHED" {
            return Ok(EXIT_OK);
        }
        if status == "FAILED" {
            return Ok(EXIT_TASK_FAILED);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every child of a batch, paging through NextToken.
async fn children(caller: &Caller, batch: &str) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = vec![
            ("ParentTaskId".to_string(), batch.to_string()),
            ("Level".to_string(), "2".to_string()),
            ("MaxResults".to_string(), "100".to_string()),
        ];
        if let Some(t) = &token {
            params.push(("NextToken".into(), t.clone()));
        }
        let page = caller.call("DescribeTasks", params).await?;
        rows.extend(page["Data"].as_array().cloned().unwrap_or_default());
        match page["NextToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(rows),
        }
    }
}

/// The table of DescribeTasks rows; with `seen`, a speed column from the bytes since the
/// previous call.
pub fn table(rows: &[Value], mut seen: Option<&mut Seen>) -> String {
    let mut out = format!(
        "{:<24} {:<26} {:<9} {:>4} {:>10}  {}\n",
        "INSTANCE", "TASK", "STATUS", "%", "SPEED", "CODE"
    );
    for row in rows {
        let id = row["TaskId"].as_str().unwrap_or("");
        let result: Value = row["Result"]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let done = result["BytesDone"].as_u64().unwrap_or(0);
        let percent = result["Progress"]
            .as_u64()
            .map_or("-".to_string(), |p| p.to_string());
        let speed = match seen.as_deref_mut() {
            Some(seen) => {
                let now = Instant::now();
                let shown = match seen.get(id) {
                    Some((before, at)) if done >= *before => {
                        let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                        format!("{:.1} MiB/s", (done - before) as f64 / secs / 1_048_576.0)
                    }
                    _ => "-".to_string(),
                };
                seen.insert(id.to_string(), (done, now));
                shown
            }
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<24} {:<26} {:<9} {:>4} {:>10}  {}\n",
            row["InstanceId"].as_str().unwrap_or("-"),
            id,
            row["TaskStatus"].as_str().unwrap_or(""),
            percent,
            speed,
            row["ErrorCode"].as_str().unwrap_or("")
        ));
    }
    out
}
