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
use crate::store::held::Held;
use crate::store::Schema;

/// Most deliveries one writer stores in one statement.
pub const MAX_BATCH: usize = 512;
/// Most body bytes one statement carries: the statement is built in one
/// buffer (and PostgreSQL parses it whole), so forty 6 MB deliveries
/// arriving together must not become one 240 MB message. A larger row is
/// stored alone.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
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
    // The writer's own connection, kept between batches (`Held`).
    let mut conn = Held::new(pool);
    loop {
        {
            // One writer gathers at a time; the others write meanwhile.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut items, MAX_BATCH).await == 0 {
                return;
            }
        }
        while !items.is_empty() {
            let take = chunk_len(&items);
            write(&mut conn, &schema, items.drain(..take)).await;
        }
    }
}

/// How many of `items` (from the front) one statement stores: as many as
/// fit in [`MAX_BATCH_BYTES`] of bodies, and at least one.
fn chunk_len(items: &[Item]) -> usize {
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        bytes += item.row.body.as_ref().map_or(0, Vec::len);
        if bytes > MAX_BATCH_BYTES {
            return i.max(1);
        }
    }
    items.len()
}

/// Stores one chunk in one statement and answers each request.
async fn write(conn: &mut Held, schema: &Schema, chunk: impl Iterator<Item = Item>) {
    let (mut rows, mut leases, mut dones) = (Vec::new(), Vec::new(), Vec::new());
    for Item { row, lease, done } in chunk {
        rows.push(row);
        leases.push(lease);
        dones.push(done);
    }
    match store(conn, schema, &rows, &leases).await {
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
                let one = store(conn, schema, std::slice::from_ref(&row), &[lease]).await;
                let _ = done.send(one.map(|held| {
                    let was_held = held.contains(&row.id);
                    (row, was_held)
                }));
            }
        }
    }
}

/// Stores `rows` in one statement on the writer's connection; a failed
/// statement closes the connection (`Held::run`).
async fn store(
    conn: &mut Held,
    schema: &Schema,
    rows: &[NewDelivery],
    leases: &[Option<(Uuid, Duration)>],
) -> Result<Vec<Uuid>> {
    conn.run(async |c| insert_leased(c, schema, rows, leases).await)
        .await
}
