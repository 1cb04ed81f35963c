//! `postback worker`: delivery workers only, for scaling out.

use anyhow::Context;

use super::Failure;
use crate::config::Config;
use crate::runtime::{Process, Role};

/// Runs workers until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), Failure> {
    config.validate().map_err(Failure::usage)?;
    if config.database_url.is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "DATABASE_URL is not set: `postback worker` joins the database of a `postback serve`; set DATABASE_URL to it"
        )));
    }
    if config.concurrency == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "POSTBACK_CONCURRENCY=0 leaves a worker with nothing to do; set it to 1 or more"
        )));
    }
    // Held to the end: dropping it writes out the lines still queued.
    let _log = super::init_logging(config.log_format, config.log_level.as_deref());
    let shutdown = super::shutdown_on_signals();
    let process = Process::start_until(config, Role::Worker, &shutdown)
        .await
        .map_err(super::start_failure)?;
    process.run(shutdown).await.context("worker failed")?;
    Ok(())
}
