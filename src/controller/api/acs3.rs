//! ACS3-HMAC-SHA256, Alibaba's OpenAPI request signature (V3), exactly as its SDK computes it
//! (`alibabacloud_tea_openapi/utils.py`: `get_canonical_query_string`,
//! `get_canonicalized_headers`, `Utils.get_authorization`):
//!
//! ```text
//! canonical request = METHOD \n PATH \n CANONICAL_QUERY \n CANONICAL_HEADERS \n SIGNED_HEADERS \n x-acs-content-sha256
//! string to sign    = "ACS3-HMAC-SHA256" \n hex(sha256(canonical request))
//! Signature         = hex(HMAC-SHA256(AccessKeySecret, string to sign))
//! ```
//! The canonical query sorts the (decoded) parameters by name, keeps names as they are and
//! percent-encodes values like Python's `quote(v, safe='~')`; canonical headers are the
//! lower-cased signed names, sorted, each `name:value` with values trimmed (several values
//! sorted and joined by `,`). Both sides of the seam live here: [`verify`] for the controller,
//! [`sign`] for ferry's own clients (the operator CLI), so they cannot drift apart.
//! Unit tests check both against vectors made by the SDK itself (tests/fixtures/acs3/).
//!
//! Secrets and signatures are never logged; the signature compare is constant-time
//! (`Mac::verify_slice`).

use super::errors::error;
use super::replay::{Admit, ReplayCache};
use crate::controller::model::ApiError;
use crate::controller::ports::Credentials;
use crate::error::Code;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::sync::Mutex;

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// How far `x-acs-date` may be from the controller's clock (Alibaba: 15 minutes).
pub const WINDOW_SECS: i64 = 15 * 60;

type HmacSha256 = Hmac<Sha256>;

/// Python's `urllib.parse.quote(s, safe='~')`: every byte but `A-Z a-z 0-9 _ . - ~` as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string of decoded `(name, value)` parameters.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let parts: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    parts.join("&")
}

/// Canonical headers and the SignedHeaders list from `(name, value)` pairs (any case; a name
/// may repeat).
pub fn canonical_headers(headers: &[(String, String)]) -> (String, String) {
    let mut by_name: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (name, value) in headers {
        by_name
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.trim());
    }
    let mut canonical = String::new();
    for (name, values) in &mut by_name {
        values.sort_unstable();
        canonical.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let signed: Vec<&str> = by_name.keys().map(String::as_str).collect();
    (canonical, signed.join(";"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The parts the signature covers.
pub struct Canonical<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// The signed headers only.
    pub headers: &'a [(String, String)],
    /// `x-acs-content-sha256`.
    pub payload_hash: &'a str,
}

impl Canonical<'_> {
    pub fn string_to_sign(&self) -> String {
        let (headers, signed) = canonical_headers(self.headers);
        let request = format!(
            "{}\n{}\n{}\n{headers}\n{signed}\n{}",
            self.method,
            self.path,
            canonical_query(self.query),
            self.payload_hash
        );
        format!("{ALGORITHM}\n{}", sha256_hex(request.as_bytes()))
    }

    fn mac(&self, secret: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        mac.update(self.string_to_sign().as_bytes());
        mac
    }

    /// `Authorization` for this request.
    pub fn authorization(&self, access_key_id: &str, secret: &str) -> String {
        let (_, signed) = canonical_headers(self.headers);
        let signature = hex(&self.mac(secret).finalize().into_bytes());
        format!(
            "{ALGORITHM} Credential={access_key_id},SignedHeaders={signed},Signature={signature}"
        )
    }
}

/// What a client (ferry's operator CLI) sends, as the SDK does: every header it signs plus
/// `Authorization`, for an RPC call `POST|GET /?query` with `body`.
pub struct Signing<'a> {
    pub access_key_id: &'a str,
    pub secret: &'a str,
    pub method: &'a str,
    /// `HOST:PORT` as in the URL.
    pub host: &'a str,
    pub action: &'a str,
    pub version: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
    /// Set for a form body (`application/x-www-form-urlencoded`).
    pub content_type: Option<&'a str>,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: &'a str,
    pub nonce: &'a str,
}

