//! Runs one validated task end to end, each stage once and in order: the target (resolved
//! inside the allowed roots), the source (HTTP link, OSS object, OSS folder, or a bridged
//! link's OSS copy with its fallback), the engine and sink for each file, the media scan,
//! and AutoInstall when the task asks for it. Shared by the daemon and `ferry fetch`.

mod bridged;
mod folder;
mod land;
mod scan;
mod services;
mod target;

pub use land::Landed;
pub use services::Services;
pub use target::staging_name;

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::install;
use crate::net;
use crate::paths::Roots;
use crate::task::payload::{Plan, ValidTask};
use crate::task::record::{ResumeState, TaskResult};
use crate::transfer::engine;
use crate::transfer::sink;
use crate::transfer::source::http::HttpSource;
use crate::transfer::source::redirect::RedirectRules;
use land::Landing;
use std::future::Future;
use std::sync::Arc;
use target::{object_file_name, open_folder};
use tokio_util::sync::CancellationToken;

pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// This run of a task, as opposed to the task itself.
pub struct Run<'a> {
    /// Names the staging file and the install's work folder.
    pub task_id: &'a str,
    /// State from an earlier, interrupted run of the same task.
    pub resume: Option<ResumeState>,
    /// Stops the transfer (partial data kept for resume) or the install (pm killed).
    pub cancel: CancellationToken,
}

/// Hears about a run: the engine's progress and checkpoints, and the start of AutoInstall.
pub trait Observer: engine::Observer {
    /// The files are committed and announced, and AutoInstall is about to start (called once,
    /// only when the task asks for AutoInstall).
    fn installing(&self, _landed: &TaskResult) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// What the stages of one run share once the target is resolved.
struct Ctx<'a> {
    services: &'a Services,
    task: &'a ValidTask,
    roots: Roots,
    task_id: &'a str,
    resume: Option<ResumeState>,
    cancel: CancellationToken,
}

pub async fn run<O: Observer>(
    services: &Services,
    task: &ValidTask,
    run: Run<'_>,
    observer: &O,
) -> Result<TaskResult> {
    let ctx = Ctx {
        services,
        task,
        roots: target::resolve(&services.config, &task.plan)?,
        task_id: run.task_id,
        resume: run.resume,
        cancel: run.cancel,
    };
    let mut notes = Vec::new();
    let files = transfer(&ctx, &mut notes, observer).await?;
    // The files are committed: from here on nothing fails the task but AutoInstall.
    notes.extend(land::encoding_notes(&files));
    notes.extend(scan::announce(&services.config, &files).await);
    let mut result = TaskResult {
        files: files.iter().map(Landed::to_result).collect(),
        notes,
        install: None,
    };
    if task.payload.auto_install {
        observer.installing(&result).await;
        let installed = install::install(
            &services.config,
            ctx.task_id,
            &files,
            &services.install_lock,
            &ctx.cancel,
        )
        .await?;
        result.install = Some(installed);
    }
    Ok(result)
}

/// Picks the source(s) of the plan and lands every file; notes about how go to `notes`.
async fn transfer<O: Observer>(
    ctx: &Ctx<'_>,
    notes: &mut Vec<String>,
    observer: &O,
) -> Result<Vec<Landed>> {
    let (services, task) = (ctx.services, ctx.task);
    let one = |source, dir: Arc<_>, final_name| Landing {
        source,
        staging_dir: Arc::clone(&dir),
        final_dir: dir,
        final_name,
        resume: ctx.resume.clone(),
        md5: task.md5,
        slot: 0,
    };
    match &task.plan {
        Plan::Download { url, target } => {
            net::address::check_literal_host(url, services.config.allow_link_local)?;
            let dir = open_folder(&ctx.roots, target.parent()).await?;
            let name = target.file_name().ok_or_else(|| {
                Error::new(Code::InvalidSourceFilePath, "SourceFilePath names no file")
            })?;
            let source = Arc::new(HttpSource::new(
                services.client.clone(),
                url.clone(),
                RedirectRules::from_config(&services.config),
            ));
            Ok(vec![
                ctx.land(one(source, dir, name.to_string()), observer)
                    .await?,
            ])
        }
        Plan::Oss {
            object,
            endpoint,
            folder,
            rename,
        } => {
            let client = services.oss_client(endpoint, task)?;
            if object.is_folder() {
                if task.md5.is_some() {
                    notes.push("FileMd5 applies to a single file and was not checked for a folder send (each object is checked against its size and sha256 is reported per file)".to_string());
                }
                return folder::send(ctx, &client, object, folder, rename, observer).await;
            }
            let name = match rename {
                Some(name) => name.clone(),
                None => object_file_name(object)?,
            };
            let dir = open_folder(&ctx.roots, folder.clone()).await?;
            let source = Arc::new(client.object(&object.bucket, &object.key));
            Ok(vec![ctx.land(one(source, dir, name), observer).await?])
        }
        Plan::OssBridged {
            public_url,
            object,
            endpoint,
            folder,
            rename,
        } => {
            let (file, note) =
                bridged::send(ctx, public_url, object, endpoint, folder, rename, observer).await?;
            notes.extend(note);
            Ok(vec![file])
        }
    }
}

/// Removes the staging data of a task that will not resume (cancelled or failed for good).
pub fn discard_partial(config: &Config, task: &ValidTask, task_id: &str) -> Result<()> {
    let roots = Roots::new(config.device_root.clone(), &config.allowed_roots)?;
    match roots.open_dir(&target::staging_folder(&task.plan), false) {
        Ok(dir) => {
            // A folder send may have had objects in flight at once, each its own staging file.
            for slot in 1..=crate::config::MAX_FOLDER_CONCURRENCY {
                dir.remove(&target::staging_name_in_slot(task_id, slot))?;
            }
            sink::discard(&dir, &staging_name(task_id))
        }
        // No folder, no staging file.
        Err(_) => Ok(()),
    }
}

/// Progress callback adapter for one-shot runs, which have no journal to checkpoint into.
struct CallbackObserver(ProgressFn);

impl engine::Observer for CallbackObserver {
    fn progress(&self, done: u64, total: Option<u64>) {
        (self.0)(done, total)
    }
    fn checkpoint(&self, _state: ResumeState) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

impl Observer for CallbackObserver {}

/// `ferry fetch`: one payload in-process, no daemon and no journal; the staging file is
/// removed when the run fails or is interrupted. AutoInstall runs as in the daemon; the
/// caller judges `result.install` (see `TaskResult`).
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
    let shared = Arc::new(config.clone());
    // One install in this process: its lock is shared with nothing.
    let services = tokio::task::spawn_blocking(move || Services::build(shared))
        .await
        .map_err(|e| Error::new(Code::Internal, format!("building the HTTP client: {e}")))??;
    let run = Run {
        task_id: &task_id,
        resume: None,
        cancel,
    };
    let result = self::run(&services, &task, run, &CallbackObserver(on_progress)).await;
    if result.is_err() {
        let _ = discard_partial(config, &task, &task_id);
    }
    result
}
