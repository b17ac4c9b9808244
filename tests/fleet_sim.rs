//! `ferry-fleet-sim` against the real `ferry-controller serve` (SQLite, embedded broker): 50
//! simulated agents come online with the agent's own fleet client; one SendFile naming them
//! all ends with every child FINISHED carrying the simulated result, except the share
//! `--fail-ratio` fails, which are FAILED with the configured agent code; DescribeTasks by
//! batch and by instance shows it. A simulator only: real agents are tests/fleet_e2e.rs.

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_ferry-controller");
const SIM: &str = env!("CARGO_BIN_EXE_ferry-fleet-sim");
const SESSIONS: usize = 50;
/// A guard against hanging, not a measure: generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(120);

/// A process killed and reaped when the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The signed client (`ARGS --json`) against `api`.
fn client(api: &str, ak_file: &Path, args: &[&str]) -> Value {
    let out = run_ok(
        Command::new(CONTROLLER)
            .args(args)
            .args(["--json", "--endpoint", api])
            .arg("--access-key-file")
            .arg(ak_file),
    );
    serde_json::from_str(&out).unwrap()
}

/// Polls `what` until it returns Some, failing after [`WAIT`] with `log`'s tail.
fn wait_for<T>(what: &str, log: &Path, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}; log tail:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn simulated_agents_finish_a_send_file_and_fail_the_configured_share_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("ctl");
    let (api, mqtt) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let broker = format!("mqtt://{mqtt}");
    let ak_file = tmp.path().join("ak");
    let line = run_ok(
        Command::new(CONTROLLER)
            .args(["access-key", "create", "--state-dir"])
            .arg(&state),
    );
    std::fs::write(&ak_file, line.trim()).unwrap();
    // The instances file is `instance add`'s outputs, concatenated, as an operator gets them.
    let ids: Vec<String> = (0..SESSIONS).map(|i| format!("acp-sim{i:03}")).collect();
    let mut instances = String::new();
    for id in &ids {
        instances += &run_ok(
            Command::new(CONTROLLER)
                .args(["instance", "add", "--state-dir"])
                .arg(&state)
                .args(["--broker", &broker, id]),
        );
    }
    let instances_file = tmp.path().join("instances.toml");
    std::fs::write(&instances_file, instances).unwrap();

    let ctl_log = tmp.path().join("controller.log");
    let _controller = Proc(
        Command::new(CONTROLLER)
            .args(["serve", "--state-dir"])
            .arg(&state)
            .args(["--listen", &api, "--mqtt-listen", &mqtt])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&ctl_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the controller's API", &ctl_log, || {
        std::net::TcpStream::connect(&api).ok()
    });

    // One task in five fails, with a real agent code; tasks run 300 ms with progress.
    let sim_log = tmp.path().join("sim.log");
    let _sim = Proc(
        Command::new(SIM)
            .arg("--instances")
            .arg(&instances_file)
            .args(["--fail-ratio", "0.2", "--fail-code", "Network.Timeout"])
            .args(["--duration-ms", "300", "--progress-ms", "100"])
            .args(["--connect-rate", "1000", "--status-secs", "1"])
            .stdout(std::fs::File::create(&sim_log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_for("every simulated agent online", &sim_log, || {
        let list = client(&api, &ak_file, &["list-instances"]);
        let online = list["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["Online"] == true)
            .count();
        (online == SESSIONS).then_some(())
    });

    let mut send = vec![
        "send-file",
        "--source-file-path",
        "/sdcard/Download/sim.bin",
        "--upload-type",
        "DOWNLOAD_URL",
        "--upload-url",
        "https://cdn.example.com/sim.bin",
    ];
    for id in &ids {
        send.extend(["--instance", id.as_str()]);
    }
    let answer = client(&api, &ak_file, &send);
    let batch = answer["TaskId"].as_str().expect("a batch id").to_string();

    let rows = wait_for("every child in a final state", &sim_log, || {
        let page = client(
            &api,
            &ak_file,
            &[
                "describe-tasks",
                "--parent-task-id",
                &batch,
                "--max-results",
                "100",
            ],
        );
        let rows = page["Data"].as_array().unwrap().clone();
        let done = rows
            .iter()
            .filter(|r| matches!(r["TaskStatus"].as_str(), Some("FINISHED" | "FAILED")))
            .count();
        (rows.len() == SESSIONS && done == SESSIONS).then_some(rows)
    });
    let failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["TaskStatus"] == "FAILED")
        .collect();
    // ⌊50 × 0.2⌋: the simulator spreads the share exactly over its tasks.
    assert_eq!(failed.len(), SESSIONS / 5, "{rows:#?}");
    for row in &failed {
        assert_eq!(row["ErrorCode"], "Network.Timeout", "{row}");
    }
    for row in rows.iter().filter(|r| r["TaskStatus"] == "FINISHED") {
        let result: Value = serde_json::from_str(row["Result"].as_str().unwrap()).unwrap();
        assert_eq!(result["Phase"], "SUCCESS", "{row}");
        let file = &result["Files"][0];
        assert_eq!(file["Path"], "/sdcard/Download/sim.bin", "{row}");
        assert_eq!(file["Size"], 0, "{row}");
        assert_eq!(
            file["Sha256"], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "{row}"
        );
        assert!(
            result["Notes"].to_string().contains("simulated"),
            "the result says it is simulated: {row}"
        );
    }
    // By instance: one row, the same child.
    let one = &rows[0];
    let id = one["InstanceId"].as_str().unwrap();
    let by_instance = client(&api, &ak_file, &["describe-tasks", "--instance-id", id]);
    assert_eq!(by_instance["TotalCount"], 1, "{by_instance}");
    assert_eq!(by_instance["Data"][0]["TaskId"], one["TaskId"]);
    assert_eq!(by_instance["Data"][0]["TaskStatus"], one["TaskStatus"]);
    // The batch row counts the same mix.
    let parent = client(&api, &ak_file, &["describe-tasks", "--task-id", &batch]);
    let b = &parent["Data"][0];
    assert_eq!(b["SuccessChildCount"], SESSIONS - SESSIONS / 5, "{b}");
    assert_eq!(b["FailedChildCount"], SESSIONS / 5, "{b}");
}
