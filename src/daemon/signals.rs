//! Unix signals turned into events on a tokio channel.
//!
//! A plain thread blocks in `signal_hook::iterator::Signals` (async-signal-safe; tokio's own
//! signal support is not compiled in) and forwards what arrives. SIGTERM and SIGINT ask for a
//! clean stop; a second one means the operator has lost patience, and the process exits
//! immediately. SIGHUP asks for a configuration reload when the caller wants it.

use crate::error::{Code, Error, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// Exit status of a forced stop (128 + SIGINT, as shells report an interrupted command).
pub const FORCED_EXIT: i32 = 130;

/// What a signal asks of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT: finish cleanly. Carries the signal's name for the log.
    Stop(&'static str),
    /// SIGHUP: re-read the configuration.
    Reload,
}

/// Starts the watcher thread. With `reload` false, SIGHUP keeps its default action.
pub fn watch(reload: bool) -> Result<mpsc::UnboundedReceiver<Event>> {
    let mut wanted = vec![SIGTERM, SIGINT];
    if reload {
        wanted.push(SIGHUP);
    }
    let mut signals = Signals::new(&wanted)
        .map_err(|e| Error::new(Code::Internal, format!("installing signal handlers: {e}")))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || {
            let mut stops = 0u32;
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Event::Reload,
                    SIGTERM => Event::Stop("SIGTERM"),
                    _ => Event::Stop("SIGINT"),
                };
                if let Event::Stop(name) = event {
                    stops += 1;
                    if stops > 1 {
                        eprintln!("ferry: second {name}: exiting now without cleaning up");
                        std::process::exit(FORCED_EXIT);
                    }
                }
                // Nobody listening any more is fine: the program is already ending.
                let _ = tx.send(event);
            }
        })
        .map_err(|e| Error::new(Code::Internal, format!("starting the signal thread: {e}")))?;
    Ok(rx)
}
