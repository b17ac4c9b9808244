//! The daemon's bandwidth cap: one token bucket shared (through an `Arc`) by every connection
//! of every transfer, because cloud phones on one host share its network.
//!
//! The engine pays for each body chunk after it arrived and before it reads the next one, so
//! a capped transfer stops reading and TCP flow control slows the sender. The wait happens
//! outside the idle-read timeout: a slow cap is not a dead connection.

use crate::config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A burst of this long at full rate may pass without waiting (at least `MIN_BURST` bytes).
const BURST: Duration = Duration::from_millis(100);
const MIN_BURST: f64 = 16.0 * 1024.0;

pub struct Bandwidth {
    /// Bytes per second; 0 means unlimited. Changed by a configuration reload.
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may pass now; negative is debt that later chunks wait out.
    tokens: f64,
    last: Instant,
}

impl Bandwidth {
    pub fn new(bytes_per_sec: u64) -> Arc<Bandwidth> {
        Arc::new(Bandwidth {
            rate: AtomicU64::new(bytes_per_sec),
            bucket: Mutex::new(Bucket {
                tokens: burst(bytes_per_sec),
                last: Instant::now(),
            }),
        })
    }

    pub fn unlimited() -> Arc<Bandwidth> {
        Bandwidth::new(0)
    }

    /// The cap of `bandwidth_limit_kib`.
    pub fn from_config(config: &Config) -> Arc<Bandwidth> {
        Bandwidth::new(config.bandwidth_limit_kib.saturating_mul(1024))
    }

    /// A new cap for every chunk from now on (SIGHUP).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate.load(Ordering::Relaxed) == 0
    }

    /// Waits until `bytes` more may pass.
    pub async fn take(&self, bytes: u64) {
        let delay = self.reserve(bytes, Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Books `bytes` and returns how long the caller must wait for them.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let mut bucket = self.bucket.lock().expect("bandwidth lock");
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.last = now;
        bucket.tokens = (bucket.tokens + elapsed * rate as f64).min(burst(rate));
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate as f64)
        }
    }
}

fn burst(rate: u64) -> f64 {
    (rate as f64 * BURST.as_secs_f64()).max(MIN_BURST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let b = Bandwidth::unlimited();
        assert_eq!(b.reserve(u64::MAX / 2, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn debt_is_shared_by_every_taker() {
        let b = Bandwidth::new(1 << 20);
        let now = Instant::now();
        // The burst (100 ms worth) passes; after it every MiB costs one second, whoever asks.
        assert_eq!(b.reserve(100 * 1024, now), Duration::ZERO);
        let first = b.reserve(1 << 20, now);
        let second = b.reserve(1 << 20, now);
        assert!((first.as_secs_f64() - 0.9977).abs() < 0.01, "{first:?}");
        assert!((second.as_secs_f64() - 1.9977).abs() < 0.01, "{second:?}");
        // Time pays the debt back.
        let later = now + Duration::from_secs(3);
        assert_eq!(b.reserve(50 * 1024, later), Duration::ZERO);
    }

    #[test]
    fn four_mib_by_two_takers_at_two_mib_per_second_take_about_two_seconds() {
        let b = Bandwidth::new(2 << 20);
        let start = Instant::now();
        // Two connections, each taking its next 64 KiB chunk once its wait is over.
        let mut ready = [start, start];
        for _ in 0..64 {
            let who = if ready[0] <= ready[1] { 0 } else { 1 };
            let now = ready[who];
            ready[who] = now + b.reserve(64 * 1024, now);
        }
        let took = (ready[0].max(ready[1]) - start).as_secs_f64();
        assert!((1.85..2.0).contains(&took), "{took}");
    }

    #[test]
    fn a_reload_changes_the_rate() {
        let b = Bandwidth::new(0);
        b.set_rate(1024);
        assert!(!b.is_unlimited());
        let now = Instant::now();
        assert!(b.reserve(1 << 20, now) > Duration::from_secs(100));
    }
}
