//! UploadType OSS: objects read through OSS's S3-compatible API with aws-sdk-s3.
//!
//! Requests are virtual-hosted style (`BUCKET.ENDPOINT`; OSS refuses path style), signed with
//! SigV4 for the endpoint's region, without the SDK's default CRC checksums (OSS and several
//! S3-compatible stores reject them, and whole-object CRCs break ranged reads). The SDK's own
//! retries and timeouts are off: the engine owns retry, resume and idle timeouts for every
//! source alike.

mod connector;
mod credentials;
mod endpoint;
mod errors;

pub use endpoint::OssEndpoint;

use super::{Body, BoxFuture, GetOptions, GetResult, ObjectMeta, Source, SourceError, Validators};
use crate::config::OssConfig;
use crate::error::Code;
use crate::task::payload;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::date_time::Format;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use std::error::Error as _;

/// One object found under a folder prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// An S3 client for one task: its endpoint, region and credentials.
#[derive(Clone)]
pub struct OssClient {
    s3: aws_sdk_s3::Client,
}

impl OssClient {
    pub fn new(
        http: reqwest::Client,
        endpoint: &OssEndpoint,
        from_payload: Option<&payload::Credentials>,
        config: &OssConfig,
    ) -> OssClient {
        let (credentials, from) =
            credentials::resolve(from_payload, config, &|k| std::env::var(k).ok());
        tracing::debug!(endpoint = %endpoint.url, region = %endpoint.region, credentials = from, "OSS client");
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&endpoint.url)
            .region(Region::new(endpoint.region.clone()))
            .force_path_style(false)
            .http_client(connector::ReqwestHttpClient::new(http))
            .retry_config(RetryConfig::disabled())
            .timeout_config(TimeoutConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        builder = match credentials {
            Some(c) => builder.credentials_provider(c),
            None => builder.allow_no_auth(),
        };
        OssClient {
            s3: aws_sdk_s3::Client::from_conf(builder.build()),
        }
    }

    pub fn object(&self, bucket: &str, key: &str) -> OssSource {
        OssSource {
            s3: self.s3.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            shown: format!("oss://{bucket}/{key}"),
        }
    }

    /// Every object under `prefix` (ListObjectsV2, paged), refusing more than `max` objects.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        page_size: i32,
        max: usize,
    ) -> Result<Vec<ListedObject>, SourceError> {
        let shown = format!("oss://{bucket}/{prefix}");
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        // A listing of `max` objects takes at most this many pages; a server that keeps
        // answering "truncated" (empty pages, a token it already gave) would loop forever.
        let max_pages = max / page_size.max(1) as usize + 2;
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > max_pages {
                return Err(SourceError::permanent(
                    Code::SourceS3Error,
                    format!("{shown}: the listing did not end after {max_pages} pages of at most {page_size} keys, although oss.max_folder_objects is {max}; the server's paging is broken"),
                ));
            }
            let page = self
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .max_keys(page_size)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| errors::classify(&e, &shown))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(ListedObject {
                    key: key.to_string(),
                    size: object.size().unwrap_or_default().max(0) as u64,
                    etag: object.e_tag().map(str::to_string),
                });
                if objects.len() > max {
                    return Err(SourceError::permanent(
                        Code::SourceTooManyObjects,
                        format!("{shown} holds more than {max} objects (oss.max_folder_objects); send a narrower folder or raise the limit"),
                    ));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => {
                    if !seen_tokens.insert(next.to_string()) {
                        return Err(SourceError::permanent(
                            Code::SourceS3Error,
                            format!("{shown}: the listing gave the same continuation token twice; the server's paging is broken"),
                        ));
                    }
                    token = Some(next.to_string());
                }
                _ => break,
            }
        }
        Ok(objects)
    }
}

/// One OSS object, read whole or by ranges.
pub struct OssSource {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    shown: String,
}

/// The Range header for `offset..end`, none for the whole object unless asked.
fn range_header(options: &GetOptions) -> Option<String> {
    let offset = options.offset;
    match options.end {
        Some(end) => Some(format!("bytes={offset}-{}", end.saturating_sub(1))),
        None if offset > 0 || options.range_from_start => Some(format!("bytes={offset}-")),
        None => None,
    }
}

