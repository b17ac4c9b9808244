//! Daemon and client configuration: typed, with a default for every field, read from a TOML
//! file, then the environment, then command-line flags, and validated once.

mod android;
mod fleet;
mod install;
mod oss;

pub use android::{DnsConfig, LogcatConfig, MediaScanConfig, MediaScanMode, RunAs, TlsConfig};
pub use fleet::{BrokerAddr, FleetConfig};
pub use install::{InstallConfig, STREAM_INSTALL_UIDS};
pub use oss::{OssConfig, MAX_FOLDER_CONCURRENCY};

use crate::error::{Code, Error, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Android's shared-storage and scratch roots: the only places a payload may write to.
pub const ANDROID_ROOTS: &[&str] = &["/sdcard", "/storage/emulated/0", "/data/local/tmp"];

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct Config {
    /// Journal, API token, address file and unix socket live here.
    pub state_dir: PathBuf,
    /// Host folder standing in for the device's `/` (desktop use and tests); unset on a phone.
    pub device_root: Option<PathBuf>,
    /// Host folder standing in for the device's system files (`/system`, `/apex`, `/etc`,
    /// `/dev/socket`), for tests and desktop emulation; unset on a phone.
    pub system_root: Option<PathBuf>,
    /// Device paths under which payloads may write; everything else is refused.
    pub allowed_roots: Vec<String>,
    /// TCP address of the local API; loopback only. `None` disables TCP.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,
    /// Unix socket of the local API; defaults to `STATE_DIR/ferry.sock`.
    pub socket: Option<PathBuf>,
    /// How many transfers run at once; the rest wait as PENDING.
    pub max_concurrent_tasks: usize,
    /// Largest request body the API accepts, so a hostile client cannot exhaust memory.
    pub max_request_bytes: usize,
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `ferry=debug`.
    pub log_level: String,
    pub http: HttpConfig,
    pub retry: RetryConfig,
    pub prune: PruneConfig,
    /// Allow DOWNLOAD_URL, redirect and OSS endpoint hosts in link-local or cloud metadata
    /// ranges (169.254.0.0/16, 100.100.100.200, fe80::/10, fd00:ec2::/32, and IPv6 forms
    /// embedding those IPv4 addresses). Off: those addresses expose instance credentials.
    pub allow_link_local: bool,
    /// The staging file is fsync'd and the journal checkpointed after this many bytes, bounding
    /// what a power loss can cost on resume.
    pub checkpoint_bytes: u64,
    /// Download bandwidth cap of the whole daemon in KiB/s, shared by every connection of
    /// every transfer (phones on one host share its network); 0 = unlimited.
    pub bandwidth_limit_kib: u64,
    pub transfer: TransferConfig,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub logcat: LogcatConfig,
    pub media_scan: MediaScanConfig,
    pub oss: OssConfig,
    pub install: InstallConfig,
    /// Identity to switch to once sockets are bound; unset keeps the starting user.
    pub run_as: Option<RunAs>,
    /// The link to a `ferry-controller` over MQTT; absent = none (local API only).
    pub fleet: Option<FleetConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub connect_timeout_secs: u64,
    /// A body that delivers no byte for this long is treated as a dead connection and retried.
    pub read_idle_timeout_secs: u64,
    pub max_redirects: usize,
    pub user_agent: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Total time one transfer may spend retrying before it fails.
    pub budget_secs: u64,
}

/// Parallel ranged transfers of large objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// Ranged requests in flight at once for one large object; 1 turns parallel transfers off.
    pub connections: usize,
    /// Bytes per part (in MiB): the unit that is requested, retried and resumed on its own.
    pub part_size_mib: u64,
    /// Objects smaller than this (in MiB) go as one stream: for them more connections cost
    /// more than they bring.
    pub parallel_min_size_mib: u64,
    /// A large object starts on one connection. One that brings less than this (MiB/s,
    /// measured over 250 ms) opens all `connections` at once; a faster one doubles them
    /// while each step brings 1.25× the speed, and takes back a step that does not. 0 opens
    /// them all at once. The default, 128 (about 1 Gbit/s), keeps one connection only where it
    /// already comes close to what a phone's storage takes.
    pub split_below_mib_s: u64,
    /// A transfer whose speed over all its connections stays below this many bytes/s for
    /// `low_speed_time_secs` fails with `Network.TooSlow` (curl's `--speed-limit`), so a source
    /// dripping a byte now and then cannot hold a task slot for ever; 0 turns it off. A part
    /// connection slower than its share (this / connections) is asked again.
    pub low_speed_limit_bytes_s: u64,
    /// The window of `low_speed_limit_bytes_s`, in seconds (curl's `--speed-time`).
    pub low_speed_time_secs: u64,
    /// The most one transfer may take, retries included, before it fails with
    /// `Transfer.DeadlineExceeded` (partial data kept for a re-submit); 0 = no deadline.
    pub deadline_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneConfig {
    /// Finished task records older than this are deleted.
    pub max_age_hours: u64,
    /// At most this many finished records are kept (newest first).
    pub max_finished: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: default_state_dir(&|k| std::env::var(k).ok()),
            device_root: None,
            allowed_roots: ANDROID_ROOTS.iter().map(|s| s.to_string()).collect(),
            listen: Some(DEFAULT_LISTEN.parse().expect("valid default address")),
            socket: None,
            max_concurrent_tasks: 2,
            max_request_bytes: 64 * 1024,
            log_format: LogFormat::Human,
            log_level: "info".into(),
            http: HttpConfig::default(),
            retry: RetryConfig::default(),
            prune: PruneConfig::default(),
            allow_link_local: false,
            checkpoint_bytes: 64 << 20,
            bandwidth_limit_kib: 0,
            transfer: TransferConfig::default(),
            system_root: None,
            dns: DnsConfig::default(),
            tls: TlsConfig::default(),
            logcat: LogcatConfig::default(),
            media_scan: MediaScanConfig::default(),
            oss: OssConfig::default(),
            install: InstallConfig::default(),
            run_as: None,
            fleet: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_secs: 10,
            read_idle_timeout_secs: 30,
            max_redirects: 10,
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 10,
            initial_backoff_ms: 250,
            max_backoff_ms: 30_000,
            budget_secs: 600,
        }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            connections: 8,
            part_size_mib: 8,
            parallel_min_size_mib: 16,
            split_below_mib_s: 128,
            low_speed_limit_bytes_s: 1024,
            low_speed_time_secs: 60,
            deadline_secs: 0,
        }
    }
}

