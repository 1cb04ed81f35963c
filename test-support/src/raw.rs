//! Raw TCP receivers that misbehave: one takes the request and never
//! answers, one trickles its answer a byte a second. Each records when a
//! request arrived and when the client hung up.
//!
//! They speak just enough HTTP/1.1 to misbehave (no parsing beyond the end
//! of the request head) and must not bind anything but 127.0.0.0/8.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::lock;

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
        lock(&self.held).clone()
    }

    /// The most requests held at one moment.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent_within(Duration::ZERO)
    }

    /// The most requests held at one moment, a request counting as ended
    /// `lag` before this server noticed its connection close. The server
    /// notices a close late when the machine is busy, and a new request
    /// then seems to overlap the one its client had already given up on;
    /// a real excess request overlaps by far more (a whole attempt).
    pub fn max_concurrent_within(&self, lag: Duration) -> usize {
        let held = self.held();
        held.iter()
            .map(|(arrival, _)| {
                held.iter()
                    .filter(|(a, end)| a <= arrival && end.is_none_or(|e| *arrival + lag < e))
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
        let mut held = lock(&held);
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
    lock(&held)[index].1 = Some(Instant::now());
}
