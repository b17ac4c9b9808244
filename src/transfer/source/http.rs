//! DOWNLOAD_URL: a plain HTTP(S) link read with reqwest.
//!
//! Resume asks for `Range: bytes=N-` guarded by `If-Range` (a strong ETag, else
//! Last-Modified), so a changed object comes back whole (200) instead of as a spliced range.
//! A bounded read (`GetOptions::end`, one part of a parallel transfer) asks for
//! `Range: bytes=N-(END-1)`, with the same `If-Range` when it states a version.
//! Redirects are followed here, hop by hop, under [`RedirectRules`]; every link shown in a
//! message goes through [`crate::redact`].

use super::redirect::{self, RedirectRules};
use super::retry::parse_retry_after;
use super::{Body, BoxFuture, GetOptions, GetResult, ObjectMeta, Source, SourceError, Validators};
use crate::error::Code;
use crate::redact;
use bytes::Bytes;
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use reqwest::{StatusCode, Url};
use std::error::Error as _;

pub struct HttpSource {
    client: reqwest::Client,
    url: Url,
    redirects: RedirectRules,
}

impl HttpSource {
    pub fn new(client: reqwest::Client, url: Url, redirects: RedirectRules) -> Self {
        HttpSource {
            client,
            url,
            redirects,
        }
    }

    /// The link with its credentials and query values hidden: they may be signatures.
    fn shown_url(&self) -> String {
        redact::url_parsed(&self.url)
    }

    /// Sends the read to the link and to each redirect it leads to, in turn.
    async fn send(&self, options: &GetOptions) -> Result<reqwest::Response, SourceError> {
        let mut url = self.url.clone();
        let mut hop = 0;
        loop {
            let response = self
                .request(&url, options)
                .send()
                .await
                .map_err(|e| classify(&e, &redact::url_parsed(&url)))?;
            if !redirect::is_redirect(response.status()) {
                return Ok(response);
            }
            hop += 1;
            let location = header_str(response.headers(), LOCATION.as_str());
            url = self
                .redirects
                .next(&url, response.status(), location, hop)?;
        }
    }

    fn request(&self, url: &Url, options: &GetOptions) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .get(url.clone())
            // Byte counts must be of the stored object, never of a transfer encoding.
            .header(ACCEPT_ENCODING, "identity");
        let if_range = options
            .expect
            .as_ref()
            .and_then(|v| v.etag.clone().or_else(|| v.last_modified.clone()));
        if let Some(end) = options.end {
            // A bounded range: one part of a parallel transfer.
            let last = end.saturating_sub(1).max(options.offset);
            request = request.header(RANGE, format!("bytes={}-{last}", options.offset));
            if let Some(validator) = &if_range {
                request = request.header(IF_RANGE, validator);
            }
        } else if options.offset > 0 {
            // Without a validator a range cannot be proven to belong to the same version.
            if let Some(validator) = &if_range {
                request = request
                    .header(RANGE, format!("bytes={}-", options.offset))
                    .header(IF_RANGE, validator);
            }
        } else if options.range_from_start {
            request = request.header(RANGE, "bytes=0-");
        }
        request
    }

    async fn get_inner(&self, options: GetOptions) -> Result<GetResult, SourceError> {
        let response = self.send(&options).await?;
        let status = response.status();
        let headers = response.headers();
        let validators = validators(headers);
        let offset;
        let size;
        let mut range_end = None;
        match status {
            StatusCode::OK => {
                offset = 0;
                size = header_u64(headers, CONTENT_LENGTH.as_str());
            }
            StatusCode::PARTIAL_CONTENT => {
                let (start, end, total) = parse_content_range(headers).ok_or_else(|| {
                    SourceError::permanent(
                        Code::SourceBadContentRange,
                        format!(
                            "{} answered 206 without a usable Content-Range ({:?}); the server's range support is broken",
                            self.shown_url(),
                            header_str(headers, CONTENT_RANGE.as_str()).unwrap_or("none")
                        ),
                    )
                })?;
                let length = header_u64(headers, CONTENT_LENGTH.as_str());
                if length.is_some_and(|l| Some(l) != (end + 1).checked_sub(start)) {
                    // The framing and the range disagree: neither can be trusted.
                    return Err(SourceError::transient(
                        Code::IntegritySizeMismatch,
                        format!(
                            "{} answered bytes {start}-{end} with a Content-Length of {}",
                            self.shown_url(),
                            length.unwrap_or_default()
                        ),
                    ));
                }
                offset = start;
                size = total;
                range_end = Some(end + 1);
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(SourceError::permanent(
                    Code::SourceRangeNotSatisfiable,
                    format!(
                        "{} refused the range from byte {}",
                        self.shown_url(),
                        options.offset
                    ),
                ))
            }
            other => return Err(status_error(other, headers, &self.shown_url())),
        }
        let meta = ObjectMeta {
            size,
            validators,
            ranges: status == StatusCode::PARTIAL_CONTENT,
            encoding: header_str(headers, CONTENT_ENCODING.as_str())
                .map(str::trim)
                .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
                .map(str::to_string),
        };
        Ok(GetResult {
            meta,
            offset,
            end: range_end,
            body: Box::new(HttpBody {
                response,
                shown_url: self.shown_url(),
                received: 0,
            }),
        })
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.shown_url()
    }

    fn get(&self, options: GetOptions) -> BoxFuture<'_, Result<GetResult, SourceError>> {
        Box::pin(self.get_inner(options))
    }
}

struct HttpBody {
    response: reqwest::Response,
    shown_url: String,
    received: u64,
}

