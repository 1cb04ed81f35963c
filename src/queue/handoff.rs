//! In-process handoff: a fresh delivery goes from intake to this process's
//! engine without a claim round trip.
//!
//! Intake reserves [`Room`] first; if it gets some, it stores the delivery
//! already leased to this process (state `delivering`, the lease expiry as
//! due time) and, once committed, gives it to the engine through
//! [`Handoff::give`]. That takes the claim transaction off the path from
//! "accepted" to "received". Nothing is lost if the process dies: the row is
//! committed and leased like any claimed one, so when the lease runs out
//! another worker attempts it (at least once, as ever). No room: the
//! delivery is queued as usual and the claim loop takes it.
//!
//! This is the small handle that sits below both intake and the engine:
//! intake never sends anything itself, and the engine never reads intake's
//! types. A reservation counts as an attempt in flight, so shutdown waits
//! for a reserved delivery to be handed over and attempted instead of
//! stopping between the insert and the start (which would leave the row
//! leased until its lease ran out).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use uuid::Uuid;

use super::capacity::{Capacity, Room};
use super::claim::Claimed;
use super::clock::DbClock;
use crate::store::deliveries::NewDelivery;

/// Gives fresh deliveries to this process's engine (cheap to clone).
#[derive(Debug, Clone)]
pub struct Handoff {
    capacity: Capacity,
    lease: Duration,
    /// A handed-off delivery is "claimed" at its insert, by the database's
    /// clock as the engine last read it.
    clock: DbClock,
    engine: mpsc::UnboundedSender<Leased>,
}

/// Room for one attempt, held from before the insert until it starts.
#[derive(Debug)]
pub struct Reservation {
    room: Room,
    in_flight: TaskTrackerToken,
    lease: Uuid,
    lease_for: Duration,
}

impl Reservation {
    /// The lease token and duration to store the delivery with.
    pub fn lease(&self) -> (Uuid, Duration) {
        (self.lease, self.lease_for)
    }
}

/// A stored, leased delivery on its way to an attempt, with its room.
#[derive(Debug)]
pub struct Leased {
    /// What to attempt.
    pub delivery: Claimed,
    /// Its global and host slot.
    pub room: Room,
    /// Keeps shutdown waiting until the attempt has been started.
    pub in_flight: TaskTrackerToken,
}

/// The engine's end of the handoff.
pub type Receiver = mpsc::UnboundedReceiver<Leased>;

/// A handoff into `capacity`, leasing for `lease`, on the engine's
/// `clock`, and the engine's end.
pub fn channel(capacity: Capacity, lease: Duration, clock: DbClock) -> (Handoff, Receiver) {
    let (engine, rx) = mpsc::unbounded_channel();
    (
        Handoff {
            capacity,
            lease,
            clock,
            engine,
        },
        rx,
    )
}

impl Handoff {
    /// Room for an attempt to `host` for `customer` with a body of
    /// `body_len` bytes right now, if this process has it and is not
    /// shutting down. A body larger than a claim would bring along is not
    /// handed over: it is stored and claimed like any other, so it is held
    /// only under the byte budget of claimed bodies (SPEC §3), never beside
    /// it.
    pub fn reserve(
        &self,
        host: &str,
        customer: Option<&str>,
        body_len: usize,
    ) -> Option<Reservation> {
        if body_len > self.capacity.inline_max() {
            return None;
        }
        let in_flight = self.capacity.in_flight_token()?;
        let room = self.capacity.try_take(host, customer)?;
        Some(Reservation {
            room,
            in_flight,
            lease: Uuid::now_v7(),
            lease_for: self.lease,
        })
    }

    /// Gives `row`, committed with `reservation`'s lease, to the engine.
    /// If the engine is gone (it stopped), the row stays leased and any
    /// worker attempts it when the lease runs out.
    pub fn give(&self, reservation: Reservation, row: NewDelivery) {
        let Reservation {
            room,
            in_flight,
            lease,
            ..
        } = reservation;
        let leased = Leased {
            delivery: Claimed::fresh(row, lease, self.clock.now()),
            room,
            in_flight,
        };
        if self.engine.send(leased).is_err() {
            tracing::debug!("engine stopped; the handed-off delivery waits for its lease");
        }
    }
}
