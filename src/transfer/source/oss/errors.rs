//! S3 failures as ferry's stable codes, with the S3 error code and request id in the message
//! (what OSS support asks for first).

use super::connector::Classified;
use crate::error::Code;
use crate::transfer::source::SourceError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use std::error::Error as _;

/// Classifies a failed SDK call about `what` (an `oss://` address, for the message).
pub fn classify<E>(err: &SdkError<E, HttpResponse>, what: &str) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let status = raw.status().as_u16();
            let request_id = raw
                .headers()
                .get("x-oss-request-id")
                .or_else(|| raw.headers().get("x-amz-request-id"))
                .map(str::to_string);
            let service = ctx.err();
            service_error(
                status,
                service.code(),
                service.message(),
                request_id.as_deref(),
                what,
            )
        }
        SdkError::TimeoutError(_) => SourceError::transient(
            Code::NetworkTimeout,
            format!("{what}: the request timed out"),
        ),
        SdkError::DispatchFailure(failure) => {
            let mut source = failure.as_connector_error().and_then(|e| e.source());
            while let Some(e) = source {
                if let Some(Classified(classified)) = e.downcast_ref::<Classified>() {
                    return classified.clone();
                }
                source = e.source();
            }
            SourceError::transient(
                Code::NetworkConnect,
                format!("{what}: the request could not be sent: {}", chain(err)),
            )
        }
        SdkError::ResponseError(_) => SourceError::transient(
            Code::SourceHttp5xx,
            format!("{what}: the answer could not be read: {}", chain(err)),
        ),
        _ => SourceError::permanent(
            Code::Internal,
            format!("{what}: the request could not be built: {}", chain(err)),
        ),
    }
}

/// The whole error chain on one line: the SDK's top-level messages alone say little.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

fn service_error(
    status: u16,
    s3_code: Option<&str>,
    message: Option<&str>,
    request_id: Option<&str>,
    what: &str,
) -> SourceError {
    let mut text = format!("{what}: OSS answered HTTP {status}");
    if let Some(c) = s3_code {
        text.push_str(&format!(" {c}"));
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {m}"));
    }
    if let Some(id) = request_id {
        text.push_str(&format!(" (request id {id})"));
    }
    let permanent =
        |code: Code, hint: &str| SourceError::permanent(code, format!("{text}; {hint}"));
    match (s3_code.unwrap_or_default(), status) {
        ("NoSuchBucket", _) => permanent(
            Code::SourceNoSuchBucket,
            "check the bucket name in UploadUrl and that UploadEndpoint is the bucket's region",
        ),
        ("NoSuchKey", _) | ("NotFound", _) | ("", 404) => {
            permanent(Code::SourceNotFound, "check the object path in UploadUrl")
        }
        ("SignatureDoesNotMatch", _) => permanent(
            Code::SourceSignatureDoesNotMatch,
            "the AccessKeySecret does not belong to the AccessKeyId",
        ),
        // S3-compatible servers built on s3s answer an unknown key with S3's NotSignedUp.
        ("InvalidAccessKeyId", _) | ("NotSignedUp", _) => permanent(
            Code::SourceInvalidAccessKeyId,
            "the AccessKeyId is unknown to OSS or disabled",
        ),
        ("ExpiredToken", _)
        | ("SecurityTokenExpired", _)
        | ("TokenRefreshRequired", _)
        | ("InvalidSecurityToken", _)
        | ("InvalidToken", _) => permanent(
            Code::SourceCredentialsExpired,
            "submit the task again with fresh STS credentials; it resumes from the partial data",
        ),
        ("AccessDenied", _) | ("AllAccessDisabled", _) | ("", 401) | ("", 403) => permanent(
            Code::SourceAccessDenied,
            "the credentials may not read this object (or none were given for a private bucket)",
        ),
        ("InvalidRange", _) | (_, 416) => {
            permanent(Code::SourceRangeNotSatisfiable, "range refused")
        }
        ("SlowDown", _) | ("RequestTimeout", _) | (_, 408) | (_, 429) => {
            SourceError::transient(Code::SourceHttp4xx, text)
        }
        (_, 500..=599) => SourceError::transient(Code::SourceHttp5xx, text),
        _ => permanent(Code::SourceS3Error, "see the S3 error code above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_codes_map_to_stable_codes() {
        let code = |c: Option<&str>, status| service_error(status, c, None, None, "oss://b/k").code;
        assert_eq!(code(Some("NoSuchBucket"), 404), Code::SourceNoSuchBucket);
        assert_eq!(code(Some("NoSuchKey"), 404), Code::SourceNotFound);
        assert_eq!(code(None, 404), Code::SourceNotFound);
        assert_eq!(
            code(Some("SignatureDoesNotMatch"), 403),
            Code::SourceSignatureDoesNotMatch
        );
        assert_eq!(
            code(Some("InvalidAccessKeyId"), 403),
            Code::SourceInvalidAccessKeyId
        );
        assert_eq!(
            code(Some("NotSignedUp"), 403),
            Code::SourceInvalidAccessKeyId
        );
        assert_eq!(
            code(Some("SecurityTokenExpired"), 403),
            Code::SourceCredentialsExpired
        );
        assert_eq!(
            code(Some("ExpiredToken"), 400),
            Code::SourceCredentialsExpired
        );
        assert_eq!(code(Some("AccessDenied"), 403), Code::SourceAccessDenied);
        assert_eq!(code(None, 403), Code::SourceAccessDenied);
        assert_eq!(
            code(Some("InvalidRange"), 416),
            Code::SourceRangeNotSatisfiable
        );
        assert_eq!(code(Some("InternalError"), 500), Code::SourceHttp5xx);
        assert_eq!(code(Some("RequestTimeTooSkewed"), 403), Code::SourceS3Error);
        assert!(service_error(503, Some("SlowDown"), None, None, "x").transient);
        assert!(!service_error(403, Some("AccessDenied"), None, None, "x").transient);
    }

    #[test]
    fn message_names_object_code_and_request_id() {
        let e = service_error(
            404,
            Some("NoSuchKey"),
            Some("The specified key does not exist."),
            Some("5F1A2B"),
            "oss://cloudphone-saved-bucket-x/a.apk",
        );
        assert!(e.message.starts_with("oss://cloudphone-saved-bucket-x/a.apk: OSS answered HTTP 404 NoSuchKey: The specified key does not exist. (request id 5F1A2B)"), "{}", e.message);
    }
}
