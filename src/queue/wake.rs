//! Wake-ups: how a worker learns that due work arrived, without polling.
//!
//! In one process a [`Waker`] (a `Notify`) wakes the claim loop; across
//! processes, the workers LISTEN on [`WAKE_CHANNEL`] ([`listen`]) and
//! writers `pg_notify` it, either inside their transaction
//! ([`notify_workers`], delivered at commit) or after it ([`Notifier`]).
//!
//! Why the API notifies after commit:
//! A `NOTIFY` inside a transaction makes PostgreSQL take one database-wide
//! lock at commit and hold it through the WAL flush, so every enqueueing
//! transaction that notifies commits alone (measured: two thirds of the
//! API's backends waiting on that lock under load). The API therefore
//! commits without notifying and calls [`Notifier::notify`] afterwards: at
//! most one `pg_notify` is in flight per process, and every request that
//! arrives meanwhile is covered by the next one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::throttle::{Throttle, BACKGROUND_EVERY};

/// The channel workers LISTEN on; every enqueue NOTIFYs it on commit.
pub const WAKE_CHANNEL: &str = "postback_due";

/// Wakes a dispatcher's claim loop (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// There may be new due work.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next [`Waker::wake`] (or at once if one is pending).
    pub async fn woken(&self) {
        self.0.notified().await
    }
}

/// Wakes every worker LISTENing on this database when the surrounding
/// transaction commits.
pub async fn notify_workers(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

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
                    if let Some(suppressed) = NOTIFY_FAILED.admit() {
                        tracing::warn!(error = %err, suppressed, "wake-up NOTIFY failed; workers poll meanwhile");
                    }
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

/// Background failures that repeat while the database is away: one
/// warning a minute of each.
static NOTIFY_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);
static LISTEN_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);

/// Keeps a LISTEN connection open (reconnecting with backoff while the
/// database is away) and wakes `waker` on every notification, until `stop`.
pub async fn listen(pool: PgPool, waker: Waker, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(100);
                // A reconnect may have missed notifications: look once.
                waker.wake();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = listener.try_recv() => match msg {
                            // `None`: the listener reconnected internally.
                            Ok(_) => waker.wake(),
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(err) => {
                if let Some(suppressed) = LISTEN_FAILED.admit() {
                    tracing::warn!(error = %err, suppressed, "LISTEN failed; polling meanwhile");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}
