//! Intake: the SendFile task payload as the control plane sends it, and its validation.
//!
//! Field names are the cloud API's. Every rule of the API text is checked here, before a
//! task exists, and each violation has its own stable code so the control plane can tell
//! a caller exactly which parameter to fix.

use crate::error::{Code, Error, Result};
use crate::paths::{check_final_name, DevicePath};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The bucket prefix the API requires for OSS sources.
pub const BUCKET_PREFIX: &str = "cloudphone-saved-bucket-";
const MAX_URL_LEN: usize = 8 * 1024;
const MAX_TASK_ID_LEN: usize = 64;
const MAX_CLIENT_TOKEN_LEN: usize = 100;

/// Keys of the SendFile request that a control plane may forward verbatim; they carry no
/// meaning for one phone and are ignored rather than refused.
const ENVELOPE_KEYS: &[&str] = &["AndroidInstanceIdList", "AndroidInstanceId", "RequestId"];

/// STS credentials for OSS sources. Never logged or returned by the API (see `redacted`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The per-instance task payload (SendFile's fields plus what the control plane adds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    pub source_file_path: String,
    pub upload_type: String,
    pub upload_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_file_name: Option<String>,
    #[serde(default)]
    pub auto_install: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_md5: Option<String>,
    /// OSS_BRIDGED: the control plane's OSS copy of the public link (`oss://BUCKET/KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridged_object: Option<String>,
}

impl TaskPayload {
    /// The payload with secrets replaced, for the API, the CLI and logs: the Credentials'
    /// secret and token, and every query value and user part of the links (a signed link
    /// carries `Signature=`, `security-token=` there). The journal keeps the real payload.
    pub fn redacted(&self) -> TaskPayload {
        let mut copy = self.clone();
        if let Some(c) = &mut copy.credentials {
            c.access_key_secret = "<redacted>".into();
            if c.security_token.is_some() {
                c.security_token = Some("<redacted>".into());
            }
        }
        copy.upload_url = crate::redact::url(&copy.upload_url);
        copy.bridged_object = copy.bridged_object.as_deref().map(crate::redact::url);
        copy
    }
}

/// Which kind of source a validated payload names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadType {
    Oss,
    DownloadUrl,
    OssBridged,
}

/// An `oss://BUCKET/KEY` location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OssObject {
    pub bucket: String,
    /// Ends in `/` when the whole folder is meant.
    pub key: String,
}

impl OssObject {
    pub fn is_folder(&self) -> bool {
        self.key.ends_with('/')
    }
}

/// What the payload asks for, after every rule was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Fetch `url` into the file `target`.
    Download { url: Url, target: DevicePath },
    /// Fetch an OSS object or folder into `folder` (renamed to `rename` when given).
    Oss {
        object: OssObject,
        endpoint: String,
        folder: DevicePath,
        rename: Option<String>,
    },
    /// Fetch the OSS copy of a public link into `folder`.
    OssBridged {
        public_url: Url,
        object: Option<OssObject>,
        endpoint: String,
        folder: DevicePath,
        rename: Option<String>,
    },
}

/// A payload that passed intake.
#[derive(Clone, Debug)]
pub struct ValidTask {
    pub payload: TaskPayload,
    pub plan: Plan,
    pub md5: Option<[u8; 16]>,
    /// Remarks for the task result (ignored fields and the like).
    pub notes: Vec<String>,
}

fn invalid(code: Code, message: impl Into<String>) -> Error {
    Error::new(code, message)
}

