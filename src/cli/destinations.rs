//! `postback destinations list [--state open] [--json]` and `postback
//! destinations reset ORIGIN`: the circuit breakers from a shell, through
//! the same library calls as the API.

use clap::{Args, Subcommand};

use super::admin::{library, DbArgs};
use super::Failure;

/// `postback destinations …`.
#[derive(Debug, Subcommand)]
pub enum DestinationsCommand {
    /// Circuit-breaker state per destination origin.
    List(ListArgs),
    /// Close an origin's breaker now: its waiting deliveries become due.
    Reset(ResetArgs),
}

/// `destinations list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only breakers in this state: open, half_open or closed.
    #[arg(long)]
    state: Option<String>,
    /// One JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

/// `destinations reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The origin, e.g. https://example.org:443.
    origin: String,
}

/// Runs `destinations …`.
pub async fn run(cmd: DestinationsCommand) -> Result<(), Failure> {
    match cmd {
        DestinationsCommand::List(args) => list(args).await,
        DestinationsCommand::Reset(args) => reset(args).await,
    }
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    let postback = library(&args.db)?;
    if let Some(state) = &args.state {
        crate::validate::breaker_state(state, "--state").map_err(Failure::usage)?;
    }
    let (pool, _) = args.db.connect().await?;
    let list = postback.destinations(&pool, args.state.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rfc = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "{:<40} {:<9} {:>8} {:<25} {:<25} last error",
        "origin", "state", "failures", "opened", "next probe"
    );
    for d in &list.destinations {
        println!(
            "{:<40} {:<9} {:>8} {:<25} {:<25} {}",
            d.origin,
            d.state,
            d.consecutive_failures,
            rfc(d.opened_at),
            rfc(d.next_probe_time),
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    println!("{} destination(s)", list.destinations.len());
    Ok(())
}

async fn reset(args: ResetArgs) -> Result<(), Failure> {
    let postback = library(&args.db)?;
    crate::validate::origin_filter(&args.origin, "ORIGIN").map_err(Failure::usage)?;
    let (pool, _) = args.db.connect().await?;
    let origin = postback
        .reset_destination(&pool, &args.origin)
        .await
        .map_err(|e| match e {
            crate::Error::NotFound { .. } => Failure::usage(e),
            other => Failure::runtime(other),
        })?;
    println!("closed the breaker of {origin}; its waiting deliveries are due now");
    Ok(())
}
