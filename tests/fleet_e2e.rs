//! The whole fleet, real processes only: `ferry-controller serve` (embedded broker, SQLite),
//! twenty `ferry daemon` agents each on its own device root, files served over HTTP on
//! 127.0.0.1, and Alibaba's official Python SDK as the API client. One SendFile lands the
//! verified file on every phone, through a controller killed with -9 and restarted mid-batch
//! and a phone that was offline when SendFile was called.

#[path = "common/alibaba_sdk.rs"]
mod alibaba_sdk;
mod common;
#[path = "common/skip.rs"]
mod skip;

use common::http_server::{Resource, TestServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENTS: usize = 20;
const CONTROLLER: &str = env!("CARGO_BIN_EXE_ferry-controller");
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (-9) when dropped, so no test leaves one behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Fleet {
    dir: PathBuf,
    api: String,
    mqtt: u16,
    ak: (String, String),
}

impl Fleet {
    fn new(dir: &Path) -> Fleet {
        let state = dir.join("controller");
        let line = run_ok(
            Command::new(CONTROLLER)
                .args(["access-key", "create", "--state-dir"])
                .arg(&state),
        );
        let mut words = line.split_whitespace();
        let ak = (
            words.next().unwrap().to_string(),
            words.next().unwrap().to_string(),
        );
        Fleet {
            dir: dir.to_path_buf(),
            api: format!("127.0.0.1:{}", free_port()),
            mqtt: free_port(),
            ak,
        }
    }

    /// `serve` with the embedded broker on `self.mqtt`, or with `broker` (an external one).
    fn serve_with(&self, broker: Option<&str>) -> Proc {
        self.serve_args(broker, &[])
    }

    fn serve_args(&self, broker: Option<&str>, extra: &[&str]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller.log"))
            .unwrap();
        let mut cmd = Command::new(CONTROLLER);
        cmd.args(["serve", "--state-dir"])
            .arg(self.dir.join("controller"))
            .args(["--listen", &self.api]);
        match broker {
            Some(url) => cmd.args(["--broker", url]),
            None => cmd.args(["--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt)]),
        };
        cmd.args(extra);
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.api).is_err() {
            assert!(Instant::now() < deadline, "the controller never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Proc(child)
    }

    fn serve(&self) -> Proc {
        self.serve_with(None)
    }

    fn add_agent(&self, id: &str) -> PathBuf {
        let toml = run_ok(
            Command::new(CONTROLLER)
                .args(["instance", "add", "--state-dir"])
                .arg(self.dir.join("controller"))
                .args(["--broker", &format!("mqtt://127.0.0.1:{}", self.mqtt), id]),
        );
        assert!(toml.starts_with("[fleet]\n"), "{toml}");
        let config = self.dir.join(format!("{id}.toml"));
        std::fs::write(&config, toml).unwrap();
        std::fs::create_dir_all(self.device(id).join("sdcard/Download")).unwrap();
        config
    }

    fn device(&self, id: &str) -> PathBuf {
        self.dir.join("devices").join(id)
    }

    fn start_agent(&self, id: &str) -> Proc {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).unwrap();
        let child = Command::new(FERRY)
            .arg("--config")
            .arg(self.dir.join(format!("{id}.toml")))
            .arg("--state-dir")
            .arg(self.dir.join("agents").join(id))
            .arg("--device-root")
            .arg(self.device(id))
            .args(["daemon", "--listen", "off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// One SDK call through tests/sdk/drive.py; its single outcome.
    fn sdk(&self, python: &Path, call: &str, request: Value) -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/drive.py");
        let out = Command::new(python)
            .arg(script)
            .args([&self.api, &self.ak.0, &self.ak.1, call, "--request"])
            .arg(request.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "drive.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut outcomes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        outcomes.remove(0)
    }

    /// ferry-controller's own signed client: `ARGS --json` against this controller.
    fn client(&self, args: &[&str]) -> Value {
        let ak_file = self.dir.join("ak");
        std::fs::write(&ak_file, format!("{} {}", self.ak.0, self.ak.1)).unwrap();
        let out = run_ok(
            Command::new(CONTROLLER)
                .args(args)
                .args(["--json", "--endpoint", &self.api])
                .arg("--access-key-file")
                .arg(&ak_file),
        );
        serde_json::from_str(&out).unwrap()
    }

    /// The batch row through ferry-controller's own signed client (cheaper than a Python
    /// process per poll).
    fn batch(&self, batch: &str) -> Value {
        let ak_file = self.dir.join("ak");
        std::fs::write(&ak_file, format!("{} {}", self.ak.0, self.ak.1)).unwrap();
        let out = Command::new(CONTROLLER)
            .args(["describe-tasks", "--json", "--endpoint", &self.api])
            .arg("--access-key-file")
            .arg(&ak_file)
            .args(["--task-id", batch])
            .output()
            .unwrap();
        if !out.status.success() {
            // The controller may be restarting.
            return Value::Null;
        }
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["Data"][0].clone()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_file_lands_on_twenty_phones_through_a_controller_crash_and_a_late_phone() {
    let Some(python) = alibaba_sdk::python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    server.put("/app.bin", Resource::new(body.clone()));
    // Slow enough that the controller's crash falls mid-batch.
    server.set_rate("/app.bin", Some(2 << 20));
    let fleet = Fleet::new(tmp.path());
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("acp-e2e{i:02}")).collect();
    for id in &ids {
        fleet.add_agent(id);
    }
    let controller = fleet.serve();
    // Every phone but the last is online at SendFile time.
    let mut agents: Vec<Proc> = ids[..AGENTS - 1]
        .iter()
        .map(|id| fleet.start_agent(id))
        .collect();

    let sent = fleet.sdk(
        &python,
        "send_file",
        json!({
            "android_instance_id_list": ids,
            "source_file_path": "/sdcard/Download/app.bin",
            "upload_type": "DOWNLOAD_URL",
            "upload_url": server.url("/app.bin"),
            "client_token": "e2e-batch-1",
        }),
    );
    let answer = &sent["ok"];
    let batch = answer["TaskId"]
        .as_str()
        .expect("a batch TaskId")
        .to_string();
    let children = answer["Data"].as_array().unwrap();
    assert_eq!(children.len(), AGENTS, "{sent}");

    // kill -9 the controller mid-batch, then bring it back on the same state.
    std::thread::sleep(Duration::from_millis(800));
    drop(controller);
    let _controller = fleet.serve();
    // A repeat with the same ClientToken after the restart answers the same ids.
    let again = fleet.sdk(
        &python,
        "send_file",
        json!({
            "android_instance_id_list": ids,
            "source_file_path": "/sdcard/Download/app.bin",
            "upload_type": "DOWNLOAD_URL",
            "upload_url": server.url("/app.bin"),
            "client_token": "e2e-batch-1",
        }),
    );
    assert_eq!(again["ok"]["TaskId"], answer["TaskId"], "{again}");
    assert_eq!(again["ok"]["Data"], answer["Data"]);
    // The late phone comes online and gets its task.
    agents.push(fleet.start_agent(&ids[AGENTS - 1]));

    let deadline = Instant::now() + Duration::from_secs(240);
    let row = loop {
        let row = fleet.batch(&batch);
        if row["TaskStatus"] == "FINISHED" || row["TaskStatus"] == "FAILED" {
            break row;
        }
        assert!(Instant::now() < deadline, "the batch never ended: {row}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    assert_eq!(row["SuccessChildCount"], AGENTS, "{row}");
    let want = sha256_hex(&body);
    for id in &ids {
        let landed = std::fs::read(fleet.device(id).join("sdcard/Download/app.bin"))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(sha256_hex(&landed), want, "{id}");
    }
    // Resent orders after the restart ran nothing twice: each phone fetched once (a
    // resumed fetch asks for the rest, never the whole file again).
    let whole_requests = server
        .requests("/app.bin")
        .iter()
        .filter(|r| r.range().is_none_or(|(first, _)| first == 0))
        .count();
    assert_eq!(whole_requests, AGENTS, "one full fetch per phone");

    // DescribeTasks through the SDK: one row per phone, each with the agent's result.
    let described = fleet.sdk(
        &python,
        "describe_tasks",
        json!({"parent_task_id": batch, "level": 2, "max_results": 100}),
    );
    let rows = described["ok"]["Data"].as_array().unwrap();
    assert_eq!(rows.len(), AGENTS, "{described}");
    for row in rows {
        assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
        let result: Value = serde_json::from_str(row["Result"].as_str().unwrap()).unwrap();
        assert_eq!(result["Files"][0]["Sha256"], want.as_str(), "{result}");
        assert_eq!(result["Files"][0]["Path"], "/sdcard/Download/app.bin");
        assert!(row["StartTime"].as_str().unwrap().ends_with('Z'), "{row}");
    }
    drop(agents);
}

/// The same call through Debian's mosquitto with the files `ferry-controller
/// mosquitto-files` writes (password file and per-agent ACL), `serve --broker`: the broker is
/// restarted and one phone is killed with -9 mid-transfer and started again; every phone
/// still ends with the verified file and no phone but the killed one fetched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_mosquitto_a_broker_restart_and_a_killed_phone_still_land_everywhere() {
    let Some(python) = alibaba_sdk::python() else {
        return;
    };
    const PHONES: usize = 5;
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let body: Vec<u8> = (0..8_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
    server.put("/big.bin", Resource::new(body.clone()));
    server.set_rate("/big.bin", Some(2 << 20));
    let fleet = Fleet::new(tmp.path());
    let ids: Vec<String> = (0..PHONES).map(|i| format!("acp-mq{i}")).collect();
    for id in &ids {
        fleet.add_agent(id);
    }
    let files = tmp.path().join("mosquitto");
    run_ok(
        Command::new(CONTROLLER)
            .args(["mosquitto-files", "--state-dir"])
            .arg(tmp.path().join("controller"))
            .arg("--out")
            .arg(&files),
    );
    // mosquitto reads its files after dropping to its own user: let it in (test folders only;
    // on a real host they belong to that user, see README's Fleet brokers).
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (tmp.path().to_path_buf(), 0o755),
        (files.clone(), 0o755),
        (files.join("passwd"), 0o644),
        (files.join("acl"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let Some(mut broker) = common::mosquitto::Mosquitto::start(common::mosquitto::Options {
        password_file: Some(files.join("passwd")),
        acl_file: Some(files.join("acl")),
        tls: None,
    }) else {
        skip::skip("mosquitto is not installed (Debian package mosquitto)");
        return;
    };
    let url = broker.url();
    // The agents dial the broker as it really is (instance add printed the embedded one's).
    for id in &ids {
        let path = tmp.path().join(format!("{id}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("broker = ") {
                    format!("broker = \"{url}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let _controller = fleet.serve_with(Some(&url));
    let mut agents: Vec<Proc> = ids.iter().map(|id| fleet.start_agent(id)).collect();
    let sent = fleet.sdk(
        &python,
        "send_file",
        json!({
            "android_instance_id_list": ids,
            "source_file_path": "/sdcard/Download/big.bin",
            "upload_type": "DOWNLOAD_URL",
            "upload_url": server.url("/big.bin"),
        }),
    );
    let batch = sent["ok"]["TaskId"].as_str().expect("a batch").to_string();

    // Mid-transfer: restart the broker, and kill -9 one phone, then start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests("/big.bin").len() < PHONES {
        assert!(
            Instant::now() < deadline,
            "the phones never started fetching"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker.restart();
    let victim = agents.remove(0);
    drop(victim);
    tokio::time::sleep(Duration::from_millis(500)).await;
    agents.push(fleet.start_agent(&ids[0]));

    let deadline = Instant::now() + Duration::from_secs(240);
    let row = loop {
        let row = fleet.batch(&batch);
        if row["TaskStatus"] == "FINISHED" || row["TaskStatus"] == "FAILED" {
            break row;
        }
        assert!(Instant::now() < deadline, "the batch never ended: {row}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(row["TaskStatus"], "FINISHED", "{row}");
    let want = sha256_hex(&body);
    for id in &ids {
        let landed = std::fs::read(fleet.device(id).join("sdcard/Download/big.bin"))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(sha256_hex(&landed), want, "{id}");
    }
    let from_zero = server
        .requests("/big.bin")
        .iter()
        .filter(|r| r.range().is_none_or(|(first, _)| first == 0))
        .count();
    // The killed phone resumes from its journal; with no checkpoint yet it may start its
    // object over once. Nobody else fetched twice, though the broker restarted.
    assert!(
        (PHONES..=PHONES + 1).contains(&from_zero),
        "{from_zero} fetches from byte 0 for {PHONES} phones"
    );
    drop(agents);
}

/// FerryCancelTask on a running batch stops every phone (their tasks end FAILED with
/// `Cancelled`, no file under its final name, no partial data left), and a phone that never
/// connects fails with `Fleet.InstanceOffline` once the expiry passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancel_stops_every_phone_and_a_phone_that_never_connects_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    server.put("/slow.bin", Resource::new(vec![7u8; 8 << 20]));
    server.set_rate("/slow.bin", Some(256 << 10));
    let fleet = Fleet::new(tmp.path());
    let ids: Vec<String> = (0..3).map(|i| format!("acp-cx{i}")).collect();
    for id in &ids {
        fleet.add_agent(id);
    }
    fleet.add_agent("acp-never");
    let _controller = fleet.serve_args(None, &["--expiry-secs", "3"]);
    let _agents: Vec<Proc> = ids.iter().map(|id| fleet.start_agent(id)).collect();
    let mut send = vec!["send-file"];
    for id in &ids {
        send.extend(["--instance", id.as_str()]);
    }
    let url = server.url("/slow.bin");
    send.extend([
        "--source-file-path",
        "/sdcard/Download/slow.bin",
        "--upload-type",
        "DOWNLOAD_URL",
        "--upload-url",
        &url,
    ]);
    let batch = fleet.client(&send)["TaskId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests("/slow.bin").len() < ids.len() {
        assert!(Instant::now() < deadline, "the phones never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = fleet.client(&["cancel", &batch]);
    assert_eq!(
        cancelled["Data"].as_array().unwrap().len(),
        ids.len(),
        "{cancelled}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let page = fleet.client(&["describe-tasks", "--parent-task-id", &batch, "--level", "2"]);
        let rows = page["Data"].as_array().unwrap().clone();
        if rows.iter().all(|r| r["TaskStatus"] == "FAILED") {
            break rows;
        }
        assert!(Instant::now() < deadline, "not all cancelled: {page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for row in &rows {
        assert_eq!(row["ErrorCode"], "Cancelled", "{row}");
    }
    for id in &ids {
        let folder = fleet.device(id).join("sdcard/Download");
        let left: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
        assert!(left.is_empty(), "{id}: {left:?} left behind");
    }

    // A phone that never connects: its task fails once the expiry (3 s) passes.
    let lone = fleet.client(&[
        "send-file",
        "--instance",
        "acp-never",
        "--source-file-path",
        "/sdcard/Download/x.bin",
        "--upload-type",
        "DOWNLOAD_URL",
        "--upload-url",
        &url,
    ]);
    let child = lone["Data"][0]["TaskId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let page = fleet.client(&["describe-tasks", "--task-id", &child]);
        let row = page["Data"][0].clone();
        if row["TaskStatus"] == "FAILED" {
            break row;
        }
        assert!(Instant::now() < deadline, "never expired: {row}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(row["ErrorCode"], "Fleet.InstanceOffline", "{row}");
}