impl TransferConfig {
    pub fn part_size(&self) -> u64 {
        self.part_size_mib << 20
    }

    /// Whether an object of `size` bytes is worth fetching in parts.
    pub fn goes_parallel(&self, size: u64) -> bool {
        self.connections > 1 && size > self.part_size() && size >= self.parallel_min_size_mib << 20
    }
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            max_age_hours: 7 * 24,
            max_finished: 1000,
        }
    }
}

impl HttpConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn read_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.read_idle_timeout_secs)
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub device_root: Option<PathBuf>,
    pub system_root: Option<PathBuf>,
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub max_concurrent_tasks: Option<usize>,
    pub connections: Option<usize>,
    pub bandwidth_limit_kib: Option<u64>,
}

/// Android keeps agent state under /data/local; elsewhere follow the XDG base directories.
fn default_state_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if Path::new("/data/local").is_dir() && Path::new("/system").is_dir() {
        return PathBuf::from("/data/local/ferry");
    }
    if let Some(dir) = env("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    if let Some(home) = env("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/ferry");
    }
    PathBuf::from("/data/local/ferry")
}

impl Config {
    /// File (if any), then `FERRY_*` environment variables, then flags; then validation.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("reading config file", path, &e))?;
                toml::from_str::<Config>(&text).map_err(|e| {
                    Error::new(
                        Code::InvalidConfig,
                        format!("config file {}: {e}", path.display()),
                    )
                })?
            }
            None => Config {
                state_dir: default_state_dir(env),
                ..Config::default()
            },
        };
        if let Some(v) = env("FERRY_STATE_DIR") {
            config.state_dir = v.into();
        }
        if let Some(v) = env("FERRY_DEVICE_ROOT") {
            config.device_root = Some(v.into());
        }
        if let Some(v) = env("FERRY_SYSTEM_ROOT") {
            config.system_root = Some(v.into());
        }
        if let Some(v) = env("FERRY_LISTEN") {
            config.listen = parse_listen(&v)?;
        }
        if let Some(v) = env("FERRY_LOG") {
            config.log_level = v;
        }
        if let Some(v) = env("FERRY_CONNECTIONS") {
            config.transfer.connections = parse_number("FERRY_CONNECTIONS", &v)?;
        }
        if let Some(v) = env("FERRY_BANDWIDTH_LIMIT_KIB") {
            config.bandwidth_limit_kib = parse_number("FERRY_BANDWIDTH_LIMIT_KIB", &v)?;
        }
        if let Some(v) = &flags.state_dir {
            config.state_dir = v.clone();
        }
        if let Some(v) = &flags.device_root {
            config.device_root = Some(v.clone());
        }
        if let Some(v) = &flags.system_root {
            config.system_root = Some(v.clone());
        }
        if let Some(v) = &flags.listen {
            config.listen = parse_listen(v)?;
        }
        if let Some(v) = &flags.socket {
            config.socket = Some(v.clone());
        }
        if let Some(v) = flags.log_format {
            config.log_format = v;
        }
        if let Some(v) = &flags.log_level {
            config.log_level = v.clone();
        }
        if let Some(v) = flags.max_concurrent_tasks {
            config.max_concurrent_tasks = v;
        }
        if let Some(v) = flags.connections {
            config.transfer.connections = v;
        }
        if let Some(v) = flags.bandwidth_limit_kib {
            config.bandwidth_limit_kib = v;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(Code::InvalidConfig, msg));
        if !self.state_dir.is_absolute() {
            return bad(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        if let Some(root) = &self.device_root {
            if !root.is_absolute() {
                return bad(format!(
                    "device_root {} must be an absolute path",
                    root.display()
                ));
            }
        }
        if self.allowed_roots.is_empty() {
            return bad("allowed_roots is empty: ferry could write nowhere".into());
        }
        for root in &self.allowed_roots {
            if !root.starts_with('/') || root.split('/').any(|c| c == ".." || c == ".") {
                return bad(format!(
                    "allowed root {root:?} must be an absolute path without . or .."
                ));
            }
        }
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() {
                return bad(format!(
                    "listen address {addr} is not loopback: the API must not be reachable from the network"
                ));
            }
        }
        if self.max_concurrent_tasks == 0 {
            return bad("max_concurrent_tasks must be at least 1".into());
        }
        if !(1..=1000).contains(&self.oss.list_page_size) {
            return bad("oss.list_page_size must be between 1 and 1000".into());
        }
        if !(1..=oss::MAX_FOLDER_CONCURRENCY).contains(&self.oss.folder_concurrency) {
            return bad(format!(
                "oss.folder_concurrency must be between 1 and {}",
                oss::MAX_FOLDER_CONCURRENCY
            ));
        }
        if self.oss.access_key_id.is_some() != self.oss.access_key_secret.is_some() {
            return bad("oss.access_key_id and oss.access_key_secret go together".into());
        }
        if let Some(problem) = self.install.problem() {
            return bad(problem);
        }
        if let Some(problem) = self.install_identity_problem(self.run_as.as_ref()) {
            return bad(problem);
        }
        if let Some(problem) = self.fleet.as_ref().and_then(FleetConfig::problem) {
            return bad(problem);
        }
        if self.http.max_redirects > 10 {
            return bad("http.max_redirects may be at most 10".into());
        }
        if self.http.connect_timeout_secs == 0 || self.http.read_idle_timeout_secs == 0 {
            return bad("http timeouts must be at least 1 second".into());
        }
        if !(1..=64).contains(&self.transfer.connections) {
            return bad("transfer.connections must be between 1 and 64".into());
        }
        if !(1..=1024).contains(&self.transfer.part_size_mib) {
            return bad("transfer.part_size_mib must be between 1 and 1024".into());
        }
        if self.transfer.split_below_mib_s > 1 << 20 {
            return bad("transfer.split_below_mib_s must be at most 1048576 (MiB/s; 0 opens every connection at once)".into());
        }
        if self.transfer.low_speed_limit_bytes_s > 1 << 40 {
            return bad("transfer.low_speed_limit_bytes_s must be at most 1099511627776 (bytes/s; 0 turns the check off)".into());
        }
        if !(1..=86_400).contains(&self.transfer.low_speed_time_secs) {
            return bad("transfer.low_speed_time_secs must be between 1 and 86400".into());
        }
        if self.transfer.deadline_secs > 366 * 86_400 {
            return bad(
                "transfer.deadline_secs must be at most 31622400 (a year; 0 = no deadline)".into(),
            );
        }
        Ok(())
    }

    /// Why AutoInstall, when enabled here, cannot work in a daemon that switched to `run_as`
    /// (`None`: the starting identity). Checked at load, and on reload against the `run_as`
    /// in effect, since a new `run_as` only applies at the next start.
    pub fn install_identity_problem(&self, run_as: Option<&RunAs>) -> Option<String> {
        let uid = run_as?.uid;
        if self.install.enabled {
            install::uid_problem(uid)
        } else {
            None
        }
    }

    /// Where a device system path (`/system/etc/hosts`) is on this machine.
    pub fn system_path(&self, device_path: &str) -> PathBuf {
        match &self.system_root {
            Some(root) => root.join(device_path.trim_start_matches('/')),
            None => PathBuf::from(device_path),
        }
    }

    /// The unix socket path, defaulting into the state directory.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ferry.sock"))
    }
}

