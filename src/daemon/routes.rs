//! The HTTP API's one dispatch: path and method to a manager call, results to JSON.
//!
//! `/healthz` is open; everything else needs the bearer token. Every failure is answered
//! with `{"ErrorCode","ErrorMsg"}` and the status `api::status_for` gives its code.

use crate::api::{routes, status_for, ErrorBody, Health, TaskList, VERSION};
use crate::daemon::{auth, metrics};
use crate::error::{Code, Error, Result};
use crate::task::manager::Manager;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::{debug, warn};

/// What every connection's handler shares.
pub struct Shared {
    /// Every route is a call on the manager.
    pub manager: Manager,
    /// The bearer token from `STATE_DIR/token`.
    pub token: String,
    /// Set once shutdown began: `/healthz` then answers 503 so probes stop routing here.
    pub stopping: AtomicBool,
}

/// A path the API knows, before its method is checked.
enum Route {
    Health,
    Metrics,
    Tasks,
    Task(String),
    Cancel(String),
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        if path == routes::HEALTH {
            return Some(Route::Health);
        }
        if path == routes::METRICS {
            return Some(Route::Metrics);
        }
        let rest = path.strip_prefix(routes::TASKS)?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Some(Route::Tasks);
        }
        let rest = rest.strip_prefix('/')?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [id] if !id.is_empty() => Some(Route::Task(id.to_string())),
            [id, "cancel"] if !id.is_empty() => Some(Route::Cancel(id.to_string())),
            _ => None,
        }
    }

    fn allowed(&self) -> &'static [Method] {
        match self {
            Route::Health | Route::Metrics => &[Method::GET],
            Route::Tasks => &[Method::GET, Method::POST],
            Route::Task(_) => &[Method::GET, Method::DELETE],
            Route::Cancel(_) => &[Method::POST],
        }
    }
}

type Reply = Response<Full<Bytes>>;

/// Answers one request; never fails (errors become JSON error replies).
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let reply = match dispatch(&shared, req).await {
        Ok(reply) => reply,
        Err(e) => error_reply(&e),
    };
    debug!("{method} {path} -> {}", reply.status().as_u16());
    reply
}

async fn dispatch(shared: &Shared, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let Some(route) = Route::parse(req.uri().path()) else {
        return Err(Error::new(
            Code::ApiBadRequest,
            format!(
                "no route {} {}; the routes are {}",
                req.method(),
                req.uri().path(),
                routes::SUMMARY
            ),
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    if let Route::Health = route {
        // Probes carry no token; a wrong method here reveals nothing either.
        return Ok(if req.method() == Method::GET {
            health(shared)
        } else {
            method_not_allowed(req.method(), req.uri().path(), route.allowed())
        });
    }
    let manager = &shared.manager;
    if !auth::bearer_matches(
        req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes),
        &shared.token,
    ) {
        return Err(auth::unauthorized(&manager.config().state_dir).into());
    }
    if !route.allowed().contains(req.method()) {
        return Ok(method_not_allowed(
            req.method(),
            req.uri().path(),
            route.allowed(),
        ));
    }
    match route {
        Route::Health => Ok(health(shared)),
        Route::Metrics => {
            let text = metrics::render(&manager.metrics());
            let mut reply = Response::new(Full::new(Bytes::from(text)));
            reply.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            Ok(reply)
        }
        Route::Tasks if req.method() == Method::POST => {
            let body = read_body(req, manager.config().max_request_bytes).await?;
            let submitted = manager.submit(&body).await?;
            let status = if submitted.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_reply(status, &submitted.view))
        }
        Route::Tasks => Ok(json_reply(
            StatusCode::OK,
            &TaskList {
                tasks: manager.list(),
            },
        )),
        Route::Task(id) if req.method() == Method::GET => {
            Ok(json_reply(StatusCode::OK, &manager.describe(&id)?))
        }
        Route::Task(id) | Route::Cancel(id) => {
            Ok(json_reply(StatusCode::OK, &manager.cancel(&id).await?))
        }
    }
}

fn health(shared: &Shared) -> Reply {
    if shared.stopping.load(Ordering::SeqCst) {
        let body = Health {
            status: "stopping".into(),
            version: None,
        };
        return json_reply(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let body = Health {
        status: "ok".into(),
        version: Some(VERSION.into()),
    };
    json_reply(StatusCode::OK, &body)
}

/// Reads the body up to `limit` bytes: an announced larger length is refused before any
/// byte is read, and a body that grows past the limit is cut off.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes> {
    let too_large = || {
        Error::new(
            Code::ApiPayloadTooLarge,
            format!("the request body is larger than {limit} bytes (max_request_bytes)"),
        )
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Error::new(
            Code::ApiBadRequest,
            format!("reading the request body: {e}"),
        )),
    }
}

/// An error with the status its code implies, or an explicit one (unknown routes are 404).
struct ApiError {
    error: Error,
    status: Option<StatusCode>,
}

trait WithStatus {
    fn with_status(self, status: StatusCode) -> ApiError;
}

impl WithStatus for Error {
    fn with_status(self, status: StatusCode) -> ApiError {
        ApiError {
            error: self,
            status: Some(status),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError {
            error,
            status: None,
        }
    }
}

fn error_reply(e: &ApiError) -> Reply {
    let status = e.status.unwrap_or_else(|| {
        StatusCode::from_u16(status_for(e.error.code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    });
    if status.is_server_error() {
        warn!("API error {}: {}", status.as_u16(), e.error);
    }
    let mut reply = json_reply(status, &ErrorBody::from(&e.error));
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body stays unread: close rather than drain it for keep-alive.
        reply
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::UNAUTHORIZED {
        reply
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    reply
}

fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Reply {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let err = Error::new(
        Code::ApiBadRequest,
        format!(
            "{method} is not allowed on {path}; use {}",
            names.join(" or ")
        ),
    );
    let mut reply = error_reply(&err.with_status(StatusCode::METHOD_NOT_ALLOWED));
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        reply.headers_mut().insert(ALLOW, v);
    }
    reply
}

fn json_reply<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let (status, mut body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"ErrorCode\":\"Internal\",\"ErrorMsg\":\"encoding the reply: {e}\"}}")
                .into_bytes(),
        ),
    };
    body.push(b'\n');
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert!(matches!(Route::parse("/healthz"), Some(Route::Health)));
        assert!(matches!(Route::parse("/v1/tasks"), Some(Route::Tasks)));
        assert!(matches!(Route::parse("/v1/tasks/"), Some(Route::Tasks)));
        assert!(matches!(Route::parse("/v1/tasks/t-1"), Some(Route::Task(id)) if id == "t-1"));
        assert!(
            matches!(Route::parse("/v1/tasks/t-1/cancel"), Some(Route::Cancel(id)) if id == "t-1")
        );
        assert!(Route::parse("/v1/tasks/t-1/x").is_none());
        assert!(Route::parse("/v1/tasksx").is_none());
        assert!(Route::parse("/").is_none());
    }
}
