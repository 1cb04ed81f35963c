//! Rate-limiting one kind of repeated log line: a background loop that
//! fails on every tick (retention, gauge refresh, breakers, LISTEN) logs at
//! warn at most once per interval, with the count of the lines it held
//! back since. It owns only the counting; it must not log, and it imports
//! nothing of the crate.
//!
//! One [`Throttle`] per kind of line (a `static`, since [`Throttle::new`]
//! is `const`): the first failure is always logged
//! (an operator sees an outage at once), repeats within the interval are
//! counted, and the next line after the interval says how many were
//! suppressed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a background loop may log the same kind of failure.
pub const BACKGROUND_EVERY: Duration = Duration::from_secs(60);

/// Lets one line of a kind through per interval and counts the others.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the last line was let through (`None`: never).
    last: Option<Instant>,
    /// Lines held back since then.
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// At most one line per [`BACKGROUND_EVERY`].
    pub fn background() -> Self {
        Self::new(BACKGROUND_EVERY)
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held
    /// back since the last one; `None` when this one is to be held back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`Throttle::admit`] at `now` (tests pass their own clock).
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting:
        // the counts are still usable.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::background()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_passes_repeats_are_counted_until_the_interval_ends() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.admit_at(start), Some(0));
        for s in 1..=59 {
            assert_eq!(t.admit_at(start + Duration::from_secs(s)), None, "{s}s");
        }
        // The next line says how many were held back.
        assert_eq!(t.admit_at(start + Duration::from_secs(60)), Some(59));
        assert_eq!(t.admit_at(start + Duration::from_secs(61)), None);
        assert_eq!(t.admit_at(start + Duration::from_secs(125)), Some(1));
        assert_eq!(t.admit_at(start + Duration::from_secs(300)), Some(0));
    }

    #[test]
    fn a_clock_going_backwards_holds_lines_back_instead_of_panicking() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now() + Duration::from_secs(10);
        assert_eq!(t.admit_at(start), Some(0));
        assert_eq!(t.admit_at(start - Duration::from_secs(5)), None);
        assert_eq!(t.admit_at(start + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn it_is_shared_between_threads() {
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(3600)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..100).filter(|_| t.admit().is_some()).count())
            })
            .collect();
        let passed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(passed, 1, "one line per interval across threads");
        assert_eq!(
            t.admit_at(Instant::now() + Duration::from_secs(3600)),
            Some(399)
        );
    }
}
