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
//! statement opens a fresh one.
//!
//! Because the connection is its own, it may carry settings the pool's must
//! not: [`Held::with_generic_plans`] (see there).
//!
//! It owns no SQL and no policy: callers run their own statements through
//! [`Held::run`].

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::error::{Error, Result};

/// How long closing a discarded connection may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection of the pool's settings, opened on first use and kept until
/// a statement fails in the database.
#[derive(Debug)]
pub struct Held {
    pool: PgPool,
    conn: Option<PgConnection>,
    generic_plans: bool,
}

impl Held {
    /// Nothing is opened until the first statement.
    pub fn new(pool: PgPool) -> Self {
        Held {
            pool,
            conn: None,
            generic_plans: false,
        }
    }

    /// Like [`Held::new`], for a loop whose statements plan best once.
    ///
    /// PostgreSQL re-plans a prepared statement at every execution when its
    /// custom plan looks cheaper than the generic one, which it always does
    /// for `unnest($1)` of a known array: the completion statement spent
    /// 0.66 ms planning per call against 0.18 ms executing at light load.
    /// A generic plan is as good for the batch insert and the completion
    /// (rows come from arrays and are found by primary key), but far worse
    /// for the claim on a deep queue, so it is set per connection, never on
    /// the pool's.
    ///
    /// These connections also plan without sequential scans. A generic plan
    /// is made once, from the table's size at that moment, and kept until
    /// the table's statistics change: made on a young table of a thousand
    /// rows it read the whole of `deliveries` for every completion (found
    /// with `auto_explain`), which on a table growing by a million rows
    /// before its next ANALYZE would have been a full scan per batch. Every
    /// statement these loops run finds its rows by an index (primary keys,
    /// `origin`), so an index plan is right at any size.
    pub fn with_generic_plans(pool: PgPool) -> Self {
        Held {
            pool,
            conn: None,
            generic_plans: true,
        }
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
        if self.generic_plans {
            sqlx::query("SET plan_cache_mode = force_generic_plan")
                .execute(&mut conn)
                .await?;
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut conn)
                .await?;
        }
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
