//! [`Target`]: one fresh phone for one test — a root folder laid out like Android and the
//! `ferry` binary set up to run against it — so the same end-to-end test runs against the
//! host build or the aarch64 build.
//!
//! The root (under /var/tmp, so hardlinks work) holds:
//!
//! ```text
//! /system/bin/                 (chroot mode: ferry)
//! /system/etc/hosts            127.0.0.1 localhost, ::1 ip6-localhost
//! /etc -> system/etc           relative, so it resolves under the root in both modes
//! /storage/emulated/0/Download
//! /sdcard -> storage/emulated/0
//! /data/local/tmp
//! /dev/socket/                 put stand-ins here: dnsproxyd, logdw
//! /proc                        (chroot mode: a private procfs is mounted for the run)
//! ```
//!
//! and, as on Android, no `/etc/resolv.conf`, no `/tmp`, no `/etc/passwd`. The daemon's state
//! is the device path `/data/local/ferry` in both modes.
//!
//! Modes:
//! - **native** (default): the host binary (`CARGO_BIN_EXE_ferry`, or `FERRY_TEST_BIN`,
//!   prefixed by `FERRY_TEST_RUNNER` if set) with `--device-root ROOT --system-root ROOT
//!   --state-dir ROOT/data/local/ferry`.
//! - **chroot** (`FERRY_TEST_CHROOT=1` and `FERRY_TEST_BIN=/path/to/aarch64/ferry`, needs
//!   root): the binary is linked to `ROOT/system/bin/ferry`, `qemu-aarch64-static` to
//!   `ROOT/qemu-aarch64-static`, and each command is `unshare --mount-proc=ROOT/proc chroot
//!   ROOT /qemu-aarch64-static /system/bin/ferry ...` with no root flags and the default state
//!   directory, in an empty environment (plus `PATH`, `ANDROID_ROOT`, `ANDROID_DATA`). Device
//!   paths are real paths there. The network is shared: servers on the host's 127.0.0.1 are
//!   reachable.
//!
//! API, in device paths (`/sdcard/Download/a.bin`, `/dev/socket/dnsproxyd`):
//! - [`Target::host`]: where a device path is on the host, to read or check files;
//! - [`Target::write`]: put a file on the device (hosts, CA certs, configs);
//! - [`Target::arg`]: a device path as the binary must be given it in a flag (`--config`);
//! - [`Target::host_of_reported`]: the host path of a path the binary printed (api.json, errors);
//! - [`Target::command`]: a `ferry` command with the right prefix and flags; add arguments;
//!   [`Target::command_without_capabilities`]: the same with init's ids and no capabilities;
//! - [`Target::daemon`]: `ferry daemon --listen 127.0.0.1:0` with extra global flags,
//!   ready to use (see [`super::Daemon`]);
//! - [`Target::timeout`]: stretches a timeout for the slower emulated binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The daemon's state folder on the device, in both modes.
pub const STATE_DIR: &str = "/data/local/ferry";

/// `qemu-aarch64-static` is this many times slower to start and run than native code; only
/// timeouts are stretched, never sleeps, so native runs are as fast as before.
const EMULATION_SLOWDOWN: u32 = 6;

const HOSTS: &str = "127.0.0.1 localhost\n::1 ip6-localhost\n";

/// One Android-like root and how to run `ferry` against it. Cheap to clone; the folder is
/// removed when the last clone is dropped.
#[derive(Clone)]
pub struct Target {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    mode: Mode,
    /// Holds the root and the daemon logs; removed on drop.
    dir: tempfile::TempDir,
}

enum Mode {
    /// `runner... bin` on the host; paths mapped with `--device-root`/`--system-root`.
    Native { words: Vec<OsString> },
    /// `unshare --mount-proc chroot ROOT /qemu-aarch64-static /system/bin/ferry`; the host's
    /// `unshare` and `chroot` by absolute path (the child's PATH is the phone's).
    Chroot { unshare: PathBuf, chroot: PathBuf },
}

impl Default for Target {
    fn default() -> Self {
        Target::new()
    }
}

