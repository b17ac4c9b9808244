//! DOWNLOAD_URL redirects and unusable answers, in-process against real servers on
//! 127.0.0.1: what a redirect target receives (no `Referer`, no credentials of the first
//! link), and the code each refused redirect or answer gets. Addresses the policy refuses
//! (link-local, metadata, and IPv6 forms embedding them) are named only where the policy
//! refuses them before any connection: as literals in a `Location`, or through the phone's
//! hosts file, so no resolver and no connect ever sees them.

mod common;

use common::http_server::{Fault, Resource, TestServer};
use ferry::config::Config;
use ferry::error::{Code, Error};
use ferry::task::payload;
use ferry::task::record::TaskResult;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A secret only a signed link carries; no message and no other server may see it.
const SECRET: &str = "c2VjcmV0LXNpZ25hdHVyZQ";

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: Config,
}

/// A device root, and a system root whose hosts file maps the hostile test names.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dev");
    let system = tmp.path().join("sys");
    std::fs::create_dir_all(system.join("system/etc")).unwrap();
    std::fs::write(
        system.join("system/etc/hosts"),
        "169.254.169.254 metadata.test\n\
         100.100.100.200 aliyun-metadata.test\n\
         64:ff9b::a9fe:a9fe nat64-metadata.test\n\
         2002:a9fe:a9fe::1 sixtofour-metadata.test\n",
    )
    .unwrap();
    let mut config = Config {
        state_dir: tmp.path().join("state"),
        device_root: Some(root.clone()),
        system_root: Some(system),
        ..Config::default()
    };
    config.dns.hosts_files = vec!["/system/etc/hosts".into()];
    config.dns.servers = vec![];
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 100;
    config.retry.max_retries = 4;
    config.retry.budget_secs = 30;
    config.http.read_idle_timeout_secs = 5;
    Fixture {
        _tmp: tmp,
        root,
        config,
    }
}

async fn fetch(fx: &Fixture, url: &str) -> Result<TaskResult, Error> {
    common::fetch_payload(&fx.config, &common::download(url, "f.bin")).await
}

/// The file did not land under its final name, and no staging file is left.
fn assert_nothing_landed(fx: &Fixture) {
    let dir = fx.root.join("sdcard/Download");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

fn assert_no_secret(err: &Error) {
    assert!(!err.message.contains(SECRET), "secret in {err:?}");
}

#[tokio::test]
async fn download_redirect_sends_no_referer_and_no_credentials_to_the_target() {
    let fx = fixture();
    let (first, target) = (TestServer::start().await, TestServer::start().await);
    let data = vec![7u8; 5000];
    target.put("/file.bin", Resource::new(data.clone()));
    first.add_redirect("/signed.bin", &target.url("/file.bin"), 302);
    let port = first.addr().port();
    let link = format!(
        "http://user:{SECRET}@127.0.0.1:{port}/signed.bin?OSSAccessKeyId=LTAI&Signature={SECRET}&security-token={SECRET}"
    );
    let result = fetch(&fx, &link).await.unwrap();
    assert_eq!(result.files[0].size, 5000);
    assert_eq!(
        std::fs::read(fx.root.join("sdcard/Download/f.bin")).unwrap(),
        data
    );
    // The first link's own credentials went to it, and only to it.
    assert!(first.requests("/signed.bin")[0]
        .header("authorization")
        .is_some());
    let seen = target.requests("/file.bin");
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    for name in ["referer", "authorization", "cookie", "x-amz-security-token"] {
        assert_eq!(
            request.header(name),
            None,
            "{name} sent to the redirect target"
        );
    }
    for (name, value) in &request.headers {
        assert!(
            !value.contains(SECRET) && !value.contains("LTAI"),
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn redirect_to_a_non_http_link_is_redirect_not_allowed_naming_the_scheme() {
    let fx = fixture();
    let server = TestServer::start().await;
    for (i, location) in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1:70/_x",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/r{i}");
        server.add_redirect(&path, location, 302);
        let err = fetch(&fx, &server.url(&format!("{path}?Signature={SECRET}")))
            .await
            .unwrap_err();
        assert_eq!(
            err.code,
            Code::SourceRedirectNotAllowed,
            "{location}: {err:?}"
        );
        let scheme = location.split(':').next().unwrap();
        assert!(err.message.contains(&format!("{scheme}: link")), "{err:?}");
        assert_no_secret(&err);
        assert_eq!(server.hits(&path), 1, "a refused redirect is not retried");
    }
    assert_nothing_landed(&fx);
}

#[tokio::test]
async fn redirect_naming_no_host_is_refused_before_any_lookup() {
    let fx = fixture();
    let server = TestServer::start().await;
    // URL parsers read each of these as host `metadata.test`: were the redirect followed, the
    // hosts file would answer 169.254.169.254 and the code would be AddressNotAllowed.
    for (i, location) in [
        "http:///metadata.test/x",
        "http:metadata.test/x",
        "///metadata.test/x",
        "/\\metadata.test/x",
        "http://@/x",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/r{i}");
        server.add_redirect(&path, location, 307);
        let err = fetch(&fx, &server.url(&path)).await.unwrap_err();
        assert_eq!(
            err.code,
            Code::SourceRedirectNotAllowed,
            "{location}: {err:?}"
        );
        assert!(err.message.contains("Location"), "{err:?}");
    }
    assert_nothing_landed(&fx);
}

#[test]
fn download_url_naming_no_host_is_refused_at_intake() {
    for link in [
        "http:///x/f.apk",
        "https:////x/f.apk",
        "http:x/f.apk",
        "http:/x/f.apk",
        "http:\\\\x/f.apk",
        "http:/\t/x/f.apk",
        "http://x\\@metadata.test/f.apk",
    ] {
        let json = serde_json::json!({
            "SourceFilePath": "/sdcard/Download/f.apk",
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": link,
        });
        let err = payload::validate(
            payload::parse(json.to_string().as_bytes()).unwrap(),
            &ferry::config::Config::default().allowed_roots,
        )
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidUploadUrl, "{link:?}: {err:?}");
    }
}

#[tokio::test]
async fn redirect_to_a_refused_address_is_address_not_allowed_by_literal_or_name() {
    let fx = fixture();
    let server = TestServer::start().await;
    let locations = [
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://100.100.100.200/latest/meta-data/".to_string(),
        "http://2852039166/".to_string(),
        "http://[fe80::1]/".to_string(),
        "http://[::ffff:169.254.169.254]/".to_string(),
        "http://[::169.254.169.254]/".to_string(),
        "http://[64:ff9b::a9fe:a9fe]/".to_string(),
        "http://[2002:a9fe:a9fe::1]/".to_string(),
        "http://[2001:0:4136:e378:8000:63bf:5601:5637]/".to_string(),
        // By name: the phone's hosts file answers a refused address; the resolver refuses it.
        "http://metadata.test/latest/meta-data/".to_string(),
        "http://aliyun-metadata.test/".to_string(),
        "http://nat64-metadata.test/".to_string(),
        "http://sixtofour-metadata.test:8080/".to_string(),
    ];
    for (i, location) in locations.iter().enumerate() {
        let path = format!("/r{i}");
        server.add_redirect(&path, location, 302);
        let started = Instant::now();
        let err = fetch(&fx, &server.url(&path)).await.unwrap_err();
        assert_eq!(
            err.code,
            Code::NetworkAddressNotAllowed,
            "{location}: {err:?}"
        );
        assert!(err.message.contains("allow_link_local"), "{err:?}");
        // Refused on the spot: nothing was retried or waited for.
        assert_eq!(server.hits(&path), 1, "{location}");
        assert!(started.elapsed() < Duration::from_secs(2), "{location}");
    }
    // The first link itself, by name as by literal.
    for link in ["http://metadata.test/x", "http://[64:ff9b::a9fe:a9fe]/x"] {
        let err = fetch(&fx, link).await.unwrap_err();
        assert_eq!(err.code, Code::NetworkAddressNotAllowed, "{link}: {err:?}");
    }
    assert_nothing_landed(&fx);
}

#[tokio::test]
async fn huge_response_header_fails_at_once_as_bad_response() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/f.bin", Resource::new(vec![1u8; 1000]));
    server.push_fault("/f.bin", Fault::HugeHeader(1 << 20));
    let err = fetch(&fx, &server.url(&format!("/f.bin?Signature={SECRET}")))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceBadResponse, "{err:?}");
    assert!(err.message.contains("header"), "{err:?}");
    assert_no_secret(&err);
    assert_eq!(server.hits("/f.bin"), 1, "not retried");
    assert_nothing_landed(&fx);
}