/// The request headers for `s`, `Authorization` last.
pub fn sign(s: &Signing<'_>) -> Vec<(String, String)> {
    let payload_hash = sha256_hex(s.body);
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), s.host.into()),
        ("x-acs-version".into(), s.version.into()),
        ("x-acs-action".into(), s.action.into()),
        ("x-acs-date".into(), s.date.into()),
        ("x-acs-signature-nonce".into(), s.nonce.into()),
        ("accept".into(), "application/json".into()),
        ("x-acs-content-sha256".into(), payload_hash.clone()),
    ];
    if let Some(ct) = s.content_type {
        headers.push(("content-type".into(), ct.into()));
    }
    let auth = Canonical {
        method: s.method,
        path: "/",
        query: s.query,
        headers: &headers,
        payload_hash: &payload_hash,
    }
    .authorization(s.access_key_id, s.secret);
    headers.push(("authorization".into(), auth));
    headers
}

/// The `Authorization` header's parts.
struct Authorization<'a> {
    access_key_id: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let incomplete = |why: &str| {
        error(
            Code::OpenApiIncompleteSignature,
            format!("The request signature does not conform to Aliyun standards: {why}"),
        )
    };
    let (algorithm, rest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| incomplete("Authorization has no Credential, SignedHeaders, Signature"))?;
    if algorithm != ALGORITHM {
        return Err(error(
            Code::OpenApiInvalidSignatureMethod,
            format!("Specified signature method is not valid: only {ALGORITHM} is accepted"),
        ));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(incomplete("Authorization has an unknown part")),
        }
    }
    let access_key_id = credential
        .filter(|v| !v.is_empty())
        .ok_or_else(|| incomplete("Authorization has no Credential"))?;
    let signed_headers: Vec<&str> = signed
        .ok_or_else(|| incomplete("Authorization has no SignedHeaders"))?
        .split(';')
        .filter(|h| !h.is_empty())
        .collect();
    let signature = signature.ok_or_else(|| incomplete("Authorization has no Signature"))?;
    Ok(Authorization {
        access_key_id,
        signed_headers,
        signature,
    })
}

/// `x-acs-date` for `unix_secs`: `YYYY-MM-DDTHH:MM:SSZ`, as the SDK writes it.
pub fn format_date(unix_secs: u64) -> String {
    let text = crate::timefmt::rfc3339(unix_secs * 1000);
    format!("{}Z", &text[..19])
}

/// `YYYY-MM-DDTHH:MM:SSZ` (what the SDK sends) to seconds since the epoch.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// The request as the verifier needs it: raw header pairs (lower-case names), the decoded
/// query and the body.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Incoming<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The server side: checks signatures against [`Credentials`] and remembers nonces.
pub struct Verifier {
    replay: Mutex<ReplayCache>,
}

impl Verifier {
    /// `nonce_capacity`: how many nonces the replay cache holds (each kept 2 × 15 minutes);
    /// when full, new requests get `Throttling.User` rather than an open replay window.
    pub fn new(nonce_capacity: usize) -> Self {
        Verifier {
            replay: Mutex::new(ReplayCache::new(nonce_capacity)),
        }
    }

