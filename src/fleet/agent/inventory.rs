//! The [`Hello`] sent on every connection: what this agent is (version, ABI, Android
//! release, free space in each allowed root) and every task it holds with its phase.

use crate::config::Config;
use crate::fleet::wire::{AgentInfo, HeldTask, Hello, RootSpace};
use crate::task::manager::Manager;
use std::path::PathBuf;

/// The parts of [`AgentInfo`] that do not change while the daemon runs.
#[derive(Clone, Debug)]
pub struct Device {
    pub abi: String,
    pub android_release: String,
}

impl Device {
    /// Reads `ro.product.cpu.abi` and `ro.build.version.release` with getprop when the
    /// device has it; off Android the ABI of this build's architecture and no release.
    pub async fn probe(config: &Config) -> Device {
        let getprop = config.system_path("/system/bin/getprop");
        let abi = getprop_value(&getprop, "ro.product.cpu.abi").await;
        let release = getprop_value(&getprop, "ro.build.version.release").await;
        Device {
            abi: abi.unwrap_or_else(|| build_abi().to_string()),
            android_release: release.unwrap_or_default(),
        }
    }
}

async fn getprop_value(getprop: &std::path::Path, name: &str) -> Option<String> {
    if !getprop.exists() {
        return None;
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::process::Command::new(getprop)
            .arg(name)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !value.is_empty()).then_some(value)
}

/// Android's name for the architecture this binary was built for.
pub fn build_abi() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64-v8a",
        "arm" => "armeabi-v7a",
        "x86" => "x86",
        other => other,
    }
}

/// Free bytes (for an unprivileged writer) in each allowed root, mapped under the device
/// root; a root that cannot be measured is left out.
pub fn root_space(config: &Config) -> Vec<RootSpace> {
    config
        .allowed_roots
        .iter()
        .filter_map(|root| {
            let host = match &config.device_root {
                Some(dir) => dir.join(root.trim_start_matches('/')),
                None => PathBuf::from(root),
            };
            let st = nix::sys::statvfs::statvfs(&host).ok()?;
            Some(RootSpace {
                root: root.clone(),
                free_bytes: st.blocks_available() as u64 * st.fragment_size() as u64,
            })
        })
        .collect()
}

/// The Hello of this moment.
pub async fn hello(manager: &Manager, device: &Device, instance_id: &str) -> Hello {
    let config = manager.config();
    let roots = tokio::task::spawn_blocking(move || root_space(&config))
        .await
        .unwrap_or_default();
    Hello {
        instance_id: instance_id.to_string(),
        agent: AgentInfo {
            version: crate::api::VERSION.to_string(),
            abi: device.abi.clone(),
            android_release: device.android_release.clone(),
            roots,
        },
        held: manager
            .list()
            .into_iter()
            .map(|v| HeldTask {
                task_id: v.task_id,
                phase: v.phase,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_measured_under_the_device_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sdcard")).unwrap();
        let config = Config {
            device_root: Some(dir.path().to_path_buf()),
            allowed_roots: vec!["/sdcard".into(), "/missing".into()],
            ..Config::default()
        };
        let roots = root_space(&config);
        assert_eq!(roots.len(), 1, "{roots:?}");
        assert_eq!(roots[0].root, "/sdcard");
        assert!(roots[0].free_bytes > 0);
        assert!(!build_abi().is_empty());
    }
}
