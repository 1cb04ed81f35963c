//! `postback serve`: API, workers and metrics in one process, on
//! `DATABASE_URL` or on the private PostgreSQL cluster.

use anyhow::Context;

use super::Failure;
use crate::config::Config;
use crate::runtime::{Process, Role};

/// Runs until SIGTERM/SIGINT, then shuts down cleanly and exits 0.
pub async fn run(config: Config) -> Result<(), Failure> {
    config.validate().map_err(Failure::usage)?;
    config.validate_api().map_err(Failure::usage)?;
    // Held to the end: dropping it writes out the lines still queued.
    let _log = super::init_logging(config.log_format, config.log_level.as_deref());
    let shutdown = super::shutdown_on_signals();
    let process = Process::start_until(config, Role::Serve, &shutdown)
        .await
        .map_err(super::start_failure)?;
    process.run(shutdown).await.context("serve failed")?;
    Ok(())
}
