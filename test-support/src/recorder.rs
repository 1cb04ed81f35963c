//! The fault suite's recording receiver: an HTTP server on a loopback
//! address that answers 200 after a configurable delay and records every
//! request by its `webhook-id` and sending address, with how many are being
//! answered at the moment.
//!
//! It must not judge what it receives (the tests count duplicates and
//! losses) and must not bind anything but 127.0.0.0/8.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};

use crate::lock;

/// One request a [`Recorder`] got.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Its `webhook-id`.
    pub id: String,
    /// Address of the sending socket (tells workers apart when each has its
    /// own `POSTBACK_EGRESS_SOURCE_ADDR`).
    pub from: IpAddr,
}

#[derive(Default)]
struct RecorderState {
    arrivals: Mutex<Vec<Arrival>>,
    /// Ids whose answer was fully prepared (the delay ran out).
    answered: Mutex<Vec<String>>,
    in_progress: AtomicUsize,
    delay: Mutex<Duration>,
    notify: tokio::sync::Notify,
}

/// An HTTP receiver that answers 200 after `delay` and records every
/// request.
#[derive(Clone)]
pub struct Recorder {
    addr: SocketAddr,
    state: Arc<RecorderState>,
}

struct InProgress(Arc<RecorderState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn record(
    State(state): State<Arc<RecorderState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> (StatusCode, &'static str) {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    state.in_progress.fetch_add(1, Ordering::SeqCst);
    let _guard = InProgress(state.clone());
    lock(&state.arrivals).push(Arrival {
        id: id.clone(),
        from: peer.ip(),
    });
    state.notify.notify_waiters();
    let delay = *lock(&state.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    lock(&state.answered).push(id);
    (StatusCode::OK, "ok")
}

impl Recorder {
    /// Listens on `addr` (a loopback address, port 0), answering after `delay`.
    pub async fn start(addr: &str, delay: Duration) -> Recorder {
        let state = Arc::new(RecorderState::default());
        *lock(&state.delay) = delay;
        let addr = crate::serve_loopback(addr, record, state.clone()).await;
        Recorder { addr, state }
    }

    /// A URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.state.arrivals).clone()
    }

    /// How many requests arrived.
    pub fn total(&self) -> usize {
        lock(&self.state.arrivals).len()
    }

    /// Requests being answered right now.
    pub fn in_progress(&self) -> usize {
        self.state.in_progress.load(Ordering::SeqCst)
    }

    /// Ids whose answer was prepared (the delay ran out).
    pub fn answered(&self) -> Vec<String> {
        lock(&self.state.answered).clone()
    }

    /// Arrivals per `webhook-id`.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for a in self.arrivals() {
            *counts.entry(a.id).or_default() += 1;
        }
        counts
    }

    /// Waits until `pred(arrivals)` holds; panics after `limit`.
    pub async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&[Arrival]) -> bool,
    ) -> Vec<Arrival> {
        crate::wait_notified(&self.state.notify, limit, || {
            let got = self.arrivals();
            if pred(&got) {
                Ok(got)
            } else {
                Err(format!(
                    "{what}: not reached ({} requests arrived)",
                    got.len()
                ))
            }
        })
        .await
    }

    /// Waits until every one of `ids` arrived at least once.
    pub async fn wait_ids(&self, ids: &[String], limit: Duration) -> Vec<Arrival> {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.wait_until(limit, "every id arrives", |got| {
            let seen: std::collections::HashSet<&str> = got.iter().map(|a| a.id.as_str()).collect();
            wanted.iter().all(|id| seen.contains(id))
        })
        .await
    }
}