/// A whole number from the environment.
fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        Error::new(
            Code::InvalidConfig,
            format!("{name}={value:?} is not a whole number"),
        )
    })
}

/// The file form of `listen`: the same words as the flag, `"off"` included.
fn deserialize_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    match text {
        None => Ok(None),
        Some(t) => parse_listen(&t).map_err(|e| serde::de::Error::custom(e.message)),
    }
}

/// `off` disables the TCP listener; anything else must be a loopback `IP:PORT`.
fn parse_listen(value: &str) -> Result<Option<SocketAddr>> {
    if value == "off" || value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        Error::new(
            Code::InvalidConfig,
            format!(
                "listen address {value:?} is not IP:PORT (for example {DEFAULT_LISTEN}) or \"off\""
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_validate() {
        let c = Config::load(None, &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.allowed_roots.len(), 3);
        assert_eq!(c.listen.unwrap().to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(
            &file,
            "state_dir = \"/a\"\nmax_concurrent_tasks = 5\n[retry]\nmax_retries = 3\n",
        )
        .unwrap();
        let env = |k: &str| (k == "FERRY_STATE_DIR").then(|| "/b".to_string());
        let c = Config::load(Some(&file), &env, &Overrides::default()).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/b"));
        assert_eq!(c.max_concurrent_tasks, 5);
        assert_eq!(c.retry.max_retries, 3);
        let flags = Overrides {
            state_dir: Some("/c".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &env, &flags).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/c"));
    }

    #[test]
    fn transfer_settings_and_the_bandwidth_cap() {
        let c = Config::load(None, &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.transfer.connections, 8);
        assert_eq!(c.transfer.part_size(), 8 << 20);
        assert_eq!(c.bandwidth_limit_kib, 0);
        let t = &c.transfer;
        let slow = (
            t.low_speed_limit_bytes_s,
            t.low_speed_time_secs,
            t.deadline_secs,
        );
        assert_eq!(
            slow,
            (1024, 60, 0),
            "curl-like low-speed limit, no deadline"
        );
        assert!(!c.transfer.goes_parallel((16 << 20) - 1));
        assert!(c.transfer.goes_parallel(16 << 20));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(
            &file,
            "bandwidth_limit_kib = 512\n[transfer]\nconnections = 4\npart_size_mib = 2\nparallel_min_size_mib = 0\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.bandwidth_limit_kib, 512);
        assert_eq!(c.transfer.connections, 4);
        assert!(!c.transfer.goes_parallel(2 << 20), "one part is one stream");
        assert!(c.transfer.goes_parallel((2 << 20) + 1));
        let env = |k: &str| match k {
            "FERRY_CONNECTIONS" => Some("2".to_string()),
            "FERRY_BANDWIDTH_LIMIT_KIB" => Some("64".to_string()),
            _ => None,
        };
        let flags = Overrides {
            connections: Some(1),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &env, &flags).unwrap();
        assert_eq!((c.transfer.connections, c.bandwidth_limit_kib), (1, 64));
        assert!(
            !c.transfer.goes_parallel(1 << 30),
            "one connection never splits"
        );
        let bad_env = |k: &str| (k == "FERRY_CONNECTIONS").then(|| "many".to_string());
        let err = Config::load(None, &bad_env, &Overrides::default()).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        std::fs::write(&file, "[transfer]\nconnections = 0\n").unwrap();
        let err = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap_err();
        assert!(err.message.contains("connections"), "{}", err.message);
        for bad in [
            "low_speed_time_secs = 0",
            "low_speed_time_secs = 86401",
            "low_speed_limit_bytes_s = 99999999999999",
            "deadline_secs = 99999999999",
        ] {
            std::fs::write(&file, format!("[transfer]\n{bad}\n")).unwrap();
            let err = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap_err();
            let key = bad.split(' ').next().unwrap();
            assert!(err.message.contains(key), "{bad}: {}", err.message);
        }
        std::fs::write(&file, "[transfer]\nsplit_below_mib_s = 99999999999999\n").unwrap();
        let err = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.message.contains("split_below_mib_s"), "{}", err.message);
    }

    #[test]
    fn listen_off_works_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(&file, "listen = \"off\"\n").unwrap();
        let c = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.listen, None);
        std::fs::write(&file, "listen = \"127.0.0.1:9\"\n").unwrap();
        let c = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap();
        assert_eq!(c.listen.unwrap().port(), 9);
    }

    #[test]
    fn refuses_public_listen_and_unknown_keys() {
        let flags = Overrides {
            listen: Some("0.0.0.0:7070".into()),
            ..Default::default()
        };
        let err = Config::load(None, &no_env, &flags).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        std::fs::write(&file, "max_conccurent = 1\n").unwrap();
        let err = Config::load(Some(&file), &no_env, &Overrides::default()).unwrap_err();
        assert!(err.message.contains("max_conccurent"), "{}", err.message);
    }

    #[test]
    fn run_as_uid_that_pm_refuses_streamed_installs_is_refused_while_autoinstall_is_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ferry.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(Some(&file), &no_env, &Overrides::default())
        };
        for uid in [1, 1001, 3003, 10_123, 65534] {
            let err = load(&format!("run_as = {{ uid = {uid}, gid = {uid} }}\n")).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig);
            for part in [
                format!("run_as uid {uid} cannot run AutoInstall"),
                "uid 0 (root), 1000 (system) or 2000 (shell)".into(),
                "install.enabled = false".into(),
            ] {
                assert!(err.message.contains(&part), "{}", err.message);
            }
            let off = load(&format!(
                "run_as = {{ uid = {uid}, gid = {uid} }}\n[install]\nenabled = false\n"
            ));
            assert!(!off.unwrap().install.enabled);
        }
        for uid in STREAM_INSTALL_UIDS {
            load(&format!("run_as = {{ uid = {uid}, gid = {uid} }}\n")).unwrap();
        }
        // Without run_as the starting identity (ferry.rc: root) is kept.
        load("[install]\nenabled = true\n").unwrap();
    }

    #[test]
    fn reload_checks_autoinstall_against_the_run_as_in_effect() {
        let running = RunAs {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        // A new file that is valid alone (run_as root) still cannot turn AutoInstall on in
        // a daemon that already runs as 65534: run_as applies at the next start.
        let new = Config {
            run_as: Some(RunAs {
                uid: 0,
                gid: 0,
                groups: vec![],
            }),
            ..Config::default()
        };
        assert!(new.validate().is_ok());
        let problem = new.install_identity_problem(Some(&running)).unwrap();
        assert!(problem.contains("run_as uid 65534"), "{problem}");
        let mut off = new.clone();
        off.install.enabled = false;
        assert_eq!(off.install_identity_problem(Some(&running)), None);
        assert_eq!(new.install_identity_problem(None), None);
    }
}
