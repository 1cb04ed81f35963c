//! Group commit for the API's generic deliveries.
//!
//! Under load, one transaction per `POST /v1/deliveries` spends most of
//! PostgreSQL's time on per-statement and per-commit work (measured: about
//! 190 µs of server CPU per request, and most backends waiting on the WAL
//! write lock). Requests therefore go through a small pool of writers:
//! each writer takes every request waiting at that moment (never waiting
//! for more, so a lone request is written at once) and stores them in one
//! statement. Each request is answered only after its batch committed, so
//! "202 Accepted" still means durable.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::deliveries::{insert_leased, NewDelivery};
use crate::store::Schema;

/// Most deliveries one writer stores in one statement.
pub const MAX_BATCH: usize = 512;
/// Requests waiting for a writer before submitters wait (back-pressure).
const QUEUE: usize = 8192;

struct Item {
    row: NewDelivery,
    lease: Option<(Uuid, Duration)>,
    /// The row comes back once committed: it is moved through the writer,
    /// never copied (a body can be megabytes); with it, whether it was
    /// stored held by an open breaker instead of leased.
    done: oneshot::Sender<Result<(NewDelivery, bool)>>,
}

/// Submits deliveries to the group-commit writers (cheap to clone).
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Item>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item").field("id", &self.row.id).finish()
    }
}

impl Batcher {
    /// Starts `writers` writer tasks on `pool`. They stop when every
    /// `Batcher` clone is dropped, after writing what was submitted.
    pub fn start(pool: PgPool, schema: Schema, writers: usize) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(pool.clone(), schema.clone(), rx.clone()));
        }
        Batcher { tx }
    }

    /// Stores `row` (leased when `lease` is set); returns it once committed,
    /// with whether it was stored held by an open breaker instead.
    pub async fn submit(
        &self,
        row: NewDelivery,
        lease: Option<(Uuid, Duration)>,
    ) -> Result<(NewDelivery, bool)> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Item { row, lease, done })
            .await
            .map_err(|_| Error::Unavailable(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| Error::Unavailable(sqlx::Error::PoolClosed))?
    }
}

async fn write_batches(pool: PgPool, schema: Schema, rx: Arc<Mutex<mpsc::Receiver<Item>>>) {
    let mut items = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            // One writer gathers at a time; the others write meanwhile.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut items, MAX_BATCH).await == 0 {
                return;
            }
        }
        let mut rows = Vec::with_capacity(items.len());
        let mut leases = Vec::with_capacity(items.len());
        let mut dones = Vec::with_capacity(items.len());
        for Item { row, lease, done } in items.drain(..) {
            rows.push(row);
            leases.push(lease);
            dones.push(done);
        }
        let stored = store(&pool, &schema, &rows, &leases).await;
        match stored {
            Ok(held) => {
                for (row, done) in rows.into_iter().zip(dones) {
                    let was_held = held.contains(&row.id);
                    let _ = done.send(Ok((row, was_held)));
                }
            }
            // The batch failed as a whole: store each on its own, so every
            // request gets its own answer and one bad row fails alone.
            Err(_) => {
                for ((row, lease), done) in rows.into_iter().zip(leases).zip(dones) {
                    let one = store(&pool, &schema, std::slice::from_ref(&row), &[lease]).await;
                    let _ = done.send(one.map(|held| {
                        let was_held = held.contains(&row.id);
                        (row, was_held)
                    }));
                }
            }
        }
    }
}

async fn store(
    pool: &PgPool,
    schema: &Schema,
    rows: &[NewDelivery],
    leases: &[Option<(Uuid, Duration)>],
) -> Result<Vec<Uuid>> {
    let mut conn = pool.acquire().await?;
    insert_leased(&mut conn, schema, rows, leases).await
}
