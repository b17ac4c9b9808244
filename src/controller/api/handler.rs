//! One request: method and path, the body (bounded), the signature, the parameters, the
//! action and version, then the action; the answer (or Alibaba's error body) with the
//! request's RequestId. Logged with its RequestId, action, AccessKeyId and code — never a
//! secret, a signature or a parameter value.

use super::acs3::{self, Verifier};
use super::errors::{error, missing, new_request_id, status, ErrorBody};
use super::params::Params;
use super::{describe_tasks, send_file, Settings, VERSION};
use crate::controller::model::ApiError;
use crate::controller::ports::{Actions, Credentials};
use crate::error::Code;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use tracing::info;

pub struct Shared {
    settings: Settings,
    actions: Arc<dyn Actions>,
    credentials: Arc<dyn Credentials>,
    verifier: Verifier,
}

/// A success body: the RequestId, then the action's fields.
#[derive(Serialize)]
struct Answer<'a, T: Serialize> {
    #[serde(rename = "RequestId")]
    request_id: &'a str,
    #[serde(flatten)]
    body: T,
}

impl Shared {
    pub fn new(
        settings: Settings,
        actions: Arc<dyn Actions>,
        credentials: Arc<dyn Credentials>,
    ) -> Self {
        let verifier = Verifier::new(settings.nonce_capacity);
        Shared {
            settings,
            actions,
            credentials,
            verifier,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let _in_flight = self.settings.counters.begin();
        let request_id = new_request_id();
        let host = req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut log = Log::default();
        let (code, body) = match self.answer(req, &request_id, &mut log).await {
            Ok(body) => (200, body),
            Err(e) => {
                log.code = Some(e.code.clone());
                let body = ErrorBody {
                    request_id: &request_id,
                    host_id: host.as_deref(),
                    code: &e.code,
                    message: &e.message,
                };
                (e.status, serde_json::to_vec(&body).unwrap_or_default())
            }
        };
        info!(
            request_id = %request_id,
            action = log.action.as_deref().unwrap_or("-"),
            access_key_id = log.access_key_id.as_deref().unwrap_or("-"),
            status = code,
            code = log.code.as_deref().unwrap_or("-"),
            "controller API"
        );
        self.settings.counters.record(
            log.action.as_deref(),
            log.code.as_deref(),
            started.elapsed(),
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json;charset=utf-8"),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(&request_id) {
            headers.insert("x-acs-request-id", v);
        }
        response
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        request_id: &str,
        log: &mut Log,
    ) -> Result<Vec<u8>, ApiError> {
        let (parts, body) = req.into_parts();
        if parts.method != Method::POST && parts.method != Method::GET {
            return Err(error(
                Code::OpenApiUnsupportedHttpMethod,
                format!(
                    "This http method ({}) is not supported: use POST or GET.",
                    parts.method
                ),
            ));
        }
        if parts.uri.path() != "/" {
            return Err(error(
                Code::OpenApiApiNotFound,
                "Specified api is not found, please check your url and method (RPC calls go to /).",
            ));
        }
        let body = self.read_body(&parts, body).await?;
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                error(
                    Code::OpenApiIncompleteSignature,
                    format!("header {name} is not UTF-8"),
                )
            })?;
            headers.push((name.as_str().to_string(), value.to_string()));
        }
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let now = crate::timefmt::unix_millis_now() as i64 / 1000;
        let incoming = acs3::Incoming {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            headers: &headers,
            query: &query,
            body: &body,
        };
        let access_key_id = self
            .verifier
            .verify(&incoming, self.credentials.as_ref(), now)
            .await?;
        log.access_key_id = Some(access_key_id);

        let mut pairs = query;
        if !body.is_empty() {
            let form = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
            if !form {
                return Err(error(
                    Code::OpenApiInvalidParameter,
                    "an RPC request body is a form (application/x-www-form-urlencoded)",
                ));
            }
            pairs.extend(url::form_urlencoded::parse(&body).into_owned());
        }
        let mut params = Params::from_pairs(pairs)?;
        let action = one_of(&parts.headers, "x-acs-action", &mut params, "Action")?;
        log.action = Some(action.clone());
        let version = one_of(&parts.headers, "x-acs-version", &mut params, "Version")?;
        if version != VERSION {
            return Err(error(
                Code::OpenApiInvalidVersion,
                format!("Specified parameter Version is not valid: this endpoint serves {VERSION}, not {version:?}."),
            ));
        }
        // Common RPC parameters that carry nothing here: the answer is always JSON, and one
        // controller is one region.
        params.take("Format");
        params.take("RegionId");
        match action.as_str() {
            send_file::ACTION => {
                let request = send_file::parse(params, request_id)?;
                let body = self.actions.send_file(request).await?;
                encode(request_id, body)
            }
            describe_tasks::ACTION => {
                let query = describe_tasks::parse(params)?;
                let body = self.actions.describe_tasks(query).await?;
                encode(request_id, body)
            }
            "FerryCancelTask" => {
                let task_id = params.required("TaskId")?;
                params.finish("FerryCancelTask")?;
                let body = self.actions.ferry_cancel_task(task_id).await?;
                encode(request_id, body)
            }
            "FerryListInstances" => {
                params.finish("FerryListInstances")?;
                let body = self.actions.ferry_list_instances().await?;
                encode(request_id, body)
            }
            other => Err(error(
                Code::OpenApiApiNotFound,
                format!("Specified api is not found, please check your url and method: {other:?} is not an action of this endpoint (SendFile, DescribeTasks, FerryCancelTask, FerryListInstances)."),
            )),
        }
    }

    async fn read_body(
        &self,
        parts: &hyper::http::request::Parts,
        body: Incoming,
    ) -> Result<Bytes, ApiError> {
        let limit = self.settings.max_body_bytes;
        let too_large = || {
            error(
                Code::OpenApiRequestTooLarge,
                format!("the request body is larger than {limit} bytes"),
            )
        };
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(e) => Err(error(
                Code::OpenApiInvalidParameter,
                format!("reading the request body: {e}"),
            )),
        }
    }
}

#[derive(Default)]
struct Log {
    action: Option<String>,
    access_key_id: Option<String>,
    code: Option<String>,
}

/// The header's value, else the parameter's; both given and different is `InvalidParameter`.
fn one_of(
    headers: &hyper::HeaderMap,
    header: &str,
    params: &mut Params,
    param: &str,
) -> Result<String, ApiError> {
    let from_header = headers.get(header).and_then(|v| v.to_str().ok());
    let from_param = params.take(param);
    match (from_header, from_param) {
        (Some(h), Some(p)) if h != p => Err(super::errors::invalid(
            param,
            format!("{header} says {h:?} but {param} says {p:?}"),
        )),
        (Some(h), _) if !h.is_empty() => Ok(h.to_string()),
        (_, Some(p)) if !p.is_empty() => Ok(p),
        _ => Err(missing(param)),
    }
}

fn encode<T: Serialize>(request_id: &str, body: T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(&Answer { request_id, body }).map_err(|e| {
        ApiError::new(
            status(Code::OpenApiInternalError),
            Code::OpenApiInternalError.as_str(),
            format!("encoding the answer: {e}"),
        )
    })
}
