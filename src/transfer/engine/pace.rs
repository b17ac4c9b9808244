//! The pace of one transfer: the low-speed limit (curl's `--speed-limit`/`--speed-time`) and
//! the optional deadline, so a source dripping a byte now and then cannot hold a task slot
//! for ever.
//!
//! Every connection of the transfer adds the bytes it receives to one counter; a watchdog
//! samples it and fails the transfer when the bytes of the last `low_speed_time_secs` are
//! fewer than `low_speed_limit_bytes_s` times that window, or when the deadline passed. The
//! speed is the whole transfer's, so one slow connection of a parallel transfer does not end
//! it while the others flow (that connection is asked again, see [`PartPace`]). A retry wait
//! of the single stream does not count: the window is measured in time spent fetching, so a
//! source that sends a byte, resets, and is retried over and over still fills a window and
//! fails, while the wait itself is the retry budget's business.

use crate::config::Config;
use crate::error::{Code, Error};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub(super) struct Pace {
    /// Bytes/s; 0 turns the check off.
    limit: u64,
    window: Duration,
    deadline: Option<Duration>,
    started: Instant,
    received: AtomicU64,
    /// Retry waits going on, and when the first of them began: that time is taken out of
    /// the window when the last one ends.
    pauses: Mutex<(usize, Option<Instant>)>,
    /// (when, bytes received by then), oldest first, covering at least the last window.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Pace {
    /// Under the daemon's bandwidth cap a task may get no more than its share of it (the cap
    /// over `max_concurrent_tasks`): the limit then asks for at most half that share, so the
    /// cap alone never fails a transfer as too slow.
    pub fn new(daemon: &Config) -> Pace {
        let config = &daemon.transfer;
        let cap = daemon.bandwidth_limit_kib.saturating_mul(1024);
        let share = cap / daemon.max_concurrent_tasks.max(1) as u64;
        let limit = match config.low_speed_limit_bytes_s {
            limit if cap > 0 => limit.min((share / 2).max(1)),
            limit => limit,
        };
        let now = Instant::now();
        Pace {
            limit,
            window: Duration::from_secs(config.low_speed_time_secs.max(1)),
            deadline: (config.deadline_secs > 0).then(|| Duration::from_secs(config.deadline_secs)),
            started: now,
            received: AtomicU64::new(0),
            pauses: Mutex::new((0, None)),
            samples: Mutex::new(VecDeque::from([(now, 0)])),
        }
    }

    /// `n` more bytes arrived, on any connection.
    pub fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Holds the low-speed check while the guard lives (a retry wait); the time it lasted
    /// is taken out of the window when it ends.
    pub fn pause(&self) -> Paused<'_> {
        self.pause_at(Instant::now());
        Paused(self)
    }

    fn pause_at(&self, now: Instant) {
        let mut pauses = self.pauses.lock().expect("pace pauses");
        if pauses.0 == 0 {
            pauses.1 = Some(now);
        }
        pauses.0 += 1;
    }

    /// The last wait ended at `now`: every sample moves forward by the time waited, so the
    /// window keeps the bytes and the time of fetching, not of waiting.
    fn resume_at(&self, now: Instant) {
        let mut pauses = self.pauses.lock().expect("pace pauses");
        pauses.0 = pauses.0.saturating_sub(1);
        if pauses.0 > 0 {
            return;
        }
        if let Some(start) = pauses.1.take() {
            let waited = now.saturating_duration_since(start);
            for sample in self.samples.lock().expect("pace samples").iter_mut() {
                sample.0 += waited;
            }
        }
    }

    fn is_paused(&self) -> bool {
        self.pauses.lock().expect("pace pauses").0 > 0
    }

    /// Resolves when the transfer must stop: too slow, or past its deadline.
    pub async fn watch(&self, source: &str) -> Error {
        let tick = (self.window / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let deadline = self.deadline.map(|d| self.started + d);
        loop {
            let next = Instant::now() + tick;
            match deadline {
                Some(at) if at <= next => {
                    tokio::time::sleep_until(at).await;
                    return self.past_deadline(source);
                }
                _ => tokio::time::sleep_until(next).await,
            }
            if let Some(err) = self.sample(Instant::now(), source) {
                return err;
            }
        }
    }

    /// Records the bytes now; the error when the last window brought too few.
    fn sample(&self, now: Instant, source: &str) -> Option<Error> {
        if self.limit == 0 {
            return None;
        }
        if self.is_paused() {
            return None;
        }
        let received = self.received.load(Ordering::Relaxed);
        let mut samples = self.samples.lock().expect("pace samples");
        samples.push_back((now, received));
        // Keep one sample at least a window old: the start of the window measured.
        while samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
        {
            samples.pop_front();
        }
        let (since, then) = *samples.front()?;
        let span = now.duration_since(since);
        if span < self.window {
            return None;
        }
        let got = received - then;
        let wanted = self.limit as f64 * span.as_secs_f64();
        if got as f64 >= wanted {
            return None;
        }
        Some(Error::new(
            Code::NetworkTooSlow,
            format!(
                "{source} sent {got} bytes in the last {} s, below the limit of {} bytes/s (transfer.low_speed_limit_bytes_s over low_speed_time_secs); {received} bytes fetched, partial data kept so a re-submit resumes where possible",
                span.as_secs(),
                self.limit
            ),
        ))
    }

    fn past_deadline(&self, source: &str) -> Error {
        let received = self.received.load(Ordering::Relaxed);
        Error::new(
            Code::TransferDeadlineExceeded,
            format!(
                "{source} was not fetched within transfer.deadline_secs ({} s); {received} bytes fetched, partial data kept so a re-submit resumes where possible",
                self.deadline.unwrap_or_default().as_secs()
            ),
        )
    }

    /// The speed one of `connections` part connections must keep, as bytes in a window.
    pub fn part_pace(&self, connections: usize) -> Option<PartPace> {
        (self.limit > 0).then(|| PartPace {
            share: self.limit / connections.max(1) as u64,
            window: self.window,
            since: Instant::now(),
            bytes: 0,
        })
    }
}