impl Body for HttpBody {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, SourceError>> {
        Box::pin(async move {
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    self.received += chunk.len() as u64;
                    Ok(Some(chunk))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    let mut err = classify(&e, &self.shown_url);
                    if is_incomplete_body(&e) {
                        err = SourceError::transient(
                            Code::IntegritySizeMismatch,
                            format!(
                                "{} closed the body after {} bytes, fewer than its Content-Length announced",
                                self.shown_url, self.received
                            ),
                        );
                    }
                    Err(err)
                }
            }
        })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.trim().parse().ok())
}

fn validators(headers: &HeaderMap) -> Validators {
    Validators {
        // A weak ETag (W/"...") is not valid in If-Range and proves nothing about bytes.
        etag: header_str(headers, ETAG.as_str())
            .filter(|e| !e.starts_with("W/"))
            .map(str::to_string),
        last_modified: header_str(headers, LAST_MODIFIED.as_str()).map(str::to_string),
    }
}

/// `bytes START-END/TOTAL` → (START, END, TOTAL if known); END is inclusive.
fn parse_content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let value = header_str(headers, CONTENT_RANGE.as_str())?.trim();
    let rest = value.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some((start, end, total))
}

fn status_error(status: StatusCode, headers: &HeaderMap, url: &str) -> SourceError {
    let code = status.as_u16();
    let text = format!("{url} answered HTTP {status}");
    match code {
        404 | 410 => SourceError::permanent(
            Code::SourceNotFound,
            format!("{text}: check that the link is right and still valid"),
        ),
        401 | 403 => SourceError::permanent(
            Code::SourceAccessDenied,
            format!("{text}: the link needs credentials or has expired"),
        ),
        408 | 429 => {
            let mut err = SourceError::transient(Code::SourceHttp4xx, text);
            err.retry_after = header_str(headers, RETRY_AFTER.as_str()).and_then(parse_retry_after);
            err
        }
        300..=399 => SourceError::permanent(
            Code::SourceRedirectNotAllowed,
            format!("{text}, a redirection ferry cannot follow"),
        ),
        500..=599 => {
            let mut err = SourceError::transient(Code::SourceHttp5xx, text);
            err.retry_after = header_str(headers, RETRY_AFTER.as_str()).and_then(parse_retry_after);
            err
        }
        _ => SourceError::permanent(Code::SourceHttp4xx, text),
    }
}

/// hyper reports a body cut short of its Content-Length as an incomplete message.
pub(super) fn is_incomplete_body(err: &reqwest::Error) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Maps a reqwest failure to a code, deciding once whether it is worth retrying.
pub(super) fn classify(err: &reqwest::Error, url: &str) -> SourceError {
    let mut chain = Vec::new();
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<crate::net::address::AddressNotAllowed>() {
            return SourceError::permanent(Code::NetworkAddressNotAllowed, denied.to_string());
        }
        if let Some(dns) = e.downcast_ref::<crate::net::dns::DnsError>() {
            let message = format!("{url}: {dns}");
            return match dns.transient {
                true => SourceError::transient(dns.code(), message),
                false => SourceError::permanent(dns.code(), message),
            };
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                // A malformed or oversized answer comes back the same on a retry.
                let why = match h.is_parse_too_large() {
                    true => "its response header is larger than ferry accepts (about 400 KiB)",
                    false => "its response is not valid HTTP/1.1",
                };
                return SourceError::permanent(
                    Code::SourceBadResponse,
                    format!("{url} sent an unusable answer: {why} ({h})"),
                );
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return SourceError::transient(
                    Code::NetworkReset,
                    format!("connection to {url} was reset: {io}"),
                );
            }
        }
        chain.push(e.to_string());
        source = e.source();
    }
    let detail = if chain.is_empty() {
        // reqwest's own text names the link in full.
        let text = err.to_string();
        match err.url() {
            Some(link) => text.replace(link.as_str(), &redact::url_parsed(link)),
            None => text,
        }
    } else {
        chain.join(": ")
    };
    let lower = detail.to_lowercase();
    if err.is_timeout() {
        return SourceError::transient(Code::NetworkTimeout, format!("{url} timed out: {detail}"));
    }
    if lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("name or service")
    {
        return SourceError::transient(
            Code::NetworkDns,
            format!("cannot resolve the host of {url}: {detail}"),
        );
    }
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return SourceError::permanent(
            Code::NetworkTls,
            format!("TLS with {url} failed: {detail}"),
        );
    }
    if err.is_connect() {
        return SourceError::transient(
            Code::NetworkConnect,
            format!("cannot connect to {url}: {detail}"),
        );
    }
    SourceError::transient(
        Code::NetworkReset,
        format!("reading from {url} failed: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn content_range_forms() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/1000"),
        );
        assert_eq!(parse_content_range(&h), Some((100, 199, Some(1000))));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 5-9/*"));
        assert_eq!(parse_content_range(&h), Some((5, 9, None)));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes */1000"));
        assert_eq!(parse_content_range(&h), None);
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 10-5/1000"));
        assert_eq!(parse_content_range(&h), None);
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 0-1000/1000"));
        assert_eq!(parse_content_range(&h), None);
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"abc\""));
        assert_eq!(validators(&h).etag, None);
        h.insert(ETAG, HeaderValue::from_static("\"abc\""));
        assert_eq!(validators(&h).etag.as_deref(), Some("\"abc\""));
    }

    #[test]
    fn statuses_classify() {
        let h = HeaderMap::new();
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, &h, "u").code,
            Code::SourceNotFound
        );
        assert!(!status_error(StatusCode::FORBIDDEN, &h, "u").transient);
        assert!(status_error(StatusCode::BAD_GATEWAY, &h, "u").transient);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, &h, "u");
        assert!(e.transient);
        assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(3)));
        assert!(!status_error(StatusCode::BAD_REQUEST, &h, "u").transient);
    }
}
