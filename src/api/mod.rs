//! The HTTP API of SPEC §2: a thin axum layer over the library in
//! `intake`. It owns routing, authentication, request-body limits, the
//! mapping of library errors to status codes and `{"error": {code,
//! message}}` bodies, and the OpenAPI document; it must not contain
//! business rules or SQL.
//!
//! Every route is added through `RouteTable::add`, which takes its method
//! and path from the handler's `#[utoipa::path]` annotation: the router and
//! the OpenAPI document describe the same routes by construction, and a
//! test compares [`routes`] with the document.

mod auth;
mod body;
mod console;
mod customers;
mod deliveries;
mod destinations;
mod error;
mod http_metrics;
mod jobs;
mod openapi;
mod ops;
mod replays;
mod server;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{get, on, MethodFilter};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use utoipa::openapi::path::HttpMethod;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use http_metrics::UNMATCHED;
pub use openapi::{openapi_json, ApiDoc};
pub use server::{serve, ARRIVAL_DEADLINE, HEADER_TIMEOUT, MAX_CONNECTIONS};

use crate::intake::Postback;
use crate::queue::Waker;

/// What every handler shares: a handle on [`Shared`], whose fields it
/// dereferences to. axum's extractors and middleware clone the state per
/// request; cloning and dropping every field (pools, channels, `Arc`s,
/// two address lists) was about 4 % of `serve`'s CPU in the bench's ingest
/// (perf), one reference count now.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handlers' shared state, behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub pool: PgPool,
    /// The library API.
    pub postback: Postback,
    /// Bearer token; `None` only with POSTBACK_INSECURE_NO_AUTH=1.
    pub token: Option<Arc<str>>,
    /// Wakes this process's workers after a commit (None: API-only process).
    pub waker: Option<Waker>,
    /// Starts fresh deliveries in this process without a claim (None: an
    /// API-only process).
    pub handoff: Option<crate::queue::Handoff>,
    /// Group-commit writers for generic deliveries.
    pub batcher: crate::intake::Batcher,
    /// Wakes workers of other processes (coalesced NOTIFY after commit).
    pub notifier: crate::queue::Notifier,
    /// Prometheus exposition.
    pub metrics: Option<PrometheusHandle>,
    /// Local addresses outbound connections bind to.
    pub source_addresses: Vec<IpAddr>,
    /// Addresses customers should allow-list.
    pub public_addresses: Vec<IpAddr>,
    /// Largest accepted request body.
    pub max_body: usize,
    /// Bytes of request bodies being read and handled at once (see
    /// `body::hold_budget`); `Default` gives `body::BODY_BUDGET`.
    pub body_budget: body::BodyBudget,
}

