//! The recording receiver of the integration tests: an HTTP server on a
//! loopback address that keeps every request it gets (method, path,
//! headers, body, arrival time, peer) and answers from a script, then
//! with a default answer.
//!
//! It must not judge what it receives (signatures, bodies: the tests do)
//! and must not bind anything but 127.0.0.0/8.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::lock;
/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body's length (kept when the body itself is not, see
    /// [`Receiver::keep_lengths_only`]).
    pub len: usize,
    pub at: Instant,
    pub peer: SocketAddr,
}

/// How a receiver answers: a queue of scripted answers, then `default`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub delay: Duration,
    pub body: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Answer {
    pub fn status(code: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            delay: Duration::ZERO,
            body: "",
            headers: Vec::new(),
        }
    }
    pub fn ok() -> Answer {
        Answer::status(200)
    }
    pub fn delayed(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
    pub fn body(mut self, body: &'static str) -> Answer {
        self.body = body;
        self
    }
    pub fn header(mut self, name: &'static str, value: &'static str) -> Answer {
        self.headers.push((name, value));
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    notify: tokio::sync::Notify,
    /// Bodies are recorded as their length only (large-payload tests).
    lengths_only: std::sync::atomic::AtomicBool,
}

/// An HTTP receiver on 127.0.0.1 that records every request.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// On a given loopback address (e.g. `127.0.0.2:0` for a second host).
    pub async fn start_on(addr: &str) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        *lock(&state.default) = Some(Answer::ok());
        let addr = crate::serve_loopback(addr, record, state.clone()).await;
        Receiver { addr, state }
    }

    /// Answers these first, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.state.script).extend(answers);
    }

    /// Records each body as its length only (`Received::len`, an empty
    /// `body`): for tests that send hundreds of megabytes.
    pub fn keep_lengths_only(&self) {
        self.state
            .lengths_only
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answer after the script runs out.
    pub fn always(&self, answer: Answer) {
        *lock(&self.state.default) = Some(answer);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.got).clone()
    }

    /// Waits until `n` requests arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        crate::wait_notified(&self.state.notify, limit, || {
            let got = self.received();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("receiver got {} of {n} requests", got.len()))
            }
        })
        .await
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let scripted = lock(&state.script).pop_front();
        scripted
            .or_else(|| lock(&state.default).clone())
            .unwrap_or_else(Answer::ok)
    };
    let len = body.len();
    let body = if state
        .lengths_only
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        Bytes::new()
    } else {
        body
    };
    lock(&state.got).push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        len,
        at: Instant::now(),
        peer,
    });
    state.notify.notify_waiters();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (answer.status, answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_records_requests_and_answers_its_script_then_the_default() {
        let rx = Receiver::start().await;
        rx.script([Answer::status(503).header("retry-after", "1")]);
        rx.always(Answer::status(202).body("later"));
        let http = reqwest::Client::new();
        let first = http.post(rx.url("/a")).body("one").send().await.unwrap();
        assert_eq!(first.status(), 503);
        assert_eq!(first.headers()["retry-after"], "1");
        let second = http.put(rx.url("/b")).send().await.unwrap();
        assert_eq!(second.status(), 202);
        assert_eq!(second.text().await.unwrap(), "later");
        let got = rx.wait_for(2, Duration::from_secs(5)).await;
        assert_eq!(
            (got[0].method.as_str(), got[0].path.as_str()),
            ("POST", "/a")
        );
        assert_eq!(&got[0].body[..], b"one");
        assert_eq!(
            (got[1].method.as_str(), got[1].path.as_str()),
            ("PUT", "/b")
        );
        assert!(got[0].peer.ip().is_loopback());
    }
}
