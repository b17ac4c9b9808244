use super::*;
use std::os::unix::process::ExitStatusExt;

fn exit(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

#[test]
fn judges_pms_real_answers() {
    assert_eq!(
        judge(exit(0), "Success\n", ""),
        Verdict::Success("Success".into())
    );
    let v = judge(
        exit(1),
        "Failure [INSTALL_FAILED_VERSION_DOWNGRADE: Downgrade detected: Update version code 7 is older than current 8]\n",
        "",
    );
    let Verdict::Failure { reason, line } = v else {
        panic!("{v:?}")
    };
    assert_eq!(
        reason.unwrap().as_str(),
        "Install.INSTALL_FAILED_VERSION_DOWNGRADE"
    );
    assert!(line.contains("Update version code 7"), "{line}");
    // Android 6 and older print the failure and still exit 0.
    let v = judge(
        exit(0),
        "\tpkg: /data/local/tmp/a.apk\nFailure [INSTALL_FAILED_NO_MATCHING_ABIS]\n",
        "",
    );
    assert!(
        matches!(&v, Verdict::Failure { reason: Some(r), .. } if r.as_str() == "Install.INSTALL_FAILED_NO_MATCHING_ABIS"),
        "{v:?}"
    );
    // A reason that is not a plain identifier is kept as text, not as a code.
    let v = judge(exit(1), "Failure [weird reason]\n", "");
    assert!(
        matches!(&v, Verdict::Failure { reason: None, line } if line.contains("weird")),
        "{v:?}"
    );
}

#[test]
fn errors_exceptions_and_silence_are_failures_without_a_reason() {
    let v = judge(
        exit(1),
        "Error: must either specify a package size or an APK file\n",
        "",
    );
    assert!(
        matches!(&v, Verdict::Failure { reason: None, line } if line.starts_with("Error: must")),
        "{v:?}"
    );
    let v = judge(
        exit(255),
        "",
        "Exception occurred while executing 'install-commit':\njava.lang.SecurityException: Caller has no access to session 5\n\tat com.android.server.pm...\n",
    );
    assert!(
        matches!(&v, Verdict::Failure { reason: None, line } if line.contains("SecurityException")),
        "{v:?}"
    );
    let v = judge(exit(0), "", "");
    assert!(
        matches!(&v, Verdict::Failure { line, .. } if line.contains("printed nothing")),
        "{v:?}"
    );
    let v = judge(exit(3), "Success\n", "");
    assert!(
        matches!(&v, Verdict::Failure { .. }),
        "a non-zero exit is not a success: {v:?}"
    );
}

#[test]
fn reads_the_session_id() {
    assert_eq!(
        session_id("Success: created install session [1234567]"),
        Some(1_234_567)
    );
    assert_eq!(session_id("Success: created install session []"), None);
    assert_eq!(session_id("Success"), None);
}

/// A `pm` stand-in script in a temporary folder and a config that runs it.
fn script(dir: &std::path::Path, body: &str) -> Config {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("pm");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = Config::default();
    config.install.pm_command = path.display().to_string();
    config.install.install_flags = vec!["-r".into(), "-g".into()];
    config
}

fn input(dir: &std::path::Path, bytes: &[u8]) -> Input {
    let path = dir.join("in.apk");
    std::fs::write(&path, bytes).unwrap();
    Input {
        file: std::fs::File::open(&path).unwrap(),
        size: bytes.len() as u64,
    }
}

#[tokio::test]
async fn streams_the_apk_on_stdin_with_flags_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let config = script(
        dir.path(),
        &format!(
            "echo \"$@\" > '{0}.args'; cat > '{0}.bytes'; echo Success",
            seen.display()
        ),
    );
    let pm = Pm::new(&config, CancellationToken::new());
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let v = pm.install(input(dir.path(), &body)).await.unwrap();
    assert_eq!(v, Verdict::Success("Success".into()));
    let args = std::fs::read_to_string(dir.path().join("seen.args")).unwrap();
    assert_eq!(args.trim(), "install -r -g -S 300000");
    assert_eq!(std::fs::read(dir.path().join("seen.bytes")).unwrap(), body);
}

#[tokio::test]
async fn an_early_refusal_is_judged_even_though_stdin_was_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = script(
        dir.path(),
        "echo 'Error: failed to write; No space left on device'; exit 1",
    );
    let pm = Pm::new(&config, CancellationToken::new());
    let body = vec![7u8; 4 << 20];
    let v = pm.install(input(dir.path(), &body)).await.unwrap();
    assert!(
        matches!(&v, Verdict::Failure { line, .. } if line.contains("No space")),
        "{v:?}"
    );
}

#[tokio::test]
async fn a_missing_pm_is_not_runnable() {
    let mut config = Config::default();
    config.install.pm_command = "/nonexistent/ferry-test/pm".into();
    let pm = Pm::new(&config, CancellationToken::new());
    let err = pm.commit(1).await.unwrap_err();
    assert_eq!(
        err,
        PmError::NotRunnable("/nonexistent/ferry-test/pm: not found".into())
    );
}

/// Whether a process with this pid is still alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn gone(pid: i32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_hung_pm_and_what_it_started_are_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell starts a child (like pm starting `cmd`), records both pids, and hangs.
    let mut config = script(
        dir.path(),
        &format!("sleep 600 & echo $$ $! > '{}'; wait", pids.display()),
    );
    config.install.timeout_secs = 1;
    let pm = Pm::new(&config, CancellationToken::new());
    let started = std::time::Instant::now();
    let err = pm.commit(9).await.unwrap_err();
    assert!(
        matches!(&err, PmError::Timeout { command, .. } if command.ends_with("install-commit 9")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(gone(pid).await, "process {pid} survived the timeout");
    }
}

#[tokio::test]
async fn cancel_kills_pm_but_abandon_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = script(
        dir.path(),
        &format!(
            "echo \"$1 $$\" >> '{0}'; case \"$1\" in install-abandon) echo Success;; *) exec sleep 600;; esac",
            log.display()
        ),
    );
    let cancel = CancellationToken::new();
    let pm = Pm::new(&config, cancel.clone());
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let err = pm.commit(5).await.unwrap_err();
    assert!(matches!(err, PmError::Cancelled(_)), "{err:?}");
    assert_eq!(
        pm.abandon(5).await.unwrap(),
        Verdict::Success("Success".into())
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let commit_pid: i32 = text
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(gone(commit_pid).await);
    assert!(text.contains("install-abandon"), "{text}");
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn pm_outlives_the_thread_that_asked_for_it() {
    // PR_SET_PDEATHSIG fires when the forking *thread* ends; pm asked for from a thread that
    // ends at once (as tokio's threads may) must keep running: only the daemon's death ends it.
    let pid = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut command = tokio::process::Command::new("sleep");
            command.arg("30").kill_on_drop(false);
            let child = spawn_tied(command).await.unwrap();
            child.id().unwrap() as i32
        })
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let alive = process_alive(pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(alive, "pm died with the thread that started it");
}
