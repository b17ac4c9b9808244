//! Runs one validated task: resolves its target inside the allowed roots, picks the source
//! (HTTP link, OSS object, OSS folder, or a bridged link's OSS copy), drives the engine for
//! each file, tells the media store about files in shared storage, and reports the task
//! result. Shared by the daemon and `ferry fetch`.

pub mod folder;
mod services;

pub use services::Services;

use crate::android::media_scan;
use crate::config::{Config, MediaScanMode};
use crate::error::{Code, Error, Result};
use crate::install::{self, InstallLock};
use crate::net;
use crate::paths::{check_final_name, DevicePath, Dir, Entry, Roots};
use crate::task::payload::{OssObject, Plan, ValidTask};
use crate::task::record::{DoneObject, FileResult, ResumeState, TaskResult};
use crate::transfer::engine::{self, Job, Observer};
use crate::transfer::sink;
use crate::transfer::source::http::HttpSource;
use crate::transfer::source::limit::Bandwidth;
use crate::transfer::source::oss::{OssClient, OssEndpoint};
use crate::transfer::source::redirect::RedirectRules;
use crate::transfer::source::{Source, SourceError};
use folder::FolderEntry;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Files of one folder send announced to the media store one by one; past this, a note says
/// how many were left to the next periodic scan (each announcement starts a process).
const MAX_MEDIA_SCANS: usize = 100;

/// The hidden staging name of a task's file: unique per task, short whatever the final name,
/// and unique even where case is ignored (Android's `/sdcard`: TaskIds `T1` and `t1` must not
/// share a file), so it carries the lowercased id plus a hash of the exact one.
pub fn staging_name(task_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(task_id.as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}{}-{tag}.part",
        crate::paths::RESERVED_PREFIX,
        task_id.to_ascii_lowercase()
    )
}

/// The staging name of builds before case-unique names.
fn legacy_staging_name(task_id: &str) -> String {
    format!("{}{task_id}.part", crate::paths::RESERVED_PREFIX)
}

/// A record left RUNNING by an older build names its legacy staging file: move that file to
/// the current name so the upgrade keeps the partial data (a missing file is no error: the
/// run then starts from byte 0 as it would have anyway).
async fn adopt_legacy_staging(dir: &Arc<Dir>, task_id: &str, resume: Option<&ResumeState>) {
    let legacy = legacy_staging_name(task_id);
    if resume.is_none_or(|r| r.staging_name != legacy) {
        return;
    }
    let (dir, current) = (dir.clone(), staging_name(task_id));
    let moved = tokio::task::spawn_blocking(move || {
        if dir.entry(&legacy)? != Entry::File {
            return Ok(());
        }
        dir.rename(&legacy, &current)
    })
    .await;
    if let Ok(Err(e)) = moved {
        tracing::warn!(task = task_id, error = %e, "cannot adopt the staging file of an older build");
    }
}

/// The folder holding a task's staging file (and, except for folder sends, its final file).
fn staging_folder(plan: &Plan) -> DevicePath {
    match plan {
        Plan::Download { target, .. } => target.parent(),
        Plan::Oss {
            object,
            folder,
            rename: Some(rename),
            ..
        } if object.is_folder() => folder.join(rename),
        Plan::Oss { folder, .. } | Plan::OssBridged { folder, .. } => folder.clone(),
    }
}

