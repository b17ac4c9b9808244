//! The Android runtime details on the real binary: logs to a logd stand-in in liblog's record
//! format, the media scan after a file lands in shared storage, and dropping root to `run_as`.
//! Runs natively and, with `FERRY_TEST_CHROOT=1`, on the aarch64 build in the Android-like
//! chroot (see `cli_support/target.rs`); where a case cannot run in a mode it says so.

mod cli_support;

use cli_support::{root_or_skip, text, Daemon, Files, Target};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `ferry send ... --wait --json` on `d`; the task's final view.
fn send(d: &Daemon, url: &str, path: &str) -> serde_json::Value {
    let out = d.cli(&[
        "send",
        "--url",
        url,
        "--source-path",
        path,
        "--wait",
        "--json",
    ]);
    assert!(!out.stdout.is_empty(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A config file on the device, and the `--config` flag for it.
fn config(t: &Target, toml: &str) -> Vec<String> {
    t.write("/data/local/ferry.toml", toml);
    let arg = t.arg("/data/local/ferry.toml").display().to_string();
    vec!["--config".into(), arg]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---- logcat ----

/// One record as logd receives it, split per `liblog/logd_writer.cpp`.
struct Record {
    log_id: u8,
    tid: u16,
    secs: u32,
    nanos: u32,
    priority: u8,
    tag: Vec<u8>,
    message: String,
}

fn parse(datagram: &[u8]) -> Record {
    assert!(datagram.len() > 11 + 3, "too short: {datagram:?}");
    let payload = &datagram[11..];
    let tag_end = payload[1..].iter().position(|b| *b == 0).expect("tag NUL") + 1;
    let message = &payload[tag_end + 1..];
    assert_eq!(
        message.last(),
        Some(&0),
        "message must end in NUL: {datagram:?}"
    );
    let message = &message[..message.len() - 1];
    assert!(!message.contains(&0), "one NUL, at the end: {datagram:?}");
    Record {
        log_id: datagram[0],
        tid: u16::from_le_bytes([datagram[1], datagram[2]]),
        secs: u32::from_le_bytes(datagram[3..7].try_into().unwrap()),
        nanos: u32::from_le_bytes(datagram[7..11].try_into().unwrap()),
        priority: payload[0],
        tag: payload[1..=tag_end].to_vec(),
        message: String::from_utf8(message.to_vec()).unwrap(),
    }
}

/// Reads records until one's message contains `needle`.
fn wait_record(logd: &UnixDatagram, needle: &str) -> Record {
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    loop {
        let n = match logd.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no record with {needle:?} ({e}); got {seen:#?}"),
        };
        let record = parse(&buf[..n]);
        if record.message.contains(needle) {
            return record;
        }
        seen.push(record.message);
    }
}

#[test]
fn daemon_logs_reach_logd_in_liblog_record_format() {
    let t = Target::new();
    // The stand-in logd: a datagram socket where Android has /dev/socket/logdw.
    let logd = UnixDatagram::bind(t.host("/dev/socket/logdw")).unwrap();
    logd.set_read_timeout(Some(t.timeout(Duration::from_secs(20))))
        .unwrap();
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let d = t.daemon(&[]);
    let start = wait_record(&logd, "starting; state directory");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();

    assert_eq!(start.log_id, 0, "LOG_ID_MAIN");
    assert_eq!(start.priority, 4, "info is ANDROID_LOG_INFO");
    assert_eq!(start.tag, b"ferry\0");
    assert!(
        start
            .message
            .starts_with(&format!("ferry {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        start.message
    );
    // The start-up message is logged on the main thread, whose id is the process id.
    assert_eq!(start.tid, d.child.id() as u16);
    let secs = u64::from(start.secs);
    assert!(
        secs + 1 >= before.as_secs() && secs <= after.as_secs() + 1,
        "{secs} not within {before:?}..{after:?}"
    );
    assert!(start.nanos < 1_000_000_000);

    // A failed task is a warning: ANDROID_LOG_WARN.
    let files = Files::start(1000);
    let missing = files.url().replace("ferry-demo.bin", "missing.bin");
    let view = send(&d, &missing, "/data/local/tmp/missing.bin");
    assert_eq!(view["Phase"], "FAILED", "{view}");
    let failed = wait_record(&logd, "task failed");
    assert_eq!(failed.priority, 5);
    assert!(
        failed.message.contains("Source.NotFound"),
        "{}",
        failed.message
    );
    // stderr keeps the log as well.
    assert!(d.log_text().contains("task failed"), "{}", d.log_text());
}

// ---- media scan ----

/// Writes the stand-in `am` at /system/bin/am; `None` when it cannot run in this mode.
fn install_am_stand_in(t: &Target, argv_file: &str) -> Option<()> {
    let shell = if t.is_chroot() {
        // The aarch64 ferry runs under qemu-user, which execs programs natively, and the
        // Android-like root has no shell: a static host busybox becomes /system/bin/sh, the
        // interpreter of Android's own `am` script.
        let busybox = Path::new("/bin/busybox");
        if !is_static_elf(busybox) {
            cli_support::skip::skip("chroot mode: no static /bin/busybox for the stand-in `am` (install Debian's busybox-static)");
            return None;
        }
        std::fs::copy(busybox, t.host("/system/bin/sh")).unwrap();
        "/system/bin/sh"
    } else {
        "/bin/sh"
    };
    let argv = t.arg(argv_file).display().to_string();
    // A stand-in for Android's `am`, which does not exist off a device: it records its
    // arguments and answers exactly as `am broadcast` does.
    let script = format!(
        "#!{shell}\n\
         printf '%s\\n' \"$@\" > '{argv}'\n\
         echo \"Broadcasting: Intent {{ act=$3 dat=$5 flg=0x400000 }}\"\n\
         echo 'Broadcast completed: result=0'\n"
    );
    let host = t.write("/system/bin/am", script);
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    Some(())
}

/// Whether `path` is a 64-bit little-endian ELF without a program interpreter (PT_INTERP),
/// which the kernel can run in a root that has no dynamic loader.
fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = std::fs::read(path) else {
        return false;
    };
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let word = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&elf[at..at + n]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        at + 4 <= elf.len() && word(at, 4) != 3
    })
}

#[test]
fn media_scan_announces_files_in_shared_storage_only() {
    let t = Target::new();
    let argv_file = "/data/local/tmp/am-argv.txt";
    if install_am_stand_in(&t, argv_file).is_none() {
        return;
    }
    let flags = config(&t, "[media_scan]\nam_command = \"/system/bin/am\"\n");
    let d = t.daemon(&args(&flags));
    let files = Files::start(4096);

    let view = send(&d, &files.url(), "/sdcard/Download/x.bin");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert!(view["Result"]["Notes"].is_null(), "{view}");
    let argv = std::fs::read_to_string(t.host(argv_file)).expect("am was not run");
    assert_eq!(
        argv,
        "broadcast\n-a\nandroid.intent.action.MEDIA_SCANNER_SCAN_FILE\n-d\nfile:///sdcard/Download/x.bin\n"
    );

    // Scratch space is not media: no broadcast.
    std::fs::remove_file(t.host(argv_file)).unwrap();
    let view = send(&d, &files.url(), "/data/local/tmp/y.bin");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    assert!(view["Result"]["Notes"].is_null(), "{view}");
    assert!(!t.host(argv_file).exists(), "am ran for /data/local/tmp");
}

#[test]
fn media_scan_without_am_still_succeeds_with_a_note() {
    let t = Target::new();
    let flags = config(&t, "[media_scan]\nam_command = \"/system/bin/am\"\n");
    let d = t.daemon(&args(&flags));
    let files = Files::start(4096);
    let view = send(&d, &files.url(), "/sdcard/Download/x.bin");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    let note = view["Result"]["Notes"][0].as_str().unwrap_or_default();
    assert!(
        note.starts_with("media scan: /system/bin/am not found"),
        "{view}"
    );
    assert_eq!(
        std::fs::metadata(t.host("/sdcard/Download/x.bin"))
            .unwrap()
            .len(),
        4096
    );
}

// ---- run_as ----

#[test]
fn run_as_drops_root_after_binding_and_still_transfers() {
    if !root_or_skip("run_as") {
        return;
    }
    let t = Target::new();
    // uid 65534 must reach the root (natively: through the 0700 temporary folder) and write
    // the download folder. In chroot mode the ids are checked on the qemu process, which is
    // the emulated ferry itself.
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(t.root().parent().unwrap(), open).unwrap();
    let download = t.host("/sdcard/Download");
    std::os::unix::fs::chown(&download, Some(65534), Some(65534)).unwrap();
    let flags = config(
        &t,
        // uid 65534 cannot stream an APK into pm, so AutoInstall must be off for it.
        "run_as = { uid = 65534, gid = 65534, groups = [3003] }\n[install]\nenabled = false\n",
    );
    let d = t.daemon(&args(&flags));
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(line("Gid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(line("Groups:"), "3003", "{status}");
    assert!(
        d.log_text().contains("dropped root privileges"),
        "{}",
        d.log_text()
    );

    let files = Files::start(100_000);
    let view = send(&d, &files.url(), "/sdcard/Download/r.bin");
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
    let meta = std::fs::metadata(t.host("/sdcard/Download/r.bin")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    let journal = std::fs::metadata(t.host("/data/local/ferry/tasks")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&journal), 65534);
}

/// A uid pm refuses streamed installs from runs with AutoInstall off: such tasks are refused
/// at intake, and a reload cannot turn AutoInstall on while the daemon runs as that uid, even
/// with a file whose own run_as would allow it (run_as only changes at a restart).
#[test]
fn run_as_uid_without_autoinstall_refuses_autoinstall_tasks_and_reloads_enabling_it() {
    if !root_or_skip("run_as") {
        return;
    }
    let t = Target::new();
    let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(t.root().parent().unwrap(), open).unwrap();
    let flags = config(
        &t,
        "run_as = { uid = 65534, gid = 65534, groups = [3003] }\n[install]\nenabled = false\n",
    );
    let d = t.daemon(&args(&flags));
    let payload = serde_json::json!({
        "SourceFilePath": "/sdcard/Download/app.apk",
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": "http://127.0.0.1:9/app.apk",
        "AutoInstall": true,
    });
    let (status, reply) = d.submit(&payload);
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["ErrorCode"], "Unsupported.AutoInstall", "{reply}");
    assert!(
        reply.to_string().contains("install.enabled = false"),
        "{reply}"
    );

    t.write("/data/local/ferry.toml", "run_as = { uid = 0, gid = 0 }\n");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + t.timeout(Duration::from_secs(10));
    while !d.log_text().contains("keeping the running configuration") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.log_text()
            .contains("run_as uid 65534 cannot run AutoInstall"),
        "{}",
        d.log_text()
    );
    let (status, reply) = d.submit(&payload);
    assert_eq!(status, 400, "{reply}");
}

// ---- shared storage as an init service sees it ----

/// The `group` line of android/ferry.rc as ids: (gid, supplementary groups). Names are
/// Android AIDs (system/core/libcutils/include/private/android_filesystem_config.h); an
/// unknown one fails, so the rc file and this test cannot drift apart.
fn rc_groups() -> (u32, Vec<u32>) {
    let rc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/android/ferry.rc")).unwrap();
    let line = rc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("group "))
        .expect("a group line in android/ferry.rc");
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|name| match name {
            "root" => 0,
            "system" => 1000,
            "log" => 1007,
            "sdcard_rw" => 1015,
            "media_rw" => 1023,
            "shell" => 2000,
            "inet" => 3003,
            "everybody" => 9997,
            other => panic!("AID {other:?} of ferry.rc is not in this test's table"),
        })
        .collect();
    (ids[0], ids[1..].to_vec())
}

/// Android 11+: in init's mount namespace /storage is vold's /mnt/user/0, mode 0710
/// shell:everybody (2000:9997). ferry.rc runs uid 0 with no capabilities, so only its groups
/// let it through: with the rc file's groups the download lands, without `everybody` it
/// cannot (EACCES). Runs natively and in chroot mode (setpriv, see Target).
#[test]
fn init_groups_of_ferry_rc_reach_storage_0710_shell_everybody_without_capabilities() {
    if !root_or_skip("dropping capabilities with setpriv") {
        return;
    }
    let t = Target::new();
    let storage = t.host("/storage");
    std::os::unix::fs::chown(&storage, Some(2000), Some(9997)).unwrap();
    std::fs::set_permissions(
        &storage,
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();
    let files = Files::start(50_000);
    let fetch = |gid: u32, groups: &[u32], name: &str| {
        let path = format!("/sdcard/Download/{name}");
        let out = t
            .command_without_capabilities(gid, groups)
            .args([
                "fetch",
                "--quiet",
                "--url",
                &files.url(),
                "--source-path",
                &path,
            ])
            .output()
            .expect("running ferry fetch under setpriv");
        (out, t.host(&path))
    };
    let (gid, groups) = rc_groups();
    assert!(
        groups.contains(&9997),
        "ferry.rc lacks everybody: {groups:?}"
    );

    let without: Vec<u32> = groups.iter().copied().filter(|g| *g != 9997).collect();
    let (out, landed) = fetch(gid, &without, "denied.bin");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ermission denied"),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(
        &storage,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(!landed.exists());
    std::fs::set_permissions(
        &storage,
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();

    let (out, landed) = fetch(gid, &groups, "granted.bin");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::metadata(&landed).unwrap().len(), 50_000);
}
