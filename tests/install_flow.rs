//! The install step on its own (`ferry::install::install`), fed the files a transfer lands,
//! mostly in the shape of an OSS folder send (several landed files): the refusals are cheaper
//! to cover here than through S3 (`tests/android_install_oss.rs` drives the same path end to
//! end). Real APK fixtures, the busybox `pm` stand-in.

mod install_support;

use ferry::config::Config;
use ferry::error::Code;
use ferry::install::{self, InstallLock};
use ferry::paths::{DevicePath, Roots};
use ferry::pipeline::Landed;
use install_support::{fixture, sha256_hex, PmStandIn};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct Device {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    config: Config,
    pm: PmStandIn,
}

impl Device {
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sdcard/Download")).unwrap();
        let pm = PmStandIn::install(&root, &|p| root.join(p.trim_start_matches('/')));
        let mut config = Config {
            state_dir: root.join("data/local/ferry"),
            device_root: Some(root.clone()),
            system_root: Some(root.clone()),
            ..Config::default()
        };
        config.install.pm_command = "/system/bin/pm".into();
        Device {
            _dir: dir,
            root,
            config,
            pm,
        }
    }

    /// Puts a file where a transfer would have landed it; returns it as the transfer would.
    fn landed(&self, device_path: &str, body: &[u8]) -> Landed {
        let host = self.root.join(device_path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(host, body).unwrap();
        let path = DevicePath::parse(device_path).unwrap();
        let roots =
            Roots::new(self.config.device_root.clone(), &self.config.allowed_roots).unwrap();
        Landed {
            dir: Arc::new(roots.open_dir(&path.parent(), false).unwrap()),
            name: path.file_name().unwrap().into(),
            size: body.len() as u64,
            sha256: sha256_hex(body),
            content_encoding: None,
        }
    }

    async fn install(&self, files: &[Landed]) -> ferry::task::record::InstallResult {
        let lock = InstallLock::new(());
        install::install(&self.config, "t-1", files, &lock, &CancellationToken::new())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn an_oss_folder_of_splits_installs_as_one_session_base_first() {
    let d = Device::new();
    // Listing order puts the split first; the session must still start with the base.
    let files = [
        d.landed(
            "/sdcard/Download/app/a-config.fr.apk",
            &fixture("split-config.fr.apk"),
        ),
        d.landed(
            "/sdcard/Download/app/b-base.apk",
            &fixture("split-base.apk"),
        ),
        d.landed("/sdcard/Download/app/README.txt", b"notes"),
    ];
    let result = d.install(&files).await;
    assert_eq!(result.error_code, None, "{result:?}");
    assert_eq!(result.package.as_deref(), Some("com.ferry.fixture.split"));
    assert_eq!(result.apks, ["base.apk", "split_config.fr.apk"]);
    assert!(
        result.message.contains("/sdcard/Download/app/README.txt"),
        "{}",
        result.message
    );
    let calls = d.pm.calls();
    assert!(calls.starts_with("install-create -r -S 17072\n"), "{calls}");
    assert_eq!(
        d.pm.packages(),
        "com.ferry.fixture.split 3 base.apk,split_config.fr.apk\n"
    );
}

#[tokio::test]
async fn a_folder_with_two_apps_or_only_splits_is_refused_before_pm() {
    let d = Device::new();
    let two_apps = [
        d.landed("/sdcard/Download/x/one.apk", &fixture("fixture.apk")),
        d.landed("/sdcard/Download/x/two.apk", &fixture("split-base.apk")),
    ];
    let result = d.install(&two_apps).await;
    assert_eq!(result.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(result.message.contains("2 base APKs"), "{}", result.message);
    let no_base = [
        d.landed("/sdcard/Download/y/fr.apk", &fixture("split-config.fr.apk")),
        d.landed("/sdcard/Download/y/notes.txt", b"x"),
    ];
    let result = d.install(&no_base).await;
    assert_eq!(result.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(result.message.contains("no base APK"), "{}", result.message);
    let none = [
        d.landed("/sdcard/Download/z/a.txt", b"a"),
        d.landed("/sdcard/Download/z/b.bin", b"b"),
    ];
    let result = d.install(&none).await;
    assert_eq!(result.error_code, Some(Code::InstallNotAnApk.into()));
    assert_eq!(d.pm.calls(), "");
}

#[tokio::test]
async fn a_file_changed_after_its_transfer_is_not_installed() {
    let d = Device::new();
    let landed = d.landed("/sdcard/Download/app.apk", &fixture("fixture.apk"));
    // Someone replaces the file between the transfer's verification and the install.
    d.landed("/sdcard/Download/app.apk", &fixture("fixture-v8.apk"));
    let result = d.install(&[landed]).await;
    assert_eq!(result.error_code, Some(Code::IntegritySourceChanged.into()));
    assert!(
        result.message.contains("changed after it was verified"),
        "{}",
        result.message
    );
    assert_eq!(d.pm.calls(), "");
}

#[tokio::test]
async fn a_lone_split_is_refused_and_a_missing_pm_reported() {
    let d = Device::new();
    let split = d.landed("/sdcard/Download/fr.apk", &fixture("split-config.fr.apk"));
    let result = d.install(&[split]).await;
    assert_eq!(result.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(result.message.contains("config.fr"), "{}", result.message);

    let mut d = Device::new();
    d.config.install.pm_command = "/system/bin/no-such-pm".into();
    let apk = d.landed("/sdcard/Download/a.apk", &fixture("fixture.apk"));
    let result = d.install(&[apk]).await;
    assert_eq!(result.error_code, Some(Code::InstallPmFailed.into()));
    assert!(result.message.contains("not found"), "{}", result.message);
    assert_eq!(result.package.as_deref(), Some("com.ferry.fixture"));
}

#[tokio::test]
async fn an_apk_declaring_more_entries_than_the_cap_is_refused_before_its_directory_is_read() {
    let d = Device::new();
    // 100,000 entries (5.4 MB): before the cap the zip reader held all of them (a million
    // took the daemon from 11 to 224 MB).
    let apk = d.landed(
        "/sdcard/Download/many.apk",
        &install_support::zip_with_empty_entries(100_000),
    );
    let result = d.install(&[apk]).await;
    assert_eq!(result.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(
        result
            .message
            .contains("declares 100000 zip entries, more than install.max_apk_entries (65535)"),
        "{}",
        result.message
    );
    assert_eq!(d.pm.calls(), "");
}

#[tokio::test]
async fn a_bundle_bomb_is_refused_with_the_limit_named() {
    let d = Device::new();
    let zeros = vec![0u8; 30 << 20];
    let bomb = install_support::zip_of(&[
        ("splits/base-master.apk", &zeros),
        ("splits/base-fr.apk", &zeros),
    ]);
    assert!(bomb.len() < 100 << 10, "{}", bomb.len());
    let landed = d.landed("/sdcard/Download/bomb.apks", &bomb);
    let result = d.install(&[landed]).await;
    assert_eq!(result.error_code, Some(Code::InstallInvalidApk.into()));
    assert!(
        result.message.contains("more than 100 to 1"),
        "{}",
        result.message
    );
    let install_dir = d.config.state_dir.join("install");
    let left: Vec<_> = std::fs::read_dir(&install_dir)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(d.pm.calls(), "");
}
