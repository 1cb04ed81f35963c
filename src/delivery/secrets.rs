//! Which secrets sign an attempt: the delivery's customer's live secrets
//! (newest first; two during a rotation's grace period), or
//! `POSTBACK_SIGNING_SECRET` for deliveries without a customer.
//!
//! Customers' secrets come from a per-process cache, so an attempt never
//! costs a query: a customer is read once, then kept until a change of it
//! is announced on [`CHANGE_CHANNEL`] (every write of a customer or its
//! secrets NOTIFYs it). A read that raced with an announcement is not kept
//! (a generation counter tells), and a reconnect of the LISTEN connection
//! drops the whole cache, since announcements may have been missed.
//!
//! It must not write anything, and never logs a secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::sealing::Keyring;
use crate::signing::SigningSecret;
use crate::store::customers::{self, CHANGE_CHANNEL};
use crate::store::Schema;
use crate::throttle::{Throttle, BACKGROUND_EVERY};

/// Fails on every reconnect while the database is away: one warning a
/// minute.
static LISTEN_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);

/// Why an attempt has no secret to sign with.
#[derive(Debug, thiserror::Error)]
pub enum NoSecret {
    /// The customer does not exist any more (it is being erased).
    #[error("customer {0} was deleted; its deliveries are being erased")]
    CustomerGone(String),
    /// The secrets could not be read or opened.
    #[error("cannot read the signing secrets of customer {customer}: {reason}")]
    Unreadable {
        /// The customer.
        customer: String,
        /// What went wrong (never a secret).
        reason: String,
    },
}

/// The secrets of one customer as cached, shared by every attempt.
#[derive(Debug)]
struct Entry {
    /// Newest first, each with the end of its grace (`None`: current).
    secrets: Vec<(SigningSecret, Option<OffsetDateTime>)>,
    /// Those live when `live` was last worked out, handed out as they are
    /// (an attempt clones an `Arc`, never the keys) until `live_until`.
    live: Arc<[SigningSecret]>,
    /// The earliest end of a grace among `live` (`None`: none ends).
    live_until: Option<OffsetDateTime>,
}

impl Entry {
    fn new(secrets: Vec<(SigningSecret, Option<OffsetDateTime>)>, now: OffsetDateTime) -> Entry {
        let (live, live_until) = live_at(&secrets, now);
        Entry {
            secrets,
            live,
            live_until,
        }
    }

    /// True while `live` is what [`live_at`] would work out at `now`.
    fn current_at(&self, now: OffsetDateTime) -> bool {
        self.live_until.is_none_or(|until| now < until)
    }
}

/// The signing secrets of every customer this process has delivered for.
#[derive(Debug)]
pub struct Secrets {
    pool: PgPool,
    schema: Schema,
    keys: Arc<Keyring>,
    /// Shared, so an attempt without a customer costs no allocation.
    default: Arc<[SigningSecret]>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Bumped by every invalidation: a read that started before one is not
    /// cached.
    generation: AtomicU64,
}

impl Secrets {
    /// Secrets read from `pool` and opened with `keys`; `default` signs
    /// deliveries without a customer.
    pub fn new(pool: PgPool, schema: Schema, keys: Arc<Keyring>, default: SigningSecret) -> Self {
        Secrets {
            pool,
            schema,
            keys,
            default: Arc::from(vec![default]),
            entries: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The secrets that sign an attempt for `customer`, newest first.
    pub async fn for_customer(
        &self,
        customer: Option<&str>,
    ) -> Result<Arc<[SigningSecret]>, NoSecret> {
        let Some(customer) = customer else {
            return Ok(self.default.clone());
        };
        let now = OffsetDateTime::now_utc();
        let entry = match self.cached(customer) {
            Some(entry) => entry,
            None => {
                let generation = self.generation.load(Ordering::SeqCst);
                let entry = Arc::new(Entry::new(self.read(customer).await?, now));
                if self.generation.load(Ordering::SeqCst) == generation {
                    self.lock().insert(customer.to_owned(), entry.clone());
                }
                entry
            }
        };
        let live = if entry.current_at(now) {
            entry.live.clone()
        } else {
            // A grace ended since: work the live set out again (rare, so
            // not written back; the rotation that ends it NOTIFYs anyway).
            live_at(&entry.secrets, now).0
        };
        if live.is_empty() {
            return Err(NoSecret::CustomerGone(customer.to_owned()));
        }
        Ok(live)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, customer: &str) -> Option<Arc<Entry>> {
        self.lock().get(customer).cloned()
    }

    async fn read(
        &self,
        customer: &str,
    ) -> Result<Vec<(SigningSecret, Option<OffsetDateTime>)>, NoSecret> {
        let unreadable = |reason: String| NoSecret::Unreadable {
            customer: customer.to_owned(),
            reason,
        };
        let rows = customers::secrets(&self.pool, &self.schema, customer)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let mut secrets = Vec::with_capacity(rows.len());
        for row in rows {
            let text = self
                .keys
                .open(&row.secret)
                .map_err(|e| unreadable(e.to_string()))?;
            let secret = SigningSecret::parse(&text).map_err(|e| unreadable(e.to_string()))?;
            secrets.push((secret, row.expires_at));
        }
        Ok(secrets)
    }

    /// Forgets `customer` (its secrets changed).
    pub fn invalidate(&self, customer: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.lock().remove(customer);
    }

    /// Forgets every customer (announcements may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.lock().clear();
    }

    /// Keeps the cache in step with the database until `stop`: LISTENs on
    /// [`CHANGE_CHANNEL`], reconnecting with backoff.
    pub async fn follow_changes(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let subscribed = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(CHANGE_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            let mut listener = match subscribed {
                Ok(listener) => listener,
                Err(err) => {
                    if let Some(suppressed) = LISTEN_FAILED.admit() {
                        tracing::warn!(error = %err, suppressed, "customer LISTEN failed; secrets are read fresh meanwhile");
                    }
                    // Without announcements the cache could go stale.
                    self.clear();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.clear();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = listener.try_recv() => match msg {
                        Ok(Some(note)) => self.invalidate(note.payload()),
                        // Reconnected inside sqlx: notes may be lost.
                        Ok(None) => self.clear(),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// The secrets of `secrets` still live at `now`, newest first, and the
/// earliest end of a grace among them (when the answer next changes).
fn live_at(
    secrets: &[(SigningSecret, Option<OffsetDateTime>)],
    now: OffsetDateTime,
) -> (Arc<[SigningSecret]>, Option<OffsetDateTime>) {
    let live: Vec<&(SigningSecret, Option<OffsetDateTime>)> = secrets
        .iter()
        .filter(|(_, ends)| ends.is_none_or(|end| end > now))
        .collect();
    let until = live.iter().filter_map(|(_, ends)| *ends).min();
    (live.into_iter().map(|(s, _)| s.clone()).collect(), until)
}
