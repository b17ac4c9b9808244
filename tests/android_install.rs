//! AutoInstall on the real binary over DOWNLOAD_URL: real, signed APKs and bundles
//! (`scripts/lib/apk-fixtures.sh`) installed through a stand-in for Android's `pm`
//! (`tests/fixtures/pm-stand-in.sh`: pm's output formats and exit statuses, a state file of
//! installed packages and open sessions, failures on demand). Runs natively and, with
//! `FERRY_TEST_CHROOT=1`, on the aarch64 build in the Android-like chroot.

mod cli_support;
mod common;
mod install_support;

use cli_support::{Daemon, Target};
use common::http_server::{Resource, TestServer};
use install_support::{alive, fixture, sha256_hex, zip_of, PmStandIn};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A phone with the pm stand-in, a daemon configured for it, and a file server.
struct Phone {
    pm: PmStandIn,
    daemon: Daemon,
    files: TestServer,
}

impl Phone {
    /// `extra` is more of the `[install]` table (`timeout_secs = 2`).
    fn new(extra: &str) -> Phone {
        let t = Target::new();
        let pm = PmStandIn::install(t.root(), &|p| t.arg(p));
        let toml = format!(
            "max_concurrent_tasks = 1\n[media_scan]\nmode = \"off\"\n\
             [install]\npm_command = \"/system/bin/pm\"\n{extra}\n"
        );
        t.write("/data/local/ferry.toml", toml);
        let flag = t.arg("/data/local/ferry.toml").display().to_string();
        let daemon = t.daemon(&["--config", &flag]);
        Phone {
            pm,
            daemon,
            files: TestServer::start_blocking(),
        }
    }

    fn target(&self) -> &Target {
        &self.daemon.target
    }

    /// Serves `body`, sends it to `device_path` with AutoInstall, waits for the end.
    fn send(&self, id: &str, body: Vec<u8>, device_path: &str) -> Value {
        self.start(id, body, device_path);
        self.daemon.wait_phase(
            id,
            &["SUCCESS", "FAILED", "CANCELLED"],
            Duration::from_secs(60),
        )
    }

    fn start(&self, id: &str, body: Vec<u8>, device_path: &str) {
        let url_path = format!("/{id}.bin");
        self.files.put(&url_path, Resource::new(body));
        let payload = json!({
            "TaskId": id,
            "UploadType": "DOWNLOAD_URL",
            "UploadUrl": self.files.url(&url_path),
            "SourceFilePath": device_path,
            "AutoInstall": true,
        });
        let body = payload.to_string();
        let (status, view) = self.daemon.request(
            "POST",
            "/v1/tasks",
            Some(&self.daemon.token),
            Some(body.as_bytes()),
        );
        assert_eq!(status, 201, "{view}");
    }