/// `bytes START-END/TOTAL` → (START, END + 1, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, end + 1, total))
}

impl OssSource {
    async fn get_inner(&self, options: GetOptions) -> Result<GetResult, SourceError> {
        let response = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .set_range(range_header(&options))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let err = errors::classify(&e, &self.shown);
                if err.code == Code::SourceNotFound && self.bucket_missing().await {
                    return Err(SourceError::permanent(
                        Code::SourceNoSuchBucket,
                        format!("{}: bucket {} does not exist at this endpoint; check the bucket name in UploadUrl and that UploadEndpoint is the bucket's region", self.shown, self.bucket),
                    ));
                }
                return Err(err);
            }
        };
        let (offset, end, size, ranges) = match response.content_range() {
            Some(value) => {
                let (start, end, total) = parse_content_range(value).ok_or_else(|| {
                    SourceError::permanent(
                        Code::SourceBadContentRange,
                        format!("{}: unusable Content-Range {value:?}", self.shown),
                    )
                })?;
                (start, Some(end), total, true)
            }
            None => (
                0,
                None,
                response.content_length().map(|l| l.max(0) as u64),
                false,
            ),
        };
        let validators = Validators {
            etag: response
                .e_tag()
                .filter(|e| !e.starts_with("W/"))
                .map(str::to_string),
            last_modified: response
                .last_modified()
                .and_then(|t| t.fmt(Format::HttpDate).ok()),
        };
        Ok(GetResult {
            meta: ObjectMeta {
                size,
                validators,
                ranges,
                encoding: response
                    .content_encoding()
                    .map(str::trim)
                    .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
                    .map(str::to_string),
            },
            offset,
            end,
            body: Box::new(OssBody {
                stream: response.body,
                shown: self.shown.clone(),
                received: 0,
            }),
        })
    }
}

impl OssSource {
    /// Whether a 404 was about the bucket rather than the key. OSS says NoSuchBucket itself;
    /// some S3-compatible stores answer NoSuchKey for both, so ask HeadBucket (a 403 there —
    /// an STS policy scoped to objects — proves nothing and keeps the NotFound).
    async fn bucket_missing(&self) -> bool {
        match self.s3.head_bucket().bucket(&self.bucket).send().await {
            Err(SdkError::ServiceError(ctx)) => ctx.raw().status().as_u16() == 404,
            _ => false,
        }
    }
}

impl Source for OssSource {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn get(&self, options: GetOptions) -> BoxFuture<'_, Result<GetResult, SourceError>> {
        Box::pin(self.get_inner(options))
    }
}

struct OssBody {
    stream: ByteStream,
    shown: String,
    received: u64,
}

impl Body for OssBody {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, SourceError>> {
        Box::pin(async move {
            match self.stream.try_next().await {
                Ok(Some(chunk)) => {
                    self.received += chunk.len() as u64;
                    Ok(Some(chunk))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    let mut source = e.source();
                    while let Some(inner) = source {
                        if let Some(reqwest_err) = inner.downcast_ref::<reqwest::Error>() {
                            if super::http::is_incomplete_body(reqwest_err) {
                                break;
                            }
                            return Err(super::http::classify(reqwest_err, &self.shown));
                        }
                        source = inner.source();
                    }
                    Err(SourceError::transient(
                        Code::IntegritySizeMismatch,
                        format!(
                            "{} stopped after {} bytes of the body: {e}",
                            self.shown, self.received
                        ),
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_content_ranges() {
        let header = |offset, end, range_from_start| {
            range_header(&GetOptions {
                offset,
                end,
                range_from_start,
                ..GetOptions::default()
            })
        };
        assert_eq!(header(0, None, false), None);
        assert_eq!(header(0, None, true).as_deref(), Some("bytes=0-"));
        assert_eq!(header(10, None, false).as_deref(), Some("bytes=10-"));
        assert_eq!(header(0, Some(8), false).as_deref(), Some("bytes=0-7"));
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, 200, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 1, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("bytes 10-5/1000"), None);
        assert_eq!(parse_content_range("bytes 0-1000/1000"), None);
    }
}
