//! Helpers of the AutoInstall tests (`tests/android_install.rs`, `tests/install_flow.rs`):
//! the real, signed APK fixtures built by `scripts/lib/apk-fixtures.sh`, and the stand-in
//! for Android's `pm` (`tests/fixtures/pm-stand-in.sh`, a busybox sh script, so it runs the
//! same natively and in the Android-like chroot) with its state folder.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const FIXTURE_SCRIPT: &str = "scripts/lib/apk-fixtures.sh";
const STAND_IN: &str = "tests/fixtures/pm-stand-in.sh";
/// The busybox applets the stand-in uses.
const APPLETS: &[&str] = &[
    "awk", "cat", "head", "mkdir", "mv", "od", "rm", "sleep", "touch", "unzip", "wc",
];

/// The fixture folder: `FERRY_APK_FIXTURES`, else the script's cache folder for its current
/// content, built by running the script when it is missing (needs the Debian tools, which
/// the script installs with apt as root; it fails loudly, never skips).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("FERRY_APK_FIXTURES") {
            return PathBuf::from(dir);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = std::fs::read(repo.join(FIXTURE_SCRIPT)).unwrap();
        let key: String = Sha256::digest(&script)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = std::env::var("FERRY_APK_FIXTURES_BASE")
            .unwrap_or_else(|_| "/var/tmp/ferry-apk-fixtures".into());
        let dir = PathBuf::from(base).join(key);
        if !dir.join(".complete").exists() {
            let status = Command::new("bash")
                .current_dir(repo)
                .args([
                    "-c",
                    ". scripts/lib/common.sh && . scripts/lib/apk-fixtures.sh && ensure_apk_fixtures",
                ])
                .status()
                .expect("running bash");
            assert!(
                status.success() && dir.join(".complete").exists(),
                "building the APK fixtures with {FIXTURE_SCRIPT} failed ({status}); it needs \
                 aapt, apksigner, zipalign, android-framework-res and a JRE from apt"
            );
        }
        dir
    })
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `pm` stand-in installed at `/system/bin/pm` of a device root.
pub struct PmStandIn {
    /// Host path of its state folder.
    pub state: PathBuf,
}

impl PmStandIn {
    /// Puts busybox, its applets and the stand-in under `root` (the device's `/` on the
    /// host). `seen` maps a device path to the path the running ferry sees (the host path
    /// natively, the device path in the chroot).
    pub fn install(root: &Path, seen: &dyn Fn(&str) -> PathBuf) -> PmStandIn {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: the pm stand-in needs Debian's busybox-static \
             (scripts/test.sh installs it)"
        );
        let host = |device: &str| root.join(device.trim_start_matches('/'));
        std::fs::create_dir_all(host("/system/xbin")).unwrap();
        std::fs::create_dir_all(host("/system/bin")).unwrap();
        std::fs::copy(busybox, host("/system/bin/busybox")).unwrap();
        let seen_busybox = seen("/system/bin/busybox");
        for applet in APPLETS {
            let link = host(&format!("/system/xbin/{applet}"));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&seen_busybox, &link).unwrap();
        }
        let state_device = "/data/local/tmp/pm-state";
        std::fs::create_dir_all(host(state_device)).unwrap();
        let body =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(STAND_IN)).unwrap();
        let script = format!(
            "#!{} sh\nPM_STATE='{}'\nPATH='{}'\n{body}",
            seen_busybox.display(),
            seen(state_device).display(),
            seen("/system/xbin").display(),
        );
        let pm = host("/system/bin/pm");
        std::fs::write(&pm, script).unwrap();
        std::fs::set_permissions(&pm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        PmStandIn {
            state: host(state_device),
        }
    }

    /// Failures on demand: lines of "STEP ACTION" (see the stand-in's header).
    pub fn fail(&self, rules: &str) {
        std::fs::write(self.state.join("fail"), rules).unwrap();
    }

    pub fn succeed(&self) {
        let _ = std::fs::remove_file(self.state.join("fail"));
    }

    /// Installed apps, one "PACKAGE VERSIONCODE APKS" line each.
    pub fn packages(&self) -> String {
        std::fs::read_to_string(self.state.join("packages")).unwrap_or_default()
    }

    /// The ids of sessions still open.
    pub fn open_sessions(&self) -> Vec<String> {
        match std::fs::read_dir(self.state.join("sessions")) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every pm command line run so far.
    pub fn calls(&self) -> String {
        std::fs::read_to_string(self.state.join("calls")).unwrap_or_default()
    }

    pub fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.state.join("calls"));
    }

    /// The pid of the stand-in that hung on request.
    pub fn hang_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.join("hang.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Whether a process still runs (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

/// A zip made in memory, deflated; for bundles the fixture script does not make.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in entries {
        w.start_file(*name, options).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A zip of `n` empty entries as a tiny writer lays it out: one local header (nothing reads
/// the others before an entry is opened; every entry points at it), a central directory of
/// `n` headers, then the ZIP64 end record, its locator and the end record (ZIP64, as more
/// than 65,535 entries need).
pub fn zip_with_empty_entries(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 54 + 200);
    out.extend_from_slice(b"PK\x03\x04");
    out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0; 12]); // crc, compressed and uncompressed sizes
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(b"e0000000");
    let offset = out.len() as u64;
    for i in 0..n {
        let name = format!("e{i:07}");
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&[0; 12]); // crc, compressed and uncompressed sizes
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 16]); // extra, comment, disk, attributes, offset 0
        out.extend_from_slice(name.as_bytes());
    }
    let size = out.len() as u64 - offset;
    let record = out.len() as u64;
    out.extend_from_slice(b"PK\x06\x06");
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for v in [n, n, size, offset] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"PK\x06\x07\0\0\0\0");
    out.extend_from_slice(&record.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&[0xff; 12]);
    out.extend_from_slice(&[0, 0]);
    out
}
