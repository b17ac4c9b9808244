//! ACS3 against vectors made by Alibaba's SDK (tests/fixtures/acs3/make_vectors.py).

use super::*;
use crate::controller::ports::BoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Vector {
    name: String,
    method: String,
    pathname: String,
    query: BTreeMap<String, String>,
    wire_query: String,
    headers: BTreeMap<String, String>,
    body: String,
    access_key_id: String,
    access_key_secret: String,
    canonical_query: String,
    canonical_headers: String,
    signed_headers: String,
    authorization: String,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../../tests/fixtures/acs3/vectors.json")).unwrap()
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

struct Keys(&'static str, &'static str);

impl Credentials for Keys {
    fn access_key_secret(&self, id: &str) -> BoxFuture<'_, crate::error::Result<Option<String>>> {
        let found = (id == self.0).then(|| self.1.to_string());
        Box::pin(async move { Ok(found) })
    }
    fn agent_password_hash(&self, _: &str) -> BoxFuture<'_, crate::error::Result<Option<String>>> {
        Box::pin(async { Ok(None) })
    }
    fn agent_password_hashes(&self) -> BoxFuture<'_, crate::error::Result<Vec<(String, String)>>> {
        Box::pin(async { Ok(vec![]) })
    }
    fn agent_bcrypt_hashes(
        &self,
    ) -> BoxFuture<'_, crate::error::Result<crate::controller::ports::BcryptHashes>> {
        Box::pin(async { Ok(vec![]) })
    }
}

#[test]
fn canonical_strings_match_the_sdk() {
    for v in vectors() {
        let query = pairs(&v.query);
        assert_eq!(canonical_query(&query), v.canonical_query, "{}", v.name);
        let (headers, signed) = canonical_headers(&pairs(&v.headers));
        assert_eq!(headers, v.canonical_headers, "{}", v.name);
        assert_eq!(signed, v.signed_headers, "{}", v.name);
        let hash = v.headers["x-acs-content-sha256"].clone();
        assert_eq!(hash, sha256_hex(v.body.as_bytes()), "{}", v.name);
        let canonical = Canonical {
            method: &v.method,
            path: &v.pathname,
            query: &query,
            headers: &pairs(&v.headers),
            payload_hash: &hash,
        };
        assert_eq!(
            canonical.authorization(&v.access_key_id, &v.access_key_secret),
            v.authorization,
            "{}",
            v.name
        );
    }
}

/// The query as it arrives on the wire (darabonba's `urlencode`: `+` for a space) decodes to
/// the parameters the SDK signed.
#[test]
fn the_wire_query_decodes_to_what_was_signed() {
    for v in vectors() {
        let decoded: BTreeMap<String, String> =
            url::form_urlencoded::parse(v.wire_query.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(decoded, v.query, "{}", v.name);
    }
}

fn incoming<'a>(
    v: &'a Vector,
    headers: &'a [(String, String)],
    query: &'a [(String, String)],
) -> Incoming<'a> {
    Incoming {
        method: &v.method,
        path: &v.pathname,
        headers,
        query,
        body: v.body.as_bytes(),
    }
}

fn with_auth(v: &Vector) -> Vec<(String, String)> {
    let mut h = pairs(&v.headers);
    h.push(("authorization".into(), v.authorization.clone()));
    h
}

