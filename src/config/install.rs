//! Settings of the AutoInstall step: which `pm` to run, with what flags and time limit, and
//! the limits that keep a hostile bundle from filling the phone.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The uids `pm install -S` (a streamed install, "reverse mode" of `cmd package`) works from:
/// root, system and shell. PackageManagerShellCommand refuses any other with "Reverse mode
/// only supported from shell or system"; those would need INSTALL_PACKAGES, which no uid
/// without a package can hold.
pub const STREAM_INSTALL_UIDS: [u32; 3] = [0, 1000, 2000];

/// Why AutoInstall cannot work for a daemon running as `uid`, or `None`.
pub fn uid_problem(uid: u32) -> Option<String> {
    (!STREAM_INSTALL_UIDS.contains(&uid)).then(|| {
        format!(
            "run_as uid {uid} cannot run AutoInstall: pm accepts a streamed install only from uid 0 (root), 1000 (system) or 2000 (shell); use one of those, or set install.enabled = false to run ferry as uid {uid} without AutoInstall"
        )
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstallConfig {
    /// Whether tasks may ask for AutoInstall. Off, a task with `AutoInstall: true` is refused
    /// at intake (`Unsupported.AutoInstall`), and `run_as` may name any uid: pm streams an
    /// APK only from uid 0, 1000 or 2000 (see [`STREAM_INSTALL_UIDS`]).
    pub enabled: bool,
    /// The package manager command: a name looked up on `PATH`, or an absolute device path
    /// (`/system/bin/pm`, mapped under `system_root` like the other system commands).
    pub pm_command: String,
    /// Flags given to `pm install` and `pm install-create` before `-S SIZE`. `-r` (replace an
    /// installed app) is the cloud API's CreateApp default; pm ignores it since Android 7,
    /// where replacing is always allowed, and needs it before.
    pub install_flags: Vec<String>,
    /// One install (every pm command of it together) may take this long; then pm is killed
    /// and the result is `Install.Timeout`. Large games take minutes to dexopt.
    pub timeout_secs: u64,
    /// A bundle (`.apks`, `.xapk`, zip of splits) may unpack to at most this many bytes in
    /// the state folder, so a zip bomb cannot fill `/data`.
    pub max_bundle_bytes: u64,
    /// Most entries a bundle may hold (a zip of millions of empty entries is a bomb too).
    pub max_bundle_entries: usize,
    /// Most entries any zip opened for install (an APK, a bundle, an APK inside a bundle)
    /// may declare in its end record, checked before its directory is read: the zip reader
    /// keeps every entry in memory. 65,535 is the most a zip without ZIP64 can hold, and
    /// Android before 12 cannot install a ZIP64 APK; real APKs hold a few thousand, the
    /// largest games about 10,000.
    pub max_apk_entries: u64,
    /// Largest central directory any zip opened for install may declare, checked with the
    /// entry count: 65,535 entries with 200-byte names take about 16 MiB (real APKs: about
    /// 100 bytes an entry).
    pub max_zip_directory_bytes: u64,
    /// Where XAPK expansion files go: `OBB_ROOT/PACKAGE/main.N.PACKAGE.obb`. Must be inside
    /// `allowed_roots`.
    pub obb_root: String,
}

impl Default for InstallConfig {
    fn default() -> Self {
        InstallConfig {
            enabled: true,
            pm_command: "pm".into(),
            install_flags: vec!["-r".into()],
            timeout_secs: 300,
            max_bundle_bytes: 8 << 30,
            max_bundle_entries: 10_000,
            max_apk_entries: 65_535,
            max_zip_directory_bytes: 16 << 20,
            obb_root: "/sdcard/Android/obb".into(),
        }
    }
}

impl InstallConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Why these settings cannot work, or `None`.
    pub fn problem(&self) -> Option<String> {
        if self.pm_command.trim().is_empty() {
            return Some("install.pm_command is empty".into());
        }
        if self.timeout_secs == 0 {
            return Some("install.timeout_secs must be at least 1".into());
        }
        if self.max_apk_entries == 0 || self.max_zip_directory_bytes == 0 {
            return Some(
                "install.max_apk_entries and install.max_zip_directory_bytes must be at least 1"
                    .into(),
            );
        }
        if let Some(flag) = self
            .install_flags
            .iter()
            .find(|f| f.trim().is_empty() || f.as_str() == "-S" || f.as_str() == "-")
        {
            return Some(format!(
                "install.install_flags: {flag:?} cannot be given (-S SIZE and the stdin path are ferry's own)"
            ));
        }
        if !self.obb_root.starts_with('/') || self.obb_root.split('/').any(|c| c == "..") {
            return Some(format!(
                "install.obb_root {:?} must be an absolute device path without ..",
                self.obb_root
            ));
        }
        None
    }
}
