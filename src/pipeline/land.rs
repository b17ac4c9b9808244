//! One file through the engine into the sink: from its source to its final name in its
//! folder, and what the run knows about it afterwards ([`Landed`]).

use super::target::{adopt_legacy_staging, staging_name_in_slot};
use super::Ctx;
use crate::error::Result;
use crate::paths::{DevicePath, Dir};
use crate::task::record::{FileResult, ResumeState};
use crate::transfer::engine::{self, Job, Observer};
use crate::transfer::sink;
use crate::transfer::source::Source;
use std::sync::Arc;

/// A file committed under its final name: the open folder it is in and its name there, so
/// the media scan and AutoInstall reach it without parsing a path back.
#[derive(Clone, Debug)]
pub struct Landed {
    /// The folder it landed in, opened inside its allowed root: install reads the file
    /// through it, never through a path walked again.
    pub dir: Arc<Dir>,
    /// Its final name in `dir`.
    pub name: String,
    pub size: u64,
    /// Lowercase hex, as the task result reports it.
    pub sha256: String,
    /// The Content-Encoding it was sent with and saved in (ferry decodes none).
    pub content_encoding: Option<String>,
}

impl Landed {
    pub fn device_path(&self) -> DevicePath {
        self.dir.device_path().join(&self.name)
    }

    /// The record of this file in the task result and the journal.
    pub fn to_result(&self) -> FileResult {
        FileResult {
            path: self.device_path().to_string(),
            size: self.size,
            sha256: self.sha256.clone(),
            content_encoding: self.content_encoding.clone(),
        }
    }
}

/// One file to land: its source, the staging folder, and where it ends up.
pub(super) struct Landing {
    pub source: Arc<dyn Source>,
    pub staging_dir: Arc<Dir>,
    pub final_dir: Arc<Dir>,
    pub final_name: String,
    pub resume: Option<ResumeState>,
    pub md5: Option<[u8; 16]>,
    /// Which staging name it uses ([`staging_name_in_slot`]): 0 but for the objects of a
    /// folder fetched at once.
    pub slot: usize,
}

impl Ctx<'_> {
    pub(super) async fn land<O: Observer>(&self, landing: Landing, observer: &O) -> Result<Landed> {
        // Before any byte is fetched; the sink checks again when it commits.
        sink::check_final_target(&landing.final_dir, &landing.final_name)?;
        adopt_legacy_staging(&landing.staging_dir, self.task_id, landing.resume.as_ref()).await;
        let final_dir = (!Arc::ptr_eq(&landing.staging_dir, &landing.final_dir))
            .then(|| landing.final_dir.clone());
        let job = Job {
            source: landing.source,
            dir: landing.staging_dir,
            final_name: landing.final_name.clone(),
            final_dir,
            staging: staging_name_in_slot(self.task_id, landing.slot),
            resume: landing.resume,
            md5: landing.md5,
            bandwidth: self.services.bandwidth.clone(),
        };
        let outcome = engine::transfer(job, &self.services.config, observer, &self.cancel).await?;
        let landed = Landed {
            dir: landing.final_dir,
            name: landing.final_name,
            size: outcome.written.len,
            sha256: sink::hex(&outcome.written.sha256),
            content_encoding: outcome.encoding,
        };
        tracing::info!(
            task = self.task_id,
            path = %landed.device_path(),
            bytes = landed.size,
            retries = outcome.retries,
            "file in place"
        );
        Ok(landed)
    }
}

/// Files sent with a Content-Encoding are saved as sent (ferry asks for none and decodes
/// none): say so, for the first few.
pub(super) fn encoding_notes(files: &[Landed]) -> Vec<String> {
    const SHOWN: usize = 5;
    let encoded: Vec<_> = files
        .iter()
        .filter_map(|f| Some((f.device_path(), f.content_encoding.as_ref()?)))
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
