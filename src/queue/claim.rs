//! The queue's SQL: claiming due deliveries in batches and writing outcomes
//! in batches. One claim is one statement; one completion flush is one
//! statement, however many deliveries it carries.
//!
//! Protocol: a claim moves a due row to `delivering`, sets its
//! `next_attempt_at` to the lease expiry and stamps a fresh `lease` token.
//! If the worker dies, the row simply becomes due again when the lease runs
//! out. Completions and releases only touch rows that still carry the token
//! they were claimed with, so a worker that outlived its lease cannot
//! overwrite a newer claim.

use serde_json::Value;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::model::Method;
use crate::state::{DeliveryKind, DeliveryState};
use crate::store::deliveries::NewDelivery;
use crate::store::destinations::breaker_to_reset;
use crate::store::Schema;

/// A claimed delivery, with everything needed to attempt it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Delivery id (`webhook-id`).
    pub id: Uuid,
    /// Owning job.
    pub job_id: Option<String>,
    /// The customer it is for (signed with its secrets).
    pub customer_id: Option<String>,
    /// What it carries.
    pub kind: DeliveryKind,
    /// POST or PUT.
    pub method: Method,
    /// Destination.
    pub url: String,
    /// Destination host.
    pub host: String,
    /// `scheme://host:port`: the key of its circuit breaker (`None` for rows
    /// queued before origins were stored).
    pub origin: Option<String>,
    /// Lease token of this claim.
    pub lease: Uuid,
    /// Attempts of the current schedule made before this one.
    pub cycle_attempts: i32,
    /// First attempt of the current schedule, if one was made.
    pub cycle_started_at: Option<OffsetDateTime>,
    /// When the delivery was (re)queued.
    pub queued_at: OffsetDateTime,
    /// The database's `now()` when it was claimed (for a handed-off one,
    /// the process's estimate of it).
    pub claimed_at: OffsetDateTime,
    /// Content-Type.
    pub content_type: String,
    /// Caller headers (object of strings).
    pub headers: Value,
    /// Per-callback auth.
    pub auth: Option<Value>,
    /// Body, unless media; shared, so every attempt sends it without copying.
    /// `None` with a `body_len` above zero: too large to hold from the
    /// claim on, it is read when the attempt starts ([`body_of`]).
    pub body: Option<Body>,
    /// Length of the stored body in bytes (0 when none).
    pub body_len: i64,
    /// File to stream, for media.
    pub file_path: Option<String>,
}

impl Claimed {
    /// A delivery that intake has just stored already leased with `lease`
    /// (the in-process handoff): the same fields a claim would read back.
    pub fn fresh(row: NewDelivery, lease: Uuid, claimed_at: OffsetDateTime) -> Self {
        Claimed {
            id: row.id,
            job_id: row.job_id,
            customer_id: row.customer_id,
            kind: row.kind,
            method: row.method,
            url: row.url,
            host: row.host,
            origin: Some(row.origin),
            lease,
            cycle_attempts: 0,
            cycle_started_at: None,
            queued_at: claimed_at,
            claimed_at,
            content_type: row.content_type,
            headers: row.headers,
            auth: row.auth,
            body_len: row.body.as_ref().map_or(0, |b| b.len() as i64),
            body: row.body.map(|b| Body(b.into())),
            file_path: row.file_path,
        }
    }
}

/// A stored body held once and shared by every attempt (`bytea`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(pub bytes::Bytes);

impl std::ops::Deref for Body {
    type Target = bytes::Bytes;
    fn deref(&self) -> &bytes::Bytes {
        &self.0
    }
}

impl sqlx::Type<sqlx::Postgres> for Body {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<u8> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Body {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let bytes = <Vec<u8> as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(Body(bytes.into()))
    }
}

/// How many more attempts this process may start per key (a destination
/// host, or a customer).
#[derive(Debug, Clone, Default)]
pub struct KeyRoom {
    /// Room of a key with nothing in flight (the per-key limit).
    pub per_key: i64,
    /// Keys with attempts in flight, and the room each has left (0: full).
    pub busy: Vec<(String, i64)>,
}

