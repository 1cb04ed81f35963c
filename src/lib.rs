//! # Postback
//!
//! A reliable outbound callback dispatcher for speech-to-text backends:
//! deliveries are queued in PostgreSQL, retried on the VoiceBase schedule,
//! sent signed from a fixed egress identity, watched in Prometheus, and
//! replayable by an operator. `docs/SPEC.md` (the product contract; "SPEC §n" below) names
//! every path, field, flag and metric.
//!
//! ## Layout
//!
//! Listed bottom-up: a module imports only modules of the rows above its
//! own, never one below (`tests/architecture.rs` checks the graph has no
//! cycle; `docs/architecture.md` walks one delivery through it).
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | leaf | [`state`] | the shared states: delivery state and kind, job status, attempt outcome |
//! | leaf | [`error`] | the library's error type |
//! | leaf | [`schedule`] | the retry schedule, one pure function |
//! | leaf | [`signing`] | Standard Webhooks signatures and callback JWTs |
//! | leaf | [`egress`] | outbound identity and the SSRF guard (names refusals with [`ErrorCode`]) |
//! | leaf | [`sealing`] | secrets at rest: AEAD sealing with `POSTBACK_SECRETS_KEY` |
//! | leaf | [`pgcluster`] | the private PostgreSQL cluster of `serve` |
//! | leaf | [`media`] | media files under `POSTBACK_MEDIA_ROOT`, opened once |
//! | leaf | [`throttle`] | rate-limiting repeated warnings of background loops |
//! | data | [`model`] | the wire types (jobs, callbacks, results, views) |
//! | data | [`config`] | every setting, from flags/env or code |
//! | data | [`store`] | PostgreSQL: schema, migrations, tables outside the hot path |
//! | data | [`render`] | callback bodies: analytics JSON, text, SubRip, WebVTT, DFXP |
//! | data | [`validate`] | refusing bad input with a message that says what to fix |
//! | queue | [`queue`] | the queue protocol: claim, lease, wake-up, capacity, handoff |
//! | queue | [`metrics`] | Prometheus names and the queue gauges |
//! | queue | [`events`] | operator events, queued as deliveries of their own |
//! | sides | [`intake`] | the library API that writes deliveries ([`Postback`]); never sends |
//! | sides | [`delivery`] | the engine: claim loop, HTTP attempt, batched completion ([`Dispatcher`]) |
//! | edges | [`runtime`] | assembling and stopping a process |
//! | edges | [`embed`] | [`Postback::builder`]: intake and workers on the caller's pool |
//! | edges | `api` | the HTTP API (feature `api`) |
//! | edges | `cli` | the `postback` command line (feature `cli`) |
//!
//! ## Embedding
//!
//! A backend that shares the database runs Postback in its own process
//! (SPEC §5): [`Postback::builder`] takes its pool, builds the intake
//! handle and the workers (signing with the given secret), and the
//! result is posted inside the backend's own transaction, so the result and
//! its callbacks commit together or not at all.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool, result: postback::JobResult) -> anyhow::Result<()> {
//! use std::time::Duration;
//!
//! let (postback, workers) = postback::Postback::builder(pool.clone())
//!     .signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
//!     .concurrency(64)
//!     .per_host_concurrency(8)
//!     .job_ttl(Duration::from_secs(3 * 86_400))
//!     .build() // checks every setting, migrates, loads the secret
//!     .await?
//!     .start(); // the workers run on this tokio runtime
//!
//! let mut tx = pool.begin().await?;
//! // … the backend's own writes on `&mut *tx` …
//! postback.post_result(&mut *tx, "job-1", result).await?;
//! tx.commit().await?; // the callbacks are queued with the commit
//!
//! workers.shutdown().await?; // drains the attempts in flight
//! # Ok(()) }
//! ```
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
pub mod embed;
pub mod error;
pub mod events;
pub mod intake;
pub mod media;
pub mod metrics;
pub mod model;
pub mod pgcluster;
pub mod queue;
pub mod render;
pub mod runtime;
pub mod schedule;
pub mod sealing;
pub mod signing;
pub mod state;
pub mod store;
pub mod throttle;
pub mod validate;

pub use config::Config;
pub use delivery::Dispatcher;
pub use embed::{BuildError, Builder, Embedded, Running, Workers};
pub use error::{Error, ErrorCode, Result};
pub use intake::Postback;
pub use model::{
    CallbackAuth, CallbackSpec, CallbackType, Include, JobError, JobOutput, JobResult, JobView,
    MediaStream, Method, NewDelivery, NewJob, Publish, ResultStatus, StreamName, Transcript,
    TranscriptFormat, Word,
};
pub use queue::Waker;
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
