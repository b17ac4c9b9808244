//! AWS Signature Version 4 in header form, for the harness's own requests to moto (IAM, STS
//! and S3 writes): the canonical request, the scope `DAY/REGION/SERVICE/aws4_request`, the
//! derived key and HMAC-SHA256 (from `sha2`; no more dependencies for the tests). ferry itself
//! signs with the AWS SDK, so a mistake here shows as moto refusing the harness, never as a
//! false pass.

#![allow(dead_code)]

use sha2::{Digest, Sha256};

/// The region the harness signs for (moto's default; ferry's default `oss.region` for endpoints
/// that are not Alibaba's).
pub const REGION: &str = "us-east-1";

/// One key pair (with a session token for STS credentials).
#[derive(Clone, Debug)]
pub struct Keys {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

/// What [`sign`] signs.
pub struct SignInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// Percent-encoded path, no query.
    pub path: &'a str,
    /// Further headers to send and sign, names lowercase.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// AWS Signature Version 4 (header form, no query string) for `keys` in [`REGION`]; returns
/// every header to send, `host` included.
pub fn sign(keys: &Keys, service: &str, input: &SignInput<'_>) -> Vec<(String, String)> {
    let stamp = ferry::timefmt::rfc3339(ferry::timefmt::unix_millis_now());
    // 2026-12-02T11:32:37.123Z → 20261202T113237Z
    let amz_date: String = stamp[..19]
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        + "Z";
    let day = &amz_date[..8];
    let payload_hash = hex(&Sha256::digest(input.body));
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), input.host.into()),
        ("x-amz-content-sha256".into(), payload_hash.clone()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    if let Some(token) = &keys.token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    headers.extend(input.headers.iter().cloned());
    headers.sort();
    let signed_names = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(n, v)| format!("{n}:{}\n", v.trim()))
        .collect();
    let canonical = format!(
        "{}\n{}\n\n{canonical_headers}\n{signed_names}\n{payload_hash}",
        input.method, input.path
    );
    let scope = format!("{day}/{REGION}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{}", keys.secret).as_bytes(), day.as_bytes());
    for part in [REGION, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, to_sign.as_bytes()));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
            keys.id
        ),
    ));
    headers
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 percent-encoding of everything but unreserved characters (and `/` if `keep_slash`).
pub fn encode(text: &str, keep_slash: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn encode_path(key: &str) -> String {
    encode(key, true)
}