    fn on_device(&self, device_path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.target().host(device_path)).ok()
    }

    /// The unpack folders in the state directory (all gone after each install).
    fn work_dirs(&self) -> Vec<String> {
        let dir = self.target().host("/data/local/ferry/install");
        match std::fs::read_dir(dir) {
            Ok(d) => d
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn install_of(view: &Value) -> &Value {
    &view["Result"]["Install"]
}

#[test]
fn a_single_apk_is_streamed_into_pm_install_and_reported() {
    let phone = Phone::new("");
    let apk = fixture("fixture.apk");
    let view = phone.send("t-single", apk.clone(), "/sdcard/Download/fixture.apk");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(view["ErrorCode"], Value::Null, "{view}");
    let install = install_of(&view);
    assert_eq!(install["ErrorCode"], Value::Null, "{view}");
    assert_eq!(install["Package"], "com.ferry.fixture");
    assert_eq!(install["VersionCode"], 7);
    assert_eq!(install["VersionName"], "1.2.3");
    assert_eq!(install["PmOutput"], "Success");
    assert_eq!(install["Apks"], json!(["base.apk"]));
    // Streamed on stdin with the configured flag and the exact size; no path for pm to open.
    assert_eq!(
        phone.pm.calls(),
        format!("install -r -S {}\n", apk.len()),
        "{view}"
    );
    assert_eq!(phone.pm.packages(), "com.ferry.fixture 7 base.apk\n");
    assert_eq!(phone.on_device("/sdcard/Download/fixture.apk"), Some(apk));

    // An upgrade replaces it; installing the older one again is pm's downgrade refusal,
    // which fails the task with pm's reason and leaves the file in place.
    let view = phone.send("t-v8", fixture("fixture-v8.apk"), "/sdcard/Download/v8.apk");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(phone.pm.packages(), "com.ferry.fixture 8 base.apk\n");
    let view = phone.send("t-down", fixture("fixture.apk"), "/sdcard/Download/v7.apk");
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["TaskStatus"], "Failed");
    assert_eq!(
        view["ErrorCode"],
        "Install.INSTALL_FAILED_VERSION_DOWNGRADE"
    );
    let msg = view["ErrorMsg"].as_str().unwrap();
    assert!(
        msg.contains("Update version code 7 is older than current 8"),
        "{msg}"
    );
    assert_eq!(
        install_of(&view)["ErrorCode"],
        "Install.INSTALL_FAILED_VERSION_DOWNGRADE"
    );
    assert_eq!(
        view["Result"]["Files"][0]["Path"],
        "/sdcard/Download/v7.apk"
    );
    assert!(phone.on_device("/sdcard/Download/v7.apk").is_some());
}

#[test]
fn apks_and_zip_bundles_install_as_one_session() {
    let phone = Phone::new("");
    for (id, name) in [("t-apks", "split.apks"), ("t-zip", "splits.zip")] {
        phone.pm.clear_calls();
        let view = phone.send(id, fixture(name), &format!("/sdcard/Download/{name}"));
        assert_eq!(view["Phase"], "SUCCESS", "{name}: {view}");
        let install = install_of(&view);
        assert_eq!(install["Package"], "com.ferry.fixture.split", "{view}");
        assert_eq!(install["VersionCode"], 3);
        assert_eq!(install["Apks"], json!(["base.apk", "split_config.fr.apk"]));
        let calls = phone.pm.calls();
        let lines: Vec<&str> = calls.lines().collect();
        let size = fixture("split-base.apk").len();
        let split = fixture("split-config.fr.apk").len();
        assert_eq!(lines.len(), 4, "{calls}");
        assert_eq!(lines[0], format!("install-create -r -S {}", size + split));
        let id = lines[1].split(' ').nth(3).unwrap();
        assert_eq!(lines[1], format!("install-write -S {size} {id} base.apk -"));
        assert_eq!(
            lines[2],
            format!("install-write -S {split} {id} split_config.fr.apk -")
        );
        assert_eq!(lines[3], format!("install-commit {id}"));
        assert_eq!(
            phone.pm.packages(),
            "com.ferry.fixture.split 3 base.apk,split_config.fr.apk\n"
        );
        assert!(phone.pm.open_sessions().is_empty());
        assert!(phone.work_dirs().is_empty(), "{:?}", phone.work_dirs());
    }
}

#[test]
fn an_xapk_installs_and_its_obb_lands_in_the_apps_obb_folder() {
    let phone = Phone::new("");
    let view = phone.send(
        "t-xapk",
        fixture("split.xapk"),
        "/sdcard/Download/game.xapk",
    );
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    let obb = "/sdcard/Android/obb/com.ferry.fixture.split/main.3.com.ferry.fixture.split.obb";
    assert_eq!(install_of(&view)["ObbFiles"], json!([obb]), "{view}");
    assert_eq!(phone.on_device(obb), Some(fixture("obb.bin")));
    assert!(phone
        .pm
        .packages()
        .starts_with("com.ferry.fixture.split 3 "));
    assert!(phone.work_dirs().is_empty());
}

#[test]
fn bad_archives_are_refused_before_pm_and_non_apks_only_noted() {
    let phone = Phone::new("max_bundle_bytes = 1048576");
    let apk = fixture("fixture.apk");
    let manifest_only = zip_of(&[("classes.dex", b"dex\n035")]);
    let slip = zip_of(&[
        ("splits/base-master.apk", &apk),
        ("../../../system/app/evil.apk", &apk),
    ]);
    let zeros = vec![0u8; 8 << 20];
    let bomb = zip_of(&[("splits/base-master.apk", &zeros)]);
    let cases: [(&str, Vec<u8>, &str, &str); 4] = [
        (
            "t-corrupt",
            apk[..apk.len() / 2].to_vec(),
            "broken.apk",
            "not a zip",
        ),
        (
            "t-nomanifest",
            manifest_only,
            "nomanifest.apk",
            "no AndroidManifest.xml",
        ),
        ("t-slip", slip, "slip.apks", "unsafe name"),
        ("t-bomb", bomb, "bomb.apks", "max_bundle_bytes"),
    ];
    for (id, body, name, why) in cases {
        let path = format!("/sdcard/Download/{name}");
        let view = phone.send(id, body.clone(), &path);
        assert_eq!(view["Phase"], "FAILED", "{id}: {view}");
        assert_eq!(view["ErrorCode"], "Install.InvalidApk", "{id}: {view}");
        let msg = view["ErrorMsg"].as_str().unwrap();
        assert!(msg.contains(why), "{id}: {msg}");
        assert_eq!(
            phone.on_device(&path),
            Some(body),
            "{id}: the file must stay"
        );
    }
    assert!(!phone.target().host("/system/app/evil.apk").exists());
    assert!(phone.work_dirs().is_empty(), "{:?}", phone.work_dirs());

    // Not an APK at all: the transfer succeeds, the install result says why nothing ran.
    let view = phone.send(
        "t-text",
        b"release notes\n".to_vec(),
        "/sdcard/Download/notes.txt",
    );
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(view["ErrorCode"], Value::Null);
    assert_eq!(install_of(&view)["ErrorCode"], "Install.NotAnApk", "{view}");
    assert_eq!(phone.pm.calls(), "", "pm must not run for any of these");
}

#[test]
fn pm_failure_reasons_become_install_codes() {
    let phone = Phone::new("");
    let cases = [
        (
            "install INSTALL_FAILED_NO_MATCHING_ABIS",
            "Install.INSTALL_FAILED_NO_MATCHING_ABIS",
            "Failed to extract native libraries",
        ),
        (
            "install INSTALL_FAILED_INSUFFICIENT_STORAGE",
            "Install.INSTALL_FAILED_INSUFFICIENT_STORAGE",
            "INSUFFICIENT_STORAGE",
        ),
        (
            "install INSTALL_FAILED_VERSION_DOWNGRADE",
            "Install.INSTALL_FAILED_VERSION_DOWNGRADE",
            "Downgrade detected",
        ),
        (
            "install-commit INSTALL_FAILED_NO_MATCHING_ABIS",
            "Install.INSTALL_FAILED_NO_MATCHING_ABIS",
            "res=-113",
        ),
    ];
    for (n, (rule, code, text)) in cases.iter().enumerate() {
        phone.pm.fail(rule);
        // `install …` rules hit the single APK, `install-commit …` the session.
        let (body, name) = if rule.starts_with("install ") {
            (fixture("fixture.apk"), "a.apk")
        } else {
            (fixture("split.apks"), "a.apks")
        };
        let id = format!("t-fail-{n}");
        let view = phone.send(&id, body, &format!("/sdcard/Download/{n}-{name}"));
        assert_eq!(view["Phase"], "FAILED", "{rule}: {view}");
        assert_eq!(view["ErrorCode"], *code, "{rule}: {view}");
        let pm_output = install_of(&view)["PmOutput"].as_str().unwrap_or_default();
        assert!(
            pm_output.starts_with("Failure [") && pm_output.contains(text),
            "{view}"
        );
        assert!(phone.pm.open_sessions().is_empty(), "{rule}");
    }
    assert_eq!(phone.pm.packages(), "");
}

#[test]
fn a_failing_split_write_abandons_the_session() {
    let phone = Phone::new("");
    phone.pm.fail("install-write enospc");
    let view = phone.send("t-enospc", fixture("split.apks"), "/sdcard/Download/s.apks");
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["ErrorCode"], "Install.PmFailed", "{view}");
    let msg = view["ErrorMsg"].as_str().unwrap();
    assert!(
        msg.contains("Error: failed to write; No space left on device"),
        "{msg}"
    );
    let calls = phone.pm.calls();
    let id = calls.lines().nth(1).unwrap().split(' ').nth(3).unwrap();
    assert!(
        calls.ends_with(&format!("install-abandon {id}\n")),
        "{calls}"
    );
    assert!(!calls.contains("install-commit"), "{calls}");
    assert!(phone.pm.open_sessions().is_empty(), "session left open");
}

