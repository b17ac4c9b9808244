//! The local API's wire contract, shared by the daemon (`daemon::routes`) and the client
//! (`client`): route paths, the JSON bodies that are not task records, the discovery file
//! `STATE_DIR/api.json`, and how an error code maps to an HTTP status.
//!
//! Keeping both ends on these types means a renamed field breaks the build, not a phone.

pub mod client;

use crate::error::{Code, Error, Result};
use crate::task::record::TaskView;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The version the daemon reports in `/healthz` and `ferry_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Name of the discovery file inside the state directory.
pub const API_FILE: &str = "api.json";
/// Name of the bearer-token file inside the state directory.
pub const TOKEN_FILE: &str = "token";
/// Environment variable that supplies the token instead of the token file.
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// Route paths. Task routes append `/{TaskId}` and `/{TaskId}/cancel`.
pub mod routes {
    pub const HEALTH: &str = "/healthz";
    pub const METRICS: &str = "/metrics";
    pub const TASKS: &str = "/v1/tasks";

    pub fn task(id: &str) -> String {
        format!("{TASKS}/{id}")
    }

    pub fn cancel(id: &str) -> String {
        format!("{TASKS}/{id}/cancel")
    }

    /// One line per route, for error messages that tell a caller what exists.
    pub const SUMMARY: &str = "GET /healthz, GET /metrics, GET|POST /v1/tasks, \
        GET|DELETE /v1/tasks/{TaskId}, POST /v1/tasks/{TaskId}/cancel";
}

/// Every non-2xx answer carries this body (the cloud API's field names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    /// The stable code, e.g. `InvalidParameter.UploadType`.
    pub error_code: Code,
    /// What went wrong and what to do about it.
    pub error_msg: String,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        ErrorBody {
            error_code: e.code,
            error_msg: e.message.clone(),
        }
    }
}

impl From<ErrorBody> for Error {
    fn from(b: ErrorBody) -> Self {
        Error::new(b.error_code, b.error_msg)
    }
}

/// `GET /v1/tasks`: every task the daemon knows, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
}

/// `GET /healthz`: `ok` while serving, `stopping` (with 503) once shutdown began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `ok` or `stopping`.
    pub status: String,
    /// Present while serving so a client can tell which build answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `STATE_DIR/api.json`: where a running daemon listens, written after it bound its
/// sockets and removed when it exits, so clients and tests need no fixed port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiInfo {
    /// `127.0.0.1:PORT` with the real port (the config may say port 0); null when TCP is off.
    pub listen: Option<String>,
    /// The unix socket path; null when it is off.
    pub socket: Option<PathBuf>,
    /// The daemon's process id, so scripts can signal it (SIGHUP reloads the config).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The daemon's build, for a client that wants to warn about a mismatch.
    #[serde(default)]
    pub version: Option<String>,
}

impl ApiInfo {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(API_FILE)
    }

    /// Reads the discovery file; `Ok(None)` when no daemon published one.
    pub fn read(state_dir: &Path) -> Result<Option<ApiInfo>> {
        let path = Self::path(state_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading the daemon address file", &path, &e)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            Error::new(
                Code::Internal,
                format!(
                    "the daemon address file {} is malformed: {e}",
                    path.display()
                ),
            )
        })
    }

    /// Writes the discovery file atomically (temp file, then rename) so a reader never
    /// sees half of it.
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = Self::path(state_dir);
        let tmp = state_dir.join(format!(".{API_FILE}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::new(Code::Internal, format!("encoding {API_FILE}: {e}")))?;
        text.push(b'\n');
        std::fs::write(&tmp, &text)
            .map_err(|e| Error::io("writing the daemon address file", &tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("publishing the daemon address file", &path, &e)
        })
    }
}

/// The HTTP status for an error code: the caller's mistakes are 4xx, ours are 5xx.
pub fn status_for(code: Code) -> u16 {
    let name = code.as_str();
    if name.starts_with("InvalidParameter.") || name.starts_with("Unsupported.") {
        return 400;
    }
    match code {
        Code::ApiBadRequest => 400,
        Code::ApiUnauthorized => 401,
        Code::ApiNotFound => 404,
        Code::ApiTaskIdConflict | Code::ApiClientTokenConflict => 409,
        Code::ApiPayloadTooLarge => 413,
        Code::ApiShuttingDown => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_code_family() {
        assert_eq!(status_for(Code::InvalidUploadType), 400);
        assert_eq!(status_for(Code::UnsupportedAutoInstall), 400);
        assert_eq!(status_for(Code::ApiNotFound), 404);
        assert_eq!(status_for(Code::ApiShuttingDown), 503);
        assert_eq!(status_for(Code::StorageIo), 500);
    }

    #[test]
    fn api_file_round_trips_and_uses_api_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ApiInfo::read(dir.path()).unwrap(), None);
        let info = ApiInfo {
            listen: Some("127.0.0.1:4242".into()),
            socket: None,
            pid: Some(7),
            version: Some(VERSION.into()),
        };
        info.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(API_FILE)).unwrap();
        assert!(text.contains("\"Listen\": \"127.0.0.1:4242\""), "{text}");
        assert!(text.contains("\"Socket\": null"), "{text}");
        assert_eq!(ApiInfo::read(dir.path()).unwrap(), Some(info));
    }

    #[test]
    fn error_body_keeps_the_code() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"ErrorCode":"Api.TaskNotFound","ErrorMsg":"no"}"#).unwrap();
        let err: Error = body.into();
        assert_eq!(err.code, Code::ApiNotFound);
    }
}
