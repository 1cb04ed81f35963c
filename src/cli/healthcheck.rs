//! `postback healthcheck [--url U]` (SPEC §1): exit 0 when `GET /readyz`
//! of a local `serve` answers 200, 1 otherwise, for container
//! HEALTHCHECKs in images without curl. It must not need a database or a
//! token.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::Failure;

/// How long the check waits for the answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the `serve` to check.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
}

/// Runs `healthcheck`.
pub async fn run(args: HealthcheckArgs) -> Result<(), Failure> {
    let base = url::Url::parse(&args.url)
        .map_err(|e| Failure::usage(anyhow!("--url {:?}: {e}; use http://host:port", args.url)))?;
    let ready = base
        .join("/readyz")
        .map_err(|e| Failure::usage(anyhow!("--url {:?}: {e}", args.url)))?;
    let client = reqwest::Client::builder()
        .timeout(CHECK_TIMEOUT)
        .build()
        .map_err(Failure::runtime)?;
    match client.get(ready.clone()).send().await {
        Ok(r) if r.status().as_u16() == 200 => {
            println!("ok: {ready} answered 200");
            Ok(())
        }
        Ok(r) => Err(Failure::runtime(anyhow!("{ready} answered {}", r.status()))),
        Err(err) => Err(Failure::runtime(anyhow!("{ready}: {err}"))),
    }
}
