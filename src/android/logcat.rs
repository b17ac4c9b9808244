//! Logs into Android's logcat without liblog. A static binary built without the NDK cannot call
//! `__android_log_write`, but liblog itself only sends one datagram per record to logd's
//! socket (`/dev/socket/logdw`), and that format is small and stable, so ferry speaks it
//! directly: when the socket can be connected to, every `tracing` event also becomes one
//! logcat record that `logcat -s ferry` shows with its priority.
//!
//! The socket is connected to directly, as liblog does, never `stat()`ed first: AOSP's
//! `write_logd` grants `write` on `logdw_socket`, not `getattr`, so on an enforcing phone a
//! stat fails and would turn logcat off (and init discards stderr: the daemon would log
//! nothing at all).
//!
//! The record, as AOSP liblog writes it (`liblog/logd_writer.cpp` `LogdWrite()`, header type
//! `android_log_header_t` in `liblog/include/private/android_logger.h`, packed):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | log id: 0 main (liblog's `LOG_ID_MAIN`) |
//! | 2 | thread id, little endian (`gettid()` truncated to 16 bits, as liblog does) |
//! | 4 + 4 | realtime seconds and nanoseconds, little endian (`log_time`) |
//! | 1 | priority: 2 verbose, 3 debug, 4 info, 5 warn, 6 error (`android_LogPriority`) |
//! | n + 1 | tag, NUL-terminated |
//! | m + 1 | message, NUL-terminated |
//!
//! The payload after the header is capped at `LOGGER_ENTRY_MAX_PAYLOAD` (4068 bytes) like
//! liblog does; longer messages are cut. The socket is non-blocking like liblog's: a busy
//! logd loses records rather than stalling a transfer, and the loss is reported in the next
//! record that gets through.

use crate::config::Config;
use std::io::{self, ErrorKind, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// liblog's `LOG_ID_MAIN`: the buffer `logcat` shows by default.
pub const LOG_ID_MAIN: u8 = 0;
/// `sizeof(android_log_header_t)`: id (1) + tid (2) + seconds (4) + nanoseconds (4).
pub const HEADER_LEN: usize = 11;
/// liblog's `LOGGER_ENTRY_MAX_PAYLOAD`: priority, tag and message together, NULs included.
pub const MAX_PAYLOAD: usize = 4068;

/// `android_LogPriority` of a tracing level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::TRACE => 2,
        Level::DEBUG => 3,
        Level::INFO => 4,
        Level::WARN => 5,
        Level::ERROR => 6,
    }
}

/// One logd record: header, priority, tag and message, each string NUL-terminated and the
/// message shortened (at a character boundary) so the payload fits `MAX_PAYLOAD`.
pub fn record(tid: u16, time: SystemTime, level: Level, tag: &str, message: &str) -> Vec<u8> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let room = MAX_PAYLOAD.saturating_sub(tag.len() + 3);
    let mut end = message.len().min(room);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let mut out = Vec::with_capacity(HEADER_LEN + 3 + tag.len() + message.len());
    out.push(LOG_ID_MAIN);
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&(since.as_secs() as u32).to_le_bytes());
    out.extend_from_slice(&since.subsec_nanos().to_le_bytes());
    out.push(priority(level));
    out.extend_from_slice(tag.as_bytes());
    out.push(0);
    // A NUL inside the text would end the message early in logcat.
    out.extend(message.bytes().map(|b| if b == 0 { b' ' } else { b }));
    out.push(0);
    out
}

/// A connected, non-blocking datagram socket to logd.
#[derive(Debug)]
pub struct Logcat {
    socket: UnixDatagram,
    path: PathBuf,
    tag: String,
    /// Records lost to a full socket since the last one that got through.
    dropped: AtomicU64,
}

impl Logcat {
    /// The logd socket of this configuration: `None` when logcat is disabled (empty
    /// `logcat.socket`) or there is no socket at its path (ENOENT, ENOTDIR), an error naming
    /// the path when connecting fails otherwise (not a socket, nobody listening, EACCES).
    pub fn open(config: &Config) -> Option<io::Result<Logcat>> {
        if config.logcat.socket.is_empty() {
            return None;
        }
        let path = config.system_path(&config.logcat.socket);
        let mut tag: String = config.logcat.tag.replace('\0', "");
        if tag.is_empty() {
            tag = "ferry".into();
        }
        match Logcat::connect(&path, tag) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => None,
            Err(e) => Some(Err(io::Error::new(
                e.kind(),
                format!("cannot connect to logd at {}: {e}", path.display()),
            ))),
            Ok(logcat) => Some(Ok(logcat)),
        }
    }

    fn connect(path: &Path, tag: String) -> io::Result<Logcat> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_nonblocking(true)?;
        Ok(Logcat {
            socket,
            path: path.to_path_buf(),
            tag,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one record now; never blocks. Like liblog, a failed send other than "socket
    /// full" reconnects once (logd restarted) and tries again.
    pub fn send(&self, level: Level, message: &str) {
        let tid = nix::unistd::gettid().as_raw() as u16;
        let bytes = record(tid, SystemTime::now(), level, &self.tag, message);
        let sent = match self.socket.send(&bytes) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => self
                .socket
                .connect(&self.path)
                .and_then(|()| self.socket.send(&bytes)),
            other => other,
        };
        if sent.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note = format!("log records dropped: {lost} (logd did not keep up)");
            let note = record(tid, SystemTime::now(), Level::WARN, &self.tag, &note);
            if self.socket.send(&note).is_err() {
                self.dropped.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }
}

/// The writer `tracing_subscriber::fmt` formats each event into; the record is sent when the
/// formatted event is complete (the writer is dropped), with the event's level as priority.
pub struct EventWriter<'a> {
    logcat: &'a Logcat,
    level: Level,
    buf: Vec<u8>,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            self.logcat.send(self.level, text);
        }
    }
}

