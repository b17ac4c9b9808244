//! The real `ferry` binary and its local API: routes, statuses and error codes, the token,
//! the unix socket, `send`/`tasks`/`cancel`/`fetch`/`demo`, and signals. Each test runs on
//! its own Android-like [`Target`]; `FERRY_TEST_CHROOT=1 FERRY_TEST_BIN=AARCH64_FERRY` runs
//! the same tests on the aarch64 build under qemu in a chroot (see `cli_support/target.rs`).

mod cli_support;

use cli_support::target::STATE_DIR;
use cli_support::{request_bytes, run, text, unix_exchange, Daemon, Files, Target};
use nix::sys::signal::Signal;
use std::io::Write;
use std::time::Duration;

const TASK_TIMEOUT: Duration = Duration::from_secs(60);

fn payload(id: &str, url: &str, path: &str) -> String {
    serde_json::json!({
        "TaskId": id,
        "SourceFilePath": path,
        "UploadType": "DOWNLOAD_URL",
        "UploadUrl": url,
    })
    .to_string()
}

#[test]
fn health_needs_no_token_and_everything_else_does() {
    let d = Daemon::start(&[]);
    let (status, body) = d.request("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    assert_eq!(body["Status"], "ok");
    assert_eq!(body["Version"], env!("CARGO_PKG_VERSION"));

    for token in [None, Some("0000")] {
        let (status, body) = d.request("GET", "/v1/tasks", token, None);
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["ErrorCode"], "Api.Unauthorized");
        let msg = body["ErrorMsg"].as_str().unwrap();
        let token_file = d.target.arg(format!("{STATE_DIR}/token"));
        assert!(msg.contains(&token_file.display().to_string()), "{msg}");
    }
    let (status, body) = d.get("/nowhere");
    assert_eq!(status, 404);
    assert_eq!(body["ErrorCode"], "Api.BadRequest");
    let (status, _) = d.request("PUT", "/v1/tasks", Some(&d.token), Some(b"{}"));
    assert_eq!(status, 405);
    let (status, body) = d.get("/v1/tasks/t-missing");
    assert_eq!(status, 404);
    assert_eq!(body["ErrorCode"], "Api.TaskNotFound");

    let token_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.state.join("token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(token_mode & 0o777, 0o600);
    assert_eq!(d.token.len(), 64);
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let d = Daemon::start(&[]);
    // An announced length over the limit is refused before any body byte is sent.
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000000\r\n\r\n",
        d.token
    );
    let stream = std::net::TcpStream::connect(&d.addr).unwrap();
    let (status, body) = cli_support::exchange(stream, head.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("Api.PayloadTooLarge"), "{body}");
    // A chunked body without a length is cut off once it passes the limit.
    let mut req = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        d.token
    )
    .into_bytes();
    let chunk = vec![b' '; 100 * 1024];
    write!(req, "{:x}\r\n", chunk.len()).unwrap();
    req.extend_from_slice(&chunk);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let stream = std::net::TcpStream::connect(&d.addr).unwrap();
    let (status, body) = cli_support::exchange(stream, &req);
    assert_eq!(status, 413, "{body}");
}

