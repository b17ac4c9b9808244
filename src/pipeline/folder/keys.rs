//! Which objects of an OSS folder land where, decided before a single byte is written.
//!
//! Every key under the prefix must map to a safe relative path (no `..`, `.`, empty segment,
//! control character, over-long name, ferry's own staging names, two keys naming one file or
//! a name that is both a file and a folder, names compared ignoring case as /sdcard does);
//! one bad key refuses the whole folder, so a hostile listing can never
//! leave half a folder behind.

use crate::error::{Code, Error, Result};
use crate::paths::check_final_name;
use crate::transfer::source::oss::ListedObject;
use std::collections::BTreeMap;

/// One object of the folder and where it goes, relative to the target folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderEntry {
    pub key: String,
    /// Sub-folders under the target folder, outermost first.
    pub dirs: Vec<String>,
    pub name: String,
    pub size: u64,
    pub etag: Option<String>,
}

impl FolderEntry {
    pub fn relative_path(&self) -> String {
        let mut parts = self.dirs.clone();
        parts.push(self.name.clone());
        parts.join("/")
    }
}

/// How many refused keys a message lists before it says "and N more".
const SHOWN_KEYS: usize = 5;

/// Maps the listing of `prefix` to entries, sorted by key, or refuses the folder.
pub fn plan(prefix: &str, listed: Vec<ListedObject>, shown: &str) -> Result<Vec<FolderEntry>> {
    let mut entries = Vec::new();
    let mut refused = Vec::new();
    for object in listed {
        let Some(relative) = object.key.strip_prefix(prefix) else {
            refused.push((object.key, "it is outside the prefix".to_string()));
            continue;
        };
        // A zero-byte `folder/` object is a console's folder marker, not a file.
        if relative.is_empty() || (relative.ends_with('/') && object.size == 0) {
            continue;
        }
        match split(relative) {
            Ok((dirs, name)) => entries.push(FolderEntry {
                key: object.key.clone(),
                dirs,
                name,
                size: object.size,
                etag: object.etag,
            }),
            Err(why) => refused.push((object.key, why)),
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    // /sdcard compares names ignoring case: `X.apk` and `x.apk` are one file there, and `B`
    // is the folder `b/`. So clashes are found on case-folded paths, before anything is written.
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in &entries {
        let folded = entry.relative_path().to_lowercase();
        match files.get(&folded) {
            Some(first) => refused.push((
                entry.key.clone(),
                format!(
                    "it lands on the same file as {first:?} (names are compared ignoring case)"
                ),
            )),
            None => {
                files.insert(folded, entry.key.clone());
            }
        }
    }
    for entry in &entries {
        let mut path = String::new();
        for dir in &entry.dirs {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(dir);
            if let Some(file) = files.get(&path.to_lowercase()) {
                refused.push((
                    entry.key.clone(),
                    format!(
                        "{path} is also the object {file:?} (names are compared ignoring case), \
                         so it cannot be a folder too"
                    ),
                ));
                break;
            }
        }
    }
    if !refused.is_empty() {
        let mut listed: Vec<String> = refused
            .iter()
            .take(SHOWN_KEYS)
            .map(|(key, why)| format!("{key:?} ({why})"))
            .collect();
        if refused.len() > SHOWN_KEYS {
            listed.push(format!("and {} more", refused.len() - SHOWN_KEYS));
        }
        return Err(Error::new(
            Code::SourceUnsafeObjectKey,
            format!(
                "{shown} holds object keys that cannot be written safely under the target folder: {}; nothing of the folder was written",
                listed.join(", ")
            ),
        ));
    }
    if entries.is_empty() {
        return Err(Error::new(
            Code::SourceNotFound,
            format!("{shown} holds no objects; check the folder in UploadUrl (it ends with /)"),
        ));
    }
    Ok(entries)
}

/// `a/b/c.apk` → (["a", "b"], "c.apk"), refusing anything that is not a plain relative path.
fn split(relative: &str) -> std::result::Result<(Vec<String>, String), String> {
    if relative.starts_with('/') {
        return Err("it is absolute".into());
    }
    let mut parts: Vec<String> = Vec::new();
    for segment in relative.split('/') {
        if segment.is_empty() {
            return Err("it has an empty path segment".into());
        }
        // Refuses `.ferry-*` in any case: `.FERRY-t-1.part` is the same file on /sdcard.
        check_final_name(segment).map_err(|why| format!("segment {segment:?}: {why}"))?;
        parts.push(segment.to_string());
    }
    let name = parts.pop().ok_or("it is empty")?;
    Ok((parts, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ListedObject {
        ListedObject {
            key: key.into(),
            size,
            etag: Some("\"e\"".into()),
        }
    }

    #[test]
    fn nested_keys_keep_their_relative_paths_and_markers_are_skipped() {
        let entries = plan(
            "send/",
            vec![
                obj("send/b/c/d.bin", 3),
                obj("send/a.apk", 10),
                obj("send/b/", 0),
                obj("send/empty", 0),
            ],
            "oss://b/send/",
        )
        .unwrap();
        let paths: Vec<String> = entries.iter().map(FolderEntry::relative_path).collect();
        assert_eq!(paths, ["a.apk", "b/c/d.bin", "empty"]);
        assert_eq!(entries[1].dirs, ["b", "c"]);
    }

    #[test]
    fn one_unsafe_key_refuses_the_whole_folder() {
        for bad in [
            "send/../x",
            "send/a//b",
            "send//abs",
            "send/./a",
            "send/a/..",
            "send/.ferry-t-1.part",
            "send/.FERRY-t-1.part",
            "send/.Ferry-x/a",
            "send/bad\u{1}name",
            "send/bad\u{202e}kpa.exe",
        ] {
            let err = plan(
                "send/",
                vec![obj("send/ok", 1), obj(bad, 1)],
                "oss://b/send/",
            )
            .unwrap_err();
            assert_eq!(err.code, Code::SourceUnsafeObjectKey, "{bad}");
            assert!(err.message.contains("nothing of the folder was written"));
        }
        let long = format!("send/{}", "x".repeat(256));
        assert!(plan("send/", vec![obj(&long, 1)], "s").is_err());
    }

    #[test]
    fn a_name_that_is_both_file_and_folder_is_refused() {
        let err = plan("p/", vec![obj("p/a", 1), obj("p/a/b", 1)], "s").unwrap_err();
        assert_eq!(err.code, Code::SourceUnsafeObjectKey);
    }

    #[test]
    fn keys_differing_only_in_case_are_refused_naming_both() {
        let err = plan("p/", vec![obj("p/X.apk", 1), obj("p/x.apk", 1)], "s").unwrap_err();
        assert_eq!(err.code, Code::SourceUnsafeObjectKey);
        assert!(err.message.contains("\"p/X.apk\""), "{}", err.message);
        assert!(err.message.contains("\"p/x.apk\""), "{}", err.message);
        let err = plan("p/", vec![obj("p/B", 1), obj("p/b/c", 1)], "s").unwrap_err();
        assert_eq!(err.code, Code::SourceUnsafeObjectKey);
        assert!(err.message.contains("\"p/B\""), "{}", err.message);
        assert!(err.message.contains("\"p/b/c\""), "{}", err.message);
        let err = plan("p/", vec![obj("p/Ä/x", 1), obj("p/ä", 1)], "s").unwrap_err();
        assert_eq!(err.code, Code::SourceUnsafeObjectKey);
        // Folders differing in case are one folder; distinct files in it are fine.
        assert_eq!(
            plan("p/", vec![obj("p/D/x", 1), obj("p/d/y", 1)], "s")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn nothing_under_the_prefix_is_not_found() {
        let err = plan("p/", vec![obj("p/", 0)], "oss://b/p/").unwrap_err();
        assert_eq!(err.code, Code::SourceNotFound);
    }
}
