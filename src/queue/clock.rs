//! The database's clock, as this process knows it. Claims and leases are
//! compared with PostgreSQL's `now()`, so every time this process writes
//! for SQL to compare (due times, the start of a schedule's cycle) must be
//! on that clock too: a process whose own clock runs ahead would otherwise
//! delay its immediate retries by the skew, and workers on different hosts
//! would disagree about the give-up horizon.
//!
//! Every claim (and every idle look at the queue) reads `now()` from the
//! database; [`DbClock::observe`] keeps the offset between that and the
//! process clock, and [`DbClock::to_db`] moves a process-clock instant onto
//! the database's. It must not decide anything with the times it converts.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

/// The offset of the database's clock from this process's (cheap to clone;
/// clones share it). Zero until the first observation.
#[derive(Debug, Clone, Default)]
pub struct DbClock {
    /// `db - process`, in microseconds (PostgreSQL's resolution).
    offset_us: Arc<AtomicI64>,
}

impl DbClock {
    /// Records that the database's `now()` read `db_now` just now.
    pub fn observe(&self, db_now: OffsetDateTime) {
        let offset = db_now - OffsetDateTime::now_utc();
        let us = i64::try_from(offset.whole_microseconds()).unwrap_or(0);
        self.offset_us.store(us, Ordering::Relaxed);
    }

    /// The database's clock minus this process's.
    pub fn offset(&self) -> time::Duration {
        time::Duration::microseconds(self.offset_us.load(Ordering::Relaxed))
    }

    /// `local` (a reading of this process's clock) on the database's clock.
    pub fn to_db(&self, local: OffsetDateTime) -> OffsetDateTime {
        local.checked_add(self.offset()).unwrap_or(local)
    }

    /// Now, on the database's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.to_db(OffsetDateTime::now_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_clock_instant_is_moved_by_the_observed_skew() {
        let clock = DbClock::default();
        let t = OffsetDateTime::now_utc();
        assert_eq!(clock.to_db(t), t, "no observation: no offset");
        // The database runs an hour behind this process.
        clock.observe(OffsetDateTime::now_utc() - time::Duration::hours(1));
        let skew = clock.offset() + time::Duration::hours(1);
        assert!(skew.abs() < time::Duration::seconds(1), "{skew}");
        let moved = t - clock.to_db(t);
        assert!((moved - time::Duration::hours(1)).abs() < time::Duration::seconds(1));
    }
}
