//! Where a task's files go: the folder that holds its staging file, the final names, the
//! folders opened inside the allowed roots, and the staging file's name (with the adoption of
//! an older build's staging file, so an upgrade keeps partial data).

use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::paths::{check_final_name, DevicePath, Dir, Entry, Roots};
use crate::task::payload::{OssObject, Plan};
use crate::task::record::ResumeState;
use std::sync::Arc;

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

/// The staging name of the `slot`th object a folder send has in flight at once: slot 0 is
/// the task's own [`staging_name`] (the only one a checkpoint ever names), others add `-N`.
pub fn staging_name_in_slot(task_id: &str, slot: usize) -> String {
    let name = staging_name(task_id);
    match slot {
        0 => name,
        n => format!("{}-{n}.part", name.trim_end_matches(".part")),
    }
}

/// The staging name of builds before case-unique names.
fn legacy_staging_name(task_id: &str) -> String {
    format!("{}{task_id}.part", crate::paths::RESERVED_PREFIX)
}

/// A record left RUNNING by an older build names its legacy staging file: move that file to
/// the current name so the upgrade keeps the partial data (a missing file is no error: the
/// run then starts from byte 0 as it would have anyway).
pub(super) async fn adopt_legacy_staging(
    dir: &Arc<Dir>,
    task_id: &str,
    resume: Option<&ResumeState>,
) {
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
pub(super) fn staging_folder(plan: &Plan) -> DevicePath {
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

/// The allowed roots, once the task's staging folder is known to lie inside one of them.
pub(super) fn resolve(config: &Config, plan: &Plan) -> Result<Roots> {
    let roots = Roots::new(config.device_root.clone(), &config.allowed_roots)?;
    roots.root_of(&staging_folder(plan))?;
    Ok(roots)
}

/// Opens a folder (creating it inside its root) off the async threads.
pub(super) async fn open_folder(roots: &Roots, folder: DevicePath) -> Result<Arc<Dir>> {
    let roots = roots.clone();
    tokio::task::spawn_blocking(move || roots.open_dir(&folder, true).map(Arc::new))
        .await
        .map_err(|e| Error::new(Code::Internal, format!("opening the target folder: {e}")))?
}

/// The last segment of an object key, which names the file when TargetFileName does not.
pub(super) fn object_file_name(object: &OssObject) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Objects of a folder in flight at once each have a staging file; slot 0 is the task's.
    #[test]
    fn slot_staging_names_are_distinct_staging_names() {
        assert_eq!(staging_name_in_slot("t1", 0), staging_name("t1"));
        let names: std::collections::HashSet<String> = (0..=crate::config::MAX_FOLDER_CONCURRENCY)
            .map(|slot| staging_name_in_slot("T1", slot))
            .collect();
        assert_eq!(names.len(), crate::config::MAX_FOLDER_CONCURRENCY + 1);
        for name in &names {
            assert!(crate::paths::is_reserved(name), "{name}");
            assert_eq!(crate::paths::check_file_name(name), Ok(()));
            assert!(name.ends_with(".part"), "{name}");
        }
        assert!(!names.contains(&staging_name("t1")));
    }
}