impl KeyRoom {
    /// Keys with no room left.
    pub fn full(&self) -> Vec<String> {
        self.busy
            .iter()
            .filter(|(_, room)| *room <= 0)
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn keys(&self) -> Vec<&str> {
        self.busy.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn rooms(&self) -> Vec<i64> {
        self.busy.iter().map(|(_, r)| *r).collect()
    }
}

/// The room a claim may take: per destination host and per customer.
#[derive(Debug, Clone, Default)]
pub struct ClaimRoom {
    /// Per host (`POSTBACK_PER_HOST_CONCURRENCY`).
    pub hosts: KeyRoom,
    /// Per customer (`POSTBACK_PER_CUSTOMER_CONCURRENCY`); deliveries
    /// without a customer are bound by their host alone.
    pub customers: KeyRoom,
}

/// Claims up to `limit` due deliveries, oldest due first, skipping rows
/// other workers hold and taking no more per host than `room` allows.
///
/// Bodies up to `inline_max` bytes come with the claim; larger ones are
/// left in the database (`body` is `None`, `body_len` says how large) and
/// read by [`body_of`] when their attempt starts, so what a process holds
/// of claimed bodies is bounded by settings, not by payload sizes.
///
/// The `limit` oldest due rows of hosts with room are locked (`SKIP LOCKED`,
/// so concurrent claims share the queue without waiting on each other);
/// of those, each host's first `room` are claimed. The others are only
/// locked for the statement, never written: a host's backlog costs no
/// claim-then-release churn.
pub async fn claim<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    limit: i64,
    lease_secs: f64,
    room: &ClaimRoom,
    inline_max: i64,
) -> Result<Vec<Claimed>> {
    let lease = Uuid::now_v7();
    let rows = sqlx::query_as::<_, Claimed>(&schema.sql(
        // Candidates are read without locks and trimmed to each host's room
        // first; only the rows actually taken are locked (SKIP LOCKED, with
        // the due time re-checked on the locked row). Locking every candidate
        // would write a WAL record per row just to throw most of them back
        // when one host's backlog fills the head of the queue.
        "WITH cand AS (
             SELECT id, host, customer_id, next_attempt_at FROM postback.deliveries
             WHERE next_attempt_at <= now() AND host <> ALL($4::text[])
               AND (customer_id IS NULL OR customer_id <> ALL($8::text[]))
             ORDER BY next_attempt_at
             LIMIT $1),
         pick AS (
             SELECT r.id, r.due_at FROM (
                 SELECT c.id, c.next_attempt_at AS due_at,
                        row_number() OVER (PARTITION BY c.host ORDER BY c.next_attempt_at, c.id) AS rn,
                        coalesce(b.room, $5) AS room,
                        row_number() OVER (PARTITION BY c.customer_id ORDER BY c.next_attempt_at, c.id) AS crn,
                        CASE WHEN c.customer_id IS NOT NULL THEN coalesce(cb.room, $9) END AS croom
                 FROM cand c
                 LEFT JOIN unnest($6::text[], $7::int8[]) AS b(host, room) ON b.host = c.host
                 LEFT JOIN unnest($10::text[], $11::int8[]) AS cb(customer, room)
                        ON cb.customer = c.customer_id) r
             WHERE r.rn <= r.room AND (r.croom IS NULL OR r.crn <= r.croom)),
         due AS (
             SELECT d.id, pick.due_at FROM postback.deliveries d JOIN pick ON pick.id = d.id
             WHERE d.next_attempt_at <= now()
             FOR UPDATE OF d SKIP LOCKED),
         claimed AS (
             UPDATE postback.deliveries d
             SET state = 'delivering', next_attempt_at = now() + make_interval(secs => $2), lease = $3
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.job_id, d.customer_id, d.kind, d.method, d.url, d.host, d.origin, d.lease, d.cycle_attempts,
                       d.cycle_started_at, d.queued_at, due.due_at)
         SELECT c.*, now() AS claimed_at, p.content_type, p.headers, p.auth,
                CASE WHEN octet_length(coalesce(p.body, b.body)) <= $12
                     THEN coalesce(p.body, b.body) END AS body,
                coalesce(octet_length(coalesce(p.body, b.body)), 0)::int8 AS body_len,
                p.file_path
         FROM claimed c JOIN postback.payloads p ON p.delivery_id = c.id
         LEFT JOIN postback.bodies b ON b.hash = p.body_hash
         ORDER BY c.due_at, c.id",
    ))
    .bind(limit)
    .bind(lease_secs)
    .bind(lease)
    .bind(room.hosts.full())
    .bind(room.hosts.per_key)
    .bind(room.hosts.keys())
    .bind(room.hosts.rooms())
    .bind(room.customers.full())
    .bind(room.customers.per_key)
    .bind(room.customers.keys())
    .bind(room.customers.rooms())
    .bind(inline_max)
    .fetch_all(db)
    .await?;
    Ok(rows)
}

