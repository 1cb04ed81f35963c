//! Waking workers in other processes without serialising commits.
//!
//! A `NOTIFY` inside a transaction makes PostgreSQL take one database-wide
//! lock at commit and hold it through the WAL flush, so every enqueueing
//! transaction that notifies commits alone (measured: two thirds of the
//! API's backends waiting on that lock under load). The API therefore
//! commits without notifying and calls [`Notifier::notify`] afterwards: at
//! most one `pg_notify` is in flight per process, and every request that
//! arrives meanwhile is covered by the next one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use crate::intake::WAKE_CHANNEL;

/// Coalescing sender of wake-ups to every LISTENing worker.
#[derive(Debug, Clone)]
pub struct Notifier {
    pool: PgPool,
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// A wake-up was asked for and not sent yet.
    pending: AtomicBool,
    /// A sender task is running.
    running: AtomicBool,
}

impl Notifier {
    /// A notifier sending on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Notifier {
            pool,
            state: Arc::default(),
        }
    }

    /// Asks for one wake-up after whatever was just committed.
    pub fn notify(&self) {
        self.state.pending.store(true, Ordering::SeqCst);
        if self.state.running.swap(true, Ordering::SeqCst) {
            return; // the running sender will see `pending`
        }
        let this = self.clone();
        tokio::spawn(async move { this.send_until_quiet().await });
    }

    async fn send_until_quiet(self) {
        loop {
            while self.state.pending.swap(false, Ordering::SeqCst) {
                let sent = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(WAKE_CHANNEL)
                    .execute(&self.pool)
                    .await;
                if let Err(err) = sent {
                    // Workers still poll; a lost wake-up costs latency only.
                    tracing::debug!(%err, "wake-up NOTIFY failed");
                }
            }
            self.state.running.store(false, Ordering::SeqCst);
            // A notify() between our last swap and the store above saw
            // `running` still true and left the work to us: take it back.
            if !self.state.pending.load(Ordering::SeqCst)
                || self.state.running.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    }
}
