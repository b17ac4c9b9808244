//! Retry policy: exponential backoff with jitter, bounded by a count and a time budget.
//!
//! The classification of failures lives with each source (`SourceError::transient`); this
//! module only decides how long to wait and when to give up, and says so in the final error.

use super::SourceError;
use crate::config::RetryConfig;
use std::time::{Duration, Instant};

pub struct Backoff {
    config: RetryConfig,
    /// Consecutive failures without progress; drives the exponent.
    streak: u32,
    /// All retries of this transfer, for the final message.
    retries: u32,
    started: Instant,
    /// The server's Retry-After that did not fit in what was left of the budget.
    refused_wait: Option<Duration>,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Self {
        Backoff {
            config: config.clone(),
            streak: 0,
            retries: 0,
            started: Instant::now(),
            refused_wait: None,
        }
    }

    /// Bytes arrived since the last failure: the next failure starts a fresh streak.
    pub fn progressed(&mut self) {
        self.streak = 0;
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// How long to wait before retrying `err`, or `None` when it must not be retried.
    pub fn next_delay(&mut self, err: &SourceError) -> Option<Duration> {
        if !err.transient || self.streak >= self.config.max_retries {
            return None;
        }
        let budget = Duration::from_secs(self.config.budget_secs);
        let remaining = budget.checked_sub(self.started.elapsed())?;
        let delay = match err.retry_after {
            Some(after) => after,
            None => {
                let exp = self
                    .config
                    .initial_backoff_ms
                    .saturating_mul(1u64 << self.streak.min(20));
                let capped = exp.min(self.config.max_backoff_ms);
                // "Equal jitter": at least half the delay, so retries never stampede to zero.
                Duration::from_millis(capped / 2 + fastrand::u64(0..=capped / 2))
            }
        };
        if delay > remaining {
            // Fail at once rather than sleep past the budget, and say why.
            self.refused_wait = err.retry_after;
            return None;
        }
        self.streak += 1;
        self.retries += 1;
        Some(delay)
    }

    /// The error to report once retrying stopped.
    pub fn give_up(&self, err: SourceError) -> SourceError {
        let mut message = err.message.clone();
        if let Some(after) = self.refused_wait {
            message = format!(
                "{message}: the server asked to retry after {} s (beyond the {} s budget, retry.budget_secs); not waiting",
                after.as_secs(),
                self.config.budget_secs
            );
        }
        if self.retries > 0 {
            message = format!(
                "{message} (after {} retries in {:.1} s)",
                self.retries,
                self.started.elapsed().as_secs_f64()
            );
        }
        SourceError { message, ..err }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn config(max_retries: u32, budget_secs: u64) -> RetryConfig {
        RetryConfig {
            max_retries,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            budget_secs,
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stops_at_the_limit() {
        let mut b = Backoff::new(&config(4, 60));
        let err = SourceError::transient(Code::SourceHttp5xx, "503");
        let delays: Vec<_> = (0..4).map(|_| b.next_delay(&err).unwrap()).collect();
        for (i, d) in delays.iter().enumerate() {
            let full = (100u64 << i).min(1000);
            assert!(
                d.as_millis() as u64 >= full / 2 && d.as_millis() as u64 <= full,
                "{i}: {d:?}"
            );
        }
        assert!(b.next_delay(&err).is_none());
        let msg = b.give_up(err).message;
        assert!(msg.contains("after 4 retries in"), "{msg}");
    }

    #[test]
    fn progress_resets_the_streak_but_not_the_count() {
        let mut b = Backoff::new(&config(1, 60));
        let err = SourceError::transient(Code::NetworkReset, "reset");
        assert!(b.next_delay(&err).is_some());
        assert!(b.next_delay(&err).is_none());
        b.progressed();
        assert!(b.next_delay(&err).is_some());
        assert_eq!(b.retries(), 2);
    }

    #[test]
    fn permanent_errors_and_exhausted_budgets_are_not_retried() {
        let mut b = Backoff::new(&config(5, 60));
        assert!(b
            .next_delay(&SourceError::permanent(Code::SourceNotFound, "404"))
            .is_none());
        let mut b = Backoff::new(&config(5, 1));
        let mut err = SourceError::transient(Code::SourceHttp4xx, "429");
        err.retry_after = Some(Duration::from_secs(5));
        assert!(
            b.next_delay(&err).is_none(),
            "Retry-After beyond the budget"
        );
        let msg = b.give_up(err).message;
        assert!(
            msg.ends_with("429: the server asked to retry after 5 s (beyond the 1 s budget, retry.budget_secs); not waiting"),
            "{msg}"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
