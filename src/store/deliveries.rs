//! The `deliveries`, `payloads` and `attempts` tables outside the hot claim
//! path: enqueueing, reads for the API and CLI, replay.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Schema;
use crate::error::Result;
use crate::model::{AttemptView, DeliveryView, Method};
use crate::state::{DeliveryKind, DeliveryState};

/// A delivery to queue, with what it sends.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The delivery id (`webhook-id`).
    pub id: Uuid,
    /// Owning job, if any.
    pub job_id: Option<String>,
    /// The customer it is for (signs with its secret).
    pub customer_id: Option<String>,
    /// What it carries.
    pub kind: DeliveryKind,
    /// POST or PUT.
    pub method: Method,
    /// Destination.
    pub url: String,
    /// Destination host (for per-host fairness and filters).
    pub host: String,
    /// Content-Type of the body.
    pub content_type: String,
    /// Caller headers.
    pub headers: Value,
    /// Per-callback auth (JSON of `CallbackAuth`).
    pub auth: Option<Value>,
    /// Body bytes (all but media).
    pub body: Option<Vec<u8>>,
    /// File to stream (media).
    pub file_path: Option<String>,
    /// When the delivery is forgotten.
    pub expires_at: OffsetDateTime,
}

/// Queues `batch` (two statements however many deliveries).
pub async fn insert(conn: &mut PgConnection, schema: &Schema, batch: &[NewDelivery]) -> Result<()> {
    let unleased = vec![None; batch.len()];
    insert_leased(conn, schema, batch, &unleased).await
}

/// Queues `batch` in ONE statement (deliveries and payloads together, so
/// the batch is atomic even outside a transaction). `leases[i]`, when
/// set, stores delivery `i` already claimed by that token for that long.
///
/// A delivery for a customer that does not exist (or is being erased) is
/// not stored; the whole batch is then refused with
/// [`Error::UnknownCustomer`](crate::error::Error) semantics: the caller
/// learns which one by storing them one by one.
pub async fn insert_leased(
    conn: &mut PgConnection,
    schema: &Schema,
    batch: &[NewDelivery],
    leases: &[Option<(Uuid, std::time::Duration)>],
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let customers: Vec<Option<&str>> = batch.iter().map(|d| d.customer_id.as_deref()).collect();
    let ids: Vec<Uuid> = batch.iter().map(|d| d.id).collect();
    let job_ids: Vec<Option<&str>> = batch.iter().map(|d| d.job_id.as_deref()).collect();
    let kinds: Vec<DeliveryKind> = batch.iter().map(|d| d.kind).collect();
    let methods: Vec<Method> = batch.iter().map(|d| d.method).collect();
    let urls: Vec<&str> = batch.iter().map(|d| d.url.as_str()).collect();
    let hosts: Vec<&str> = batch.iter().map(|d| d.host.as_str()).collect();
    let expires: Vec<OffsetDateTime> = batch.iter().map(|d| d.expires_at).collect();
    let lease_ids: Vec<Option<Uuid>> = (0..batch.len())
        .map(|i| leases.get(i).copied().flatten().map(|l| l.0))
        .collect();
    let lease_secs: Vec<f64> = (0..batch.len())
        .map(|i| {
            leases
                .get(i)
                .copied()
                .flatten()
                .map_or(0.0, |l| l.1.as_secs_f64())
        })
        .collect();
    let content_types: Vec<&str> = batch.iter().map(|d| d.content_type.as_str()).collect();
    let headers: Vec<&Value> = batch.iter().map(|d| &d.headers).collect();
    let auths: Vec<Option<&Value>> = batch.iter().map(|d| d.auth.as_ref()).collect();
    let bodies: Vec<Option<&[u8]>> = batch.iter().map(|d| d.body.as_deref()).collect();
    let files: Vec<Option<&str>> = batch.iter().map(|d| d.file_path.as_deref()).collect();
    // Rows of unknown or departing customers are filtered out by the
    // join (the foreign key alone would let a customer being erased take
    // new rows); the count tells the caller.
    let stored: i64 = sqlx::query_scalar(&schema.sql(
        "WITH d AS (
             INSERT INTO postback.deliveries (id, job_id, customer_id, kind, method, url, host, next_attempt_at, expires_at, state, lease)
             SELECT t.id, t.job_id, t.customer_id, t.kind, t.method, t.url, t.host,
                    now() + make_interval(secs => t.lease_secs), t.expires_at,
                    CASE WHEN t.lease IS NULL THEN 'pending' ELSE 'delivering' END, t.lease
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::uuid[], $9::float8[], $15::text[])
                  AS t(id, job_id, kind, method, url, host, expires_at, lease, lease_secs, customer_id)
             LEFT JOIN postback.customers c ON c.id = t.customer_id
             WHERE t.customer_id IS NULL OR (c.id IS NOT NULL AND c.deleted_at IS NULL)
             RETURNING id),
         p AS (
             INSERT INTO postback.payloads (delivery_id, content_type, headers, auth, body, file_path)
             SELECT u.* FROM unnest($1::uuid[], $10::text[], $11::jsonb[], $12::jsonb[], $13::bytea[], $14::text[])
                  AS u(id, content_type, headers, auth, body, file_path)
             JOIN d ON d.id = u.id
             RETURNING 1)
         SELECT count(*) FROM p",
    ))
    .bind(&ids)
    .bind(&job_ids)
    .bind(&kinds)
    .bind(&methods)
    .bind(&urls)
    .bind(&hosts)
    .bind(&expires)
    .bind(&lease_ids)
    .bind(&lease_secs)
    .bind(&content_types)
    .bind(&headers)
    .bind(&auths)
    .bind(&bodies)
    .bind(&files)
    .bind(&customers)
    .fetch_one(&mut *conn)
    .await?;
    if stored as usize != batch.len() {
        return Err(unknown_customer());
    }
    Ok(())
}

