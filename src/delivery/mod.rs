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
mod handoff;
mod hosts;
mod notifier;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use attempt::{AttemptReport, Sender};
pub use handoff::{Handoff, Reservation};
pub use hosts::{HostSlot, HostSlots};
pub use notifier::Notifier;

use crate::config::Config;
use crate::egress::Egress;
use crate::error::Result;
use crate::intake::WAKE_CHANNEL;
use crate::schedule::{next_attempt, Next, RetryPolicy};
use crate::signing::SigningSecret;
use crate::store::queue::{self, Claimed, Completion};
use crate::store::Schema;

/// Longest sleep of an idle claim loop (a safety net under LISTEN/NOTIFY).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most deliveries one claim takes.
pub const CLAIM_BATCH: usize = 512;
/// Longest wait between claims while the database is unreachable: short,
/// so work resumes within a second of the database coming back (a failed
/// connection attempt a second costs nothing).
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Outcome class of one attempt (the `outcome` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 2xx.
    Success,
    /// Any other HTTP status (3xx included: redirects are not followed).
    HttpError,
    /// No complete answer within the attempt timeout.
    Timeout,
    /// The connection could not be made.
    ConnectError,
    /// The destination resolved to a refused address.
    BlockedDestination,
    /// Anything else.
    Other,
}

impl Outcome {
    /// Every outcome, for pre-registering metric series.
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::HttpError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::BlockedDestination,
        Outcome::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::HttpError => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::BlockedDestination => "blocked_destination",
            Outcome::Other => "other",
        }
    }
}

/// Wakes a dispatcher's claim loop (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// There may be new due work.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The workers of one process.
#[derive(Debug)]
pub struct Dispatcher {
    pool: PgPool,
    schema: Schema,
    attempts: Attempts,
    lease: Duration,
    waker: Waker,
    done_rx: mpsc::UnboundedReceiver<Completion>,
}

/// What starting an attempt needs, shared by the claim loop and the
/// in-process [`Handoff`].
#[derive(Debug, Clone)]
struct Attempts {
    sender: Arc<Sender>,
    retry: RetryPolicy,
    slots: Arc<Semaphore>,
    hosts: HostSlots,
    done: mpsc::UnboundedSender<Completion>,
    tracker: TaskTracker,
}

impl Attempts {
    /// Runs one attempt as its own task; its outcome goes to the completer.
    fn start(&self, d: Claimed, permit: OwnedSemaphorePermit, host_slot: HostSlot) {
        let sender = self.sender.clone();
        let done = self.done.clone();
        let retry = self.retry;
        let span = tracing::info_span!("attempt", delivery_id = %d.id, job_id = d.job_id.as_deref().unwrap_or(""), host = %d.host, attempt = d.cycle_attempts + 1);
        self.tracker.spawn(
            async move {
                let report = sender.attempt(&d).await;
                drop(host_slot);
                let completion = completion_for(&d, &report, &retry);
                record_metrics(&d, &report, &completion);
                let _ = done.send(completion);
                drop(permit);
            }
            .instrument(span),
        );
    }
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
        Ok(Dispatcher {
            pool,
            schema: Schema::new(config.db_schema.clone()),
            attempts: Attempts {
                sender: Arc::new(Sender::new(egress, secret, config.attempt_timeout)),
                retry: config.retry_policy(),
                slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                hosts: HostSlots::waking(config.per_host_concurrency as usize, waker.clone()),
                done,
                tracker: TaskTracker::new(),
            },
            done_rx,
            // Long enough that a live worker always completes first: the
            // attempt itself is bounded by the timeout, the rest is slack.
            lease: config.attempt_timeout * 2 + Duration::from_secs(30),
            waker,
        })
    }

    /// A handle that wakes this dispatcher at once (the API calls it after
    /// queueing, so a fresh delivery does not wait for a NOTIFY round trip).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// A handle the API uses to start fresh deliveries in this process at
    /// once, without a claim round trip (see [`Handoff`]).
    pub fn handoff(&self) -> Handoff {
        Handoff {
            attempts: self.attempts.clone(),
            lease: self.lease,
        }
    }

    /// Runs until `shutdown` is cancelled: then stops claiming, lets the
    /// attempts in flight finish (each bounded by the attempt timeout),
    /// writes their outcomes, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Dispatcher {
            pool,
            schema,
            attempts,
            lease,
            waker,
            done_rx,
        } = self;
        let this = Running {
            pool,
            schema,
            attempts,
            lease,
            waker,
        };
        let slots = this.attempts.slots.clone();
        let completer_stop = CancellationToken::new();
        let completer = tokio::spawn(completer::run(
            this.pool.clone(),
            this.schema.clone(),
            done_rx,
            this.waker.clone(),
            completer_stop.clone(),
        ));
        let listener_stop = CancellationToken::new();
        let listener = tokio::spawn(listen(
            this.pool.clone(),
            this.waker.clone(),
            listener_stop.clone(),
        ));
        let mut backoff = Duration::from_millis(50);

        while !shutdown.is_cancelled() {
            let free = slots.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                // Every slot is busy: wait for one to come back.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = slots.acquire() => {
                        drop(permit);
                        continue;
                    }
                }
            }
            let room = this.attempts.hosts.room();
            let full_before = room.full().len();
            let claimed = match queue::claim(
                &this.pool,
                &this.schema,
                free as i64,
                this.lease.as_secs_f64(),
                &room,
            )
            .await
            {
                Ok(c) => {
                    backoff = Duration::from_millis(50);
                    c
                }
                Err(err) => {
                    tracing::warn!(%err, ?backoff, "claim failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(CLAIM_BACKOFF_MAX);
                    continue;
                }
            };
            if shutdown.is_cancelled() {
                // The signal came while the claim was in flight: these were
                // never started, so hand them back now rather than leave
                // them leased until the lease runs out.
                let items: Vec<_> = claimed.iter().map(|d| (d.id, d.lease)).collect();
                this.release_now(&items).await;
                break;
            }
            // Fewer than asked for: the queue has no more due work for us,
            // unless a host filled up during this claim (its backlog may
            // have hidden other hosts' due rows: claim again at once).
            let got_any = !claimed.is_empty();
            let drained = claimed.len() < free;
            let mut deferred = Vec::new();
            for d in claimed {
                let Some(host_slot) = this.attempts.hosts.try_take(&d.host) else {
                    deferred.push((d.id, d.lease));
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    deferred.push((d.id, d.lease));
                    continue;
                };
                this.attempts.start(d, permit, host_slot);
            }
            this.release_now(&deferred).await;
            let filled_up = got_any && this.attempts.hosts.full_hosts().len() > full_before;
            if drained && !filled_up {
                this.idle(&shutdown).await;
            }
        }

        // Attempts in flight finish (handed-off ones too); nothing else was
        // claimed. Then their outcomes are written.
        this.attempts.tracker.close();
        this.attempts.tracker.wait().await;
        completer_stop.cancel();
        let _ = completer.await;
        listener_stop.cancel();
        let _ = listener.await;
        Ok(())
    }
}

