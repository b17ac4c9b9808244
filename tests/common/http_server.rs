//! A raw, fault-injecting HTTP/1.1 server for integration tests.
//!
//! It speaks HTTP/1.1 by hand over tokio `TcpStream`s instead of using hyper,
//! because the tests need responses a correct server cannot produce: bodies
//! shorter than their Content-Length, TCP resets mid-body, lying headers,
//! servers that ignore `Range` or `If-Range`. It serves in-memory
//! [`Resource`]s (GET and HEAD only), queues one-shot [`Fault`]s per path (or
//! per path and range start, for parallel ranged clients), throttles bodies
//! per path, records every request and the peak number of responses in flight
//! per path, so tests can assert what the client sent and how concurrently.
//! It binds `127.0.0.1:0` only and stops when dropped.

// Each test binary uses a different subset of this helper.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Request heads larger than this get a 431, so a broken client cannot make
/// the server buffer without bound.
const MAX_HEAD: usize = 64 * 1024;

/// One servable object and how honestly the server treats its validators.
#[derive(Clone, Debug)]
pub struct Resource {
    pub body: Bytes,
    /// Strong (or, if it starts with `W/`, weak) ETag; `None` omits the header.
    pub etag: Option<String>,
    /// Last-Modified http-date; `None` omits the header.
    pub last_modified: Option<String>,
    /// False simulates a server without range support: `Range` is ignored.
    pub honour_range: bool,
    /// False simulates a lying server that applies `Range` even when the
    /// `If-Range` validator no longer matches.
    pub honour_if_range: bool,
    /// A `Content-Encoding` sent with every answer, whatever the client
    /// asked for (the body is served as stored).
    pub content_encoding: Option<String>,
}

impl Resource {
    /// A well-behaved resource: strong ETag derived from the content (a
    /// fast non-cryptographic hash: bodies are big and tests run unoptimised),
    /// a Last-Modified unique per call (so a replaced body gets a new date
    /// even within one second), ranges and If-Range honoured.
    pub fn new(body: impl Into<Bytes>) -> Resource {
        static STAMP: AtomicU64 = AtomicU64::new(0);
        let body = body.into();
        let mut hasher = DefaultHasher::new();
        hasher.write(&body);
        let hash = hasher.finish();
        let secs = 1_700_000_000 + STAMP.fetch_add(1, Ordering::Relaxed);
        let date = UNIX_EPOCH + Duration::from_secs(secs);
        Resource {
            etag: Some(format!("\"v1-{}-{hash:016x}\"", body.len())),
            last_modified: Some(httpdate::fmt_http_date(date)),
            body,
            honour_range: true,
            honour_if_range: true,
            content_encoding: None,
        }
    }

    /// Sends `Content-Encoding: ENCODING` with the stored bytes.
    pub fn content_encoding(mut self, encoding: &str) -> Resource {
        self.content_encoding = Some(encoding.to_owned());
        self
    }

    /// Replaces the ETag header value (quotes included), or drops it.
    pub fn etag(mut self, etag: Option<&str>) -> Resource {
        self.etag = etag.map(str::to_owned);
        self
    }

    /// Replaces the Last-Modified header value, or drops it.
    pub fn last_modified(mut self, date: Option<&str>) -> Resource {
        self.last_modified = date.map(str::to_owned);
        self
    }

    /// Ignore `Range` entirely: always 200, no `Accept-Ranges`.
    pub fn no_range(mut self) -> Resource {
        self.honour_range = false;
        self
    }

    /// Apply `Range` even when `If-Range` does not match (a lying server).
    pub fn ignore_if_range(mut self) -> Resource {
        self.honour_if_range = false;
        self
    }
}

