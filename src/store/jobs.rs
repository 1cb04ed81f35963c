//! The `jobs` table: registration, the result transition, polling reads.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Row};
use time::OffsetDateTime;

use super::Schema;
use crate::error::Result;
use crate::model::CallbackStatus;

/// A stored job.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Id.
    pub id: String,
    /// The creation request as accepted.
    pub request: Value,
    /// Metadata.
    pub metadata: Option<Value>,
    /// `[{"deliveryId","spec"}]`.
    pub callbacks: Value,
    /// in_progress, completed, failed.
    pub status: String,
    /// The posted result (JobResult JSON).
    pub result: Option<Value>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

const JOB_COLUMNS: &str =
    "id, request, metadata, callbacks, status, result, created_at, expires_at";

fn job_from_row(row: &sqlx::postgres::PgRow) -> Result<JobRow> {
    Ok(JobRow {
        id: row.try_get("id")?,
        request: row.try_get("request")?,
        metadata: row.try_get("metadata")?,
        callbacks: row.try_get("callbacks")?,
        status: row.try_get("status")?,
        result: row.try_get("result")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Inserts a job unless one with the same id exists; returns the stored job
/// and whether this call created it.
pub async fn insert(
    conn: &mut PgConnection,
    schema: &Schema,
    job: &JobRow,
) -> Result<(JobRow, bool)> {
    let inserted = sqlx::query(&schema.sql(
        "INSERT INTO postback.jobs (id, request, metadata, callbacks, status, created_at, expires_at)
         VALUES ($1, $2, $3, $4, 'in_progress', $5, $6)
         ON CONFLICT (id) DO NOTHING
         RETURNING id, request, metadata, callbacks, status, result, created_at, expires_at",
    ))
    .bind(&job.id)
    .bind(&job.request)
    .bind(&job.metadata)
    .bind(&job.callbacks)
    .bind(job.created_at)
    .bind(job.expires_at)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok((job_from_row(&row)?, true));
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
        schema.sql("SELECT id, request, metadata, callbacks, status, result, created_at, expires_at FROM postback.jobs WHERE id = $1 FOR UPDATE")
    } else {
        schema.sql("SELECT id, request, metadata, callbacks, status, result, created_at, expires_at FROM postback.jobs WHERE id = $1")
    };
    debug_assert!(sql.contains(JOB_COLUMNS));
    let row = sqlx::query(&sql).bind(id).fetch_optional(db).await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Marks the job completed or failed with its result.
pub async fn set_result(
    conn: &mut PgConnection,
    schema: &Schema,
    id: &str,
    status: &str,
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
    let rows = sqlx::query(&schema.sql(
        "SELECT id, url, method, kind, state, attempts, last_attempt_at, last_status_code,
                CASE WHEN state = 'pending' THEN next_attempt_at END AS next_attempt_at
         FROM postback.deliveries WHERE job_id = $1 ORDER BY id",
    ))
    .bind(id)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CallbackStatus {
                delivery_id: r.try_get("id")?,
                url: r.try_get("url")?,
                method: r.try_get("method")?,
                kind: r.try_get("kind")?,
                status: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                last_attempt_time: r.try_get("last_attempt_at")?,
                last_status_code: r.try_get("last_status_code")?,
                next_attempt_time: r.try_get("next_attempt_at")?,
            })
        })
        .collect()
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
