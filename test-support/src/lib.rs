//! What Postback's tests (`tests/it`, the fault suite `tests/faults.rs`) and
//! its benchmark (`bench/`) stand on, in one place:
//!
//! - [`pg`]: a real PostgreSQL cluster — one shared by every test of a test
//!   binary (a fresh database per test), or a private one per case — stopped
//!   on drop and at exit;
//! - [`child`]: the real `postback` binary as a child process, with a clean
//!   environment, readiness waits, its log kept, stopped on drop;
//! - loopback receivers: [`receiver`] (records every request, scripted
//!   answers), [`recorder`] (counts by `webhook-id`, slow answers), [`raw`]
//!   (hangs or trickles), [`fast`] (the benchmark's, counts without
//!   buffering).
//!
//! This crate owns test infrastructure only: it must not hold assertions
//! about Postback's behaviour (those live in the tests), must not be a
//! dependency of the product (it is a dev-dependency of `postback` and a
//! dependency of `postback-bench`), and must not find the `postback`
//! binary itself (`CARGO_BIN_EXE_postback` exists only in the root crate's
//! integration tests): callers pass its path in. Receivers bind only
//! loopback addresses (127.0.0.0/8).

pub mod child;
pub mod fast;
pub mod pg;
pub mod raw;
pub mod receiver;
pub mod recorder;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also when a panicking test poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `addr` (loopback, port 0 for any) and serves `handler`, with
/// `state`, for every method and path, with each request's peer address
/// available as `ConnectInfo<SocketAddr>`; returns the bound address. The
/// server lives as long as the runtime.
pub(crate) async fn serve_loopback<H, T, S>(addr: &str, handler: H, state: S) -> SocketAddr
where
    H: axum::handler::Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind a receiver on {addr}: {e}"));
    let addr = listener.local_addr().expect("receiver address");
    let app = axum::Router::new()
        .fallback(handler)
        // Receivers take what real ones do (S3 takes gigabytes): large
        // results and media must not fail at a test's own limit (axum's
        // default is 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(state)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Waits until `check` gives a value, re-checking whenever `notify` fires
/// (and every 100 ms, as a notification may fall between the check and the
/// wait); panics after `limit` with what `check` last said.
pub(crate) async fn wait_notified<T>(
    notify: &tokio::sync::Notify,
    limit: std::time::Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let notified = notify.notified();
        let not_yet = match check() {
            Ok(value) => return value,
            Err(not_yet) => not_yet,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "{not_yet} in {limit:?}");
        let _ =
            tokio::time::timeout(left.min(std::time::Duration::from_millis(100)), notified).await;
    }
}