impl Target {
    /// A fresh root in the mode the environment asks for (see the module docs).
    pub fn new() -> Target {
        let base = Path::new("/var/tmp");
        let dir = tempfile::Builder::new()
            .prefix("ferry-phone-")
            .tempdir_in(if base.is_dir() {
                base.to_path_buf()
            } else {
                std::env::temp_dir()
            })
            .expect("creating the test root");
        let root = dir.path().join("root");
        make_layout(&root);
        let mode = if chroot_requested() {
            setup_chroot(&root);
            Mode::Chroot {
                unshare: which("unshare").expect("unshare not found (util-linux)"),
                chroot: which("chroot").expect("chroot not found (coreutils)"),
            }
        } else {
            let bin = std::env::var_os("FERRY_TEST_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_ferry").into());
            let runner = std::env::var("FERRY_TEST_RUNNER").unwrap_or_default();
            let mut words: Vec<OsString> = runner.split_whitespace().map(Into::into).collect();
            words.push(bin);
            Mode::Native { words }
        };
        Target {
            inner: Arc::new(Inner { root, mode, dir }),
        }
    }

    /// The host folder that is the device's `/`.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn is_chroot(&self) -> bool {
        matches!(self.inner.mode, Mode::Chroot { .. })
    }

    /// Whether the binary runs emulated (chroot mode or a runner such as qemu).
    pub fn is_emulated(&self) -> bool {
        match &self.inner.mode {
            Mode::Chroot { .. } => true,
            Mode::Native { words } => words.len() > 1,
        }
    }

    /// Where the device path (`/sdcard/Download/a.bin`) is on the host.
    pub fn host(&self, device_path: impl AsRef<Path>) -> PathBuf {
        let path = device_path.as_ref();
        assert!(path.is_absolute(), "not a device path: {}", path.display());
        self.root().join(path.strip_prefix("/").unwrap())
    }

    /// A device path as the binary must be given it on its command line (`--config`,
    /// `--socket`, `--token-file`): the host path natively, the path itself in the chroot.
    pub fn arg(&self, device_path: impl AsRef<Path>) -> PathBuf {
        match self.inner.mode {
            Mode::Native { .. } => self.host(device_path),
            Mode::Chroot { .. } => device_path.as_ref().to_path_buf(),
        }
    }

    /// The host path of a file path the binary reported (api.json's `Socket`, error messages).
    pub fn host_of_reported(&self, binary_path: impl AsRef<Path>) -> PathBuf {
        match self.inner.mode {
            Mode::Native { .. } => binary_path.as_ref().to_path_buf(),
            Mode::Chroot { .. } => self.host(binary_path),
        }
    }

    /// Writes a file at a device path, creating its folders.
    pub fn write(&self, device_path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let host = self.host(device_path);
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(&host, bytes).unwrap();
        host
    }

    /// Appends lines (`"127.0.0.1 bucket.oss.test\n"`) to the phone's `/system/etc/hosts`, the
    /// file ferry's resolver reads in both modes (`/etc` links to it): how a test makes its own
    /// names resolve without touching the machine's `/etc/hosts`.
    pub fn add_hosts(&self, lines: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.host("/system/etc/hosts"))
            .unwrap();
        file.write_all(lines.as_bytes()).unwrap();
        if !lines.ends_with('\n') {
            file.write_all(b"\n").unwrap();
        }
    }

    /// Writes a config file at `device_path` and returns the `--config` flag pair for it.
    pub fn config(&self, device_path: &str, toml: &str) -> [String; 2] {
        self.write(device_path, toml);
        [
            "--config".into(),
            self.arg(device_path).display().to_string(),
        ]
    }

    /// `--state-dir` for [`STATE_DIR`] natively; nothing in the chroot, where the binary's
    /// own default is `/data/local/ferry` (as on a phone).
    pub fn state_args(&self) -> Vec<OsString> {
        match self.inner.mode {
            Mode::Native { .. } => vec!["--state-dir".into(), self.host(STATE_DIR).into()],
            Mode::Chroot { .. } => Vec::new(),
        }
    }

    /// `ferry` with the root flags (native) or inside the chroot, without `--state-dir`;
    /// stdin is null and no `FERRY_*` setting is inherited.
    pub fn bare_command(&self) -> Command {
        self.build_command(None)
    }

    /// [`Target::command`] run as an init service without capabilities: uid 0, gid `gid`,
    /// exactly the supplementary `groups`, and an empty capability bounding set (so root
    /// gets no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH at exec), through util-linux
    /// `setpriv` (needs root). In chroot mode `setpriv` runs before `chroot`, which keeps
    /// CAP_SYS_CHROOT alone to enter the root; nothing that bypasses file permissions.
    pub fn command_without_capabilities(&self, gid: u32, groups: &[u32]) -> Command {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        let keep = if self.is_chroot() {
            "-all,+sys_chroot"
        } else {
            "-all"
        };
        let setpriv = vec![
            which("setpriv")
                .expect("setpriv not found (util-linux)")
                .into_os_string(),
            "--reuid=0".into(),
            format!("--regid={gid}").into(),
            format!("--groups={}", list.join(",")).into(),
            "--inh-caps=-all".into(),
            format!("--bounding-set={keep}").into(),
        ];
        let mut cmd = self.build_command(Some(setpriv));
        cmd.args(self.state_args());
        cmd
    }

    /// `prefix` runs right before the binary (natively) or before `chroot` (chroot mode).
    fn build_command(&self, prefix: Option<Vec<OsString>>) -> Command {
        let root = self.root();
        let prefix = prefix.unwrap_or_default();
        let mut cmd = match &self.inner.mode {
            Mode::Native { words } => {
                let words: Vec<&OsString> = prefix.iter().chain(words).collect();
                let mut cmd = Command::new(words[0]);
                cmd.args(&words[1..]);
                cmd.arg("--device-root").arg(root);
                cmd.arg("--system-root").arg(root);
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("FERRY_") {
                        cmd.env_remove(key);
                    }
                }
                cmd
            }
            Mode::Chroot { unshare, chroot } => {
                let mut cmd = Command::new(unshare);
                cmd.arg(format!("--mount-proc={}", root.join("proc").display()));
                cmd.args(&prefix);
                cmd.arg(chroot).arg(root);
                cmd.args(["/qemu-aarch64-static", "/system/bin/ferry"]);
                // What init gives a service on a phone; nothing of the host's (no HOME,
                // SSL_CERT_FILE, AWS_CA_BUNDLE, TMPDIR).
                cmd.env_clear();
                cmd.env("PATH", "/system/bin:/system/xbin");
                cmd.env("ANDROID_ROOT", "/system");
                cmd.env("ANDROID_DATA", "/data");
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// [`Target::bare_command`] with the state folder [`STATE_DIR`].
    pub fn command(&self) -> Command {
        let mut cmd = self.bare_command();
        cmd.args(self.state_args());
        cmd
    }

    /// Starts `ferry [EXTRA] daemon --listen 127.0.0.1:0` and waits until it serves.
    pub fn daemon(&self, extra: &[&str]) -> super::Daemon {
        super::Daemon::start_on(self.clone(), extra)
    }

    /// `base` for a native binary, longer for an emulated one.
    pub fn timeout(&self, base: Duration) -> Duration {
        if self.is_emulated() {
            base * EMULATION_SLOWDOWN
        } else {
            base
        }
    }

    /// A fresh file next to (not inside) the root, for daemon logs.
    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        let mut n = 0;
        loop {
            let path = self.inner.dir.path().join(format!("{name}-{n}.log"));
            if !path.exists() {
                return path;
            }
            n += 1;
        }
    }
}

