//! Settings for what a static binary must do itself on Android: name resolution, TLS roots,
//! logcat, the media scanner and dropping privileges. Paths here are the device's system
//! paths; `system_root` maps them under a host folder for tests and desktop emulation.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// netd's resolver socket; what bionic's getaddrinfo talks to. Empty disables it.
    pub dnsproxyd_socket: String,
    /// Hosts files, read in order (Android keeps its file in /system/etc/hosts).
    pub hosts_files: Vec<String>,
    /// Read when present; Android has none.
    pub resolv_conf: String,
    /// DNS servers (`IP` or `IP:PORT`) tried after everything else; never a public default,
    /// because internal OSS endpoints resolve only through the VPC's resolver.
    pub servers: Vec<String>,
    /// Per-query timeout of the DNS servers.
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            dnsproxyd_socket: "/dev/socket/dnsproxyd".into(),
            hosts_files: vec!["/etc/hosts".into(), "/system/etc/hosts".into()],
            resolv_conf: "/etc/resolv.conf".into(),
            servers: Vec::new(),
            timeout_ms: 3000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Folders of PEM certificates trusted besides the bundled webpki roots: the system
    /// store, its updatable APEX copy (Android 14+), and user-added CAs.
    pub ca_dirs: Vec<String>,
    /// The system CAs the user turned off (Settings > Security > Trusted credentials): a
    /// copy of each, under the same file name as in the system store, as Android's
    /// TrustedCertificateStore keeps them. Not trusted even though still in `ca_dirs`; "" = none.
    pub ca_removed_dir: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_dirs: vec![
                "/system/etc/security/cacerts".into(),
                "/apex/com.android.conscrypt/cacerts".into(),
                "/data/misc/user/0/cacerts-added".into(),
            ],
            ca_removed_dir: "/data/misc/user/0/cacerts-removed".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogcatConfig {
    /// logd's datagram socket; when it exists, logs go there as well as to stderr. Empty
    /// disables logcat.
    pub socket: String,
    pub tag: String,
}

impl Default for LogcatConfig {
    fn default() -> Self {
        LogcatConfig {
            socket: "/dev/socket/logdw".into(),
            tag: "ferry".into(),
        }
    }
}

/// How to tell the media store about a new file in shared storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaScanMode {
    /// `am broadcast -a android.intent.action.MEDIA_SCANNER_SCAN_FILE -d file://PATH`
    Broadcast,
    /// `content call --uri content://media/external/file --method scan_file --arg PATH`
    /// (MediaProvider's `MediaStore.SCAN_FILE_CALL`; Android 11+)
    Content,
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaScanConfig {
    pub mode: MediaScanMode,
    /// Only files under these device folders are announced (shared storage).
    pub roots: Vec<String>,
    /// The `am` and `content` commands (paths or names on PATH).
    pub am_command: String,
    pub content_command: String,
}

impl Default for MediaScanConfig {
    fn default() -> Self {
        MediaScanConfig {
            mode: MediaScanMode::Broadcast,
            roots: vec!["/sdcard".into(), "/storage/emulated/0".into()],
            am_command: "am".into(),
            content_command: "content".into(),
        }
    }
}

/// Drop root after start-up: numeric ids only (Android has no /etc/passwd).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, e.g. 3003 (inet: sockets), 1015 (sdcard_rw), 1023 (media_rw).
    #[serde(default)]
    pub groups: Vec<u32>,
}
