//! Checks that the fault-injecting test server does what other tests rely
//! on: correct ranges and validators when honest, and each fault visible to a
//! real client (reqwest) when not.

#[path = "common/http_server.rs"]
mod http_server;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http_server::{Fault, Resource, TestServer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deterministic, non-repeating test bytes.
fn body(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn serve(path: &str, len: usize) -> (TestServer, Vec<u8>) {
    let server = TestServer::start().await;
    let data = body(len);
    server.put(path, Resource::new(data.clone()));
    (server, data)
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("response head")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn full_get_returns_body_and_validators() {
    let (server, data) = serve("/f", 100_000).await;
    let resp = get(&server.url("/f"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "accept-ranges"), Some("bytes"));
    assert!(header(&resp, "etag").unwrap().starts_with("\"v1-100000-"));
    assert!(header(&resp, "last-modified").unwrap().ends_with("GMT"));
    let got = resp.bytes().await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    assert_eq!(server.hits("/f"), 1);
}

#[tokio::test]
async fn head_reports_length_without_body() {
    let (server, _) = serve("/f", 1234).await;
    let resp = reqwest::Client::new()
        .head(server.url("/f"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), Some("1234"));
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_eq!(server.requests("/f")[0].method, "HEAD");
}

#[tokio::test]
async fn ranges_return_206_with_content_range() {
    let (server, data) = serve("/f", 1000).await;
    let resp = get(&server.url("/f"), &[("Range", "bytes=100-")]).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), Some("bytes 100-999/1000"));
    assert_eq!(resp.bytes().await.unwrap(), data[100..]);
    let resp = get(&server.url("/f"), &[("Range", "bytes=10-19")]).await;
    assert_eq!(header(&resp, "content-range"), Some("bytes 10-19/1000"));
    assert_eq!(resp.bytes().await.unwrap(), data[10..20]);
}

#[tokio::test]
async fn range_past_end_is_416() {
    let (server, _) = serve("/f", 1000).await;
    let resp = get(&server.url("/f"), &[("Range", "bytes=1000-")]).await;
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "content-range"), Some("bytes */1000"));
}

#[tokio::test]
async fn if_range_applies_range_only_when_validator_matches() {
    let (server, _) = serve("/f", 1000).await;
    let first = get(&server.url("/f"), &[]).await;
    let etag = header(&first, "etag").unwrap().to_owned();
    let date = header(&first, "last-modified").unwrap().to_owned();
    for validator in [etag.as_str(), date.as_str()] {
        let resp = get(
            &server.url("/f"),
            &[("Range", "bytes=500-"), ("If-Range", validator)],
        )
        .await;
        assert_eq!(resp.status(), 206, "If-Range: {validator}");
    }
    server.replace("/f", Resource::new(body(999)));
    let resp = get(
        &server.url("/f"),
        &[("Range", "bytes=500-"), ("If-Range", &etag)],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_ne!(header(&resp, "etag"), Some(etag.as_str()));
    assert_eq!(resp.bytes().await.unwrap().len(), 999);
}

#[tokio::test]
async fn lying_server_applies_range_despite_stale_if_range() {
    let server = TestServer::start().await;
    server.put("/f", Resource::new(body(1000)).ignore_if_range());
    let resp = get(
        &server.url("/f"),
        &[("Range", "bytes=500-"), ("If-Range", "\"old\"")],
    )
    .await;
    assert_eq!(resp.status(), 206);
}

#[tokio::test]
async fn no_range_resource_ignores_range() {
    let server = TestServer::start().await;
    server.put("/f", Resource::new(body(1000)).no_range().etag(None));
    let resp = get(&server.url("/f"), &[("Range", "bytes=100-")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "accept-ranges"), None);
    assert_eq!(header(&resp, "etag"), None);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn unknown_path_is_404_and_post_is_405() {
    let server = TestServer::start().await;
    assert_eq!(get(&server.url("/nope"), &[]).await.status(), 404);
    let resp = reqwest::Client::new()
        .post(server.url("/nope"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let methods: Vec<String> = server
        .requests("/nope")
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["GET", "POST"]);
}

#[tokio::test]
async fn status_faults_are_consumed_one_per_get() {
    let (server, _) = serve("/f", 10).await;
    server.push_fault("/f", Fault::Status(503));
    server.push_fault("/f", Fault::Status(408));
    assert_eq!(get(&server.url("/f"), &[]).await.status(), 503);
    assert_eq!(get(&server.url("/f"), &[]).await.status(), 408);
    assert_eq!(get(&server.url("/f"), &[]).await.status(), 200);
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let (server, _) = serve("/f", 10).await;
    server.push_fault(
        "/f",
        Fault::TooManyRequests {
            retry_after: "2".into(),
        },
    );
    let resp = get(&server.url("/f"), &[]).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("2"));
}

#[tokio::test]
async fn truncate_reset_and_wrong_length_break_the_body() {
    let (server, _) = serve("/f", 100_000).await;
    let faults = [
        Fault::TruncateAfter(1000),
        Fault::ResetAfter(1000),
        Fault::WrongContentLength { declared: 200_000 },
    ];
    for fault in faults {
        server.push_fault("/f", fault.clone());
        let resp = get(&server.url("/f"), &[]).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.bytes().await.is_err(), "{fault:?} went unnoticed");
    }
    assert_eq!(
        get(&server.url("/f"), &[])
            .await
            .bytes()
            .await
            .unwrap()
            .len(),
        100_000
    );
}

#[tokio::test]
async fn redirects_are_followed() {
    let (server, data) = serve("/f", 100).await;
    server.push_fault(
        "/a",
        Fault::Redirect {
            location: "/f".into(),
            status: 307,
        },
    );
    assert_eq!(
        get(&server.url("/a"), &[]).await.bytes().await.unwrap(),
        data
    );
    let first = server.redirect_chain("/r", 3, "/f");
    let resp = get(&server.url(&first), &[]).await;
    assert_eq!(resp.url().path(), "/f");
    assert_eq!(
        server.hits("/r/0") + server.hits("/r/1") + server.hits("/r/2"),
        3
    );
    assert_eq!(server.hits("/f"), 2);
}

#[tokio::test]
async fn stall_pauses_mid_body() {
    let (server, data) = serve("/f", 10_000).await;
    server.push_fault("/f", Fault::Stall(Duration::from_millis(300)));
    let started = Instant::now();
    let got = get(&server.url("/f"), &[]).await.bytes().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(got, data);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_roughly_honoured() {
    let (server, data) = serve("/f", 256 * 1024).await;
    server.set_rate("/f", Some(128 * 1024));
    let started = Instant::now();
    let got = get(&server.url("/f"), &[]).await.bytes().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(got, data);
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2800), "{elapsed:?}");
}

