//! # Postback
//!
//! A reliable outbound callback dispatcher for speech-to-text backends:
//! deliveries are queued in PostgreSQL, retried on the VoiceBase schedule,
//! sent signed from a fixed egress identity, watched in Prometheus, and
//! replayable by an operator. `../SPEC.md` (the product contract) names
//! every path, field, flag and metric.
//!
//! ## Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`model`] | the wire types (jobs, callbacks, results, views) |
//! | [`validate`] | refusing bad input with a message that says what to fix |
//! | [`intake`] | the library API: jobs, results, generic deliveries, replay ([`Postback`]) |
//! | [`store`] | PostgreSQL: schema, migrations, the claim/complete queue |
//! | [`schedule`] | the retry schedule, one pure function |
//! | [`delivery`] | workers: claim, attempt over HTTP, batched completion ([`Dispatcher`]) |
//! | [`egress`] | outbound identity and the SSRF guard |
//! | [`signing`] | Standard Webhooks signatures and callback JWTs |
//! | [`render`] | callback bodies: analytics JSON, text, SubRip, WebVTT, DFXP |
//! | [`metrics`] | Prometheus names and the queue gauges |
//! | [`config`] | every setting, from flags/env or code |
//! | [`pgcluster`] | the private PostgreSQL cluster of `serve` |
//! | [`runtime`] | assembling and stopping a process |
//! | `api` | the HTTP API (feature `api`) |
//! | `cli` | the `postback` command line (feature `cli`) |
//!
//! ## Shutdown
//!
//! Every long-running part takes a `CancellationToken`: cancel it and the
//! API stops accepting, workers let attempts in flight finish and write
//! their outcomes, and the process exits 0.

#![deny(missing_docs)]

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod delivery;
pub mod egress;
pub mod error;
pub mod intake;
pub mod metrics;
pub mod model;
pub mod pgcluster;
pub mod render;
pub mod runtime;
pub mod schedule;
pub mod signing;
pub mod store;
pub mod validate;

pub use config::Config;
pub use delivery::Dispatcher;
pub use delivery::Waker;
pub use error::{Error, ErrorCode, Result};
pub use intake::Postback;
pub use model::{
    CallbackAuth, CallbackSpec, CallbackType, Include, JobError, JobOutput, JobResult, JobView,
    MediaStream, Method, NewDelivery, NewJob, Publish, ResultStatus, StreamName, Transcript,
    TranscriptFormat, Word,
};
pub use runtime::signing_secret;
pub use store::Schema;

/// Applies Postback's migrations in the default `postback` schema, on the
/// caller's own pool; the connection's `search_path` is left as it was, so
/// Postback's tables never mix with the caller's.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> postback::Result<()> {
/// postback::migrate(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &sqlx::PgPool) -> Result<()> {
    store::migrate(pool, &Schema::default()).await
}

/// [`migrate`] into another schema (see `Config::db_schema`).
pub async fn migrate_in(pool: &sqlx::PgPool, schema: &Schema) -> Result<()> {
    store::migrate(pool, schema).await
}