impl<'a> MakeWriter<'a> for Logcat {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> EventWriter<'a> {
        EventWriter {
            logcat: self,
            level: Level::INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter<'a> {
        EventWriter {
            logcat: self,
            level: *meta.level(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn record_layout_matches_liblog() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let r = record(0x1234, time, Level::WARN, "ferry", "disk nearly full");
        assert_eq!(r[0], 0);
        assert_eq!(&r[1..3], &[0x34, 0x12]);
        assert_eq!(&r[3..7], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&r[7..11], &123_456_789u32.to_le_bytes());
        assert_eq!(r[HEADER_LEN], 5);
        assert_eq!(&r[HEADER_LEN + 1..], b"ferry\0disk nearly full\0");
    }

    #[test]
    fn long_messages_are_cut_to_the_payload_limit_at_a_char_boundary() {
        let message = "é".repeat(5000);
        let r = record(1, SystemTime::now(), Level::INFO, "ferry", &message);
        assert!(r.len() - HEADER_LEN <= MAX_PAYLOAD, "{}", r.len());
        assert_eq!(r.last(), Some(&0));
        let text = &r[HEADER_LEN + 7..r.len() - 1];
        assert!(std::str::from_utf8(text).is_ok());
        let r = record(1, SystemTime::now(), Level::ERROR, "t", "a\0b");
        assert_eq!(&r[HEADER_LEN..], b"\x06t\0a b\0");
    }

    #[test]
    fn sends_one_datagram_per_event_and_reports_what_a_full_socket_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logdw");
        let logd = UnixDatagram::bind(&path).unwrap();
        let mut config = Config::default();
        config.logcat.socket = path.display().to_string();
        let logcat = Logcat::open(&config).unwrap().unwrap();
        {
            let mut w = logcat.make_writer();
            w.write_all(b"hello ").unwrap();
            w.write_all(b"world\n").unwrap();
        }
        let mut buf = [0u8; 8192];
        let n = logd.recv(&mut buf).unwrap();
        assert_eq!(&buf[HEADER_LEN..n], b"\x04ferry\0hello world\0");
        // Nobody reads: the queue fills, sends fail without blocking and are counted.
        while logcat.dropped.load(Ordering::Relaxed) == 0 {
            logcat.send(Level::INFO, "x");
        }
        logd.set_nonblocking(true).unwrap();
        while logd.recv(&mut buf).is_ok() {}
        logcat.send(Level::INFO, "after");
        let n = logd.recv(&mut buf).unwrap();
        assert_eq!(&buf[HEADER_LEN..n], b"\x04ferry\0after\0");
        let n = logd.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[HEADER_LEN..n]).into_owned();
        assert!(
            text.starts_with("\x05ferry\x00log records dropped: 1 "),
            "{text:?}"
        );
    }

    /// AOSP's `write_logd` grants `write` on logd's socket, never `getattr`: with every path
    /// stat refused, as on an enforcing phone, records must still reach logd.
    #[test]
    fn logdw_is_reached_without_stat_of_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logdw");
        let logd = UnixDatagram::bind(&path).unwrap();
        let mut config = Config::default();
        config.logcat.socket = path.display().to_string();
        let opened = crate::testing::without_path_stat(move || {
            let logcat = Logcat::open(&config)
                .ok_or("logcat off")?
                .map_err(|e| e.to_string())?;
            logcat.send(Level::INFO, "no stat");
            Ok::<_, String>(())
        });
        assert_eq!(opened, Ok(()));
        let mut buf = [0u8; 512];
        let n = logd.recv(&mut buf).unwrap();
        assert_eq!(&buf[HEADER_LEN..n], b"\x04ferry\0no stat\0");
    }

    #[test]
    fn no_socket_means_no_logcat_and_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            system_root: Some(dir.path().to_path_buf()),
            ..Config::default()
        };
        assert!(Logcat::open(&config).is_none());
        std::fs::create_dir_all(dir.path().join("dev/socket")).unwrap();
        std::fs::write(dir.path().join("dev/socket/logdw"), "").unwrap();
        assert!(Logcat::open(&config).unwrap().is_err());
        config.logcat.socket.clear();
        assert!(Logcat::open(&config).is_none());
    }
}