#[tokio::test]
async fn request_log_records_range_headers() {
    let (server, _) = serve("/f", 1000).await;
    let _ = get(
        &server.url("/f?x=1"),
        &[("Range", "bytes=5-"), ("If-Range", "\"e\"")],
    )
    .await;
    let log = server.requests("/f");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, "/f?x=1");
    assert_eq!(log[0].header("RANGE"), Some("bytes=5-"));
    assert_eq!(log[0].header("if-range"), Some("\"e\""));
}

/// Reads one response with a Content-Length body; returns (head, body).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let len_line = head
        .lines()
        .find(|l| l.starts_with("Content-Length:"))
        .unwrap();
    let mut body = vec![0; len_line[15..].trim().parse().unwrap()];
    stream.read_exact(&mut body).await.unwrap();
    (head, body)
}

#[tokio::test]
async fn keep_alive_then_connection_close() {
    let (server, _) = serve("/f", 50).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body.len(), 50);
    stream
        .write_all(b"GET /f HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(
        stream.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "server must close"
    );
    assert_eq!(server.hits("/f"), 2);
}

/// Reads the head and `n` body bytes, then returns how the stream ended.
async fn end_after(server: &TestServer, n: usize) -> std::io::Result<usize> {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"GET /f HTTP/1.1\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        raw.push(byte[0]);
    }
    stream.read_exact(&mut vec![0; n]).await.unwrap();
    stream.read(&mut [0u8; 1]).await
}

#[tokio::test]
async fn truncate_ends_with_fin_and_reset_with_rst() {
    let (server, _) = serve("/f", 100_000).await;
    server.push_fault("/f", Fault::TruncateAfter(700));
    assert_eq!(end_after(&server, 700).await.unwrap(), 0);
    server.push_fault("/f", Fault::ResetAfter(700));
    let err = end_after(&server, 700).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let server = TestServer::start().await;
    let addr = server.addr();
    drop(server);
    for _ in 0..40 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server still accepting after drop");
}

#[test]
fn blocking_server_serves_sync_clients_and_stops_on_drop() {
    let server = TestServer::start_blocking();
    server.put("/f", Resource::new(body(300)));
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .write_all(b"GET /f HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200 "));
    assert!(raw.ends_with(&body(300)));
    let addr = server.addr();
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
}