#[test]
fn bad_payloads_get_their_exact_code() {
    let d = Daemon::start(&[]);
    let cases: &[(&str, &str)] = &[
        ("{not json", "InvalidParameter.Payload"),
        (r#"{"Bogus":1}"#, "InvalidParameter.UnknownField"),
        (
            r#"{"SourceFilePath":"/sdcard/a","UploadType":"FTP","UploadUrl":"http://x/"}"#,
            "InvalidParameter.UploadType",
        ),
        (
            r#"{"SourceFilePath":"/sdcard/a","UploadType":"DOWNLOAD_URL","UploadUrl":"ftp://x/"}"#,
            "InvalidParameter.UploadUrl",
        ),
        (
            r#"{"TaskId":"../x","SourceFilePath":"/sdcard/a","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.TaskId",
        ),
        // serde_json would keep the second UploadUrl silently.
        (
            r#"{"SourceFilePath":"/sdcard/a","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/","UploadUrl":"http://y/"}"#,
            "InvalidParameter.Payload",
        ),
        // Outside the allowed roots, or the root itself as a file: refused before a task exists.
        (
            r#"{"SourceFilePath":"/proc/self/root/sdcard/a","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.SourceFilePath",
        ),
        (
            r#"{"SourceFilePath":"/data/system/a","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.SourceFilePath",
        ),
        (
            r#"{"SourceFilePath":"/sdcard","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.SourceFilePath",
        ),
        // Another task's staging file (any case), and a right-to-left override.
        (
            r#"{"SourceFilePath":"/sdcard/Download/.FERRY-t1.part","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.SourceFilePath",
        ),
        (
            r#"{"SourceFilePath":"/sdcard/Download/a\u202ekpa.exe","UploadType":"DOWNLOAD_URL","UploadUrl":"http://x/"}"#,
            "InvalidParameter.SourceFilePath",
        ),
        (
            r#"{"SourceFilePath":"/sdcard/Download","UploadType":"OSS","UploadUrl":"oss://cloudphone-saved-bucket-x/a","UploadEndpoint":"oss.example.com","Credentials":{"AccessKeyId":"a","AccessKeySecret":"b","Extra":"c"}}"#,
            "InvalidParameter.Credentials",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = d.request("POST", "/v1/tasks", Some(&d.token), Some(body.as_bytes()));
        assert_eq!(status, 400, "{body} -> {reply}");
        assert_eq!(reply["ErrorCode"], *code, "{body} -> {reply}");
    }
    // The CLI checks the same rules and exits 2, naming the flag it lacks.
    let out = d.cli(&["send", "--source-path", "/sdcard/Download/a"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("InvalidParameter.UploadUrl"));
    assert!(text(&out.stderr).contains("--url"));
    let out = d.cli(&[
        "send",
        "--source-path",
        "/proc/self/root/sdcard/a",
        "--url",
        "http://127.0.0.1:9/a",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("InvalidParameter.SourceFilePath"));
}

#[test]
fn submit_describe_list_and_idempotent_resubmit() {
    let files = Files::start(256 * 1024);
    let d = Daemon::start(&[]);
    let body = payload("t-idem", &files.url(), "/sdcard/Download/idem.bin");
    let (status, created) = d.request("POST", "/v1/tasks", Some(&d.token), Some(body.as_bytes()));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["TaskId"], "t-idem");
    let done = d.wait_phase("t-idem", &["SUCCESS", "FAILED"], TASK_TIMEOUT);
    assert_eq!(done["Phase"], "SUCCESS", "{done}");
    assert_eq!(done["TaskStatus"], "Finished");
    assert_eq!(done["Result"]["Files"][0]["Sha256"], files.server.sha256());
    let host = d.target.host("/sdcard/Download/idem.bin");
    assert_eq!(std::fs::metadata(&host).unwrap().len(), 256 * 1024);

    let (status, again) = d.request("POST", "/v1/tasks", Some(&d.token), Some(body.as_bytes()));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["TaskId"], "t-idem");
    assert_eq!(again["CreationTime"], created["CreationTime"]);

    let (status, list) = d.get("/v1/tasks");
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["Tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["TaskId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t-idem"]);

    let (status, metrics) = {
        let req = request_bytes("GET", "/metrics", Some(&d.token), None);
        let stream = std::net::TcpStream::connect(&d.addr).unwrap();
        cli_support::exchange(stream, &req)
    };
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ferry_tasks{phase=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE ferry_tasks_submitted_total counter"));
}

#[test]
fn send_wait_follows_to_success_and_failure() {
    let files = Files::start(512 * 1024);
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "send",
        "--url",
        &files.url(),
        "--source-path",
        "/sdcard/Download/sent.bin",
        "--wait",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["Phase"], "SUCCESS");
    assert_eq!(view["Result"]["Files"][0]["Sha256"], files.server.sha256());
    let id = view["TaskId"].as_str().unwrap().to_string();

    let out = d.cli(&["tasks"]);
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    assert!(table.starts_with("TASK ID"), "{table}");
    assert!(table.contains(&id) && table.contains("SUCCESS"), "{table}");
    let out = d.cli(&["tasks", &id]);
    assert!(text(&out.stdout).contains("/sdcard/Download/sent.bin"));

    let missing = files.url().replace("ferry-demo.bin", "missing.bin");
    let out = d.cli(&[
        "send",
        "--url",
        &missing,
        "--source-path",
        "/sdcard/Download/m.bin",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Source."),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stdout).trim().is_empty(),
        "send prints the TaskId"
    );

    // A path outside the allowed roots is refused by the daemon: bad input, exit 2.
    let out = d.cli(&["send", "--url", &files.url(), "--source-path", "Download/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("InvalidParameter.SourceFilePath"));
}

#[test]
fn no_daemon_means_exit_3() {
    let out = run(Target::new().command().arg("tasks"));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ferry daemon"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cancel_stops_a_running_task() {
    let files = Files::start(8 << 20);
    let d = Daemon::start(&[]);
    let slow = format!("{}?rate=65536", files.url());
    let out = d.cli(&[
        "send",
        "--url",
        &slow,
        "--source-path",
        "/sdcard/Download/slow.bin",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    d.wait_phase(&id, &["RUNNING"], TASK_TIMEOUT);
    let out = d.cli(&["cancel", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view = d.wait_phase(&id, &["CANCELLED", "FAILED", "SUCCESS"], TASK_TIMEOUT);
    assert_eq!(view["Phase"], "CANCELLED", "{view}");
    assert_eq!(view["ErrorCode"], "Cancelled");
    assert!(!d.target.host("/sdcard/Download/slow.bin").exists());

    let (status, body) = d.request("DELETE", "/v1/tasks/t-nope", Some(&d.token), None);
    assert_eq!(status, 404, "{body}");
    let out = d.cli(&["cancel", "t-nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Api.TaskNotFound"));
}

#[test]
fn unix_socket_serves_the_same_api() {
    let d = Daemon::start(&[]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&d.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (status, body) = unix_exchange(&d.socket, &request_bytes("GET", "/healthz", None, None));
    assert_eq!(status, 200, "{body}");
    let req = request_bytes("GET", "/v1/tasks", Some(&d.token), None);
    let (status, body) = unix_exchange(&d.socket, &req);
    assert_eq!(status, 200);
    assert_eq!(body.trim(), r#"{"Tasks":[]}"#);
    let socket = d.target.arg(format!("{STATE_DIR}/ferry.sock"));
    let out = d.cli(&["tasks", "--socket", &socket.display().to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // TCP through --addr works alike.
    let out = d.cli(&["tasks", "--addr", &d.addr]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let d = Daemon::start(&[]);
    let out = d.cli(&["daemon", "--listen", "off"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("already running"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        d.state.join("api.json").exists(),
        "the first daemon's address file stays"
    );
}

#[test]
fn sigterm_mid_transfer_exits_zero_and_cleans_up() {
    let files = Files::start(8 << 20);
    let mut d = Daemon::start(&[]);
    let slow = format!("{}?rate=65536", files.url());
    let body = payload("t-term", &slow, "/sdcard/Download/term.bin");
    let (status, _) = d.request("POST", "/v1/tasks", Some(&d.token), Some(body.as_bytes()));
    assert_eq!(status, 201);
    d.wait_phase("t-term", &["RUNNING"], TASK_TIMEOUT);
    d.signal(Signal::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(!d.state.join("api.json").exists());
    assert!(!d.socket.exists());
}

#[test]
fn sighup_reloads_the_config_file_and_survives_a_bad_one() {
    let t = Target::new();
    let config = t.write("/data/local/ferry.toml", "max_concurrent_tasks = 1\n");
    let config_arg = t.arg("/data/local/ferry.toml").display().to_string();
    let mut d = t.daemon(&["--config", &config_arg]);
    std::fs::write(&config, "max_concurrent_tasks = 3\n").unwrap();
    d.signal(Signal::SIGHUP);
    wait_for_log(&d, "configuration reloaded");
    std::fs::write(&config, "max_concurrent_tasks = \"many\"\n").unwrap();
    d.signal(Signal::SIGHUP);
    wait_for_log(&d, "keeping the running configuration");
    let (status, _) = d.request("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    d.signal(Signal::SIGINT);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
}

fn wait_for_log(d: &Daemon, needle: &str) {
    let deadline = std::time::Instant::now() + d.target.timeout(Duration::from_secs(10));
    while !d.log_text().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fetch_runs_in_process_and_checks_input() {
    let files = Files::start(300_000);
    let t = Target::new();
    let out = run(t
        .command()
        .args([
            "fetch",
            "--url",
            &files.url(),
            "--source-path",
            "/sdcard/Download/f.bin",
        ])
        .args(["--json", "--quiet"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["Files"][0]["Sha256"], files.server.sha256());
    assert_eq!(
        std::fs::metadata(t.host("/sdcard/Download/f.bin"))
            .unwrap()
            .len(),
        300_000
    );

    let out = run(t.command().args([
        "fetch",
        "--url",
        "gopher://x/",
        "--source-path",
        "/sdcard/a",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("InvalidParameter.UploadUrl: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn demo_sends_one_file_through_the_api_and_stops() {
    let t = Target::new();
    // `ferry demo` makes its folder under /var/tmp, else $TMPDIR; a phone has neither /var/tmp
    // nor /tmp, and adb shell (mkshrc) sets TMPDIR=/data/local/tmp.
    let out =
        run(t
            .command()
            .env("TMPDIR", t.arg("/data/local/tmp"))
            .args(["demo", "--size-mib", "2"]));
    let stdout = text(&out.stdout);
    let workdir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ferry demo: working in "))
        .map(str::to_string);
    if let Some(dir) = &workdir {
        let _ = std::fs::remove_dir_all(t.host_of_reported(dir));
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("verified:"), "{stdout}");
    assert!(
        stdout.contains("device path: /sdcard/Download/ferry-demo.bin"),
        "{stdout}"
    );
}

/// A signed link carries its credentials in the query: the API, `ferry tasks` (table, detail
/// and --json) and the daemon's log show it redacted, while the journal (0600) keeps the
/// real link so a restart can still fetch it.
#[test]
fn signed_link_secrets_are_shown_nowhere_but_kept_in_the_journal() {
    let files = Files::start(64 * 1024);
    let d = Daemon::start(&["--log-level", "debug"]);
    let url = format!(
        "{}?Expires=1&Signature=SECRETSIG&security-token=STSTOKEN&X-Amz-Credential=AKIDCRED%2F20261201",
        files.url()
    );
    let body = payload("t-signed", &url, "/sdcard/Download/signed.bin");
    let (status, created) = d.request("POST", "/v1/tasks", Some(&d.token), Some(body.as_bytes()));
    assert_eq!(status, 201, "{created}");
    let done = d.wait_phase("t-signed", &["SUCCESS", "FAILED"], TASK_TIMEOUT);
    assert_eq!(done["Phase"], "SUCCESS", "{done}");
    let secrets = ["SECRETSIG", "STSTOKEN", "AKIDCRED"];
    let (_, listed) = d.get("/v1/tasks");
    let shown = [
        ("POST answer", created.to_string()),
        ("GET task", done.to_string()),
        ("GET list", listed.to_string()),
        ("ferry tasks", text(&d.cli(&["tasks"]).stdout)),
        (
            "ferry tasks ID",
            text(&d.cli(&["tasks", "t-signed"]).stdout),
        ),
        (
            "ferry tasks --json",
            text(&d.cli(&["tasks", "--json"]).stdout),
        ),
        (
            "ferry tasks ID --json",
            text(&d.cli(&["tasks", "t-signed", "--json"]).stdout),
        ),
        ("daemon log", d.log_text()),
    ];
    for (place, text) in &shown {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} shown in {place}: {text}");
        }
    }
    assert!(
        done["Payload"]["UploadUrl"]
            .as_str()
            .unwrap()
            .contains("Signature=<redacted>"),
        "{done}"
    );
    let journal = d.state.join("tasks/t-signed.json");
    let kept = std::fs::read_to_string(&journal).unwrap();
    for secret in secrets {
        assert!(kept.contains(secret), "the journal lost {secret}: {kept}");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&journal).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