/// Routes collected with the method and path of their OpenAPI operation.
struct RouteTable {
    router: Router<AppState>,
    routes: Vec<(&'static str, String)>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// Adds `handler` at the path and methods of its `#[utoipa::path]` `P`.
    fn add<P, H, T>(mut self, handler: H) -> Self
    where
        P: utoipa::Path,
        H: Handler<T, AppState>,
        T: 'static,
    {
        let path = P::path();
        for method in P::methods() {
            let (name, filter) = method_filter(&method);
            self.router = self.router.route(&path, on(filter, handler.clone()));
            self.routes.push((name, path.clone()));
        }
        self
    }
}

fn method_filter(method: &HttpMethod) -> (&'static str, MethodFilter) {
    match method {
        HttpMethod::Get => ("GET", MethodFilter::GET),
        HttpMethod::Post => ("POST", MethodFilter::POST),
        HttpMethod::Put => ("PUT", MethodFilter::PUT),
        HttpMethod::Delete => ("DELETE", MethodFilter::DELETE),
        HttpMethod::Options => ("OPTIONS", MethodFilter::OPTIONS),
        HttpMethod::Head => ("HEAD", MethodFilter::HEAD),
        HttpMethod::Patch => ("PATCH", MethodFilter::PATCH),
        HttpMethod::Trace => ("TRACE", MethodFilter::TRACE),
    }
}

/// The `/v1` routes, which need the bearer token.
fn v1_routes() -> RouteTable {
    RouteTable::new()
        .add::<jobs::__path_create, _, _>(jobs::create)
        .add::<jobs::__path_get, _, _>(jobs::get)
        .add::<jobs::__path_post_result, _, _>(jobs::post_result)
        .add::<deliveries::__path_list, _, _>(deliveries::list)
        .add::<deliveries::__path_create, _, _>(deliveries::create)
        .add::<deliveries::__path_get, _, _>(deliveries::get)
        .add::<deliveries::__path_replay, _, _>(deliveries::replay)
        .add::<replays::__path_replay, _, _>(replays::replay)
        .add::<replays::__path_stats, _, _>(replays::stats)
        .add::<customers::__path_put, _, _>(customers::put)
        .add::<customers::__path_get, _, _>(customers::get)
        .add::<customers::__path_delete, _, _>(customers::delete)
        .add::<customers::__path_rotate_secret, _, _>(customers::rotate_secret)
        .add::<destinations::__path_list, _, _>(destinations::list)
        .add::<destinations::__path_reset, _, _>(destinations::reset)
        .add::<ops::__path_egress, _, _>(ops::egress)
}

/// Health, metrics, the API description and the console page, open to
/// everyone (the console's own calls carry the token).
fn open_routes() -> RouteTable {
    RouteTable::new()
        .add::<ops::__path_healthz, _, _>(ops::healthz)
        .add::<ops::__path_readyz, _, _>(ops::readyz)
        .add::<ops::__path_metrics, _, _>(ops::metrics)
        .add::<openapi::__path_document, _, _>(openapi::document)
        .add::<console::__path_page, _, _>(console::page)
        .add::<console::__path_css, _, _>(console::css)
        .add::<console::__path_js, _, _>(console::js)
}

/// Every route the API serves, as (method, path) with OpenAPI path syntax.
pub fn routes() -> Vec<(&'static str, String)> {
    let mut all = v1_routes().routes;
    all.extend(open_routes().routes);
    all
}

impl Shared {
    /// Something was committed to the queue: wake this process's workers
    /// at once and the other processes' through one coalesced NOTIFY.
    pub fn wake_workers(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
        self.notifier.notify();
    }
}

/// The whole API. Outermost first: every response gets an `x-request-id`
/// (the caller's, else a fresh UUID) and one access-log line naming it;
/// every `/v1` request is authenticated before routing, so an unknown
/// `/v1` path without a token is 401, not 404 (SPEC §2).
pub fn router(state: AppState) -> Router {
    let request_id = axum::http::HeaderName::from_static(REQUEST_ID);
    let paths: std::collections::BTreeSet<String> =
        routes().into_iter().map(|(_, path)| path).collect();
    let http_metrics = http_metrics::HttpMetricsLayer::new(paths.iter().map(String::as_str));
    Router::new()
        .merge(v1_routes().router)
        .merge(open_routes().router)
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body))
        .layer(axum::middleware::from_fn_with_state(
            (state.body_budget.clone(), state.max_body),
            body::hold_budget,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token_for_v1,
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(http_metrics)
                .layer(tower_http::request_id::SetRequestIdLayer::new(
                    request_id.clone(),
                    tower_http::request_id::MakeRequestUuid,
                ))
                .layer(
                    tower_http::trace::TraceLayer::new_for_http()
                        .make_span_with(access_span)
                        .on_request(())
                        .on_response(access_line)
                        .on_failure(()),
                )
                .layer(tower_http::request_id::PropagateRequestIdLayer::new(
                    request_id,
                )),
        )
        .with_state(state)
}

/// The request-id header of every response.
pub const REQUEST_ID: &str = "x-request-id";

/// The span of one request; its access-log line (tower-http's "finished
/// processing request", with status and latency) carries these fields.
fn access_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    // The route template, when one matched: what the metrics label is.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str());
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        route,
    )
}

/// The access-log line of one request, inside its span: the status as a
/// number and the latency in milliseconds as a number.
fn access_line<B>(
    response: &axum::http::Response<B>,
    latency: std::time::Duration,
    _: &tracing::Span,
) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "finished processing request"
    );
}

/// A router serving only `/metrics` (POSTBACK_METRICS_LISTEN).
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { crate::metrics::render(&handle) }
            }),
        )
        .layer(http_metrics::HttpMetricsLayer::new(["/metrics"]))
}
