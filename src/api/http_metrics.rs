//! `postback_http_requests_total{route,status}` and
//! `postback_http_request_duration_seconds{route}` (SPEC §4) for every
//! request the router answers. It owns the route label: the route template
//! axum matched (`/v1/jobs/{jobId}`), or [`UNMATCHED`] for every path no
//! route has, so a scanner probing random paths cannot grow the series
//! without bound. It must not look at bodies or decide responses.
//!
//! The request path pays one map lookup and a clock read: the handles of
//! every route are made when the router is built (labels allocated once),
//! and a route's counter per status code is made the first time that code
//! is answered, then read under a shared lock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Request, Response};
use metrics::{Counter, Histogram, SharedString};

use crate::metrics::{HTTP_REQUESTS, HTTP_REQUEST_DURATION};

/// The `route` label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The handles of one route label.
#[derive(Debug)]
struct RouteMetrics {
    route: SharedString,
    duration: Histogram,
    /// (status code, counter), made on first use.
    requests: RwLock<Vec<(u16, Counter)>>,
}

impl RouteMetrics {
    fn new(route: impl Into<SharedString>) -> Self {
        let route = route.into();
        RouteMetrics {
            duration: metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route.clone()),
            route,
            requests: RwLock::new(Vec::new()),
        }
    }

    fn record(&self, status: u16, seconds: f64) {
        self.duration.record(seconds);
        {
            let requests = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, counter)) = requests.iter().find(|(s, _)| *s == status) {
                counter.increment(1);
                return;
            }
        }
        // First answer of this status on this route (another request may
        // have made its counter meanwhile: look again under the write lock).
        let mut requests = self.requests.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, counter)) = requests.iter().find(|(s, _)| *s == status) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(HTTP_REQUESTS, "route" => self.route.clone(), "status" => status.to_string());
        counter.increment(1);
        requests.push((status, counter));
    }
}

/// The route table the layer labels with.
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    routes: Arc<HashMap<String, Arc<RouteMetrics>>>,
    unmatched: Arc<RouteMetrics>,
}

impl HttpMetricsLayer {
    /// Labels for these route templates (axum path syntax, which is the
    /// OpenAPI one: `/v1/jobs/{jobId}`); anything else is [`UNMATCHED`].
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let routes = templates
            .into_iter()
            .map(|t| (t.to_owned(), Arc::new(RouteMetrics::new(t.to_owned()))))
            .collect();
        HttpMetricsLayer {
            routes: Arc::new(routes),
            unmatched: Arc::new(RouteMetrics::new(UNMATCHED)),
        }
    }
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            table: self.clone(),
        }
    }
}

/// The service of [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    table: HttpMetricsLayer,
}

impl<S, B, ResB> tower::Service<Request<B>> for HttpMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Measured<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let label = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|path| self.table.routes.get(path.as_str()))
            .unwrap_or(&self.table.unmatched)
            .clone();
        Measured {
            inner: self.inner.call(request),
            label: Some(label),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future that records its request when it resolves.
    pub struct Measured<F> {
        #[pin]
        inner: F,
        label: Option<Arc<RouteMetrics>>,
        started: Instant,
    }
}

impl<F, ResB, E> Future for Measured<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(label)) = (&output, this.label.take()) {
            label.record(
                response.status().as_u16(),
                this.started.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(output)
    }
}