/// The body of delivery `id`, for an attempt whose claim left it out (see
/// [`claim`]); `None` when it has none (or is gone).
pub async fn body_of<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: Uuid,
) -> Result<Option<Body>> {
    let body: Option<Option<Body>> = sqlx::query_scalar(&schema.sql(
        "SELECT coalesce(p.body, b.body) FROM postback.payloads p
         LEFT JOIN postback.bodies b ON b.hash = p.body_hash
         WHERE p.delivery_id = $1",
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(body.flatten())
}

/// The recorded result of one attempt and the state it leads to.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Delivery id.
    pub id: Uuid,
    /// Lease token it was claimed with.
    pub lease: Uuid,
    /// The origin attempted (for its circuit breaker).
    pub origin: Option<String>,
    /// What the delivery carries (operator events are not reported on).
    pub kind: DeliveryKind,
    /// Pending (a retry), delivered or failed.
    pub state: DeliveryState,
    /// Next due time when pending.
    pub next_attempt_at: Option<OffsetDateTime>,
    /// When the attempt started.
    pub started_at: OffsetDateTime,
    /// How long it took.
    pub duration_ms: i32,
    /// HTTP status, when a response arrived.
    pub status_code: Option<i32>,
    /// Outcome class when it failed.
    pub error: Option<&'static str>,
    /// First 1 KiB of the response.
    pub response_snippet: Option<String>,
}

/// Writes a batch of attempt outcomes: one UPDATE of the deliveries and one
/// INSERT of the attempts, in one statement. Returns how many rows still
/// held their lease (the others were re-claimed after a lease expiry and
/// are left alone).
///
/// A delivery that becomes final is kept for `retain` (`POSTBACK_JOB_TTL`)
/// from now, or until its job's expiry if that is later (SPEC §3): its
/// `expires_at` moves to the later of the two.
///
/// With `hold` (breakers on: the give-up horizon), a retry of an origin
/// whose breaker is open is written held, in the same statement: written
/// due, an immediate retry was claimed and sent in the moment before the
/// breaker's own hold ran (the soak saw most of a dead host's deliveries
/// get a third attempt after its breaker had opened). A failed probe is
/// held too (its breaker re-opens right after, in the breakers' update).
/// Only retries pay for the lookup; successes never do.
pub async fn complete<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    batch: &[Completion],
    retain: std::time::Duration,
    hold: Option<std::time::Duration>,
) -> Result<u64> {
    Ok(complete_marking(db, schema, batch, retain, hold, &[])
        .await?
        .0)
}

