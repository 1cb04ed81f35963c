//! The benchmark's callback receiver: axum on a loopback address with
//! keep-alive and TCP_NODELAY, answering at once to any method and path:
//! 200 by default, or by a fixed [`Respond`] rule (the soak's mix of
//! hosts: every n-th request a 500, or always one status, with
//! `Retry-After`). It records the arrival `Instant` of every `webhook-id`
//! it answered with a 2xx (the first one; later 2xx answers to the same id
//! are counted as duplicates), counts every request, and counts body bytes
//! as they stream in, without buffering them (a 1 GiB media PUT costs it
//! nothing).
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
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

/// How a [`FastReceiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Respond {
    /// 200 to every request.
    #[default]
    Ok,
    /// 500 to every `n`-th request it gets (the n-th, 2n-th, …), 200 to the rest.
    FailEvery(u64),
    /// `status` to every request, with `Retry-After: <secs>` when given.
    Always {
        status: u16,
        retry_after: Option<u32>,
    },
}

#[derive(Default)]
struct Seen {
    respond: Respond,
    shards: Vec<Mutex<HashMap<u128, Instant>>>,
    requests: AtomicU64,
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
    /// Listens on a free port of 127.0.0.1, answering 200 to everything.
    pub async fn start() -> anyhow::Result<FastReceiver> {
        FastReceiver::start_on("127.0.0.1:0", Respond::Ok).await
    }

    /// Listens on `addr` (a loopback address; port 0 for a free one),
    /// answering by `respond`.
    pub async fn start_on(addr: &str, respond: Respond) -> anyhow::Result<FastReceiver> {
        let wanted: SocketAddr = addr.parse()?;
        if !wanted.ip().is_loopback() {
            anyhow::bail!("a receiver binds loopback addresses only, not {addr}");
        }
        let seen = Arc::new(Seen {
            respond,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ..Seen::default()
        });
        let listener = tokio::net::TcpListener::bind(wanted).await?;
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

    /// Requests received, whatever they were answered.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    /// Distinct deliveries received in full and answered with a 2xx.
    pub fn unique(&self) -> u64 {
        self.seen.unique.load(Ordering::Relaxed)
    }

    /// Deliveries answered with a 2xx again after their first such answer.
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

    /// When delivery `id` first arrived to be answered with a 2xx (its
    /// request head, that is).
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

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    let nth = seen.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    seen.bytes.fetch_add(n, Ordering::Relaxed);
    let mut ok = StatusCode::OK;
    match seen.respond {
        Respond::Ok => {}
        Respond::FailEvery(every) if every > 0 && nth % every == 0 => {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Respond::FailEvery(_) => {}
        Respond::Always {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if !status.is_success() {
                let mut response = status.into_response();
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", HeaderValue::from(secs));
                }
                return response;
            }
            ok = status;
        }
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .map(|u| u.as_u128());
    let Some(id) = id else {
        seen.without_id.fetch_add(1, Ordering::Relaxed);
        return ok.into_response();
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
    ok.into_response()
}
