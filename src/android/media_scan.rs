//! Telling Android's media store about a file that landed in shared storage, so galleries and
//! file pickers show it at once instead of after the next full scan. ferry is not an app and
//! cannot call `MediaScannerConnection`, so it runs the shell commands Android ships:
//!
//! - `broadcast` (default): `am broadcast -a android.intent.action.MEDIA_SCANNER_SCAN_FILE -d
//!   file:///sdcard/…` with the path percent-encoded. MediaProvider's receiver handles it on
//!   every Android version (deprecated since 10, still honoured); `am` prints `Broadcast
//!   completed: result=0` when the intent was delivered.
//! - `content` (Android 11+): `content call --uri content://media/external/file --method
//!   scan_file --arg /sdcard/…`. `content call` calls the provider of the URI's authority
//!   (`media`); `scan_file` is `MediaStore.SCAN_FILE_CALL`, whose string argument is the
//!   absolute file path (`MediaStore.scanFile()` calls it that way), answered with `Result:
//!   Bundle[{android.intent.extra.STREAM=content://…}]`.
//!
//! A scan never fails the task: the file is already in place. A missing command, an error, or
//! no answer within [`TIMEOUT`] (the command is then killed) is logged and returned as a note
//! for the task's result. Commands given as absolute paths are system files and follow
//! `system_root`; bare names are looked up on `PATH`.

use crate::config::{Config, MediaScanMode};
use crate::paths::DevicePath;
use std::process::Stdio;
use std::time::Duration;

/// `am` starts a Java process; a few seconds is normal on a busy phone.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const SCAN_ACTION: &str = "android.intent.action.MEDIA_SCANNER_SCAN_FILE";
/// Any URI with the `media` authority reaches MediaProvider's `call()`.
const MEDIA_URI: &str = "content://media/external/file";

/// One command line to run: the program as given in the configuration, where to find it, and
/// its arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct ScanCommand {
    /// As configured (`am`, `/system/bin/am`), for messages.
    pub name: String,
    /// What is executed: the name for a `PATH` lookup, or the path mapped by `system_root`.
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    pub mode: MediaScanMode,
}

/// The command that announces `path`, or `None` when scans are off or `path` lies outside
/// `media_scan.roots` (app-private and scratch folders are not media).
pub fn command_for(config: &Config, path: &DevicePath) -> Option<ScanCommand> {
    let scan = &config.media_scan;
    let under_root = scan
        .roots
        .iter()
        .filter_map(|root| DevicePath::parse(root).ok())
        .any(|root| path.starts_with(&root));
    if !under_root {
        return None;
    }
    let text = path.to_string();
    let (name, args) = match scan.mode {
        MediaScanMode::Off => return None,
        MediaScanMode::Broadcast => {
            let uri = url::Url::from_file_path(&text).ok()?;
            let args = ["broadcast", "-a", SCAN_ACTION, "-d", uri.as_str()];
            (&scan.am_command, args.map(String::from).to_vec())
        }
        MediaScanMode::Content => {
            let args = ["call", "--uri", MEDIA_URI, "--method", "scan_file", "--arg"];
            let mut args: Vec<String> = args.map(String::from).to_vec();
            args.push(text);
            (&scan.content_command, args)
        }
    };
    let program = if name.starts_with('/') {
        config.system_path(name)
    } else {
        name.into()
    };
    Some(ScanCommand {
        name: name.clone(),
        program,
        args,
        mode: scan.mode,
    })
}

/// Announces `path` to the media store when the configuration asks for it. Returns a note for
/// the task when the announcement did not happen; never an error.
pub async fn announce(config: &Config, path: &DevicePath) -> Option<String> {
    let command = command_for(config, path)?;
    match run(&command, TIMEOUT).await {
        Ok(()) => {
            tracing::debug!(path = %path, "media store told about the new file");
            None
        }
        Err(why) => {
            let note = format!(
                "media scan: {why}; {path} is in place but may not show in galleries until the next media scan"
            );
            tracing::warn!("{note}");
            Some(note)
        }
    }
}

