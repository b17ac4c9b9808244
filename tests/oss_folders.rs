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
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("reading /proc/PID/io");
    let line = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .expect("write_bytes in /proc/PID/io");
    line.trim().parse().unwrap()
}

/// Lands `objects` under host folder `dir` the way ferry lands a file (staging file written
/// and fsync'd, renamed, its folder fsync'd) and returns what that made this process write:
/// the floor of landing these files, whoever does it.
fn floor_of_landing(dir: &std::path::Path, objects: &[(String, Vec<u8>)]) -> u64 {
    use std::io::Write;
    let before = write_bytes(std::process::id());
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
    write_bytes(std::process::id()) - before
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