#[tokio::test]
async fn verify_accepts_sdk_requests_once_and_names_each_failure() {
    let keys = Keys("AKIDEXAMPLE", "s3cr3t/+=");
    let verifier = Verifier::new(100);
    for v in vectors() {
        let now = parse_date(&v.headers["x-acs-date"]).unwrap();
        let query = pairs(&v.query);
        let headers = with_auth(&v);
        // A fresh verifier per vector: they share one nonce.
        let fresh = Verifier::new(100);
        let id = fresh
            .verify(&incoming(&v, &headers, &query), &keys, now)
            .await;
        assert_eq!(id.as_deref(), Ok("AKIDEXAMPLE"), "{}", v.name);
        let again = fresh
            .verify(&incoming(&v, &headers, &query), &keys, now + 60)
            .await;
        assert_eq!(again.unwrap_err().code, "SignatureNonceUsed", "{}", v.name);
    }
    let v = &vectors()[0];
    let now = parse_date(&v.headers["x-acs-date"]).unwrap();
    let query = pairs(&v.query);
    let headers = with_auth(v);
    let code = |r: Result<String, ApiError>| r.unwrap_err().code;

    let late = verifier
        .verify(&incoming(v, &headers, &query), &keys, now + 15 * 60 + 1)
        .await;
    assert_eq!(code(late), "InvalidTimeStamp.Expired");
    let early = verifier
        .verify(&incoming(v, &headers, &query), &keys, now - 20 * 60)
        .await;
    assert_eq!(code(early), "InvalidTimeStamp.Expired");

    let wrong = Keys("AKIDEXAMPLE", "another");
    let bad = verifier
        .verify(&incoming(v, &headers, &query), &wrong, now)
        .await;
    assert_eq!(code(bad.clone()), "SignatureDoesNotMatch");
    assert_eq!(bad.unwrap_err().status, 400);

    let unknown = Keys("SOMEONE-ELSE", "s3cr3t/+=");
    let missing = verifier
        .verify(&incoming(v, &headers, &query), &unknown, now)
        .await;
    let missing = missing.unwrap_err();
    assert_eq!(
        (missing.code.as_str(), missing.status),
        ("InvalidAccessKeyId.NotFound", 404)
    );

    // A parameter changed in flight.
    let mut tampered = query.clone();
    tampered[0].1 = "acp-z".into();
    let r = verifier
        .verify(&incoming(v, &headers, &tampered), &keys, now)
        .await;
    assert_eq!(code(r), "SignatureDoesNotMatch");

    // A body that is not the one hashed.
    let r = verifier
        .verify(
            &Incoming {
                body: b"x",
                ..incoming(v, &headers, &query)
            },
            &keys,
            now,
        )
        .await;
    assert_eq!(code(r), "SignatureDoesNotMatch");

    // An x-acs-* header added without signing it.
    let mut extra = headers.clone();
    extra.push(("x-acs-action".into(), "DescribeTasks".into()));
    let r = verifier
        .verify(&incoming(v, &extra, &query), &keys, now)
        .await;
    assert_eq!(
        code(r),
        "SignatureDoesNotMatch",
        "a second x-acs-action value is signed over"
    );
    let mut unsigned = headers.clone();
    unsigned.push(("x-acs-security-token".into(), "t".into()));
    let r = verifier
        .verify(&incoming(v, &unsigned, &query), &keys, now)
        .await;
    assert_eq!(code(r), "IncompleteSignature");

    let no_auth = pairs(&v.headers);
    let r = verifier
        .verify(&incoming(v, &no_auth, &query), &keys, now)
        .await;
    assert_eq!(code(r), "IncompleteSignature");

    let mut bad_date = headers.clone();
    bad_date.retain(|(n, _)| n != "x-acs-date");
    bad_date.push(("x-acs-date".into(), "Tue, 01 Dec 2026 18:50:22 GMT".into()));
    let r = verifier
        .verify(&incoming(v, &bad_date, &query), &keys, now)
        .await;
    assert_eq!(code(r), "InvalidTimeStamp.Format");

    let mut sm3 = pairs(&v.headers);
    sm3.push((
        "authorization".into(),
        v.authorization.replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3"),
    ));
    let r = verifier
        .verify(&incoming(v, &sm3, &query), &keys, now)
        .await;
    assert_eq!(code(r), "InvalidSignatureMethod");

    // None of the failures above burnt the nonce.
    let ok = verifier
        .verify(&incoming(v, &headers, &query), &keys, now)
        .await;
    assert_eq!(ok.as_deref(), Ok("AKIDEXAMPLE"));
}

#[test]
fn sign_produces_what_verify_accepts() {
    let query = vec![("TaskIds.1".to_string(), "t-1 +/".to_string())];
    let headers = sign(&Signing {
        access_key_id: "AK",
        secret: "SK",
        method: "POST",
        host: "127.0.0.1:1",
        action: "DescribeTasks",
        version: "2023-09-30",
        query: &query,
        body: b"",
        content_type: None,
        date: "2026-12-01T00:00:00Z",
        nonce: "abc",
    });
    let keys = Keys("AK", "SK");
    let req = Incoming {
        method: "POST",
        path: "/",
        headers: &headers,
        query: &query,
        body: b"",
    };
    let now = parse_date("2026-12-01T00:00:00Z").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = rt.block_on(Verifier::new(4).verify(&req, &keys, now));
    assert_eq!(id.as_deref(), Ok("AK"));
}

#[test]
fn dates_parse_strictly() {
    assert_eq!(parse_date("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_date("2000-02-29T00:00:00Z"), Some(951_782_400));
    assert_eq!(parse_date("2026-11-27T22:54:40Z"), Some(1_795_820_080));
    assert_eq!(format_date(1_795_820_080), "2026-11-27T22:54:40Z");
    for bad in [
        "2026-11-27T22:54:40",
        "2026-13-01T00:00:00Z",
        "2026-11-27 22:54:40Z",
        "+026-11-27T22:54:40Z",
        "",
    ] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
}
