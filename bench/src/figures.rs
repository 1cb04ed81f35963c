//! The names of the figures the scenarios record and the A/B mode
//! compares: one constant each, so the scenario that measures a figure and
//! the report that puts it against another never disagree on its name.

pub const CEILING_RATE: &str = "ceiling: bare HTTP req/s (closed loop)";
pub const CEILING_CPU: &str = "ceiling: load + receiver CPU µs per request";
pub const CEILING_P50: &str = "ceiling: bare round trip p50 at 100/s";
pub const CEILING_P99: &str = "ceiling: bare round trip p99 at 100/s";
pub const DRAIN_RATE: &str = "drain: deliveries/s";
pub const DRAIN_CPU_POSTBACK: &str = "drain: postback CPU µs per delivery";
pub const DRAIN_CPU_PG: &str = "drain: PostgreSQL CPU µs per delivery";
pub const DRAIN_WAL: &str = "drain: WAL bytes per delivery";
pub const INGEST_RATE: &str = "ingest: accepted req/s";
pub const INGEST_CPU_POSTBACK: &str = "ingest: postback CPU µs per request";
pub const INGEST_CPU_PG: &str = "ingest: PostgreSQL CPU µs per request";
pub const E2E_RATE: &str = "end to end: highest rate held, p99 < 50 ms";
pub const E2E_CPU_POSTBACK: &str = "end to end: postback CPU µs per delivery (top step)";
pub const E2E_CPU_PG: &str = "end to end: PostgreSQL CPU µs per delivery (top step)";
pub const LIGHT_P50: &str = "light 100/s: send→received p50";
pub const LIGHT_P99: &str = "light 100/s: send→received p99";
pub const LIGHT_CPU_POSTBACK: &str = "light 100/s: postback CPU µs per delivery";
pub const LIGHT_CPU_PG: &str = "light 100/s: PostgreSQL CPU µs per delivery";
pub const REPLAY_RATE: &str = "replay: failed deliveries replayed/s (postback replay)";
/// Scale-out figures, one set per worker count the scenario can record:
/// (workers, [deliveries/s, postback CPU µs per delivery of all workers
/// together, PostgreSQL CPU µs per delivery, WAL bytes per delivery]).
/// A `--scaleout-workers` count outside this table gets rows, no figures.
pub const SCALEOUT: [(usize, [&str; 4]); 5] = [
    (
        1,
        [
            "scaleout 1 worker: deliveries/s",
            "scaleout 1 worker: postback CPU µs per delivery (all workers)",
            "scaleout 1 worker: PostgreSQL CPU µs per delivery",
            "scaleout 1 worker: WAL bytes per delivery",
        ],
    ),
    (
        2,
        [
            "scaleout 2 workers: deliveries/s",
            "scaleout 2 workers: postback CPU µs per delivery (all workers)",
            "scaleout 2 workers: PostgreSQL CPU µs per delivery",
            "scaleout 2 workers: WAL bytes per delivery",
        ],
    ),
    (
        4,
        [
            "scaleout 4 workers: deliveries/s",
            "scaleout 4 workers: postback CPU µs per delivery (all workers)",
            "scaleout 4 workers: PostgreSQL CPU µs per delivery",
            "scaleout 4 workers: WAL bytes per delivery",
        ],
    ),
    (
        8,
        [
            "scaleout 8 workers: deliveries/s",
            "scaleout 8 workers: postback CPU µs per delivery (all workers)",
            "scaleout 8 workers: PostgreSQL CPU µs per delivery",
            "scaleout 8 workers: WAL bytes per delivery",
        ],
    ),
    (
        16,
        [
            "scaleout 16 workers: deliveries/s",
            "scaleout 16 workers: postback CPU µs per delivery (all workers)",
            "scaleout 16 workers: PostgreSQL CPU µs per delivery",
            "scaleout 16 workers: WAL bytes per delivery",
        ],
    ),
];
/// Duplicate callbacks over every scale-out step (must be 0).
pub const SCALEOUT_DUPLICATES: &str = "scaleout: duplicate callbacks, all steps";
