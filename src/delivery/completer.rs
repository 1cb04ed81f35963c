//! Writes attempt outcomes back in batches: whatever has arrived since the
//! last flush goes out in one statement. While the database is away it
//! keeps the batch and retries; it never drops an outcome (if it must give
//! up at shutdown, the leases expire and the deliveries are attempted
//! again: at least once, never lost).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::store::queue::{self, Completion};
use crate::store::Schema;

/// Most outcomes one flush writes.
pub const FLUSH_BATCH: usize = 1024;

/// Runs until every sender is gone and everything received is written.
pub async fn run(pool: PgPool, schema: Schema, mut rx: UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(FLUSH_BATCH);
    while rx.recv_many(&mut batch, FLUSH_BATCH).await > 0 {
        flush(&pool, &schema, &batch).await;
        batch.clear();
    }
}

async fn flush(pool: &PgPool, schema: &Schema, batch: &[Completion]) {
    let mut backoff = Duration::from_millis(50);
    for _ in 0..40 {
        match queue::complete(pool, schema, batch).await {
            Ok(written) => {
                if (written as usize) < batch.len() {
                    tracing::warn!(
                        lost_lease = batch.len() - written as usize,
                        "some outcomes arrived after their lease expired; those deliveries were re-claimed"
                    );
                }
                return;
            }
            Err(err) => {
                tracing::warn!(%err, ?backoff, n = batch.len(), "could not write outcomes; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(n = batch.len(), "gave up writing outcomes; these deliveries will be attempted again when their lease expires");
}
