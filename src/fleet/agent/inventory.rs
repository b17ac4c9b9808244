//! The [`Hello`] sent on every connection: what this agent is (version, ABI, Android
//! release, free space in each allowed root) and every task it holds with its phase.

use super::host::TaskHost;
use crate::config::Config;
use crate::fleet::wire::{AgentInfo, HeldTask, Hello, RootSpace};
use std::path::PathBuf;

/// The parts of [`AgentInfo`] that do not change while the daemon runs.
#[derive(Clone, Debug)]
pub struct Device {
    pub abi: String,
    pub android_release: String,
}

impl Device {
    /// The ABI this binary runs as (a static build for one architecture), and
    /// `ro.build.version.release` from `/system/build.prop`, a system file ferry may read
    /// already: no `getprop` process, so no exec of toolbox and no property reads to grant
    /// in SELinux. Off Android the release is empty.
    pub async fn probe(config: &Config) -> Device {
        let build_prop = config.system_path("/system/build.prop");
        let release = tokio::task::spawn_blocking(move || {
            std::fs::read_to_string(build_prop)
                .ok()
                .and_then(|text| prop_value(&text, "ro.build.version.release"))
        })
        .await
        .ok()
        .flatten();
        Device {
            abi: build_abi().to_string(),
            android_release: release.unwrap_or_default(),
        }
    }
}

/// The value of `name` in a build.prop text (`name=value` lines, `#` comments), if set.
fn prop_value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
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
pub async fn hello<T: TaskHost>(manager: &T, device: &Device, instance_id: &str) -> Hello {
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
    fn the_release_is_read_from_build_prop() {
        let text = "# begin build properties\nro.build.id=UP1A\nro.build.version.release=14\n#ro.build.version.release=99\n";
        assert_eq!(
            prop_value(text, "ro.build.version.release").as_deref(),
            Some("14")
        );
        assert_eq!(prop_value(text, "ro.build.version.sdk"), None);
        assert_eq!(
            prop_value("ro.build.version.release=\n", "ro.build.version.release"),
            None
        );
    }

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
