//! AutoInstall: after a task's files landed and were verified, install the app they hold.
//!
//! [`plan`] decides what the files are (one APK, a bundle, an OSS folder of splits, or not an
//! APK at all) and checks them; [`pm`] streams them into Android's package manager, one APK
//! with `pm install -S SIZE`, a set of splits as one `install-create/-write/-commit` session
//! that is abandoned on any failure; [`obb`] places an XAPK's expansion files afterwards.
//! A session's id is recorded ([`sessions`]) before anything is written to it, so a session
//! a killed daemon left open is abandoned on the next start.
//!
//! Installs are serialised daemon-wide by an [`InstallLock`] (pm handles one install at a
//! time reliably), taken only around pm itself: checking and unpacking happen before, and
//! transfers of other tasks go on meanwhile. The outcome is an [`InstallResult`]; the only
//! error returned is `Cancelled`.

pub mod apk;
pub mod axml;
pub mod bundle;
mod obb;
pub mod plan;
pub mod pm;
pub mod sessions;
pub mod zipend;

use crate::config::Config;
use crate::error::{Code, Error, Result, TaskCode};
use crate::pipeline::Landed;
use crate::task::record::InstallResult;
use plan::{Apk, Plan, Refusal};
use pm::{Input, Pm, PmError, Verdict};
use sessions::Sessions;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Held while pm runs; one per daemon.
pub type InstallLock = tokio::sync::Mutex<()>;

/// Where a task's bundle is unpacked: `STATE_DIR/install/TASK_ID`.
pub fn work_dir(config: &Config, task_id: &str) -> PathBuf {
    config.state_dir.join("install").join(task_id)
}

fn sessions_of(config: &Config) -> Sessions {
    Sessions::new(config.state_dir.join("install"))
}

/// After a daemon died mid-install: abandons the pm sessions it left open and removes its
/// unpack folders. A record whose session pm could not be asked about (pm missing or hung)
/// is kept for the next start. Blocking (it waits for pm): call from `spawn_blocking`, or
/// outside any runtime.
pub fn clean_stale(config: &Config) {
    let dir = config.state_dir.join("install");
    let sessions = sessions_of(config);
    for (task, id) in sessions.all() {
        let pm = Pm::new(config, CancellationToken::new());
        let settled = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.block_on(abandon(&pm, id)),
            Err(_) => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(abandon(&pm, id)),
                Err(e) => {
                    tracing::warn!(error = %e, session = id, "cannot run pm install-abandon");
                    false
                }
            },
        };
        if settled {
            sessions.forget(&task);
        }
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if Sessions::is_record(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cannot remove {}", path.display());
        }
    }
}

/// Installs what `files` hold. `Err` only when `cancel` fired (pm is then killed and an open
/// session abandoned); every other outcome, success or not, is the returned result.
pub async fn install(
    config: &Config,
    task_id: &str,
    files: &[Landed],
    lock: &InstallLock,
    cancel: &CancellationToken,
) -> Result<InstallResult> {
    let work = work_dir(config, task_id);
    let outcome = run(config, task_id, files, &work, lock, cancel).await;
    let _ = tokio::task::spawn_blocking(move || remove_work(&work)).await;
    let result = outcome?;
    match &result.error_code {
        None => tracing::info!(
            task = task_id,
            package = result.package.as_deref().unwrap_or(""),
            "{}",
            result.message
        ),
        Some(code) => tracing::warn!(task = task_id, code = %code, "{}", result.message),
    }
    Ok(result)
}

fn remove_work(work: &Path) {
    match std::fs::remove_dir_all(work) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove {}", work.display()),
    }
}

