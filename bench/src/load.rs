//! Load generators: closed loop (C tasks sending back to back, for ingest)
//! and open loop (requests started on a fixed schedule whatever the
//! answers do, for latency), at a [`Target`]: Postback's
//! `POST /v1/deliveries` ([`Api`]) or, for the ceiling, a receiver
//! straight ([`Bare`]). Both use a few keep-alive reqwest clients shared
//! by many tasks; every request is bounded by [`REQUEST_TIMEOUT`] and
//! every loop by its duration.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a load generator sends to: one request, the id it was given back.
pub trait Target: Clone + Send + Sync + 'static {
    fn send(&self, i: usize, body: Bytes) -> impl Future<Output = Result<u128, String>> + Send;
}

fn clients(n: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    Ok((0..n.max(1))
        .map(|_| {
            reqwest::Client::builder()
                .tcp_nodelay(true)
                .timeout(REQUEST_TIMEOUT)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?)
}

/// A receiver, posted to straight: the bare HTTP ceiling of a run (the
/// same client stack and receiver as the scenarios, without Postback).
#[derive(Clone)]
pub struct Bare {
    url: Arc<str>,
    clients: Arc<Vec<reqwest::Client>>,
}

impl Bare {
    pub fn new(url: &str, clients: usize) -> anyhow::Result<Bare> {
        Ok(Bare {
            url: url.into(),
            clients: Arc::new(self::clients(clients)?),
        })
    }
}

impl Target for Bare {
    async fn send(&self, i: usize, body: Bytes) -> Result<u128, String> {
        let client = &self.clients[i % self.clients.len()];
        // A webhook-id like Postback's, so the receiver does the same work
        // (it records every id it sees).
        let id = uuid::Uuid::now_v7();
        let resp = client
            .post(&*self.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        resp.bytes()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("{status}"));
        }
        Ok(id.as_u128())
    }
}

impl Target for Api {
    fn send(&self, i: usize, body: Bytes) -> impl Future<Output = Result<u128, String>> + Send {
        self.post_delivery(i, body)
    }
}

/// The API of one `serve` child.
#[derive(Clone)]
pub struct Api {
    url: Arc<str>,
    token: Arc<str>,
    clients: Arc<Vec<reqwest::Client>>,
}

impl Api {
    pub fn new(base: &str, token: &str, clients: usize) -> anyhow::Result<Api> {
        let clients = self::clients(clients)?;
        Ok(Api {
            url: format!("{base}/v1/deliveries").into(),
            token: token.into(),
            clients: Arc::new(clients),
        })
    }

    /// One `POST /v1/deliveries`; the delivery id on `202`.
    pub async fn post_delivery(&self, i: usize, body: Bytes) -> Result<u128, String> {
        let client = &self.clients[i % self.clients.len()];
        let resp = client
            .post(&*self.url)
            .bearer_auth(&*self.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if status != reqwest::StatusCode::ACCEPTED {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!("{status}: {text}"));
        }
        #[derive(serde::Deserialize)]
        struct Accepted {
            #[serde(rename = "deliveryId")]
            delivery_id: uuid::Uuid,
        }
        let accepted: Accepted =
            serde_json::from_slice(&bytes).map_err(|e| format!("202 without a deliveryId: {e}"))?;
        Ok(accepted.delivery_id.as_u128())
    }
}

/// A `POST /v1/deliveries` body of exactly `size` bytes (JSON) that sends
/// a callback to `target`.
pub fn delivery_body(target: &str, size: usize, customer: Option<&str>) -> Bytes {
    let customer = customer.map_or(String::new(), |c| format!(r#""customerId":"{c}","#));
    let head = format!(
        r#"{{"url":"{target}","method":"POST",{customer}"json":{{"source":"postback-bench","pad":""#
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

/// Outcome of [`closed_loop`].
pub struct ClosedLoop {
    /// Accepted within the measured window.
    pub ok: u64,
    /// Accepted in all (warm-up included).
    pub ok_total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Response times of the requests counted in `ok`.
    pub latencies: Vec<Duration>,
    pub window: Duration,
}

/// `tasks` senders back to back for `warmup + window`; only requests that
/// start and end inside the window are counted.
pub async fn closed_loop<T: Target>(
    api: &T,
    body: Bytes,
    tasks: usize,
    warmup: Duration,
    window: Duration,
) -> ClosedLoop {
    let from = Instant::now() + warmup;
    let until = from + window;
    let mut set = JoinSet::new();
    for t in 0..tasks {
        let api = api.clone();
        let body = body.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let (mut ok, mut ok_total, mut errors, mut first) = (0u64, 0u64, 0u64, None);
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let r = api.send(t, body.clone()).await;
                let t1 = Instant::now();
                let counted = t0 >= from && t1 <= until;
                match r {
                    Ok(_) => {
                        ok_total += 1;
                        if counted {
                            ok += 1;
                            lat.push(t1 - t0);
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e);
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, ok_total, errors, first, lat)
        });
    }
    let mut out = ClosedLoop {
        ok: 0,
        ok_total: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        window,
    };
    while let Some(joined) = set.join_next().await {
        let Ok((ok, ok_total, errors, first, lat)) = joined else {
            out.errors += 1;
            continue;
        };
        out.ok += ok;
        out.ok_total += ok_total;
        out.errors += errors;
        if out.first_error.is_none() {
            out.first_error = first;
        }
        out.latencies.extend(lat);
    }
    out
}

/// Outcome of [`open_loop`].
pub struct OpenLoop {
    /// (delivery id, when its request was sent) of every accepted request.
    pub accepted: Vec<(u128, Instant)>,
    /// Response times of the accepted requests.
    pub response: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests not sent because `max_in_flight` were already waiting.
    pub saturated: u64,
    /// How late the generator started a request, at worst.
    pub max_lag: Duration,
}

#[derive(Default)]
struct Shared {
    accepted: Vec<(u128, Instant)>,
    response: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Starts `rate × duration` requests at evenly spaced instants (a request
/// due while the previous ones are unanswered is sent anyway, up to
/// `max_in_flight` waiting), then waits for the answers.
pub async fn open_loop<T: Target>(
    api: &T,
    body: Bytes,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> OpenLoop {
    let planned = (rate * duration.as_secs_f64()).round() as u64;
    let shared = Arc::new(Mutex::new(Shared {
        accepted: Vec::with_capacity(planned as usize),
        response: Vec::with_capacity(planned as usize),
        ..Shared::default()
    }));
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let started = Instant::now();
    let mut saturated = 0u64;
    let mut max_lag = Duration::ZERO;
    for i in 0..planned {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            max_lag = max_lag.max(now - due);
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            saturated += 1;
            continue;
        };
        let api = api.clone();
        let body = body.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let r = api.send(i as usize, body).await;
            let took = sent.elapsed();
            if let Ok(mut s) = shared.lock() {
                match r {
                    Ok(id) => {
                        s.accepted.push((id, sent));
                        s.response.push(took);
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                    }
                }
            }
            drop(permit);
        });
    }
    // Every request ends within REQUEST_TIMEOUT; this wait is bounded too.
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(5),
        slots.acquire_many(max_in_flight as u32),
    )
    .await;
    let shared = std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
    OpenLoop {
        accepted: shared.accepted,
        response: shared.response,
        errors: shared.errors,
        first_error: shared.first_error,
        saturated,
        max_lag,
    }
}

/// p50 / p99 / max of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(mut sample: Vec<Duration>) -> Summary {
        if sample.is_empty() {
            return Summary::default();
        }
        sample.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * sample.len() as f64).ceil() as usize;
            sample[rank.clamp(1, sample.len()) - 1]
        };
        Summary {
            p50: at(50.0),
            p99: at(99.0),
            max: sample[sample.len() - 1],
        }
    }
}

/// `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