/// A one-shot misbehaviour, consumed by the next GET of its path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// That status with a short text body.
    Status(u16),
    /// 429 with this `Retry-After` value (seconds or an http-date).
    TooManyRequests { retry_after: String },
    /// Full headers, then only this many body bytes, then FIN.
    TruncateAfter(u64),
    /// Full headers, this many body bytes, then a TCP reset (ECONNRESET).
    ResetAfter(u64),
    /// Declares this Content-Length, sends the real body, then closes. Use a
    /// value above the real length to make the client see a short body.
    WrongContentLength { declared: u64 },
    /// A redirect (301/302/307/308) to this `Location`.
    Redirect { location: String, status: u16 },
    /// Headers and half the body, a pause of this length, then the rest.
    Stall(Duration),
    /// The resource as usual, plus one response header of this many bytes.
    HugeHeader(usize),
    /// A 200 with the whole body, whatever `Range` asked (a server that
    /// stops serving ranges for one request).
    Whole,
    /// Full headers, then the body at this many bytes per second (a slow drip on one
    /// response, e.g. one part of a parallel download).
    Drip(u64),
    /// A 206 (whatever was asked) carrying bytes `first..=last` of the resource and this
    /// `Content-Range` value (`None` omits the header): a server lying about its range.
    Partial {
        first: u64,
        last: u64,
        content_range: Option<String>,
    },
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent, query string included.
    pub path: String,
    /// Header names lowercased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// `Range: bytes=FIRST-[LAST]` as (FIRST, LAST); `None` without a single range.
    pub fn range(&self) -> Option<(u64, Option<u64>)> {
        let spec = self.header("range")?.strip_prefix("bytes=")?;
        let (first, last) = spec.split_once('-')?;
        let last = match last.trim() {
            "" => None,
            l => Some(l.parse().ok()?),
        };
        Some((first.trim().parse().ok()?, last))
    }
}

impl Recorded {
    /// First value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let (_, value) = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(value)
    }
}

/// What a path serves permanently.
enum Route {
    Resource(Resource),
    /// `Location` and status.
    Redirect(String, u16),
}

/// Everything tests configure and observe, shared with connection tasks.
/// Guarded by a std mutex that is never held across an `.await`.
#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Faults for the next GET of a path whose `Range` starts at a given byte.
    range_faults: HashMap<(String, u64), VecDeque<Fault>>,
    rates: HashMap<String, u64>,
    /// One pace shared by every body of a path: a link all its connections share.
    links: HashMap<String, Arc<Link>>,
    log: Vec<Recorded>,
    /// Responses being sent now, and the most ever at once, per path.
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running test server. Dropping it stops accepting and kills connections.
pub struct TestServer {
    addr: SocketAddr,
    state: Shared,
    /// Dropping this ends the accept loop, which drops every connection.
    stop: Option<oneshot::Sender<()>>,
    /// The private runtime's thread, joined on drop (`start_blocking` only).
    thread: Thread,
}

type Thread = Option<std::thread::JoinHandle<()>>;

