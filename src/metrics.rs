//! Prometheus metrics with exactly the names, types and labels of SPEC §4.
//! It owns the metric names, the recorder, the queue gauges (refreshed
//! from the database at a bounded rate by one task per process, never per
//! scrape) and `postback_database_up`. It must not decide anything: callers
//! record what happened.
//!
//! The queue gauges and `postback_database_up` are kept outside the
//! recorder and appended by [`render`]: the recorder cannot drop a series,
//! and SPEC §4 wants the queue gauges left out (not frozen at their last
//! value) while the database is unreachable, so paging alerts never read a
//! stale "all is well".

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

use crate::state::{Completed, Outcome};
use crate::store::Schema;
use crate::throttle::{Throttle, BACKGROUND_EVERY};

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
/// `postback_database_up` (gauge): 1 when the last query of this process
/// succeeded, 0 while the database is unreachable.
pub const DATABASE_UP: &str = "postback_database_up";

/// `postback_destinations_open` (gauge): origins whose breaker is open or
/// half open (rendered with the queue gauges: left out while the database
/// is down).
pub const DESTINATIONS_OPEN: &str = "postback_destinations_open";
/// `postback_http_requests_total{route,status}` (counter): requests the
/// API answered, by route template (`/v1/jobs/{jobId}`, or `unmatched`)
/// and status code.
pub const HTTP_REQUESTS: &str = "postback_http_requests_total";
/// `postback_http_request_duration_seconds{route}` (histogram).
pub const HTTP_REQUEST_DURATION: &str = "postback_http_request_duration_seconds";
/// `postback_build_info{version}` (gauge, always 1).
pub const BUILD_INFO: &str = "postback_build_info";
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

/// The outcome of the one installation attempt of this process: callers
/// racing to install wait for it (`get_or_init`) instead of one of them
/// reading "not installed" while another is half way through.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its
/// handle (later calls return the same handle). Returns `None` when another
/// recorder was installed first (an embedder's own).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE.get_or_init(install_once).clone()
}

fn install_once() -> Option<PrometheusHandle> {
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
        .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), &buckets)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    spawn_upkeep(handle.clone());
    describe();
    Some(handle)
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every
/// [`UPKEEP_EVERY`], on a thread of its own for the life of the process.
/// `build_recorder` leaves this to the caller: the exporter keeps every
/// sample until the next render, so a process nobody scraped (a worker
/// without `POSTBACK_METRICS_LISTEN`, a `serve` whose `/metrics` no
/// Prometheus reads) grew by every attempt and request it timed (the soak
/// measured `serve` growing about 1 MiB a minute at 500/s).
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(err) = started {
        tracing::warn!(error = %err, "could not start the metrics upkeep thread; histograms are folded only when /metrics is scraped");
    }
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
    // Every family exists from the start, so dashboards and alerts see zeros
    // rather than absent series.
    metrics::counter!(JOBS_CREATED).increment(0);
    for outcome in Outcome::ALL {
        metrics::counter!(DELIVERY_ATTEMPTS, "outcome" => outcome.as_str()).increment(0);
    }
    for result in Completed::ALL {
        metrics::counter!(DELIVERIES_COMPLETED, "result" => result.as_str()).increment(0);
    }
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "Requests the API answered, by route template and status code."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a request, by route template."
    );
    process_collector().describe();
    metrics::describe_gauge!(BUILD_INFO, "1, labelled with the running version.");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::describe_counter!(OPERATOR_EVENTS, "Operator events queued, by type.");
    for kind in EVENT_TYPES {
        metrics::counter!(OPERATOR_EVENTS, "type" => kind).increment(0);
    }
}

/// The standard `process_*` metrics (CPU seconds, resident and virtual
/// memory, open and maximum file descriptors, start time, threads), as the
/// Prometheus client libraries name them.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// What [`render`] appends: whether the database answers, and the queue as
/// last read (`None` until read, and again from the moment the database
/// stops answering until it is read again).
#[derive(Debug, Clone, Copy, PartialEq)]
struct DatabaseGauges {
    up: bool,
    depth: Option<QueueDepth>,
}

/// One per process, like the recorder. A process that just started has
/// migrated, so the database answered.
static DATABASE: Mutex<DatabaseGauges> = Mutex::new(DatabaseGauges {
    up: true,
    depth: None,
});

fn database() -> std::sync::MutexGuard<'static, DatabaseGauges> {
    DATABASE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records whether a query of this process just reached the database. A
/// failure drops the queue gauges until they are read again.
pub fn database_reached(ok: bool) {
    let mut g = database();
    g.up = ok;
    if !ok {
        g.depth = None;
    }
}

/// Whether the last query of this process reached the database.
pub fn database_up() -> bool {
    database().up
}

