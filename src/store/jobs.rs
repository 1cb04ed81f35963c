//! The `jobs` table: registration, the result transition, polling reads.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use super::{Schema, SHOWN_NEXT_SQL, SHOWN_STATE_SQL};
use crate::error::Result;
use crate::model::CallbackStatus;
use crate::state::JobState;

/// A stored job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    /// Id.
    pub id: String,
    /// The creation request as accepted.
    pub request: Value,
    /// Metadata.
    pub metadata: Option<Value>,
    /// The customer it is for.
    pub customer_id: Option<String>,
    /// `[{"deliveryId","spec"}]`.
    pub callbacks: Value,
    /// Whether its result arrived, and how.
    pub status: JobState,
    /// The posted result (JobResult JSON).
    pub result: Option<Value>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Expiry (`expirationTime`).
    pub expires_at: OffsetDateTime,
    /// Whether `expires_at` has passed, by the database's clock (the one the
    /// purge compares it with).
    pub expired: bool,
}

const JOB_COLUMNS: &str =
    "id, request, metadata, customer_id, callbacks, status, result, created_at, expires_at, expires_at <= now() AS expired";

/// A job to register.
#[derive(Debug, Clone)]
pub struct JobInsert {
    /// Id.
    pub id: String,
    /// The creation request as accepted.
    pub request: Value,
    /// Metadata.
    pub metadata: Option<Value>,
    /// The customer it is for.
    pub customer_id: Option<String>,
    /// `[{"deliveryId","spec"}]`.
    pub callbacks: Value,
}

/// Longest TTL written into SQL: a century, far past any sane setting,
/// short of `timestamptz`'s range (an absurd TTL saturates, never fails).
pub const MAX_TTL_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// Inserts a job unless one with the same id exists; returns the stored job
/// and whether this call created it. Its creation time and its expiry
/// (creation + `ttl`) are the database's `now()`, the clock the purge uses.
pub async fn insert(
    conn: &mut PgConnection,
    schema: &Schema,
    job: &JobInsert,
    ttl: std::time::Duration,
) -> Result<(JobRow, bool)> {
    let inserted: Option<JobRow> = sqlx::query_as(&schema.sql(
        "INSERT INTO postback.jobs (id, request, metadata, customer_id, callbacks, status, created_at, expires_at)
         VALUES ($1, $2, $3, $6, $4, 'in_progress', now(), now() + make_interval(secs => $5))
         ON CONFLICT (id) DO NOTHING
         RETURNING id, request, metadata, customer_id, callbacks, status, result, created_at, expires_at, expires_at <= now() AS expired",
    ))
    .bind(&job.id)
    .bind(&job.request)
    .bind(&job.metadata)
    .bind(&job.callbacks)
    .bind(ttl.as_secs_f64().min(MAX_TTL_SECS))
    .bind(&job.customer_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing = find(&mut *conn, schema, &job.id, false).await?;
    match existing {
        Some(existing) => Ok((existing, false)),
        // Deleted between our insert and read (purge): treat as a fresh insert attempt.
        None => Err(sqlx::Error::RowNotFound.into()),
    }
}

/// The job `id`, optionally locked for the result transition.
pub async fn find<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
    for_update: bool,
) -> Result<Option<JobRow>> {
    let sql = if for_update {
        schema.sql("SELECT id, request, metadata, customer_id, callbacks, status, result, created_at, expires_at, expires_at <= now() AS expired FROM postback.jobs WHERE id = $1 FOR UPDATE")
    } else {
        schema.sql("SELECT id, request, metadata, customer_id, callbacks, status, result, created_at, expires_at, expires_at <= now() AS expired FROM postback.jobs WHERE id = $1")
    };
    debug_assert!(sql.contains(JOB_COLUMNS));
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(db).await?)
}

/// Marks the job completed or failed with its result.
pub async fn set_result(
    conn: &mut PgConnection,
    schema: &Schema,
    id: &str,
    status: JobState,
    result: &Value,
) -> Result<()> {
    sqlx::query(&schema.sql(
        "UPDATE postback.jobs SET status = $2, result = $3, completed_at = now() WHERE id = $1",
    ))
    .bind(id)
    .bind(status)
    .bind(result)
    .execute(conn)
    .await?;
    Ok(())
}

/// Delivery state of every callback of job `id`.
pub async fn callback_statuses<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
) -> Result<Vec<CallbackStatus>> {
    let sql = format!(
        "SELECT d.id AS delivery_id, d.url, d.method, d.kind, {SHOWN_STATE_SQL} AS status, d.attempts,
                d.last_attempt_at AS last_attempt_time, d.last_status_code,
                {SHOWN_NEXT_SQL} AS next_attempt_time
         FROM postback.deliveries d WHERE d.job_id = $1 ORDER BY d.id"
    );
    Ok(sqlx::query_as(&schema.sql(&sql))
        .bind(id)
        .fetch_all(db)
        .await?)
}

/// When job `id` expired, if it was purged (and its tombstone is kept).
pub async fn tombstone<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
) -> Result<Option<OffsetDateTime>> {
    let expired_at = sqlx::query_scalar(
        &schema.sql("SELECT expired_at FROM postback.job_tombstones WHERE id = $1"),
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(expired_at)
}
