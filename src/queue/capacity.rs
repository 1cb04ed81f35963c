//! What a process may start: a global limit of attempts in flight
//! (`POSTBACK_CONCURRENCY`), a per-host limit (fairness: one slow or dead
//! host never holds more than its share, and the claim skips hosts that
//! are full), the same limit per resolved address, a per-customer limit
//! (one customer with many slow hosts never holds more than
//! `POSTBACK_PER_CUSTOMER_CONCURRENCY`), and the tracker of every attempt
//! in flight that shutdown waits for. Both the claim loop and the
//! in-process handoff take their room here, so they can never
//! oversubscribe between them.
//!
//! Per address (SPEC §3: "however many names point at one address"): an
//! attempt takes a slot of the address its host resolved to before it
//! connects ([`Capacity::take_address`]), and the host is remembered as
//! pointing there, so while that address is full the claim and the
//! handoff treat every host known to point at it as full too. A wildcard
//! DNS zone thus gets one share, not one per name.
//!
//! It must not start anything: it only counts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::claim::{ClaimRoom, KeyRoom};
use super::wake::Waker;

/// Most bytes of claimed bodies one process holds (SPEC §3: under 256 MiB
/// however large each payload is). Half of it bounds the bodies that come
/// with a claim (each at most [`Capacity::inline_max`], at most one per
/// slot), the other half the larger ones read when their attempt starts.
pub const BODY_BUDGET: usize = 256 * 1024 * 1024;
/// Largest body that comes with its claim.
pub const INLINE_BODY_MAX: usize = 64 * 1024;

/// Most semaphore permits tokio allows; `POSTBACK_CONCURRENCY` is checked
/// against it when the settings are read.
pub const MAX_CONCURRENCY: usize = Semaphore::MAX_PERMITS;

/// The room of one process (cheap to clone; clones share the counts).
#[derive(Debug, Clone)]
pub struct Capacity {
    slots: Arc<Semaphore>,
    hosts: HostSlots,
    /// Attempts in flight per customer.
    customers: HostSlots,
    /// Attempts in flight per resolved address (same limit as per host).
    addresses: HostSlots,
    /// Which address each recently attempted host resolved to.
    pointing: Arc<Mutex<Pointing>>,
    /// Bytes of bodies read at attempt start (half of [`BODY_BUDGET`]).
    body_bytes: Arc<Semaphore>,
    /// Largest body a claim brings along.
    inline_max: usize,
    in_flight: TaskTracker,
}

/// Hosts and the addresses they were last seen to resolve to.
#[derive(Debug, Default)]
struct Pointing {
    address_of: HashMap<String, String>,
    hosts_at: HashMap<String, HashSet<String>>,
}

/// Most hosts remembered: a bound on memory whatever the traffic (past it
/// the map starts over; a forgotten host is learned again at its next
/// attempt, and until then only the wait in `take_address` limits it).
const POINTING_MAX: usize = 10_000;

/// Room for one attempt: a global slot, a slot of its host and one of its
/// customer, returned when dropped.
///
/// Fields drop in declaration order: the customer's and the host's slots go
/// back before the global one. The global permit is what wakes the claim
/// loop; returned first, the claim ran while the host and customer still
/// counted the attempt, found them full, skipped their work and came back
/// empty (an extra claim per finished attempt at full load).
#[derive(Debug)]
pub struct Room {
    _customer: Option<HostSlot>,
    _host: HostSlot,
    _permit: OwnedSemaphorePermit,
}

impl Capacity {
    /// `concurrency` attempts in flight at most, `per_host` per host;
    /// `waker` is woken whenever a full host gets a slot back.
    pub fn new(concurrency: usize, per_host: usize, per_customer: usize, waker: Waker) -> Self {
        let concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
        Capacity {
            slots: Arc::new(Semaphore::new(concurrency)),
            body_bytes: Arc::new(Semaphore::new(BODY_BUDGET / 2)),
            // At most one claimed body per slot: their sum stays under half
            // the budget however many slots there are.
            inline_max: INLINE_BODY_MAX.min(BODY_BUDGET / 2 / concurrency),
            hosts: HostSlots::waking(per_host, waker.clone()),
            customers: HostSlots::waking(per_customer, waker.clone()),
            addresses: HostSlots::waking(per_host, waker),
            pointing: Arc::default(),
            in_flight: TaskTracker::new(),
        }
    }

    /// Largest body a claim may bring along (larger ones are read when
    /// their attempt starts, under [`Capacity::take_body_bytes`]).
    pub fn inline_max(&self) -> usize {
        self.inline_max
    }

    /// Room to hold a body of `len` bytes read at attempt start, waiting at
    /// most `within` for bodies in flight to be let go. A body larger than
    /// the whole half budget takes all of it (one such at a time).
    pub async fn take_body_bytes(
        &self,
        len: i64,
        within: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let want = usize::try_from(len.max(0))
            .unwrap_or(usize::MAX)
            .clamp(1, BODY_BUDGET / 2);
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        tokio::time::timeout(within, self.body_bytes.clone().acquire_many_owned(want))
            .await
            .ok()?
            .ok()
    }

    /// Remembers that `host` resolved to the address `key`.
    pub fn learn(&self, host: &str, key: &str) {
        let mut p = self.pointing.lock().unwrap_or_else(|e| e.into_inner());
        if p.address_of.get(host).is_some_and(|k| k == key) {
            return;
        }
        if p.address_of.len() >= POINTING_MAX {
            *p = Pointing::default();
        }
        if let Some(old) = p.address_of.insert(host.to_owned(), key.to_owned()) {
            if let Some(set) = p.hosts_at.get_mut(&old) {
                set.remove(host);
                if set.is_empty() {
                    p.hosts_at.remove(&old);
                }
            }
        }
        p.hosts_at
            .entry(key.to_owned())
            .or_default()
            .insert(host.to_owned());
    }