pub(super) struct Paused<'a>(&'a Pace);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.resume_at(Instant::now());
    }
}

/// The pace of one part connection: slower than its share of the limit over a window, it is
/// dropped and the part asked again (a stuck connection, while the others flow).
pub(super) struct PartPace {
    share: u64,
    window: Duration,
    since: Instant,
    bytes: u64,
}

impl PartPace {
    /// `n` bytes arrived now; `true` when the window just ended below the share.
    pub fn too_slow(&mut self, n: u64, now: Instant) -> bool {
        self.bytes += n;
        let span = now.duration_since(self.since);
        if span < self.window {
            return false;
        }
        let slow = (self.bytes as f64) < self.share as f64 * span.as_secs_f64();
        (self.since, self.bytes) = (now, 0);
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransferConfig;

    fn config(limit: u64, secs: u64) -> Config {
        let transfer = TransferConfig {
            low_speed_limit_bytes_s: limit,
            low_speed_time_secs: secs,
            ..TransferConfig::default()
        };
        Config {
            transfer,
            ..Config::default()
        }
    }

    #[test]
    fn the_bandwidth_cap_alone_never_makes_a_transfer_too_slow() {
        let mut daemon = config(1024, 60);
        assert_eq!(Pace::new(&daemon).limit, 1024);
        // 1 KiB/s for 2 tasks: each may get 512 bytes/s, the limit asks for half of it.
        daemon.bandwidth_limit_kib = 1;
        daemon.max_concurrent_tasks = 2;
        assert_eq!(Pace::new(&daemon).limit, 256);
        daemon.transfer.low_speed_limit_bytes_s = 0;
        assert_eq!(Pace::new(&daemon).limit, 0, "off stays off");
    }

    #[test]
    fn a_drip_fails_once_a_whole_window_is_below_the_limit() {
        let pace = Pace::new(&config(1024, 10));
        let t0 = pace.started;
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Fast at first, then one byte every few seconds.
        pace.add(100_000);
        assert!(pace.sample(at(1), "s").is_none());
        for s in 2..11 {
            pace.add(1);
            assert!(
                pace.sample(at(s), "s").is_none(),
                "{s}: window not over yet"
            );
        }
        // The window [1, 11] holds 9 bytes: too slow.
        pace.add(1);
        let err = pace.sample(at(11), "s").expect("too slow");
        assert_eq!(err.code, Code::NetworkTooSlow);
        assert!(
            err.message.contains("sent 10 bytes in the last 10 s"),
            "{err}"
        );
    }

    #[test]
    fn a_steady_transfer_at_the_limit_goes_on_and_zero_turns_it_off() {
        let pace = Pace::new(&config(1024, 4));
        let t0 = pace.started;
        for s in 1..30 {
            pace.add(1024);
            assert!(pace.sample(t0 + Duration::from_secs(s), "s").is_none());
        }
        let off = Pace::new(&config(0, 1));
        assert!(off
            .sample(off.started + Duration::from_secs(100), "s")
            .is_none());
    }

    #[test]
    fn a_retry_wait_does_not_count_as_slow() {
        let at = |pace: &Pace, s: u64| pace.started + Duration::from_secs(s);
        let waited = Pace::new(&config(1024, 2));
        waited.pause_at(at(&waited, 0));
        assert!(waited.sample(at(&waited, 1), "s").is_none());
        assert!(
            waited.sample(at(&waited, 5), "s").is_none(),
            "waiting is not slow"
        );
        waited.resume_at(at(&waited, 6));
        waited.add(4096);
        assert!(waited.sample(at(&waited, 7), "s").is_none());
        assert!(waited.sample(at(&waited, 8), "s").is_none());
        let idle = Pace::new(&config(1024, 2));
        assert!(idle.sample(at(&idle, 1), "s").is_none());
        assert!(idle.sample(at(&idle, 3), "s").is_some());
    }

    /// A source that sends a byte, resets, and is retried after a wait, over and over: the
    /// waits are taken out, the time spent fetching adds up, and the window ends too slow
    /// (starting a new window after every wait, it never would).
    #[test]
    fn a_drip_between_retry_waits_still_fills_a_window() {
        let pace = Pace::new(&config(1024, 10));
        let t0 = pace.started;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut now = 0;
        let mut failed = None;
        for _ in 0..20 {
            // Two seconds of fetching that bring one byte, then a five-second wait.
            pace.add(1);
            now += 2;
            if let Some(err) = pace.sample(at(now), "s") {
                failed = Some(err);
                break;
            }
            pace.pause_at(at(now));
            now += 5;
            assert!(pace.sample(at(now), "s").is_none(), "waiting is not slow");
            pace.resume_at(at(now));
        }
        let err = failed.expect("ten seconds of fetching at a byte per two seconds is too slow");
        assert_eq!(err.code, Code::NetworkTooSlow);
    }

    #[test]
    fn a_part_below_its_share_is_asked_again() {
        let pace = Pace::new(&config(4096, 2));
        let mut part = pace.part_pace(4).unwrap();
        let t0 = part.since;
        assert!(!part.too_slow(100, t0 + Duration::from_secs(1)));
        assert!(
            part.too_slow(100, t0 + Duration::from_secs(2)),
            "200 B in 2 s < 1 KiB/s"
        );
        assert!(!part.too_slow(5000, t0 + Duration::from_secs(4)));
    }

    #[tokio::test]
    async fn the_deadline_ends_the_watch() {
        let mut daemon = config(0, 60);
        daemon.transfer.deadline_secs = 1;
        let pace = Pace::new(&daemon);
        let started = std::time::Instant::now();
        let err = pace.watch("s").await;
        assert_eq!(err.code, Code::TransferDeadlineExceeded);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
