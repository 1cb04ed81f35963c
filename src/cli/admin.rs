//! Admin commands that talk to the database directly (`DATABASE_URL`), so
//! they work while the server is down: `deliveries`, `replay`, `purge`,
//! `migrate`'s connection.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use sqlx::PgPool;
use uuid::Uuid;

use super::Failure;
use crate::config::{parse_duration, Config};
use crate::intake::Postback;
use crate::store::{self, Schema};

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding Postback's tables.
    #[arg(long, env = "POSTBACK_DB_SCHEMA", default_value = "postback")]
    db_schema: String,
}

impl DbArgs {
    /// Connects, or exits 2 when DATABASE_URL is missing.
    pub async fn connect(&self) -> Result<(PgPool, Schema), Failure> {
        let url = self.database_url.as_deref().ok_or_else(|| {
            Failure::usage(anyhow!(
                "DATABASE_URL is not set: set it to the database `postback serve` uses (serve prints it at start)"
            ))
        })?;
        let schema = Schema::new(self.db_schema.clone());
        let pool = store::connect(url, &schema, 2)
            .await
            .context("cannot connect to DATABASE_URL")?;
        Ok((pool, schema))
    }
}

/// `postback deliveries …`.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries.
    List(ListArgs),
    /// One delivery with every attempt.
    Show(ShowArgs),
}

/// Filters of `deliveries list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// pending, delivering, delivered or failed.
    #[arg(long, value_parser = ["pending", "delivering", "delivered", "failed"])]
    status: Option<String>,
    /// Only deliveries queued within this long (e.g. 2h, 3d).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only deliveries to this host.
    #[arg(long)]
    host: Option<String>,
    /// Only deliveries of this job.
    #[arg(long)]
    job: Option<String>,
    /// At most this many.
    #[arg(long, default_value = "100")]
    limit: i64,
    /// JSON lines for scripts.
    #[arg(long)]
    json: bool,
}

/// `deliveries show ID`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delivery id.
    id: String,
    /// JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delivery ids.
    ids: Vec<String>,
    /// Replay every delivery in this state (only `failed`).
    #[arg(long, value_parser = ["failed"])]
    status: Option<String>,
    /// With --status: only those queued within this long.
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// With --status: only those to this host.
    #[arg(long)]
    host: Option<String>,
    /// With --status: only those of this job.
    #[arg(long)]
    job: Option<String>,
    /// Print what would be replayed and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Spread the replayed deliveries at N per second (e.g. 50/s).
    #[arg(long)]
    rate: Option<String>,
}

/// `purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delete what is past its expiry.
    #[arg(long)]
    expired: bool,
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| Failure::usage(anyhow!("{id:?} is not a delivery id (a UUID)")))
}

fn library(db: &DbArgs) -> Postback {
    Postback::new(&Config {
        db_schema: db.db_schema.clone(),
        ..Config::default()
    })
}

/// `postback deliveries list|show`.
pub async fn deliveries(cmd: DeliveriesCommand) -> Result<(), Failure> {
    match cmd {
        DeliveriesCommand::Show(args) => {
            let id = parse_id(&args.id)?;
            let (pool, _) = args.db.connect().await?;
            let view = library(&args.db)
                .delivery(&pool, id)
                .await
                .map_err(|e| match e {
                    crate::Error::NotFound { .. } => Failure::runtime(e),
                    other => Failure::runtime(other),
                })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("delivery  {}", view.delivery_id);
                if let Some(job) = &view.job_id {
                    println!("job       {job}");
                }
                println!("type      {}", view.kind);
                println!("target    {} {}", view.method, view.url);
                println!(
                    "status    {} after {} attempt(s)",
                    view.status, view.attempt_count
                );
                if let Some(next) = view.next_attempt_time {
                    println!("next      {next}");
                }
                for a in &view.attempts {
                    println!(
                        "  #{:<3} {}  {:>6} ms  {:<4} {}",
                        a.attempt,
                        a.started_at,
                        a.duration_ms,
                        a.status_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        a.error.as_deref().unwrap_or("ok")
                    );
                }
            }
            Ok(())
        }
        DeliveriesCommand::List(args) => {
            let _ = (
                &args.status,
                args.since,
                &args.host,
                &args.job,
                args.limit,
                args.json,
            );
            let _ = args.db.connect().await?;
            Err(Failure::runtime(anyhow!(
                "`deliveries list` is not yet implemented"
            )))
        }
    }
}

/// `postback replay`.
pub async fn replay(args: ReplayArgs) -> Result<(), Failure> {
    if args.ids.is_empty() == args.status.is_none() {
        return Err(Failure::usage(anyhow!(
            "give delivery ids, or --status failed with optional filters (not both)"
        )));
    }
    if !args.ids.is_empty() && (args.since.is_some() || args.host.is_some() || args.job.is_some()) {
        return Err(Failure::usage(anyhow!(
            "--since, --host and --job filter --status; they do not combine with ids"
        )));
    }
    if args.status.is_some() || args.rate.is_some() {
        return Err(Failure::runtime(anyhow!(
            "`replay --status` and `--rate` are not yet implemented"
        )));
    }
    let ids = args
        .ids
        .iter()
        .map(|i| parse_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let (pool, _) = args.db.connect().await?;
    if args.dry_run {
        println!("would replay {} deliveries", ids.len());
        return Ok(());
    }
    let lib = library(&args.db);
    let mut replayed = 0;
    for id in ids {
        lib.replay(&pool, id).await.map_err(Failure::runtime)?;
        replayed += 1;
    }
    println!("replayed {replayed} deliveries");
    Ok(())
}

/// `postback purge`.
pub async fn purge(args: PurgeArgs) -> Result<(), Failure> {
    if !args.expired {
        return Err(Failure::usage(anyhow!("say what to purge: --expired")));
    }
    let _ = args.db.connect().await?;
    Err(Failure::runtime(anyhow!(
        "`purge --expired` is not yet implemented"
    )))
}
