//! OSS folders of many objects through the real daemon against s3s-fs
//! (`tests/common/s3_server.rs`): what the daemon writes to disk while it lands them (a
//! constant number of bytes per object besides the data, never a rewrite of a record that
//! lists them all). The resume of a folder after `kill -9`, which needs ETags in listings
//! (s3s-fs sends none), is in `tests/oss_stand_in.rs`.

mod cli_support;
mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use cli_support::results::{assert_success, pattern, result_files, sha256_hex, staging_files};
use cli_support::Target;
use s3_server::{S3Server, ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, SECURITY_TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const TASK_TIMEOUT: Duration = Duration::from_secs(300);

fn folder_payload(id: &str, s3: &S3Server, prefix: &str, folder: &str) -> Value {
    json!({
        "TaskId": id,
        "UploadType": "OSS",
        "SourceFilePath": folder,
        "UploadUrl": format!("oss://{BUCKET}/{prefix}"),
        "UploadEndpoint": s3.endpoint(),
        "Credentials": {
            "AccessKeyId": ACCESS_KEY_ID,
            "AccessKeySecret": ACCESS_KEY_SECRET,
            "SecurityToken": SECURITY_TOKEN,
        },
    })
}

/// `write_bytes` of `/proc/PID/io`: bytes of page-cache pages the process dirtied (counted
/// when a clean page becomes dirty), that is, what it sends to the disk. `wchar` would count
/// every `write(2)`, sockets and stderr included, so it says little about the disk.
fn write_bytes(pid: u32) -> u64 {
    io_write_bytes(&format!("/proc/{pid}/io"))
}

fn io_write_bytes(file: &str) -> u64 {
    let io = std::fs::read_to_string(file).expect("reading /proc/PID/io");
    let line = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .expect("write_bytes in /proc/PID/io");
    line.trim().parse().unwrap()
}

/// Lands `objects` under host folder `dir` the way ferry lands a file (staging file written
/// and fsync'd, renamed, its folder fsync'd) and returns what that made this process write:
/// the floor of landing these files, whoever does it. Counted for this thread alone: the
/// process also gets the writes of every daemon the other tests reap.
fn floor_of_landing(dir: &std::path::Path, objects: &[(String, Vec<u8>)]) -> u64 {
    use std::io::Write;
    let before = io_write_bytes("/proc/thread-self/io");
    for (name, data) in objects {
        let path = dir.join(name);
        let folder = path.parent().unwrap();
        std::fs::create_dir_all(folder).unwrap();
        let stage = folder.join(".stage");
        let mut file = std::fs::File::create(&stage).unwrap();
        file.write_all(data).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&stage, &path).unwrap();
        std::fs::File::open(folder).unwrap().sync_all().unwrap();
    }
    io_write_bytes("/proc/thread-self/io") - before
}

/// Regression test for the quadratic journal: each landed object used to rewrite, fsync and
/// rename the whole task record listing every object so far (1,500 objects of 1 KB made the
/// daemon write 683 MB). Now an object costs one line of the task's landed log. Objects are
/// 4 KiB, one page each, so the data size is also what the data files cost in pages (a 1 KB
/// file still dirties a whole page). Creating a file costs the filesystem more than its data,
/// and not the same every time (ext4 here: 0.3 to 1 MiB more for 1,000 files, its inode
/// tables), so the bound is the floor, measured just before on the same filesystem by
/// landing the same files the same way, plus 1 MiB. The daemon logs errors only: its stderr
/// is a file here, and this machine has no `am`, so every media scan would warn.
#[test]
fn a_folder_of_1000_objects_makes_the_daemon_write_its_data_plus_at_most_1_mib() {
    const OBJECTS: usize = 1000;
    const SIZE: usize = 4096;
    let s3 = S3Server::start();
    let objects: Vec<(String, Vec<u8>)> = (0..OBJECTS)
        .map(|i| (format!("d{}/f{i:05}.bin", i % 10), pattern(SIZE, i as u32)))
        .collect();
    for (name, data) in &objects {
        s3.put_object(BUCKET, &format!("send/many/{name}"), data);
    }
    let t = Target::new();
    t.add_hosts(&s3.hostnames(&[BUCKET]));
    let floor = floor_of_landing(&t.host("/sdcard/Download/floor"), &objects);
    let d = t.daemon(&["--log-level", "error"]);
    let pid = d.child.id();
    let before = write_bytes(pid);
    let view = d.run_task(
        &folder_payload("t-many", &s3, "send/many/", "/sdcard/Download/many"),
        TASK_TIMEOUT,
    );
    let written = write_bytes(pid) - before;
    assert_success(&view);
    let mut expected: Vec<_> = objects
        .iter()
        .map(|(name, data)| {
            let path = format!("/sdcard/Download/many/{name}");
            (path, SIZE as u64, sha256_hex(data))
        })
        .collect();
    expected.sort();
    assert_eq!(result_files(&view), expected);
    for (name, data) in objects.iter().step_by(97) {
        let host = t.host(format!("/sdcard/Download/many/{name}"));
        assert_eq!(&std::fs::read(host).unwrap(), data, "{name}");
    }
    assert!(staging_files(&t.host("/sdcard/Download/many")).is_empty());
    let data = (OBJECTS * SIZE) as u64;
    if written < data || floor < data {
        // The data files alone dirty `data` bytes of pages: a filesystem that counts less
        // (tmpfs counts none) cannot show what this test guards.
        cli_support::skip::skip(&format!(
            "the device root's filesystem accounts no page writes (write_bytes {written}, floor {floor} < data {data}; tmpfs?): run the tests on a disk-backed /var/tmp"
        ));
        return;
    }
    eprintln!(
        "{OBJECTS} objects, {data} bytes of data, floor {floor}: the daemon wrote {written} bytes ({} over the data, {} over the floor)",
        written - data,
        written as i64 - floor as i64
    );
    assert!(
        written <= floor + (1 << 20),
        "the daemon wrote {written} bytes for {data} bytes of data: {} more than landing the same files takes ({floor}), over 1 MiB",
        written - floor
    );
    // No landed log outlives the task.
    let logs: Vec<_> = std::fs::read_dir(d.state.join("tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".landed"))
        .collect();
    assert!(logs.is_empty(), "{logs:?}");
}

/// `n` objects of a few KiB each under `send/PREFIX`, spread over sub-folders.
fn put_objects(s3: &S3Server, prefix: &str, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    let objects: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let name = format!("s{}/o{i:03}.bin", i % 7);
            (name, pattern(size + i * 37, i as u32 + 1))
        })
        .collect();
    for (name, data) in &objects {
        s3.put_object(BUCKET, &format!("send/{prefix}/{name}"), data);
    }
    objects
}

