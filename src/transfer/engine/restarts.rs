//! How often a transfer may start over from byte zero: a source that changes under it (a
//! new version each time) and a source that cannot resume (no validator, no range support)
//! are bounded each on their own, and each ends with a message saying which it was.

use super::MAX_RESTARTS;
use crate::error::{Code, Error, Result};
use crate::transfer::source::{Source, SourceError};

/// Why a transfer starts over from byte zero, each bounded on its own.
#[derive(Default)]
pub(super) struct Restarts {
    /// Proven changes of the source (another validator or size).
    changes: u32,
    /// Failed attempts that could not be resumed, so the whole object was fetched again.
    /// Each attempt brings at most the object, so this also bounds the bytes: at most
    /// `MAX_RESTARTS + 1` times the object (the retry budget alone allowed thousands).
    refetches: u32,
}

/// Why an attempt could not be resumed.
#[derive(Clone, Copy)]
pub(super) enum NoResume {
    /// The source sends neither a strong ETag nor Last-Modified.
    NoValidator,
    /// The source answers a range of the same version with the whole object.
    NoRanges,
    /// The source answered a part of a parallel transfer with the whole object of the same
    /// version (after serving ranges to the first request).
    PartRefused,
}

impl Restarts {
    /// Counts one proven change of the source; too many fail the task.
    pub(super) fn changed(&mut self, source: &dyn Source) -> Result<()> {
        self.changes += 1;
        if self.changes > MAX_RESTARTS {
            return Err(Error::new(
                Code::IntegritySourceChanged,
                format!(
                    "{} changed {MAX_RESTARTS} times during the transfer; retry when it is stable",
                    source.describe()
                ),
            ));
        }
        Ok(())
    }

    /// Counts one attempt that failed after `sent` bytes (of `total`, when known) and cannot
    /// be resumed. Past [`MAX_RESTARTS`] such restarts the task fails with the code of the
    /// attempts' `failure`, saying why it could not resume.
    pub(super) fn refetch(
        &mut self,
        sent: u64,
        total: Option<u64>,
        failure: Option<&SourceError>,
        why: NoResume,
        source: &dyn Source,
    ) -> Result<()> {
        self.refetches += 1;
        if self.refetches <= MAX_RESTARTS {
            return Ok(());
        }
        // Without a validator, "fewer bytes than announced" is what the task proves, however
        // the connection ended; without ranges, how it ended is the news.
        let short = matches!(why, NoResume::NoValidator) && total.is_some_and(|t| sent < t);
        let code = match (failure, why) {
            (_, NoResume::PartRefused) => Code::SourceBadContentRange,
            (Some(f), _) if !short => f.code,
            _ => Code::IntegritySizeMismatch,
        };
        let of = total.map_or(String::new(), |t| format!(" of {t}"));
        let times = self.refetches;
        let message = match why {
            NoResume::NoValidator => format!(
                "{} sent {sent}{of} bytes {times} times and cannot resume (no ETag/Last-Modified), so each retry started over; giving up",
                source.describe()
            ),
            NoResume::NoRanges => format!(
                "{} does not support ranges and dropped the transfer {times} times (the last after {sent}{of} bytes), so each retry started over; giving up",
                source.describe()
            ),
            NoResume::PartRefused => format!(
                "{} served ranges, then answered a part of the same version with the whole object {times} times, so each time the transfer started over; its range support is unreliable: giving up",
                source.describe()
            ),
        };
        let last = failure.map_or(String::new(), |f| format!(" (last failure: {})", f.message));
        Err(Error::new(code, format!("{message}{last}")))
    }
}
