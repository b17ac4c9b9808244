//! Runs one validated task: resolves its target inside the allowed roots, picks the source,
//! drives the engine, tells the media store about a file in shared storage, and reports the
//! task result. Shared by the daemon and `ferry fetch`.

use crate::config::Config;
use crate::engine::{self, Job, Observer};
use crate::error::{Code, Error, Result};
use crate::media_scan;
use crate::paths::{DevicePath, Dir, Entry, Roots};
use crate::payload::{Plan, ValidTask};
use crate::sink;
use crate::source::http::HttpSource;
use crate::source::limit::Bandwidth;
use crate::source::net;
use crate::task::{FileResult, InstallResult, ResumeState, TaskResult};
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// The hidden staging name of a task's file: unique per task, short whatever the final name.
pub fn staging_name(task_id: &str) -> String {
    format!(".ferry-{task_id}.part")
}

/// Where a plan writes: the folder and the final file name.
fn destination(plan: &Plan) -> Result<(DevicePath, String)> {
    match plan {
        Plan::Download { target, .. } => {
            let name = target.file_name().ok_or_else(|| {
                Error::new(Code::InvalidSourceFilePath, "SourceFilePath names no file")
            })?;
            Ok((target.parent(), name.to_string()))
        }
        Plan::Oss { .. } | Plan::OssBridged { .. } => Err(Error::new(
            Code::UnsupportedUploadType,
            "UploadType OSS and OSS_BRIDGED are accepted and validated, but this build of ferry cannot transfer from OSS yet; use DOWNLOAD_URL",
        )),
    }
}

/// Opens the destination folder off the async threads.
async fn open_folder(roots: Roots, folder: DevicePath) -> Result<Arc<Dir>> {
    tokio::task::spawn_blocking(move || roots.open_dir(&folder, true).map(Arc::new))
        .await
        .map_err(|e| Error::new(Code::Internal, format!("opening the target folder: {e}")))?
}

/// Everything a run needs besides the task itself.
pub struct RunContext<'a> {
    pub config: &'a Config,
    pub client: reqwest::Client,
    pub task_id: &'a str,
    pub resume: Option<ResumeState>,
    pub cancel: CancellationToken,
    /// The bandwidth cap shared by every transfer of the daemon (or of one `ferry fetch`).
    pub bandwidth: Arc<Bandwidth>,
}

pub async fn run<O: Observer>(
    ctx: RunContext<'_>,
    task: &ValidTask,
    observer: &O,
) -> Result<TaskResult> {
    let roots = Roots::new(ctx.config.device_root.clone(), &ctx.config.allowed_roots)?;
    let (folder, final_name) = destination(&task.plan)?;
    roots.root_of(&folder)?;
    let Plan::Download { url, .. } = &task.plan else {
        unreachable!("destination() refuses every other plan");
    };
    net::check_literal_host(url, ctx.config.allow_link_local)?;
    let dir = open_folder(roots, folder.clone()).await?;
    if dir.entry(&final_name)? == Entry::Other {
        return Err(Error::new(
            Code::InvalidSourceFilePath,
            format!(
                "{} exists and is a folder or a link; SourceFilePath must name a file",
                folder.join(&final_name)
            ),
        ));
    }
    let job = Job {
        source: Arc::new(HttpSource::new(ctx.client.clone(), url.clone())),
        dir,
        final_name: final_name.clone(),
        staging: staging_name(ctx.task_id),
        resume: ctx.resume,
        md5: task.md5,
        bandwidth: ctx.bandwidth,
    };
    let outcome = engine::transfer(job, ctx.config, observer, &ctx.cancel).await?;
    let landed = folder.join(&final_name);
    tracing::info!(
        task = ctx.task_id,
        path = %landed,
        bytes = outcome.written.len,
        retries = outcome.retries,
        "file in place"
    );
    // The file is committed: from here on nothing fails the task.
    let notes = media_scan::announce(ctx.config, &landed).await;
    Ok(TaskResult {
        files: vec![FileResult {
            path: landed.to_string(),
            size: outcome.written.len,
            sha256: sink::hex(&outcome.written.sha256),
        }],
        notes: notes.into_iter().collect(),
        install: task.payload.auto_install.then(|| InstallResult {
            error_code: Some(Code::UnsupportedAutoInstall),
            message: "AutoInstall was requested but this build of ferry does not install packages yet; the file was transferred and not installed".into(),
        }),
    })
}

/// Removes the staging data of a task that will not resume (cancelled or failed for good).
pub fn discard_partial(config: &Config, task: &ValidTask, task_id: &str) -> Result<()> {
    let Ok((folder, _)) = destination(&task.plan) else {
        return Ok(());
    };
    let roots = Roots::new(config.device_root.clone(), &config.allowed_roots)?;
    match roots.open_dir(&folder, false) {
        Ok(dir) => sink::discard(&dir, &staging_name(task_id)),
        // No folder, no staging file.
        Err(_) => Ok(()),
    }
}

/// Progress callback adapter for one-shot runs, which have no journal to checkpoint into.
struct CallbackObserver(ProgressFn);

impl Observer for CallbackObserver {
    fn progress(&self, done: u64, total: Option<u64>) {
        (self.0)(done, total)
    }
    fn checkpoint(&self, _state: ResumeState) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// `ferry fetch`: one payload in-process, no daemon and no journal; the staging file is
/// removed when the run fails or is interrupted.
pub async fn fetch_once(
    config: &Config,
    task: ValidTask,
    on_progress: ProgressFn,
    cancel: CancellationToken,
) -> Result<TaskResult> {
    let task_id = task
        .payload
        .task_id
        .clone()
        .unwrap_or_else(|| format!("fetch-{}", std::process::id()));
    let ctx = RunContext {
        config,
        client: net::build_client(config)?,
        task_id: &task_id,
        resume: None,
        cancel,
        bandwidth: Bandwidth::from_config(config),
    };
    let result = run(ctx, &task, &CallbackObserver(on_progress)).await;
    if result.is_err() {
        let _ = discard_partial(config, &task, &task_id);
    }
    result
}
