//! Operator queries: listing deliveries by filter, choosing what to replay,
//! and purging what has expired (in small batches, so a purge never holds
//! long locks on the hot queue).

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Schema, LIVE_SQL, SHOWN_NEXT_SQL, SHOWN_STATE_SQL};
use crate::error::Result;
use crate::model::Method;
use crate::state::{DeliveryKind, DeliveryState};

/// Which deliveries an operator means.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only deliveries in this state.
    pub status: Option<DeliveryState>,
    /// Queued within this long before now (the database's now, the clock
    /// `queued_at` was written on).
    pub since: Option<std::time::Duration>,
    /// Destination host (exact, case-insensitive).
    pub host: Option<String>,
    /// Owning job.
    pub job: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// One line of `deliveries list`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryLine {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Owning job.
    pub job_id: Option<String>,
    /// What it carries.
    #[serde(rename = "type")]
    pub kind: DeliveryKind,
    /// POST or PUT.
    pub method: Method,
    /// Destination.
    pub url: String,
    /// Its state.
    pub status: DeliveryState,
    /// Attempts so far.
    pub attempts: i32,
    /// Last HTTP status.
    pub last_status_code: Option<i32>,
    /// Last outcome class.
    pub last_error: Option<String>,
    /// When (re)queued.
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    /// Next attempt, when pending.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_time: Option<OffsetDateTime>,
}

/// The filter of [`list`]; `{state}` is [`super::SHOWN_STATE_SQL`] (an
/// orphaned lease is listed, filtered and replayed as `pending`).
const FILTER_SQL: &str = "FROM postback.deliveries d
     WHERE {live}
       AND ($1::text IS NULL OR {state} = $1)
       AND ($2::float8 IS NULL OR d.queued_at >= now() - make_interval(secs => $2))
       AND ($3::text IS NULL OR d.host = rtrim(lower($3), '.'))
       AND ($4::text IS NULL OR d.job_id = $4)";

/// Deliveries matching `filter`, newest first.
pub async fn list<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    filter: &Filter,
) -> Result<Vec<DeliveryLine>> {
    list_ordered(db, schema, filter, "d.queued_at DESC, d.id DESC").await
}

/// Ids of the deliveries matching `filter`, oldest first (replay order).
pub async fn select_ids<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    filter: &Filter,
) -> Result<Vec<Uuid>> {
    let lines = list_ordered(db, schema, filter, "d.queued_at, d.id").await?;
    Ok(lines.into_iter().map(|l| l.delivery_id).collect())
}

/// Deliveries matching `filter` in `order` (a constant ORDER BY list).
async fn list_ordered<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    filter: &Filter,
    order: &'static str,
) -> Result<Vec<DeliveryLine>> {
    let sql = format!(
        "SELECT d.id AS delivery_id, d.job_id, d.kind, d.method, d.url, {SHOWN_STATE_SQL} AS status, d.attempts,
                d.last_status_code, d.last_error, d.queued_at,
                {SHOWN_NEXT_SQL} AS next_attempt_time
         {filter} ORDER BY {order} LIMIT $5",
        filter = FILTER_SQL
            .replace("{state}", SHOWN_STATE_SQL)
            .replace("{live}", LIVE_SQL),
    );
    Ok(sqlx::query_as(&schema.sql(&sql))
        .bind(filter.status)
        .bind(
            filter
                .since
                .map(|d| d.as_secs_f64().min(super::jobs::MAX_TTL_SECS)),
        )
        .bind(&filter.host)
        .bind(&filter.job)
        .bind(filter.limit)
        .fetch_all(db)
        .await?)
}

/// How long the id of a purged job keeps answering `job_expired`.
pub const TOMBSTONE_DAYS: i32 = 90;

/// What one purge pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Jobs deleted (with their deliveries, payloads and attempts).
    pub jobs: u64,
    /// Generic deliveries deleted (with payloads and attempts).
    pub deliveries: u64,
}

/// Deletes up to `batch` expired deliveries and `batch` expired jobs; call
/// until it returns zeros.
///
/// Retention (SPEC §3): only a final delivery goes, once its `expires_at`
/// (the later of its job's expiry and its final time plus the TTL, set by
/// completion) has passed; a delivery still being retried stays however old
/// its job is. A job goes once it expired and none of its deliveries is
/// left ("the job stays while any of its deliveries does"); polling answers
/// `job_expired` for it meanwhile, from its own expiry.
pub async fn purge_expired_batch<'e, E: PgExecutor<'e> + Copy>(
    db: E,
    schema: &Schema,
    batch: i64,
) -> Result<Purged> {
    let deliveries = sqlx::query(&schema.sql(
        "DELETE FROM postback.deliveries WHERE id IN (
             SELECT id FROM postback.deliveries
             WHERE expires_at <= now() AND state IN ('delivered', 'failed')
             LIMIT $1 FOR UPDATE SKIP LOCKED)",
    ))
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected();
    // A purged job leaves a tombstone, so polling it still answers
    // `job_expired`; tombstones themselves go after TOMBSTONE_DAYS. The
    // deliveries of a job are locked with it (FOR UPDATE OF j waits for no
    // one: a result being posted holds the job row, and is refused anyway
    // once the job expired).
    let jobs = sqlx::query(&schema.sql(
        "WITH gone AS (
             DELETE FROM postback.jobs WHERE id IN (
                 SELECT j.id FROM postback.jobs j
                 WHERE j.expires_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM postback.deliveries d WHERE d.job_id = j.id)
                 LIMIT $1 FOR UPDATE OF j SKIP LOCKED)
             RETURNING id, expires_at)
         INSERT INTO postback.job_tombstones (id, expired_at)
         SELECT id, expires_at FROM gone
         ON CONFLICT (id) DO UPDATE SET expired_at = EXCLUDED.expired_at, purged_at = now()",
    ))
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected();
    // Bodies no payload names any more. `created_at` is refreshed by every
    // insert that reuses a body and rechecked on the locked row, so a body
    // being reused right now is never taken from under its new payload.
    sqlx::query(&schema.sql(
        "DELETE FROM postback.bodies b
         WHERE b.created_at < now() - interval '1 hour'
           AND NOT EXISTS (SELECT 1 FROM postback.payloads p WHERE p.body_hash = b.hash)
           AND b.hash IN (
               SELECT o.hash FROM postback.bodies o
               WHERE o.created_at < now() - interval '1 hour'
                 AND NOT EXISTS (SELECT 1 FROM postback.payloads p WHERE p.body_hash = o.hash)
               LIMIT $1)",
    ))
    .bind(batch)
    .execute(db)
    .await?;
    sqlx::query(&schema.sql(
        "DELETE FROM postback.job_tombstones WHERE id IN (
             SELECT id FROM postback.job_tombstones
             WHERE purged_at < now() - make_interval(days => $2) LIMIT $1)",
    ))
    .bind(batch)
    .bind(TOMBSTONE_DAYS)
    .execute(db)
    .await?;
    Ok(Purged { jobs, deliveries })
}

/// Purges everything expired, batch after batch.
pub async fn purge_expired<'e, E: PgExecutor<'e> + Copy>(
    db: E,
    schema: &Schema,
    batch: i64,
) -> Result<Purged> {
    let mut total = Purged::default();
    loop {
        let round = purge_expired_batch(db, schema, batch).await?;
        total.jobs += round.jobs;
        total.deliveries += round.deliveries;
        if round == Purged::default() {
            return Ok(total);
        }
    }
}
