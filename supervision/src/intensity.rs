//! Restart intensity: how many restarts a supervisor tolerates in a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// More than `max_restarts` restarts within `period` make a supervisor give up: it stops its
/// children and fails, so its own supervisor decides what happens next (as in OTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within `period`; 0 means the first restart already gives up.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Default for Intensity {
    /// Three restarts in five seconds.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// The restart times inside the current window.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    times: VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a restart at `now`; returns false when that exceeds the intensity.
    pub(crate) fn record(&mut self, intensity: &Intensity, now: Instant) -> bool {
        self.times.push_back(now);
        while let Some(first) = self.times.front() {
            if now.duration_since(*first) > intensity.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.len() <= intensity.max_restarts as usize
    }

    /// Restarts counted in the current window.
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_max_restarts_then_gives_up() {
        let i = Intensity {
            max_restarts: 2,
            period: Duration::from_secs(5),
        };
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        assert!(w.record(&i, t0));
        assert!(w.record(&i, t0 + Duration::from_secs(1)));
        assert!(!w.record(&i, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let i = Intensity {
            max_restarts: 1,
            period: Duration::from_secs(5),
        };
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        assert!(w.record(&i, t0));
        assert!(w.record(&i, t0 + Duration::from_secs(6)));
        assert_eq!(w.len(), 1);
        assert!(!w.record(&i, t0 + Duration::from_secs(7)));
    }

    #[test]
    fn zero_restarts_gives_up_at_once() {
        let i = Intensity {
            max_restarts: 0,
            period: Duration::from_secs(5),
        };
        assert!(!RestartWindow::default().record(&i, Instant::now()));
    }
}
