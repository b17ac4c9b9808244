//! Alibaba's error answer: the HTTP status of each gateway code, the body
//! `{RequestId, HostId, Code, Message}` the SDK reads (`alibabacloud_tea_openapi` client.py:
//! `code = err.get("Code")`, `message = err.get("Message")`, 4xx → `ClientException`, 5xx →
//! `ServerException`), and the RequestId every answer carries.
//!
//! Codes and statuses follow Alibaba's published common error codes for its control-plane
//! OpenAPI gateway (help.aliyun.com/document_detail/48054.html, /434846.html,
//! developer.aliyun.com/ask/278265, /document_detail/51132.html): `SignatureDoesNotMatch`,
//! `SignatureNonceUsed`, `InvalidTimeStamp.Expired` (over 15 minutes apart),
//! `InvalidTimeStamp.Format`, `IncompleteSignature`, `MissingParameter`, `InvalidParameter`,
//! `UnsupportedParameter`, `InvalidVersion`, `Throttling.User`: 400;
//! `InvalidAccessKeyId.NotFound`, `InvalidApi.NotFound`: 404 (the control-plane list, 278265;
//! one page says 400 for the key); `InternalError`: 500.

use crate::controller::model::ApiError;
use crate::error::Code;
use serde::Serialize;

/// The HTTP status Alibaba answers a gateway code with; ferry's own payload codes keep the
/// local API's statuses (`crate::api::status_for`).
pub fn status(code: Code) -> u16 {
    match code {
        Code::OpenApiAccessKeyNotFound | Code::OpenApiApiNotFound => 404,
        Code::OpenApiRequestTooLarge => 413,
        Code::OpenApiInternalError => 500,
        Code::OpenApiMissingParameter
        | Code::OpenApiInvalidParameter
        | Code::OpenApiUnsupportedParameter
        | Code::OpenApiDuplicateInstanceId
        | Code::OpenApiInvalidVersion
        | Code::OpenApiUnsupportedHttpMethod
        | Code::OpenApiIncompleteSignature
        | Code::OpenApiInvalidSignatureMethod
        | Code::OpenApiSignatureDoesNotMatch
        | Code::OpenApiSignatureNonceUsed
        | Code::OpenApiTimeStampExpired
        | Code::OpenApiTimeStampFormat
        | Code::OpenApiThrottling => 400,
        other => crate::api::status_for(other),
    }
}

/// An [`ApiError`] with `code`'s status.
pub fn error(code: Code, message: impl Into<String>) -> ApiError {
    ApiError::new(status(code), code.as_str(), message)
}

/// `MissingParameter`, worded as Alibaba words it.
pub fn missing(name: &str) -> ApiError {
    error(
        Code::OpenApiMissingParameter,
        format!("The input parameter \"{name}\" that is mandatory for processing this request is not supplied."),
    )
}

/// `InvalidParameter` naming the parameter and why.
pub fn invalid(name: &str, why: impl std::fmt::Display) -> ApiError {
    error(
        Code::OpenApiInvalidParameter,
        format!("The specified parameter \"{name}\" is not valid: {why}"),
    )
}

/// The error body.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody<'a> {
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<&'a str>,
    pub code: &'a str,
    pub message: &'a str,
}

/// A RequestId in Alibaba's shape (`425F351C-3F8E-5218-A520-B6311D0D1234`: a UUID in upper
/// case hex), random.
pub fn new_request_id() -> String {
    let n = fastrand::u128(..);
    let h = format!("{n:032X}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_alibabas() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn gateway_codes_get_alibabas_statuses() {
        assert_eq!(status(Code::OpenApiSignatureDoesNotMatch), 400);
        assert_eq!(status(Code::OpenApiAccessKeyNotFound), 404);
        assert_eq!(status(Code::OpenApiInternalError), 500);
        assert_eq!(status(Code::InvalidUploadType), 400);
        assert_eq!(missing("UploadUrl").code, "MissingParameter");
    }
}