impl TestServer {
    /// Starts on the current tokio runtime. The port closes as soon as that
    /// runtime next polls the server task after drop.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel();
        let state = Shared::default();
        tokio::spawn(run(listener, state.clone(), stopped));
        TestServer::new(addr, state, stop, None)
    }

    /// Starts on a private runtime in a background thread, for synchronous
    /// tests (e.g. ones that drive a child process). Drop joins that thread,
    /// so the port is closed once drop returns.
    pub fn start_blocking() -> TestServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let state = Shared::default();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            rt.expect("server runtime").block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let _ = addr_tx.send(listener.local_addr().expect("local addr"));
                run(listener, shared, stopped).await;
            });
        });
        let addr = addr_rx.recv().expect("server thread started");
        TestServer::new(addr, state, stop, Some(thread))
    }

    fn new(addr: SocketAddr, state: Shared, stop: oneshot::Sender<()>, thread: Thread) -> Self {
        let stop = Some(stop);
        TestServer {
            addr,
            state,
            stop,
            thread,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/path`; a missing leading `/` is added.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Serves `resource` at `path` (replacing whatever was there).
    pub fn put(&self, path: &str, resource: Resource) {
        let route = Route::Resource(resource);
        lock(&self.state).routes.insert(path.into(), route);
    }

    /// Same as [`put`](Self::put); reads better when a test changes a file
    /// under a client's feet.
    pub fn replace(&self, path: &str, resource: Resource) {
        self.put(path, resource);
    }

    /// Makes `path` answer 404 from now on.
    pub fn remove(&self, path: &str) {
        lock(&self.state).routes.remove(path);
    }

    /// A permanent redirect from `path` to `location` (sent verbatim).
    pub fn add_redirect(&self, path: &str, location: &str, status: u16) {
        let route = Route::Redirect(location.into(), status);
        lock(&self.state).routes.insert(path.into(), route);
    }

    /// Builds `{prefix}/0 -> {prefix}/1 -> … -> {prefix}/{n-1} -> target`
    /// with 302s and returns the first path (`target` itself when `n == 0`).
    pub fn redirect_chain(&self, prefix: &str, n: usize, target: &str) -> String {
        let hops = (0..n).map(|i| format!("{prefix}/{i}"));
        let hops: Vec<String> = hops.chain([target.to_owned()]).collect();
        for pair in hops.windows(2) {
            self.add_redirect(&pair[0], &pair[1], 302);
        }
        hops[0].clone()
    }

    /// Queues a fault for the next GET of `path`; several queue in order.
    pub fn push_fault(&self, path: &str, fault: Fault) {
        let mut state = lock(&self.state);
        state
            .faults
            .entry(path.into())
            .or_default()
            .push_back(fault);
    }

    /// Queues a fault for the next GET of `path` whose `Range` starts at byte
    /// `first` (one part of a parallel download); it wins over `push_fault`.
    pub fn push_range_fault(&self, path: &str, first: u64, fault: Fault) {
        let mut state = lock(&self.state);
        let key = (path.to_owned(), first);
        state.range_faults.entry(key).or_default().push_back(fault);
    }

    /// The most responses for `path` that were being sent at the same time.
    pub fn max_in_flight(&self, path: &str) -> usize {
        let state = lock(&self.state);
        state.max_in_flight.get(path).copied().unwrap_or(0)
    }

    /// Throttles every body sent for `path` to about this many bytes per
    /// second; `None` (or 0) removes the limit.
    pub fn set_rate(&self, path: &str, bytes_per_sec: Option<u64>) {
        let mut state = lock(&self.state);
        match bytes_per_sec.filter(|rate| *rate > 0) {
            Some(rate) => state.rates.insert(path.into(), rate),
            None => state.rates.remove(path),
        };
    }

    /// Throttles all bodies sent for `path` together to about this many bytes per second,
    /// like a link they share: more connections bring no more speed.
    pub fn set_link_rate(&self, path: &str, bytes_per_sec: u64) {
        let link = Arc::new(Link {
            rate: bytes_per_sec.max(1),
            next_free: Mutex::new(Instant::now()),
        });
        lock(&self.state).links.insert(path.into(), link);
    }

    /// Every request whose path (query string stripped) is `path`, in order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        let state = lock(&self.state);
        let matches = state.log.iter().filter(|r| route_path(&r.path) == path);
        matches.cloned().collect()
    }

    /// Number of requests (any method) made to `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.requests(path).len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The path used for routing and the request log: the target minus query.
fn route_path(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// Accepts until `stopped` fires (or its sender is dropped). Returning drops
/// the listener and the connection set, which aborts every connection task.
async fn run(listener: TcpListener, state: Shared, stopped: oneshot::Receiver<()>) {
    let accept = async {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Head and body go out as separate writes; without this, Nagle
            // plus delayed ACKs would add ~40 ms per response.
            let _ = stream.set_nodelay(true);
            conns.spawn(connection(stream, state.clone()));
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = stopped => {}
    }
}

/// How a connection continues after one response.
enum After {
    /// The response is complete; serve the next request.
    Keep,
    /// Graceful close: FIN.
    Close,
    /// Abortive close: RST.
    Reset,
}

/// Serves requests on one connection until either side closes it.
async fn connection(mut stream: TcpStream, state: Shared) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let after = match read_head(&mut stream, &mut buf).await {
            None => return,
            Some(Err(status)) => send(&mut stream, Plan::text(status, vec![]), true).await,
            Some(Ok((req, close))) => respond(&mut stream, &state, req, close).await,
        };
        match after.unwrap_or(After::Close) {
            After::Keep => continue,
            After::Close => {
                // Lingering close: FIN, then drain what the client still
                // sends (e.g. a request body we never read), because closing
                // with unread data sends an RST that can eat our response.
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                let drain = async { while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
            }
            After::Reset => {
                // Let the client read what was sent first: an RST can make
                // its kernel discard unread data. Zero linger makes the RST.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = stream.set_zero_linger();
            }
        }
        return;
    }
}

/// Reads up to `\r\n\r\n` (bytes past it stay in `buf` for the next
/// request). `None` on EOF; `Err(status)` for a head we refuse.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Result<Parsed, u16>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            return Some(parse_head(&String::from_utf8_lossy(&head)).ok_or(400));
        }
        if buf.len() >= MAX_HEAD {
            return Some(Err(431));
        }
        if stream.read_buf(buf).await.unwrap_or(0) == 0 {
            return None;
        }
    }
}

