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