/// Opens a folder (creating it inside its root) off the async threads.
async fn open_folder(roots: &Roots, folder: DevicePath) -> Result<Arc<Dir>> {
    let roots = roots.clone();
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

/// One file to land: its source, the staging folder, and where it ends up.
struct Landing {
    source: Arc<dyn Source>,
    staging_dir: Arc<Dir>,
    final_dir: Arc<Dir>,
    final_name: String,
    resume: Option<ResumeState>,
    md5: Option<[u8; 16]>,
}

impl RunContext<'_> {
    async fn land<O: Observer>(&self, landing: Landing, observer: &O) -> Result<FileResult> {
        let folder = landing.final_dir.device_path().clone();
        if landing.final_dir.entry(&landing.final_name)? == Entry::Other {
            return Err(Error::new(
                Code::InvalidSourceFilePath,
                format!(
                    "{} exists and is a folder or a link; ferry will not replace it",
                    folder.join(&landing.final_name)
                ),
            ));
        }
        adopt_legacy_staging(&landing.staging_dir, self.task_id, landing.resume.as_ref()).await;
        let final_dir = (!Arc::ptr_eq(&landing.staging_dir, &landing.final_dir))
            .then(|| landing.final_dir.clone());
        let job = Job {
            source: landing.source,
            dir: landing.staging_dir,
            final_name: landing.final_name.clone(),
            final_dir,
            staging: staging_name(self.task_id),
            resume: landing.resume,
            md5: landing.md5,
            bandwidth: self.bandwidth.clone(),
        };
        let outcome = engine::transfer(job, self.config, observer, &self.cancel).await?;
        let landed = folder.join(&landing.final_name);
        tracing::info!(
            task = self.task_id,
            path = %landed,
            bytes = outcome.written.len,
            retries = outcome.retries,
            "file in place"
        );
        Ok(FileResult {
            path: landed.to_string(),
            size: outcome.written.len,
            sha256: sink::hex(&outcome.written.sha256),
            content_encoding: outcome.encoding,
        })
    }

    fn oss_client(&self, endpoint: &str, task: &ValidTask) -> Result<OssClient> {
        let endpoint = OssEndpoint::new(endpoint, &self.config.oss);
        let url = reqwest::Url::parse(&endpoint.url).map_err(|e| {
            Error::new(
                Code::InvalidUploadEndpoint,
                format!("UploadEndpoint {}: {e}", endpoint.url),
            )
        })?;
        net::address::check_literal_host(&url, self.config.allow_link_local)?;
        Ok(OssClient::new(
            self.client.clone(),
            &endpoint,
            task.payload.credentials.as_ref(),
            &self.config.oss,
        ))
    }
}

async fn transfer_files<O: Observer>(
    ctx: RunContext<'_>,
    task: &ValidTask,
    observer: &O,
) -> Result<TaskResult> {
    let roots = Roots::new(ctx.config.device_root.clone(), &ctx.config.allowed_roots)?;
    roots.root_of(&staging_folder(&task.plan))?;
    let mut notes = Vec::new();
    let files = match &task.plan {
        Plan::Download { url, target } => {
            net::address::check_literal_host(url, ctx.config.allow_link_local)?;
            let dir = open_folder(&roots, target.parent()).await?;
            let name = target.file_name().ok_or_else(|| {
                Error::new(Code::InvalidSourceFilePath, "SourceFilePath names no file")
            })?;
            let landing = Landing {
                source: Arc::new(HttpSource::new(
                    ctx.client.clone(),
                    url.clone(),
                    RedirectRules::from_config(ctx.config),
                )),
                staging_dir: dir.clone(),
                final_dir: dir,
                final_name: name.to_string(),
                resume: ctx.resume.clone(),
                md5: task.md5,
            };
            vec![ctx.land(landing, observer).await?]
        }
        Plan::Oss {
            object,
            endpoint,
            folder,
            rename,
        } => {
            let client = ctx.oss_client(endpoint, task)?;
            if object.is_folder() {
                if task.md5.is_some() {
                    notes.push("FileMd5 applies to a single file and was not checked for a folder send (each object is checked against its size and sha256 is reported per file)".to_string());
                }
                send_folder(&ctx, &roots, &client, object, folder, rename, observer).await?
            } else {
                let name = match rename {
                    Some(name) => name.clone(),
                    None => object_file_name(object)?,
                };
                let dir = open_folder(&roots, folder.clone()).await?;
                let landing = Landing {
                    source: Arc::new(client.object(&object.bucket, &object.key)),
                    staging_dir: dir.clone(),
                    final_dir: dir,
                    final_name: name,
                    resume: ctx.resume.clone(),
                    md5: task.md5,
                };
                vec![ctx.land(landing, observer).await?]
            }
        }
        Plan::OssBridged {
            public_url,
            object,
            endpoint,
            folder,
            rename,
        } => {
            let (file, note) = bridged(
                &ctx, &roots, task, public_url, object, endpoint, folder, rename, observer,
            )
            .await?;
            notes.extend(note);
            vec![file]
        }
    };
    // The files are committed: from here on nothing fails the task.
    notes.extend(encoding_notes(&files));
    for file in files.iter().take(MAX_MEDIA_SCANS) {
        if let Ok(path) = DevicePath::parse(&file.path) {
            notes.extend(media_scan::announce(ctx.config, &path).await);
        }
    }
    if files.len() > MAX_MEDIA_SCANS && ctx.config.media_scan.mode != MediaScanMode::Off {
        notes.push(format!(
            "the media store was told about the first {MAX_MEDIA_SCANS} of {} files; the rest appear at its next scan",
            files.len()
        ));
    }
    // AutoInstall runs after this, in the caller: it has its own phase and lock.
    Ok(TaskResult {
        files,
        notes,
        install: None,
    })
}

