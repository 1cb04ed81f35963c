//! The `destinations` table: one circuit breaker per origin (scheme, host,
//! port), shared by every process (SPEC §3), and the statements that hold
//! an open origin's deliveries and release them.
//!
//! A held delivery keeps the time it was due in `held_due` and waits at its
//! give-up horizon, so the last attempt at the horizon is still made while
//! the breaker is open; closing the breaker puts each back at its due time
//! (now, for those already due). It must not decide when a breaker opens
//! (that is the engine's `breakers` module): it only stores and moves rows.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Schema;
use crate::error::Result;

/// The rule for "this origin's breaker has something to reset" (failures
/// counted, or open), as SQL on a `destinations` row: the closing read, its
/// locked re-read, and the completion statement that reads it for the
/// completer (`claim::complete_marking`) all use this one text.
macro_rules! breaker_to_reset {
    () => {
        "(consecutive_failures > 0 OR state = 'open')"
    };
}
pub(crate) use breaker_to_reset;

/// A breaker as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DestinationRow {
    /// `scheme://host:port`.
    pub origin: String,
    /// `closed` or `open` (`open` with a probe out is shown as `half_open`).
    pub state: String,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// When it opened.
    pub opened_at: Option<OffsetDateTime>,
    /// When the next probe may go (open only).
    pub next_probe_at: Option<OffsetDateTime>,
    /// A probe is out since then.
    pub probing_since: Option<OffsetDateTime>,
    /// The last failure's error.
    pub last_error: Option<String>,
}

/// What one origin did in a batch of outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginOutcomes {
    /// The origin.
    pub origin: String,
    /// A 2xx arrived in the batch.
    pub succeeded: bool,
    /// Failures after the batch's last success (all of them without one).
    pub trailing_failures: i32,
    /// The error of the last failure.
    pub last_error: Option<String>,
    /// The deliveries of those trailing failures (one of them may be the
    /// breaker's probe).
    pub failed_ids: Vec<Uuid>,
}

/// A breaker after its failures were counted: origin, state, failures,
/// cooldown, whether its probe is among the failures.
type Counted = (String, String, i32, Option<f64>, bool);

/// A breaker that changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Opened (or re-opened after a failed probe) until `next_probe_at`.
    Opened {
        /// The origin.
        origin: String,
        /// It was open already: its probe failed.
        reopened: bool,
        /// Consecutive failures that opened it.
        failures: i32,
        /// When it will probe.
        next_probe_at: OffsetDateTime,
        /// The last error.
        last_error: Option<String>,
    },
    /// Closed by a success (or a reset).
    Closed {
        /// The origin.
        origin: String,
    },
}

/// Records a batch's outcomes per origin: a success closes and resets the
/// origin's breaker (releasing what it held); failures count up, and reaching
/// `threshold` opens it for `cooldown`, a failure while it is open re-opens
/// it with the cooldown doubled up to `max_cooldown`. Returns the
/// transitions. Origins that never failed cost one index probe and no write.
pub async fn record(
    conn: &mut PgConnection,
    schema: &Schema,
    outcomes: &[OriginOutcomes],
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    give_up: Duration,
) -> Result<Vec<Transition>> {
    let limits = (threshold, cooldown, max_cooldown, give_up);
    record_marked(conn, schema, outcomes, None, limits).await
}

