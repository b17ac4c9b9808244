//! The controller's operations endpoints, on their own listener (`serve --ops-listen`), apart
//! from the ACS3 API (whose SDKs post to `/` and must see nothing else there):
//!
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 only when the store answers a trivial query, delivery is connected
//!   to its broker and the controller is not draining; else 503 with the reasons, as JSON.
//! - `GET /metrics`: [`metrics`] in the Prometheus text format 0.0.4. The store's counts are
//!   cached for [`COUNTS_TTL`], and concurrent scrapes share one query, so frequent scrapes
//!   never load the database.
//!
//! Unauthenticated by design (as Prometheus scrapes): bind it to an internal address.

pub mod metrics;

use crate::controller::store::{OpsCounts, Store};
use crate::net::connections::{accept_failed, Connections};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use metrics::{ApiCounters, DeliveryCounters, Snapshot};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long the store's counts are reused between scrapes.
pub const COUNTS_TTL: Duration = Duration::from_secs(5);
/// A store that takes longer than this to answer `SELECT 1` is not ready.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints look at.
pub struct Ops {
    store: Arc<dyn Store>,
    /// Delivery's connection state.
    broker: watch::Receiver<bool>,
    /// Set on the first SIGTERM: readiness fails before anything stops.
    draining: AtomicBool,
    pub api: Arc<ApiCounters>,
    pub delivery: Arc<DeliveryCounters>,
    /// The last counts and when they were read; the lock makes concurrent scrapes wait for
    /// one query instead of each running it.
    counts: tokio::sync::Mutex<Option<(Instant, OpsCounts)>>,
}

impl Ops {
    pub fn new(
        store: Arc<dyn Store>,
        broker: watch::Receiver<bool>,
        api: Arc<ApiCounters>,
        delivery: Arc<DeliveryCounters>,
    ) -> Ops {
        Ops {
            store,
            broker,
            draining: AtomicBool::new(false),
            api,
            delivery,
            counts: tokio::sync::Mutex::new(None),
        }
    }

    /// From now on `/readyz` answers 503 (a load balancer stops sending new requests).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready, else every reason it is not.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            reasons.push("draining: the controller is shutting down".to_string());
        }
        if !*self.broker.borrow() {
            reasons.push("delivery is not connected to its broker".to_string());
        }
        match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => reasons.push(format!("the store does not answer: {e}")),
            Err(_) => reasons.push(format!("the store did not answer within {PING_TIMEOUT:?}")),
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The store's counts, at most [`COUNTS_TTL`] old; `None` when the store fails.
    async fn counts(&self) -> Option<OpsCounts> {
        let mut cached = self.counts.lock().await;
        if let Some((at, counts)) = cached.as_ref() {
            if at.elapsed() < COUNTS_TTL {
                return Some(counts.clone());
            }
        }
        match tokio::time::timeout(PING_TIMEOUT, self.store.ops_counts()).await {
            Ok(Ok(counts)) => {
                *cached = Some((Instant::now(), counts.clone()));
                Some(counts)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading task counts for /metrics");
                None
            }
            Err(_) => {
                tracing::warn!("reading task counts for /metrics took over {PING_TIMEOUT:?}");
                None
            }
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.readiness().await {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/json",
                    r#"{"ready":true}"#.to_string() + "\n",
                ),
                Err(reasons) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    serde_json::json!({ "ready": false, "reasons": reasons }).to_string() + "\n",
                ),
            },
            "/metrics" => {
                let ready = self.readiness().await.is_ok();
                let counts = self.counts().await;
                let text = metrics::render(&Snapshot {
                    api: &self.api,
                    delivery: &self.delivery,
                    counts: counts.as_ref(),
                    broker_connected: *self.broker.borrow(),
                    ready,
                });
                reply(StatusCode::OK, crate::prometheus::CONTENT_TYPE, text)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: /healthz, /readyz, /metrics\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>, shutdown: CancellationToken) {
    let handle = move |req| {
        let ops = ops.clone();
        async move { ops.handle(req).await }
    };
    let connections = Connections::new(shutdown.clone());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.serve(stream, handle.clone()),
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop(listener);
    connections.drain(Duration::from_secs(2)).await;
}
