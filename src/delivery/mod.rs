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
mod breakers;
mod completer;
mod secrets;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::state::Outcome;
pub use attempt::{AttemptReport, Sender};
pub use secrets::{NoSecret, Secrets};

use crate::config::Config;
use crate::egress::Egress;
use crate::error::Result;
use crate::queue::claim::{self, Claimed, Completion};
use crate::queue::{handoff, wake, Capacity, DbClock, Handoff, Room, Waker};
use crate::schedule::{next_attempt_after, Next, RetryPolicy};
use crate::signing::SigningSecret;
use crate::state::{Completed, DeliveryState};
use crate::store::held::Held;
use crate::store::Schema;

/// Longest sleep of an idle claim loop (a safety net under LISTEN/NOTIFY).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Most deliveries one claim takes.
pub const CLAIM_BATCH: usize = 512;
/// Longest wait between claims while the database is unreachable: short,
/// so work resumes within a second of the database coming back (a failed
/// connection attempt a second costs nothing).
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The recorded error of a delivery ended by `410 Gone`.
pub const GONE: &str = "gone";
/// Slack an attempt keeps from the end of its lease (clock reads, the
/// outcome's way to the completer).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Pause when due work exists but other workers' claims hold it.
const CONTENDED_PAUSE: Duration = Duration::from_millis(20);

/// Why a dispatcher cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// The egress settings (source address, proxy) cannot be used.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    /// A setting is refused (e.g. `POSTBACK_SECRETS_KEY`).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The workers of one process.
#[derive(Debug)]
pub struct Dispatcher {
    pool: PgPool,
    secrets: Arc<Secrets>,
    breakers: Arc<breakers::Breakers>,
    schema: Schema,
    engine: Engine,
    lease: Duration,
    /// How long a final delivery is kept (`POSTBACK_JOB_TTL`).
    retain: Duration,
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
    /// The database's clock: due times are written on it.
    clock: DbClock,
    done: mpsc::UnboundedSender<Completion>,
    /// How long a claim leases a delivery.
    lease: Duration,
    /// To hand a delivery back that could not get a slot of its address.
    pool: PgPool,
    schema: Schema,
}

