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
//! | edges | `api` | the HTTP API (feature `api`) |
//! | edges | `cli` | the `postback` command line (feature `cli`) |
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
