//! The `deliveries`, `payloads` and `attempts` tables outside the hot claim
//! path: enqueueing, reads for the API and CLI, replay.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Schema, LIVE_SQL, SHOWN_NEXT_SQL, SHOWN_STATE_SQL};
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
    /// `scheme://host:port`, the key of its circuit breaker.
    pub origin: String,
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
    /// The earliest it may be forgotten: its job's expiry (creation + TTL
    /// for a generic one). It is never forgotten before it is final, and
    /// completion moves this to its final time + TTL when that is later.
    pub expires_at: OffsetDateTime,
}

impl NewDelivery {
    /// A generic JSON delivery of `body` to `url` (already validated), as
    /// an embedder queues one in its own transaction.
    pub fn generic_json(url: &str, body: Vec<u8>, expires_at: OffsetDateTime) -> Self {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        NewDelivery {
            id: Uuid::now_v7(),
            job_id: None,
            customer_id: None,
            kind: DeliveryKind::Generic,
            method: Method::Post,
            url: url.to_owned(),
            host,
            origin: crate::validate::origin(url),
            content_type: "application/json".to_owned(),
            headers: Value::Object(Default::default()),
            auth: None,
            body: Some(body),
            file_path: None,
            expires_at,
        }
    }
}

/// Queues `batch` (one statement however many deliveries).
pub async fn insert(conn: &mut PgConnection, schema: &Schema, batch: &[NewDelivery]) -> Result<()> {
    let unleased = vec![None; batch.len()];
    insert_leased(conn, schema, batch, &unleased).await?;
    Ok(())
}

/// Queues `batch` in ONE statement (deliveries and payloads together, so
/// the batch is atomic even outside a transaction). `leases[i]`, when
/// set, stores delivery `i` already claimed by that token for that long,
/// unless its origin's breaker is open: the ids returned are those stored
/// held instead (their leases were not taken).
///
/// If any delivery names a customer that does not exist (or is being
/// erased), none of the batch is stored and it is refused with
/// `unknown_customer` (the caller learns which one by storing them one by
/// one).
pub async fn insert_leased(
    conn: &mut PgConnection,
    schema: &Schema,
    batch: &[NewDelivery],
    leases: &[Option<(Uuid, std::time::Duration)>],
) -> Result<Vec<Uuid>> {
    // A batch of one (every batch at light load) takes the single-row
    // statement: no arrays to unnest, no joins to build, and it is on the
    // path from "accepted" to "received".
    if let ([row], [lease]) = (batch, leases) {
        let held = insert_one(conn, schema, row, false, *lease).await?;
        return Ok(if held { vec![row.id] } else { Vec::new() });
    }
    let bodies: Vec<Option<&[u8]>> = batch.iter().map(|d| d.body.as_deref()).collect();
    // Independent deliveries (the API's batches): each body inline with its
    // payload. Hashing and sharing is for one result's callbacks, which
    // repeat the same bytes ([`insert_with_bodies`]); across independent
    // requests it would cost a `bodies` row and index entries per delivery
    // and find nothing to share.
    insert_rows(conn, schema, batch, &bodies, leases, Sharing::Inline).await
}

/// Queues `batch` with `bodies[i]` as the body of delivery `i` (its own
/// `body` is not read): a result's callbacks pass the same rendered bytes
/// for every callback of one shape, and each distinct body is hashed,
/// bound and stored once (`bodies` table), however many deliveries send it.
pub async fn insert_with_bodies(
    conn: &mut PgConnection,
    schema: &Schema,
    batch: &[NewDelivery],
    bodies: &[Option<&[u8]>],
) -> Result<()> {
    let unleased = vec![None; batch.len()];
    insert_rows(conn, schema, batch, bodies, &unleased, Sharing::Shared).await?;
    Ok(())
}

/// Where a batch's bodies are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// In `payloads.body`, one copy per delivery.
    Inline,
    /// A body that more than one delivery of the batch sends, once in
    /// `bodies` (by SHA-256); a body only one sends, inline.
    Shared,
}

