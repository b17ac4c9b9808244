//! The task payload on the command line, shared by `send` and `fetch`: either a JSON file
//! (`--payload FILE`, `-` for stdin) or flags that become the same JSON with the API's field
//! names. Both go through `payload::parse`, so a mistake gets the code the daemon would give.

use crate::error::{Code, Error, Result};
use crate::task::payload::{self, TaskPayload};
use clap::Args;
use serde_json::{Map, Value};
use std::io::Read;
use std::path::PathBuf;

/// Flags that describe a payload field by field; they conflict with `--payload`.
const FIELD_FLAGS: &[&str] = &[
    "task_id",
    "client_token",
    "url",
    "source_path",
    "endpoint",
    "target_name",
    "auto_install",
    "md5",
];

#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Task payload")]
pub struct PayloadArgs {
    /// Task payload JSON file with SendFile's field names ('-' reads stdin)
    #[arg(long, value_name = "FILE", conflicts_with_all = FIELD_FLAGS)]
    pub payload: Option<PathBuf>,
    /// TaskId (made up by the daemon when absent); resubmitting the same id is idempotent
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// ClientToken: idempotency key of up to 100 characters
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
    /// UploadType: DOWNLOAD_URL, OSS or OSS_BRIDGED
    #[arg(long = "type", value_name = "TYPE", default_value = "DOWNLOAD_URL")]
    pub upload_type: String,
    /// UploadUrl: the http(s) link, or oss://BUCKET/KEY
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// SourceFilePath: the device file (DOWNLOAD_URL) or folder (OSS) to write
    #[arg(long, value_name = "PATH")]
    pub source_path: Option<String>,
    /// UploadEndpoint: the OSS endpoint, e.g. oss-cn-hangzhou-internal.aliyuncs.com
    #[arg(long, value_name = "HOST")]
    pub endpoint: Option<String>,
    /// TargetFileName: rename the file (OSS and OSS_BRIDGED only)
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// AutoInstall: install the APK after it arrived
    #[arg(long)]
    pub auto_install: bool,
    /// FileMd5: the expected MD5 of the file, 32 hex digits
    #[arg(long, value_name = "HEX")]
    pub md5: Option<String>,
}

impl PayloadArgs {
    /// The payload's JSON bytes and the parsed payload, with the daemon's error codes.
    /// Reads a file or stdin, so call it off the async workers.
    pub fn load(&self) -> Result<(Vec<u8>, TaskPayload)> {
        let json = match &self.payload {
            Some(path) => read_payload_file(path)?,
            None => self.flags_json(),
        };
        match payload::parse(&json) {
            Ok(parsed) => Ok((json, parsed)),
            Err(e) if self.payload.is_none() => Err(with_flag_hint(e)),
            Err(e) => Err(e),
        }
    }

    fn flags_json(&self) -> Vec<u8> {
        let mut map = Map::new();
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                map.insert(key.to_string(), Value::String(v.clone()));
            }
        };
        put("TaskId", &self.task_id);
        put("ClientToken", &self.client_token);
        put("SourceFilePath", &self.source_path);
        put("UploadType", &Some(self.upload_type.clone()));
        put("UploadUrl", &self.url);
        put("UploadEndpoint", &self.endpoint);
        put("TargetFileName", &self.target_name);
        put("FileMd5", &self.md5);
        if self.auto_install {
            map.insert("AutoInstall".into(), Value::Bool(true));
        }
        serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
    }
}

fn read_payload_file(path: &PathBuf) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(|e| {
            Error::new(
                Code::InvalidPayload,
                format!("reading the payload from stdin: {e}"),
            )
        })?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|e| {
        Error::new(
            Code::InvalidPayload,
            format!("reading the payload file {}: {e}", path.display()),
        )
    })
}

/// Names the flag behind a missing field, since flag users never typed the API name.
fn with_flag_hint(mut e: Error) -> Error {
    let flag = match e.code {
        Code::InvalidSourceFilePath => "--source-path",
        Code::InvalidUploadUrl => "--url",
        Code::InvalidUploadType => "--type",
        _ => return e,
    };
    if e.message.contains("is required") {
        e.message = format!("{} (give it with {flag})", e.message);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_api_fields() {
        let args = PayloadArgs {
            task_id: Some("t-1".into()),
            upload_type: "DOWNLOAD_URL".into(),
            url: Some("http://127.0.0.1:1/a".into()),
            source_path: Some("/sdcard/Download/a".into()),
            auto_install: true,
            ..Default::default()
        };
        let (json, parsed) = args.load().unwrap();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["UploadUrl"], "http://127.0.0.1:1/a");
        assert_eq!(value["AutoInstall"], true);
        assert_eq!(parsed.task_id.as_deref(), Some("t-1"));
        assert_eq!(parsed.source_file_path, "/sdcard/Download/a");
    }

    #[test]
    fn missing_field_keeps_the_api_code_and_names_the_flag() {
        let args = PayloadArgs {
            upload_type: "DOWNLOAD_URL".into(),
            source_path: Some("/sdcard/Download/a".into()),
            ..Default::default()
        };
        let err = args.load().unwrap_err();
        assert_eq!(err.code, Code::InvalidUploadUrl);
        assert!(err.message.contains("--url"), "{}", err.message);
    }
}