/// Parses raw JSON into a payload, with a precise code for each malformed field.
pub fn parse(json: &[u8]) -> Result<TaskPayload> {
    let json::UniqueKeys(value) = serde_json::from_slice(json).map_err(|e| {
        invalid(
            Code::InvalidPayload,
            format!("the task payload is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(invalid(
            Code::InvalidPayload,
            "the task payload must be a JSON object with SendFile's fields",
        ));
    };
    from_map(map)
}

fn from_map(mut map: Map<String, Value>) -> Result<TaskPayload> {
    const KNOWN: &[&str] = &[
        "TaskId",
        "ClientToken",
        "SourceFilePath",
        "UploadType",
        "UploadUrl",
        "UploadEndpoint",
        "TargetFileName",
        "AutoInstall",
        "Credentials",
        "FileMd5",
        "BridgedObject",
    ];
    for key in map.keys() {
        if !KNOWN.contains(&key.as_str()) && !ENVELOPE_KEYS.contains(&key.as_str()) {
            return Err(invalid(
                Code::InvalidUnknownField,
                format!(
                    "unknown field {key:?}; the fields are {} (names are case-sensitive)",
                    KNOWN.join(", ")
                ),
            ));
        }
    }
    let auto_install = match map.remove("AutoInstall") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        // Query-string style APIs send booleans as text.
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        Some(other) => {
            return Err(invalid(
                Code::InvalidAutoInstall,
                // Only the JSON type: a misplaced value may be a signed link or a secret.
                format!(
                    "AutoInstall must be true or false, not {}",
                    json_type(&other)
                ),
            ));
        }
    };
    let credentials = match map.remove("Credentials") {
        None | Some(Value::Null) => None,
        // Only an object: serde would also take a positional array, and its error text
        // quotes the offending value, which may be the secret itself.
        Some(v @ Value::Object(_)) => Some(serde_json::from_value::<Credentials>(v).map_err(|_| {
            invalid(
                Code::InvalidCredentials,
                "Credentials must be an object with string fields AccessKeyId, AccessKeySecret and optionally SecurityToken, and no other field",
            )
        })?),
        Some(_) => {
            return Err(invalid(
                Code::InvalidCredentials,
                "Credentials must be an object with string fields AccessKeyId, AccessKeySecret and optionally SecurityToken",
            ))
        }
    };
    let mut text = |name: &str, code: Code| -> Result<Option<String>> {
        match map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(
                code,
                format!("{name} must be a string, not {}", json_type(&other)),
            )),
        }
    };
    let required = |v: Option<String>, name: &str, code: Code| {
        v.ok_or_else(|| invalid(code, format!("{name} is required")))
    };
    Ok(TaskPayload {
        task_id: text("TaskId", Code::InvalidTaskId)?,
        client_token: text("ClientToken", Code::InvalidClientToken)?,
        source_file_path: required(
            text("SourceFilePath", Code::InvalidSourceFilePath)?,
            "SourceFilePath",
            Code::InvalidSourceFilePath,
        )?,
        upload_type: required(
            text("UploadType", Code::InvalidUploadType)?,
            "UploadType (OSS, DOWNLOAD_URL or OSS_BRIDGED)",
            Code::InvalidUploadType,
        )?,
        upload_url: required(
            text("UploadUrl", Code::InvalidUploadUrl)?,
            "UploadUrl",
            Code::InvalidUploadUrl,
        )?,
        upload_endpoint: text("UploadEndpoint", Code::InvalidUploadEndpoint)?,
        target_file_name: text("TargetFileName", Code::InvalidTargetFileName)?,
        auto_install,
        credentials,
        file_md5: text("FileMd5", Code::InvalidFileMd5)?,
        bridged_object: text("BridgedObject", Code::InvalidUploadUrl)?,
    })
}

/// Checks every rule of the API on a parsed payload, and that its target lies strictly inside
/// one of `allowed_roots` (the configuration's), so a path that could never be written is
/// refused now rather than failing once the task runs.
pub fn validate(payload: TaskPayload, allowed_roots: &[String]) -> Result<ValidTask> {
    let task = check_rules(payload)?;
    check_roots(&task, allowed_roots)?;
    Ok(task)
}

/// The target must be inside an allowed root: a DOWNLOAD_URL file strictly inside (the root
/// itself is a folder), an OSS folder inside or at the root (its files land strictly inside).
fn check_roots(task: &ValidTask, allowed_roots: &[String]) -> Result<()> {
    let (path, strictly) = match &task.plan {
        Plan::Download { target, .. } => (target, true),
        Plan::Oss { folder, .. } | Plan::OssBridged { folder, .. } => (folder, false),
    };
    let roots: Vec<DevicePath> = allowed_roots
        .iter()
        .filter_map(|r| DevicePath::parse(r).ok())
        .collect();
    let inside = roots.iter().any(|root| {
        path.starts_with(root) && (!strictly || path.components().len() > root.components().len())
    });
    if inside {
        return Ok(());
    }
    Err(invalid(
        Code::InvalidSourceFilePath,
        format!(
            "SourceFilePath {path} is not inside the allowed roots ({}); choose a {} under one of them, such as /sdcard/Download/{}",
            allowed_roots.join(", "),
            if strictly { "file" } else { "folder" },
            if strictly { "MyFile.txt" } else { "" },
        ),
    ))
}

