//! The public error of ferry: one stable code per meaning plus a message a person can act on.
//!
//! Codes are part of the task API (the control plane matches on them), so a code, once
//! shipped, never changes its spelling. Modules keep their own detailed errors and convert
//! into this type at their edge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares every [`Code`] once, with its stable string: the enum, [`Code::ALL`],
/// [`Code::as_str`] and [`Code::parse`] are generated from that one list, so a code cannot be
/// added to one and forgotten in another.
macro_rules! codes {
    ($($(#[$attr:meta])* $variant:ident => $text:literal,)+) => {
        /// A stable error code, serialised as its dotted string (`Storage.DiskFull`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[$attr])* $variant,)+
        }

        impl Code {
            /// Every code, for documentation tests and the README table.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Code> {
                match s {
                    $($text => Some(Code::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

codes! {
    InvalidPayload => "InvalidParameter.Payload",
    InvalidUnknownField => "InvalidParameter.UnknownField",
    InvalidTaskId => "InvalidParameter.TaskId",
    InvalidClientToken => "InvalidParameter.ClientToken",
    InvalidUploadType => "InvalidParameter.UploadType",
    InvalidSourceFilePath => "InvalidParameter.SourceFilePath",
    InvalidUploadUrl => "InvalidParameter.UploadUrl",
    InvalidUploadEndpoint => "InvalidParameter.UploadEndpoint",
    InvalidTargetFileName => "InvalidParameter.TargetFileName",
    InvalidCredentials => "InvalidParameter.Credentials",
    InvalidFileMd5 => "InvalidParameter.FileMd5",
    InvalidAutoInstall => "InvalidParameter.AutoInstall",
    /// An instance id that cannot name an MQTT topic or a phone (fleet).
    InvalidInstanceId => "InvalidParameter.InstanceId",
    /// SendFile's instance list: empty, or naming an instance twice (fleet).
    InvalidInstanceIdList => "InvalidParameter.AndroidInstanceIdList",
    /// DescribeTasks paging and filters (fleet).
    InvalidMaxResults => "InvalidParameter.MaxResults",
    InvalidNextToken => "InvalidParameter.NextToken",
    InvalidLevel => "InvalidParameter.Level",
    InvalidTaskStatus => "InvalidParameter.TaskStatus",
    InvalidConfig => "InvalidConfig",
    /// AutoInstall asked of a daemon configured without it (`install.enabled = false`); also
    /// in task records written before AutoInstall worked.
    UnsupportedAutoInstall => "Unsupported.AutoInstall",
    InstallInvalidApk => "Install.InvalidApk",
    InstallNotAnApk => "Install.NotAnApk",
    InstallTimeout => "Install.Timeout",
    InstallPmFailed => "Install.PmFailed",
    SourceNotFound => "Source.NotFound",
    SourceAccessDenied => "Source.AccessDenied",
    SourceHttp4xx => "Source.Http4xx",
    SourceHttp5xx => "Source.Http5xx",
    SourceTooManyRedirects => "Source.TooManyRedirects",
    SourceRedirectNotAllowed => "Source.RedirectNotAllowed",
    SourceBadResponse => "Source.BadResponse",
    SourceRangeNotSatisfiable => "Source.RangeNotSatisfiable",
    SourceBadContentRange => "Source.BadContentRange",
    SourceNoSuchBucket => "Source.NoSuchBucket",
    SourceSignatureDoesNotMatch => "Source.SignatureDoesNotMatch",
    SourceInvalidAccessKeyId => "Source.InvalidAccessKeyId",
    SourceCredentialsExpired => "Source.CredentialsExpired",
    SourceUnsafeObjectKey => "Source.UnsafeObjectKey",
    SourceTooManyObjects => "Source.TooManyObjects",
    SourceS3Error => "Source.S3Error",
    NetworkDns => "Network.Dns",
    NetworkDnsUnavailable => "Network.DnsUnavailable",
    NetworkConnect => "Network.ConnectFailed",
    NetworkTimeout => "Network.Timeout",
    NetworkReset => "Network.ConnectionReset",
    NetworkTls => "Network.Tls",
    NetworkAddressNotAllowed => "Network.AddressNotAllowed",
    NetworkTooSlow => "Network.TooSlow",
    TransferDeadlineExceeded => "Transfer.DeadlineExceeded",
    StorageDiskFull => "Storage.DiskFull",
    StoragePathNotAllowed => "Storage.PathNotAllowed",
    StoragePermissionDenied => "Storage.PermissionDenied",
    StorageIo => "Storage.Io",
    IntegritySizeMismatch => "Integrity.SizeMismatch",
    IntegritySourceChanged => "Integrity.SourceChanged",
    IntegrityMd5Mismatch => "Integrity.Md5Mismatch",
    Cancelled => "Cancelled",
    ApiUnauthorized => "Api.Unauthorized",
    ApiNotFound => "Api.TaskNotFound",
    ApiBadRequest => "Api.BadRequest",
    ApiPayloadTooLarge => "Api.PayloadTooLarge",
    ApiShuttingDown => "Api.ShuttingDown",
    ApiTaskIdConflict => "Api.TaskIdConflict",
    ApiClientTokenConflict => "Api.ClientTokenConflict",
    /// SendFile named instances the controller does not know (`instance add` first).
    FleetUnknownInstance => "Fleet.UnknownInstance",
    /// `instance add` for an instance that exists, without `--rotate`.
    FleetInstanceExists => "Fleet.InstanceExists",
    /// The phone never took its task before the controller's expiry.
    FleetInstanceOffline => "Fleet.InstanceOffline",
    Internal => "Internal",
    /// The controller's public API answers with Alibaba's OpenAPI gateway codes (RPC style,
    /// src/controller/api): these are the ones it uses besides the payload codes above.
    OpenApiMissingParameter => "MissingParameter",
    OpenApiInvalidParameter => "InvalidParameter",
    OpenApiUnsupportedParameter => "UnsupportedParameter",
    OpenApiDuplicateInstanceId => "InvalidParameter.DuplicateInstanceId",
    OpenApiApiNotFound => "InvalidApi.NotFound",
    OpenApiInvalidVersion => "InvalidVersion",
    OpenApiUnsupportedHttpMethod => "UnsupportedHTTPMethod",
    OpenApiIncompleteSignature => "IncompleteSignature",
    OpenApiInvalidSignatureMethod => "InvalidSignatureMethod",
    OpenApiSignatureDoesNotMatch => "SignatureDoesNotMatch",
    OpenApiSignatureNonceUsed => "SignatureNonceUsed",
    OpenApiTimeStampExpired => "InvalidTimeStamp.Expired",
    OpenApiTimeStampFormat => "InvalidTimeStamp.Format",
    OpenApiAccessKeyNotFound => "InvalidAccessKeyId.NotFound",
    OpenApiThrottling => "Throttling.User",
    OpenApiRequestTooLarge => "RequestTooLarge",
    OpenApiInternalError => "InternalError",
}

impl Code {
    /// Whether partial data should be kept after a task fails with this code, so that
    /// re-submitting the same TaskId resumes instead of starting over.
    pub fn keeps_partial(self) -> bool {
        matches!(
            self,
            Code::SourceHttp5xx
                | Code::NetworkDns
                | Code::NetworkDnsUnavailable
                | Code::NetworkConnect
                | Code::NetworkTimeout
                | Code::NetworkReset
                | Code::NetworkTls
                | Code::NetworkTooSlow
                | Code::TransferDeadlineExceeded
                | Code::SourceAccessDenied
                | Code::SourceSignatureDoesNotMatch
                | Code::SourceInvalidAccessKeyId
                | Code::SourceCredentialsExpired
                | Code::IntegritySizeMismatch
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Codes from a newer journal that this build does not know degrade to Internal
        // rather than making the whole record unreadable.
        Ok(Code::parse(&s).unwrap_or(Code::Internal))
    }
}

/// The `ErrorCode` of a task: one of the fixed [`Code`]s, or the reason pm gave for refusing
/// an install (`Install.INSTALL_FAILED_VERSION_DOWNGRADE`). Android keeps adding `INSTALL_*`
/// reasons, so they cannot all be variants; they are carried as text, checked to be
/// `Install.` followed by `[A-Z0-9_]+`, so a control plane can still match on them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TaskCode {
    Fixed(Code),
    /// `Install.` + pm's reason, as one string (see [`TaskCode::pm_reason`]).
    Pm(String),
}

/// Longest pm reason kept as a code; pm's own are under 50 characters.
const MAX_PM_REASON: usize = 80;

impl TaskCode {
    /// `Install.REASON` for a reason pm printed (`INSTALL_FAILED_NO_MATCHING_ABIS`), or `None`
    /// when the text is not of that shape (the caller then reports `Install.PmFailed`).
    pub fn pm_reason(reason: &str) -> Option<TaskCode> {
        let valid = !reason.is_empty()
            && reason.len() <= MAX_PM_REASON
            && reason.starts_with(|c: char| c.is_ascii_uppercase())
            && reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        valid.then(|| TaskCode::Pm(format!("Install.{reason}")))
    }

    /// Reads a stored or received code; unknown text degrades to `Internal`, like [`Code`].
    pub fn parse(s: &str) -> TaskCode {
        if let Some(code) = Code::parse(s) {
            return TaskCode::Fixed(code);
        }
        s.strip_prefix("Install.")
            .and_then(TaskCode::pm_reason)
            .unwrap_or(TaskCode::Fixed(Code::Internal))
    }

    pub fn as_str(&self) -> &str {
        match self {
            TaskCode::Fixed(code) => code.as_str(),
            TaskCode::Pm(text) => text,
        }
    }

    /// The fixed code, if this is one.
    pub fn fixed(&self) -> Option<Code> {
        match self {
            TaskCode::Fixed(code) => Some(*code),
            TaskCode::Pm(_) => None,
        }
    }
}

impl From<Code> for TaskCode {
    fn from(code: Code) -> Self {
        TaskCode::Fixed(code)
    }
}

impl PartialEq<Code> for TaskCode {
    fn eq(&self, other: &Code) -> bool {
        self.fixed() == Some(*other)
    }
}

impl fmt::Display for TaskCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TaskCode::parse(&String::deserialize(d)?))
    }
}

/// A failure with its stable code and a message naming what failed and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// An I/O failure on a path, classified by errno so a full disk or a read-only
    /// mount is reported as such rather than as a generic I/O error.
    pub fn io(action: &str, path: &std::path::Path, err: &std::io::Error) -> Self {
        let code = match err.raw_os_error() {
            Some(e) if e == nix::libc::ENOSPC || e == nix::libc::EDQUOT => Code::StorageDiskFull,
            Some(e) if e == nix::libc::EACCES || e == nix::libc::EPERM || e == nix::libc::EROFS => {
                Code::StoragePermissionDenied
            }
            Some(e) if e == nix::libc::ELOOP => Code::StoragePathNotAllowed,
            _ => Code::StorageIo,
        };
        Error::new(code, format!("{action} {}: {err}", path.display()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(Code::parse(code.as_str()), Some(*code));
        }
    }

    /// The README's error-code table is what a control plane reads: every code must have a
    /// row, either spelled out or as `.Name` after a sibling of its group (`Api.X` / `.Y`).
    #[test]
    fn readme_table_lists_every_code() {
        let readme = include_str!("../README.md");
        let section = readme
            .split_once("### Error codes")
            .and_then(|(_, rest)| rest.split("\n## ").next())
            .expect("README has an \"### Error codes\" section");
        let first_cells: Vec<&str> = section
            .lines()
            .filter_map(|row| row.strip_prefix("| `"))
            .map(|row| row.split(" | ").next().unwrap_or(row))
            .collect();
        for code in Code::ALL {
            let text = code.as_str();
            let listed = first_cells.iter().any(|cell| {
                let cell = format!("`{cell}");
                cell.contains(&format!("`{text}`"))
                    || text.split_once('.').is_some_and(|(group, name)| {
                        cell.starts_with(&format!("`{group}."))
                            && cell.contains(&format!("`.{name}`"))
                    })
            });
            assert!(listed, "README's error-code table has no row for {text}");
        }
    }

    #[test]
    fn task_codes_carry_pm_reasons_and_read_old_records() {
        let code = TaskCode::pm_reason("INSTALL_FAILED_VERSION_DOWNGRADE").unwrap();
        assert_eq!(code.as_str(), "Install.INSTALL_FAILED_VERSION_DOWNGRADE");
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(serde_json::from_str::<TaskCode>(&json).unwrap(), code);
        for bad in [
            "",
            "install_failed",
            "INSTALL FAILED",
            "INSTALL_FAILED:",
            "1ABC",
        ] {
            assert_eq!(TaskCode::pm_reason(bad), None, "{bad:?}");
        }
        assert_eq!(TaskCode::pm_reason(&"A".repeat(81)), None);
        // Records written before AutoInstall worked still read back as what they said.
        let old: TaskCode = serde_json::from_str("\"Unsupported.AutoInstall\"").unwrap();
        assert_eq!(old, Code::UnsupportedAutoInstall);
        assert_eq!(TaskCode::parse("Install.Timeout"), Code::InstallTimeout);
        assert_eq!(TaskCode::parse("Install.bad reason"), Code::Internal);
        assert_eq!(TaskCode::parse("Nonsense.Code"), Code::Internal);
    }

    #[test]
    fn enospc_is_disk_full() {
        let err = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let e = Error::io("writing", std::path::Path::new("/x"), &err);
        assert_eq!(e.code, Code::StorageDiskFull);
        assert!(e.message.contains("/x"));
    }
}
