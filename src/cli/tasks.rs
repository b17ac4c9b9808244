//! `ferry tasks [ID]`: a table of the daemon's tasks (`GET /v1/tasks`) or one task's
//! details (`GET /v1/tasks/{id}`), or either as JSON.

use super::progress::human_bytes;
use super::{print_json, report, task_path, ConnectArgs, GlobalArgs, EXIT_OK};
use crate::api::TaskList;
use crate::task::record::TaskView;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct TasksArgs {
    /// Show only this task, in detail
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// Print JSON (the API's TaskView, or {"Tasks": [...]}) on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub async fn run(global: &GlobalArgs, args: TasksArgs) -> u8 {
    let client = match global.client(&args.connect) {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    let printed = match &args.id {
        // Redacted again here: a daemon of an older build may show signed links verbatim.
        Some(id) => match client.describe(id).await.map(redacted) {
            Ok(view) if args.json => print_json(&view),
            Ok(view) => {
                print!("{}", detail(&view));
                Ok(())
            }
            Err(e) => Err(e),
        },
        None => match client
            .list()
            .await
            .map(|tasks| tasks.into_iter().map(redacted).collect::<Vec<_>>())
        {
            Ok(tasks) if args.json => print_json(&TaskList { tasks }),
            Ok(tasks) => {
                print!("{}", table(&tasks));
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    match printed {
        Ok(()) => EXIT_OK,
        Err(e) => report(&e),
    }
}

/// The view with its payload's secrets (query values, Credentials) replaced.
fn redacted(mut view: TaskView) -> TaskView {
    view.payload = view.payload.redacted();
    view
}

fn bytes_column(view: &TaskView) -> String {
    match view.bytes_total {
        Some(total) => format!("{}/{}", human_bytes(view.bytes_done), human_bytes(total)),
        None => human_bytes(view.bytes_done),
    }
}

/// Columns padded to their widest cell; the path, last, is not padded.
pub fn table(tasks: &[TaskView]) -> String {
    let mut rows = vec![[
        "TASK ID".to_string(),
        "PHASE".to_string(),
        "PROGRESS".to_string(),
        "BYTES".to_string(),
        "ERROR".to_string(),
        "PATH".to_string(),
    ]];
    for t in tasks {
        rows.push([
            t.task_id.clone(),
            t.phase.as_str().to_string(),
            format!("{}%", t.progress),
            bytes_column(t),
            t.error_code
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            task_path(t),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (cell, w) in row.iter().zip(widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}

/// What landed where: one line per file, and the install outcome.
pub fn result_lines(view: &TaskView) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(result) = &view.result {
        for f in &result.files {
            lines.push(format!(
                "{} {} ({} bytes, sha256 {})",
                view.phase.as_str(),
                f.path,
                f.size,
                f.sha256
            ));
        }
        if let Some(install) = &result.install {
            let code = install
                .error_code
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "installed".into());
            lines.push(format!("install: {code}: {}", install.message));
        }
    }
    if lines.is_empty() {
        lines.push(format!("{} {}", view.phase.as_str(), task_path(view)));
    }
    lines
}

pub fn detail(v: &TaskView) -> String {
    let mut out = Vec::new();
    let mut field = |name: &str, value: String| out.push(format!("{name:<14}{value}"));
    field("TaskId:", v.task_id.clone());
    if let Some(token) = &v.client_token {
        field("ClientToken:", token.clone());
    }
    field(
        "Status:",
        format!("{} ({})", v.task_status, v.phase.as_str()),
    );
    field("Progress:", format!("{}% {}", v.progress, bytes_column(v)));
    field(
        "Source:",
        format!("{} {}", v.payload.upload_type, v.payload.upload_url),
    );
    field("Path:", v.payload.source_file_path.clone());
    field("Created:", v.creation_time.clone());
    if let Some(t) = &v.start_time {
        field("Started:", t.clone());
    }
    if let Some(t) = &v.finish_time {
        field("Finished:", t.clone());
    }
    if let Some(code) = &v.error_code {
        field(
            "Error:",
            format!("{code}: {}", v.error_msg.as_deref().unwrap_or("")),
        );
    }
    if let Some(result) = &v.result {
        for f in &result.files {
            field(
                "File:",
                format!("{} {} sha256 {}", f.path, f.size, f.sha256),
            );
        }
        if let Some(install) = &result.install {
            let code = install
                .error_code
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "Success".into());
            field("Install:", format!("{code}: {}", install.message));
        }
    }
    let result_notes = v.result.iter().flat_map(|r| &r.notes);
    for note in v.notes.iter().chain(result_notes) {
        field("Note:", note.clone());
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}
