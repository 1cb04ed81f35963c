//! Circuit breakers per origin (SPEC §3), decided here and kept in
//! PostgreSQL (`store::destinations`) so every process shares them.
//!
//! After each flush of outcomes the completer hands the batch to
//! [`Breakers::record`]: per origin, a success closes the breaker (its held
//! deliveries become due at once) and failures count up until
//! `POSTBACK_BREAKER_FAILURES` opens it (its deliveries are held, waiting
//! without attempts). [`Breakers::probe`] runs in every process and lets
//! one probe go per open origin whose cooldown ended, under a row lock so
//! two workers never probe together; a failed probe re-opens the breaker
//! with the cooldown doubled. An open breaker costs the claim nothing:
//! held deliveries are not due.
//!
//! It must not send anything: it moves rows and reports transitions (as
//! logs and operator events).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::events::Events;
use crate::queue::claim::Completion;
use crate::queue::Waker;
use crate::state::{DeliveryKind, DeliveryState};
use crate::store::destinations::{self, OriginOutcomes, Transition};
use crate::store::held::Held;
use crate::store::Schema;
use crate::throttle::{Throttle, BACKGROUND_EVERY};

/// How often a process looks for breakers whose probe is due.
pub const PROBE_TICK: Duration = Duration::from_millis(250);

/// A failing breaker update or probe pass repeats with every batch or tick
/// while the database is away: one warning a minute of each.
static UPDATE_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);
static PROBE_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);

/// The breaker settings of a process.
#[derive(Debug, Clone)]
pub struct Breakers {
    /// Consecutive failures that open a breaker; 0: no breakers.
    pub threshold: u32,
    /// First cooldown.
    pub cooldown: Duration,
    /// Cap of the doubling cooldown (`POSTBACK_RETRY_MAX_DELAY`).
    pub max_cooldown: Duration,
    /// Longest a held delivery waits (`POSTBACK_RETRY_GIVE_UP`).
    pub give_up: Duration,
    /// Where transitions are reported, if anywhere.
    pub events: Option<Events>,
}

/// A batch the completer wrote, as the breakers count it.
#[derive(Debug)]
pub struct Flushed<'a> {
    /// The outcomes, in the order they arrived.
    pub batch: &'a [Completion],
    /// Per origin, what they say ([`Breakers::outcomes`]).
    pub outcomes: Vec<OriginOutcomes>,
    /// Which succeeded origins have a breaker to reset, as the completion
    /// statement read them; `None` when it did not (the count reads it).
    pub marked: Option<Vec<String>>,
}

/// Per origin, what a batch of outcomes says, in batch order: whether a
/// success came, and the failures after the last success.
pub fn per_origin(batch: &[Completion]) -> Vec<OriginOutcomes> {
    let mut by_origin: HashMap<&str, OriginOutcomes> = HashMap::new();
    for c in batch {
        let Some(origin) = c.origin.as_deref() else {
            continue;
        };
        // A 410 is the receiver saying one delivery's endpoint is gone: the
        // origin answered, so it is no failure of the origin, and opening
        // its breaker would only hold the next deliveries to it for their
        // whole horizon before the 410 that ends them (the soak saw it).
        // Nor is it a success that would close a breaker other paths keep
        // failing: it is left out.
        if c.error == Some(super::GONE) {
            continue;
        }
        let entry = by_origin.entry(origin).or_insert_with(|| OriginOutcomes {
            origin: origin.to_owned(),
            succeeded: false,
            trailing_failures: 0,
            last_error: None,
            failed_ids: Vec::new(),
        });
        if c.state == DeliveryState::Delivered {
            entry.succeeded = true;
            entry.trailing_failures = 0;
            entry.failed_ids.clear();
        } else {
            entry.trailing_failures += 1;
            entry.last_error = c.error.map(str::to_owned);
            entry.failed_ids.push(c.id);
        }
    }
    let mut out: Vec<OriginOutcomes> = by_origin.into_values().collect();
    out.sort_by(|a, b| a.origin.cmp(&b.origin));
    out
}

impl Breakers {
    /// What follows a flush of outcomes: the breakers count them, and a
    /// delivery that gave up is reported to the operator. A closed breaker
    /// wakes this process's claim loop and the other processes' (its held
    /// deliveries are due now).
    pub async fn after_flush(
        &self,
        pool: &PgPool,
        conn: &mut Held,
        schema: &Schema,
        flushed: Flushed<'_>,
        waker: &Waker,
    ) {
        let Flushed {
            batch,
            outcomes,
            marked,
        } = flushed;
        if batch.is_empty() {
            return;
        }
        if self.threshold > 0 && self.record(pool, conn, schema, &outcomes, marked).await {
            waker.wake();
            if let Ok(mut conn) = pool.acquire().await {
                let _ = crate::queue::notify_workers(&mut conn).await;
            }
        }
        let Some(events) = &self.events else { return };
        for c in batch {
            if c.state == DeliveryState::Failed && c.kind != DeliveryKind::Event {
                let data = json!({"deliveryId": c.id, "origin": c.origin, "error": c.error,
                                  "statusCode": c.status_code});
                events.emit(pool, schema, "delivery.failed", data).await;
            }
        }
    }

    /// Per origin, what `batch` says ([`per_origin`]); nothing when the
    /// breakers are off. Computed once per flush: the completer reads the
    /// succeeded origins' breakers with it, and [`Breakers::record`]
    /// counts it.
    pub fn outcomes(&self, batch: &[Completion]) -> Vec<OriginOutcomes> {
        if self.threshold > 0 {
            per_origin(batch)
        } else {
            Vec::new()
        }
    }