/// A request head, and whether the connection must close after answering.
type Parsed = (Recorded, bool);

fn parse_head(head: &str) -> Option<Parsed> {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let (method, path) = (method.into(), target.into());
    let req = Recorded {
        method,
        path,
        headers,
    };
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let has = |token: &str| conn.split(',').any(|t| t.trim() == token);
    // HTTP/1.1 keeps the connection unless told to close; 1.0 the reverse.
    // A request body we would have to skip is simpler to close after.
    let close = has("close") || (version != "HTTP/1.1" && !has("keep-alive"));
    let has_body = req.header("transfer-encoding").is_some()
        || req.header("content-length").is_some_and(|v| v != "0");
    Some((req, close || has_body))
}

/// A response decided under the state lock, sent after releasing it.
#[derive(Default)]
struct Plan {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    /// A body-level fault still to apply while sending.
    fault: Option<Fault>,
    rate: Option<u64>,
    link: Option<Arc<Link>>,
    head_only: bool,
}

impl Plan {
    /// A complete short response, for errors and redirects.
    fn text(status: u16, headers: Vec<(&'static str, String)>) -> Plan {
        let body = format!("{status} {}\n", reason(status));
        Plan::new(status, headers, body.into())
    }

    fn new(status: u16, headers: Vec<(&'static str, String)>, body: Bytes) -> Plan {
        Plan {
            status,
            headers,
            body,
            ..Plan::default()
        }
    }
}

async fn respond(stream: &mut TcpStream, state: &Shared, req: Recorded, close: bool) -> Io<After> {
    // We never read request bodies, so after a 405 the connection must go.
    let allowed = matches!(req.method.as_str(), "GET" | "HEAD");
    let busy = Busy::enter(state, route_path(&req.path));
    let plan = plan(&mut lock(state), req, allowed);
    let after = send(stream, plan, close || !allowed).await;
    drop(busy);
    after
}

/// Counts one response in flight for its path while it lives.
struct Busy {
    state: Shared,
    path: String,
}

impl Busy {
    fn enter(state: &Shared, path: &str) -> Busy {
        let mut s = lock(state);
        let now = {
            let n = s.in_flight.entry(path.to_owned()).or_default();
            *n += 1;
            *n
        };
        let max = s.max_in_flight.entry(path.to_owned()).or_default();
        *max = (*max).max(now);
        let (state, path) = (state.clone(), path.to_owned());
        Busy { state, path }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.state).in_flight.get_mut(&self.path) {
            *n -= 1;
        }
    }
}

/// Records the request and decides the response, consuming a queued fault.
fn plan(state: &mut State, req: Recorded, allowed: bool) -> Plan {
    let path = route_path(&req.path).to_owned();
    let first = req.range().map(|(first, _)| first);
    let range_fault = first.and_then(|first| {
        let queue = state.range_faults.get_mut(&(path.clone(), first));
        queue.and_then(VecDeque::pop_front)
    });
    let fault = match req.method.as_str() {
        "GET" => range_fault.or_else(|| state.faults.get_mut(&path).and_then(VecDeque::pop_front)),
        _ => None,
    };
    let mut plan = match (fault, state.routes.get(&path)) {
        _ if !allowed => Plan::text(405, vec![("Allow", "GET, HEAD".into())]),
        (Some(Fault::Status(code)), _) => Plan::text(code, vec![]),
        (Some(Fault::TooManyRequests { retry_after }), _) => {
            Plan::text(429, vec![("Retry-After", retry_after)])
        }
        (Some(Fault::Redirect { location, status }), _) => {
            Plan::text(status, vec![("Location", location)])
        }
        (_, Some(Route::Redirect(location, status))) => {
            Plan::text(*status, vec![("Location", location.clone())])
        }
        (_, None) => Plan::text(404, vec![]),
        (Some(Fault::HugeHeader(len)), Some(Route::Resource(res))) => {
            let mut plan = plan_resource(res, &req);
            plan.headers.push(("X-Filler", "a".repeat(len)));
            plan
        }
        (Some(Fault::Whole), Some(Route::Resource(res))) => {
            let mut whole = req.clone();
            whole.headers.retain(|(name, _)| name != "range");
            plan_resource(res, &whole)
        }
        (
            Some(Fault::Partial {
                first,
                last,
                content_range,
            }),
            Some(Route::Resource(res)),
        ) => {
            let mut plan = plan_resource(res, &req);
            plan.status = 206;
            plan.headers.retain(|(name, _)| *name != "Content-Range");
            plan.headers
                .extend(content_range.map(|value| ("Content-Range", value)));
            plan.body = res.body.slice(first as usize..=last as usize);
            plan
        }
        (fault, Some(Route::Resource(res))) => Plan {
            fault,
            ..plan_resource(res, &req)
        },
    };
    plan.rate = state.rates.get(&path).copied();
    plan.link = state.links.get(&path).cloned();
    plan.head_only = req.method == "HEAD";
    state.log.push(req);
    plan
}

/// 200, 206 or 416 for a resource, per its `Range` and `If-Range` policy.
fn plan_resource(res: &Resource, req: &Recorded) -> Plan {
    let len = res.body.len() as u64;
    let mut headers = vec![("Content-Type", "application/octet-stream".to_owned())];
    headers.extend(res.etag.clone().map(|etag| ("ETag", etag)));
    if let Some(date) = &res.last_modified {
        headers.push(("Last-Modified", date.clone()));
    }
    if let Some(encoding) = &res.content_encoding {
        headers.push(("Content-Encoding", encoding.clone()));
    }
    let mut range = None;
    if res.honour_range {
        headers.push(("Accept-Ranges", "bytes".into()));
        range = req.header("range").and_then(|r| parse_range(r, len));
    }
    let (status, body, content_range) = match range.filter(|_| if_range_holds(res, req)) {
        None => (200, res.body.clone(), None),
        Some(None) => (416, Bytes::new(), Some(format!("bytes */{len}"))),
        Some(Some((first, last))) => {
            let body = res.body.slice(first as usize..=last as usize);
            (206, body, Some(format!("bytes {first}-{last}/{len}")))
        }
    };
    headers.extend(content_range.map(|value| ("Content-Range", value)));
    Plan::new(status, headers, body)
}

/// Parses `bytes=N-`, `bytes=N-M` and `bytes=-N` into `Some(Some((first,
/// last)))` clamped to the body, or `Some(None)` when unsatisfiable. Anything
/// else (multiple ranges too) yields `None`: ignored, as RFC 9110 allows.
fn parse_range(value: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let (first, last) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        return Some((suffix > 0 && len > 0).then(|| (len - suffix.min(len), len - 1)));
    }
    let first: u64 = first.parse().ok()?;
    let last: u64 = match last {
        "" => u64::MAX,
        last => last.parse().ok()?,
    };
    if last < first {
        return None;
    }
    Some((first < len).then(|| (first, last.min(len - 1))))
}

