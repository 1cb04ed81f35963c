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