/// Checks a payload read back from the journal with the same rules as intake (except the
/// allowed roots, which the configuration may have changed since; a run checks them again).
pub fn check_stored(payload: &TaskPayload) -> Result<()> {
    check_rules(payload.clone()).map(|_| ())
}

/// Every rule of the API text that needs no configuration.
fn check_rules(payload: TaskPayload) -> Result<ValidTask> {
    if let Some(id) = &payload.task_id {
        check_task_id(id)?;
    }
    if let Some(token) = &payload.client_token {
        if token.is_empty()
            || token.len() > MAX_CLIENT_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                Code::InvalidClientToken,
                format!(
                    "ClientToken must be 1 to {MAX_CLIENT_TOKEN_LEN} printable ASCII characters"
                ),
            ));
        }
    }
    let upload_type = match payload.upload_type.as_str() {
        "OSS" => UploadType::Oss,
        // The API text spells it DOWNLOAD in one place; both mean the same.
        "DOWNLOAD_URL" | "DOWNLOAD" => UploadType::DownloadUrl,
        "OSS_BRIDGED" => UploadType::OssBridged,
        other => {
            return Err(invalid(
                Code::InvalidUploadType,
                format!("UploadType {other:?} is not one of OSS, DOWNLOAD_URL, OSS_BRIDGED"),
            ))
        }
    };
    let rename = match payload.target_file_name.as_deref() {
        None | Some("") => None,
        Some(name) => {
            check_final_name(name).map_err(|why| {
                invalid(
                    Code::InvalidTargetFileName,
                    format!("TargetFileName {name:?} must be a plain file name: {why}"),
                )
            })?;
            Some(name.to_string())
        }
    };
    let md5 = payload.file_md5.as_deref().map(parse_md5).transpose()?;
    if let Some(c) = &payload.credentials {
        if c.access_key_id.is_empty() || c.access_key_secret.is_empty() {
            return Err(invalid(
                Code::InvalidCredentials,
                "Credentials need a non-empty AccessKeyId and AccessKeySecret",
            ));
        }
    }
    let mut notes = Vec::new();
    let plan = match upload_type {
        UploadType::DownloadUrl => {
            let target = parse_source_path(&payload.source_file_path)?;
            if payload.source_file_path.ends_with('/') || target.file_name().is_none() {
                return Err(invalid(
                    Code::InvalidSourceFilePath,
                    format!(
                        "SourceFilePath {:?} must be a file path for DOWNLOAD_URL, such as /sdcard/Download/MyFile.txt",
                        payload.source_file_path
                    ),
                ));
            }
            if rename.is_some() {
                notes.push("TargetFileName has no effect for DOWNLOAD_URL: the file is saved at SourceFilePath".to_string());
            }
            if payload.upload_endpoint.is_some() {
                notes.push("UploadEndpoint has no effect for DOWNLOAD_URL".to_string());
            }
            Plan::Download {
                url: parse_http_url(&payload.upload_url, "UploadUrl")?,
                target,
            }
        }
        UploadType::Oss | UploadType::OssBridged => {
            let folder = parse_source_path(&payload.source_file_path)?;
            let endpoint = parse_endpoint(payload.upload_endpoint.as_deref())?;
            if upload_type == UploadType::Oss {
                let object = parse_oss_url(&payload.upload_url, "UploadUrl")?;
                let key_name = object.key.rsplit('/').next().unwrap_or_default();
                if rename.is_none() && crate::paths::is_reserved(key_name) {
                    return Err(invalid(
                        Code::InvalidUploadUrl,
                        format!(
                            "UploadUrl names the object {key_name:?}, whose name is reserved for ferry's staging files; give a TargetFileName"
                        ),
                    ));
                }
                Plan::Oss {
                    object,
                    endpoint,
                    folder,
                    rename,
                }
            } else {
                Plan::OssBridged {
                    public_url: parse_http_url(&payload.upload_url, "UploadUrl")?,
                    object: payload
                        .bridged_object
                        .as_deref()
                        .map(|o| parse_oss_url(o, "BridgedObject"))
                        .transpose()?,
                    endpoint,
                    folder,
                    rename,
                }
            }
        }
    };
    Ok(ValidTask {
        payload,
        plan,
        md5,
        notes,
    })
}

