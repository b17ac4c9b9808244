//! The HTTP/1 connections of ferry's two servers (the daemon's local API and the controller's
//! OpenAPI), kept in one place so both get the same guards: a header timeout against slow
//! clients, a graceful finish when told to stop, and a count of open connections so shutdown
//! can wait for the last reply instead of cutting it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// A client gets this long to send its request headers (slow-loris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The open connections of one server.
pub struct Connections {
    stop: CancellationToken,
    /// Each connection holds a clone; when all are dropped, every connection has ended.
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl Connections {
    /// Connections that finish their current exchange and close once `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Connections {
        let (done_tx, done_rx) = mpsc::channel(1);
        Connections {
            stop,
            done_tx,
            done_rx,
        }
    }

    /// Serves one accepted stream on its own task, each request answered by `handle`.
    pub fn serve<S, H, F>(&self, stream: S, handle: H)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let stop = self.stop.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let _done = done;
            let service = service_fn(move |req| {
                let reply = handle(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
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

    /// Waits (after `stop` was cancelled) until every connection closed, or `timeout`.
    pub async fn drain(self, timeout: Duration) {
        let Connections {
            done_tx,
            mut done_rx,
            ..
        } = self;
        drop(done_tx);
        if tokio::time::timeout(timeout, done_rx.recv()).await.is_err() {
            warn!("some API connections did not close within {timeout:?}; leaving them");
        }
    }
}

/// An accept error is mostly "too many open files": wait a little instead of spinning.
pub async fn accept_failed(e: std::io::Error) {
    error!("accepting an API connection failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
