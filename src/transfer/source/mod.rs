//! Sources: where a task's bytes come from, behind one small trait.
//!
//! A source has one general read, [`Source::get`], which states the offset it wants and the
//! version it expects; the engine owns retries, resume and the sink, so a new kind of source
//! (OSS) only has to say how to ask for bytes and how its failures classify.

pub mod http;
pub mod limit;
pub mod oss;
pub mod redirect;
pub mod retry;

use crate::error::{Code, Error};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The version of an object: a resumed read must see the same one, or start over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    /// Strong ETag only; weak ones cannot prove byte equality.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// Whether `seen` is provably the same version as `self`.
    pub fn matches(&self, seen: &Validators) -> bool {
        match (&self.etag, &seen.etag) {
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
            (None, _) => match (&self.last_modified, &seen.last_modified) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }
}

/// What a response says about the object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size of the whole object, when the source states it.
    pub size: Option<u64>,
    pub validators: Validators,
    /// The source answered a range request with a range.
    pub ranges: bool,
    /// The body's Content-Encoding (never `identity`): ferry asks for none and decodes none,
    /// so such a body is saved as sent, and every size is of the encoded bytes.
    pub encoding: Option<String>,
}

/// What to read: bytes from `offset` on (up to `end` when set), of the version `expect` when
/// resuming.
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    pub offset: u64,
    /// Exclusive end of the wanted range; `None` reads to the end of the object. A parallel
    /// transfer asks for one part per request; a source may still send more (the engine stops
    /// reading at `end`) or answer with the whole object (200), which the engine detects.
    pub end: Option<u64>,
    pub expect: Option<Validators>,
    /// Ask for `bytes=0-` even from byte 0: the answer (206 or 200) says whether the source
    /// serves ranges, while the body is still the whole object.
    pub range_from_start: bool,
}

/// A stream of body chunks.
pub trait Body: Send {
    /// The next chunk, `None` at the end of the body.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, SourceError>>;
}

pub struct GetResult {
    /// `meta.size` is the size of the whole object, even for a range.
    pub meta: ObjectMeta,
    /// Where the body starts in the object; 0 when the source sent the whole object.
    pub offset: u64,
    /// Where the body ends in the object (exclusive) as a range answer stated it
    /// (`Content-Range` end + 1); `None` for a whole object. Checked against the request by
    /// the engine, so a range that is not the one asked for is never written.
    pub end: Option<u64>,
    pub body: Box<dyn Body>,
}

pub trait Source: Send + Sync {
    /// A description safe for logs and task messages (no secrets).
    fn describe(&self) -> String;
    fn get(&self, options: GetOptions) -> BoxFuture<'_, Result<GetResult, SourceError>>;
}

/// A failed read, classified once so the engine's retry loop needs no knowledge of the source.
#[derive(Clone, Debug)]
pub struct SourceError {
    pub code: Code,
    pub message: String,
    /// Worth retrying (5xx, 408, 429, resets, short bodies, timeouts).
    pub transient: bool,
    /// The server's Retry-After, honoured instead of the computed backoff.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    pub fn permanent(code: Code, message: impl Into<String>) -> Self {
        SourceError {
            code,
            message: message.into(),
            transient: false,
            retry_after: None,
        }
    }

    pub fn transient(code: Code, message: impl Into<String>) -> Self {
        SourceError {
            code,
            message: message.into(),
            transient: true,
            retry_after: None,
        }
    }
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Error {
        Error::new(e.code, e.message)
    }
}