async fn run(
    config: &Config,
    task_id: &str,
    files: &[Landed],
    work: &Path,
    lock: &InstallLock,
    cancel: &CancellationToken,
) -> Result<InstallResult> {
    let sessions = sessions_of(config);
    let (planned, left_open) = {
        let (config, files, work) = (config.clone(), files.to_vec(), work.to_path_buf());
        let (sessions, task_id) = (sessions.clone(), task_id.to_string());
        tokio::task::spawn_blocking(move || {
            remove_work(&work);
            (
                plan::plan(&config, &files, &work),
                sessions.recorded(&task_id),
            )
        })
        .await
        .map_err(|e| Error::new(Code::Internal, format!("checking the APK: {e}")))?
    };
    if let Some(id) = left_open {
        // An earlier run of this install died with its session open.
        let _turn = lock.lock().await;
        if abandon(&Pm::new(config, CancellationToken::new()), id).await {
            forget(&sessions, task_id).await;
        }
    }
    let plan = match planned {
        Ok(plan) => plan,
        Err(Refusal { code, message }) => return Ok(refused(code, message)),
    };
    if let Plan::NotAnApk(why) = plan {
        return Ok(refused(
            Code::InstallNotAnApk.into(),
            format!("{why}; the file was transferred and nothing was installed"),
        ));
    }
    let _turn = tokio::select! {
        turn = lock.lock() => turn,
        _ = cancel.cancelled() => return Err(cancelled()),
    };
    let pm = Pm::new(config, cancel.clone());
    match plan {
        Plan::NotAnApk(_) => unreachable!("handled above"),
        Plan::Single(apk) => single(&pm, apk).await,
        Plan::Session {
            apks,
            expansions,
            bundle,
            ignored,
        } => {
            let mut result = session(&pm, apks, &sessions, task_id).await?;
            if !ignored.is_empty() {
                result.message.push_str(&format!(
                    "; not APKs, so not installed: {}",
                    ignored.join(", ")
                ));
            }
            if let (true, Some(bundle), false) =
                (result.error_code.is_none(), bundle, expansions.is_empty())
            {
                place_expansions(config, task_id, bundle, expansions, &mut result).await
            }
            Ok(result)
        }
    }
}

fn cancelled() -> Error {
    Error::new(
        Code::Cancelled,
        "the task was cancelled during install; the file stays in place",
    )
}

fn refused(code: TaskCode, message: String) -> InstallResult {
    InstallResult {
        error_code: Some(code),
        message,
        ..Default::default()
    }
}

/// The result fields every outcome shares: the app's identity and the APKs given to pm.
fn identity(base: &Apk, apks: Vec<String>) -> InstallResult {
    InstallResult {
        package: Some(base.manifest.package.clone()),
        version_code: base.manifest.version_code,
        version_name: base.manifest.version_name.clone(),
        apks,
        ..Default::default()
    }
}

fn describe(base: &Apk) -> String {
    let m = &base.manifest;
    let version = match (&m.version_name, m.version_code) {
        (Some(name), Some(code)) => format!(" {name} (versionCode {code})"),
        (None, Some(code)) => format!(" versionCode {code}"),
        (Some(name), None) => format!(" {name}"),
        (None, None) => String::new(),
    };
    format!("{}{version}", m.package)
}

/// Turns pm's verdict or failure into the result; `Err` only for a cancel.
fn judged(
    mut result: InstallResult,
    what: &str,
    outcome: std::result::Result<Verdict, PmError>,
) -> Result<InstallResult> {
    match outcome {
        Ok(Verdict::Success(line)) => {
            result.message = format!("installed {what}");
            result.pm_output = Some(line);
        }
        Ok(Verdict::Failure { reason, line }) => {
            result.error_code = Some(reason.unwrap_or(Code::InstallPmFailed.into()));
            result.message = format!("pm did not install {what}: {line}; the file stays in place");
            result.pm_output = Some(line);
        }
        Err(PmError::Cancelled(_)) => return Err(cancelled()),
        Err(e @ PmError::Timeout { .. }) => {
            result.error_code = Some(Code::InstallTimeout.into());
            result.message = format!(
                "{e} (install.timeout_secs); {what} may not be installed; the file stays in place"
            );
        }
        Err(e @ PmError::NotRunnable(_)) => {
            result.error_code = Some(Code::InstallPmFailed.into());
            result.message = format!("{e}; check install.pm_command; {what} was not installed");
        }
    }
    Ok(result)
}

async fn single(pm: &Pm, apk: Apk) -> Result<InstallResult> {
    let what = describe(&apk);
    let result = identity(&apk, vec![apk::session_name(&apk.manifest)]);
    let input = Input {
        file: apk.file,
        size: apk.size,
    };
    judged(result, &what, pm.install(input).await)
}