/// Distinct shared bodies (their hashes and bytes) and, per row, its hash
/// when shared or its bytes when inline.
struct Distinct<'b> {
    hashes: Vec<Vec<u8>>,
    distinct: Vec<&'b [u8]>,
    per_row_hash: Vec<Option<Vec<u8>>>,
    per_row_inline: Vec<Option<&'b [u8]>>,
}

/// The bodies of a batch, split by [`Sharing`]. Rows passing the very same
/// bytes (one rendering shared by a result's callbacks) are hashed once.
fn distinct_bodies<'b>(bodies: &[Option<&'b [u8]>], sharing: Sharing) -> Distinct<'b> {
    use sha2::{Digest, Sha256};
    let shared_slices: std::collections::HashSet<(usize, usize)> = match sharing {
        Sharing::Inline => Default::default(),
        Sharing::Shared => {
            let mut uses: std::collections::HashMap<(usize, usize), usize> = Default::default();
            for body in bodies.iter().flatten() {
                *uses
                    .entry((body.as_ptr() as usize, body.len()))
                    .or_default() += 1;
            }
            uses.into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(k, _)| k)
                .collect()
        }
    };
    let mut by_slice: std::collections::HashMap<(usize, usize), Vec<u8>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut out = Distinct {
        hashes: Vec::new(),
        distinct: Vec::new(),
        per_row_hash: Vec::with_capacity(bodies.len()),
        per_row_inline: Vec::with_capacity(bodies.len()),
    };
    for body in bodies {
        let Some(body) = body else {
            out.per_row_hash.push(None);
            out.per_row_inline.push(None);
            continue;
        };
        if !shared_slices.contains(&(body.as_ptr() as usize, body.len())) {
            out.per_row_hash.push(None);
            out.per_row_inline.push(Some(*body));
            continue;
        }
        let hash = by_slice
            .entry((body.as_ptr() as usize, body.len()))
            .or_insert_with(|| Sha256::digest(body).to_vec())
            .clone();
        if seen.insert(hash.clone()) {
            out.hashes.push(hash.clone());
            out.distinct.push(*body);
        }
        out.per_row_hash.push(Some(hash));
        out.per_row_inline.push(None);
    }
    out
}

async fn insert_rows(
    conn: &mut PgConnection,
    schema: &Schema,
    batch: &[NewDelivery],
    bodies: &[Option<&[u8]>],
    leases: &[Option<(Uuid, std::time::Duration)>],
    sharing: Sharing,
) -> Result<Vec<Uuid>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let customers: Vec<Option<&str>> = batch.iter().map(|d| d.customer_id.as_deref()).collect();
    let origins: Vec<&str> = batch.iter().map(|d| d.origin.as_str()).collect();
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
    let Distinct {
        hashes,
        distinct,
        per_row_hash: body_hashes,
        per_row_inline: inline_bodies,
    } = distinct_bodies(bodies, sharing);
    let files: Vec<Option<&str>> = batch.iter().map(|d| d.file_path.as_deref()).collect();
    // Every data-modifying CTE runs, referenced or not. A body already
    // stored gets its `created_at` refreshed: the purge of unreferenced
    // bodies then skips it (it rechecks that column on the locked row).
    //
    // A row of an unknown or departing customer stores none of the batch
    // (`compose_insert`); the count tells the caller. The customers named are locked FOR KEY
    // SHARE, once per batch (there is no foreign key: its trigger took the
    // same lock once per row), so an erasure cannot delete a customer's row
    // while a delivery of it is being written (`customers::delete_row`). A delivery to an origin whose
    // breaker is open is born held (never leased): it waits for the probe,
    // at most until its horizon, and its cycle starts now (the breaker
    // stands in for its first attempt: it gives up one horizon from now).
    let sql = insert_sql(!hashes.is_empty(), customers.iter().any(Option::is_some));
    let (stored, held): (i64, Vec<Uuid>) = sqlx::query_as(&schema.sql(sql))
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
        .bind(&body_hashes)
        .bind(&files)
        .bind(&hashes)
        .bind(&distinct)
        .bind(&customers)
        .bind(&origins)
        .bind(&inline_bodies)
        .fetch_one(&mut *conn)
        .await?;
    if stored as usize != batch.len() {
        return Err(unknown_customer());
    }
    Ok(held)
}

