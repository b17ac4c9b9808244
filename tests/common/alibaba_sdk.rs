//! Alibaba's official Python SDK for Cloud Phone, pinned, in a venv under /var/tmp that the
//! first test to need it creates (`python3 -m venv` + pip). Without python3, venv or PyPI the
//! test skips, which under `CI=true` is a failure naming what is missing.

use super::skip::skip;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const VENV: &str = "/var/tmp/ferry-sdk-venv";
pub const PACKAGE: &str = "alibabacloud-eds-aic20230930";
pub const VERSION: &str = "4.38.0";

/// The venv's python with the SDK installed, or `None` after a skip.
pub fn python() -> Option<PathBuf> {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match READY.get_or_init(prepare) {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            skip(&format!(
                "Alibaba's Python SDK ({PACKAGE}=={VERSION}) is not available: {why}"
            ));
            None
        }
    }
}

fn installed(python: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m, alibabacloud_eds_aic20230930; \
         assert m.version('{PACKAGE}') == '{VERSION}'"
    );
    Command::new(python)
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn prepare() -> Result<PathBuf, String> {
    let python = Path::new(VENV).join("bin/python");
    if installed(&python) {
        return Ok(python);
    }
    // Several test binaries may get here at once: one installs, the others wait.
    let lock = std::fs::File::create("/var/tmp/ferry-sdk-venv.lock")
        .map_err(|e| format!("creating /var/tmp/ferry-sdk-venv.lock: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if installed(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    if !python.exists() {
        run(
            Command::new("python3").args(["-m", "venv", VENV]),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        )?;
    }
    run(
        Command::new(Path::new(VENV).join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("{PACKAGE}=={VERSION}"),
        ]),
        "pip install of the SDK",
    )?;
    if installed(&python) {
        Ok(python)
    } else {
        Err("installed, but it does not import".into())
    }
}
