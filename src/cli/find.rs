//! `postback deliveries list|show` and `postback replay` (SPEC §1): finding
//! deliveries and replaying them from the command line, straight on the
//! database (`DATABASE_URL`) so they work while the server is down.
//!
//! It owns the flags, the tables (times in RFC 3339) and the progress bar
//! on stderr; the filters, batching and rate are the library's
//! (`intake::find`), so the CLI and `POST /v1/replays` replay alike.

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::admin::{library, DbArgs};
use super::Failure;
use crate::config::parse_duration;
use crate::intake::{parse_host, parse_rate, parse_status, Postback, Progress, MAX_PAGE};
use crate::model::DeliverySummary;
use crate::state::DeliveryState;
use crate::store::find::{Key, Query};

/// Matches a replay may take without `--yes`.
pub const CONFIRM_ABOVE: u64 = 1000;

/// `postback deliveries …`.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List(ListArgs),
    /// One delivery with every attempt.
    Show(ShowArgs),
}

/// The filters `list` and `replay` share.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only deliveries created within this long (e.g. 2h, 3d).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only deliveries to this host (the name alone: no port, no path).
    #[arg(long, value_parser = parse_host)]
    host: Option<String>,
    /// Only deliveries of this job.
    #[arg(long)]
    job: Option<String>,
    /// Only deliveries of this customer.
    #[arg(long)]
    customer: Option<String>,
}

impl FilterArgs {
    fn given(&self) -> bool {
        self.since.is_some() || self.host.is_some() || self.job.is_some() || self.customer.is_some()
    }

    fn query(&self, status: Option<DeliveryState>) -> Query {
        Query {
            status,
            customer: self.customer.clone(),
            job: self.job.clone(),
            host: self.host.clone(),
            since: self.since.map(|d| OffsetDateTime::now_utc() - d),
            until: None,
            ids: None,
        }
    }
}

/// `deliveries list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// pending, delivering, delivered or failed.
    #[arg(long, value_parser = parse_status)]
    status: Option<DeliveryState>,
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many.
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
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
    #[command(flatten)]
    filter: FilterArgs,
    /// Print the matching deliveries and a count per host; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Spread the replayed deliveries at N per second (e.g. 50/s).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Replay at most this many (the oldest first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Replay more than 1,000 deliveries.
    #[arg(long)]
    yes: bool,
}

/// The `--status` of `replay`: only failed deliveries are replayed in bulk.
fn parse_replayable(raw: &str) -> Result<DeliveryState, String> {
    match parse_status(raw)? {
        DeliveryState::Failed => Ok(DeliveryState::Failed),
        other => Err(format!(
            "replay --status takes only failed (not {other}); replay other deliveries by id"
        )),
    }
}

fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| Failure::usage(anyhow!("{id:?} is not a delivery id (a UUID)")))
}

/// A time as the tables print it: RFC 3339, to the second, UTC.
fn rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

fn header() {
    println!(
        "{:<36}  {:<10}  {:>8}  {:<4}  {:<19}  {:<20}  URL",
        "DELIVERY", "STATUS", "ATTEMPTS", "LAST", "ERROR", "CREATED"
    );
}

fn line(d: &DeliverySummary) {
    println!(
        "{:<36}  {:<10}  {:>8}  {:<4}  {:<19}  {:<20}  {} {}",
        d.delivery_id,
        d.status,
        d.attempts,
        d.last_status_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        d.last_error.as_deref().unwrap_or("-"),
        rfc3339(d.created_at),
        d.method,
        d.url
    );
}

/// Prints up to `limit` deliveries of `q`, newest first, page by page (as
/// a table or JSON lines); returns how many and whether more matched.
async fn print_matching(
    lib: &Postback,
    pool: &PgPool,
    q: &Query,
    limit: u64,
    json: bool,
) -> Result<(u64, bool), Failure> {
    if !json {
        header();
    }
    let (mut printed, mut after): (u64, Option<Key>) = (0, None);
    loop {
        let want = (limit - printed).min(MAX_PAGE as u64) as i64;
        let page = lib
            .page(pool, q, after, want)
            .await
            .map_err(Failure::runtime)?;
        for d in &page.deliveries {
            if json {
                println!("{}", serde_json::to_string(d)?);
            } else {
                line(d);
            }
        }
        printed += page.deliveries.len() as u64;
        after = page.deliveries.last().map(|d| Key {
            created_at: d.created_at,
            id: d.delivery_id,
        });
        let more = page.next_cursor.is_some();
        if !more || printed >= limit {
            return Ok((printed, more));
        }
    }
}

