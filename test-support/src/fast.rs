//! The benchmark's callback receiver: axum on 127.0.0.1 with keep-alive
//! and TCP_NODELAY, answering 200 at once to any method and path. It
//! records the arrival `Instant` of every `webhook-id` (the first one;
//! repeats are counted as duplicates) and counts body bytes as they stream
//! in, without buffering them (a 1 GiB media PUT costs it nothing).
//!
//! It must stay cheap (it shares the machine with what it measures): no
//! per-request allocation beyond its map entry, no body kept, no logging.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

#[derive(Default)]
struct Seen {
    shards: Vec<Mutex<HashMap<u128, Instant>>>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    bytes: AtomicU64,
    without_id: AtomicU64,
}

impl Seen {
    fn shard(&self, id: u128) -> &Mutex<HashMap<u128, Instant>> {
        // The low bits of a UUID (v4 or v7) are random.
        &self.shards[(id as usize) % SHARDS]
    }
}

/// A running receiver; stop it with [`FastReceiver::stop`] (or drop it).
pub struct FastReceiver {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FastReceiver {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<FastReceiver> {
        let seen = Arc::new(Seen {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ..Seen::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .fallback(hook)
            .layer(DefaultBodyLimit::disable())
            .with_state(seen.clone());
        let stop = CancellationToken::new();
        let graceful = stop.clone();
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { graceful.cancelled().await })
                .await;
        });
        Ok(FastReceiver {
            addr,
            seen,
            stop,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Distinct deliveries received in full.
    pub fn unique(&self) -> u64 {
        self.seen.unique.load(Ordering::Relaxed)
    }

    /// Deliveries received again after their first arrival.
    pub fn duplicates(&self) -> u64 {
        self.seen.duplicates.load(Ordering::Relaxed)
    }

    /// Body bytes received.
    pub fn bytes(&self) -> u64 {
        self.seen.bytes.load(Ordering::Relaxed)
    }

    /// Requests that carried no parsable `webhook-id`.
    pub fn without_id(&self) -> u64 {
        self.seen.without_id.load(Ordering::Relaxed)
    }

    /// When delivery `id` first arrived (its request head, that is).
    pub fn arrival(&self, id: u128) -> Option<Instant> {
        self.seen
            .shard(id)
            .lock()
            .ok()
            .and_then(|m| m.get(&id).copied())
    }

    /// The first and the last arrival.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let mut span: Option<(Instant, Instant)> = None;
        for shard in &self.seen.shards {
            let Ok(map) = shard.lock() else { continue };
            for &t in map.values() {
                span = Some(match span {
                    None => (t, t),
                    Some((a, b)) => (a.min(t), b.max(t)),
                });
            }
        }
        span
    }

    /// Waits until at least `n` distinct deliveries arrived, or `until`.
    /// `check` runs every poll (a child still alive?) and aborts the wait
    /// with its error.
    pub async fn wait_for(
        &self,
        n: u64,
        until: Instant,
        mut check: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        loop {
            if self.unique() >= n {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            check()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops serving (waits up to 2 s for open connections).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FastReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Body) -> StatusCode {
    let arrived = Instant::now();
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    }
    seen.bytes.fetch_add(n, Ordering::Relaxed);
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .map(|u| u.as_u128());
    let Some(id) = id else {
        seen.without_id.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    };
    let first = match seen.shard(id).lock() {
        Ok(mut map) => match map.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(arrived);
                true
            }
        },
        Err(_) => false,
    };
    if first {
        seen.unique.fetch_add(1, Ordering::Relaxed);
    } else {
        seen.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::OK
}
