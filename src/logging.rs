//! Log output: `tracing` events to stderr, human-readable or one JSON object per line,
//! filtered by a level string such as `info` or `ferry=debug,hyper=warn`.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. A bad filter falls back to `info` (and says so); a second
/// call keeps the first subscriber instead of panicking.
pub fn init(format: LogFormat, level: &str) {
    let (filter, bad) = match EnvFilter::try_new(level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    let installed = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    if installed.is_ok() {
        if let Some(e) = bad {
            tracing::warn!("log level {level:?} is not a valid filter ({e}); using info");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_does_not_panic() {
        init(LogFormat::Human, "ferry=debug");
        init(LogFormat::Json, "not a [valid filter");
    }
}
