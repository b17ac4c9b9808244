//! The controller's public HTTP API: Alibaba Cloud Phone's OpenAPI (eds-aic, version
//! `2023-09-30`, RPC style) as its official SDKs call it, so they work unmodified with only
//! the endpoint changed.
//!
//! A request is `POST /` (or `GET /`) with every parameter in the query string and/or an
//! `application/x-www-form-urlencoded` body; the action comes from `x-acs-action` (or
//! `Action`), the version from `x-acs-version` (or `Version`). Every request is signed with
//! ACS3-HMAC-SHA256 ([`acs3`]) by an AccessKey the [`Credentials`] know. Every answer is JSON
//! with a `RequestId`; failures are Alibaba's `{RequestId, HostId, Code, Message}`
//! ([`errors`]). The actions themselves ([`send_file`], [`describe_tasks`]) only parse their
//! parameters and hand them to the fleet logic ([`Actions`]).

pub mod acs3;
pub mod describe_tasks;
pub mod errors;
mod handler;
pub mod params;
mod replay;
pub mod send_file;

use crate::controller::ports::{Actions, Credentials};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// The API version served; any other is `InvalidVersion`.
pub const VERSION: &str = "2023-09-30";

/// Limits of the HTTP side.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body (a form body); larger is `RequestTooLarge` (413).
    pub max_body_bytes: usize,
    /// Nonces remembered for replay checks (each for 30 minutes): the sustained request rate
    /// this allows is `nonce_capacity / 1800` per second (default ≈ 145/s, ≤ ~12 MiB).
    pub nonce_capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 1024 * 1024,
            nonce_capacity: 262_144,
        }
    }
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` with the default [`Settings`] until `shutdown` is cancelled,
/// then lets open requests finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    actions: Arc<dyn Actions>,
    credentials: Arc<dyn Credentials>,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        Settings::default(),
        actions,
        credentials,
        shutdown,
    )
    .await
}

/// [`serve`] with explicit [`Settings`].
pub async fn serve_with(
    listener: TcpListener,
    settings: Settings,
    actions: Arc<dyn Actions>,
    credentials: Arc<dyn Credentials>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(handler::Shared::new(settings, actions, credentials));
    // Each connection holds a sender; when all are dropped, every connection has ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    spawn_connection(TokioIo::new(stream), &shared, &shutdown, &done_tx);
                }
                Err(e) => {
                    // Mostly "too many open files": wait instead of spinning.
                    error!("accepting an API connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    drop(done_tx);
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv())
        .await
        .is_err()
    {
        warn!("some API connections did not close within {DRAIN_TIMEOUT:?}; leaving them");
    }
}

fn spawn_connection<I>(
    io: I,
    shared: &Arc<handler::Shared>,
    stop: &CancellationToken,
    done: &mpsc::Sender<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let shared = shared.clone();
    let stop = stop.clone();
    let done = done.clone();
    tokio::spawn(async move {
        let _done = done;
        let service = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(shared.handle(req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!("API connection ended: {e}");
                }
            }
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    debug!("API connection ended during shutdown: {e}");
                }
            }
        }
    });
}