/// [`record`], given `marked`: which of the succeeded origins have a
/// breaker with something to reset, when the completion statement already
/// read it (`claim::complete_marking`); `None` reads it here.
pub async fn record_marked(
    conn: &mut PgConnection,
    schema: &Schema,
    outcomes: &[OriginOutcomes],
    marked: Option<Vec<String>>,
    (threshold, cooldown, max_cooldown, give_up): (u32, Duration, Duration, Duration),
) -> Result<Vec<Transition>> {
    let mut transitions = Vec::new();
    let succeeded: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.succeeded)
        .map(|o| o.origin.as_str())
        .collect();
    for origin in close(&mut *conn, schema, &succeeded, marked).await? {
        transitions.push(Transition::Closed { origin });
    }
    let failing: Vec<&OriginOutcomes> = outcomes
        .iter()
        .filter(|o| o.trailing_failures > 0)
        .collect();
    if failing.is_empty() || threshold == 0 {
        return Ok(transitions);
    }
    let origins: Vec<&str> = failing.iter().map(|o| o.origin.as_str()).collect();
    let counts: Vec<i32> = failing.iter().map(|o| o.trailing_failures).collect();
    let errors: Vec<Option<&str>> = failing.iter().map(|o| o.last_error.as_deref()).collect();
    let failed_ids: Vec<Uuid> = failing
        .iter()
        .flat_map(|o| o.failed_ids.iter().copied())
        .collect();
    // Count the failures; open a closed breaker at the threshold, re-open an
    // open one whose probe failed with the cooldown doubled. (A failure of an
    // attempt that started before the breaker opened changes nothing but
    // its own delivery, which is held.)
    // Two statements: one statement cannot update a row twice.
    //
    // One transaction from the count to the hold: the count takes the
    // breaker's row lock, so an operator's reset (or another process's
    // close) either comes before it (and this sees the breaker closed) or
    // after the hold (and releases what it held). Without it, a reset
    // between the opening and the hold left deliveries held behind a closed
    // breaker until their horizon.
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let counted: Vec<Counted> = sqlx::query_as(&schema.sql(
        "INSERT INTO postback.destinations AS b (origin, consecutive_failures, last_error)
             SELECT * FROM unnest($1::text[], $2::int[], $3::text[])
             ON CONFLICT (origin) DO UPDATE
             SET consecutive_failures = b.consecutive_failures + EXCLUDED.consecutive_failures,
                 last_error = EXCLUDED.last_error, updated_at = now()
             RETURNING b.origin, b.state, b.consecutive_failures, b.cooldown_secs,
                       coalesce(b.probe_id = ANY($4::uuid[]), false)",
    ))
    .bind(&origins)
    .bind(&counts)
    .bind(&errors)
    .bind(&failed_ids)
    .fetch_all(&mut *tx)
    .await?;
    let base = cooldown.as_secs_f64();
    let cap = max_cooldown.max(cooldown).as_secs_f64();
    let threshold = i32::try_from(threshold).unwrap_or(i32::MAX);
    let mut to_open: Vec<(String, f64)> = Vec::new();
    let mut reopened = std::collections::HashSet::new();
    for (origin, state, failures, cooldown_secs, probe_failed) in counted {
        match state.as_str() {
            "closed" if failures >= threshold => to_open.push((origin, base)),
            "open" if probe_failed => {
                reopened.insert(origin.clone());
                to_open.push((origin, (cooldown_secs.unwrap_or(base) * 2.0).min(cap)))
            }
            _ => {}
        }
    }
    let open_origins: Vec<&str> = to_open.iter().map(|(o, _)| o.as_str()).collect();
    let open_secs: Vec<f64> = to_open.iter().map(|(_, c)| *c).collect();
    let opened: Vec<(String, i32, OffsetDateTime, Option<String>)> = sqlx::query_as(&schema.sql(
        "UPDATE postback.destinations b
         SET state = 'open',
             opened_at = CASE WHEN b.state = 'open' THEN b.opened_at ELSE now() END,
             cooldown_secs = o.secs,
             next_probe_at = now() + make_interval(secs => o.secs),
             probing_since = NULL, probe_id = NULL,
             hold_secs = $3,
             updated_at = now()
         FROM unnest($1::text[], $2::float8[]) AS o(origin, secs)
         WHERE b.origin = o.origin
         RETURNING b.origin, b.consecutive_failures, b.next_probe_at, b.last_error",
    ))
    .bind(&open_origins)
    .bind(&open_secs)
    .bind(give_up.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    // Every failing origin whose breaker is open now holds its deliveries
    // (the ones just failed included: their retries wait for the probe).
    hold(&mut tx, schema, &origins, give_up).await?;
    tx.commit().await?;
    for (origin, failures, next_probe_at, last_error) in opened {
        transitions.push(Transition::Opened {
            reopened: reopened.contains(&origin),
            origin,
            failures,
            next_probe_at,
            last_error,
        });
    }
    Ok(transitions)
}

