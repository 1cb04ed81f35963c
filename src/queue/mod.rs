//! The queue protocol, in one place: how a stored delivery becomes an
//! attempt in some process, exactly once per lease.
//!
//! - [`claim`]: the SQL of the hot path: claim (a lease), complete (fenced
//!   by the lease token), release, and the next due time.
//! - [`wake`]: wake-ups, in process ([`Waker`]) and across processes
//!   (LISTEN/NOTIFY on [`WAKE_CHANNEL`]).
//! - [`clock`]: the database's clock, which every due time is written on.
//! - [`capacity`]: the room a process has (global, per host) and the
//!   tracker of attempts in flight.
//! - [`handoff`]: the handle through which intake gives a freshly stored,
//!   already leased delivery to this process's engine.
//!
//! Intake (above) writes deliveries and uses the handoff; the engine
//! (`delivery`, above) claims, attempts and completes. This module knows
//! neither: it must not render, validate, send HTTP or decide a schedule.

pub mod capacity;
pub mod claim;
pub mod clock;
pub mod handoff;
pub mod wake;

pub use capacity::{Capacity, Room};
pub use claim::{ClaimRoom, Claimed, Completion, KeyRoom};
pub use clock::DbClock;
pub use handoff::{Handoff, Reservation};
pub use wake::{notify_workers, Notifier, Waker, WAKE_CHANNEL};