    /// Records a written batch's `outcomes`; returns true when a breaker
    /// closed (its deliveries are due now: wake the claim loop). The count
    /// runs on the completer's connection (`conn`), kept between flushes;
    /// `marked` is what the completion statement read of the succeeded
    /// origins' breakers (see `destinations::record_marked`).
    pub async fn record(
        &self,
        pool: &PgPool,
        conn: &mut Held,
        schema: &Schema,
        outcomes: &[OriginOutcomes],
        marked: Option<Vec<String>>,
    ) -> bool {
        if outcomes.is_empty() {
            return false;
        }
        let recorded = conn
            .run(async |conn| {
                let limits = (
                    self.threshold,
                    self.cooldown,
                    self.max_cooldown,
                    self.give_up,
                );
                destinations::record_marked(conn, schema, outcomes, marked, limits).await
            })
            .await;
        let transitions = match recorded {
            Ok(t) => t,
            Err(err) => {
                // The outcomes are written; only the breaker's count missed
                // this batch.
                if let Some(suppressed) = UPDATE_FAILED.admit() {
                    tracing::warn!(error = %err, suppressed, "could not update circuit breakers");
                }
                return false;
            }
        };
        let mut closed = false;
        for t in transitions {
            closed |= matches!(t, Transition::Closed { .. });
            self.report(pool, schema, t).await;
        }
        closed
    }

    /// Logs a transition and sends its operator event.
    pub async fn report(&self, pool: &PgPool, schema: &Schema, t: Transition) {
        let (kind, origin, data) = match &t {
            Transition::Opened {
                origin,
                reopened: true,
                next_probe_at,
                ..
            } => {
                let probe = next_probe_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok();
                let next_probe = probe.as_deref();
                tracing::info!(%origin, next_probe, "probe failed: circuit breaker open again, cooldown doubled");
                return;
            }
            Transition::Opened {
                origin,
                failures,
                next_probe_at,
                last_error,
                ..
            } => {
                let probe = next_probe_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                tracing::warn!(%origin, failures, next_probe = %probe, error = last_error.as_deref(), "circuit breaker open: deliveries to this origin wait for a probe");
                (
                    "destination.opened",
                    origin,
                    json!({"origin": origin, "consecutiveFailures": failures,
                           "nextProbeTime": probe, "lastError": last_error}),
                )
            }
            Transition::Closed { origin } => {
                tracing::info!(%origin, "circuit breaker closed: waiting deliveries are due again");
                ("destination.closed", origin, json!({"origin": origin}))
            }
        };
        if let Some(events) = &self.events {
            if !events.is_own_origin(origin) {
                events.emit(pool, schema, kind, data).await;
            }
        }
    }

    /// Lets probes go every [`PROBE_TICK`] until `stop`; wakes `waker` when
    /// one was released.
    pub async fn probe(self, pool: PgPool, schema: Schema, waker: Waker, stop: CancellationToken) {
        if self.threshold == 0 {
            return;
        }
        let mut tick = tokio::time::interval(PROBE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let released = async {
                let mut conn = pool.acquire().await?;
                destinations::release_probes(&mut conn, &schema).await
            }
            .await;
            match released {
                Ok(origins) if !origins.is_empty() => {
                    for origin in &origins {
                        tracing::info!(%origin, "circuit breaker half open: one probe attempt");
                    }
                    waker.wake();
                }
                Ok(_) => {}
                Err(err) => {
                    if let Some(suppressed) = PROBE_FAILED.admit() {
                        tracing::warn!(error = %err, suppressed, "probe pass failed; next tick retries");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn outcome(origin: &str, state: DeliveryState, error: Option<&'static str>) -> Completion {
        Completion {
            id: Uuid::now_v7(),
            lease: Uuid::now_v7(),
            origin: Some(origin.to_owned()),
            kind: DeliveryKind::Generic,
            state,
            next_attempt_at: None,
            started_at: OffsetDateTime::now_utc(),
            duration_ms: 1,
            status_code: None,
            error,
            response_snippet: None,
        }
    }

    #[test]
    fn a_410_neither_counts_as_a_failure_nor_closes_a_breaker() {
        let mut gone = outcome(
            "https://g:443",
            DeliveryState::Failed,
            Some(crate::delivery::GONE),
        );
        gone.status_code = Some(410);
        let got = per_origin(&[gone.clone(), gone]);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn failures_count_only_after_the_last_success_of_the_batch() {
        use DeliveryState::*;
        let batch = [
            outcome("https://a:443", Pending, Some("timeout")),
            outcome("https://a:443", Delivered, None),
            outcome("https://a:443", Pending, Some("http_error")),
            outcome("https://a:443", Failed, Some("connect_error")),
            outcome("https://b:443", Delivered, None),
            outcome("http://c:80", Pending, Some("timeout")),
        ];
        let mut got = per_origin(&batch);
        // Only the trailing failures' deliveries are named.
        assert_eq!(got[0].failed_ids, vec![batch[5].id]);
        assert_eq!(got[1].failed_ids, vec![batch[2].id, batch[3].id]);
        assert!(got[2].failed_ids.is_empty());
        for o in &mut got {
            o.failed_ids.clear();
        }
        assert_eq!(
            got,
            vec![
                OriginOutcomes {
                    origin: "http://c:80".into(),
                    succeeded: false,
                    trailing_failures: 1,
                    last_error: Some("timeout".into()),
                    failed_ids: vec![],
                },
                OriginOutcomes {
                    origin: "https://a:443".into(),
                    succeeded: true,
                    trailing_failures: 2,
                    last_error: Some("connect_error".into()),
                    failed_ids: vec![],
                },
                OriginOutcomes {
                    origin: "https://b:443".into(),
                    succeeded: true,
                    trailing_failures: 0,
                    last_error: None,
                    failed_ids: vec![],
                },
            ]
        );
    }
}
