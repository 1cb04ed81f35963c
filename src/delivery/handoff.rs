//! In-process handoff: the API of a `serve` process starts a fresh
//! delivery's first attempt itself instead of waiting for a claim.
//!
//! The API reserves a slot (global and per host) first; if it gets one, it
//! inserts the delivery already leased to this process (state
//! `delivering`, the lease expiry as due time) and hands it straight to an
//! attempt task. That takes the claim transaction off the path from
//! "accepted" to "received". Nothing is lost if the process dies: the row is
//! committed and leased like any claimed one, so when the lease runs out
//! another worker attempts it (at least once, as ever). No slot free: the
//! delivery is queued as usual and the claim loop takes it.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;
use uuid::Uuid;

use super::{Attempts, HostSlot};
use crate::store::queue::Claimed;

/// Starts fresh deliveries in this process (cheap to clone).
#[derive(Debug, Clone)]
pub struct Handoff {
    pub(super) attempts: Attempts,
    pub(super) lease: Duration,
}

/// Room for one attempt, held from before the insert until it starts.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    slot: HostSlot,
    /// Counts as an attempt in flight for the dispatcher's shutdown, which
    /// therefore waits for a reserved delivery to be started (and its
    /// outcome written) instead of stopping between the insert and the
    /// start and leaving the row leased until the lease runs out.
    _in_flight: TaskTrackerToken,
    /// The lease token to insert the delivery with.
    pub lease: Uuid,
    /// How long the lease lasts.
    pub lease_for: Duration,
}

impl Handoff {
    /// Room for an attempt to `host` right now, if this process has it and
    /// is not shutting down.
    pub fn reserve(&self, host: &str) -> Option<Reservation> {
        if self.attempts.tracker.is_closed() {
            return None;
        }
        let in_flight = self.attempts.tracker.token();
        if self.attempts.tracker.is_closed() {
            // Shutdown began between the check above and the token.
            return None;
        }
        let permit = self.attempts.slots.clone().try_acquire_owned().ok()?;
        let slot = self.attempts.hosts.try_take(host)?;
        Some(Reservation {
            permit,
            slot,
            _in_flight: in_flight,
            lease: Uuid::now_v7(),
            lease_for: self.lease,
        })
    }

    /// Starts the first attempt of `d`, committed with `reservation.lease`.
    pub fn start(&self, reservation: Reservation, d: Claimed) {
        self.attempts.start(d, reservation.permit, reservation.slot);
    }
}
