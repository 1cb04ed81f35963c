//! The API's listener (SPEC §2, "the API edge"): the accept loop and the
//! rules every connection lives by, whatever route it asks for. It owns the
//! connection cap, the header-read timeout, the request-arrival deadline
//! and graceful shutdown; it must not know routes or authentication (the
//! router does).
//!
//! - [`MAX_CONNECTIONS`] connections at once; the accept loop waits for a
//!   free slot before accepting more (the kernel's backlog holds the rest).
//! - [`HEADER_TIMEOUT`]: a connection that has not sent a complete request
//!   head within 10 s is closed (slowloris).
//! - [`ARRIVAL_DEADLINE`]: a request whose body has not fully arrived 60 s
//!   after the request began is refused and its connection closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Connections served at once per listener. Above it, new connections wait
/// in the kernel's accept backlog until one closes.
pub const MAX_CONNECTIONS: usize = 4096;

/// A connection must send a complete request head within this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request (head and body) must have arrived within this long.
pub const ARRIVAL_DEADLINE: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown`, then lets the requests in
/// flight finish and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ARRIVAL_DEADLINE).await
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadline: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: pause, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = Body::new(Deadline::new(body, deadline));
                let mut request = Request::from_parts(parts, body);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                app.oneshot(request).await
            }
        });
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The request body did not arrive within [`ARRIVAL_DEADLINE`].
#[derive(Debug, thiserror::Error)]
#[error("the request did not arrive within {0:?}")]
pub struct ArrivalTimeout(Duration);

/// A request body that fails once its absolute deadline has passed (unlike
/// a per-read timeout, trickling one byte at a time does not extend it).
struct Deadline<B> {
    body: B,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    fn new(body: B, limit: Duration) -> Self {
        Deadline {
            body,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(ArrivalTimeout(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_still_arriving_at_the_deadline_fails_however_it_trickles() {
        // A body that sends a byte every 50 ms, forever.
        let (tx, rx) = futures_channel_body();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.is_err() {
                    return;
                }
            }
        });
        let started = std::time::Instant::now();
        let body = Deadline::new(rx, Duration::from_millis(300));
        let err = body.collect().await.expect_err("the deadline ends it");
        assert!(err.downcast_ref::<ArrivalTimeout>().is_some(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A body that completes in time is passed through whole.
        let body = Deadline::new(Body::from("complete"), Duration::from_millis(300));
        let bytes = body.collect().await.expect("in time").to_bytes();
        assert_eq!(&bytes[..], b"complete");
    }

    type Chunk = Result<bytes::Bytes, std::io::Error>;

    fn futures_channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let stream = tokio_stream_from(rx);
        (tx, Body::from_stream(stream))
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Chunk>,
    ) -> impl futures_util::Stream<Item = Chunk> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