/// Files sent with a Content-Encoding are saved as sent (ferry asks for none and decodes
/// none): say so, for the first few.
fn encoding_notes(files: &[FileResult]) -> Vec<String> {
    const SHOWN: usize = 5;
    let encoded: Vec<_> = files
        .iter()
        .filter_map(|f| Some((&f.path, f.content_encoding.as_ref()?)))
        .collect();
    let mut notes: Vec<String> = encoded
        .iter()
        .take(SHOWN)
        .map(|(path, encoding)| {
            format!("{path}: the server sent it with Content-Encoding: {encoding}; it is saved as sent, not decoded (its size and sha256 are of the encoded bytes)")
        })
        .collect();
    if encoded.len() > SHOWN {
        notes.push(format!(
            "{} more files were sent with a Content-Encoding and saved as sent",
            encoded.len() - SHOWN
        ));
    }
    notes
}

/// The last segment of an object key, which names the file when TargetFileName does not.
fn object_file_name(object: &OssObject) -> Result<String> {
    let name = object.key.rsplit('/').next().unwrap_or_default();
    check_final_name(name).map_err(|why| {
        Error::new(
            Code::SourceUnsafeObjectKey,
            format!(
                "object key {:?} does not end in a usable file name ({why}); set TargetFileName",
                object.key
            ),
        )
    })?;
    Ok(name.to_string())
}

/// Sends every object under a prefix; see `folder` for why keys are all checked first.
async fn send_folder<O: Observer>(
    ctx: &RunContext<'_>,
    roots: &Roots,
    client: &OssClient,
    object: &OssObject,
    folder: &DevicePath,
    rename: &Option<String>,
    observer: &O,
) -> Result<Vec<FileResult>> {
    let shown = format!("oss://{}/{}", object.bucket, object.key);
    // The listing runs before any transfer (and its low-speed watch): bounded by the retry
    // budget, or by transfer.deadline_secs when that is shorter, so a server that drips its
    // listing cannot hold the task slot for ever.
    let budget = ctx.config.retry.budget_secs;
    let limit = match ctx.config.transfer.deadline_secs {
        0 => budget,
        deadline => deadline.min(budget),
    };
    let listing = client.list(
        &object.bucket,
        &object.key,
        ctx.config.oss.list_page_size,
        ctx.config.oss.max_folder_objects,
    );
    let listed = tokio::select! {
        _ = ctx.cancel.cancelled() => return Err(Error::new(Code::Cancelled, "the task was stopped")),
        r = tokio::time::timeout(Duration::from_secs(limit), listing) => match r {
            Ok(listed) => listed.map_err(Error::from)?,
            Err(_) => return Err(Error::new(
                Code::NetworkTimeout,
                format!("listing {shown} took longer than {limit} s (retry.budget_secs, or transfer.deadline_secs when shorter); nothing of the folder was written"),
            )),
        },
    };
    let entries = folder::plan(&object.key, listed, &shown)?;
    let base = match rename {
        Some(name) => folder.join(name),
        None => folder.clone(),
    };
    let base_dir = open_folder(roots, base.clone()).await?;
    let mut resume = ctx.resume.clone();
    let done_before = resume
        .as_mut()
        .map(|r| std::mem::take(&mut r.folder_done))
        .unwrap_or_default();
    let total = entries.iter().map(|e| e.size).sum();
    let folder_observer = FolderObserver {
        outer: observer,
        base: AtomicU64::new(0),
        total,
        done: Mutex::new(Vec::new()),
    };
    let mut files = Vec::with_capacity(entries.len());
    // Entries are sorted by key, so the objects of one sub-folder come together.
    let mut current: (Vec<String>, Arc<Dir>) = (Vec::new(), base_dir.clone());
    for entry in &entries {
        if entry.dirs != current.0 {
            current = (
                entry.dirs.clone(),
                entry_dir(roots, &base, &base_dir, entry).await?,
            );
        }
        let final_dir = current.1.clone();
        if let Some(done) = still_done(&done_before, entry, &final_dir)? {
            files.push(done.file.clone());
            folder_observer.finished(done.clone());
            continue;
        }
        let landing = Landing {
            source: Arc::new(client.object(&object.bucket, &entry.key)),
            staging_dir: base_dir.clone(),
            final_dir,
            final_name: entry.name.clone(),
            resume: resume.take(),
            md5: None,
        };
        let file = ctx
            .land(landing, &folder_observer)
            .await
            .map_err(|e| {
                let landed = files.len();
                Error::new(
                    e.code,
                    format!(
                        "{} (object {} of {}: {}); {landed} files of the folder are in place and a re-submit of this TaskId skips them",
                        e.message,
                        landed + 1,
                        entries.len(),
                        entry.key
                    ),
                )
            })?;
        folder_observer.finished(DoneObject {
            key: entry.key.clone(),
            etag: entry.etag.clone().unwrap_or_default(),
            file: file.clone(),
        });
        // Remember the landed object even if no checkpoint comes before the next one ends.
        folder_observer.checkpoint(ResumeState::default()).await;
        files.push(file);
    }
    Ok(files)
}

