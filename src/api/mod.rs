//! The HTTP API of SPEC §2: a thin axum layer over the library in
//! `intake`. It owns routing, authentication, request-body limits and the
//! mapping of library errors to status codes and `{"error": {code,
//! message}}` bodies; it must not contain business rules or SQL.

mod auth;
mod body;
mod deliveries;
mod error;
mod jobs;
mod ops;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

pub use error::ApiError;

use crate::delivery::Waker;
use crate::intake::Postback;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub pool: PgPool,
    /// The library API.
    pub postback: Postback,
    /// Bearer token; `None` only with POSTBACK_INSECURE_NO_AUTH=1.
    pub token: Option<Arc<str>>,
    /// Wakes this process's workers after a commit (None: API-only process).
    pub waker: Option<Waker>,
    /// Prometheus exposition.
    pub metrics: Option<PrometheusHandle>,
    /// Local addresses outbound connections bind to.
    pub source_addresses: Vec<IpAddr>,
    /// Addresses customers should allow-list.
    pub public_addresses: Vec<IpAddr>,
    /// Largest accepted request body.
    pub max_body: usize,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/jobs", post(jobs::create))
        .route("/jobs/{job_id}", get(jobs::get))
        .route("/jobs/{job_id}/result", post(jobs::post_result))
        .route("/deliveries", post(deliveries::create))
        .route("/deliveries/{id}", get(deliveries::get))
        .route("/deliveries/{id}/replay", post(deliveries::replay))
        .route("/egress", get(ops::egress))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

/// A router serving only `/metrics` (POSTBACK_METRICS_LISTEN).
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    )
}
