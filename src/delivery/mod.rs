//! The delivery engine: workers that claim due deliveries from PostgreSQL,
//! attempt them over HTTP, and write the outcomes back in batches, on the
//! schedule of SPEC §3. `serve` runs it beside the API, `worker` alone, and
//! an embedder in its own runtime through [`Dispatcher`].
//!
//! Shape of one process:
//! - the claim loop takes as many due deliveries as there are free slots
//!   (global `concurrency`, skipping hosts that are full), in one statement;
//! - each claimed delivery runs as its own task (no database connection is
//!   held across an HTTP call);
//! - outcomes go through a channel to one completer that writes them in
//!   batches (one statement per flush);
//! - a LISTEN connection (and, in `serve`, the API in-process) wakes the
//!   claim loop the moment work arrives; otherwise it sleeps until the
//!   earliest due time, at most [`IDLE_POLL`].

mod attempt;
mod completer;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::state::Outcome;
pub use attempt::{AttemptReport, Sender};

use crate::config::Config;
use crate::egress::Egress;
use crate::error::Result;
use crate::queue::claim::{self, Claimed, Completion};
use crate::queue::{handoff, wake, Capacity, Handoff, Room, Waker};
use crate::schedule::{next_attempt, Next, RetryPolicy};
use crate::signing::SigningSecret;
use crate::state::{Completed, DeliveryState};
use crate::store::Schema;

/// Longest sleep of an idle claim loop (a safety net under LISTEN/NOTIFY).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most deliveries one claim takes.
pub const CLAIM_BATCH: usize = 512;
/// Longest wait between claims while the database is unreachable: short,
/// so work resumes within a second of the database coming back (a failed
/// connection attempt a second costs nothing).
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Pause when due work exists but other workers' claims hold it.
const CONTENDED_PAUSE: Duration = Duration::from_millis(20);

/// The workers of one process.
#[derive(Debug)]
pub struct Dispatcher {
    pool: PgPool,
    schema: Schema,
    engine: Engine,
    lease: Duration,
    waker: Waker,
    handoff: Handoff,
    handed_off: handoff::Receiver,
    done_rx: mpsc::UnboundedReceiver<Completion>,
}

/// What starting an attempt needs, shared by the claim loop and the
/// handoff consumer.
#[derive(Debug, Clone)]
struct Engine {
    sender: Arc<Sender>,
    retry: RetryPolicy,
    capacity: Capacity,
    done: mpsc::UnboundedSender<Completion>,
}

impl Engine {
    /// Runs one attempt as its own task (tracked as in flight); its outcome
    /// goes to the completer, and its room is returned when it ends.
    fn start(&self, d: Claimed, room: Room) {
        let sender = self.sender.clone();
        let done = self.done.clone();
        let retry = self.retry;
        let span = tracing::info_span!("attempt", delivery_id = %d.id, job_id = d.job_id.as_deref().unwrap_or(""), host = %d.host, attempt = d.cycle_attempts + 1);
        self.capacity.tracker().spawn(
            async move {
                let report = sender.attempt(&d).await;
                drop(room);
                let completion = completion_for(&d, &report, &retry);
                record_metrics(&d, &report, &completion);
                let _ = done.send(completion);
            }
            .instrument(span),
        );
    }
}

/// What one turn of the claim loop leads to.
enum Turn {
    /// Claim again at once.
    Again,
    /// Nothing more is due for us now: sleep until woken or due.
    Idle,
    /// Shutdown began.
    Stop,
}

impl Dispatcher {
    /// Workers for `config` on `pool`, signing with `secret`.
    pub fn new(
        pool: PgPool,
        config: &Config,
        secret: SigningSecret,
    ) -> Result<Self, crate::egress::EgressError> {
        let settings = crate::egress::EgressSettings {
            source_addr: config.egress_source_addr,
            proxy: config.egress_proxy.clone(),
            policy: Arc::new(crate::egress::EgressPolicy::new(
                config.egress_allow.clone(),
                config.egress_deny.clone(),
            )),
        };
        let egress = Egress::new(settings, config.attempt_timeout)?;
        let waker = Waker::default();
        let (done, done_rx) = mpsc::unbounded_channel();
        let capacity = Capacity::new(
            config.concurrency,
            config.per_host_concurrency as usize,
            waker.clone(),
        );
        // Long enough that a live worker always completes first: the
        // attempt itself is bounded by the timeout, the rest is slack.
        let lease = config.attempt_timeout * 2 + Duration::from_secs(30);
        let (handoff, handed_off) = handoff::channel(capacity.clone(), lease);
        Ok(Dispatcher {
            pool,
            schema: config.db_schema.clone(),
            engine: Engine {
                sender: Arc::new(
                    Sender::new(egress, secret, config.attempt_timeout).with_media_roots(
                        crate::media::MediaRoots::new(config.media_root.iter().cloned()),
                    ),
                ),
                retry: config.retry_policy(),
                capacity,
                done,
            },
            done_rx,
            lease,
            waker,
            handoff,
            handed_off,
        })
    }

