//! Log output: `tracing` events to stderr, human-readable or one JSON object per line,
//! filtered by a level string such as `info` or `ferry=debug,hyper=warn`; and, when logd's
//! socket exists (on a phone), the same events to logcat as well ([`crate::android::logcat`]).
//!
//! Stderr stays on when logcat is used. Android's init sends a service's stdout and stderr to
//! /dev/null unless told otherwise, so nothing is written twice anywhere that is kept, while a
//! person who starts `ferry daemon` from `adb shell`, and every test and CI run, still sees
//! the log where it always was.

use crate::android::logcat::Logcat;
use crate::config::{Config, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// The AWS SDK's debug and trace events carry whole requests — aws-sigv4's canonical request
/// includes the STS token header — so they stay at info unless a filter names them.
const SDK_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_runtime",
    "aws_sdk_s3",
];

fn quiet_sdk(mut filter: EnvFilter, level: &str) -> EnvFilter {
    for target in SDK_TARGETS.iter().filter(|t| !level.contains(*t)) {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber. `config` (when known) says where logd's socket is. A bad
/// filter falls back to `info` (and says so); a second call keeps the first subscriber
/// instead of panicking.
pub fn init(format: LogFormat, level: &str, config: Option<&Config>) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (quiet_sdk(f, level), None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let human = (format == LogFormat::Human).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(false)
    });
    let (logcat, logcat_error) = match config.and_then(Logcat::open) {
        Some(Ok(logcat)) => (Some(logcat), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let logcat_path = logcat.as_ref().map(|l| l.path().to_path_buf());
    // logcat adds its own time, priority and tag: the message is the rest of the human line.
    let logcat_layer = logcat.map(|logcat| {
        fmt::layer()
            .with_writer(logcat)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        .with(logcat_layer)
        .try_init();
    if installed.is_err() {
        return;
    }
    if let Some(e) = bad {
        tracing::warn!("log level {level:?} is not a valid filter ({e}); using info");
    }
    if let Some(e) = logcat_error {
        tracing::warn!("not logging to logcat: {e}");
    }
    if let Some(path) = logcat_path {
        tracing::debug!("logging to logcat through {} and to stderr", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_request_dumps_stay_quiet_unless_named() {
        let filter = quiet_sdk(EnvFilter::new("trace"), "trace").to_string();
        assert!(filter.contains("aws_sigv4=info"), "{filter}");
        let named = quiet_sdk(
            EnvFilter::new("trace,aws_sigv4=debug"),
            "trace,aws_sigv4=debug",
        );
        assert!(!named.to_string().contains("aws_sigv4=info"));
    }

    #[test]
    fn init_twice_does_not_panic() {
        init(LogFormat::Human, "ferry=debug", None);
        init(
            LogFormat::Json,
            "not a [valid filter",
            Some(&Config::default()),
        );
    }
}
