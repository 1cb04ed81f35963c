//! What a process may start: a global limit of attempts in flight
//! (`POSTBACK_CONCURRENCY`), a per-host limit (fairness: one slow or dead
//! host never holds more than its share, and the claim skips hosts that
//! are full), a per-customer limit (one customer with many slow hosts never
//! holds more than `POSTBACK_PER_CUSTOMER_CONCURRENCY`), and the tracker of
//! every attempt in flight that shutdown waits for. Both the claim loop and the in-process handoff take their
//! room here, so they can never oversubscribe between them.
//!
//! It must not start anything: it only counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::claim::{ClaimRoom, KeyRoom};
use super::wake::Waker;

/// Most semaphore permits tokio allows; `POSTBACK_CONCURRENCY` is checked
/// against it when the settings are read.
pub const MAX_CONCURRENCY: usize = Semaphore::MAX_PERMITS;

/// The room of one process (cheap to clone; clones share the counts).
#[derive(Debug, Clone)]
pub struct Capacity {
    slots: Arc<Semaphore>,
    hosts: HostSlots,
    customers: HostSlots,
    in_flight: TaskTracker,
}

/// Room for one attempt: a global slot, a slot of its host and one of its
/// customer, returned when dropped.
#[derive(Debug)]
pub struct Room {
    _permit: OwnedSemaphorePermit,
    _host: HostSlot,
    _customer: Option<HostSlot>,
}

impl Capacity {
    /// `concurrency` attempts in flight at most, `per_host` per host;
    /// `waker` is woken whenever a full host gets a slot back.
    pub fn new(concurrency: usize, per_host: usize, per_customer: usize, waker: Waker) -> Self {
        Capacity {
            slots: Arc::new(Semaphore::new(concurrency.clamp(1, MAX_CONCURRENCY))),
            hosts: HostSlots::waking(per_host, waker.clone()),
            customers: HostSlots::waking(per_customer, waker),
            in_flight: TaskTracker::new(),
        }
    }

    /// Free global slots right now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }

    /// Resolves once at least one global slot is free.
    pub async fn wait_free(&self) {
        if let Ok(permit) = self.slots.acquire().await {
            drop(permit);
        }
    }

    /// Room for an attempt to `host` for `customer`, if there is some.
    pub fn try_take(&self, host: &str, customer: Option<&str>) -> Option<Room> {
        let customer = match customer {
            Some(c) => Some(self.customers.try_take(c)?),
            None => None,
        };
        let host = self.hosts.try_take(host)?;
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Room {
            _permit: permit,
            _host: host,
            _customer: customer,
        })
    }

    /// What the next claim may take, per host and per customer.
    pub fn claim_room(&self) -> ClaimRoom {
        ClaimRoom {
            hosts: self.hosts.room(),
            customers: self.customers.room(),
        }
    }

    /// How many hosts and customers are full right now (a claim that
    /// filled one more may have left other keys' due work behind).
    pub fn full_count(&self) -> usize {
        self.hosts.full_hosts().len() + self.customers.full_hosts().len()
    }

    /// The hosts with no room (the idle loop's next-due query skips them).
    pub fn full_hosts(&self) -> Vec<String> {
        self.hosts.full_hosts()
    }

    /// The tracker of attempts in flight (spawn them on it).
    pub fn tracker(&self) -> &TaskTracker {
        &self.in_flight
    }

    /// A token that counts as one attempt in flight, unless shutdown began.
    pub fn in_flight_token(&self) -> Option<TaskTrackerToken> {
        if self.in_flight.is_closed() {
            return None;
        }
        let token = self.in_flight.token();
        // Shutdown may have begun between the check and the token.
        (!self.in_flight.is_closed()).then_some(token)
    }

    /// Stops handing out room and waits for every attempt in flight.
    pub async fn close_and_wait(&self) {
        self.in_flight.close();
        self.in_flight.wait().await;
    }
}

/// Counts attempts in flight per host against a fixed limit.
#[derive(Debug, Clone)]
pub struct HostSlots {
    limit: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// Woken when a full host gets room again: the claim skipped that
    /// host's due work while it was full.
    waker: Waker,
}

/// A taken slot; returning it is dropping it.
#[derive(Debug)]
pub struct HostSlot {
    host: String,
    slots: HostSlots,
}

impl HostSlots {
    /// At most `limit` attempts per host.
    pub fn new(limit: usize) -> Self {
        Self::waking(limit, Waker::default())
    }

    /// At most `limit` attempts per host; `waker` is woken whenever a host
    /// that was full gets a slot back.
    pub fn waking(limit: usize, waker: Waker) -> Self {
        HostSlots {
            limit: limit.max(1),
            in_flight: Arc::default(),
            waker,
        }
    }

    /// Takes a slot for `host` if it has room.
    pub fn try_take(&self, host: &str) -> Option<HostSlot> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(host.to_owned()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(HostSlot {
            host: host.to_owned(),
            slots: self.clone(),
        })
    }

    /// Hosts with no room left, for the claim to skip.
    pub fn full_hosts(&self) -> Vec<String> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, n)| **n >= self.limit)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// How many more attempts each host may take, for the claim.
    pub fn room(&self) -> KeyRoom {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        KeyRoom {
            per_key: i64::try_from(self.limit).unwrap_or(i64::MAX),
            busy: map
                .iter()
                .map(|(h, n)| {
                    let left = self.limit.saturating_sub(*n);
                    (h.clone(), i64::try_from(left).unwrap_or(i64::MAX))
                })
                .collect(),
        }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut map = self
            .slots
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut was_full = false;
        if let Some(n) = map.get_mut(&self.host) {
            was_full = *n >= self.slots.limit;
            *n -= 1;
            if *n == 0 {
                map.remove(&self.host);
            }
        }
        drop(map);
        if was_full {
            self.slots.waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_host_is_refused_and_listed_until_a_slot_returns() {
        let slots = HostSlots::new(2);
        let a = slots.try_take("a");
        let b = slots.try_take("a");
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_take("a").is_none());
        let other = slots.try_take("b");
        assert!(other.is_some());
        assert_eq!(slots.full_hosts(), vec!["a".to_owned()]);
        let mut room = slots.room().busy;
        room.sort();
        assert_eq!(room, vec![("a".to_owned(), 0), ("b".to_owned(), 1)]);
        assert_eq!(slots.room().full(), vec!["a".to_owned()]);
        assert_eq!(slots.room().per_key, 2);
        drop(a);
        assert!(slots.full_hosts().is_empty());
        assert!(slots.try_take("a").is_some());
    }
}