/// The parts of a dispatcher its claim loop uses once running.
struct Running {
    pool: PgPool,
    schema: Schema,
    attempts: Attempts,
    lease: Duration,
    waker: Waker,
}

impl Running {
    /// Hands claimed but unstarted deliveries back, due now.
    async fn release_now(&self, items: &[(uuid::Uuid, uuid::Uuid)]) {
        if items.is_empty() {
            return;
        }
        if let Err(err) =
            queue::release(&self.pool, &self.schema, items, OffsetDateTime::now_utc()).await
        {
            tracing::warn!(%err, n = items.len(), "could not release claimed deliveries; their lease will expire");
        }
    }

    /// Sleeps until woken, until the earliest due time, or [`IDLE_POLL`].
    async fn idle(&self, shutdown: &CancellationToken) {
        let full = self.attempts.hosts.full_hosts();
        let wait = match queue::next_due(&self.pool, &self.schema, &full).await {
            Ok(Some(at)) => {
                let until = at - OffsetDateTime::now_utc();
                Duration::try_from(until)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL)
            }
            _ => IDLE_POLL,
        };
        if wait.is_zero() {
            // Due work of hosts with room exists but was not ours (rows
            // locked by other workers' claims): back off briefly instead of
            // spinning. Full hosts are not counted: an attempt ending wakes
            // us through the completer.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.waker.0.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.waker.0.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The delivery's next state after `report`, per the retry schedule.
pub fn completion_for(d: &Claimed, report: &AttemptReport, retry: &RetryPolicy) -> Completion {
    let (state, next) = if report.outcome == Outcome::Success {
        ("delivered", None)
    } else {
        let first = d.cycle_started_at.unwrap_or(report.started_at);
        let made = (d.cycle_attempts.max(0) as u32).saturating_add(1);
        let failed_at = report.started_at + report.duration;
        match next_attempt(retry, made, first, failed_at) {
            Next::At(at) => ("pending", Some(at)),
            Next::GiveUp => ("failed", None),
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
        error: (report.outcome != Outcome::Success).then(|| report.outcome.as_str().to_owned()),
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
        "delivered" => {
            metrics::counter!(m::DELIVERIES_COMPLETED, "result" => "delivered").increment(1);
            let latency = (report.started_at + report.duration) - d.queued_at;
            metrics::histogram!(m::DELIVERY_LATENCY).record(latency.as_seconds_f64().max(0.0));
            tracing::debug!(status = ?report.status_code, "delivered");
        }
        "failed" => {
            metrics::counter!(m::DELIVERIES_COMPLETED, "result" => "failed").increment(1);
            tracing::warn!(outcome, status = ?report.status_code, "delivery failed for good");
        }
        _ => {
            tracing::info!(outcome, status = ?report.status_code, next = ?completion.next_attempt_at, "attempt failed; retry scheduled")
        }
    }
}

/// Keeps a LISTEN connection open (reconnecting with backoff while the
/// database is away) and wakes the claim loop on every notification.
async fn listen(pool: PgPool, waker: Waker, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(%err, "LISTEN connection failed; polling meanwhile");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen(WAKE_CHANNEL).await {
            tracing::debug!(%err, "LISTEN failed; polling meanwhile");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        // A reconnect may have missed notifications: look once.
        waker.wake();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(_)) => waker.wake(),
                    Ok(None) => { waker.wake(); } // reconnected internally
                    Err(_) => break,
                }
            }
        }
    }
}