/// Opens (creating) the sub-folder an entry lands in.
async fn entry_dir(
    roots: &Roots,
    base: &DevicePath,
    base_dir: &Arc<Dir>,
    entry: &FolderEntry,
) -> Result<Arc<Dir>> {
    if entry.dirs.is_empty() {
        return Ok(base_dir.clone());
    }
    let path = entry.dirs.iter().fold(base.clone(), |p, d| p.join(d));
    open_folder(roots, path).await
}

/// An object landed by an earlier run of this task, unchanged since and still in place. The
/// stored path is not trusted: it must be the very path this entry lands at (the folder's
/// path, its sub-folders, its name), else the object is fetched again.
fn still_done<'a>(
    done: &'a [DoneObject],
    entry: &FolderEntry,
    final_dir: &Dir,
) -> Result<Option<&'a DoneObject>> {
    let Some(etag) = entry.etag.as_deref() else {
        return Ok(None);
    };
    let Some(done) = done.iter().find(|d| d.key == entry.key && d.etag == etag) else {
        return Ok(None);
    };
    if done.file.path != final_dir.device_path().join(&entry.name).to_string() {
        tracing::warn!(
            key = entry.key,
            stored = done.file.path,
            "a landed object's recorded path is not where it lands; fetching it again"
        );
        return Ok(None);
    }
    Ok(
        (final_dir.entry(&entry.name)? == Entry::File && done.file.size == entry.size)
            .then_some(done),
    )
}

/// Progress over the whole folder, and the landed objects in every checkpoint.
struct FolderObserver<'a, O: Observer> {
    outer: &'a O,
    /// Bytes of the objects already landed.
    base: AtomicU64,
    total: u64,
    done: Mutex<Vec<DoneObject>>,
}

impl<O: Observer> FolderObserver<'_, O> {
    fn finished(&self, done: DoneObject) {
        let now = self.base.fetch_add(done.file.size, Ordering::Relaxed) + done.file.size;
        self.done.lock().expect("folder progress lock").push(done);
        self.outer.progress(now, Some(self.total));
    }
}

impl<O: Observer> Observer for FolderObserver<'_, O> {
    fn progress(&self, done: u64, _total: Option<u64>) {
        let base = self.base.load(Ordering::Relaxed);
        self.outer.progress(base + done, Some(self.total));
    }

    fn checkpoint(&self, mut state: ResumeState) -> impl Future<Output = ()> + Send {
        state.folder_done = self.done.lock().expect("folder progress lock").clone();
        self.outer.checkpoint(state)
    }

    fn retrying(&self, err: &SourceError, delay: Duration) {
        self.outer.retrying(err, delay)
    }
}

