//! The progress line on stderr for `send --wait`, `fetch` and `demo`.
//!
//! On a terminal one line is redrawn in place, at most ten times a second:
//! `[#####-----] 45% 12.3/27.0 MiB 85.2 MiB/s`. When stderr is a file or a pipe (CI logs),
//! a plain line is printed at most every two seconds instead, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const BAR_WIDTH: usize = 20;
const TTY_INTERVAL: Duration = Duration::from_millis(100);
const LOG_INTERVAL: Duration = Duration::from_secs(2);

pub struct Progress {
    /// Redraw in place (terminal) or append lines (log).
    tty: bool,
    /// Shown before the bar, e.g. the task id or the phase.
    label: String,
    last_draw: Option<Instant>,
    /// Bytes and time at the previous speed sample.
    sample: (Instant, u64),
    /// Smoothed bytes per second.
    speed: f64,
    done: u64,
    total: Option<u64>,
    /// A redrawn line is on screen and needs a newline before other output.
    dirty: bool,
    /// When the bar was made and the count then, for the average shown at the end.
    origin: (Instant, Option<u64>),
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Progress {
        Progress::with_mode(label, std::io::stderr().is_terminal())
    }

    pub fn with_mode(label: impl Into<String>, tty: bool) -> Progress {
        Progress {
            tty,
            label: label.into(),
            last_draw: None,
            sample: (Instant::now(), 0),
            speed: 0.0,
            done: 0,
            total: None,
            dirty: false,
            origin: (Instant::now(), None),
        }
    }

    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    /// Records the latest counts; draws when the interval for this output has passed.
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        let now = Instant::now();
        let (at, bytes) = self.sample;
        let elapsed = now.duration_since(at).as_secs_f64();
        let origin = *self.origin.1.get_or_insert(done);
        if done < origin {
            self.origin = (now, Some(done));
        }
        if done < bytes {
            // A restarted transfer (the source changed): start measuring again.
            self.sample = (now, done);
        } else if elapsed >= 0.5 && Some(done) != total {
            let current = (done - bytes) as f64 / elapsed;
            self.speed = if self.speed == 0.0 {
                current
            } else {
                0.5 * self.speed + 0.5 * current
            };
            self.sample = (now, done);
        }
        self.done = done;
        self.total = total;
        let interval = if self.tty { TTY_INTERVAL } else { LOG_INTERVAL };
        if self
            .last_draw
            .is_none_or(|t| now.duration_since(t) >= interval)
        {
            self.draw(now);
        }
    }

    /// Draws the final state, with the average speed, and ends the line.
    pub fn finish(&mut self) {
        let now = Instant::now();
        let (since, from) = self.origin;
        let secs = now.duration_since(since).as_secs_f64();
        if secs > 0.0 {
            self.speed = self.done.saturating_sub(from.unwrap_or(0)) as f64 / secs;
        }
        self.draw(now);
        self.clear_line();
    }

    /// Ends a redrawn line so that the next message starts on its own line.
    pub fn clear_line(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }

    fn draw(&mut self, now: Instant) {
        self.last_draw = Some(now);
        let line = render(&self.label, self.done, self.total, self.speed);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear_line();
    }
}

/// One progress line, without control characters.
pub fn render(label: &str, done: u64, total: Option<u64>, speed: f64) -> String {
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label} ")
    };
    let rate = format!("{}/s", human_bytes(speed as u64));
    match total {
        Some(total) if total > 0 => {
            let done = done.min(total);
            let filled = (done as u128 * BAR_WIDTH as u128 / total as u128) as usize;
            let percent = done as u128 * 100 / total as u128;
            let (unit, div) = unit_for(total);
            let amounts = if div == 1.0 {
                format!("{done}/{total} {unit}")
            } else {
                format!("{:.1}/{:.1} {unit}", done as f64 / div, total as f64 / div)
            };
            format!(
                "{prefix}[{}{}] {percent:>3}% {amounts} {rate}",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH - filled),
            )
        }
        _ => format!("{prefix}{} {rate}", human_bytes(done)),
    }
}

fn unit_for(n: u64) -> (&'static str, f64) {
    const KIB: f64 = 1024.0;
    if n >= 1 << 30 {
        ("GiB", KIB * KIB * KIB)
    } else if n >= 1 << 20 {
        ("MiB", KIB * KIB)
    } else if n >= 1 << 10 {
        ("KiB", KIB)
    } else {
        ("B", 1.0)
    }
}

/// `12.3 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    let (unit, div) = unit_for(n);
    if div == 1.0 {
        format!("{n} B")
    } else {
        format!("{:.1} {unit}", n as f64 / div)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_shape() {
        let mib = 1 << 20;
        let line = render("", 12 * mib + mib / 3, Some(27 * mib), 85.2 * mib as f64);
        assert_eq!(line, "[#########-----------]  45% 12.3/27.0 MiB 85.2 MiB/s");
        assert_eq!(render("t-1", 512, None, 0.0), "t-1 512 B 0 B/s");
        assert_eq!(
            render("", 10, Some(10), 1.0),
            "[####################] 100% 10/10 B 1 B/s"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