/// Every `.ferry-*` name anywhere under a host folder.
fn staging_anywhere(dir: &std::path::Path) -> Vec<String> {
    cli_support::results::files_under(dir)
        .into_iter()
        .filter(|f| f.rsplit('/').next().unwrap().starts_with(".ferry-"))
        .collect()
}

/// Small objects of a folder are fetched `oss.folder_concurrency` at a time (each through a
/// staging file of its own): all 200 land byte for byte, the result lists them in key order
/// as before, and no staging file is left.
#[test]
fn a_folder_of_200_objects_lands_whole_with_several_fetched_at_once() {
    let s3 = S3Server::start();
    let objects = put_objects(&s3, "two", 200, 3000);
    let t = Target::new();
    t.add_hosts(&s3.hostnames(&[BUCKET]));
    let flags = t.config("/data/local/ferry.toml", "[oss]\nfolder_concurrency = 8\n");
    let d = t.daemon(&[&flags[0], &flags[1]]);
    let view = d.run_task(
        &folder_payload("t-200", &s3, "send/two/", "/sdcard/Download/two"),
        TASK_TIMEOUT,
    );
    assert_success(&view);
    let mut expected: Vec<_> = objects
        .iter()
        .map(|(name, data)| {
            let path = format!("/sdcard/Download/two/{name}");
            (path, data.len() as u64, sha256_hex(data))
        })
        .collect();
    expected.sort();
    assert_eq!(result_files(&view), expected);
    let folder = t.host("/sdcard/Download/two");
    for (name, data) in &objects {
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), data, "{name}");
    }
    assert_eq!(staging_anywhere(&folder), Vec::<String>::new());
    let total: u64 = objects.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(view["BytesDone"], total, "{view}");
    // One GET per object: nothing fetched twice.
    let requests = s3.requests();
    for (name, _) in objects.iter().step_by(13) {
        let key = format!("send/two/{name}");
        assert_eq!(
            S3Server::object_gets(&requests, BUCKET, &key).len(),
            1,
            "{key}"
        );
    }
}

/// A cancel while several objects are in flight: the task ends CANCELLED, every file under a
/// final name is a whole object, and no staging file of any slot is left behind.
#[test]
fn cancelling_a_folder_mid_way_leaves_no_partial_file_under_a_final_name() {
    let s3 = S3Server::start();
    let objects = put_objects(&s3, "slow", 200, 16 * 1024);
    let t = Target::new();
    t.add_hosts(&s3.hostnames(&[BUCKET]));
    // About 3.3 MiB at 256 KiB/s: some 13 s, cancelled after 20 objects.
    let flags = t.config("/data/local/ferry.toml", "bandwidth_limit_kib = 256\n");
    let d = t.daemon(&[&flags[0], &flags[1]]);
    let payload = folder_payload("t-cancel", &s3, "send/slow/", "/sdcard/Download/slow");
    let (status, view) = d.submit(&payload);
    assert_eq!(status, 201, "{view}");
    let folder = t.host("/sdcard/Download/slow");
    let landed = || {
        let files = cli_support::results::files_under(&folder);
        let finals = files
            .iter()
            .filter(|f| !f.contains("/.ferry-") && !f.starts_with(".ferry-"));
        finals.count()
    };
    let deadline = std::time::Instant::now() + t.timeout(Duration::from_secs(60));
    while landed() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, view) = d.request("POST", "/v1/tasks/t-cancel/cancel", Some(&d.token), None);
    assert_eq!(status, 200, "{view}");
    let view = d.wait_phase(
        "t-cancel",
        &["SUCCESS", "FAILED", "CANCELLED"],
        TASK_TIMEOUT,
    );
    assert_eq!(view["Phase"], "CANCELLED", "{view}");
    assert_eq!(staging_anywhere(&folder), Vec::<String>::new());
    let files = cli_support::results::files_under(&folder);
    assert!(files.len() < objects.len(), "all landed before the cancel");
    for file in &files {
        let data = &objects.iter().find(|(name, _)| name == file).unwrap().1;
        assert_eq!(
            &std::fs::read(folder.join(file)).unwrap(),
            data,
            "{file} is not whole"
        );
    }
}