#[test]
fn a_hung_pm_is_killed_at_the_timeout() {
    let phone = Phone::new("timeout_secs = 3");
    phone.pm.fail("install hang");
    let started = Instant::now();
    let view = phone.send("t-hang", fixture("fixture.apk"), "/sdcard/Download/h.apk");
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["ErrorCode"], "Install.Timeout", "{view}");
    assert!(started.elapsed() < phone.target().timeout(Duration::from_secs(20)));
    let pid = phone.pm.hang_pid().expect("the stand-in hung");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "pm ({pid}) still runs after the timeout");
}

#[test]
fn installing_shows_in_the_api_and_cancel_stops_pm_and_abandons() {
    let phone = Phone::new("timeout_secs = 120");
    phone.pm.fail("install-commit hang");
    phone.start(
        "t-slow",
        fixture("split.apks"),
        "/sdcard/Download/slow.apks",
    );
    let view = phone
        .daemon
        .wait_phase("t-slow", &["INSTALLING"], Duration::from_secs(30));
    assert_eq!(view["TaskStatus"], "Processing");
    // Progress counts the transfer's bytes, all landed by now.
    assert_eq!(view["Progress"], 100, "{view}");
    assert_eq!(
        view["Result"]["Files"][0]["Path"],
        "/sdcard/Download/slow.apks"
    );
    let deadline = Instant::now() + phone.target().timeout(Duration::from_secs(10));
    while phone.pm.hang_pid().is_none() {
        assert!(Instant::now() < deadline, "pm never reached the commit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = phone.pm.hang_pid().unwrap();
    let (status, _) = phone.daemon.request(
        "POST",
        "/v1/tasks/t-slow/cancel",
        Some(&phone.daemon.token),
        None,
    );
    assert_eq!(status, 200);
    let view = phone
        .daemon
        .wait_phase("t-slow", &["CANCELLED"], Duration::from_secs(20));
    assert_eq!(view["ErrorCode"], "Cancelled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "pm still runs after cancel");
    assert!(phone.pm.calls().contains("install-abandon"));
    assert!(phone.pm.open_sessions().is_empty());
    assert_eq!(
        phone
            .on_device("/sdcard/Download/slow.apks")
            .map(|b| sha256_hex(&b)),
        Some(sha256_hex(&fixture("split.apks")))
    );
}

#[test]
fn installs_wait_for_each_other_while_transfers_go_on() {
    // One transfer slot: a task waiting for pm must not hold it.
    let phone = Phone::new("timeout_secs = 120");
    phone.pm.fail("install-commit hang");
    phone.start(
        "t-first",
        fixture("split.apks"),
        "/sdcard/Download/first.apks",
    );
    phone
        .daemon
        .wait_phase("t-first", &["INSTALLING"], Duration::from_secs(30));
    let deadline = Instant::now() + phone.target().timeout(Duration::from_secs(10));
    while phone.pm.hang_pid().is_none() {
        assert!(Instant::now() < deadline, "pm never reached the commit");
        std::thread::sleep(Duration::from_millis(50));
    }
    phone.pm.succeed();

    // A second install queues behind the first: transferred, INSTALLING, pm not started.
    phone.start(
        "t-second",
        fixture("fixture.apk"),
        "/sdcard/Download/second.apk",
    );
    phone
        .daemon
        .wait_phase("t-second", &["INSTALLING"], Duration::from_secs(30));
    // A plain transfer still runs to the end meanwhile.
    let plain = phone.send("t-plain", vec![5u8; 100_000], "/sdcard/Download/plain.bin");
    assert_eq!(plain["Phase"], "SUCCESS", "{plain}");
    assert_eq!(install_of(&plain)["ErrorCode"], "Install.NotAnApk");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !phone.pm.calls().contains("install -r"),
        "the second install started while the first held pm: {}",
        phone.pm.calls()
    );
    let (status, _) = phone.daemon.request(
        "POST",
        "/v1/tasks/t-first/cancel",
        Some(&phone.daemon.token),
        None,
    );
    assert_eq!(status, 200);
    let second =
        phone
            .daemon
            .wait_phase("t-second", &["SUCCESS", "FAILED"], Duration::from_secs(30));
    assert_eq!(second["Phase"], "SUCCESS", "{second}");
    assert_eq!(phone.pm.packages(), "com.ferry.fixture 7 base.apk\n");
}

#[test]
fn kill_9_during_install_takes_pm_along_and_the_restart_abandons_its_session() {
    let phone = Phone::new("timeout_secs = 120");
    phone.pm.fail("install-write hang");
    phone.start("t-kill", fixture("split.apks"), "/sdcard/Download/k.apks");
    let deadline = Instant::now() + phone.target().timeout(Duration::from_secs(30));
    while phone.pm.hang_pid().is_none() {
        assert!(Instant::now() < deadline, "pm never reached install-write");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = phone.pm.hang_pid().unwrap();
    let first = phone.pm.open_sessions();
    assert_eq!(first.len(), 1, "{first:?}");
    // Recorded before the first write, so it is there while pm hangs in it.
    let record = phone
        .target()
        .host("/data/local/ferry/install/t-kill.session");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().trim(),
        first[0],
        "{}",
        record.display()
    );

    let Phone {
        pm,
        mut daemon,
        files,
    } = phone;
    let target = daemon.target.clone();
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    drop(daemon);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "pm ({pid}) outlived the daemon killed with -9");
    assert_eq!(pm.open_sessions(), first, "the session is still open");

    pm.succeed();
    let flag = target.arg("/data/local/ferry.toml").display().to_string();
    let daemon = target.daemon(&["--config", &flag]);
    let view = daemon.wait_phase("t-kill", &["SUCCESS", "FAILED"], Duration::from_secs(60));
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert_eq!(install_of(&view)["ErrorCode"], Value::Null, "{view}");
    let calls = pm.calls();
    assert!(
        calls.contains(&format!("install-abandon {}\n", first[0])),
        "{calls}"
    );
    assert_eq!(calls.matches("install-create").count(), 2, "{calls}");
    assert_eq!(calls.matches("install-commit").count(), 1, "{calls}");
    assert!(pm.open_sessions().is_empty(), "{:?}", pm.open_sessions());
    assert_eq!(
        pm.packages(),
        "com.ferry.fixture.split 3 base.apk,split_config.fr.apk\n"
    );
    assert!(!record.exists(), "the session record outlived its session");
    drop(files);
}

#[test]
fn a_million_entry_apk_is_refused_without_the_daemon_holding_its_directory() {
    let phone = Phone::new("");
    // 54 MB: one local header, a million central-directory headers, ZIP64 end records.
    let apk = install_support::zip_with_empty_entries(1_000_000);
    let view = phone.send("t-million", apk, "/sdcard/Download/million.apk");
    // Parsing the directory took the daemon from 11 to 224 MB; the transfer alone stays far
    // under 64 MiB.
    let hwm = phone.daemon.vm_hwm_kib();
    eprintln!("daemon VmHWM after the million-entry APK: {hwm} KiB");
    let message = install_of(&view)["Message"].as_str().unwrap_or_default();
    assert!(
        message.contains("declares 1000000 zip entries, more than install.max_apk_entries"),
        "VmHWM {hwm} KiB: {view}"
    );
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["ErrorCode"], "Install.InvalidApk", "{view}");
    assert!(hwm < 64 << 10, "daemon VmHWM {hwm} KiB");
    assert_eq!(phone.pm.calls(), "");
}
