//! The own connection of a hot loop, kept between its statements.
//!
//! sqlx tests every connection it takes back into the pool: the release
//! spawns a task that sends a `Sync` and waits for PostgreSQL's answer (a
//! round trip, a wake-up of the server process and of a runtime thread).
//! The group-commit writers, the completer and the claim loop write one
//! statement per batch, all day long, so that test cost a round trip per
//! statement. [`Held`] takes a connection out of the pool (detached: the
//! pool may open another in its place) and keeps it across statements,
//! closing it after a database error, when its state is unknown; the next
//! statement opens a fresh one. Being out of the pool, the connection
//! counts against the process's connection budget on its own
//! (`runtime::pool_size`).
//!
//! Held connections plan without sequential scans ([`SETUP`]). PostgreSQL
//! caches a generic plan for a prepared statement once it costs no more
//! than the custom ones, and keeps it until the table's statistics change.
//! Made while `deliveries` was young (a few hundred rows), the completion's
//! plan read the whole table for every flush (`auto_explain`), a cost that
//! grows with every row until the next ANALYZE. Every statement of these
//! loops finds its rows by a key or an index (ids from arrays, the due
//! index, origins), so an index plan is right at any table size.
//!
//! It owns no SQL and no policy: callers run their own statements through
//! [`Held::run`].

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::error::{Error, Result};

/// How long closing a discarded connection may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run on each connection a [`Held`] opens (see the module's doc).
pub const SETUP: &str = "SET enable_seqscan = off";

/// A connection of the pool's settings, opened on first use and kept until
/// a statement fails in the database.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    conn: Option<PgConnection>,
}

impl Held {
    /// Nothing is opened until the first statement.
    pub fn new(pool: PgPool) -> Self {
        Held { pool, conn: None }
    }

    /// Runs `statement` on the held connection (opening one if none is
    /// held). After a database error the connection is closed; an error of
    /// the caller's own after a good statement (a validation) keeps it.
    pub async fn run<T>(
        &mut self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let result = match self.get().await {
            Ok(conn) => statement(conn).await,
            Err(err) => Err(err),
        };
        if matches!(result, Err(Error::Database(_) | Error::Unavailable(_))) {
            self.discard();
        }
        result
    }

    /// The held connection, or a new one. Its buffers are shrunk as the
    /// pool does on release: a connection kept for the life of the process
    /// must not keep the size of its largest batch (a comparison when they
    /// are small).
    async fn get(&mut self) -> Result<&mut PgConnection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let conn = self.conn.insert(conn);
        conn.shrink_buffers();
        Ok(conn)
    }

    async fn open(&self) -> Result<PgConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query(SETUP).execute(&mut conn).await?;
        Ok(conn)
    }

    /// Closes the connection in the background (it may be broken or in the
    /// middle of an exchange); the next statement opens a fresh one.
    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
            });
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A loop that ends says goodbye to the server instead of vanishing
        // from its socket (PostgreSQL would log an unexpected EOF). Without
        // a runtime (process exit) the socket just closes.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.discard();
        }
    }
}
