//! Operator queries: purging what has expired (in small batches, so a
//! purge never holds long locks on the hot queue). Listing and replaying by
//! filter are `store::find`'s.

use sqlx::PgExecutor;

use super::Schema;
use crate::error::Result;

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

/// Deletes up to `batch` expired jobs and `batch` expired generic
/// deliveries; call until it returns zeros.
pub async fn purge_expired_batch<'e, E: PgExecutor<'e> + Copy>(
    db: E,
    schema: &Schema,
    batch: i64,
) -> Result<Purged> {
    // A purged job leaves a tombstone, so polling it still answers
    // `job_expired`; tombstones themselves go after TOMBSTONE_DAYS.
    let jobs = sqlx::query(&schema.sql(
        "WITH gone AS (
             DELETE FROM postback.jobs WHERE id IN (
                 SELECT id FROM postback.jobs WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, expires_at)
         INSERT INTO postback.job_tombstones (id, expired_at)
         SELECT id, expires_at FROM gone
         ON CONFLICT (id) DO UPDATE SET expired_at = EXCLUDED.expired_at, purged_at = now()",
    ))
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected();
    let deliveries = sqlx::query(&schema.sql(
        "DELETE FROM postback.deliveries WHERE id IN (
             SELECT id FROM postback.deliveries WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)",
    ))
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected();
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