/// SourceFilePath as a device path none of whose names is reserved for staging files.
fn parse_source_path(text: &str) -> Result<DevicePath> {
    let path = DevicePath::parse(text).map_err(|why| {
        invalid(
            Code::InvalidSourceFilePath,
            format!("SourceFilePath: {why}"),
        )
    })?;
    for name in path.components() {
        check_final_name(name).map_err(|why| {
            invalid(
                Code::InvalidSourceFilePath,
                format!("SourceFilePath {text:?}: component {name:?}: {why}"),
            )
        })?;
    }
    Ok(path)
}

/// Task ids name journal files, so only a safe alphabet is allowed.
pub fn check_task_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            Code::InvalidTaskId,
            format!("TaskId {id:?} must be 1 to {MAX_TASK_ID_LEN} characters of A-Z a-z 0-9 - _ . and not start with a dot"),
        ))
    }
}

fn parse_md5(hex: &str) -> Result<[u8; 16]> {
    let bad = || {
        invalid(
            Code::InvalidFileMd5,
            format!("FileMd5 {hex:?} must be 32 hexadecimal digits"),
        )
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

fn parse_http_url(text: &str, field: &str) -> Result<Url> {
    let shown = crate::redact::url(text);
    let bad = |why: String| invalid(Code::InvalidUploadUrl, format!("{field} {shown:?}: {why}"));
    if text.len() > MAX_URL_LEN {
        return Err(bad(format!("longer than {MAX_URL_LEN} bytes")));
    }
    let url = Url::parse(text).map_err(|e| bad(format!("not a URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("only http and https links can be downloaded".into()));
    }
    if url.host_str().is_none_or(|h| h.is_empty()) {
        return Err(bad("the link has no host".into()));
    }
    // `http:///x` parses as host `x`: the text itself must name the host.
    if let Some(problem) = crate::net::address::link_text_problem(text) {
        return Err(bad(format!("{problem}; write scheme://HOST/PATH")));
    }
    Ok(url)
}

fn parse_oss_url(text: &str, field: &str) -> Result<OssObject> {
    let bad = |why: &str| {
        invalid(
            Code::InvalidUploadUrl,
            format!(
                "{field} {:?} {why}; expected oss://{BUCKET_PREFIX}NAME/FOLDER/FILE",
                crate::redact::url(text)
            ),
        )
    };
    let rest = text
        .strip_prefix("oss://")
        .ok_or_else(|| bad("is not an oss:// address"))?;
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| bad("names no object after the bucket"))?;
    // The bucket is not quoted: it may hold a userinfo or query of a mistyped signed link.
    if !bucket.starts_with(BUCKET_PREFIX) {
        return Err(bad(&format!(
            "names a bucket that does not start with {BUCKET_PREFIX:?}"
        )));
    }
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !bucket.ends_with('-');
    if !bucket_ok {
        return Err(bad(
            "has an invalid bucket name (3-63 lowercase letters, digits and hyphens)",
        ));
    }
    if key.is_empty() || key.len() > 1023 || key.contains('\0') || key.starts_with('/') {
        return Err(bad("has an empty, over-long or malformed object key"));
    }
    // `?` and `#` are legal in an object key, but in a link they start a query or fragment:
    // such a key would be shown cut or unredacted, and is almost always a pasted signed URL.
    if key.contains(['?', '#']) {
        return Err(bad(
            "has `?` or `#` in its object key (is it a signed https:// link? OSS takes oss://BUCKET/KEY)",
        ));
    }
    Ok(OssObject {
        bucket: bucket.to_string(),
        key: key.to_string(),
    })
}

/// A JSON value's type as a message may name it, never the value itself.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `host[:port]` or `http(s)://host[:port]`, nothing else.
fn parse_endpoint(endpoint: Option<&str>) -> Result<String> {
    let endpoint = endpoint.filter(|e| !e.is_empty()).ok_or_else(|| {
        invalid(
            Code::InvalidUploadEndpoint,
            "UploadEndpoint is required for OSS and OSS_BRIDGED, e.g. oss-cn-hangzhou-internal.aliyuncs.com",
        )
    })?;
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    let bad = |why: &str| {
        invalid(
            Code::InvalidUploadEndpoint,
            format!("UploadEndpoint {:?} {why}", crate::redact::url(endpoint)),
        )
    };
    let url = Url::parse(&with_scheme).map_err(|_| bad("is not a host name"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("must be a host name or an http(s) URL"));
    }
    if url.host_str().is_none_or(|h| h.is_empty())
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(bad("must be a bare host name (with an optional port)"));
    }
    Ok(endpoint.to_string())
}

mod json;

#[cfg(test)]
mod tests;
