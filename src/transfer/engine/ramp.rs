//! How many connections a parallel transfer uses, decided while it runs from the speed it
//! gets, because no fixed number suits every source: a throttled or distant server gives
//! each connection a share (more connections, more speed), a fast one on a short path is
//! already at the limit of the phone's CPU and storage with one (more connections cost
//! memory, CPU and out-of-order writes for nothing).
//!
//! A transfer starts on one connection. One that brings less than `split_below_mib_s` opens
//! every connection at once. A faster one tries twice as many, and keeps doubling while each
//! step brings at least [`GAIN`] times the speed of the one before; a step that does not is
//! taken back, and the transfer stays where it is.

/// The speed-up a doubling of connections must bring to be kept.
const GAIN: f64 = 1.25;

pub struct Ramp {
    max: usize,
    below: f64,
    level: usize,
    /// The level before the step on trial, and the speed it had.
    before: Option<(usize, f64)>,
    /// The first measure after a step covers new connections still starting: not counted.
    warming: bool,
    settled: bool,
}

impl Ramp {
    /// `max` connections at most; `split_below_mib_s` 0 opens them all at once.
    pub fn new(max: usize, split_below_mib_s: u64) -> Ramp {
        let max = max.max(1);
        let at_once = split_below_mib_s == 0 || max == 1;
        Ramp {
            max,
            below: (split_below_mib_s << 20) as f64,
            level: if at_once { max } else { 1 },
            before: None,
            warming: false,
            settled: at_once,
        }
    }

    pub fn connections(&self) -> usize {
        self.level
    }

    /// No more changes: measuring is over.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// Takes the speed (bytes/s) of the last measure; returns the new number of connections
    /// when it changes.
    pub fn measured(&mut self, rate: f64) -> Option<usize> {
        if self.settled {
            return None;
        }
        if std::mem::take(&mut self.warming) {
            return None;
        }
        let next = match self.before {
            None if rate < self.below => {
                self.settled = true;
                self.max
            }
            None => self.step(rate),
            Some((_, before)) if rate >= before * GAIN => {
                if self.level == self.max {
                    self.settled = true;
                    return None;
                }
                self.step(rate)
            }
            Some((level, _)) => {
                self.settled = true;
                level
            }
        };
        (next != self.level).then(|| {
            self.level = next;
            next
        })
    }

    fn step(&mut self, rate: f64) -> usize {
        self.before = Some((self.level, rate));
        self.warming = true;
        (self.level * 2).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = (1 << 20) as f64;

    #[test]
    fn a_slow_connection_opens_all_at_once() {
        let mut ramp = Ramp::new(8, 64);
        assert_eq!(ramp.connections(), 1);
        assert_eq!(ramp.measured(16.0 * MIB), Some(8));
        assert!(ramp.settled());
        assert_eq!(ramp.measured(1.0), None);
    }

    #[test]
    fn a_fast_connection_doubles_while_it_pays() {
        let mut ramp = Ramp::new(8, 64);
        assert_eq!(ramp.measured(80.0 * MIB), Some(2));
        assert_eq!(ramp.measured(10.0 * MIB), None, "warming up: not counted");
        assert_eq!(ramp.measured(150.0 * MIB), Some(4));
        assert_eq!(ramp.measured(150.0 * MIB), None);
        assert_eq!(
            ramp.measured(170.0 * MIB),
            Some(2),
            "4 brought too little: back to 2"
        );
        assert!(ramp.settled());
    }

    #[test]
    fn a_connection_at_the_limit_stays_alone() {
        let mut ramp = Ramp::new(8, 64);
        assert_eq!(ramp.measured(600.0 * MIB), Some(2));
        ramp.measured(0.0);
        assert_eq!(ramp.measured(610.0 * MIB), Some(1));
        assert_eq!(ramp.connections(), 1);
        assert!(ramp.settled());
    }

    #[test]
    fn doubling_stops_at_the_maximum() {
        let mut ramp = Ramp::new(3, 64);
        assert_eq!(ramp.measured(100.0 * MIB), Some(2));
        ramp.measured(0.0);
        assert_eq!(ramp.measured(200.0 * MIB), Some(3));
        ramp.measured(0.0);
        assert_eq!(ramp.measured(300.0 * MIB), None);
        assert_eq!(ramp.connections(), 3);
        assert!(ramp.settled());
    }

    #[test]
    fn zero_threshold_or_one_connection_is_settled_from_the_start() {
        let ramp = Ramp::new(8, 0);
        assert_eq!((ramp.connections(), ramp.settled()), (8, true));
        let ramp = Ramp::new(1, 64);
        assert_eq!((ramp.connections(), ramp.settled()), (1, true));
    }
}