/// OSS_BRIDGED: the control plane's OSS copy of a public link, over the internal endpoint;
/// the public link itself only when the copy is missing and `oss.bridged_fallback` allows.
#[allow(clippy::too_many_arguments)]
async fn bridged<O: Observer>(
    ctx: &RunContext<'_>,
    roots: &Roots,
    task: &ValidTask,
    public_url: &reqwest::Url,
    object: &Option<OssObject>,
    endpoint: &str,
    folder: &DevicePath,
    rename: &Option<String>,
    observer: &O,
) -> Result<(FileResult, Option<String>)> {
    let name = match (rename, link_file_name(public_url), object) {
        (Some(name), _, _) => name.clone(),
        (None, Some(name), _) => name,
        (None, None, Some(object)) => object_file_name(object)?,
        (None, None, None) => {
            return Err(Error::new(
                Code::InvalidTargetFileName,
                "neither the link nor BridgedObject ends in a file name; set TargetFileName",
            ))
        }
    };
    let dir = open_folder(roots, folder.clone()).await?;
    let landing = |source: Arc<dyn Source>| Landing {
        source,
        staging_dir: dir.clone(),
        final_dir: dir.clone(),
        final_name: name.clone(),
        resume: ctx.resume.clone(),
        md5: task.md5,
    };
    let fallback = ctx.config.oss.bridged_fallback;
    let missing = match object {
        Some(object) if object.is_folder() => {
            return Err(Error::new(
                Code::InvalidUploadUrl,
                format!(
                    "BridgedObject oss://{}/{} names a folder; it must name the OSS copy of the link",
                    object.bucket, object.key
                ),
            ))
        }
        Some(object) => {
            let client = ctx.oss_client(endpoint, task)?;
            let source = Arc::new(client.object(&object.bucket, &object.key));
            match ctx.land(landing(source), observer).await {
                Err(e)
                    if fallback
                        && matches!(e.code, Code::SourceNotFound | Code::SourceNoSuchBucket) =>
                {
                    format!("the OSS copy was missing ({}: {})", e.code, e.message)
                }
                other => return other.map(|f| (f, None)),
            }
        }
        None if fallback => "the payload names no OSS copy (BridgedObject)".to_string(),
        None => {
            return Err(Error::new(
                Code::SourceNotFound,
                "OSS_BRIDGED needs BridgedObject (oss://BUCKET/KEY of the control plane's copy); fetching the public link instead is off (oss.bridged_fallback)",
            ))
        }
    };
    net::address::check_literal_host(public_url, ctx.config.allow_link_local)?;
    let source = Arc::new(HttpSource::new(
        ctx.client.clone(),
        public_url.clone(),
        RedirectRules::from_config(ctx.config),
    ));
    let file = ctx.land(landing(source), observer).await?;
    tracing::warn!(
        task = ctx.task_id,
        "{missing}; fetched the public link instead"
    );
    Ok((
        file,
        Some(format!(
            "{missing}; the public link was fetched instead (oss.bridged_fallback)"
        )),
    ))
}

/// The decoded last path segment of a link, when it is a usable file name.
fn link_file_name(url: &reqwest::Url) -> Option<String> {
    let segment = url.path_segments()?.next_back()?;
    let decoded = percent_decode(segment)?;
    check_final_name(&decoded).ok().map(|()| decoded)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Removes the staging data of a task that will not resume (cancelled or failed for good).
pub fn discard_partial(config: &Config, task: &ValidTask, task_id: &str) -> Result<()> {
    let roots = Roots::new(config.device_root.clone(), &config.allowed_roots)?;
    match roots.open_dir(&staging_folder(&task.plan), false) {
        Ok(dir) => sink::discard(&dir, &staging_name(task_id)),
        // No folder, no staging file.
        Err(_) => Ok(()),
    }
}

/// One run of a task, besides its plan.
pub struct Run<'a> {
    pub task_id: &'a str,
    pub resume: Option<ResumeState>,
    pub cancel: CancellationToken,
}