/// A delivery named a customer that does not exist (or is being erased).
fn unknown_customer() -> crate::error::Error {
    crate::error::Error::invalid(
        crate::error::ErrorCode::UnknownCustomer,
        "customerId",
        "no customer has this id; create it with PUT /v1/customers/{customerId} first",
    )
}

/// Queues one delivery in a single statement (one round trip, atomic on
/// its own), optionally notifying `postback_due` in the same statement.
/// With `lease`, the row is stored already claimed by that lease token
/// (state `delivering`, due again when the lease runs out).
pub async fn insert_one(
    conn: &mut PgConnection,
    schema: &Schema,
    d: &NewDelivery,
    notify: bool,
    lease: Option<(Uuid, std::time::Duration)>,
) -> Result<()> {
    let stored: i64 = sqlx::query_scalar(&schema.sql(
        "WITH d AS (
             INSERT INTO postback.deliveries (id, job_id, customer_id, kind, method, url, host, next_attempt_at, expires_at, state, lease)
             SELECT $1, $2, $16, $3, $4, $5, $6, now() + make_interval(secs => $14), $7,
                    CASE WHEN $15::uuid IS NULL THEN 'pending' ELSE 'delivering' END, $15
             WHERE $16::text IS NULL OR EXISTS (
                 SELECT 1 FROM postback.customers WHERE id = $16 AND deleted_at IS NULL)
             RETURNING id),
         p AS (
             INSERT INTO postback.payloads (delivery_id, content_type, headers, auth, body, file_path)
             SELECT id, $8, $9, $10, $11, $12 FROM d
             RETURNING delivery_id)
         SELECT count(*) FROM p, LATERAL (SELECT CASE WHEN $13 THEN pg_notify('postback_due', '') END) AS n",
    ))
    .bind(d.id)
    .bind(&d.job_id)
    .bind(d.kind)
    .bind(d.method)
    .bind(&d.url)
    .bind(&d.host)
    .bind(d.expires_at)
    .bind(&d.content_type)
    .bind(&d.headers)
    .bind(&d.auth)
    .bind(&d.body)
    .bind(&d.file_path)
    .bind(notify)
    .bind(lease.map_or(0.0, |(_, d)| d.as_secs_f64()))
    .bind(lease.map(|(token, _)| token))
    .bind(&d.customer_id)
    .fetch_one(conn)
    .await?;
    if stored == 0 {
        return Err(unknown_customer());
    }
    Ok(())
}

