//! Prometheus metrics with exactly the names, types and labels of SPEC §4.
//! It owns the metric names, the recorder, and the queue gauges (refreshed
//! from the database at a bounded rate by one task per process, never per
//! scrape). It must not decide anything: callers record what happened.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

use crate::state::{Completed, Outcome};
use crate::store::Schema;

/// `postback_jobs_created_total` (counter).
pub const JOBS_CREATED: &str = "postback_jobs_created_total";
/// `postback_deliveries_enqueued_total{type}` (counter).
pub const DELIVERIES_ENQUEUED: &str = "postback_deliveries_enqueued_total";
/// `postback_delivery_attempts_total{outcome}` (counter).
pub const DELIVERY_ATTEMPTS: &str = "postback_delivery_attempts_total";
/// `postback_deliveries_completed_total{result}` (counter).
pub const DELIVERIES_COMPLETED: &str = "postback_deliveries_completed_total";
/// `postback_attempt_duration_seconds{outcome}` (histogram).
pub const ATTEMPT_DURATION: &str = "postback_attempt_duration_seconds";
/// `postback_delivery_latency_seconds` (histogram), queued to delivered.
pub const DELIVERY_LATENCY: &str = "postback_delivery_latency_seconds";
/// `postback_queue_depth{state}` (gauge).
pub const QUEUE_DEPTH: &str = "postback_queue_depth";
/// `postback_oldest_due_seconds` (gauge).
pub const OLDEST_DUE: &str = "postback_oldest_due_seconds";

/// `postback_destinations_open` (gauge): origins whose breaker is open or half open.
pub const DESTINATIONS_OPEN: &str = "postback_destinations_open";
/// `postback_operator_events_total{type}` (counter).
pub const OPERATOR_EVENTS: &str = "postback_operator_events_total";
/// Every operator event type (SPEC §3).
pub const EVENT_TYPES: [&str; 3] = [
    "destination.opened",
    "destination.closed",
    "delivery.failed",
];

/// How often the queue gauges are read from the database.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its
/// handle (later calls return the same handle). Returns `None` when another
/// recorder was installed first (an embedder's own).
pub fn install() -> Option<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Some(handle.clone());
    }
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let latency_buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0, 900.0, 3600.0,
        14400.0, 43200.0, 129600.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ATTEMPT_DURATION.into()), &buckets)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), &latency_buckets)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        return HANDLE.get().cloned();
    }
    describe();
    let _ = HANDLE.set(handle.clone());
    Some(HANDLE.get().cloned().unwrap_or(handle))
}

fn describe() {
    metrics::describe_counter!(JOBS_CREATED, "Jobs registered.");
    metrics::describe_counter!(DELIVERIES_ENQUEUED, "Deliveries queued, by callback type.");
    metrics::describe_counter!(DELIVERY_ATTEMPTS, "HTTP attempts, by outcome.");
    metrics::describe_counter!(
        DELIVERIES_COMPLETED,
        "Deliveries that reached a final state."
    );
    metrics::describe_histogram!(
        ATTEMPT_DURATION,
        metrics::Unit::Seconds,
        "Duration of one attempt."
    );
    metrics::describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "From queued to delivered."
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Deliveries in the queue, by state.");
    metrics::describe_gauge!(
        OLDEST_DUE,
        metrics::Unit::Seconds,
        "Age of the oldest due delivery."
    );
    // Every family exists from the start, so dashboards and alerts see zeros
    // rather than absent series.
    metrics::counter!(JOBS_CREATED).increment(0);
    for outcome in Outcome::ALL {
        metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome.as_str()).increment(0);
    }
    for result in Completed::ALL {
        metrics::counter!(DELIVERIES_COMPLETED, "result" => result.as_str()).increment(0);
    }
    for state in ["due", "scheduled", "in_flight"] {
        metrics::gauge!(QUEUE_DEPTH, "state" => state).set(0.0);
    }
    metrics::gauge!(OLDEST_DUE).set(0.0);
    metrics::describe_gauge!(
        DESTINATIONS_OPEN,
        "Origins whose circuit breaker is open or half open."
    );
    metrics::gauge!(DESTINATIONS_OPEN).set(0.0);
    metrics::describe_counter!(OPERATOR_EVENTS, "Operator events queued, by type.");
    for kind in EVENT_TYPES {
        metrics::counter!(OPERATOR_EVENTS, "type" => kind).increment(0);
    }
}

/// The queue as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct QueueDepth {
    /// Due now: pending and due, or leased by a worker whose lease ran out
    /// (it died: the delivery is due again).
    pub due: i64,
    /// Pending, due later.
    pub scheduled: i64,
    /// Leased, lease still running.
    pub in_flight: i64,
    /// Age in seconds of the oldest due delivery (0 when none is due).
    pub oldest: f64,
    /// Origins whose breaker is open or half open.
    pub open_destinations: i64,
}

/// Reads the queue depth once.
pub async fn queue_depth(pool: &PgPool, schema: &Schema) -> Result<QueueDepth, sqlx::Error> {
    // `next_attempt_at` of a leased row is its lease expiry: past it, the
    // worker is gone and the row is due like any pending one.
    sqlx::query_as(&schema.sql(
        "SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
                count(*) FILTER (WHERE state = 'pending' AND next_attempt_at > now()) AS scheduled,
                count(*) FILTER (WHERE state = 'delivering' AND next_attempt_at > now()) AS in_flight,
                coalesce(extract(epoch FROM now() - min(next_attempt_at)
                    FILTER (WHERE next_attempt_at <= now())), 0)::float8 AS oldest,
                (SELECT count(*) FROM postback.destinations WHERE state = 'open') AS open_destinations
         FROM postback.deliveries WHERE next_attempt_at IS NOT NULL",
    ))
    .fetch_one(pool)
    .await
}

/// Reads the queue gauges once.
pub async fn refresh_queue_gauges(pool: &PgPool, schema: &Schema) -> Result<(), sqlx::Error> {
    let depth = queue_depth(pool, schema).await?;
    metrics::gauge!(QUEUE_DEPTH, "state" => "due").set(depth.due as f64);
    metrics::gauge!(QUEUE_DEPTH, "state" => "scheduled").set(depth.scheduled as f64);
    metrics::gauge!(QUEUE_DEPTH, "state" => "in_flight").set(depth.in_flight as f64);
    metrics::gauge!(OLDEST_DUE).set(depth.oldest);
    metrics::gauge!(DESTINATIONS_OPEN).set(depth.open_destinations as f64);
    Ok(())
}

/// Refreshes the queue gauges every [`GAUGE_INTERVAL`] until `shutdown`.
pub async fn run_gauges(
    pool: PgPool,
    schema: Schema,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(err) = refresh_queue_gauges(&pool, &schema).await {
                    tracing::debug!(%err, "queue gauges not refreshed");
                }
            }
        }
    }
}