    /// A handle that wakes this dispatcher at once (the API calls it after
    /// queueing, so a fresh delivery does not wait for a NOTIFY round trip).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The handle through which intake gives this process fresh deliveries
    /// to attempt at once, without a claim round trip (see [`Handoff`]).
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets the
    /// attempts in flight finish (each bounded by the attempt timeout),
    /// writes their outcomes, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Dispatcher {
            pool,
            schema,
            engine,
            lease,
            waker,
            handoff,
            handed_off,
            done_rx,
        } = self;
        // Our own handle would keep the handoff channel open forever.
        drop(handoff);
        let helpers = CancellationToken::new();
        let completer = tokio::spawn(completer::run(
            pool.clone(),
            schema.clone(),
            done_rx,
            waker.clone(),
            helpers.clone(),
        ));
        let listener = tokio::spawn(wake::listen(pool.clone(), waker.clone(), helpers.clone()));
        let consumer = tokio::spawn(take_handoffs(handed_off, engine.clone()));
        let mut claims = ClaimLoop {
            pool,
            schema,
            engine,
            lease,
            waker,
            backoff: None,
        };
        claims.run(&shutdown).await;

        // Attempts in flight finish, handed-off ones too (a reservation
        // counts as in flight); nothing else was claimed. Then their
        // outcomes are written.
        claims.engine.capacity.close_and_wait().await;
        consumer.abort();
        drop(claims);
        helpers.cancel();
        let _ = completer.await;
        let _ = listener.await;
        Ok(())
    }
}

/// Starts every delivery intake hands over (they are stored and leased to
/// us already).
async fn take_handoffs(mut rx: handoff::Receiver, engine: Engine) {
    while let Some(leased) = rx.recv().await {
        engine.start(leased.delivery, leased.room);
        drop(leased.in_flight); // the attempt task is tracked now
    }
}

/// Waits between failed claims: 50 ms doubling to [`CLAIM_BACKOFF_MAX`].
fn claim_backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(CLAIM_BACKOFF_MAX)
        .without_max_times()
        .build()
}

/// The claim loop of one dispatcher.
struct ClaimLoop {
    pool: PgPool,
    schema: Schema,
    engine: Engine,
    lease: Duration,
    waker: Waker,
    /// Waits between failed claims; `None` after a success.
    backoff: Option<backon::ExponentialBackoff>,
}