/// If-Range holds when absent, ignored by policy, or exactly equal to the
/// strong ETag or the Last-Modified string.
fn if_range_holds(res: &Resource, req: &Recorded) -> bool {
    let Some(value) = req.header("if-range").filter(|_| res.honour_if_range) else {
        return true;
    };
    let strong = res.etag.as_deref().filter(|etag| !etag.starts_with("W/"));
    Some(value) == strong || Some(value) == res.last_modified.as_deref()
}

type Io<T> = std::io::Result<T>;

/// Writes the head, then the body with any throttle and body fault.
async fn send(stream: &mut TcpStream, plan: Plan, close: bool) -> Io<After> {
    let len = plan.body.len();
    let clean = if close { After::Close } else { After::Keep };
    let rate = match plan.fault {
        Some(Fault::Drip(rate)) => Some(rate),
        _ => plan.rate,
    };
    let (declared, cut, stall, after) = match plan.fault {
        Some(Fault::TruncateAfter(n)) => (len as u64, n as usize, None, After::Close),
        Some(Fault::ResetAfter(n)) => (len as u64, n as usize, None, After::Reset),
        Some(Fault::WrongContentLength { declared }) => (declared, len, None, After::Close),
        Some(Fault::Stall(pause)) => (len as u64, len, Some(pause), clean),
        _ => (len as u64, len, None, clean),
    };
    let head = head(plan.status, &plan.headers, declared, close);
    stream.write_all(&head).await?;
    if !plan.head_only {
        let body = &plan.body[..cut.min(len)];
        let (first, rest) = body.split_at(stall.map_or(body.len(), |_| body.len() / 2));
        let link = plan.link.as_deref();
        write_paced(stream, first, rate, link).await?;
        if let Some(pause) = stall {
            tokio::time::sleep(pause).await;
        }
        write_paced(stream, rest, rate, link).await?;
    }
    Ok(after)
}