    /// Checks `req`'s signature at `now` (seconds since the epoch); the AccessKeyId on success.
    /// Order: Authorization's shape, the date, the key, the signed headers, the body hash, the
    /// signature, and only then the nonce (a forged request cannot burn a real one).
    pub async fn verify(
        &self,
        req: &Incoming<'_>,
        credentials: &dyn Credentials,
        now: i64,
    ) -> Result<String, ApiError> {
        let incomplete = |why: String| {
            error(
                Code::OpenApiIncompleteSignature,
                format!("The request signature does not conform to Aliyun standards: {why}"),
            )
        };
        let auth = req
            .header("authorization")
            .ok_or_else(|| incomplete("no Authorization header".into()))?;
        let auth = parse_authorization(auth)?;
        let date = req.header("x-acs-date").ok_or_else(|| {
            error(
                Code::OpenApiTimeStampFormat,
                "Specified time stamp or date value is not well formatted: x-acs-date is missing",
            )
        })?;
        let at = parse_date(date).ok_or_else(|| {
            error(
                Code::OpenApiTimeStampFormat,
                format!("Specified time stamp or date value is not well formatted: x-acs-date {date:?} is not YYYY-MM-DDTHH:MM:SSZ"),
            )
        })?;
        if (now - at).abs() > WINDOW_SECS {
            return Err(error(
                Code::OpenApiTimeStampExpired,
                format!("Specified time stamp or date value is expired: x-acs-date {date} is more than 15 minutes from the server's time"),
            ));
        }
        let secret = credentials
            .access_key_secret(auth.access_key_id)
            .await
            .map_err(|e| {
                error(
                    Code::OpenApiInternalError,
                    format!("looking up the AccessKey failed: {}", e.message),
                )
            })?
            .ok_or_else(|| {
                error(
                    Code::OpenApiAccessKeyNotFound,
                    "Specified access key is not found.",
                )
            })?;
        // Every x-acs-* header and host must be signed (Alibaba: all common headers present
        // are signed), so none of them can be changed in flight.
        for (name, _) in req.headers {
            let must = name == "host" || name.starts_with("x-acs-");
            if must && !auth.signed_headers.contains(&name.as_str()) {
                return Err(incomplete(format!("header {name} is not in SignedHeaders")));
            }
        }
        for required in ["x-acs-signature-nonce", "x-acs-content-sha256"] {
            if req.header(required).is_none() {
                return Err(incomplete(format!("no {required} header")));
            }
        }
        let mut signed = Vec::new();
        for name in &auth.signed_headers {
            let lower = name.to_ascii_lowercase();
            let values: Vec<&(String, String)> =
                req.headers.iter().filter(|(n, _)| *n == lower).collect();
            if values.is_empty() {
                return Err(incomplete(format!(
                    "signed header {lower} is not in the request"
                )));
            }
            signed.extend(values.into_iter().cloned());
        }
        let payload_hash = req.header("x-acs-content-sha256").unwrap_or_default();
        let mismatch = |why: &str| {
            error(
                Code::OpenApiSignatureDoesNotMatch,
                format!("Specified signature does not match our calculation: {why}"),
            )
        };
        if !payload_hash.eq_ignore_ascii_case(&sha256_hex(req.body)) {
            return Err(mismatch(
                "x-acs-content-sha256 is not the SHA-256 of the body",
            ));
        }
        let canonical = Canonical {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: &signed,
            payload_hash,
        };
        let given = unhex(auth.signature).ok_or_else(|| mismatch("the Signature is not hex"))?;
        canonical
            .mac(&secret)
            .verify_slice(&given)
            .map_err(|_| mismatch("check the AccessKeySecret and how the request was signed"))?;
        let nonce = req.header("x-acs-signature-nonce").unwrap_or_default();
        if nonce.is_empty() || nonce.len() > 128 {
            return Err(incomplete(
                "x-acs-signature-nonce must be 1 to 128 characters".into(),
            ));
        }
        let admitted =
            self.replay
                .lock()
                .expect("replay cache lock")
                .admit(nonce, now, 2 * WINDOW_SECS);
        match admitted {
            Admit::Fresh => Ok(auth.access_key_id.to_string()),
            Admit::Used => Err(error(
                Code::OpenApiSignatureNonceUsed,
                "Specified signature nonce was used already.",
            )),
            Admit::Full => Err(error(
                Code::OpenApiThrottling,
                "Request was denied due to user flow control: too many requests in 30 minutes for the nonce cache; retry later.",
            )),
        }
    }
}

#[cfg(test)]
#[path = "acs3_tests.rs"]
mod tests;
