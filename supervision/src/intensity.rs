//! Restart intensity: how many restarts a supervisor tolerates in a sliding window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

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

/// The restarts inside the current window: when, and for which child's failure.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    times: VecDeque<(Instant, usize)>,
}

impl RestartWindow {
    /// Records a restart at `now` for child `child`; returns false when that exceeds the
    /// intensity.
    pub(crate) fn record(&mut self, intensity: &Intensity, now: Instant, child: usize) -> bool {
        self.times.push_back((now, child));
        while let Some((first, _)) = self.times.front() {
            if now.duration_since(*first) > intensity.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.len() <= intensity.max_restarts as usize
    }

    /// Forgets the restarts of child `child`: it has run stably since (past the backoff's
    /// `reset_after`), so its earlier crash loop no longer counts towards giving up.
    pub(crate) fn forget(&mut self, child: usize) {
        self.times.retain(|(_, c)| *c != child);
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
        assert!(w.record(&i, t0, 0));
        assert!(w.record(&i, t0 + Duration::from_secs(1), 0));
        assert!(!w.record(&i, t0 + Duration::from_secs(2), 0));
    }

    #[test]
    fn a_forgotten_childs_restarts_leave_room_and_the_others_stay() {
        let i = Intensity {
            max_restarts: 2,
            period: Duration::from_secs(5),
        };
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        assert!(w.record(&i, t0, 0));
        assert!(w.record(&i, t0, 1));
        w.forget(0);
        assert_eq!(w.len(), 1);
        assert!(w.record(&i, t0 + Duration::from_secs(1), 0));
        assert!(!w.record(&i, t0 + Duration::from_secs(1), 1));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let i = Intensity {
            max_restarts: 1,
            period: Duration::from_secs(5),
        };
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        assert!(w.record(&i, t0, 0));
        assert!(w.record(&i, t0 + Duration::from_secs(6), 0));
        assert_eq!(w.len(), 1);
        assert!(!w.record(&i, t0 + Duration::from_secs(7), 0));
    }

    #[test]
    fn zero_restarts_gives_up_at_once() {
        let i = Intensity {
            max_restarts: 0,
            period: Duration::from_secs(5),
        };
        assert!(!RestartWindow::default().record(&i, Instant::now(), 0));
    }
}