impl Engine {
    /// Runs one attempt as its own task (tracked as in flight); its outcome
    /// goes to the completer, and its room is returned when it ends.
    fn start(&self, d: Claimed, room: Room) {
        let sender = self.sender.clone();
        let done = self.done.clone();
        let retry = self.retry;
        let clock = self.clock.clone();
        let lease = time::Duration::try_from(self.lease).unwrap_or(time::Duration::MAX);
        let capacity = self.capacity.clone();
        let (pool, schema) = (self.pool.clone(), self.schema.clone());
        // A debug span: at the default level it is never built (an info
        // span per attempt cost an allocation and the formatting of its
        // fields on every attempt). The lines an attempt logs at info and
        // above name the delivery themselves (`log_attempt`, the hand-backs).
        let span = tracing::debug_span!("attempt", delivery_id = %d.id, job_id = d.job_id.as_deref(), host = %d.host, attempt = d.cycle_attempts + 1);
        self.capacity.tracker().spawn(
            async move {
                // No attempt may run past its lease (another worker may
                // take the delivery then): what is left of the lease, by the
                // database's clock it was granted on, must hold the whole
                // attempt (timeout, then the snippet's own bound) with room
                // to spare; the waits before it get only what remains.
                let lease_end = d.claimed_at + lease;
                let left_of_lease = Duration::try_from(lease_end - clock.now()).unwrap_or_default();
                let attempt_needs = sender.timeout() + attempt::SNIPPET_READ + LEASE_MARGIN;
                let may_wait = left_of_lease
                    .saturating_sub(attempt_needs)
                    .min(sender.timeout());
                // Per-address fairness (SPEC §3): the address this attempt
                // connects to has a slot for it, however its host is named.
                let deadline = tokio::time::Instant::now() + may_wait;
                let key = tokio::time::timeout_at(deadline, sender.address_key(&d))
                    .await
                    .ok()
                    .flatten();
                let address = match key {
                    Some(key) => {
                        capacity.learn(&d.host, &key);
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match capacity.take_address(&key, left).await {
                            Some(slot) => Some(slot),
                            None => {
                                // Still full: hand it back rather than exceed
                                // the limit. Its host now counts as full
                                // while the address is, so it is not claimed
                                // again until there is room.
                                drop(room);
                                tracing::debug!(address = %key, "address full; delivery handed back");
                                if let Err(err) = claim::release(&pool, &schema, &[(d.id, d.lease)]).await {
                                    tracing::warn!(error = %err, "could not hand the delivery back; its lease will expire");
                                }
                                return;
                            }
                        }
                    }
                    None => None,
                };
                // A body too large to come with the claim is read now, under
                // the process's byte budget for bodies (SPEC §3), and let go
                // with the attempt.
                let mut d = d;
                let mut body_bytes = None;
                if d.body.is_none() && d.body_len > 0 {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let read = match capacity.take_body_bytes(d.body_len, left).await {
                        Some(permit) => {
                            body_bytes = Some(permit);
                            claim::body_of(&pool, &schema, d.id).await.ok().flatten()
                        }
                        None => None,
                    };
                    match read {
                        Some(body) => d.body = Some(body),
                        None => {
                            drop((address, room, body_bytes));
                            tracing::debug!(len = d.body_len, "body not read in time; delivery handed back");
                            if let Err(err) = claim::release(&pool, &schema, &[(d.id, d.lease)]).await {
                                tracing::warn!(error = %err, "could not hand the delivery back; its lease will expire");
                            }
                            return;
                        }
                    }
                }
                let left_of_lease = Duration::try_from(lease_end - clock.now()).unwrap_or_default();
                if left_of_lease < attempt_needs {
                    drop((address, room, body_bytes));
                    tracing::warn!(delivery_id = %d.id, host = %d.host, left_of_lease_ms = left_of_lease.as_millis() as u64, "too little of the lease left for an attempt; delivery handed back");
                    if let Err(err) = claim::release(&pool, &schema, &[(d.id, d.lease)]).await {
                        tracing::warn!(error = %err, "could not hand the delivery back; its lease will expire");
                    }
                    return;
                }
                let report = sender.attempt(&d).await;
                drop(body_bytes);
                drop(address);
                drop(room);
                let completion = completion_for(&d, &report, &retry, &clock);
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
    /// Deliveries without a customer are signed with `secret`, customers'
    /// deliveries with their own.
    pub fn new(
        pool: PgPool,
        config: &Config,
        secret: SigningSecret,
    ) -> Result<Self, DispatcherError> {
        let settings = crate::egress::EgressSettings {
            source_addr: config.egress_source_addr,
            proxy: config.egress_proxy.clone(),
            policy: Arc::new(crate::egress::EgressPolicy::new(
                config.egress_allow.clone(),
                config.egress_deny.clone(),
            )),
            max_tunnels: config.concurrency,
        };
        let egress = Egress::new(settings, config.attempt_timeout)?;
        let waker = Waker::default();
        let (done, done_rx) = mpsc::unbounded_channel();
        let capacity = Capacity::new(
            config.concurrency,
            config.per_host_concurrency as usize,
            config.per_customer_concurrency as usize,
            waker.clone(),
        );
        // Long enough that a live worker always completes first: the
        // attempt itself is bounded by the timeout, the rest is slack.
        let lease = config.attempt_timeout * 2 + Duration::from_secs(30);
        let clock = DbClock::default();
        let (handoff, handed_off) = handoff::channel(capacity.clone(), lease, clock.clone());
        let schema = config.db_schema.clone();
        let keys = Arc::new(config.keyring()?);
        let secrets = Arc::new(Secrets::new(
            pool.clone(),
            schema.clone(),
            keys.clone(),
            secret,
        ));
        let breakers = Arc::new(breakers::Breakers {
            threshold: config.breaker_failures,
            cooldown: config.breaker_cooldown,
            max_cooldown: config.retry_max_delay,
            give_up: config.retry_give_up,
            events: config
                .operator_webhook
                .as_ref()
                .map(|url| crate::events::Events::new(url, config.job_ttl)),
        });
        Ok(Dispatcher {
            pool: pool.clone(),
            secrets: secrets.clone(),
            breakers,
            schema: config.db_schema.clone(),
            engine: Engine {
                sender: Arc::new(
                    Sender::new(egress, secrets, keys, config.attempt_timeout).with_media_roots(
                        crate::media::MediaRoots::new(config.media_root.iter().cloned()),
                    ),
                ),
                retry: config.retry_policy(),
                capacity,
                clock,
                done,
                lease,
                pool,
                schema: config.db_schema.clone(),
            },
            done_rx,
            lease,
            retain: config.job_ttl,
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
            secrets,
            breakers,
            schema,
            engine,
            lease,
            retain,
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
            retain,
            done_rx,
            waker.clone(),
            breakers.clone(),
            helpers.clone(),
        ));
        let listener = tokio::spawn(wake::listen(pool.clone(), waker.clone(), helpers.clone()));
        let follower = tokio::spawn(secrets.follow_changes(helpers.clone()));
        let prober = tokio::spawn(breakers::Breakers::probe(
            (*breakers).clone(),
            pool.clone(),
            schema.clone(),
            waker.clone(),
            helpers.clone(),
        ));
        let consumer = tokio::spawn(take_handoffs(handed_off, engine.clone()));
        let mut claims = ClaimLoop {
            conn: Held::new(pool.clone()),
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
        let in_flight = claims.engine.capacity.tracker().len();
        let draining = std::time::Instant::now();
        tracing::info!(
            in_flight,
            "draining: no more claims; waiting for the attempts in flight"
        );
        claims.engine.capacity.close_and_wait().await;
        consumer.abort();
        drop(claims);
        helpers.cancel();
        let _ = completer.await;
        tracing::info!(
            in_flight,
            waited_ms = draining.elapsed().as_millis() as u64,
            "drained: the attempts in flight finished and their outcomes are written"
        );
        let _ = listener.await;
        let _ = follower.await;
        let _ = prober.await;
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
    /// The loop's own connection for its claims and idle checks, kept
    /// between them (`Held`).
    conn: Held,
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
        let room = self.engine.capacity.claim_room();
        let full_before = self.engine.capacity.full_count();
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
        let filled_up = got_any && self.engine.capacity.full_count() > full_before;
        if drained && !filled_up {
            Turn::Idle
        } else {
            Turn::Again
        }
    }

    async fn claim(&mut self, free: usize, room: &claim::ClaimRoom) -> Result<Vec<Claimed>> {
        let inline_max = i64::try_from(self.engine.capacity.inline_max()).unwrap_or(i64::MAX);
        let (schema, lease_secs) = (&self.schema, self.lease.as_secs_f64());
        let claimed = self
            .conn
            .run(async |conn| {
                claim::claim(conn, schema, free as i64, lease_secs, room, inline_max).await
            })
            .await?;
        crate::metrics::database_reached(true);
        if let Some(first) = claimed.first() {
            self.engine.clock.observe(first.claimed_at);
        }
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
        if err.is_unavailable() {
            crate::metrics::database_reached(false);
        }
        tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "claim failed; retrying");
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
            match self
                .engine
                .capacity
                .try_take(&d.host, d.customer_id.as_deref())
            {
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
        if let Err(err) = claim::release(&self.pool, &self.schema, items).await {
            tracing::warn!(error = %err, n = items.len(), "could not release claimed deliveries; their lease will expire");
        }
    }

    /// Sleeps until woken, until the earliest due time, or [`IDLE_POLL`].
    async fn idle(&mut self, shutdown: &CancellationToken) {
        let full = self.engine.capacity.full_hosts();
        // Measured on the database's clock, which decides when it is due.
        let schema = &self.schema;
        let next = self
            .conn
            .run(async |conn| claim::next_due(conn, schema, &full).await)
            .await;
        let wait = match next {
            Ok((next, db_now)) => {
                self.engine.clock.observe(db_now);
                next.map_or(IDLE_POLL, |at| {
                    Duration::try_from(at - db_now)
                        .unwrap_or(Duration::ZERO)
                        .min(IDLE_POLL)
                })
            }
            Err(_) => IDLE_POLL,
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
///
/// The schedule is a pure function; its inputs are on the database's clock
/// (`clock`, as read at the claim): the stored cycle start already is, and
/// the attempt's start is moved onto it. SQL compares the due time written
/// here with `now()`, so an immediate retry is due at once whatever this
/// process's own clock says.
pub fn completion_for(
    d: &Claimed,
    report: &AttemptReport,
    retry: &RetryPolicy,
    clock: &DbClock,
) -> Completion {
    let started_at = clock.to_db(report.started_at);
    let (state, next) = if report.outcome == Outcome::Success {
        (DeliveryState::Delivered, None)
    } else if report.is_gone() {
        // 410: the receiver says the endpoint is gone for good.
        (DeliveryState::Failed, None)
    } else {
        let first = d.cycle_started_at.unwrap_or(started_at);
        let made = (d.cycle_attempts.max(0) as u32).saturating_add(1);
        let failed_at = started_at + report.duration;
        match next_attempt_after(retry, made, first, failed_at, report.retry_after) {
            Next::At(at) => (DeliveryState::Pending, Some(at)),
            Next::GiveUp => (DeliveryState::Failed, None),
        }
    };
    Completion {
        id: d.id,
        lease: d.lease,
        origin: d.origin.clone(),
        kind: d.kind,
        state,
        next_attempt_at: next,
        started_at,
        duration_ms: report.duration.as_millis().min(i32::MAX as u128) as i32,
        status_code: report.status_code.map(i32::from),
        error: match report.outcome {
            Outcome::Success => None,
            _ if report.is_gone() => Some(GONE),
            other => Some(other.as_str()),
        },
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
            // Both on the database's clock.
            let latency = (completion.started_at + report.duration) - d.queued_at;
            metrics::histogram!(m::DELIVERY_LATENCY).record(latency.as_seconds_f64().max(0.0));
        }
        DeliveryState::Failed => {
            metrics::counter!(m::DELIVERIES_COMPLETED, "result" => Completed::Failed.as_str())
                .increment(1);
        }
        DeliveryState::Pending | DeliveryState::Delivering => {}
    }
    log_attempt(d, report, completion);
}

/// Most characters of the error text an attempt's log line carries (the
/// whole snippet is in the delivery's attempts).
pub const LOGGED_ERROR_CHARS: usize = 200;

/// The attempt's log line: the delivery, job, host and attempt number,
/// typed status and duration, the error text when it failed, and when the
/// next attempt is due. (The fields are the line's own: the attempt's span
/// is built only at debug.)
fn log_attempt(d: &Claimed, report: &AttemptReport, completion: &Completion) {
    let outcome = report.outcome.as_str();
    let status = report.status_code;
    let duration_ms = report.duration.as_millis().min(u64::MAX as u128) as u64;
    let attempt = d.cycle_attempts + 1;
    let job_id = d.job_id.as_deref();
    if completion.state == DeliveryState::Delivered {
        tracing::debug!(delivery_id = %d.id, job_id, host = %d.host, attempt, outcome, status, duration_ms, "delivered");
        return;
    }
    let error = report
        .snippet
        .as_deref()
        .map(|text| bounded(text, LOGGED_ERROR_CHARS));
    let error = error.as_deref();
    match completion.next_attempt_at {
        None => {
            tracing::warn!(
                delivery_id = %d.id,
                job_id,
                host = %d.host,
                attempt,
                outcome,
                status,
                duration_ms,
                error,
                "delivery failed for good"
            )
        }
        Some(next) => {
            let next = next
                .format(&time::format_description::well_known::Rfc3339)
                .ok();
            let next_attempt_at = next.as_deref();
            tracing::info!(
                delivery_id = %d.id,
                job_id,
                host = %d.host,
                attempt,
                outcome,
                status,
                duration_ms,
                error,
                next_attempt_at,
                "attempt failed; retry scheduled"
            )
        }
    }
}

/// `text` cut to at most `max` characters (on a character boundary, with
/// `…` when cut), line breaks and other control characters as spaces: one
/// log line stays one line, whatever a receiver answered.
fn bounded(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Method;
    use crate::state::DeliveryKind;
    use time::OffsetDateTime;

    fn claimed(cycle_attempts: i32, cycle_started_at: Option<OffsetDateTime>) -> Claimed {
        let now = OffsetDateTime::now_utc();
        Claimed {
            id: uuid::Uuid::now_v7(),
            job_id: None,
            kind: DeliveryKind::Generic,
            method: Method::Post,
            url: "http://example.org/".into(),
            host: "example.org".into(),
            customer_id: None,
            origin: Some("http://example.org:80".into()),
            lease: uuid::Uuid::now_v7(),
            cycle_attempts,
            cycle_started_at,
            queued_at: now,
            claimed_at: now,
            content_type: "application/json".into(),
            headers: serde_json::json!({}),
            auth: None,
            body: None,
            body_len: 0,
            file_path: None,
        }
    }

    fn failed_now() -> AttemptReport {
        AttemptReport {
            started_at: OffsetDateTime::now_utc(),
            duration: Duration::from_millis(20),
            outcome: Outcome::HttpError,
            status_code: Some(503),
            snippet: None,
            retry_after: None,
        }
    }

    /// This process's clock runs an hour ahead of the database's: the
    /// immediate retry must be due by the database's clock at once, not an
    /// hour from its point of view (the old code wrote the process's time).
    #[test]
    fn due_times_are_written_on_the_database_clock() {
        use time::Duration as Span;
        let clock = DbClock::default();
        let db_now = OffsetDateTime::now_utc() - Span::hours(1);
        clock.observe(db_now);
        let retry = RetryPolicy::default();

        let first = completion_for(&claimed(0, None), &failed_now(), &retry, &clock);
        assert_eq!(first.state, DeliveryState::Pending);
        let due = first.next_attempt_at.expect("an immediate retry");
        assert!(
            (due - db_now).abs() < Span::seconds(5),
            "immediate retry due at {due}, the database's now is {db_now}"
        );
        // The attempt's start (which becomes the cycle's start, and with it
        // the give-up horizon) is on the database's clock as well.
        assert!((first.started_at - db_now).abs() < Span::seconds(5));

        // The horizon is the database's: a cycle that started 36 h ago by
        // the database's clock gives up now, whatever this process thinks.
        let started = db_now - Span::hours(36);
        let last = completion_for(&claimed(10, Some(started)), &failed_now(), &retry, &clock);
        assert_eq!(last.state, DeliveryState::Failed);
        // ...and one that started 35 h ago by it is still retried.
        let started = db_now - Span::hours(35);
        let mid = completion_for(&claimed(3, Some(started)), &failed_now(), &retry, &clock);
        assert_eq!(mid.state, DeliveryState::Pending);
        let next = mid.next_attempt_at.expect("a retry");
        assert!(next <= started + Span::hours(36), "{next} past the horizon");
    }

    #[test]
    fn logged_error_text_is_bounded_and_one_line() {
        assert_eq!(bounded("connection refused", 200), "connection refused");
        let long = "é".repeat(300);
        let cut = bounded(&long, LOGGED_ERROR_CHARS);
        assert_eq!(cut.chars().count(), LOGGED_ERROR_CHARS + 1, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("a\nb\r\tc", 200), "a b  c");
        assert_eq!(bounded(&"x".repeat(200), 200), "x".repeat(200));
    }
}
