//! The S3 test server itself (`tests/common/s3_server.rs`, s3s-fs), checked with curl's own
//! SigV4 signer so the OSS tests can trust what it serves and how it fails: objects written
//! as files come back with the ETag the harness says, replacing one changes its ETag, ranges
//! work, the request log shows headers, and each failure has the code the OSS tests map.
//! Also pins the quirks ferry has to live with (see the report in each assertion).

#[path = "common/s3_server.rs"]
mod s3_server;

use s3_server::{S3Server, ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, DOMAIN, SECURITY_TOKEN};
use std::process::Command;

/// One signed request with curl; returns (status, headers lowercased, body).
fn curl(
    s3: &S3Server,
    user: (&str, &str),
    bucket: &str,
    path_query: &str,
    extra: &[&str],
) -> (u16, String, String) {
    let host = format!("{bucket}.{DOMAIN}:{}", s3.port());
    let out = Command::new("curl")
        .args(["-sS", "-i", "--aws-sigv4", "aws:amz:us-east-1:s3"])
        .args(["--user", &format!("{}:{}", user.0, user.1)])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(["--resolve", &format!("{host}:127.0.0.1")])
        .args(extra)
        .arg(format!("http://{host}{path_query}"))
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .expect("curl (Debian package curl; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

const OK: (&str, &str) = (ACCESS_KEY_ID, ACCESS_KEY_SECRET);

#[test]
fn objects_written_as_files_are_served_with_their_etag() {
    let s3 = S3Server::start();
    let etag = s3.put_object(BUCKET, "send/sub dir/ü.bin", b"hello world\n");
    assert_eq!(etag, "6f5902ac237024bdd0c176cb93063dc4"); // md5 of the content
    let (status, head, body) = curl(&s3, OK, BUCKET, "/send/sub%20dir/%C3%BC.bin", &[]);
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(body, "hello world\n");
    assert!(head.contains(&format!("etag: \"{etag}\"")), "{head}");
    // No request id of any kind: S3 error messages from s3s-fs cannot carry one.
    assert!(
        !head.contains("x-amz-request-id") && !head.contains("x-oss-request-id"),
        "{head}"
    );

    let new = s3.replace_object(BUCKET, "send/sub dir/ü.bin", b"HELLO WORLD\n");
    let (_, head, body) = curl(
        &s3,
        OK,
        BUCKET,
        "/send/sub%20dir/%C3%BC.bin",
        &[
            "-H",
            "Range: bytes=6-",
            "-H",
            &format!("x-amz-security-token: {SECURITY_TOKEN}"),
        ],
    );
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, "WORLD\n");
    assert!(head.contains(&format!("etag: \"{new}\"")), "{head}");
    assert_eq!(s3.etag(BUCKET, "send/sub dir/ü.bin").unwrap(), new);

    // The request log shows what the client sent, decoded.
    let requests = s3.requests();
    let gets = S3Server::object_gets(&requests, BUCKET, "send/sub dir/ü.bin");
    assert_eq!(gets.len(), 2, "{requests:#?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(gets[1].header("range"), Some("bytes=6-"));
    assert_eq!(gets[1].header("x-amz-security-token"), Some(SECURITY_TOKEN));

    s3.delete_object(BUCKET, "send/sub dir/ü.bin");
    let (status, _, body) = curl(&s3, OK, BUCKET, "/send/sub%20dir/%C3%BC.bin", &[]);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn quirks_ferry_lives_with() {
    let s3 = S3Server::start();
    let etag = s3.put_object(BUCKET, "send/a.bin", b"0123456789");
    // Conditional GETs are ignored: a resumed range with a stale validator still gets 206
    // (with the current ETag), so the client must compare the ETag of every response.
    let (status, head, _) = curl(
        &s3,
        OK,
        BUCKET,
        "/send/a.bin",
        &[
            "-H",
            "Range: bytes=5-",
            "-H",
            "If-Match: \"stale\"",
            "-H",
            "If-Range: \"stale\"",
        ],
    );
    assert_eq!(status, 206, "{head}");
    assert!(head.contains(&etag), "{head}");
    // A GET in a bucket that does not exist says NoSuchKey (real S3/OSS: NoSuchBucket); only
    // listing (and HEAD/GetBucketLocation of the bucket) tells the bucket is missing.
    let missing = "cloudphone-saved-bucket-missing";
    let (status, _, body) = curl(&s3, OK, missing, "/send/a.bin", &[]);
    assert_eq!((status, code(&body)), (404, "NoSuchKey".into()), "{body}");
    let (status, _, body) = curl(&s3, OK, missing, "/?list-type=2&prefix=send%2F", &[]);
    assert_eq!(
        (status, code(&body)),
        (404, "NoSuchBucket".into()),
        "{body}"
    );
    // Listings carry no ETag.
    let (status, _, body) = curl(&s3, OK, BUCKET, "/?list-type=2&prefix=send%2F", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<Key>send/a.bin</Key>") && !body.contains("<ETag>"),
        "{body}"
    );
}

#[test]
fn failures_have_the_codes_the_oss_tests_expect() {
    let s3 = S3Server::start();
    s3.put_object(BUCKET, "send/a.bin", b"x");
    let cases = [
        (
            (ACCESS_KEY_ID, "wrong"),
            "/send/a.bin",
            403,
            "SignatureDoesNotMatch",
        ),
        // Real S3/OSS say InvalidAccessKeyId; s3s-fs says NotSignedUp (same meaning).
        (
            ("NOSUCHKEYID", ACCESS_KEY_SECRET),
            "/send/a.bin",
            403,
            "NotSignedUp",
        ),
        (OK, "/send/missing.bin", 404, "NoSuchKey"),
    ];
    for (user, path, status, expected) in cases {
        let (got, _, body) = curl(&s3, user, BUCKET, path, &[]);
        assert_eq!((got, code(&body)), (status, expected.to_string()), "{body}");
    }
}

/// `<Code>…</Code>` of an S3 error body.
fn code(xml: &str) -> String {
    let start = xml.find("<Code>").map(|i| i + 6).unwrap_or(0);
    let end = xml[start..]
        .find("</Code>")
        .map(|i| start + i)
        .unwrap_or(start);
    xml[start..end].to_string()
}