#[tokio::test]
async fn other_3xx_answers_are_redirect_not_allowed() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/f.bin", Resource::new(vec![1u8; 10]));
    server.push_fault("/f.bin", Fault::Status(300));
    let err = fetch(&fx, &server.url("/f.bin")).await.unwrap_err();
    assert_eq!(err.code, Code::SourceRedirectNotAllowed, "{err:?}");
    assert!(err.message.contains("HTTP 300"), "{err:?}");
}

#[tokio::test]
async fn redirect_chains_stop_at_max_redirects_without_the_query() {
    let mut fx = fixture();
    fx.config.http.max_redirects = 3;
    let server = TestServer::start().await;
    server.put("/end.bin", Resource::new(vec![3u8; 100]));
    let start = server.redirect_chain("/hop", 4, "/end.bin");
    let err = fetch(&fx, &server.url(&format!("{start}?Signature={SECRET}")))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::SourceTooManyRedirects, "{err:?}");
    assert_no_secret(&err);
    let start = server.redirect_chain("/ok", 3, "/end.bin");
    fetch(&fx, &server.url(&start)).await.unwrap();
}

/// Every failure message of the HTTP source shows the link with its query values hidden:
/// status errors, failures after retries, refused connections, redirects.
#[tokio::test]
async fn failure_messages_never_carry_the_link_query() {
    let fx = fixture();
    let server = TestServer::start().await;
    server.put("/busy.bin", Resource::new(vec![1u8; 10]));
    for _ in 0..8 {
        server.push_fault("/busy.bin", Fault::Status(503));
    }
    server.put("/cut.bin", Resource::new(vec![1u8; 1000]));
    for _ in 0..8 {
        server.push_fault("/cut.bin", Fault::ResetAfter(0));
    }
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let query = format!("?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}&{SECRET}");
    for (link, code) in [
        (server.url("/missing.bin"), Code::SourceNotFound),
        (server.url("/busy.bin"), Code::SourceHttp5xx),
        (server.url("/cut.bin"), Code::NetworkReset),
        (format!("http://127.0.0.1:{closed}/x"), Code::NetworkConnect),
        (
            format!("http://user:{SECRET}@127.0.0.1:{closed}/x"),
            Code::NetworkConnect,
        ),
    ] {
        let err = fetch(&fx, &format!("{link}{query}")).await.unwrap_err();
        assert_eq!(err.code, code, "{link}: {err:?}");
        assert_no_secret(&err);
        assert!(
            err.message.contains("X-Amz-Signature=<redacted>"),
            "{err:?}"
        );
    }
}