impl ClaimLoop {
    async fn run(&mut self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.turn(shutdown).await {
                Turn::Again => {}
                Turn::Idle => self.idle(shutdown).await,
                Turn::Stop => break,
            }
        }
    }

    /// Claims as much as there is room for and starts it.
    async fn turn(&mut self, shutdown: &CancellationToken) -> Turn {
        let free = self.engine.capacity.free().min(CLAIM_BATCH);
        if free == 0 {
            // Every slot is busy: wait for one to come back.
            return tokio::select! {
                _ = shutdown.cancelled() => Turn::Stop,
                _ = self.engine.capacity.wait_free() => Turn::Again,
            };
        }
        let hosts = self.engine.capacity.hosts();
        let room = hosts.room();
        let full_before = room.full().len();
        let claimed = match self.claim(free, &room).await {
            Ok(claimed) => claimed,
            Err(err) => return self.after_failed_claim(err, shutdown).await,
        };
        if shutdown.is_cancelled() {
            // The signal came while the claim was in flight: these were
            // never started, so hand them back now rather than leave them
            // leased until the lease runs out.
            let items: Vec<_> = claimed.iter().map(|d| (d.id, d.lease)).collect();
            self.release_now(&items).await;
            return Turn::Stop;
        }
        let got_any = !claimed.is_empty();
        // Fewer than asked for: the queue has no more due work for us...
        let drained = claimed.len() < free;
        self.start_all(claimed).await;
        // ...unless a host filled up during this claim (its backlog may have
        // hidden other hosts' due rows: claim again at once).
        let filled_up = got_any && self.engine.capacity.hosts().full_hosts().len() > full_before;
        if drained && !filled_up {
            Turn::Idle
        } else {
            Turn::Again
        }
    }

    async fn claim(&mut self, free: usize, room: &claim::HostRoom) -> Result<Vec<Claimed>> {
        let claimed = claim::claim(
            &self.pool,
            &self.schema,
            free as i64,
            self.lease.as_secs_f64(),
            room,
        )
        .await?;
        self.backoff = None;
        Ok(claimed)
    }

    async fn after_failed_claim(
        &mut self,
        err: crate::error::Error,
        shutdown: &CancellationToken,
    ) -> Turn {
        let wait = self
            .backoff
            .get_or_insert_with(claim_backoff)
            .next()
            .unwrap_or(CLAIM_BACKOFF_MAX);
        tracing::warn!(%err, ?wait, "claim failed; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => Turn::Stop,
            _ = tokio::time::sleep(wait) => Turn::Again,
        }
    }

    /// Starts each claimed delivery that still has room; hands the others
    /// back, due now.
    async fn start_all(&self, claimed: Vec<Claimed>) {
        let mut deferred = Vec::new();
        for d in claimed {
            match self.engine.capacity.try_take(&d.host) {
                Some(room) => self.engine.start(d, room),
                None => deferred.push((d.id, d.lease)),
            }
        }
        self.release_now(&deferred).await;
    }

    /// Hands claimed but unstarted deliveries back, due now.
    async fn release_now(&self, items: &[(uuid::Uuid, uuid::Uuid)]) {
        if items.is_empty() {
            return;
        }
        if let Err(err) =
            claim::release(&self.pool, &self.schema, items, OffsetDateTime::now_utc()).await
        {
            tracing::warn!(%err, n = items.len(), "could not release claimed deliveries; their lease will expire");
        }
    }

    /// Sleeps until woken, until the earliest due time, or [`IDLE_POLL`].
    async fn idle(&self, shutdown: &CancellationToken) {
        let full = self.engine.capacity.hosts().full_hosts();
        let wait = match claim::next_due(&self.pool, &self.schema, &full).await {
            Ok(Some(at)) => Duration::try_from(at - OffsetDateTime::now_utc())
                .unwrap_or(Duration::ZERO)
                .min(IDLE_POLL),
            _ => IDLE_POLL,
        };
        // Zero: due work of hosts with room exists but was not ours (rows
        // locked by other workers' claims): back off briefly instead of
        // spinning. Full hosts are not counted: an attempt ending wakes us.
        let wait = if wait.is_zero() {
            CONTENDED_PAUSE
        } else {
            wait
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.waker.woken() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The delivery's next state after `report`, per the retry schedule.
pub fn completion_for(d: &Claimed, report: &AttemptReport, retry: &RetryPolicy) -> Completion {
    let (state, next) = if report.outcome == Outcome::Success {
        (DeliveryState::Delivered, None)
    } else {
        let first = d.cycle_started_at.unwrap_or(report.started_at);
        let made = (d.cycle_attempts.max(0) as u32).saturating_add(1);
        let failed_at = report.started_at + report.duration;
        match next_attempt(retry, made, first, failed_at) {
            Next::At(at) => (DeliveryState::Pending, Some(at)),
            Next::GiveUp => (DeliveryState::Failed, None),
        }
    };
    Completion {
        id: d.id,
        lease: d.lease,
        state,
        next_attempt_at: next,
        started_at: report.started_at,
        duration_ms: report.duration.as_millis().min(i32::MAX as u128) as i32,
        status_code: report.status_code.map(i32::from),
        error: (report.outcome != Outcome::Success).then(|| report.outcome.as_str()),
        response_snippet: report.snippet.clone(),
    }
}

fn record_metrics(d: &Claimed, report: &AttemptReport, completion: &Completion) {
    use crate::metrics as m;
    let outcome = report.outcome.as_str();
    metrics::counter!(m::DELIVERY_ATTEMPTS, "outcome" => outcome).increment(1);
    metrics::histogram!(m::ATTEMPT_DURATION, "outcome" => outcome)
        .record(report.duration.as_secs_f64());
    match completion.state {
        DeliveryState::Delivered => {
            metrics::counter!(m::DELIVERIES_COMPLETED, "result" => Completed::Delivered.as_str())
                .increment(1);
            let latency = (report.started_at + report.duration) - d.queued_at;
            metrics::histogram!(m::DELIVERY_LATENCY).record(latency.as_seconds_f64().max(0.0));
            tracing::debug!(status = ?report.status_code, "delivered");
        }
        DeliveryState::Failed => {
            metrics::counter!(m::DELIVERIES_COMPLETED, "result" => Completed::Failed.as_str())
                .increment(1);
            tracing::warn!(outcome, status = ?report.status_code, "delivery failed for good");
        }
        DeliveryState::Pending | DeliveryState::Delivering => {
            tracing::info!(outcome, status = ?report.status_code, next = ?completion.next_attempt_at, "attempt failed; retry scheduled")
        }
    }
}
