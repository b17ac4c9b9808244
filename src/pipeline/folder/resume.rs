//! Which object of a folder the partial data of an interrupted run belongs to.
//!
//! A folder send records partial data for one object at a time (one that goes alone, in
//! staging slot 0), and names it by key ([`ResumeState::folder_key`]). After a restart only
//! that object may resume from it: any other object, in particular a landed one fetched again
//! because the listing carries no ETag to recognise it by (s3s-fs), starts from zero. Handed
//! another object's state, it would ask for a range of the wrong object and fail the task
//! (`Integrity.SizeMismatch`), or splice two objects into one file.

use super::keys::FolderEntry;
use crate::task::record::{DoneObject, ResumeState};
use std::collections::HashMap;

/// The key of the entry that resumes from `resume`'s partial data, if any: the object the
/// state names, unless it has landed since (its state outlives it in the record until the
/// next checkpoint) or is no longer listed. A record written before states named their
/// object falls back to the rule of the builds that wrote it, which landed objects one by one
/// in key order: the first entry not recorded as landed.
pub(super) fn resumed_object<'a>(
    entries: &'a [FolderEntry],
    done: &HashMap<&str, &DoneObject>,
    resume: Option<&ResumeState>,
) -> Option<&'a str> {
    let resume = resume?;
    let entry = match &resume.folder_key {
        Some(key) => entries.iter().find(|e| &e.key == key)?,
        None => entries
            .iter()
            .find(|e| !done.contains_key(e.key.as_str()))?,
    };
    (!done.contains_key(entry.key.as_str())).then_some(entry.key.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::record::FileResult;

    fn entry(key: &str) -> FolderEntry {
        FolderEntry {
            key: key.into(),
            dirs: Vec::new(),
            name: key.into(),
            size: 1,
            etag: None,
        }
    }

    fn done(key: &str) -> DoneObject {
        DoneObject {
            key: key.into(),
            etag: "e".into(),
            file: FileResult {
                path: String::new(),
                size: 1,
                sha256: String::new(),
                content_encoding: None,
            },
        }
    }

    fn index<'a>(done: &[&'a DoneObject]) -> HashMap<&'a str, &'a DoneObject> {
        done.iter().map(|d| (d.key.as_str(), *d)).collect()
    }

    fn partial_of(key: Option<&str>) -> ResumeState {
        ResumeState {
            folder_key: key.map(str::to_string),
            ..ResumeState::default()
        }
    }

    /// The partial data of a killed run goes to the object that was being fetched, never to an
    /// earlier one that is fetched again (its ETag not listed, as s3s-fs's listings have none),
    /// nor to a later one when its own object landed after its last checkpoint.
    #[test]
    fn partial_data_resumes_only_the_object_it_belongs_to() {
        let entries = [entry("a"), entry("b"), entry("c")];
        let (a, b, c) = (done("a"), done("b"), done("c"));
        let landed = index(&[&a, &b]);
        let of_c = partial_of(Some("c"));
        assert_eq!(resumed_object(&entries, &landed, Some(&of_c)), Some("c"));
        // Nothing recorded as landed (small objects in flight next to nothing, or a landed
        // log lost): still only c.
        assert_eq!(
            resumed_object(&entries, &index(&[]), Some(&of_c)),
            Some("c")
        );
        assert_eq!(resumed_object(&entries, &landed, None), None);
        // b landed after its last checkpoint: its state goes to no one, c starts from zero.
        let of_b = partial_of(Some("b"));
        assert_eq!(resumed_object(&entries, &landed, Some(&of_b)), None);
        // An object no longer listed.
        let of_gone = partial_of(Some("z"));
        assert_eq!(resumed_object(&entries, &landed, Some(&of_gone)), None);
        let all = index(&[&a, &b, &c]);
        assert_eq!(resumed_object(&entries, &all, Some(&of_c)), None);
    }

    /// A record written before partial data named its object: the first entry not landed, as
    /// those builds landed objects one by one in key order.
    #[test]
    fn partial_data_of_an_older_record_goes_to_the_first_object_not_landed() {
        let entries = [entry("a"), entry("b"), entry("c")];
        let (a, b, c) = (done("a"), done("b"), done("c"));
        let old = partial_of(None);
        assert_eq!(
            resumed_object(&entries, &index(&[&a, &b]), Some(&old)),
            Some("c")
        );
        assert_eq!(resumed_object(&entries, &index(&[]), Some(&old)), Some("a"));
        assert_eq!(
            resumed_object(&entries, &index(&[&a, &b, &c]), Some(&old)),
            None
        );
    }
}
