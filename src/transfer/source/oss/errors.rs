//! S3 failures as ferry's stable codes, with the S3 error code and request id in the message
//! (what OSS support asks for first). The request id is taken from whichever of OSS's
//! `x-oss-request-id`, S3's `x-amz-request-id`, `x-amzn-requestid` (moto, several AWS-style
//! servers) or the XML error body's `<RequestId>` the server sent.

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
            let body = raw.body().bytes().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            let header = |name: &str| raw.headers().get(name);
            let request_id = ["x-oss-request-id", "x-amz-request-id", "x-amzn-requestid"]
                .into_iter()
                .find_map(header)
                .map(str::to_string)
                .or_else(|| xml_element(&body, "RequestId"))
                .filter(|id| plain_token(id));
            // S3 names the bucket's region in the body of AuthorizationHeaderMalformed, and in
            // `x-amz-bucket-region` on answers without a body (HEAD).
            let region = xml_element(&body, "Region")
                .or_else(|| header("x-amz-bucket-region").map(str::to_string))
                .filter(|r| plain_token(r));
            let service = ctx.err();
            service_error(
                status,
                service.code(),
                service.message(),
                &Extra {
                    request_id: request_id.as_deref(),
                    region: region.as_deref(),
                },
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

/// The text of the first `<name>` element of an S3 XML error body (no nesting, no entities:
/// the elements read here hold plain tokens).
fn xml_element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find("</")?;
    let text = body[start..end].trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A request id or region worth quoting: short, of the characters servers use for them (no
/// markup or control characters from a confused server lands in a task's message).
fn plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=+/.:".contains(&b))
}

/// What the answer said besides its code and message.
#[derive(Default)]
struct Extra<'a> {
    request_id: Option<&'a str>,
    /// The region the server expects requests to be signed for, when it names one.
    region: Option<&'a str>,
}

fn service_error(
    status: u16,
    s3_code: Option<&str>,
    message: Option<&str>,
    extra: &Extra<'_>,
    what: &str,
) -> SourceError {
    let mut text = format!("{what}: OSS answered HTTP {status}");
    if let Some(c) = s3_code {
        text.push_str(&format!(" {c}"));
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {m}"));
    }
    if let Some(id) = extra.request_id {
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
        // The request was signed for another region than the bucket's (S3 says so with this
        // code; its body names the expected region).
        ("AuthorizationHeaderMalformed", _) => {
            let hint = match extra.region {
                Some(region) => format!("the request was signed for the wrong region: set `oss.region = \"{region}\"` in the config (the region the server expects)"),
                None => "the request was signed for the wrong region: set `oss.region` in the config to the bucket's region".to_string(),
            };
            permanent(Code::SourceS3Error, &hint)
        }
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
        let none = Extra::default();
        let code =
            |c: Option<&str>, status| service_error(status, c, None, &none, "oss://b/k").code;
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
        assert!(service_error(503, Some("SlowDown"), None, &none, "x").transient);
        assert!(!service_error(403, Some("AccessDenied"), None, &none, "x").transient);
    }

    #[test]
    fn message_names_object_code_and_request_id() {
        let e = service_error(
            404,
            Some("NoSuchKey"),
            Some("The specified key does not exist."),
            &Extra {
                request_id: Some("5F1A2B"),
                region: None,
            },
            "oss://cloudphone-saved-bucket-x/a.apk",
        );
        assert!(e.message.starts_with("oss://cloudphone-saved-bucket-x/a.apk: OSS answered HTTP 404 NoSuchKey: The specified key does not exist. (request id 5F1A2B)"), "{}", e.message);
    }

    /// A service error as the SDK hands it over: `code` parsed, the raw answer kept.
    fn answer(status: u16, code: &str, headers: &[(&str, &str)], body: &str) -> SourceError {
        use aws_sdk_s3::error::ErrorMetadata;
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;
        let mut raw = HttpResponse::new(
            StatusCode::try_from(status).unwrap(),
            SdkBody::from(body.to_string()),
        );
        for (name, value) in headers {
            raw.headers_mut()
                .insert(name.to_string(), value.to_string());
        }
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("a message")
            .build();
        let err = SdkError::service_error(GetObjectError::generic(meta), raw);
        classify(&err, "oss://b/k")
    }

    #[test]
    fn request_id_comes_from_any_of_the_headers_or_the_xml_body() {
        let id = |headers: &[(&str, &str)], body: &str| {
            let e = answer(404, "NoSuchKey", headers, body);
            let start = e.message.find("(request id ").map(|i| i + 12);
            start.map(|i| e.message[i..].split(')').next().unwrap().to_string())
        };
        assert_eq!(id(&[("x-oss-request-id", "OSS1")], ""), Some("OSS1".into()));
        assert_eq!(id(&[("x-amz-request-id", "AMZ1")], ""), Some("AMZ1".into()));
        assert_eq!(
            id(&[("x-amzn-requestid", "MOTO1")], ""),
            Some("MOTO1".into())
        );
        let xml = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><RequestId>BODY1</RequestId></Error>";
        assert_eq!(id(&[], xml), Some("BODY1".into()));
        // A header wins over the body; OSS's own header over S3's.
        assert_eq!(id(&[("x-amzn-requestid", "H")], xml), Some("H".into()));
        assert_eq!(
            id(
                &[("x-amz-request-id", "AMZ"), ("x-oss-request-id", "OSS")],
                ""
            ),
            Some("OSS".into())
        );
        assert_eq!(id(&[], "<Error><Code>NoSuchKey</Code></Error>"), None);
        // Markup or spaces are not an id worth quoting.
        assert_eq!(id(&[], "<RequestId>a <b></RequestId>"), None);
    }

    #[test]
    fn wrong_signing_region_says_to_set_oss_region() {
        // S3's answer to a request signed for us-east-1 sent to a bucket in eu-west-1.
        let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region><RequestId>R1</RequestId></Error>";
        let e = answer(400, "AuthorizationHeaderMalformed", &[], body);
        assert_eq!(e.code, Code::SourceS3Error);
        assert!(!e.transient);
        assert!(
            e.message.contains("(request id R1)")
                && e.message
                    .contains("set `oss.region = \"eu-west-1\"` in the config"),
            "{}",
            e.message
        );
        // No region named (a HEAD has no body, and this one no x-amz-bucket-region either).
        let e = answer(400, "AuthorizationHeaderMalformed", &[], "");
        assert!(
            e.message
                .contains("set `oss.region` in the config to the bucket's region"),
            "{}",
            e.message
        );
        let e = answer(
            400,
            "AuthorizationHeaderMalformed",
            &[("x-amz-bucket-region", "ap-southeast-1")],
            "",
        );
        assert!(
            e.message.contains("`oss.region = \"ap-southeast-1\"`"),
            "{}",
            e.message
        );
    }
}