fn chroot_requested() -> bool {
    matches!(
        std::env::var("FERRY_TEST_CHROOT").as_deref(),
        Ok("1") | Ok("true")
    )
}

fn make_layout(root: &Path) {
    for dir in [
        "system/bin",
        "system/etc",
        "storage/emulated/0/Download",
        "data/local/tmp",
        "dev/socket",
        "proc",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("system/etc/hosts"), HOSTS).unwrap();
    std::os::unix::fs::symlink("system/etc", root.join("etc")).unwrap();
    std::os::unix::fs::symlink("storage/emulated/0", root.join("sdcard")).unwrap();
}

/// Puts the aarch64 binary, qemu and the device nodes a static binary opens into the root.
fn setup_chroot(root: &Path) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "FERRY_TEST_CHROOT=1 needs root (chroot, mknod, mount)"
    );
    let bin = std::env::var_os("FERRY_TEST_BIN")
        .expect("FERRY_TEST_CHROOT=1 needs FERRY_TEST_BIN=/path/to/aarch64/ferry");
    let qemu = which("qemu-aarch64-static")
        .expect("qemu-aarch64-static not found (Debian package qemu-user-static)");
    link_or_copy(Path::new(&bin), &root.join("system/bin/ferry"));
    link_or_copy(&qemu, &root.join("qemu-aarch64-static"));
    use nix::sys::stat::{makedev, mknod, Mode as Perm, SFlag};
    for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        mknod(
            &root.join("dev").join(name),
            SFlag::S_IFCHR,
            Perm::from_bits_truncate(0o666),
            makedev(1, minor),
        )
        .unwrap_or_else(|e| panic!("mknod /dev/{name} in the test root: {e}"));
    }
}

fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
