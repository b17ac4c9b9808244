//! A tiny HTTP file server for `ferry demo` and the CLI tests: one generated file of any
//! size, deterministic pseudo-random bytes computed on the fly (no memory or disk used),
//! with `Content-Length`, a strong `ETag`, `Last-Modified` and single-range `Range` /
//! `If-Range` support, so the agent's resume path is exercised. `?rate=BYTES_PER_SEC`
//! slows a response down, which lets a demo or test watch (or cancel) a running transfer.
//!
//! It listens on 127.0.0.1 only and stops when the [`DemoServer`] is dropped.

use crate::error::{Code, Error, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// The path the file is served at.
pub const FILE_PATH: &str = "/ferry-demo.bin";
const LAST_MODIFIED: &str = "Thu, 01 Jan 2026 00:00:00 GMT";
const CHUNK: usize = 64 * 1024;

/// A running demo server; dropping it stops it.
pub struct DemoServer {
    /// `127.0.0.1:PORT`, the port picked by the kernel.
    addr: SocketAddr,
    /// Length of the served file in bytes.
    size: u64,
    /// Lowercase hex sha256 of the whole file, to check what the agent wrote.
    sha256: String,
    /// Cancelled on drop: stops accepting and ends open connections.
    stop: CancellationToken,
}

impl DemoServer {
    /// Serves a `size`-byte file on `127.0.0.1:0`; hashing it first takes a moment for
    /// large sizes.
    pub async fn start(size: u64) -> Result<DemoServer> {
        let sha256 = tokio::task::spawn_blocking(move || sha256_of(size))
            .await
            .map_err(|e| Error::new(Code::Internal, format!("hashing the demo file: {e}")))?;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
            Error::new(
                Code::Internal,
                format!("demo server cannot listen on 127.0.0.1: {e}"),
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(Code::Internal, format!("demo server address: {e}")))?;
        let stop = CancellationToken::new();
        let etag = format!("\"ferry-demo-{size}-{}\"", &sha256[..16]);
        tokio::spawn(accept_loop(
            listener,
            Arc::new(File { size, etag }),
            stop.clone(),
        ));
        Ok(DemoServer {
            addr,
            size,
            sha256,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/ferry-demo.bin`.
    pub fn url(&self) -> String {
        format!("http://{}{FILE_PATH}", self.addr)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Fills `buf` with the file's bytes starting at `offset` (splitmix64 of each 8-byte word).
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let word = splitmix64(pos / 8);
        *byte = word.to_le_bytes()[(pos % 8) as usize];
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sha256 of the whole generated file, as lowercase hex.
pub fn sha256_of(size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(buf.len() as u64) as usize;
        fill(offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What every connection needs to answer for the one file.
struct File {
    size: u64,
    /// Strong validator, so the agent's If-Range resume can be checked.
    etag: String,
}

async fn accept_loop(listener: TcpListener, file: Arc<File>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let file = file.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let file = file.clone();
                async move { Ok::<_, Infallible>(respond(&file, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

fn text(status: StatusCode, msg: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).boxed());
    *reply.status_mut() = status;
    reply
}

fn respond(file: &File, req: &Request<Incoming>) -> Reply {
    if req.uri().path() != FILE_PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the demo file is /ferry-demo.bin",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let rate = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("rate="))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|r| *r > 0)
    });
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    // If-Range with another validator means "the file changed": send all of it.
    let range_applies = header("if-range").is_none_or(|v| v == file.etag);
    let range = header("range")
        .filter(|_| range_applies)
        .map(|r| parse_range(r, file.size));
    let (status, start, end) = match range {
        Some(RangeSpec::Unsatisfiable) => {
            let mut reply = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                reply.headers_mut().insert(CONTENT_RANGE, v);
            }
            return reply;
        }
        Some(RangeSpec::Range(a, b)) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Some(RangeSpec::Ignore) | None => (StatusCode::OK, 0, file.size),
    };
    let len = end - start;
    let body = if req.method() == Method::HEAD {
        Full::new(Bytes::new()).boxed()
    } else {
        PatternBody::new(start, end, rate).boxed()
    };
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("last-modified", HeaderValue::from_static(LAST_MODIFIED));
    if let Ok(v) = HeaderValue::from_str(&file.etag) {
        headers.insert("etag", v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{}", end - 1, file.size);
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(CONTENT_RANGE, v);
        }
    }
    reply
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Inclusive byte positions.
    Range(u64, u64),
    Unsatisfiable,
    /// Malformed or multi-range: answered with the whole file, as RFC 9110 allows.
    Ignore,
}

fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), _) if start >= size => RangeSpec::Unsatisfiable,
        (Ok(start), Ok(last)) if last >= start => RangeSpec::Range(start, last.min(size - 1)),
        (Ok(start), Err(_)) if b.is_empty() => RangeSpec::Range(start, size - 1),
        (Err(_), Ok(0)) if a.is_empty() => RangeSpec::Unsatisfiable,
        (Err(_), Ok(suffix)) if a.is_empty() && size > 0 => {
            RangeSpec::Range(size - suffix.min(size), size - 1)
        }
        _ => RangeSpec::Ignore,
    }
}

/// Streams `[pos, end)` of the generated file, optionally paced to `rate` bytes a second.
struct PatternBody {
    pos: u64,
    end: u64,
    rate: Option<u64>,
    started: Instant,
    sent: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl PatternBody {
    fn new(start: u64, end: u64, rate: Option<u64>) -> Self {
        PatternBody {
            pos: start,
            end,
            rate,
            started: Instant::now(),
            sent: 0,
            sleep: None,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let mut chunk = CHUNK as u64;
        if let Some(rate) = self.rate {
            // Send at most a tenth of a second's worth at a time, when it is due.
            chunk = chunk.min((rate / 10).max(1));
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate as f64);
            if due > Instant::now() {
                let mut sleep = Box::pin(tokio::time::sleep_until(due));
                if sleep.as_mut().poll(cx).is_pending() {
                    self.sleep = Some(sleep);
                    return Poll::Pending;
                }
            }
        }
        let n = chunk.min(self.end - self.pos) as usize;
        let mut buf = vec![0u8; n];
        fill(self.pos, &mut buf);
        self.pos += n as u64;
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Range(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Range(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), RangeSpec::Range(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Range(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), RangeSpec::Range(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
    }

    #[test]
    fn content_is_deterministic_and_offset_consistent() {
        let mut whole = vec![0u8; 100];
        fill(0, &mut whole);
        let mut part = vec![0u8; 37];
        fill(13, &mut part);
        assert_eq!(&whole[13..50], &part[..]);
        assert_eq!(sha256_of(100), sha256_of(100));
        assert_ne!(sha256_of(100), sha256_of(101));
    }

    #[tokio::test]
    async fn serves_whole_file_and_ranges() {
        let server = DemoServer::start(1000).await.unwrap();
        let client = reqwest::Client::new();
        let body = client
            .get(server.url())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut expected = vec![0u8; 1000];
        fill(0, &mut expected);
        assert_eq!(&body[..], &expected[..]);
        let resp = client
            .get(server.url())
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.headers()["content-range"], "bytes 10-19/1000");
        assert_eq!(&resp.bytes().await.unwrap()[..], &expected[10..20]);
    }
}
