//! The SDK's HTTP client is ferry's own reqwest client, so OSS requests get the same Android
//! name resolution, CA roots, link-local policy and timeouts as DOWNLOAD_URL — and no second
//! TLS stack (aws-lc) enters the binary. That client follows no redirect: a signed OSS
//! request carries `Authorization` and `x-amz-security-token`, which must never reach
//! another host, so a 3xx from the endpoint fails as `Source.RedirectNotAllowed`.

use crate::error::Code;
use crate::transfer::source::SourceError;
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
                    let classified = crate::transfer::source::http::classify(&e, &shown);
                    let timeout = e.is_timeout();
                    let boxed = Box::new(Classified(classified));
                    if timeout {
                        ConnectorError::timeout(boxed)
                    } else {
                        ConnectorError::io(boxed)
                    }
                })?;
            if response.status().is_redirection() && response.status().as_u16() != 304 {
                let refused = refuse_redirect(&shown, &response);
                return Err(ConnectorError::other(Box::new(Classified(refused)), None));
            }
            let response: hyper::http::Response<reqwest::Body> = response.into();
            let response = response.map(SdkBody::from_body_1_x);
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The error for a redirect from the OSS endpoint `shown`: it names where the redirect
/// pointed (scheme, host and port only) so a wrong endpoint or region can be spotted.
fn refuse_redirect(shown: &str, response: &reqwest::Response) -> SourceError {
    let target = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|location| match reqwest::Url::parse(location) {
            Ok(url) => format!(
                "{}://{}{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.port().map(|p| format!(":{p}")).unwrap_or_default()
            ),
            Err(_) => "a relative link on the same host".to_string(),
        })
        .unwrap_or_else(|| "no Location".to_string());
    SourceError::permanent(
        Code::SourceRedirectNotAllowed,
        format!(
            "the OSS endpoint {shown} answered HTTP {} redirecting to {target}; ferry follows no redirect from OSS (the signed request and its security token would go with it): set UploadEndpoint to the bucket's own region endpoint",
            response.status()
        ),
    )
}
