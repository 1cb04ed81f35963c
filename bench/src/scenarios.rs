//! The six scenarios of issue 8. Each one gets a fresh database, its own
//! receiver and its own `postback` child, prints its figures as it goes,
//! adds its rows to the report, and stops what it started (the guards do
//! it on error too).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use postback::store::Schema;
use postback_test_support::fast::FastReceiver as Receiver;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ceiling::millis;
use crate::figures as f;
use crate::harness::{free_port, wait_ready, Child, Cpu, Mem, Pg};
use crate::load::{self, ms, Api, Summary};
use crate::report::{thousands, Better, Report};

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub drain_n: u64,
    pub backlog_n: u64,
    /// Failed deliveries the `replay` scenario replays.
    pub replay_n: u64,
    pub ingest_window: Duration,
    pub ingest_clients: usize,
    pub step: Duration,
    pub light_window: Duration,
    pub media_bytes: u64,
    pub concurrency: usize,
    pub per_host: usize,
    /// Every delivery names the customer [`BENCH_CUSTOMER`] (signed with
    /// its secret through the per-process cache).
    pub customer: bool,
    /// Worker counts of the scale-out steps, in order.
    pub scaleout_workers: Vec<usize>,
    /// Every scale-out worker gets the full `concurrency` (not a share).
    pub scaleout_same_concurrency: bool,
    /// Length of the soak's load.
    pub soak_duration: Duration,
    /// Deliveries/s the soak offers.
    pub soak_rate: f64,
}

/// The customer of `--customer` runs.
pub const BENCH_CUSTOMER: &str = "bench";

/// Creates [`BENCH_CUSTOMER`] with a secret in the migrated database at
/// `url` (directly in SQL: the drain queues its rows before any API runs).
async fn create_bench_customer(url: &str) -> anyhow::Result<()> {
    let schema = Schema::default();
    let pool = postback::store::connect(url, &schema, 1).await?;
    let secret = postback::signing::SigningSecret::generate().as_whsec();
    sqlx::query(
        "WITH c AS (INSERT INTO postback.customers (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id)
         INSERT INTO postback.customer_secrets (customer_id, secret) SELECT id, $2 FROM c",
    )
    .bind(BENCH_CUSTOMER)
    .bind(secret)
    .execute(&pool)
    .await
    .context("create the bench customer")?;
    pool.close().await;
    Ok(())
}

impl Plan {
    /// The customer every delivery names, if any.
    pub fn customer(&self) -> Option<&'static str> {
        self.customer.then_some(BENCH_CUSTOMER)
    }
}

/// What every scenario shares.
pub struct Ctx {
    pub plan: Plan,
    pub bin: PathBuf,
    pub pg: Pg,
    pub dir: PathBuf,
    pub token: String,
}

/// Offered rates of the end-to-end steps (deliveries/s).
const RATES: [f64; 16] = [
    500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 12000.0,
    14000.0, 16000.0, 20000.0, 24000.0, 28000.0,
];
/// Requests one open-loop generator keeps waiting at most.
const MAX_IN_FLIGHT: usize = 2048;
/// Body of the callbacks (drain) and of the API requests (ingest, e2e).
pub const BODY_BYTES: usize = 1024;
/// A step holds only while its p99 stays under this (no queue building up).
const STEADY_P99: Duration = Duration::from_secs(1);
const E2E_P99_TARGET: Duration = Duration::from_millis(50);
/// How long `postback` gets to exit after SIGTERM.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(60);

impl Ctx {
    fn env(&self, db_url: &str, concurrency: usize) -> Vec<(String, String)> {
        let mut env = vec![
            ("DATABASE_URL".into(), db_url.into()),
            ("POSTBACK_API_TOKEN".into(), self.token.clone()),
            ("POSTBACK_EGRESS_ALLOW".into(), "127.0.0.0/8".into()),
            ("POSTBACK_CONCURRENCY".into(), concurrency.to_string()),
            (
                "POSTBACK_PER_HOST_CONCURRENCY".into(),
                self.plan.per_host.to_string(),
            ),
        ];
        if self.plan.customer {
            // Every delivery is the one customer's, as every one goes to the
            // one receiver host: its limit is the process's, like the host's.
            env.push((
                "POSTBACK_PER_CUSTOMER_CONCURRENCY".into(),
                self.plan.per_host.to_string(),
            ));
        }
        env
    }