/// The engine's observer, told also when AutoInstall is about to start.
pub trait PipelineObserver: Observer {
    fn installing(&self, _landed: &TaskResult) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

pub async fn run<O: PipelineObserver>(
    services: &Services,
    task: &ValidTask,
    run: Run<'_>,
    observer: &O,
) -> Result<TaskResult> {
    let ctx = RunContext {
        config: &services.config,
        client: services.client.clone(),
        task_id: run.task_id,
        resume: run.resume,
        cancel: run.cancel.clone(),
        bandwidth: services.bandwidth.clone(),
    };
    let mut result = transfer_files(ctx, task, observer).await?;
    if task.payload.auto_install {
        observer.installing(&result).await;
        let installed = install::install(
            &services.config,
            run.task_id,
            &result.files,
            &services.install_lock,
            &run.cancel,
        )
        .await?;
        result.install = Some(installed);
    }
    Ok(result)
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
    let ctx = RunContext {
        config,
        client: net::client::build_client(config)?,
        task_id: &task_id,
        resume: None,
        cancel: cancel.clone(),
        bandwidth: Bandwidth::from_config(config),
    };
    let result = transfer_files(ctx, &task, &CallbackObserver(on_progress)).await;
    if result.is_err() {
        let _ = discard_partial(config, &task, &task_id);
    }
    let mut result = result?;
    if task.payload.auto_install {
        // One install in this process: nothing to share the lock with.
        let lock = InstallLock::new(());
        let installed = install::install(config, &task_id, &result.files, &lock, &cancel).await?;
        result.install = Some(installed);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_decoded_and_checked() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            link_file_name(&url("https://cdn.example.com/apps/My%20App.apk?sig=1")).as_deref(),
            Some("My App.apk")
        );
        assert_eq!(link_file_name(&url("https://cdn.example.com/")), None);
        assert_eq!(link_file_name(&url("https://x/a/%2e%2e")), None);
        assert_eq!(link_file_name(&url("https://x/a%2Fb")), None);
        assert_eq!(link_file_name(&url("https://x/%zz")), None);
        // A bridged name may not be another task's staging file either.
        assert_eq!(link_file_name(&url("https://x/.FERRY-t1.part")), None);
        assert_eq!(link_file_name(&url("https://x/%2Eferry-t1.part")), None);
    }

    /// A recorded landed object counts as done only at the path its entry lands at: an edited
    /// record must not make AutoInstall read some other file.
    #[test]
    fn a_landed_object_recorded_at_another_path_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::new(Some(tmp.path().to_path_buf()), &["/sdcard".to_string()]).unwrap();
        let dir = roots
            .open_dir(&DevicePath::parse("/sdcard/Download/p/sub").unwrap(), true)
            .unwrap();
        std::fs::write(tmp.path().join("sdcard/Download/p/sub/a.apk"), b"x").unwrap();
        std::fs::write(tmp.path().join("sdcard/Download/other.apk"), b"y").unwrap();
        let entry = FolderEntry {
            key: "p/sub/a.apk".into(),
            dirs: vec!["sub".into()],
            name: "a.apk".into(),
            size: 1,
            etag: Some("e".into()),
        };
        let done_at = |path: &str| DoneObject {
            key: entry.key.clone(),
            etag: "e".into(),
            file: FileResult {
                path: path.into(),
                size: 1,
                sha256: String::new(),
                content_encoding: None,
            },
        };
        let right = [done_at("/sdcard/Download/p/sub/a.apk")];
        assert_eq!(still_done(&right, &entry, &dir).unwrap(), Some(&right[0]));
        for wrong in [
            "/sdcard/Download/other.apk",
            "/sdcard/Download/p/a.apk",
            "/data/data/x/a.apk",
        ] {
            let done = [done_at(wrong)];
            assert_eq!(still_done(&done, &entry, &dir).unwrap(), None, "{wrong}");
        }
    }

    /// Android's /sdcard ignores case: TaskIds `T1` and `t1` must not share a staging file.
    #[test]
    fn staging_names_differ_where_case_is_ignored() {
        let (upper, lower) = (staging_name("T1"), staging_name("t1"));
        assert_ne!(upper.to_lowercase(), lower.to_lowercase());
        for id in ["T1", "t1", "a.B-c_D"] {
            let name = staging_name(id);
            assert!(crate::paths::is_reserved(&name), "{name}");
            assert_eq!(crate::paths::check_file_name(&name), Ok(()));
            assert_eq!(name, name.to_lowercase(), "one spelling per task: {name}");
        }
        let longest = staging_name(&"x".repeat(64));
        assert!(longest.len() < 100, "{longest}");
    }
}
