//! The API client used by `ferry send`, `tasks`, `cancel` and `demo`: finds the daemon
//! through `STATE_DIR/api.json` (or an explicit address or socket), sends one HTTP/1.1
//! request per connection with the bearer token, and turns the daemon's JSON errors back
//! into [`Error`]s carrying the daemon's code.
//!
//! hyper is used directly (not reqwest) so the same code speaks over the unix socket.

use crate::api::{routes, ApiInfo, ErrorBody, Health, TaskList, TOKEN_ENV, TOKEN_FILE};
use crate::error::{Code, Error, Result};
use crate::task::record::TaskView;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpStream, UnixStream};

/// Connecting to a local daemon that does not answer within this is a dead daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One API call, including a submit that writes the journal.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `HOST:PORT` on loopback (or an `adb forward`ed port).
    Tcp(String),
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "http://{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    /// Where the daemon listens; one fresh connection per call.
    endpoint: Endpoint,
    /// Bearer token; empty means "none", which only `/healthz` accepts.
    token: String,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: impl Into<String>) -> Client {
        Client {
            endpoint,
            token: token.into(),
        }
    }

    /// Finds the daemon of `state_dir`. An explicit `addr` or `socket` wins; otherwise
    /// `api.json` is read (its socket preferred), then the default socket is tried. The
    /// token comes from `FERRY_TOKEN`, else `token_file`, else `STATE_DIR/token`.
    pub fn discover(
        state_dir: &Path,
        addr: Option<String>,
        socket: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> Result<Client> {
        let endpoint = match (addr, socket) {
            (Some(addr), _) => Endpoint::Tcp(addr),
            (None, Some(socket)) => Endpoint::Unix(socket),
            (None, None) => discover_endpoint(state_dir)?,
        };
        let token = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let path = token_file.unwrap_or_else(|| state_dir.join(TOKEN_FILE));
                read_client_token(&path)?
            }
        };
        Ok(Client::new(endpoint, token))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Submits a payload; `true` when the daemon created the task, `false` when it already
    /// knew the TaskId or ClientToken and returned the existing task.
    pub async fn submit(&self, json: &[u8]) -> Result<(TaskView, bool)> {
        let (status, body) = self
            .call(
                Method::POST,
                routes::TASKS,
                Some(Bytes::copy_from_slice(json)),
            )
            .await?;
        let view = decode::<TaskView>(status, &body)?;
        Ok((view, status == StatusCode::CREATED))
    }

    pub async fn describe(&self, id: &str) -> Result<TaskView> {
        let (status, body) = self.call(Method::GET, &routes::task(id), None).await?;
        decode(status, &body)
    }

    pub async fn list(&self) -> Result<Vec<TaskView>> {
        let (status, body) = self.call(Method::GET, routes::TASKS, None).await?;
        decode::<TaskList>(status, &body).map(|l| l.tasks)
    }

    pub async fn cancel(&self, id: &str) -> Result<TaskView> {
        let (status, body) = self.call(Method::POST, &routes::cancel(id), None).await?;
        decode(status, &body)
    }

    /// `/healthz`; a stopping daemon answers 503 with status `stopping`, returned as Ok.
    pub async fn health(&self) -> Result<Health> {
        let (status, body) = self.call(Method::GET, routes::HEALTH, None).await?;
        match serde_json::from_slice::<Health>(&body) {
            Ok(h) => Ok(h),
            Err(_) => decode(status, &body),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.call(Method::GET, routes::METRICS, None).await?;
        if !status.is_success() {
            return Err(daemon_error(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                Error::new(
                    Code::NetworkTimeout,
                    format!(
                        "the ferry daemon at {} did not answer within {REQUEST_TIMEOUT:?}",
                        self.endpoint
                    ),
                )
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let host = match &self.endpoint {
            Endpoint::Tcp(addr) => addr.clone(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host);
        if !self.token.is_empty() {
            builder = builder.header(AUTHORIZATION, format!("Bearer {}", self.token));
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::new(Code::Internal, format!("building the API request: {e}")))?;
        let response = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = self.connect(TcpStream::connect(addr.as_str())).await?;
                let _ = stream.set_nodelay(true);
                self.send(TokioIo::new(stream), request).await?
            }
            Endpoint::Unix(path) => {
                let stream = self.connect(UnixStream::connect(path)).await?;
                self.send(TokioIo::new(stream), request).await?
            }
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(e))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn connect<S>(
        &self,
        connecting: impl std::future::Future<Output = std::io::Result<S>>,
    ) -> Result<S> {
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(unreachable(&self.endpoint, &e.to_string())),
            Err(_) => Err(unreachable(&self.endpoint, "connecting timed out")),
        }
    }

    async fn send<I>(
        &self,
        io: I,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.broken(e))?;
        tokio::spawn(async move {
            // The connection ends when the response is read; its error surfaces there.
            let _ = conn.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| self.broken(e))
    }

    fn broken(&self, e: impl fmt::Display) -> Error {
        Error::new(
            Code::NetworkReset,
            format!(
                "the ferry daemon at {} broke off the request: {e}",
                self.endpoint
            ),
        )
    }
}

/// The "is a daemon running?" error: the CLI maps its code to exit status 3.
fn unreachable(endpoint: &Endpoint, why: &str) -> Error {
    Error::new(
        Code::NetworkConnect,
        format!("no ferry daemon answers at {endpoint} ({why}); start one with `ferry daemon`"),
    )
}

fn discover_endpoint(state_dir: &Path) -> Result<Endpoint> {
    if let Some(info) = ApiInfo::read(state_dir)? {
        if let Some(socket) = info.socket.filter(|s| s.exists()) {
            return Ok(Endpoint::Unix(socket));
        }
        if let Some(addr) = info.listen {
            return Ok(Endpoint::Tcp(addr));
        }
    }
    let socket = state_dir.join("ferry.sock");
    if socket.exists() {
        return Ok(Endpoint::Unix(socket));
    }
    Err(Error::new(
        Code::NetworkConnect,
        format!(
            "no ferry daemon answers for the state directory {} (no {} there); start one with `ferry daemon`, or pass --addr or --socket",
            state_dir.display(),
            ApiInfo::path(state_dir).display()
        ),
    ))
}

fn read_client_token(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(Error::new(
            Code::ApiUnauthorized,
            format!("the API token file {} is empty", path.display()),
        )),
        Err(e) => Err(Error::new(
            Code::ApiUnauthorized,
            format!(
                "cannot read the API token {} ({e}); run as the daemon's user, or pass --token-file or {TOKEN_ENV}",
                path.display()
            ),
        )),
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T> {
    if !status.is_success() {
        return Err(daemon_error(status, body));
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::new(
            Code::Internal,
            format!(
                "the daemon's reply could not be read ({e}): {}",
                snippet(body)
            ),
        )
    })
}

/// The daemon's own error when it sent one, else the status and the start of the body.
fn daemon_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.into(),
        Err(_) => Error::new(
            Code::Internal,
            format!("the daemon answered {status}: {}", snippet(body)),
        ),
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_prefers_explicit_then_api_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "tok\n").unwrap();
        let err = Client::discover(dir.path(), None, None, None).unwrap_err();
        assert_eq!(err.code, Code::NetworkConnect);
        assert!(err.message.contains("ferry daemon"), "{}", err.message);
        let info = ApiInfo {
            listen: Some("127.0.0.1:9".into()),
            socket: Some(dir.path().join("missing.sock")),
            pid: None,
            version: None,
        };
        info.write(dir.path()).unwrap();
        let c = Client::discover(dir.path(), None, None, None).unwrap();
        assert_eq!(c.endpoint(), &Endpoint::Tcp("127.0.0.1:9".into()));
        let c = Client::discover(dir.path(), Some("127.0.0.1:1".into()), None, None).unwrap();
        assert_eq!(c.endpoint(), &Endpoint::Tcp("127.0.0.1:1".into()));
    }

    #[tokio::test]
    async fn refused_connection_says_how_to_start_a_daemon() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Client::new(Endpoint::Tcp(format!("127.0.0.1:{port}")), "t");
        let err = c.health().await.unwrap_err();
        assert_eq!(err.code, Code::NetworkConnect);
        assert!(err.message.contains("ferry daemon"), "{}", err.message);
    }
}
