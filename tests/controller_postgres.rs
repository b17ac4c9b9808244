//! `ferry-controller` (the real binary) on PostgreSQL: the admin commands and two `serve`
//! replicas given one `--database`, each with its own state folder and embedded broker. What
//! one replica is told (an AccessKey, an instance, a SendFile under a ClientToken) the other
//! answers from the same database; a repeated ClientToken on the other replica is the same
//! batch; the database password shows in no output or log. The cluster is
//! tests/common/postgres.rs (PostgreSQL missing: skipped loudly, a failure under CI=true).

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/skip.rs"]
mod skip;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_ferry-controller");

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

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, stdout, stderr) = run(cmd);
    assert!(ok, "{cmd:?} failed: {stderr}");
    stdout
}

/// `serve` on `--database url` with its own state folder, API port and embedded broker.
fn serve(state: &Path, url: &str, log: &Path) -> (Proc, String) {
    let api = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(CONTROLLER)
        .args(["serve", "--state-dir"])
        .arg(state)
        .args(["--database", url, "--listen", &api])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&api).is_err() {
        assert!(Instant::now() < deadline, "the controller never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, api)
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

#[test]
fn two_serve_replicas_and_the_admin_commands_share_one_database() {
    let Some(cluster) = postgres::shared() else {
        return;
    };
    let db = cluster.create_database();
    // One replica over TCP with the password in the URL, the other over the Unix socket.
    let (tcp, socket) = (cluster.tcp_url(&db), cluster.socket_url(&db));
    let tmp = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));

    let line = run_ok(
        Command::new(CONTROLLER)
            .args(["access-key", "create", "--state-dir"])
            .arg(&state_a)
            .args(["--database", &tcp]),
    );
    let ak_file = tmp.path().join("ak");
    std::fs::write(&ak_file, line.trim()).unwrap();
    let toml = run_ok(
        Command::new(CONTROLLER)
            .args(["instance", "add", "--state-dir"])
            .arg(&state_b)
            .args(["--database", &socket])
            .args(["--broker", "mqtt://127.0.0.1:1883", "acp-1"]),
    );
    assert!(toml.contains("instance_id = \"acp-1\""), "{toml}");
    // Nothing went to the state folders' SQLite files.
    assert!(!state_a.join("controller.sqlite").exists());
    assert!(!state_b.join("controller.sqlite").exists());
    let out = tmp.path().join("mosquitto");
    run_ok(
        Command::new(CONTROLLER)
            .args(["mosquitto-files", "--state-dir"])
            .arg(&state_a)
            .args(["--database", &tcp, "--out"])
            .arg(&out),
    );
    let passwd = std::fs::read_to_string(out.join("passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("acp-1:")), "{passwd}");

    let (log_a, log_b) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let (_a, api_a) = serve(&state_a, &tcp, &log_a);
    let (_b, api_b) = serve(&state_b, &socket, &log_b);
    let send = [
        "send-file",
        "--instance",
        "acp-1",
        "--source-file-path",
        "/sdcard/Download/a.bin",
        "--upload-type",
        "DOWNLOAD_URL",
        "--upload-url",
        "https://cdn.example.com/a.bin",
        "--client-token",
        "once",
    ];
    // The AccessKey made on A's command line signs requests to B, and the ClientToken given
    // to A is the same batch on B.
    let first = client(&api_a, &ak_file, &send);
    let again = client(&api_b, &ak_file, &send);
    assert_eq!(
        (&first["TaskId"], &first["Data"]),
        (&again["TaskId"], &again["Data"])
    );
    let batch = first["TaskId"].as_str().unwrap();
    for api in [&api_a, &api_b] {
        let rows = client(api, &ak_file, &["describe-tasks", "--task-id", batch]);
        assert_eq!(rows["TotalCount"], 1, "{rows}");
        assert_eq!(rows["Data"][0]["TaskStatus"], "PENDING", "{rows}");
        let all = client(api, &ak_file, &["describe-tasks"]);
        assert_eq!(all["TotalCount"], 2, "{all}");
    }
    drop((_a, _b));
    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("ferry-controller serving"), "{text}");
        assert!(!text.contains(&cluster.password), "{text}");
    }
    assert!(std::fs::read_to_string(&log_a)
        .unwrap()
        .contains(&format!("@127.0.0.1:{}/{db}", cluster.port)));

    // A wrong password: a clear failure that does not repeat it.
    let wrong = "Wr0ng-pass-word";
    let (ok, stdout, stderr) = run(Command::new(CONTROLLER)
        .args(["access-key", "create", "--state-dir"])
        .arg(&state_a)
        .args([
            "--database",
            &format!("postgres://ferry:{wrong}@127.0.0.1:{}/{db}", cluster.port),
        ]));
    assert!(!ok);
    assert!(
        !stdout.contains(wrong) && !stderr.contains(wrong),
        "{stderr}"
    );
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    // Not a PostgreSQL URL at all.
    let (ok, _, stderr) = run(Command::new(CONTROLLER)
        .args(["access-key", "create", "--state-dir"])
        .arg(&state_a)
        .args(["--database", &format!("mysql://root:{wrong}@127.0.0.1/db")]));
    assert!(!ok);
    assert!(!stderr.contains(wrong), "{stderr}");
    assert!(stderr.contains("not a postgres:// URL"), "{stderr}");
}
