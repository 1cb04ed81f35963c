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
use crate::state::DeliveryState;
use crate::store::admin::Filter;
use crate::store::{self, Schema};

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding Postback's tables.
    #[arg(long, env = "POSTBACK_DB_SCHEMA", default_value = crate::config::defaults::DB_SCHEMA, value_parser = crate::config::parse_schema)]
    db_schema: Schema,
    /// Where `serve`'s private PostgreSQL cluster keeps its data (used when DATABASE_URL is unset).
    #[arg(long, env = "POSTBACK_DATA_DIR", default_value = crate::config::defaults::DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// Keys that seal stored secrets (the same list `serve` uses).
    #[arg(long, env = "POSTBACK_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
}

/// How long an admin command waits for an unreachable database (SPEC §1).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

impl DbArgs {
    /// `POSTBACK_SECRETS_KEY` as given.
    pub fn secrets_key(&self) -> Option<&str> {
        self.secrets_key.as_deref().filter(|k| !k.trim().is_empty())
    }

    /// Connects to DATABASE_URL, or without it to the private cluster of
    /// POSTBACK_DATA_DIR when one exists; exits 2 when there is neither,
    /// and gives up within [`CONNECT_LIMIT`] with the connection error.
    pub async fn connect(&self) -> Result<(PgPool, Schema), Failure> {
        let schema = self.db_schema.clone();
        let (url, what) = match self.database_url.as_deref() {
            Some(url) => {
                crate::config::check_database_url(url)
                    .map_err(|reason| Failure::usage(anyhow!("DATABASE_URL {reason}")))?;
                (url.to_owned(), "DATABASE_URL".to_owned())
            }
            None => match crate::pgcluster::existing_url(&self.data_dir) {
                Some(url) => (
                    url,
                    format!(
                        "the private PostgreSQL cluster under {} (POSTBACK_DATA_DIR; is `postback serve` running?)",
                        self.data_dir.display()
                    ),
                ),
                None => {
                    return Err(Failure::usage(anyhow!(
                        "DATABASE_URL is not set and there is no private cluster under {} (POSTBACK_DATA_DIR): \
                         set DATABASE_URL to the database `postback serve` uses (serve prints it at start)",
                        self.data_dir.display()
                    )))
                }
            },
        };
        let pool = store::connect_within(&url, &schema, 2, CONNECT_LIMIT)
            .await
            .with_context(|| format!("cannot connect to {what}"))?;
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
    #[arg(long, value_parser = parse_state)]
    status: Option<DeliveryState>,
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
    #[arg(long, value_parser = parse_replayable)]
    status: Option<DeliveryState>,
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

/// The library on the admin command's settings; a bad secrets key is
/// exit 2 naming it.
pub fn library(db: &DbArgs) -> Result<Postback, Failure> {
    Postback::new(&Config {
        db_schema: db.db_schema.clone(),
        secrets_key: db.secrets_key.clone(),
        ..Config::default()
    })
    .map_err(|e| Failure::usage(anyhow!("{e}")))
}

/// A `--status` value: one of the delivery states.
fn parse_state(raw: &str) -> Result<DeliveryState, String> {
    DeliveryState::parse(raw).ok_or_else(|| {
        let names: Vec<_> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
        format!(
            "{raw:?} is not a delivery state; use one of {}",
            names.join(", ")
        )
    })
}

/// The `--status` of `replay`: only failed deliveries are replayed in bulk.
fn parse_replayable(raw: &str) -> Result<DeliveryState, String> {
    match parse_state(raw)? {
        DeliveryState::Failed => Ok(DeliveryState::Failed),
        other => Err(format!(
            "replay --status takes only failed (not {other}); replay other deliveries by id"
        )),
    }
}

fn filter(
    status: Option<DeliveryState>,
    since: Option<Duration>,
    host: Option<String>,
    job: Option<String>,
    limit: i64,
) -> Filter {
    Filter {
        status,
        since,
        host,
        job,
        limit,
    }
}

/// When the `i`-th replayed delivery is due at `rate` per second from
/// `start`; `None` when that is too far to compute with.
fn due_time(
    start: time::OffsetDateTime,
    rate: Option<f64>,
    i: usize,
) -> Option<time::OffsetDateTime> {
    let Some(rate) = rate else {
        return Some(start);
    };
    let offset = Duration::try_from_secs_f64(i as f64 / rate).ok()?;
    if offset > crate::config::MAX_DURATION {
        return None;
    }
    start.checked_add(time::Duration::try_from(offset).ok()?)
}

/// `N/s` or `N` (deliveries per second), N > 0.
fn parse_rate(raw: &str) -> Result<f64, Failure> {
    let number = raw.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(Failure::usage(anyhow!(
            "--rate {raw:?} is not a rate; use deliveries per second such as 50/s"
        ))),
    }
}

/// `postback deliveries list|show`.
pub async fn deliveries(cmd: DeliveriesCommand) -> Result<(), Failure> {
    match cmd {
        DeliveriesCommand::Show(args) => show(args).await,
        DeliveriesCommand::List(args) => list(args).await,
    }
}

async fn show(args: ShowArgs) -> Result<(), Failure> {
    let id = parse_id(&args.id)?;
    let (pool, _) = args.db.connect().await?;
    let view = library(&args.db)?
        .delivery(&pool, id)
        .await
        .map_err(Failure::runtime)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("delivery  {}", view.delivery_id);
    if let Some(job) = &view.job_id {
        println!("job       {job}");
    }
    println!("type      {} ({})", view.kind, view.content_type);
    println!("target    {} {}", view.method, view.url);
    println!(
        "status    {} after {} attempt(s)",
        view.status, view.attempt_count
    );
    println!("queued    {}", view.queued_at);
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
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    if args.limit <= 0 {
        return Err(Failure::usage(anyhow!("--limit must be at least 1")));
    }
    let (pool, schema) = args.db.connect().await?;
    let f = filter(args.status, args.since, args.host, args.job, args.limit);
    let lines = store::admin::list(&pool, &schema, &f)
        .await
        .map_err(Failure::runtime)?;
    if args.json {
        for line in &lines {
            println!("{}", serde_json::to_string(line)?);
        }
        return Ok(());
    }
    println!(
        "{:<36}  {:<10}  {:>8}  {:<4}  {:<19}  URL",
        "DELIVERY", "STATUS", "ATTEMPTS", "LAST", "ERROR"
    );
    for l in &lines {
        println!(
            "{:<36}  {:<10}  {:>8}  {:<4}  {:<19}  {} {}",
            l.delivery_id,
            l.status,
            l.attempts,
            l.last_status_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            l.last_error.as_deref().unwrap_or("-"),
            l.method,
            l.url
        );
    }
    println!("{} deliveries", lines.len());
    Ok(())
}

/// `postback replay`.
pub async fn replay(args: ReplayArgs) -> Result<(), Failure> {
    if args.ids.is_empty() == args.status.is_none() {
        return Err(Failure::usage(anyhow!(
            "give delivery ids, or --status failed with optional --since/--host/--job (not both)"
        )));
    }
    if !args.ids.is_empty() && (args.since.is_some() || args.host.is_some() || args.job.is_some()) {
        return Err(Failure::usage(anyhow!(
            "--since, --host and --job filter --status; they do not combine with ids"
        )));
    }
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    let ids = args
        .ids
        .iter()
        .map(|i| parse_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let (pool, schema) = args.db.connect().await?;
    let ids = if ids.is_empty() {
        let f = filter(args.status, args.since, args.host, args.job, i64::MAX);
        store::admin::select_ids(&pool, &schema, &f)
            .await
            .map_err(Failure::runtime)?
    } else {
        ids
    };
    if args.dry_run {
        for id in &ids {
            println!("{id}");
        }
        println!("would replay {} deliveries", ids.len());
        return Ok(());
    }
    // The due times are compared with the database's clock: start from it.
    let start: time::OffsetDateTime = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .map_err(|e| Failure::runtime(crate::error::Error::from(e)))?;
    // --rate spreads the due times, so the workers (not this command) pace
    // the recovering receiver, and the command returns at once. Every due
    // time is computed before anything is replayed: a rate too slow to
    // schedule changes nothing.
    let dues = ids
        .iter()
        .enumerate()
        .map(|(i, _)| due_time(start, rate, i))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            Failure::usage(anyhow!(
                "--rate {}: spreading {} deliveries at that rate takes longer than 100 years; use a higher rate such as 1/s",
                args.rate.as_deref().unwrap_or_default(),
                ids.len()
            ))
        })?;
    let mut replayed = 0usize;
    let mut problems = Vec::new();
    for (id, due) in ids.iter().zip(dues) {
        let outcome = store::deliveries::replay(&pool, &schema, *id, Some(due))
            .await
            .map_err(Failure::runtime)?;
        match outcome {
            store::deliveries::Replayed::Queued => replayed += 1,
            store::deliveries::Replayed::InFlight => {
                problems.push(format!("{id}: being attempted right now; not replayed"))
            }
            store::deliveries::Replayed::Missing => {
                problems.push(format!("{id}: no such delivery (or expired)"))
            }
        }
    }
    if replayed > 0 {
        let mut conn = pool.acquire().await?;
        crate::intake::notify_workers(&mut conn)
            .await
            .map_err(Failure::runtime)?;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    println!("replayed {replayed} deliveries");
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(anyhow!(
            "{} deliveries were not replayed",
            problems.len()
        )))
    }
}

/// `postback purge`.
pub async fn purge(args: PurgeArgs) -> Result<(), Failure> {
    if !args.expired {
        return Err(Failure::usage(anyhow!("say what to purge: --expired")));
    }
    let (pool, schema) = args.db.connect().await?;
    let purged = store::admin::purge_expired(&pool, &schema, 1000)
        .await
        .map_err(Failure::runtime)?;
    println!(
        "purged {} expired jobs and {} expired deliveries",
        purged.jobs, purged.deliveries
    );
    Ok(())
}
