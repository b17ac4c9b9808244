//! Running Android's package manager: `pm install -S SIZE` with the APK streamed on stdin (as
//! `adb install` does, so system_server never opens a file under /sdcard, which SELinux
//! forbids on many builds), and the session commands for split APKs: `install-create`,
//! `install-write -S SIZE ID NAME -`, `install-commit`, `install-abandon`.
//!
//! pm's replies, as printed by AOSP's `PackageManagerShellCommand`:
//! - `Success` (install, commit, abandon); `Success: created install session [ID]`;
//!   `Success: streamed N bytes`;
//! - `Failure [REASON: message]` or `Failure [REASON]` when the commit is refused (exit status
//!   1 and up on Android 7+, but 0 on older releases, so the text decides);
//! - `Error: …` for bad arguments or a failed write, and `Exception occurred while executing
//!   …` with a Java stack trace on stderr (exit 255) for anything else.
//!
//! Every command runs in its own process group under one deadline for the whole install; past
//! it, or when the task is cancelled, the group is killed (pm is a shell script that execs
//! `cmd package`, so killing the group reaches whatever it started). pm also dies with the
//! daemon: a `kill -9` of ferry must not leave it streaming into a session nobody commits
//! (see [`spawn_tied`]).

use crate::config::Config;
use crate::error::TaskCode;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `install-abandon` after a failure or a timeout gets this long of its own: a leaked
/// session counts against pm's limit ("Too many active sessions").
pub const ABANDON_LIMIT: Duration = Duration::from_secs(30);

/// Why pm did not give a verdict.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PmError {
    #[error("the install did not finish within {limit:?}; `{command}` was killed")]
    Timeout { command: String, limit: Duration },
    #[error("the task was cancelled while `{0}` ran; it was killed")]
    Cancelled(String),
    #[error("cannot run {0}")]
    NotRunnable(String),
}

/// What pm said about one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The `Success…` line.
    Success(String),
    /// Refused: pm's reason as a code when it gave one (`Install.INSTALL_FAILED_…`), and the
    /// line that says so.
    Failure {
        reason: Option<TaskCode>,
        line: String,
    },
}

impl Verdict {
    pub fn line(&self) -> &str {
        match self {
            Verdict::Success(line) | Verdict::Failure { line, .. } => line,
        }
    }
}

/// Judges pm's output. Failure lines win over the exit status, which old releases leave at 0.
pub fn judge(status: ExitStatus, stdout: &str, stderr: &str) -> Verdict {
    let lines = || stdout.lines().chain(stderr.lines()).map(str::trim);
    if let Some(line) = lines().find(|l| l.starts_with("Failure [")) {
        let inner = line["Failure [".len()..]
            .strip_suffix(']')
            .unwrap_or(&line["Failure [".len()..]);
        let reason = inner.split(':').next().unwrap_or_default().trim();
        return Verdict::Failure {
            reason: TaskCode::pm_reason(reason),
            line: line.to_string(),
        };
    }
    let trouble = |l: &&str| {
        l.starts_with("Error")
            || l.starts_with("Exception occurred")
            || l.starts_with("Security exception")
            || l.starts_with("java.")
    };
    if let Some(line) = lines().find(trouble) {
        let detail = lines().skip_while(|l| !trouble(l)).nth(1);
        let line = match detail {
            // "Exception occurred while executing 'install-commit':" says little; the next
            // line names the exception.
            Some(next) if line.starts_with("Exception occurred") && !next.is_empty() => {
                format!("{line} {next}")
            }
            _ => line.to_string(),
        };
        return Verdict::Failure { reason: None, line };
    }
    match lines().find(|l| l.starts_with("Success")) {
        Some(line) if status.success() => Verdict::Success(line.to_string()),
        _ => {
            let last = lines().rfind(|l| !l.is_empty());
            Verdict::Failure {
                reason: None,
                line: match last {
                    Some(l) => format!("pm exited with {status} after printing: {l}"),
                    None => format!("pm exited with {status} and printed nothing"),
                },
            }
        }
    }
}

/// The session id in `Success: created install session [1234]`.
pub fn session_id(line: &str) -> Option<u32> {
    let start = line.find('[')? + 1;
    let end = start + line[start..].find(']')?;
    line[start..end].parse().ok()
}

/// The package manager as configured, bounded by one deadline and the task's cancellation.
pub struct Pm {
    /// As configured (`pm`, `/system/bin/pm`), for messages.
    name: String,
    program: PathBuf,
    flags: Vec<String>,
    deadline: Instant,
    limit: Duration,
    cancel: CancellationToken,
}

/// Input streamed to pm's stdin: an open file and how many bytes pm is told to expect.
pub struct Input {
    pub file: std::fs::File,
    pub size: u64,
}

impl Pm {
    pub fn new(config: &Config, cancel: CancellationToken) -> Pm {
        let name = config.install.pm_command.clone();
        let program = if name.starts_with('/') {
            config.system_path(&name)
        } else {
            PathBuf::from(&name)
        };
        let limit = config.install.timeout();
        Pm {
            name,
            program,
            flags: config.install.install_flags.clone(),
            deadline: Instant::now() + limit,
            limit,
            cancel,
        }
    }

    /// `pm install FLAGS -S SIZE` with the APK on stdin.
    pub async fn install(&self, apk: Input) -> Result<Verdict, PmError> {
        let mut args = vec!["install".to_string()];
        args.extend(self.flags.iter().cloned());
        args.extend(["-S".into(), apk.size.to_string()]);
        self.run(&args, Some(apk), self.deadline, self.limit, &self.cancel)
            .await
    }