/// Closes the breakers of `origins` (each had a success) that had counted
/// failures or were open, and releases what the open ones held; returns the
/// origins whose breaker was open. The hot path (origins that never failed)
/// is one read without locks; only an origin with something to reset takes
/// a transaction, so the release sees every hold committed before it.
async fn close(
    conn: &mut PgConnection,
    schema: &Schema,
    origins: &[&str],
    marked: Option<Vec<String>>,
) -> Result<Vec<String>> {
    if origins.is_empty() {
        return Ok(Vec::new());
    }
    let marked: Vec<String> = match marked {
        Some(marked) => marked,
        None => {
            sqlx::query_scalar(&schema.sql(concat!(
                "SELECT origin FROM postback.destinations
                 WHERE origin = ANY($1::text[]) AND ",
                breaker_to_reset!()
            )))
            .bind(origins)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    if marked.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    // The row locks are taken in origin order, as the failure count takes
    // them, so two processes closing and counting never deadlock.
    let closed: Vec<String> = sqlx::query_scalar(&schema.sql(concat!(
        "WITH old AS (
             SELECT origin, state FROM postback.destinations
             WHERE origin = ANY($1::text[]) AND ",
        breaker_to_reset!(),
        "
             ORDER BY origin
             FOR UPDATE),
         upd AS (
             UPDATE postback.destinations b
             SET state = 'closed', consecutive_failures = 0, opened_at = NULL, cooldown_secs = NULL,
                 next_probe_at = NULL, probing_since = NULL, probe_id = NULL, updated_at = now()
             FROM old WHERE b.origin = old.origin
             RETURNING b.origin)
         SELECT old.origin FROM old JOIN upd ON upd.origin = old.origin WHERE old.state = 'open'",
    )))
    .bind(&marked)
    .fetch_all(&mut *tx)
    .await?;
    for origin in &closed {
        release(&mut tx, schema, origin).await?;
    }
    tx.commit().await?;
    Ok(closed)
}

/// Holds every pending delivery of those `origins` whose breaker is open:
/// each keeps its due time in
/// `held_due` and waits at its give-up horizon (`give_up` after its
/// cycle's first attempt, or from now for one never attempted), where its
/// last attempt is made whatever the breaker says. A delivery never
/// attempted starts its cycle at the hold (as one born held starts it at
/// its insert): the breaker stands in for its first attempt, so it gives up
/// `give_up` after it was first due, not that long after a first attempt
/// the breaker put off (measured by the soak: a dead host's deliveries
/// lived twice the horizon).
async fn hold(
    conn: &mut PgConnection,
    schema: &Schema,
    origins: &[&str],
    give_up: Duration,
) -> Result<u64> {
    // The probe `release_probes` let go is spared: a late failure of an
    // attempt that started before the breaker opened would otherwise hold
    // it again and leave the breaker half open with no probe out until the
    // horizon.
    Ok(sqlx::query(&schema.sql(
        "UPDATE postback.deliveries d
         SET held_due = d.next_attempt_at,
             cycle_started_at = coalesce(d.cycle_started_at, now()),
             next_attempt_at = greatest(d.next_attempt_at,
                 coalesce(d.cycle_started_at, now()) + make_interval(secs => $2))
         FROM postback.destinations b
         WHERE b.origin = ANY($1::text[]) AND b.state = 'open'
           AND d.origin = b.origin
           AND d.state = 'pending' AND d.next_attempt_at IS NOT NULL AND d.held_due IS NULL
           AND d.id IS DISTINCT FROM b.probe_id",
    ))
    .bind(origins)
    .bind(give_up.as_secs_f64())
    .execute(conn)
    .await?
    .rows_affected())
}

/// Puts every delivery `origin`'s breaker held back at its due time.
async fn release(conn: &mut PgConnection, schema: &Schema, origin: &str) -> Result<u64> {
    Ok(sqlx::query(&schema.sql(
        "UPDATE postback.deliveries
         SET next_attempt_at = greatest(held_due, now()), held_due = NULL
         WHERE origin = $1 AND held_due IS NOT NULL AND state = 'pending'",
    ))
    .bind(origin)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Lets one probe go for every open breaker whose cooldown ended and that
/// has no probe out: the oldest held delivery becomes due now. Breakers are
/// taken under a row lock, so two workers never probe one origin together.
/// Returns the origins probed.
pub async fn release_probes(conn: &mut PgConnection, schema: &Schema) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(&schema.sql(
        "WITH due AS (
             SELECT origin FROM postback.destinations
             WHERE state = 'open' AND next_probe_at <= now() AND probing_since IS NULL
             FOR UPDATE SKIP LOCKED),
         probe AS (
             SELECT DISTINCT ON (d.origin) d.id, d.origin
             FROM postback.deliveries d JOIN due ON due.origin = d.origin
             WHERE d.held_due IS NOT NULL AND d.state = 'pending'
             ORDER BY d.origin, d.held_due, d.id),
         freed AS (
             UPDATE postback.deliveries d SET next_attempt_at = now(), held_due = NULL
             FROM probe WHERE d.id = probe.id
             RETURNING d.origin, d.id)
         UPDATE postback.destinations b SET probing_since = now(), probe_id = freed.id, updated_at = now()
         FROM freed WHERE b.origin = freed.origin
         RETURNING b.origin",
    ))
    .fetch_all(conn)
    .await?)
}