    /// A slot of address `key` for an attempt about to connect there,
    /// waiting at most `within` for one. `None`: the address stayed full
    /// (the caller hands its delivery back rather than exceed the limit).
    pub async fn take_address(&self, key: &str, within: Duration) -> Option<HostSlot> {
        tokio::time::timeout(within, self.addresses.take(key))
            .await
            .ok()
    }

    /// Whether `host` is known to point at an address with no room left.
    fn address_full(&self, host: &str) -> bool {
        let p = self.pointing.lock().unwrap_or_else(|e| e.into_inner());
        p.address_of
            .get(host)
            .is_some_and(|key| self.addresses.is_full(key))
    }

    /// How many more attempts each host may take, for the claim: its own
    /// room, and none for a host known to point at a full address.
    pub fn room(&self) -> KeyRoom {
        let mut room = self.hosts.room();
        let full_addresses = self.addresses.full_hosts();
        if full_addresses.is_empty() {
            return room;
        }
        let p = self.pointing.lock().unwrap_or_else(|e| e.into_inner());
        let blocked: HashSet<&String> = full_addresses
            .iter()
            .filter_map(|key| p.hosts_at.get(key))
            .flatten()
            .collect();
        for (host, left) in &mut room.busy {
            if blocked.contains(host) {
                *left = 0;
            }
        }
        let listed: HashSet<String> = room.busy.iter().map(|(h, _)| h.clone()).collect();
        for host in blocked {
            if !listed.contains(host) {
                room.busy.push((host.clone(), 0));
            }
        }
        room
    }

    /// Hosts with no room left (their own, or their address's).
    pub fn full_hosts(&self) -> Vec<String> {
        self.room().full()
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
        if self.address_full(host) {
            return None;
        }
        let customer = match customer {
            Some(c) => Some(self.customers.try_take(c)?),
            None => None,
        };
        let host = self.hosts.try_take(host)?;
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Room {
            _customer: customer,
            _host: host,
            _permit: permit,
        })
    }

    /// What the next claim may take, per host (and address) and per
    /// customer.
    pub fn claim_room(&self) -> ClaimRoom {
        ClaimRoom {
            hosts: self.room(),
            customers: self.customers.room(),
        }
    }

    /// How many hosts and customers are full right now (a claim that
    /// filled one more may have left other keys' due work behind).
    pub fn full_count(&self) -> usize {
        self.full_hosts().len() + self.customers.full_hosts().len()
    }

    /// The per-host counts.
    pub fn hosts(&self) -> &HostSlots {
        &self.hosts
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
    /// Notified whenever any slot returns (for [`HostSlots::take`]).
    returned: Arc<Notify>,
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
            returned: Arc::default(),
        }
    }

    /// Waits for a slot of `key`.
    pub async fn take(&self, key: &str) -> HostSlot {
        loop {
            let returned = self.returned.notified();
            if let Some(slot) = self.try_take(key) {
                return slot;
            }
            returned.await;
        }
    }

    /// Whether `key` has no room left.
    pub fn is_full(&self, key: &str) -> bool {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|n| *n >= self.limit)
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
        self.slots.returned.notify_waiters();
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

    #[tokio::test]
    async fn hosts_pointing_at_a_full_address_are_full_too() {
        let capacity = Capacity::new(64, 2, 64, Waker::default());
        capacity.learn("a.example", "127.0.0.2");
        capacity.learn("b.example", "127.0.0.2");
        let wait = Duration::from_millis(50);
        let one = capacity.take_address("127.0.0.2", wait).await;
        let two = capacity.take_address("127.0.0.2", wait).await;
        assert!(one.is_some() && two.is_some());
        // The address is full: a third waits, then gives up.
        assert!(capacity.take_address("127.0.0.2", wait).await.is_none());
        let mut full = capacity.full_hosts();
        full.sort();
        assert_eq!(full, vec!["a.example".to_owned(), "b.example".to_owned()]);
        assert!(capacity.try_take("b.example", None).is_none());
        assert!(capacity.try_take("c.example", None).is_some());
        // A slot returns: a waiter gets it, and the hosts have room again.
        let waiter = {
            let capacity = capacity.clone();
            tokio::spawn(async move {
                capacity
                    .take_address("127.0.0.2", Duration::from_secs(5))
                    .await
                    .is_some()
            })
        };
        tokio::task::yield_now().await;
        drop(one);
        assert!(waiter.await.expect("join"));
        drop(two);
        assert!(capacity.full_hosts().is_empty());
    }

    #[tokio::test]
    async fn bodies_held_stay_inside_the_byte_budget() {
        let capacity = Capacity::new(100_000, 16, 64, Waker::default());
        // Many slots: each claimed body is smaller, the sum stays bounded.
        assert!(capacity.inline_max() * 100_000 <= BODY_BUDGET / 2);
        assert_eq!(
            Capacity::new(8, 16, 64, Waker::default()).inline_max(),
            INLINE_BODY_MAX
        );
        let wait = Duration::from_millis(50);
        let half = (BODY_BUDGET / 2) as i64;
        let most = capacity.take_body_bytes(half - 10, wait).await;
        assert!(most.is_some());
        // No room for another large body until the first is let go...
        assert!(capacity.take_body_bytes(1_000, wait).await.is_none());
        drop(most);
        // ...and one larger than the whole budget takes all of it, not more.
        let huge = capacity.take_body_bytes(i64::MAX, wait).await;
        assert!(huge.is_some());
        assert!(capacity.take_body_bytes(1, wait).await.is_none());
    }
}
