//! Telling the media store about the files a run landed in shared storage.

use super::land::Landed;
use crate::android::media_scan;
use crate::config::{Config, MediaScanMode};

/// Files of one folder send announced to the media store one by one; past this, a note says
/// how many were left to the next periodic scan (each announcement starts a process).
const MAX_MEDIA_SCANS: usize = 100;

/// Announces the landed files; what could not be announced comes back as notes (the files
/// are committed: nothing here fails the task).
pub(super) async fn announce(config: &Config, files: &[Landed]) -> Vec<String> {
    let mut notes = Vec::new();
    for file in files.iter().take(MAX_MEDIA_SCANS) {
        notes.extend(media_scan::announce(config, &file.device_path()).await);
    }
    if files.len() > MAX_MEDIA_SCANS && config.media_scan.mode != MediaScanMode::Off {
        notes.push(format!(
            "the media store was told about the first {MAX_MEDIA_SCANS} of {} files; the rest appear at its next scan",
            files.len()
        ));
    }
    notes
}