/// A rate shared by several responses: each piece books the next free slot.
pub struct Link {
    rate: u64,
    next_free: Mutex<Instant>,
}

/// Sends `data`, at most `rate` bytes per second if set. Each chunk (1/20 s
/// worth) waits for its deadline measured from the start, so sleep overshoot
/// does not accumulate and a 4 MiB body at 512 KiB/s takes ~8 s. With a
/// `link`, every piece also waits for its turn on the link.
async fn write_paced(
    stream: &mut TcpStream,
    data: &[u8],
    rate: Option<u64>,
    link: Option<&Link>,
) -> Io<()> {
    if let Some(link) = link {
        let piece = (link.rate / 50).clamp(1, 16 * 1024) as usize;
        for piece in data.chunks(piece) {
            let due = {
                let mut next = link.next_free.lock().unwrap_or_else(|e| e.into_inner());
                // A little credit for an idle moment, so sleep overshoot does not slow a
                // single connection below the rate.
                let idle_from = Instant::now() - Duration::from_millis(20);
                *next = (*next).max(idle_from)
                    + Duration::from_secs_f64(piece.len() as f64 / link.rate as f64);
                *next
            };
            tokio::time::sleep_until(due).await;
            stream.write_all(piece).await?;
        }
        return Ok(());
    }
    let Some(rate) = rate else {
        return stream.write_all(data).await;
    };
    let chunk = (rate / 20).clamp(1, 64 * 1024) as usize;
    let (start, mut sent) = (Instant::now(), 0u64);
    for piece in data.chunks(chunk) {
        sent += piece.len() as u64;
        tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / rate as f64)).await;
        stream.write_all(piece).await?;
    }
    Ok(())
}

fn head(status: u16, headers: &[(&str, String)], content_length: u64, close: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += &format!("Content-Length: {content_length}\r\n");
    if close {
        out += "Connection: close\r\n";
    }
    out += "\r\n";
    out.into_bytes()
}

/// Clients ignore the reason phrase; this just makes captures readable.
fn reason(status: u16) -> &'static str {
    match status {
        200..=299 => "OK",
        300..=399 => "Redirect",
        400..=499 => "Client Error",
        _ => "Server Error",
    }
}