/// Header values are secrets: every read masks them.
pub fn mask_headers(headers: &Value) -> BTreeMap<String, String> {
    headers
        .as_object()
        .map(|m| m.keys().map(|k| (k.clone(), "***".to_owned())).collect())
        .unwrap_or_default()
}

/// A `deliveries` row joined with its payload, as [`find`] reads it.
#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    job_id: Option<String>,
    customer_id: Option<String>,
    kind: DeliveryKind,
    url: String,
    method: Method,
    state: DeliveryState,
    attempts: i32,
    queued_at: OffsetDateTime,
    next_attempt_at: Option<OffsetDateTime>,
    completed_at: Option<OffsetDateTime>,
    expires_at: OffsetDateTime,
    content_type: String,
    headers: Value,
}

/// The delivery `id` with every attempt, and when it expires.
pub async fn find(
    conn: &mut PgConnection,
    schema: &Schema,
    id: Uuid,
) -> Result<Option<(DeliveryView, OffsetDateTime)>> {
    // Shown as the lists show it (a lease that ran out is due again).
    let sql = format!(
        "SELECT d.id, d.job_id, d.customer_id, d.kind, d.url, d.method, {state} AS state, d.attempts,
                d.queued_at, {next} AS next_attempt_at,
                d.completed_at, d.expires_at, p.content_type, p.headers
         FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id
         WHERE d.id = $1",
        state = super::find::SHOWN_STATE,
        next = super::find::SHOWN_NEXT_ATTEMPT,
    );
    let row: Option<DeliveryRow> = sqlx::query_as(&schema.sql(&sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let attempts = attempts(&mut *conn, schema, id).await?;
    let view = DeliveryView {
        delivery_id: row.id,
        customer_id: row.customer_id,
        job_id: row.job_id,
        kind: row.kind,
        url: row.url,
        method: row.method,
        content_type: row.content_type,
        headers: mask_headers(&row.headers),
        status: row.state,
        attempt_count: row.attempts,
        queued_at: row.queued_at,
        next_attempt_time: row.next_attempt_at,
        completed_at: row.completed_at,
        attempts,
    };
    Ok(Some((view, row.expires_at)))
}

/// Every attempt of delivery `id`, oldest first.
pub async fn attempts<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: Uuid,
) -> Result<Vec<AttemptView>> {
    Ok(sqlx::query_as(&schema.sql(
        "SELECT attempt, started_at, duration_ms, status_code, error, response_snippet
         FROM postback.attempts WHERE delivery_id = $1 ORDER BY attempt",
    ))
    .bind(id)
    .fetch_all(db)
    .await?)
}

/// Outcome of a replay request for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Queued for a fresh schedule.
    Queued,
    /// An attempt is running right now; nothing changed.
    InFlight,
    /// No such (unexpired) delivery.
    Missing,
}

/// Puts delivery `id` back in the queue for a fresh cycle of the schedule,
/// due at `due`; keeps its id (receivers dedupe on it) and its history.
pub async fn replay<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: Uuid,
    due: OffsetDateTime,
) -> Result<Replayed> {
    let (state, updated): (Option<DeliveryState>, i64) = sqlx::query_as(&schema.sql(
        "WITH target AS (
             SELECT id, state, next_attempt_at FROM postback.deliveries
             WHERE id = $1 AND expires_at > now() FOR UPDATE),
         upd AS (
             UPDATE postback.deliveries d
             SET state = 'pending', next_attempt_at = $2, lease = NULL,
                 cycle_attempts = 0, cycle_started_at = NULL,
                 queued_at = now(), completed_at = NULL
             FROM target WHERE d.id = target.id
               -- In flight while its lease runs; one that ran out (the
               -- worker died) is nobody's and is replayed.
               AND NOT (target.state = 'delivering' AND target.next_attempt_at > now())
             RETURNING d.id)
         SELECT (SELECT state FROM target) AS state, (SELECT count(*) FROM upd) AS updated",
    ))
    .bind(id)
    .bind(due)
    .fetch_one(db)
    .await?;
    Ok(match (state, updated) {
        (None, _) => Replayed::Missing,
        (Some(_), 0) => Replayed::InFlight,
        _ => Replayed::Queued,
    })
}
