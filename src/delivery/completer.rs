//! Writes attempt outcomes back in batches: whatever has arrived since the
//! last flush goes out in one statement. While the database is away it
//! keeps the batch and retries; it never drops an outcome because of an
//! outage (if it must give up at shutdown, the leases expire and the
//! deliveries are attempted again: at least once, never lost). An outcome
//! the database refuses outright (not an outage) is written alone, so it
//! cannot hold the rest of its batch back.
//!
//! After every flush it wakes the claim loop: a failed attempt whose retry
//! is due at once (the immediate retries) becomes claimable only now.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::breakers::Flushed;
use crate::error::Error;
use crate::queue::claim::{self, Completion};
use crate::queue::Waker;
use crate::state::DeliveryState;
use crate::store::held::Held;
use crate::store::Schema;

/// Most outcomes one flush writes.
pub const FLUSH_BATCH: usize = 1024;

/// Runs until every sender is gone and everything received is written.
pub async fn run(
    pool: PgPool,
    schema: Schema,
    retain: Duration,
    mut rx: UnboundedReceiver<Completion>,
    waker: Waker,
    breakers: std::sync::Arc<super::breakers::Breakers>,
    stop: CancellationToken,
) {
    // With breakers on, a retry of an origin whose breaker is open is
    // written held (it waits for the probe, at most until its horizon).
    let hold = (breakers.threshold > 0).then_some(breakers.give_up);
    let mut writer = Writer {
        // The completer's own connection, kept between flushes (`Held`).
        conn: Held::new(pool.clone()),
        pool,
        schema,
        retain,
        hold,
        breakers,
        waker,
    };
    let mut batch = Vec::with_capacity(FLUSH_BATCH);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, FLUSH_BATCH) => {
                if received == 0 {
                    return;
                }
            }
            // Every attempt has finished and sent its outcome before `stop`
            // (the dispatcher waits for them): write what is left, then end.
            _ = stop.cancelled() => {
                while let Ok(c) = rx.try_recv() {
                    batch.push(c);
                    if batch.len() == FLUSH_BATCH {
                        writer.write(&batch).await;
                        batch.clear();
                    }
                }
                writer.write(&batch).await;
                return;
            }
        }
        writer.write(&batch).await;
        // An immediate retry is due the moment it is written: wake the claim
        // loop for it. Otherwise stay quiet: a wake-up per flush would cost a
        // claim (and an idle query) per flush for nothing under load.
        if batch.iter().any(is_due_now) {
            writer.waker.wake();
        }
        batch.clear();
    }
}

/// What writes the outcomes and counts them for the breakers.
struct Writer {
    conn: Held,
    pool: PgPool,
    schema: Schema,
    retain: Duration,
    hold: Option<Duration>,
    breakers: std::sync::Arc<super::breakers::Breakers>,
    waker: Waker,
}

impl Writer {
    /// Writes `batch`, then lets the breakers count it. The completion
    /// statement also reads the succeeded origins' breakers, so the count
    /// needs no read of its own (`claim::complete_marking`).
    async fn write(&mut self, batch: &[Completion]) {
        let outcomes = self.breakers.outcomes(batch);
        let origins: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.succeeded)
            .map(|o| o.origin.as_str())
            .collect();
        let marked = flush(
            &mut self.conn,
            &self.schema,
            self.retain,
            self.hold,
            batch,
            &origins,
        )
        .await;
        let flushed = Flushed {
            batch,
            outcomes,
            marked,
        };
        self.breakers
            .after_flush(
                &self.pool,
                &mut self.conn,
                &self.schema,
                flushed,
                &self.waker,
            )
            .await;
    }
}

/// A retry due when (or within a second after) its attempt ended. Judged
/// from the completion's own times, which are on the database's clock, not
/// against this process's clock.
fn is_due_now(c: &Completion) -> bool {
    let ended = c.started_at + time::Duration::milliseconds(i64::from(c.duration_ms));
    c.state == DeliveryState::Pending
        && c.next_attempt_at
            .is_some_and(|at| at <= ended + time::Duration::SECOND)
}

/// Connectivity errors arrive as [`Error::Unavailable`] (see the `From`
/// conversion); matching only `Error::Database` here once made every
/// outcome of an outage count as refused, dropped until its lease expired
/// and then sent again.
fn is_outage(err: &Error) -> bool {
    err.is_unavailable()
}

/// How long a flush keeps retrying through an outage before it gives the
/// outcomes up (their leases have usually run out by then).
const FLUSH_GIVE_UP: Duration = Duration::from_secs(180);
/// Longest pause between retries: outcomes are written within a second of
/// the database coming back.
const FLUSH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Writes `batch`; final deliveries are kept for `retain` (the TTL);
/// retries of an open origin are held for at most `hold` from their cycle's
/// start (see [`claim::complete`]).
///
/// Returns which of `origins` have a breaker with something to reset, as
/// the completion statement read them, or `None` when the batch was not
/// written in one statement (the breakers then read it themselves).
async fn flush(
    conn: &mut Held,
    schema: &Schema,
    retain: Duration,
    hold: Option<Duration>,
    batch: &[Completion],
    origins: &[&str],
) -> Option<Vec<String>> {
    let mut backoff = Duration::from_millis(50);
    let give_up = tokio::time::Instant::now() + FLUSH_GIVE_UP;
    while tokio::time::Instant::now() < give_up {
        let written = conn
            .run(async |c| claim::complete_marking(c, schema, batch, retain, hold, origins).await)
            .await;
        match written {
            Ok((written, marked)) => {
                if (written as usize) < batch.len() {
                    tracing::warn!(
                        lost_lease = batch.len() - written as usize,
                        "some outcomes arrived after their lease expired; those deliveries were re-claimed"
                    );
                }
                return Some(marked);
            }
            Err(err) if !is_outage(&err) && batch.len() > 1 => {
                // One outcome the database refuses must not hold back the
                // others: write them one by one.
                tracing::warn!(error = %err, n = batch.len(), "batch of outcomes refused; writing them one by one");
                for one in batch {
                    let one = std::slice::from_ref(one);
                    Box::pin(flush(conn, schema, retain, hold, one, &[])).await;
                }
                return None;
            }
            Err(err) if !is_outage(&err) => {
                tracing::error!(error = %err, delivery_id = batch.first().map(|c| tracing::field::display(c.id)), "outcome refused by the database; the delivery will be attempted again when its lease expires");
                return None;
            }
            Err(err) => {
                tracing::warn!(error = %err, backoff_ms = backoff.as_millis() as u64, n = batch.len(), "could not write outcomes; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FLUSH_BACKOFF_MAX);
            }
        }
    }
    tracing::error!(n = batch.len(), "gave up writing outcomes; these deliveries will be attempted again when their lease expires");
    None
}