    /// `postback serve` on `db_url`, ready (`/readyz` 200); its base URL.
    pub(crate) async fn serve(
        &self,
        name: &str,
        db_url: &str,
        concurrency: usize,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(Child, String)> {
        let port = free_port()?;
        let mut env = self.env(db_url, concurrency);
        env.push(("POSTBACK_LISTEN".into(), format!("127.0.0.1:{port}")));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = self.dir.join(format!("{name}-serve.log"));
        let mut child = Child::spawn(
            &format!("postback serve ({name})"),
            &self.bin,
            "serve",
            &env,
            log,
        )?;
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&mut child, &base).await?;
        Ok((child, base))
    }

    /// CPU used so far by `child`, PostgreSQL and the bench.
    fn cpu(&self, child: &Child) -> Cpu {
        Cpu::now(Some(child.pid()), &self.dir.join("pg").join("data"))
    }

    /// `postback migrate` on `db_url`, to completion (bounded).
    pub(crate) async fn migrate(&self, db_url: &str) -> anyhow::Result<()> {
        let run = tokio::process::Command::new(&self.bin)
            .arg("migrate")
            .env("DATABASE_URL", db_url)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .context("postback migrate did not finish within 120 s")?
            .context("run postback migrate")?;
        if !out.status.success() {
            bail!(
                "postback migrate failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `postback worker` with POSTBACK_CONCURRENCY=`concurrency` and
    /// `extra` on top of the bench's settings.
    pub(crate) fn worker(
        &self,
        name: &str,
        db_url: &str,
        concurrency: usize,
        extra: &[(String, String)],
    ) -> anyhow::Result<Child> {
        let mut env = self.env(db_url, concurrency);
        env.extend_from_slice(extra);
        let log = self.dir.join(format!("{name}-worker.log"));
        Child::spawn(
            &format!("postback worker ({name})"),
            &self.bin,
            "worker",
            &env,
            log,
        )
    }
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn record_serve_peak(report: &mut Report, scenario: &str, mem: Option<Mem>) {
    if let Some(m) = mem {
        println!(
            "  serve memory: peak RSS (VmHWM) {:.1} MiB, RSS at the end {:.1} MiB",
            mib(m.hwm_kib),
            mib(m.rss_kib)
        );
        report.serve_peaks.push((scenario.to_owned(), m.hwm_kib));
    }
}

/// A JSON document of exactly `size` bytes (what a callback carries).
fn callback_body(size: usize) -> Vec<u8> {
    let head = r#"{"source":"postback-bench","pad":""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

/// Queues `n` deliveries to `url` straight into the tables (what the API
/// would have written), in batches; due now, or spread over 1 to 11
/// hours from now when `future`.
async fn bulk_insert(
    pool: &PgPool,
    n: u64,
    url: &str,
    body: &[u8],
    future: bool,
    customer: Option<&str>,
) -> anyhow::Result<()> {
    const BATCH: u64 = 20_000;
    let (offset, spread) = if future {
        (3600.0f64, 36_000i64)
    } else {
        (0.0, 1)
    };
    // The columns differ between the binaries an A/B run compares (the
    // drain's database is migrated by the binary under test): write the
    // ones this schema has, as that binary's intake would.
    let has = |table: &'static str, column: &'static str| async move {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = 'postback' AND table_name = $1 AND column_name = $2)",
        )
        .bind(table)
        .bind(column)
        .fetch_one(pool)
        .await
    };
    // Customers and breaker origins: 20261202000300 and 000500.
    let with_customer = customer.is_some() || has("deliveries", "customer_id").await?;
    let with_origin = has("deliveries", "origin").await?;
    // The listing columns on payloads: 20261202000600.
    let listing_on_payloads = has("payloads", "host").await?;
    let (mut cols, mut vals) = (String::new(), String::new());
    if with_customer {
        cols.push_str(", customer_id");
        vals.push_str(", $6");
    }
    if with_origin {
        cols.push_str(", origin");
        vals.push_str(", $7");
    }
    let payload_insert = if listing_on_payloads {
        "INSERT INTO postback.payloads (delivery_id, content_type, headers, body, host, customer_id)
         SELECT id, 'application/json', '{}'::jsonb, $3, host, $6 FROM d"
    } else {
        "INSERT INTO postback.payloads (delivery_id, content_type, headers, body)
         SELECT id, 'application/json', '{}'::jsonb, $3 FROM d"
    };
    let origin = postback::validate::origin(url);
    let mut done = 0;
    while done < n {
        let k = BATCH.min(n - done);
        let ids: Vec<Uuid> = (0..k).map(|_| Uuid::now_v7()).collect();
        sqlx::query(&format!(
            "WITH d AS (
                 INSERT INTO postback.deliveries (id, kind, method, url, host, next_attempt_at, expires_at{cols})
                 SELECT t.id, 'generic', 'POST', $2, '127.0.0.1',
                        now() + make_interval(secs => $4::float8 + (t.ord % $5::bigint)),
                        now() + interval '7 days'{vals}
                 FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, ord)
                 RETURNING id, host)
             {payload_insert}"
        ))
        .bind(&ids)
        .bind(url)
        .bind(body)
        .bind(offset)
        .bind(spread)
        .bind(customer)
        .bind(&origin)
        .execute(pool)
        .await
        .context("bulk insert")?;
        done += k;
    }
    Ok(())
}

/// Figures of one drain.
pub(crate) struct Drain {
    pub rate: f64,
    pub elapsed: Duration,
    /// CPU µs per delivery: postback (all workers), PostgreSQL.
    pub cpu_us: (f64, f64),
    pub wal_per_delivery: f64,
    /// Callbacks the receiver saw more than once.
    pub duplicates: u64,
    /// Deliveries each worker completed as delivered, from its
    /// `/metrics` (only with [`Workers::metrics`]).
    pub shares: Option<Vec<u64>>,
}

/// The `postback worker` processes that work one drain.
pub(crate) struct Workers {
    /// How many are started together.
    pub count: usize,
    /// POSTBACK_CONCURRENCY of each.
    pub concurrency: usize,
    /// Each serves `/metrics` on its own port (POSTBACK_METRICS_LISTEN),
    /// read once at the end for its share of the deliveries.
    pub metrics: bool,
}

impl Workers {
    /// One worker with the bench's concurrency, no metrics listener: the
    /// `drain` and `backlog` scenarios.
    fn one(plan: &Plan) -> Workers {
        Workers {
            count: 1,
            concurrency: plan.concurrency,
            metrics: false,
        }
    }
}

/// `n` due deliveries (behind `backlog` future ones) queued with no worker,
/// then `workers` started together: the rate from the first callback
/// received to the last.
pub(crate) async fn drain_run(
    ctx: &Ctx,
    report: &mut Report,
    db: &str,
    n: u64,
    backlog: u64,
    workers: &Workers,
) -> anyhow::Result<Drain> {
    let url = ctx.pg.fresh_db(db).await?;
    let schema = Schema::default();
    let pool = postback::store::connect(&url, &schema, 4).await?;
    // Migrated by the binary under test (in A/B runs the two binaries may
    // have different schemas).
    ctx.migrate(&url).await?;
    if ctx.plan.customer {
        create_bench_customer(&url).await?;
    }
    let rx = Receiver::start().await?;
    let target = rx.url("/drain");
    let body = callback_body(BODY_BYTES);
    if backlog > 0 {
        let t = Instant::now();
        bulk_insert(&pool, backlog, &target, &body, true, ctx.plan.customer()).await?;
        println!(
            "  queued {} deliveries due in 1 to 11 hours ({:.1} s)",
            thousands(backlog as f64),
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    bulk_insert(&pool, n, &target, &body, false, ctx.plan.customer()).await?;
    println!(
        "  queued {} due deliveries of {BODY_BYTES} bytes ({:.1} s)",
        thousands(n as f64),
        t.elapsed().as_secs_f64()
    );
    // Both drains start from the same state: statistics and hint bits set,
    // no checkpoint owed from the load.
    sqlx::query("VACUUM (ANALYZE) postback.deliveries, postback.payloads")
        .execute(&pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(ctx.pg.admin()).await?;
    pool.close().await;

    let before = ctx.pg.probe().await?;
    let mut started_workers = Vec::with_capacity(workers.count);
    for i in 0..workers.count.max(1) {
        let (name, extra) = if workers.metrics {
            let port = free_port()?;
            let listen = format!("127.0.0.1:{port}");
            let extra = vec![("POSTBACK_METRICS_LISTEN".to_owned(), listen.clone())];
            (format!("{db}-{i}"), Some((extra, listen)))
        } else {
            (db.to_owned(), None)
        };
        let env = extra.as_ref().map_or(&[][..], |(e, _)| e.as_slice());
        let child = ctx.worker(&name, &url, workers.concurrency, env)?;
        started_workers.push((child, extra.map(|(_, listen)| listen)));
    }
    let started = Instant::now();
    let pids: Vec<u32> = started_workers.iter().map(|(c, _)| c.pid()).collect();
    let pg_data = ctx.dir.join("pg").join("data");
    let cpu0 = Cpu::now_many(&pids, &pg_data);
    let waits = ctx.pg.sample_waits(db);
    let until = started + Duration::from_secs(120) + Duration::from_millis(n * 5);
    let mut next_report = started + Duration::from_secs(5);
    loop {
        let got = rx.unique();
        if got >= n {
            break;
        }
        let now = Instant::now();
        if now >= until {
            bail!(
                "only {got} of {n} deliveries arrived within {:?}",
                until - started
            );
        }
        if now >= next_report {
            println!(
                "  … {} of {} delivered",
                thousands(got as f64),
                thousands(n as f64)
            );
            next_report = now + Duration::from_secs(5);
        }
        for (worker, _) in &mut started_workers {
            worker.ensure_running()?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = Cpu::now_many(&pids, &pg_data).since(&cpu0);
    let waits = waits.finish().await;
    let (first, last) = rx.span().context("no arrivals")?;
    let elapsed = last - first;
    let rate = (n.saturating_sub(1)) as f64 / elapsed.as_secs_f64().max(1e-9);
    let shares = if workers.metrics {
        Some(worker_shares(&started_workers, n).await?)
    } else {
        None
    };
    let mut peak_kib = None;
    for (worker, _) in started_workers {
        let mem = worker.stop(STOP_GRACE).await?;
        peak_kib = peak_kib.max(mem.map(|m| m.hwm_kib));
    }
    let after = ctx.pg.probe().await?;
    let (wal, commits) = ctx.pg.delta(&before, &after).await?;
    let pool = postback::store::connect(&url, &schema, 1).await?;
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = 'delivered'")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    println!(
        "  {} delivered in {:.2} s (first to last callback): {} deliveries/s; worker start to first callback {}",
        thousands(n as f64),
        elapsed.as_secs_f64(),
        thousands(rate),
        ms(first.saturating_duration_since(started))
    );
    let detail = format!(
        "{db}: {:.0} WAL bytes and {:.3} write transactions per delivery; {} duplicates; worker peak RSS {}; {} rows marked delivered",
        wal / n as f64,
        commits as f64 / n as f64,
        rx.duplicates(),
        peak_kib.map_or("?".into(), |k| format!("{:.1} MiB", mib(k))),
        thousands(delivered as f64),
    );
    println!("  {detail}\n  {cpu}\n  {waits}");
    report.detail(format!("{detail}; {cpu}; {waits}"));
    if rx.without_id() > 0 {
        report.detail(format!(
            "{db}: WARNING: {} callbacks arrived without a webhook-id",
            rx.without_id()
        ));
    }
    if delivered as u64 != n {
        report.detail(format!(
            "{db}: WARNING: {delivered} rows are `delivered` after the worker stopped, expected {n}"
        ));
    }
    let duplicates = rx.duplicates();
    rx.stop().await;
    ctx.pg.drop_db(db).await;
    let (postback_us, pg_us, _) = cpu.per(n);
    Ok(Drain {
        rate,
        elapsed,
        cpu_us: (postback_us, pg_us),
        wal_per_delivery: wal / n as f64,
        duplicates,
        shares,
    })
}

/// How many deliveries each worker completed as delivered, read from its
/// `/metrics`; polled (at most 10 s) until they add up to `n`, because a
/// worker counts a completion after its batch commits, which can be just
/// after the receiver saw the callback.
async fn worker_shares(workers: &[(Child, Option<String>)], n: u64) -> anyhow::Result<Vec<u64>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut shares = Vec::with_capacity(workers.len());
        for (worker, listen) in workers {
            let listen = listen
                .as_deref()
                .with_context(|| format!("{} has no metrics listener", worker.name()))?;
            let text = http
                .get(format!("http://{listen}/metrics"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("GET /metrics of {}", worker.name()))?
                .text()
                .await?;
            shares.push(crate::scaleout::delivered_count(&text).unwrap_or(0));
        }
        if shares.iter().sum::<u64>() >= n || Instant::now() >= until {
            return Ok(shares);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 1. drain.
pub async fn drain(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.plan.drain_n;
    let d = drain_run(ctx, report, "bench_drain", n, 0, &Workers::one(&ctx.plan)).await?;
    report.empty_drain_rate = Some(d.rate);
    report.figure(f::DRAIN_RATE, d.rate, "/s", Better::Higher);
    report.figure(f::DRAIN_CPU_POSTBACK, d.cpu_us.0, "µs", Better::Lower);
    report.figure(f::DRAIN_CPU_PG, d.cpu_us.1, "µs", Better::Lower);
    report.figure(f::DRAIN_WAL, d.wal_per_delivery, "B", Better::Lower);
    report.row(
        "drain: CPU per delivery, postback / PostgreSQL",
        format!("{:.1} / {:.1} µs", d.cpu_us.0, d.cpu_us.1),
        "",
        None,
    );
    report.row(
        format!(
            "drain: {} queued, then `postback worker`",
            thousands(n as f64)
        ),
        format!(
            "{} deliveries/s ({:.2} s)",
            thousands(d.rate),
            d.elapsed.as_secs_f64()
        ),
        "≥ 10,000/s",
        Some(d.rate >= 10_000.0),
    );
    Ok(())
}

/// 2. ingest.
pub async fn ingest(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = "bench_ingest";
    let url = ctx.pg.fresh_db(db).await?;
    let (mut serve, base) = ctx.serve(db, &url, 0, &[]).await?;
    if ctx.plan.customer {
        create_bench_customer(&url).await?;
    }
    let clients = ctx.plan.ingest_clients;
    let api = Api::new(&base, &ctx.token, 4)?;
    // Never delivered (no workers); port 9 is discard.
    let body = load::delivery_body("http://127.0.0.1:9/ingest", BODY_BYTES, ctx.plan.customer());
    println!(
        "  {clients} clients on 4 keep-alive connection pools, {BODY_BYTES}-byte bodies, 1 s warm-up then {} s",
        ctx.plan.ingest_window.as_secs()
    );
    let cpu0 = ctx.cpu(&serve);
    let waits = ctx.pg.sample_waits(db);
    let res = load::closed_loop(
        &api,
        body,
        clients,
        Duration::from_secs(1),
        ctx.plan.ingest_window,
    )
    .await;
    let cpu = ctx.cpu(&serve).since(&cpu0);
    let waits = waits.finish().await;
    serve.ensure_running()?;
    let mem = serve.stop(STOP_GRACE).await?;
    let rate = res.ok as f64 / res.window.as_secs_f64();
    let s = Summary::of(res.latencies);
    println!(
        "  {} accepted/s; response p50 {} p99 {} max {}; {} errors{}",
        thousands(rate),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        res.errors,
        res.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let (postback_us, pg_us, _) = cpu.per(res.ok_total);
    println!(
        "  {cpu} (warm-up included): postback {postback_us:.1} µs, PostgreSQL {pg_us:.1} µs per accepted request\n  {waits}"
    );
    report.figure(f::INGEST_RATE, rate, "req/s", Better::Higher);
    report.figure(f::INGEST_CPU_POSTBACK, postback_us, "µs", Better::Lower);
    report.figure(f::INGEST_CPU_PG, pg_us, "µs", Better::Lower);
    report.detail(format!("ingest: {cpu} (warm-up included); {waits}"));
    record_serve_peak(report, "ingest", mem);
    let pool = postback::store::connect(&url, &Schema::default(), 1).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    if stored as u64 != res.ok_total {
        report.detail(format!(
            "ingest: WARNING: {} requests were accepted but {stored} deliveries are stored",
            res.ok_total
        ));
    }
    report.row(
        format!("ingest: POST /v1/deliveries, {clients} clients, 1 KiB"),
        format!("{} req/s", thousands(rate)),
        "≥ 8,000 req/s",
        Some(rate >= 8_000.0 && res.errors == 0),
    );
    report.row(
        "ingest: response time p50 / p99",
        format!("{} / {}", ms(s.p50), ms(s.p99)),
        "",
        None,
    );
    if res.errors > 0 {
        report.detail(format!(
            "ingest: {} requests failed (first: {})",
            res.errors,
            res.first_error.unwrap_or_default()
        ));
    }
    ctx.pg.drop_db(db).await;
    Ok(())
}

/// One open-loop step measured end to end.
struct Step {
    rate: f64,
    accepted: usize,
    latency: Summary,
    response: Summary,
    holds: bool,
    why: String,
    cpu: String,
    /// CPU µs per accepted delivery: postback, PostgreSQL.
    cpu_us: (f64, f64),
}

/// Offers `rate` for `duration` and measures send → received of every
/// accepted delivery; `seen_before` is the receiver's count before.
/// What an open-loop step drives and watches.
struct Rig<'a> {
    db: &'a str,
    api: &'a Api,
    rx: &'a Receiver,
    body: &'a bytes::Bytes,
}

async fn step(
    ctx: &Ctx,
    rig: &Rig<'_>,
    serve: &mut Child,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Step> {
    let Rig { db, api, rx, body } = *rig;
    let seen_before = rx.unique();
    let cpu0 = ctx.cpu(serve);
    let probe0 = ctx.pg.probe().await?;
    let waits = ctx.pg.sample_waits(db);
    let res = load::open_loop(api, body.clone(), rate, duration, MAX_IN_FLIGHT).await;
    let expect = seen_before + res.accepted.len() as u64;
    let all = rx
        .wait_for(expect, Instant::now() + Duration::from_secs(5), || {
            serve.ensure_running()
        })
        .await?;
    let cpu = ctx.cpu(serve).since(&cpu0);
    let (postback_us, pg_us, _) = cpu.per(res.accepted.len() as u64);
    let waits = waits.finish().await;
    let (wal, commits) = ctx.pg.delta(&probe0, &ctx.pg.probe().await?).await?;
    let per = res.accepted.len().max(1) as f64;
    let cpu = format!(
        "{cpu}; {:.0} WAL bytes and {:.2} write transactions per delivery; {waits}",
        wal / per,
        commits as f64 / per
    );
    let mut lat = Vec::with_capacity(res.accepted.len());
    let mut missing = 0usize;
    for (id, sent) in &res.accepted {
        match rx.arrival(*id) {
            Some(at) => lat.push(at.saturating_duration_since(*sent)),
            None => missing += 1,
        }
    }
    let latency = Summary::of(lat);
    let response = Summary::of(res.response);
    let mut why = Vec::new();
    if res.errors > 0 {
        why.push(format!(
            "{} requests failed (first: {})",
            res.errors,
            res.first_error.unwrap_or_default()
        ));
    }
    if res.saturated > 0 {
        why.push(format!(
            "{} requests not sent: {MAX_IN_FLIGHT} already waiting for an answer",
            res.saturated
        ));
    }
    if res.max_lag > Duration::from_millis(100) {
        why.push(format!(
            "the load generator fell {} behind its schedule",
            ms(res.max_lag)
        ));
    }
    if !all || missing > 0 {
        why.push(format!(
            "{missing} accepted deliveries had not arrived 5 s after the step"
        ));
    }
    if latency.p99 >= STEADY_P99 {
        why.push(format!(
            "p99 {} ≥ 1 s: a queue is building up",
            ms(latency.p99)
        ));
    }
    Ok(Step {
        rate,
        accepted: res.accepted.len(),
        latency,
        response,
        holds: why.is_empty(),
        why: why.join("; "),
        cpu,
        cpu_us: (postback_us, pg_us),
    })
}

/// 3. end to end.
pub async fn end_to_end(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = "bench_e2e";
    let url = ctx.pg.fresh_db(db).await?;
    let rx = Receiver::start().await?;
    let (mut serve, base) = ctx.serve(db, &url, ctx.plan.concurrency, &[]).await?;
    if ctx.plan.customer {
        create_bench_customer(&url).await?;
    }
    let api = Api::new(&base, &ctx.token, 8)?;
    let body = load::delivery_body(&rx.url("/e2e"), BODY_BYTES, ctx.plan.customer());
    let rig = Rig {
        db,
        api: &api,
        rx: &rx,
        body: &body,
    };
    let step_len = ctx.plan.step;
    println!(
        "  open loop: each rate for {} s; a rate holds when every request is accepted on schedule \
         and every delivery arrives with p99 < 1 s",
        step_len.as_secs_f64()
    );
    // Warm-up: connections, prepared statements, allocator.
    let warm = step(ctx, &rig, &mut serve, 500.0, Duration::from_secs(1)).await?;
    if !warm.holds {
        bail!("the 500/s warm-up did not hold: {}", warm.why);
    }
    let mut steps: Vec<Step> = Vec::new();
    for rate in RATES {
        let s = step(ctx, &rig, &mut serve, rate, step_len).await?;
        println!(
            "  {:>6}/s offered: {} accepted, send→received p50 {} p99 {} max {}, API p50 {} p99 {}: {}",
            thousands(rate),
            thousands(s.accepted as f64),
            ms(s.latency.p50),
            ms(s.latency.p99),
            ms(s.latency.max),
            ms(s.response.p50),
            ms(s.response.p99),
            if s.holds { "holds".to_owned() } else { format!("does not hold ({})", s.why) }
        );
        println!("          {}", s.cpu);
        let holds = s.holds;
        steps.push(s);
        if !holds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mem = serve.stop(STOP_GRACE).await?;
    record_serve_peak(report, "end to end", mem);
    let dups = rx.duplicates();
    rx.stop().await;
    let steady = steps.iter().rfind(|s| s.holds);
    let slo = steps
        .iter()
        .filter(|s| s.holds && s.latency.p99 < E2E_P99_TARGET)
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    let describe = |s: Option<&Step>| match s {
        Some(s) => format!(
            "{}/s (p50 {}, p99 {})",
            thousands(s.rate),
            ms(s.latency.p50),
            ms(s.latency.p99)
        ),
        None => "below 500/s".to_owned(),
    };
    if let Some(s) = slo {
        report.figure(f::E2E_RATE, s.rate, "/s", Better::Higher);
        report.figure(f::E2E_CPU_POSTBACK, s.cpu_us.0, "µs", Better::Lower);
        report.figure(f::E2E_CPU_PG, s.cpu_us.1, "µs", Better::Lower);
    }
    report.row(
        "end to end: highest rate held with p99 < 50 ms (send → received)",
        describe(slo),
        "≥ 5,000/s with p99 < 50 ms",
        Some(slo.is_some_and(|s| s.rate >= 5_000.0)),
    );
    report.row(
        "end to end: highest steady rate (p99 < 1 s)",
        describe(steady),
        "",
        None,
    );
    if let Some(last) = steps.last().filter(|s| !s.holds) {
        report.detail(format!(
            "end to end: {}/s did not hold: {}; {}",
            thousands(last.rate),
            last.why,
            last.cpu
        ));
    }
    if dups > 0 {
        report.detail(format!("end to end: {dups} duplicate callbacks"));
    }
    ctx.pg.drop_db(db).await;
    Ok(())
}

/// 4. first-attempt latency at light load.
pub async fn light(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = "bench_light";
    let url = ctx.pg.fresh_db(db).await?;
    let rx = Receiver::start().await?;
    let (mut serve, base) = ctx.serve(db, &url, ctx.plan.concurrency, &[]).await?;
    if ctx.plan.customer {
        create_bench_customer(&url).await?;
    }
    let api = Api::new(&base, &ctx.token, 2)?;
    let body = load::delivery_body(&rx.url("/light"), BODY_BYTES, ctx.plan.customer());
    let rig = Rig {
        db,
        api: &api,
        rx: &rx,
        body: &body,
    };
    let warm = step(ctx, &rig, &mut serve, 100.0, Duration::from_millis(500)).await?;
    if !warm.holds {
        bail!("the warm-up did not hold: {}", warm.why);
    }
    let window = ctx.plan.light_window;
    let s = step(ctx, &rig, &mut serve, 100.0, window).await?;
    println!(
        "  100/s for {} s: {} accepted; send→received p50 {} p99 {} max {}; API response p50 {} p99 {}{}",
        window.as_secs(),
        s.accepted,
        ms(s.latency.p50),
        ms(s.latency.p99),
        ms(s.latency.max),
        ms(s.response.p50),
        ms(s.response.p99),
        if s.holds { String::new() } else { format!(" ({})", s.why) }
    );
    println!("  {}", s.cpu);
    report.figure(f::LIGHT_P50, millis(s.latency.p50), "ms", Better::Lower);
    report.figure(f::LIGHT_P99, millis(s.latency.p99), "ms", Better::Lower);
    report.figure(f::LIGHT_CPU_POSTBACK, s.cpu_us.0, "µs", Better::Lower);
    report.figure(f::LIGHT_CPU_PG, s.cpu_us.1, "µs", Better::Lower);
    let mem = serve.stop(STOP_GRACE).await?;
    record_serve_peak(report, "light load", mem);
    rx.stop().await;
    report.row(
        "first attempt at 100/s: p50 (send → received)",
        ms(s.latency.p50),
        "< 1.5 ms",
        Some(s.holds && s.latency.p50 < Duration::from_micros(1500)),
    );
    report.row(
        "first attempt at 100/s: p99 (send → received)",
        ms(s.latency.p99),
        "< 3 ms",
        Some(s.holds && s.latency.p99 < Duration::from_millis(3)),
    );
    if !s.holds {
        report.detail(format!("light load: {}", s.why));
    }
    ctx.pg.drop_db(db).await;
    Ok(())
}

/// 5. backlog.
pub async fn backlog(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.plan.drain_n;
    let future = ctx.plan.backlog_n;
    let d = drain_run(
        ctx,
        report,
        "bench_backlog",
        n,
        future,
        &Workers::one(&ctx.plan),
    )
    .await?;
    let (value, met) = match report.empty_drain_rate {
        Some(empty) => {
            let ratio = d.rate / empty;
            println!("  {:.1}% of the empty-table drain rate", ratio * 100.0);
            (
                format!(
                    "{} deliveries/s = {:.1}% of the empty-table rate",
                    thousands(d.rate),
                    ratio * 100.0
                ),
                Some(ratio >= 0.9),
            )
        }
        None => (
            format!(
                "{} deliveries/s (no empty-table drain to compare)",
                thousands(d.rate)
            ),
            None,
        ),
    };
    report.row(
        format!(
            "backlog: drain of {} due with {} scheduled hours ahead",
            thousands(n as f64),
            thousands(future as f64)
        ),
        value,
        "within 10% of the empty-table drain",
        met,
    );
    Ok(())
}

/// 6. memory: a 1 GiB media stream (the peak of every serve is added at the end).
pub async fn memory(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let db = "bench_media";
    let url = ctx.pg.fresh_db(db).await?;
    let rx = Receiver::start().await?;
    // One 1 GiB PUT takes longer than the 30 s default attempt timeout on a busy box.
    // Media is sent only from under POSTBACK_MEDIA_ROOT (the file is made in ctx.dir).
    let media_root = ctx.dir.to_string_lossy().into_owned();
    let (mut serve, base) = ctx
        .serve(
            db,
            &url,
            ctx.plan.concurrency,
            &[
                ("POSTBACK_ATTEMPT_TIMEOUT", "300s"),
                ("POSTBACK_MEDIA_ROOT", &media_root),
            ],
        )
        .await?;
    let size = ctx.plan.media_bytes;
    let path = ctx.dir.join("media.bin");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("create the sparse file {}", path.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let job = json!({
        "jobId": "bench-media",
        "publish": {"callbacks": [{
            "url": rx.url("/media"), "method": "PUT", "type": "media", "stream": "original"
        }]}
    });
    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&ctx.token)
        .json(&job)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "POST /v1/jobs: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_mem = serve.mem().context("read /proc/<serve>/status")?;
    let result = json!({
        "status": "finished",
        "result": {"transcript": {"words": [{"p": 0, "s": 0, "e": 500, "c": 0.9, "w": "Hi"}]}},
        "streams": [{"streamName": "original", "path": path.to_string_lossy(),
                     "contentType": "application/octet-stream"}]
    });
    let t0 = Instant::now();
    let cpu0 = ctx.cpu(&serve);
    let r = http
        .post(format!("{base}/v1/jobs/bench-media/result"))
        .bearer_auth(&ctx.token)
        .json(&result)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "POST /v1/jobs/bench-media/result: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let until = t0 + Duration::from_secs(600);
    let mut peak_rss = base_mem.rss_kib;
    loop {
        if let Some(m) = serve.mem() {
            peak_rss = peak_rss.max(m.rss_kib);
        }
        if rx.unique() >= 1 {
            break;
        }
        if Instant::now() >= until {
            bail!(
                "the media callback had not arrived after 600 s ({} bytes received)",
                rx.bytes()
            );
        }
        serve.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let cpu = ctx.cpu(&serve).since(&cpu0);
    let after = serve.mem().unwrap_or_default();
    // VmHWM catches a peak between two samples, but only if it is a new peak.
    let peak = if after.hwm_kib > base_mem.hwm_kib {
        after.hwm_kib.max(peak_rss)
    } else {
        peak_rss
    };
    let growth = peak.saturating_sub(base_mem.rss_kib);
    let received = rx.bytes();
    println!(
        "  {:.2} GiB PUT received in {:.1} s ({:.0} MiB/s incl. signing); serve RSS {:.1} MiB before, {:.1} MiB at peak: +{:.1} MiB",
        received as f64 / (1u64 << 30) as f64,
        took.as_secs_f64(),
        received as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        mib(base_mem.rss_kib),
        mib(peak),
        mib(growth)
    );
    println!("  {cpu}");
    let mem = serve.stop(STOP_GRACE).await?;
    record_serve_peak(report, "media", mem);
    rx.stop().await;
    let _ = std::fs::remove_file(&path);
    if received != size {
        bail!("the receiver got {received} bytes of a {size}-byte stream");
    }
    report.row(
        "memory: serve RSS growth during a 1 GiB media delivery",
        format!("{:.1} MiB", mib(growth)),
        "< 64 MiB",
        Some(growth < 64 * 1024),
    );
    ctx.pg.drop_db(db).await;
    Ok(())
}