/// The batch insert in the variant a batch needs. PostgreSQL opens and
/// locks every table a statement names, and every index of those, at each
/// execution, whether a row reaches them or not: an API batch shares no
/// bodies (no `bodies` upsert) and most name no customer (no `customers`
/// lock), so those parts are left out of the statement instead of run
/// empty. Parameters are the same in every variant ($15/$16 bodies, $17
/// customers unused where left out).
fn insert_sql(shared_bodies: bool, customers: bool) -> &'static str {
    static VARIANTS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
        [(false, false), (false, true), (true, false), (true, true)]
            .map(|(shared, customers)| compose_insert(shared, customers))
    });
    &VARIANTS[usize::from(shared_bodies) * 2 + usize::from(customers)]
}

fn compose_insert(shared_bodies: bool, customers: bool) -> String {
    let bodies_cte = if shared_bodies {
        "b AS (
             INSERT INTO postback.bodies (hash, body)
             SELECT * FROM unnest($15::bytea[], $16::bytea[])
             ON CONFLICT (hash) DO UPDATE SET created_at = now()
             RETURNING 1),
         "
    } else {
        ""
    };
    // All or nothing: one row naming a customer that does not exist (or is
    // being erased) stores none of the batch, so the caller's retry of
    // each row alone neither meets the others already stored (their
    // primary keys) nor answers an error for a row that was.
    let (customers_cte, customers_filter) = if customers {
        (
            "c AS (
             SELECT id FROM postback.customers
             WHERE id = ANY($17::text[]) AND deleted_at IS NULL
             FOR KEY SHARE),
         missing AS (
             SELECT 1 FROM unnest($17::text[]) AS m(id)
             WHERE m.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM c WHERE c.id = m.id)),
         ",
            "WHERE NOT EXISTS (SELECT 1 FROM missing)",
        )
    } else {
        ("", "")
    };
    format!(
        "WITH {bodies_cte}{customers_cte}d AS (
             INSERT INTO postback.deliveries (id, job_id, customer_id, kind, method, url, host, origin,
                                              next_attempt_at, held_due, cycle_started_at, expires_at, state, lease)
             SELECT t.id, t.job_id, t.customer_id, t.kind, t.method, t.url, t.host, t.origin,
                    CASE WHEN o.origin IS NULL THEN now() + make_interval(secs => t.lease_secs)
                         ELSE now() + make_interval(secs => coalesce(o.hold_secs, 0)) END,
                    CASE WHEN o.origin IS NOT NULL THEN now() END,
                    CASE WHEN o.origin IS NOT NULL THEN now() END,
                    t.expires_at,
                    CASE WHEN t.lease IS NULL OR o.origin IS NOT NULL THEN 'pending' ELSE 'delivering' END,
                    CASE WHEN o.origin IS NULL THEN t.lease END
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::uuid[], $9::float8[], $17::text[], $18::text[])
                  AS t(id, job_id, kind, method, url, host, expires_at, lease, lease_secs, customer_id, origin)
             LEFT JOIN postback.destinations o ON o.origin = t.origin AND o.state = 'open'
             {customers_filter}
             RETURNING id, host, customer_id, held_due IS NOT NULL AS held),
         p AS (
             INSERT INTO postback.payloads (delivery_id, content_type, headers, auth, body_hash, file_path,
                                            body, host, customer_id)
             SELECT u.*, d.host, d.customer_id
             FROM unnest($1::uuid[], $10::text[], $11::jsonb[], $12::jsonb[], $13::bytea[], $14::text[],
                         $19::bytea[])
                  AS u(id, content_type, headers, auth, body_hash, file_path, body)
             JOIN d ON d.id = u.id
             RETURNING delivery_id)
         SELECT (SELECT count(*) FROM p),
                coalesce((SELECT array_agg(id) FROM d WHERE held), '{{}}'::uuid[])"
    )
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
) -> Result<bool> {
    let (stored, held): (i64, bool) = sqlx::query_as(&schema.sql(
        "WITH o AS (
             SELECT hold_secs FROM postback.destinations WHERE origin = $17 AND state = 'open'),
         c AS (
             SELECT id FROM postback.customers WHERE id = $16 AND deleted_at IS NULL
             FOR KEY SHARE),
         d AS (
             INSERT INTO postback.deliveries (id, job_id, customer_id, kind, method, url, host, origin,
                                              next_attempt_at, held_due, cycle_started_at, expires_at, state, lease)
             SELECT $1, $2, $16, $3, $4, $5, $6, $17,
                    CASE WHEN NOT EXISTS (SELECT 1 FROM o) THEN now() + make_interval(secs => $14)
                         ELSE now() + make_interval(secs => coalesce((SELECT hold_secs FROM o), 0)) END,
                    CASE WHEN EXISTS (SELECT 1 FROM o) THEN now() END,
                    CASE WHEN EXISTS (SELECT 1 FROM o) THEN now() END,
                    $7,
                    CASE WHEN $15::uuid IS NULL OR EXISTS (SELECT 1 FROM o) THEN 'pending' ELSE 'delivering' END,
                    CASE WHEN NOT EXISTS (SELECT 1 FROM o) THEN $15 END
             WHERE $16::text IS NULL OR EXISTS (SELECT 1 FROM c)
             RETURNING id, held_due IS NOT NULL AS held),
         p AS (
             INSERT INTO postback.payloads (delivery_id, content_type, headers, auth, body, file_path,
                                            host, customer_id)
             SELECT id, $8, $9, $10, $11, $12, $6, $16 FROM d
             RETURNING delivery_id)
         SELECT count(*), coalesce(bool_or(d.held), false)
         FROM p JOIN d ON d.id = p.delivery_id,
              LATERAL (SELECT CASE WHEN $13 THEN pg_notify('postback_due', '') END) AS n",
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
    .bind(&d.origin)
    .fetch_one(conn)
    .await?;
    if stored == 0 {
        return Err(unknown_customer());
    }
    Ok(held)
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
    content_type: String,
    headers: Value,
}

/// The delivery `id` with every attempt, unless retention let it go.
pub async fn find(
    conn: &mut PgConnection,
    schema: &Schema,
    id: Uuid,
) -> Result<Option<DeliveryView>> {
    let sql = format!(
        "SELECT d.id, d.job_id, d.customer_id, d.kind, d.url, d.method, {SHOWN_STATE_SQL} AS state, d.attempts, d.queued_at,
                {SHOWN_NEXT_SQL} AS next_attempt_at,
                d.completed_at, p.content_type, p.headers
         FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id
         WHERE d.id = $1 AND {LIVE_SQL}"
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
    Ok(Some(view))
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
/// due at `due` (a time read from the database's clock), or at the
/// database's `now()` when `None`; keeps its id (receivers dedupe on it)
/// and its history.
pub async fn replay<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: Uuid,
    due: Option<OffsetDateTime>,
) -> Result<Replayed> {
    let sql = format!(
        "WITH target AS (
             SELECT d.id, d.state, d.next_attempt_at FROM postback.deliveries d
             WHERE d.id = $1 AND {LIVE_SQL} FOR UPDATE),
         upd AS (
             UPDATE postback.deliveries d
             SET state = 'pending', next_attempt_at = coalesce($2, now()), lease = NULL,
                 cycle_attempts = 0, cycle_started_at = NULL, held_due = NULL,
                 queued_at = now(), completed_at = NULL
             FROM target WHERE d.id = target.id
               -- An attempt in flight is left alone; a lease that ran out
               -- lost its worker, and that delivery is due like a pending one.
               AND (target.state <> 'delivering' OR target.next_attempt_at <= now())
             RETURNING d.id)
         SELECT (SELECT state FROM target) AS state, (SELECT count(*) FROM upd) AS updated"
    );
    let (state, updated): (Option<DeliveryState>, i64) = sqlx::query_as(&schema.sql(&sql))
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