/// Runs the command with a time limit and judges its output; `Err` says what went wrong.
async fn run(command: &ScanCommand, limit: Duration) -> Result<(), String> {
    let name = &command.name;
    let child = tokio::process::Command::new(&command.program)
        .args(&command.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{name} not found"),
            _ => format!("cannot run {name}: {e}"),
        })?;
    // On timeout the child is dropped, which kills it (kill_on_drop); tokio reaps it.
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| format!("{name} gave no answer within {limit:?} and was stopped"))?
        .map_err(|e| format!("waiting for {name}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = || {
        let text = format!("{stdout}\n{stderr}");
        let last = text.lines().rev().find(|l| !l.trim().is_empty());
        last.unwrap_or("no output").trim().to_string()
    };
    if !output.status.success() {
        return Err(format!("{name} failed ({}): {}", output.status, said()));
    }
    let delivered = match command.mode {
        MediaScanMode::Broadcast => stdout.contains("Broadcast completed"),
        // `content` reports provider errors on stderr and still exits 0.
        MediaScanMode::Content => stdout.contains("Result:") && !stderr.contains("Error"),
        MediaScanMode::Off => true,
    };
    if !delivered {
        return Err(format!("{name} did not confirm the scan: {}", said()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> DevicePath {
        DevicePath::parse(p).unwrap()
    }

    #[test]
    fn broadcast_uri_is_percent_encoded_and_only_shared_storage_is_announced() {
        let config = Config::default();
        let c = command_for(&config, &path("/sdcard/Download/a b#1%.jpg")).unwrap();
        assert_eq!(c.program, std::path::PathBuf::from("am"));
        assert_eq!(
            c.args,
            [
                "broadcast",
                "-a",
                "android.intent.action.MEDIA_SCANNER_SCAN_FILE",
                "-d",
                "file:///sdcard/Download/a%20b%231%25.jpg"
            ]
        );
        assert!(command_for(&config, &path("/storage/emulated/0/DCIM/x.jpg")).is_some());
        assert!(command_for(&config, &path("/data/local/tmp/x.jpg")).is_none());
        assert!(command_for(&config, &path("/sdcardx/x.jpg")).is_none());
    }

    #[test]
    fn content_mode_and_system_root_mapping() {
        let mut config = Config::default();
        config.media_scan.mode = MediaScanMode::Content;
        config.media_scan.content_command = "/system/bin/content".into();
        config.system_root = Some("/tmp/root".into());
        let c = command_for(&config, &path("/sdcard/Movies/m.mp4")).unwrap();
        assert_eq!(
            c.program,
            std::path::PathBuf::from("/tmp/root/system/bin/content")
        );
        assert_eq!(
            c.args.join(" "),
            "call --uri content://media/external/file --method scan_file --arg /sdcard/Movies/m.mp4"
        );
        config.media_scan.mode = MediaScanMode::Off;
        assert!(command_for(&config, &path("/sdcard/Movies/m.mp4")).is_none());
    }

    #[tokio::test]
    async fn a_missing_command_is_a_note_not_an_error() {
        let mut config = Config::default();
        config.media_scan.am_command = "/nonexistent/ferry-test/am".into();
        let note = announce(&config, &path("/sdcard/Download/x.bin"))
            .await
            .unwrap();
        assert!(
            note.starts_with("media scan: /nonexistent/ferry-test/am not found"),
            "{note}"
        );
    }

    #[tokio::test]
    async fn a_command_without_confirmation_or_that_fails_is_a_note() {
        let mut config = Config::default();
        // `true` exits 0 without printing "Broadcast completed".
        config.media_scan.am_command = "true".into();
        let note = announce(&config, &path("/sdcard/x")).await.unwrap();
        assert!(note.contains("did not confirm"), "{note}");
        config.media_scan.am_command = "false".into();
        let note = announce(&config, &path("/sdcard/x")).await.unwrap();
        assert!(note.contains("false failed (exit status: 1)"), "{note}");
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_stopped() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-running");
        let script = dir.path().join("am");
        let text = format!("#!/bin/sh\nsleep 1\ntouch '{}'\n", marker.display());
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = Config::default();
        config.media_scan.am_command = script.display().to_string();
        let command = command_for(&config, &path("/sdcard/x")).unwrap();
        let err = run(&command, Duration::from_millis(100)).await.unwrap_err();
        assert!(
            err.contains("gave no answer within 100ms and was stopped"),
            "{err}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "the hung command was not killed");
    }
}