/// Closes `origin`'s breaker now (an operator's reset): its held deliveries
/// become due at once. `false` when no breaker of that origin exists.
pub async fn reset(conn: &mut PgConnection, schema: &Schema, origin: &str) -> Result<bool> {
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let found = sqlx::query(&schema.sql(
        "UPDATE postback.destinations
         SET state = 'closed', consecutive_failures = 0, opened_at = NULL, cooldown_secs = NULL,
             next_probe_at = NULL, probing_since = NULL, probe_id = NULL, updated_at = now()
         WHERE origin = $1",
    ))
    .bind(origin)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    release(&mut tx, schema, origin).await?;
    tx.commit().await?;
    Ok(found)
}

/// Breakers, optionally only those in `state` (`open`, `half_open`,
/// `closed`), open ones first.
pub async fn list<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    state: Option<&str>,
) -> Result<Vec<DestinationRow>> {
    Ok(sqlx::query_as(&schema.sql(
        "SELECT origin,
                CASE WHEN state = 'open' AND probing_since IS NOT NULL THEN 'half_open' ELSE state END AS state,
                consecutive_failures, opened_at, next_probe_at, probing_since, last_error
         FROM postback.destinations
         WHERE $1::text IS NULL
            OR $1 = CASE WHEN state = 'open' AND probing_since IS NOT NULL THEN 'half_open' ELSE state END
         ORDER BY state DESC, opened_at NULLS LAST, origin
         LIMIT 1000",
    ))
    .bind(state)
    .fetch_all(db)
    .await?)
}

/// How many breakers are open or half open (the gauge).
pub async fn open_count<'e, E: PgExecutor<'e>>(db: E, schema: &Schema) -> Result<i64> {
    Ok(sqlx::query_scalar(
        &schema.sql("SELECT count(*) FROM postback.destinations WHERE state = 'open'"),
    )
    .fetch_one(db)
    .await?)
}