/// [`complete`], which also reads, in the same statement, which of
/// `origins` have a circuit breaker with something to reset (failures
/// counted, or open): the origins a batch succeeded on, whose breakers the
/// completer closes next. One round trip instead of two per flush, which at
/// light load is one per delivery. Returns the outcomes written and those
/// origins.
pub async fn complete_marking<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    batch: &[Completion],
    retain: std::time::Duration,
    hold: Option<std::time::Duration>,
    origins: &[&str],
) -> Result<(u64, Vec<String>)> {
    if batch.is_empty() {
        return Ok((0, Vec::new()));
    }
    let ids: Vec<Uuid> = batch.iter().map(|c| c.id).collect();
    let leases: Vec<Uuid> = batch.iter().map(|c| c.lease).collect();
    let states: Vec<DeliveryState> = batch.iter().map(|c| c.state).collect();
    let next: Vec<Option<OffsetDateTime>> = batch.iter().map(|c| c.next_attempt_at).collect();
    let started: Vec<OffsetDateTime> = batch.iter().map(|c| c.started_at).collect();
    let durations: Vec<i32> = batch.iter().map(|c| c.duration_ms).collect();
    let codes: Vec<Option<i32>> = batch.iter().map(|c| c.status_code).collect();
    let errors: Vec<Option<&str>> = batch.iter().map(|c| c.error).collect();
    let snippets: Vec<Option<&str>> = batch
        .iter()
        .map(|c| c.response_snippet.as_deref())
        .collect();
    let (n, marked): (i64, Vec<String>) = sqlx::query_as(&schema.sql(concat!(
        "WITH u AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                                  $5::timestamptz[], $6::int[], $7::int[], $8::text[], $9::text[])
                 AS t(id, lease, state, next_at, started_at, duration_ms, status_code, error, snippet)),
         upd AS (
             UPDATE postback.deliveries d
             SET state = u.state,
                 next_attempt_at = CASE WHEN h.held
                     THEN greatest(u.next_at, coalesce(d.cycle_started_at, u.started_at) + make_interval(secs => $11))
                     ELSE u.next_at END,
                 lease = NULL,
                 attempts = d.attempts + 1,
                 cycle_attempts = d.cycle_attempts + 1,
                 cycle_started_at = coalesce(d.cycle_started_at, u.started_at),
                 last_attempt_at = u.started_at,
                 last_status_code = u.status_code,
                 last_error = u.error,
                 held_due = CASE WHEN h.held THEN u.next_at END,
                 completed_at = CASE WHEN u.state IN ('delivered', 'failed') THEN now() END,
                 expires_at = CASE WHEN u.state IN ('delivered', 'failed')
                                   THEN greatest(d.expires_at, now() + make_interval(secs => $10))
                                   ELSE d.expires_at END
             FROM u CROSS JOIN LATERAL (
                 SELECT $11::float8 IS NOT NULL AND u.state = 'pending' AND EXISTS (
                     SELECT 1 FROM postback.deliveries dd
                     JOIN postback.destinations o ON o.origin = dd.origin
                     WHERE dd.id = u.id AND o.state = 'open') AS held) h
             WHERE d.id = u.id AND d.lease = u.lease
             RETURNING d.id, d.attempts),
         ins AS (
             INSERT INTO postback.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error, response_snippet)
             SELECT upd.id, upd.attempts, u.started_at, u.duration_ms, u.status_code, u.error, u.snippet
             FROM upd JOIN u ON u.id = upd.id
             RETURNING 1)
         SELECT (SELECT count(*) FROM ins) AS n,
                coalesce((SELECT array_agg(origin) FROM postback.destinations
                          WHERE origin = ANY($12::text[]) AND ",
        breaker_to_reset!(),
        "),
                         '{}'::text[]) AS marked",
    )))
    .bind(&ids)
    .bind(&leases)
    .bind(&states)
    .bind(&next)
    .bind(&started)
    .bind(&durations)
    .bind(&codes)
    .bind(&errors)
    .bind(&snippets)
    .bind(retain.as_secs_f64().min(crate::store::jobs::MAX_TTL_SECS))
    .bind(hold.map(|h| h.as_secs_f64().min(crate::store::jobs::MAX_TTL_SECS)))
    .bind(origins)
    .fetch_one(db)
    .await?;
    Ok((n.max(0) as u64, marked))
}

/// Hands claimed deliveries back without an attempt (shutdown, or no room
/// for their host), due at once (the database's now).
pub async fn release<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    items: &[(Uuid, Uuid)],
) -> Result<u64> {
    if items.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = items.iter().map(|i| i.0).collect();
    let leases: Vec<Uuid> = items.iter().map(|i| i.1).collect();
    let done = sqlx::query(&schema.sql(
        "UPDATE postback.deliveries d SET state = 'pending', next_attempt_at = now(), lease = NULL
         FROM unnest($1::uuid[], $2::uuid[]) AS u(id, lease)
         WHERE d.id = u.id AND d.lease = u.lease",
    ))
    .bind(&ids)
    .bind(&leases)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The earliest due time in the queue, leases included (a dead worker's
/// deliveries come back when theirs runs out), to sleep exactly until then,
/// with the database's `now()` to measure the wait against (never this
/// process's clock). Hosts in `skip_hosts` (full in this process) are left
/// out: their deliveries can only be taken once an attempt ends, which
/// wakes the claim loop anyway.
pub async fn next_due<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    skip_hosts: &[String],
) -> Result<(Option<OffsetDateTime>, OffsetDateTime)> {
    let next: (Option<OffsetDateTime>, OffsetDateTime) = sqlx::query_as(&schema.sql(
        "SELECT min(next_attempt_at), now() FROM postback.deliveries
         WHERE next_attempt_at IS NOT NULL AND host <> ALL($1::text[])",
    ))
    .bind(skip_hosts)
    .fetch_one(db)
    .await?;
    Ok(next)
}
