//! The SDK's HTTP client is ferry's own reqwest client, so OSS requests get the same Android
//! name resolution, CA roots, link-local policy and timeouts as DOWNLOAD_URL — and no second
//! TLS stack (aws-lc) enters the binary.

use crate::source::SourceError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use std::fmt;

#[derive(Clone)]
pub struct ReqwestHttpClient {
    client: reqwest::Client,
}

impl ReqwestHttpClient {
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestHttpClient { client }
    }
}

impl fmt::Debug for ReqwestHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReqwestHttpClient")
    }
}

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // Timeouts are the reqwest client's (connect) and the engine's (idle reads).
        SharedHttpConnector::new(self.clone())
    }
}

/// A request failure already classified the way the HTTP source classifies it; the OSS error
/// mapping finds it again in the SDK's error chain.
#[derive(Debug)]
pub struct Classified(pub SourceError);

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Classified {}

impl HttpConnector for ReqwestHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            // ferry only reads from OSS: every request body is empty or in memory.
            let bytes = body
                .bytes()
                .map(bytes::Bytes::copy_from_slice)
                .ok_or_else(|| {
                    ConnectorError::user("streaming request bodies are not supported".into())
                })?;
            let url = reqwest::Url::parse(&parts.uri.to_string())
                .map_err(|e| ConnectorError::user(e.into()))?;
            let shown = format!(
                "{}://{}{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port().map(|p| format!(":{p}")).unwrap_or_default()
            );
            let response = client
                .request(parts.method, url)
                .headers(parts.headers)
                .body(bytes)
                .send()
                .await
                .map_err(|e| {
                    let classified = crate::source::http::classify(&e, &shown);
                    let timeout = e.is_timeout();
                    let boxed = Box::new(Classified(classified));
                    if timeout {
                        ConnectorError::timeout(boxed)
                    } else {
                        ConnectorError::io(boxed)
                    }
                })?;
            let response: hyper::http::Response<reqwest::Body> = response.into();
            let response = response.map(SdkBody::from_body_1_x);
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}
