//! A pool connection that a hot loop keeps between its statements.
//!
//! sqlx tests every connection it takes back into the pool: the release
//! spawns a task that sends a `Sync` and waits for PostgreSQL's answer (a
//! round trip, a wake-up of the server process and of a runtime thread).
//! The group-commit writers and the completer write one statement per
//! batch, all day long, so that test cost a round trip per statement:
//! [`Held`] keeps the connection across statements instead and gives it
//! back only after an error, when its state is unknown (the pool's test on
//! release then decides whether it lives on).
//!
//! It owns no SQL and no policy: callers run their own statements on
//! [`Held::get`] and say [`Held::discard`] when one failed.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::{Error, Result};

/// One connection of `pool`, taken on first use and kept until discarded.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl Held {
    /// Nothing is taken from `pool` until the first [`Held::get`].
    pub fn new(pool: PgPool) -> Self {
        Held { pool, conn: None }
    }

    /// The connection, taken from the pool if none is held. Its buffers are
    /// shrunk back as the pool does on release: a connection kept for the
    /// life of the process must not keep the size of its largest batch.
    pub async fn get(&mut self) -> Result<&mut PgConnection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        let conn = self.conn.insert(conn);
        sqlx::Connection::shrink_buffers(&mut **conn);
        Ok(&mut **conn)
    }

    /// Gives the connection back to the pool after a failed statement: it
    /// may be broken or in the middle of a protocol exchange, and the
    /// pool's test on release decides whether it is reused. The next
    /// [`Held::get`] takes a fresh one.
    pub fn discard(&mut self) {
        self.conn = None;
    }

    /// Passes `result` through, discarding the connection when the
    /// statement failed in the database or on the way to it. An error of
    /// the caller's own (a validation after the statement) leaves it held.
    pub fn settle<T>(&mut self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(Error::Database(_) | Error::Unavailable(_))) {
            self.discard();
        }
        result
    }

    /// Runs `statement` on the held connection and [`Held::settle`]s its
    /// result.
    pub async fn run<T>(
        &mut self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let result = match self.get().await {
            Ok(conn) => statement(conn).await,
            Err(err) => Err(err),
        };
        self.settle(result)
    }
}
