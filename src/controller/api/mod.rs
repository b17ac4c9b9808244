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

use crate::controller::ops::metrics::ApiCounters;
use crate::controller::ports::{Actions, Credentials};
use crate::net::connections::{accept_failed, Connections};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    /// Requests by action and code, latency by action, for `/metrics`.
    pub counters: Arc<ApiCounters>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 1024 * 1024,
            nonce_capacity: 262_144,
            counters: Arc::default(),
        }
    }
}

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
    let handle = move |req| {
        let shared = shared.clone();
        async move { shared.handle(req).await }
    };
    let connections = Connections::new(shutdown.clone());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.serve(stream, handle.clone());
                }
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop(listener);
    connections.drain(DRAIN_TIMEOUT).await;
}