/// One session for a base and its splits; abandoned unless pm judged the commit. Its id is
/// recorded before the first write and forgotten once pm is done with it.
async fn session(
    pm: &Pm,
    apks: Vec<Apk>,
    sessions: &Sessions,
    task_id: &str,
) -> Result<InstallResult> {
    let base = &apks[0];
    let names: Vec<String> = apks
        .iter()
        .map(|a| apk::session_name(&a.manifest))
        .collect();
    let what = format!("{} ({} APKs)", describe(base), apks.len());
    let result = identity(base, names.clone());
    let total = apks.iter().map(|a| a.size).sum();
    let id = match pm.create(total).await {
        Ok(Ok(id)) => id,
        Ok(Err(refusal)) => return judged(result, &what, Ok(refusal)),
        Err(e) => return judged(result, &what, Err(e)),
    };
    let recorded = {
        let (sessions, task_id) = (sessions.clone(), task_id.to_string());
        tokio::task::spawn_blocking(move || sessions.record(&task_id, id))
            .await
            .unwrap_or_else(|e| Err(Error::new(Code::Internal, format!("recording: {e}"))))
    };
    if let Err(e) = recorded {
        abandon(pm, id).await;
        let mut result = result;
        result.error_code = Some(e.code.into());
        result.message = format!(
            "{}; the install session was abandoned and {what} not installed",
            e.message
        );
        return Ok(result);
    }
    let mut outcome = Ok(Verdict::Success(String::new()));
    for (apk, name) in apks.into_iter().zip(&names) {
        let input = Input {
            file: apk.file,
            size: apk.size,
        };
        outcome = pm.write(id, name, input).await;
        if !matches!(outcome, Ok(Verdict::Success(_))) {
            break;
        }
    }
    let committed = matches!(outcome, Ok(Verdict::Success(_)));
    if committed {
        outcome = pm.commit(id).await;
    }
    // A refused commit is cleaned up by pm itself; anything else leaves the session open.
    let judged_commit = committed && outcome.is_ok();
    // Kept when pm could not be asked to abandon: the next start tries again.
    if judged_commit || abandon(pm, id).await {
        forget(sessions, task_id).await;
    }
    judged(result, &what, outcome)
}

async fn forget(sessions: &Sessions, task_id: &str) {
    let (sessions, task_id) = (sessions.clone(), task_id.to_string());
    let _ = tokio::task::spawn_blocking(move || sessions.forget(&task_id)).await;
}

/// `pm install-abandon ID`; whether pm gave a verdict (a session it no longer knows is
/// settled too: pm answers with a SecurityException).
async fn abandon(pm: &Pm, id: u32) -> bool {
    match pm.abandon(id).await {
        Ok(Verdict::Success(_)) => {
            tracing::info!(session = id, "abandoned the install session");
            true
        }
        Ok(Verdict::Failure { line, .. }) => {
            tracing::warn!(session = id, "pm install-abandon: {line}");
            true
        }
        Err(e) => {
            tracing::warn!(session = id, "pm install-abandon: {e}");
            false
        }
    }
}

async fn place_expansions(
    config: &Config,
    task_id: &str,
    bundle: std::fs::File,
    expansions: Vec<bundle::Expansion>,
    result: &mut InstallResult,
) {
    let package = result.package.clone().unwrap_or_default();
    let (config, task_id) = (config.clone(), task_id.to_string());
    let placed = tokio::task::spawn_blocking(move || {
        obb::place(&config, &task_id, &package, bundle, &expansions)
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::new(
            Code::Internal,
            format!("placing OBB files: {e}"),
        ))
    });
    match placed {
        Ok(paths) => {
            result
                .message
                .push_str(&format!(" and {} expansion file(s)", paths.len()));
            result.obb_files = paths;
        }
        Err(e) => {
            result.error_code = Some(e.code.into());
            result.message = format!(
                "{} was installed but its expansion (OBB) files were not placed: {}",
                result.package.as_deref().unwrap_or("the app"),
                e.message
            );
        }
    }
}
