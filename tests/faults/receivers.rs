//! Loopback receivers: one that records every request by `webhook-id`
//! (axum, with a configurable answer delay), one that takes the connection
//! and never answers, and one that trickles its answer a byte a second.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
    state
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arrival {
            id: id.clone(),
            from: peer.ip(),
        });
    state.notify.notify_waiters();
    let delay = *state.delay.lock().unwrap_or_else(|p| p.into_inner());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state
        .answered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id);
    (StatusCode::OK, "ok")
}

impl Recorder {
    /// Listens on `addr` (a loopback address, port 0), answering after `delay`.
    pub async fn start(addr: &str, delay: Duration) -> Recorder {
        let state = Arc::new(RecorderState::default());
        *state.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let listener = TcpListener::bind(addr).await.expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, state }
    }

    /// A URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many requests arrived.
    pub fn total(&self) -> usize {
        self.state
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Requests being answered right now.
    pub fn in_progress(&self) -> usize {
        self.state.in_progress.load(Ordering::SeqCst)
    }

    /// Ids whose answer was prepared (the delay ran out).
    pub fn answered(&self) -> Vec<String> {
        self.state
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.state.notify.notified();
            let got = self.arrivals();
            if pred(&got) {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: not reached in {limit:?} ({} requests arrived)",
                got.len()
            );
            // Also re-check now and then: a notification may fall between
            // `notified()` and the check.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
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

/// What a raw receiver saw of one connection: when the request arrived and
/// when the client hung up (None: still connected).
pub type Held = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// How a raw receiver misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Reads the request and never answers.
    Hang,
    /// Answers one byte per second: the status line and headers too for
    /// paths containing `/head/`; otherwise the headers at once and the
    /// body a byte a second.
    Trickle,
}

/// A TCP receiver that accepts connections and misbehaves.
pub struct Raw {
    addr: SocketAddr,
    held: Held,
    stop: CancellationToken,
}

const TRICKLE_BODY: &[u8] = b"a body that takes a minute and a half to arrive, one byte a second, which no attempt waits for.";

impl Raw {
    /// Listens on `addr` (loopback, port 0).
    pub async fn start(addr: &str, how: Misbehaviour) -> Raw {
        let listener = TcpListener::bind(addr).await.expect("bind raw receiver");
        let addr = listener.local_addr().expect("addr");
        let held: Held = Arc::default();
        let stop = CancellationToken::new();
        let (h, s) = (held.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => return,
                    },
                };
                tokio::spawn(serve_raw(socket, how, h.clone(), s.clone()));
            }
        });
        Raw { addr, held, stop }
    }

    /// A URL on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// (arrival, hang-up) per request.
    pub fn held(&self) -> Vec<(Instant, Option<Instant>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The most requests held at one moment.
    pub fn max_concurrent(&self) -> usize {
        let held = self.held();
        held.iter()
            .map(|(arrival, _)| {
                held.iter()
                    .filter(|(a, end)| a <= arrival && end.is_none_or(|e| *arrival < e))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_raw(mut socket: TcpStream, how: Misbehaviour, held: Held, stop: CancellationToken) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let index = {
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        held.push((Instant::now(), None));
        held.len() - 1
    };
    let head_too = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .is_some_and(|l| l.contains("/head/"));
    let (mut reader, mut writer) = socket.split();
    // Ends when the client hangs up.
    let hung_up = async {
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let misbehave = async {
        match how {
            Misbehaviour::Hang => std::future::pending::<()>().await,
            Misbehaviour::Trickle => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    TRICKLE_BODY.len()
                );
                let mut rest: Vec<u8> = Vec::new();
                if head_too {
                    rest.extend_from_slice(head.as_bytes());
                } else if writer.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                rest.extend_from_slice(TRICKLE_BODY);
                for byte in rest {
                    if writer.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = hung_up => {}
        _ = misbehave => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    held.lock().unwrap_or_else(|p| p.into_inner())[index].1 = Some(Instant::now());
}