/// `postback deliveries list|show`.
pub async fn deliveries(cmd: DeliveriesCommand) -> Result<(), Failure> {
    match cmd {
        DeliveriesCommand::Show(args) => show(args).await,
        DeliveriesCommand::List(args) => list(args).await,
    }
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    let lib = library(&args.db)?;
    let (pool, _) = args.db.connect().await?;
    let q = args.filter.query(args.status);
    let (printed, more) = print_matching(&lib, &pool, &q, args.limit, args.json).await?;
    if !args.json {
        println!("{printed} deliveries");
    }
    if more {
        eprintln!(
            "--limit {} cut the list: more deliveries match (raise --limit or narrow the filter)",
            args.limit
        );
    }
    Ok(())
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
    if let Some(customer) = &view.customer_id {
        println!("customer  {customer}");
    }
    if let Some(job) = &view.job_id {
        println!("job       {job}");
    }
    println!("type      {} ({})", view.kind, view.content_type);
    println!("target    {} {}", view.method, view.url);
    println!(
        "status    {} after {} attempt(s)",
        view.status, view.attempt_count
    );
    println!("queued    {}", rfc3339(view.queued_at));
    if let Some(next) = view.next_attempt_time {
        println!("next      {}", rfc3339(next));
    }
    if let Some(done) = view.completed_at {
        println!("completed {}", rfc3339(done));
    }
    for a in &view.attempts {
        println!(
            "  #{:<3} {}  {:>6} ms  {:<4} {}",
            a.attempt,
            rfc3339(a.started_at),
            a.duration_ms,
            a.status_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            a.error.as_deref().unwrap_or("ok")
        );
        if let Some(snippet) = a.response_snippet.as_deref().filter(|s| !s.is_empty()) {
            // One line per attempt: the snippet's own line breaks would
            // make it look like the next attempt.
            let flat: String = snippet
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            println!("        response: {}", flat.trim());
        }
    }
    Ok(())
}

/// `postback replay`.
pub async fn replay(args: ReplayArgs) -> Result<(), Failure> {
    if args.ids.is_empty() == args.status.is_none() {
        return Err(Failure::usage(anyhow!(
            "give delivery ids, or --status failed with optional --since/--host/--job/--customer (not both)"
        )));
    }
    if !args.ids.is_empty() && args.filter.given() {
        return Err(Failure::usage(anyhow!(
            "--since, --host, --job and --customer filter --status; they do not combine with ids"
        )));
    }
    let ids = args
        .ids
        .iter()
        .map(|i| parse_id(i))
        .collect::<Result<Vec<_>, _>>()?;
    let lib = library(&args.db)?;
    let (pool, _) = args.db.connect().await?;
    let mut q = args.filter.query(args.status);
    if !ids.is_empty() {
        q.ids = Some(ids.clone());
    }
    let cap = args.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    if args.dry_run {
        let (printed, _) =
            print_matching(&lib, &pool, &q, args.limit.unwrap_or(u64::MAX), false).await?;
        let hosts = lib
            .count_by_host(&pool, &q, cap)
            .await
            .map_err(Failure::runtime)?;
        println!();
        println!("{:>8}  HOST", "COUNT");
        for (host, n) in &hosts {
            println!("{n:>8}  {host}");
        }
        println!("would replay {printed} deliveries");
        return Ok(());
    }
    let matched = lib
        .count_matching(&pool, &q, cap)
        .await
        .map_err(Failure::runtime)?;
    // Every due time must be computable before anything is replayed: a rate
    // too slow to spread this many deliveries changes nothing.
    if let Some(rate) = args.rate {
        let n = matched.max(ids.len() as u64);
        let span = n.saturating_sub(1) as f64 / rate;
        if !span.is_finite() || span > crate::config::MAX_DURATION.as_secs_f64() {
            return Err(Failure::usage(anyhow!(
                "--rate {rate}/s: spreading {n} deliveries at that rate takes longer than 100 years; use a higher rate such as 1/s"
            )));
        }
    }
    if matched > CONFIRM_ABOVE && !args.yes {
        return Err(Failure::usage(anyhow!(
            "{matched} deliveries match: replaying more than {CONFIRM_ABOVE} needs --yes \
             (look first with --dry-run, or narrow with --limit, --since, --host, --customer)"
        )));
    }
    let bar = indicatif::ProgressBar::new(matched);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying {pos}/{len} [{bar:30}] {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let report = lib
        .replay_query(&pool, &q, cap, args.rate, false, |p: Progress| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        })
        .await
        .map_err(Failure::runtime)?;
    bar.finish_and_clear();
    println!("replayed {} deliveries", report.replayed);
    let missing = (ids.len() as u64).saturating_sub(report.matched);
    if report.skipped > 0 {
        eprintln!(
            "{} deliveries were being attempted right now (or expired); not replayed: replay them once the attempt ends",
            report.skipped
        );
    }
    if missing > 0 {
        eprintln!("{missing} of the ids name no delivery (or an expired one)");
    }
    if report.skipped + missing > 0 {
        return Err(Failure::runtime(anyhow!(
            "{} deliveries were not replayed",
            report.skipped + missing
        )));
    }
    Ok(())
}