/// The exposition of `handle` plus `postback_database_up` and, while the
/// database answers, the queue gauges.
pub fn render(handle: &PrometheusHandle) -> String {
    // `process_*` are read at the scrape: they cost a few reads of
    // /proc/self, and are as fresh as the scrape.
    process_collector().collect();
    let mut text = handle.render();
    let gauges = *database();
    text.push_str(&render_database_gauges(gauges));
    text
}

fn render_database_gauges(g: DatabaseGauges) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP {DATABASE_UP} 1 when the last query of this process succeeded, 0 while the database is unreachable."
    );
    let _ = writeln!(out, "# TYPE {DATABASE_UP} gauge");
    let _ = writeln!(out, "{DATABASE_UP} {}", u8::from(g.up));
    let Some(depth) = g.depth.filter(|_| g.up) else {
        return out;
    };
    let _ = writeln!(
        out,
        "# HELP {QUEUE_DEPTH} Deliveries in the queue, by state."
    );
    let _ = writeln!(out, "# TYPE {QUEUE_DEPTH} gauge");
    for (state, n) in [
        ("due", depth.due),
        ("scheduled", depth.scheduled),
        ("in_flight", depth.in_flight),
    ] {
        let _ = writeln!(out, "{QUEUE_DEPTH}{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP {OLDEST_DUE} Age of the oldest due delivery (seconds)."
    );
    let _ = writeln!(out, "# TYPE {OLDEST_DUE} gauge");
    let _ = writeln!(out, "{OLDEST_DUE} {}", depth.oldest);
    let _ = writeln!(
        out,
        "# HELP {DESTINATIONS_OPEN} Origins whose circuit breaker is open or half open."
    );
    let _ = writeln!(out, "# TYPE {DESTINATIONS_OPEN} gauge");
    let _ = writeln!(out, "{DESTINATIONS_OPEN} {}", depth.open_destinations);
    out
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

/// Reads the queue gauges once; a failure marks the database down (and so
/// leaves the queue gauges out of [`render`]).
pub async fn refresh_queue_gauges(pool: &PgPool, schema: &Schema) -> Result<(), sqlx::Error> {
    match queue_depth(pool, schema).await {
        Ok(depth) => {
            let mut g = database();
            g.up = true;
            g.depth = Some(depth);
            Ok(())
        }
        Err(err) => {
            database_reached(false);
            Err(err)
        }
    }
}

/// A refresh fails every tick while the database is away: one warning a
/// minute.
static GAUGES_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);

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
                    if let Some(suppressed) = GAUGES_FAILED.admit() {
                        tracing::warn!(error = %err, suppressed, "queue gauges not refreshed; next tick retries");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histogram samples are folded by a thread of the process, not only by
    /// a scrape: an unscraped process must not keep every sample.
    #[test]
    fn the_recorder_runs_its_upkeep_without_being_scraped() {
        let Some(_handle) = install() else {
            panic!("another recorder was installed first");
        };
        // A new thread names itself once it runs: look for a while (CI saw
        // the thread not yet named right after `install`).
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .filter_map(|t| t.ok())
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut names = threads();
        while !names.iter().any(|n| n == "metrics-upkeep") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            names = threads();
        }
        assert!(
            names.iter().any(|n| n == "metrics-upkeep"),
            "no upkeep thread among {names:?}"
        );
    }

    #[test]
    fn queue_gauges_are_left_out_while_the_database_is_down() {
        let depth = QueueDepth {
            due: 3,
            scheduled: 4,
            in_flight: 5,
            oldest: 6.5,
            open_destinations: 1,
        };
        let up = render_database_gauges(DatabaseGauges {
            up: true,
            depth: Some(depth),
        });
        assert!(up.contains("\npostback_database_up 1\n"), "{up}");
        assert!(
            up.contains("postback_queue_depth{state=\"due\"} 3\n"),
            "{up}"
        );
        assert!(
            up.contains("postback_queue_depth{state=\"in_flight\"} 5\n"),
            "{up}"
        );
        assert!(up.contains("\npostback_oldest_due_seconds 6.5\n"), "{up}");
        // Down: the last values must not be shown as if they were current.
        let down = render_database_gauges(DatabaseGauges {
            up: false,
            depth: Some(depth),
        });
        assert!(down.contains("\npostback_database_up 0\n"), "{down}");
        assert!(!down.contains("postback_queue_depth"), "{down}");
        assert!(!down.contains("postback_oldest_due_seconds"), "{down}");
        // Up again but not read yet: still out, never the stale values.
        let unread = render_database_gauges(DatabaseGauges {
            up: true,
            depth: None,
        });
        assert!(unread.contains("postback_database_up 1"), "{unread}");
        assert!(!unread.contains("postback_queue_depth"), "{unread}");
    }
}