    /// `pm install-create FLAGS -S TOTAL`: the session id, or pm's refusal.
    pub async fn create(&self, total: u64) -> Result<Result<u32, Verdict>, PmError> {
        let mut args = vec!["install-create".to_string()];
        args.extend(self.flags.iter().cloned());
        args.extend(["-S".into(), total.to_string()]);
        let verdict = self
            .run(&args, None, self.deadline, self.limit, &self.cancel)
            .await?;
        Ok(match &verdict {
            Verdict::Success(line) => session_id(line).ok_or_else(|| Verdict::Failure {
                reason: None,
                line: format!("no session id in pm's answer {line:?}"),
            }),
            Verdict::Failure { .. } => Err(verdict),
        })
    }

    /// `pm install-write -S SIZE ID NAME -` with the split on stdin.
    pub async fn write(&self, session: u32, name: &str, apk: Input) -> Result<Verdict, PmError> {
        let args = [
            "install-write".to_string(),
            "-S".into(),
            apk.size.to_string(),
            session.to_string(),
            name.to_string(),
            "-".into(),
        ];
        self.run(&args, Some(apk), self.deadline, self.limit, &self.cancel)
            .await
    }

    pub async fn commit(&self, session: u32) -> Result<Verdict, PmError> {
        let args = ["install-commit".to_string(), session.to_string()];
        self.run(&args, None, self.deadline, self.limit, &self.cancel)
            .await
    }

    /// `pm install-abandon ID`, with [`ABANDON_LIMIT`] of its own and no cancellation: it
    /// cleans up after a failure, a timeout or a cancel.
    pub async fn abandon(&self, session: u32) -> Result<Verdict, PmError> {
        let args = ["install-abandon".to_string(), session.to_string()];
        let deadline = Instant::now() + ABANDON_LIMIT;
        self.run(
            &args,
            None,
            deadline,
            ABANDON_LIMIT,
            &CancellationToken::new(),
        )
        .await
    }

    async fn run(
        &self,
        args: &[String],
        input: Option<Input>,
        deadline: Instant,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<Verdict, PmError> {
        let shown = format!("{} {}", self.name, args.join(" "));
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = spawn_tied(command).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                PmError::NotRunnable(format!("{}: not found", self.name))
            }
            _ => PmError::NotRunnable(format!("{}: {e}", self.name)),
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let feed = async move {
            if let (Some(mut stdin), Some(input)) = (stdin, input) {
                let mut file = tokio::fs::File::from_std(input.file);
                // pm stops reading when it refuses early (EPIPE here): its output says why.
                let _ = tokio::io::copy(&mut file, &mut stdin).await;
            }
        };
        let work = async { tokio::join!(feed, child.wait_with_output()).1 };
        let outcome = tokio::select! {
            out = work => Ok(out),
            _ = tokio::time::sleep_until(deadline) => Err(PmError::Timeout {
                command: shown.clone(),
                limit,
            }),
            _ = cancel.cancelled() => Err(PmError::Cancelled(shown.clone())),
        };
        match outcome {
            Ok(Ok(out)) => {
                let verdict = judge(
                    out.status,
                    &String::from_utf8_lossy(&out.stdout),
                    &String::from_utf8_lossy(&out.stderr),
                );
                tracing::debug!(command = %shown, verdict = verdict.line(), "pm answered");
                Ok(verdict)
            }
            Ok(Err(e)) => Err(PmError::NotRunnable(format!("{shown}: {e}"))),
            Err(stop) => {
                kill_group(pid);
                tracing::warn!(command = %shown, "{stop}");
                Err(stop)
            }
        }
    }
}

/// A spawn request for the launcher thread.
struct Launch {
    command: tokio::process::Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>,
}

/// Spawns `command` so that the child gets SIGKILL when the daemon dies, however it dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Tokio's threads come and go (`block_in_place` hands a worker's core to a new thread; idle
/// blocking threads exit after seconds), and a pm forked by one of them would be killed in
/// the middle of an install. So every pm is forked by one thread that lives as long as the
/// process and does nothing else; it enters the caller's runtime so the child is reaped there.
///
/// The daemon can also die between the fork and the `prctl` in the child, before the death
/// signal is armed: the child then checks that its parent is still the daemon (`getppid`
/// would name the reaper that adopted it) and gives up instead of running orphaned.
pub async fn spawn_tied(
    mut command: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    static LAUNCHER: OnceLock<Option<std::sync::mpsc::Sender<Launch>>> = OnceLock::new();
    let daemon = std::process::id() as nix::libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes two system calls, which
    // are async-signal-safe; it does not allocate (the error is a raw OS error).
    unsafe {
        command.pre_exec(move || {
            use nix::libc;
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != daemon {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Launch>();
        std::thread::Builder::new()
            .name("ferry-pm".into())
            .spawn(move || {
                for mut launch in rx {
                    let _runtime = launch.runtime.enter();
                    // A caller gone meanwhile drops the child, which kill_on_drop kills.
                    let _ = launch.reply.send(launch.command.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(launcher) = launcher else {
        return Err(std::io::Error::other(
            "cannot start the thread that runs pm",
        ));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let launch = Launch {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    launcher
        .send(launch)
        .map_err(|_| std::io::Error::other("the thread that runs pm is gone"))?;
    answer
        .await
        .map_err(|_| std::io::Error::other("the thread that runs pm is gone"))?
}

/// SIGKILL to the process group led by `pid` (the child was made its leader at spawn).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
#[path = "pm_tests.rs"]
mod tests;
