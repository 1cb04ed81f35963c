//! The soak scenario: a fixed open-loop rate (`--soak-rate`, 500/s) for
//! `--soak-minutes` (10) through `serve`'s API to 50 receiver hosts on
//! 127.0.0.10–127.0.0.59 with a mix that is the same every run (healthy
//! hosts answering 500 to every 10th request, one dead, one that hangs, one
//! answering 429 with `Retry-After`, one 410), while PostgreSQL is restarted
//! twice and the `postback worker` that delivers everything is killed with
//! SIGKILL twice (and started again). Then it waits, bounded, until every
//! delivery is final and reports: accepted = delivered + failed + pending,
//! duplicates against the attempts in flight at the faults, RSS of every
//! process at the start and the end of the load, healthy-host latency
//! before, during and after the faults, the circuit breakers' effect
//! (attempts made against what the retry schedule alone would have made),
//! WAL and dead tuples.
//!
//! It owns the host mix, the fault timeline and what it reports; the
//! cluster, the children, the receivers and the load generator are the
//! harness's, test-support's and `load`'s. It runs on a cluster of its own
//! (it restarts it), and sets only the Postback settings its report states.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use postback::schedule::{next_attempt_after, Next, RetryPolicy};
use postback::store::Schema;
use postback_test_support::fast::{FastReceiver, Respond};
use postback_test_support::raw::{Misbehaviour, Raw};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::harness::{mem_of, postgres_pids, Child, Mem, Pg};
use crate::load::{self, ms, Api, Summary, Target};
use crate::report::{thousands, Report};
use crate::scenarios::{mib, Ctx, BODY_BYTES, STOP_GRACE};

/// Receiver hosts: 127.0.0.10 to 127.0.0.59.
const HOSTS: usize = 50;
const FIRST_HOST: usize = 10;
/// Healthy hosts answer 500 to every this-many-th request.
const FAIL_EVERY: u64 = 10;
/// What the 429 host asks for.
const RETRY_AFTER_SECS: u32 = 10;
/// Requests the load generator keeps waiting at most (a restart stalls the API).
const MAX_IN_FLIGHT: usize = 16_384;
/// Accepted ids checked against the database per query.
const ID_CHUNK: usize = 20_000;

/// What a receiver host does, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Healthy,
    /// Nothing listens: connection refused.
    Dead,
    /// Takes the request, never answers: every attempt times out.
    Hang,
    /// 429 with `Retry-After`.
    TooMany,
    /// 410: the delivery ends at once as failed.
    Gone,
}

impl Kind {
    fn of(index: usize) -> Kind {
        match index {
            0 => Kind::Dead,
            1 => Kind::Hang,
            2 => Kind::TooMany,
            3 => Kind::Gone,
            _ => Kind::Healthy,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Healthy => "healthy",
            Kind::Dead => "dead",
            Kind::Hang => "hanging",
            Kind::TooMany => "429",
            Kind::Gone => "410",
        }
    }
}

/// The Postback settings of the soak (stated in its report).
struct Settings {
    policy: RetryPolicy,
    attempt_timeout: Duration,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    per_host: usize,
}

impl Settings {
    /// A schedule short enough for every delivery to reach a final state
    /// within the run; `--quick` shortens it further.
    fn new(quick: bool) -> Settings {
        let s = Duration::from_secs;
        Settings {
            policy: RetryPolicy {
                immediate: 2,
                first_delay: s(if quick { 2 } else { 5 }),
                max_delay: s(if quick { 5 } else { 30 }),
                give_up: s(if quick { 15 } else { 90 }),
            },
            attempt_timeout: s(1),
            breaker_failures: 10,
            breaker_cooldown: s(if quick { 5 } else { 10 }),
            // Twice Postback's default: the hanging host gets about two
            // attempts per delivery (one at its held horizon, one at the
            // next), each lasting the attempt timeout, so it needs 20
            // attempts/s at 500/s over 50 hosts; 16 slots of 1 s make 16.
            per_host: 32,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let secs = |d: Duration| format!("{}s", d.as_secs());
        let p = &self.policy;
        [
            ("POSTBACK_RETRY_IMMEDIATE", p.immediate.to_string()),
            ("POSTBACK_RETRY_FIRST_DELAY", secs(p.first_delay)),
            ("POSTBACK_RETRY_MAX_DELAY", secs(p.max_delay)),
            ("POSTBACK_RETRY_GIVE_UP", secs(p.give_up)),
            ("POSTBACK_ATTEMPT_TIMEOUT", secs(self.attempt_timeout)),
            (
                "POSTBACK_BREAKER_FAILURES",
                self.breaker_failures.to_string(),
            ),
            ("POSTBACK_BREAKER_COOLDOWN", secs(self.breaker_cooldown)),
            ("POSTBACK_PER_HOST_CONCURRENCY", self.per_host.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn text(&self) -> String {
        self.env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How long a claim leases a delivery (Postback's rule: twice the
    /// attempt timeout and 30 s): a killed worker's deliveries are due
    /// again after it.
    fn lease(&self) -> Duration {
        self.attempt_timeout * 2 + Duration::from_secs(30)
    }
}

/// One receiver host.
struct Host {
    kind: Kind,
    /// `http://127.0.0.N:PORT/soak`.
    url: String,
    rx: Option<FastReceiver>,
    hang: Option<Raw>,
}

impl Host {
    /// Requests that reached it (None: nothing listens).
    fn requests(&self) -> Option<u64> {
        match (&self.rx, &self.hang) {
            (Some(rx), _) => Some(rx.requests()),
            (_, Some(raw)) => Some(raw.held().len() as u64),
            _ => None,
        }
    }
}

async fn start_hosts() -> anyhow::Result<Vec<Host>> {
    let mut hosts = Vec::with_capacity(HOSTS);
    for i in 0..HOSTS {
        let ip = format!("127.0.0.{}", FIRST_HOST + i);
        let kind = Kind::of(i);
        let respond = match kind {
            Kind::Healthy => Some(Respond::FailEvery(FAIL_EVERY)),
            Kind::TooMany => Some(Respond::Always {
                status: 429,
                retry_after: Some(RETRY_AFTER_SECS),
            }),
            Kind::Gone => Some(Respond::Always {
                status: 410,
                retry_after: None,
            }),
            Kind::Dead | Kind::Hang => None,
        };
        let host = match (kind, respond) {
            (_, Some(respond)) => {
                let rx = FastReceiver::start_on(&format!("{ip}:0"), respond)
                    .await
                    .with_context(|| format!("receiver on {ip}"))?;
                Host {
                    kind,
                    url: rx.url("/soak"),
                    rx: Some(rx),
                    hang: None,
                }
            }
            (Kind::Hang, None) => {
                let raw = Raw::start(&format!("{ip}:0"), Misbehaviour::Hang).await;
                Host {
                    kind,
                    url: raw.url("/soak"),
                    rx: None,
                    hang: Some(raw),
                }
            }
            _ => {
                // A port that was free a moment ago and that nothing listens on.
                let port = std::net::TcpListener::bind(format!("{ip}:0"))
                    .and_then(|l| l.local_addr())
                    .with_context(|| format!("a free port on {ip}"))?
                    .port();
                Host {
                    kind,
                    url: format!("http://{ip}:{port}/soak"),
                    rx: None,
                    hang: None,
                }
            }
        };
        hosts.push(host);
    }
    Ok(hosts)
}

/// `POST /v1/deliveries` to the hosts in turn (request `i` to host
/// `i % HOSTS`), keeping (id, host, sent) of every accepted one.
#[derive(Clone)]
struct Mixed {
    api: Api,
    bodies: Arc<Vec<Bytes>>,
    sent: Arc<Mutex<Vec<(u128, u8, Instant)>>>,
}

impl Mixed {
    fn accepted(&self) -> usize {
        self.sent.lock().map_or(0, |s| s.len())
    }
}

impl Target for Mixed {
    async fn send(&self, i: usize, _body: Bytes) -> Result<u128, String> {
        let host = i % self.bodies.len();
        let sent = Instant::now();
        let id = self.api.post_delivery(i, self.bodies[host].clone()).await?;
        if let Ok(mut s) = self.sent.lock() {
            s.push((id, host as u8, sent));
        }
        Ok(id)
    }
}

/// Memory of every process of the cluster, added up.
#[derive(Debug, Clone, Copy, Default)]
struct PgMem {
    processes: usize,
    anon_kib: u64,
}

/// One delivery of a failing host: created (Unix seconds), attempts, and
/// seconds from creation to its first attempt and to its final state.
type Life = (f64, i32, Option<f64>, Option<f64>);

/// What a failing host cost, and the schedule alone would have.
struct Failing {
    kind: Kind,
    deliveries: usize,
    /// Attempts recorded.
    made: u64,
    /// Attempts the retry schedule alone would have made.
    scheduled: u64,
    /// Requests that reached it (None: nothing listens).
    requests: Option<u64>,
    /// Its breaker at the end: state, consecutive failures.
    breaker: Option<(String, i32)>,
    /// Mean seconds from creation to the first attempt, and to the final state.
    first_after: Option<f64>,
    final_after: Option<f64>,
}

fn pg_mem(pg_data: &std::path::Path) -> PgMem {
    let mut m = PgMem::default();
    for pid in postgres_pids(pg_data) {
        if let Some(p) = mem_of(pid) {
            m.processes += 1;
            m.anon_kib += p.anon_kib;
        }
    }
    m
}

/// What the fault driver does, at a fraction of the load's duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// RSS at the start (after the warm-up).
    SampleStart,
    RestartPostgres,
    KillWorker,
    /// RSS of the worker started after a kill.
    SampleWorker,
    /// RSS at the end, still under load.
    SampleEnd,
}

/// The timeline: faults at 20, 35, 50 and 65 % of the load.
const EVENTS: [(f64, Event); 8] = [
    (0.10, Event::SampleStart),
    (0.20, Event::RestartPostgres),
    (0.35, Event::KillWorker),
    (0.40, Event::SampleWorker),
    (0.50, Event::RestartPostgres),
    (0.65, Event::KillWorker),
    (0.70, Event::SampleWorker),
    (0.98, Event::SampleEnd),
];
/// Latency windows by when a delivery was sent: before the first fault,
/// during the faults (and the recovery of the last), after.
const DURING_FROM: f64 = 0.20;
const AFTER_FROM: f64 = 0.80;

/// One fault as it happened.
struct Fault {
    at: Duration,
    what: &'static str,
    /// Deliveries `delivering` (claimed, attempts in flight): just before
    /// a restart; left by the killed worker, counted just after a kill.
    in_flight: Option<i64>,
    took: Duration,
}

/// One `postback worker` process from its start to its kill (or the end).
struct Incarnation {
    start: Option<Mem>,
    end: Option<Mem>,
}

/// Everything the driver saw during the load.
#[derive(Default)]
struct Timeline {
    faults: Vec<Fault>,
    serve: (Option<Mem>, Option<Mem>),
    pg: (Option<PgMem>, Option<PgMem>),
    workers: Vec<Incarnation>,
    /// Most dead tuples seen in `deliveries` while sampling (every 30 s).
    max_dead: i64,
}

/// The processes and the cluster the driver acts on.
struct Rig<'a> {
    ctx: &'a Ctx,
    pg: &'a mut Pg,
    pg_data: std::path::PathBuf,
    url: &'a str,
    pool: &'a PgPool,
    serve: &'a mut Child,
    worker: Child,
    worker_env: Vec<(String, String)>,
    incarnation: usize,
}

impl Rig<'_> {
    fn check(&mut self) -> anyhow::Result<()> {
        self.serve.ensure_running()?;
        self.worker.ensure_running()
    }

    async fn in_flight(&self) -> Option<i64> {
        sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = 'delivering'")
            .fetch_one(self.pool)
            .await
            .ok()
    }

    /// Dead tuples of `deliveries` (tried again: the first use of a
    /// connection cut by a restart fails).
    async fn dead_in_deliveries(&self) -> Option<i64> {
        for _ in 0..3 {
            let dead = sqlx::query_scalar(
                "SELECT n_dead_tup FROM pg_stat_user_tables \
                 WHERE schemaname = 'postback' AND relname = 'deliveries'",
            )
            .fetch_one(self.pool)
            .await;
            if let Ok(n) = dead {
                return Some(n);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// SIGKILL to the worker, then a new one. Returns the deliveries the
    /// killed one left `delivering` (counted between its death and the new
    /// one's start: `serve` delivers nothing, so every one is the dead
    /// worker's, and each waits for its lease to run out).
    async fn kill_worker(&mut self) -> anyhow::Result<Option<i64>> {
        let pid = self.worker.pid();
        // SAFETY: kill(2) on a child of ours that is still running.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
            bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
        }
        self.worker.wait_exit(Duration::from_secs(10)).await?;
        let orphaned = self.in_flight().await;
        self.incarnation += 1;
        let name = format!("soak-{}", self.incarnation);
        self.worker =
            self.ctx
                .worker(&name, self.url, self.ctx.plan.concurrency, &self.worker_env)?;
        Ok(orphaned)
    }
}

/// Runs [`EVENTS`] against the load started at `start`, checking every
/// half second that `serve` and the worker are alive, and printing progress.
async fn drive(
    rig: &mut Rig<'_>,
    start: Instant,
    duration: Duration,
    target: &Mixed,
    hosts: &[Host],
) -> anyhow::Result<Timeline> {
    let mut t = Timeline {
        workers: vec![Incarnation {
            start: None,
            end: None,
        }],
        ..Timeline::default()
    };
    let mut next_print = start + Duration::from_secs(30);
    for (frac, event) in EVENTS {
        let due = start + duration.mul_f64(frac);
        while Instant::now() < due {
            rig.check()?;
            if Instant::now() >= next_print {
                next_print += Duration::from_secs(30);
                let dead = rig.dead_in_deliveries().await;
                t.max_dead = t.max_dead.max(dead.unwrap_or(0));
                let received: u64 = hosts
                    .iter()
                    .filter(|h| h.kind == Kind::Healthy)
                    .filter_map(|h| h.rx.as_ref().map(FastReceiver::unique))
                    .sum();
                println!(
                    "  … {:>4.0} s: {} accepted, {} delivered to healthy hosts, {} in flight, \
                     {} dead tuples in deliveries; RSS serve {}, worker {}, PostgreSQL private {}",
                    start.elapsed().as_secs_f64(),
                    thousands(target.accepted() as f64),
                    thousands(received as f64),
                    rig.in_flight().await.map_or("?".into(), |n| n.to_string()),
                    dead.map_or("?".into(), |n| n.to_string()),
                    mem_text(rig.serve.mem().map(|m| m.rss_kib)),
                    mem_text(rig.worker.mem().map(|m| m.rss_kib)),
                    mem_text(Some(pg_mem(&rig.pg_data).anon_kib)),
                );
            }
            tokio::time::sleep(
                Duration::from_millis(500).min(due.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        let at = start.elapsed();
        match event {
            Event::SampleStart | Event::SampleWorker | Event::SampleEnd => {
                let end = event == Event::SampleEnd;
                if event != Event::SampleWorker {
                    let (serve, pg) = if end {
                        (&mut t.serve.1, &mut t.pg.1)
                    } else {
                        (&mut t.serve.0, &mut t.pg.0)
                    };
                    *serve = rig.serve.mem();
                    *pg = Some(pg_mem(&rig.pg_data));
                }
                if let Some(w) = t.workers.last_mut() {
                    *(if end { &mut w.end } else { &mut w.start }) = rig.worker.mem();
                }
            }
            Event::RestartPostgres => {
                let in_flight = rig.in_flight().await;
                println!(
                    "  {:.0} s: restarting PostgreSQL (pg_ctl stop -m fast, start)",
                    at.as_secs_f64()
                );
                let took = rig.pg.restart().await.context("restart PostgreSQL")?;
                println!("  … PostgreSQL back after {}", ms(took));
                t.faults.push(Fault {
                    at,
                    what: "PostgreSQL restart (-m fast)",
                    in_flight,
                    took,
                });
            }
            Event::KillWorker => {
                if let Some(w) = t.workers.last_mut() {
                    w.end = rig.worker.mem();
                }
                let pid = rig.worker.pid();
                let t0 = Instant::now();
                let in_flight = rig.kill_worker().await?;
                println!(
                    "  {:.0} s: kill -9 of the worker (pid {pid}): it left {} deliveries in flight",
                    at.as_secs_f64(),
                    in_flight.map_or("?".into(), |n| n.to_string())
                );
                t.workers.push(Incarnation {
                    start: None,
                    end: None,
                });
                t.faults.push(Fault {
                    at,
                    what: "kill -9 of the worker, started again",
                    in_flight,
                    took: t0.elapsed(),
                });
            }
        }
    }
    Ok(t)
}

/// Attempts the retry schedule alone (no circuit breaker) makes for one
/// delivery whose first attempt starts at `first`, when every attempt
/// fails after `took` (asking `retry_after`), counting those that start
/// by `end`.
fn scheduled_attempts(
    policy: &RetryPolicy,
    first: OffsetDateTime,
    took: Duration,
    retry_after: Option<Duration>,
    end: OffsetDateTime,
) -> u64 {
    let mut made = 0u32;
    let mut at = first;
    while at <= end && made < 10_000 {
        made += 1;
        match next_attempt_after(policy, made, first, at + took, retry_after) {
            Next::GiveUp => break,
            Next::At(next) => at = next,
        }
    }
    u64::from(made)
}

fn unix(secs: f64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Counts by state of the deliveries among `ids`.
async fn states_of(pool: &PgPool, ids: &[uuid::Uuid]) -> anyhow::Result<HashMap<String, i64>> {
    let mut by_state: HashMap<String, i64> = HashMap::new();
    for chunk in ids.chunks(ID_CHUNK) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM postback.deliveries WHERE id = ANY($1) GROUP BY state",
        )
        .bind(chunk)
        .fetch_all(pool)
        .await
        .context("count the accepted deliveries by state")?;
        for (state, n) in rows {
            *by_state.entry(state).or_default() += n;
        }
    }
    Ok(by_state)
}

/// `n_live_tup / n_dead_tup (autovacuum ×k)` of Postback's tables.
async fn dead_tuples(pool: &PgPool) -> anyhow::Result<(String, i64, i64)> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_live_tup, n_dead_tup, autovacuum_count \
         FROM pg_stat_user_tables WHERE schemaname = 'postback' \
           AND relname IN ('deliveries', 'payloads', 'attempts', 'destinations') \
         ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    let (mut live, mut dead) = (0, 0);
    let text = rows
        .iter()
        .map(|(rel, l, d, av)| {
            live += l;
            dead += d;
            format!(
                "{rel} {} live / {} dead (autovacuum ×{av})",
                thousands(*l as f64),
                thousands(*d as f64)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok((text, live, dead))
}

/// `12.3 MiB`.
fn mem_text(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", mib(k)))
}

/// `a → b (+x %)` and whether b is within 10 % of a.
fn growth(a: Option<u64>, b: Option<u64>) -> (String, Option<bool>) {
    match (a, b) {
        (Some(a), Some(b)) if a > 0 => {
            let pct = (b as f64 / a as f64 - 1.0) * 100.0;
            (
                format!("{:.1} → {:.1} MiB ({pct:+.1} %)", mib(a), mib(b)),
                Some(b * 100 <= a * 110),
            )
        }
        _ => ("not measured".into(), None),
    }
}

/// 8. soak.
pub async fn soak(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let duration = plan.soak_duration;
    let rate = plan.soak_rate;
    let settings = Settings::new(plan.quick);
    println!(
        "  {rate}/s for {} s to {HOSTS} hosts on 127.0.0.{FIRST_HOST}–127.0.0.{}; {}",
        duration.as_secs(),
        FIRST_HOST + HOSTS - 1,
        settings.text()
    );
    // A cluster of its own: it is restarted.
    let pg_dir = ctx.dir.join("soak-pg");
    let mut pg = Pg::start(pg_dir.clone()).await?;
    let pg_data = pg_dir.join("data");
    let db = "bench_soak";
    let url = pg.fresh_db(db).await?;
    let hosts = start_hosts().await?;
    let env = settings.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // `serve` runs the API alone: every delivery is the killed worker's.
    let (mut serve, base) = ctx.serve("soak", &url, 0, &env_refs).await?;
    let worker = ctx.worker("soak-0", &url, plan.concurrency, &env)?;
    let pool = postback::store::connect(&url, &Schema::default(), 2).await?;
    let target = Mixed {
        api: Api::new(&base, &ctx.token, 8)?,
        bodies: Arc::new(
            hosts
                .iter()
                .map(|h| load::delivery_body(&h.url, BODY_BYTES, None))
                .collect(),
        ),
        sent: Arc::new(Mutex::new(Vec::new())),
    };
    let mut rig = Rig {
        ctx,
        pg: &mut pg,
        pg_data: pg_data.clone(),
        url: &url,
        pool: &pool,
        serve: &mut serve,
        worker,
        worker_env: env.clone(),
        incarnation: 0,
    };
    let probe0 = rig.pg.probe().await?;
    let start = Instant::now();
    let load = load::open_loop(&target, Bytes::new(), rate, duration, MAX_IN_FLIGHT);
    tokio::pin!(load);
    let (res, timeline) = {
        let driver = drive(&mut rig, start, duration, &target, &hosts);
        tokio::pin!(driver);
        tokio::select! {
            res = &mut load => (res, driver.await?),
            t = &mut driver => {
                let t = t?;
                (load.await, t)
            }
        }
    };
    let load_took = start.elapsed();
    println!(
        "  load done in {:.0} s: {} accepted, {} refused (first: {}), {} not sent (saturated), \
         generator at most {} late",
        load_took.as_secs_f64(),
        thousands(res.accepted.len() as f64),
        res.errors,
        res.first_error.as_deref().unwrap_or("none"),
        res.saturated,
        ms(res.max_lag)
    );
    let (dead_load, _, _) = dead_tuples(&pool).await.unwrap_or_default();

    // Bounded wait until every delivery is final: a held delivery to an
    // open breaker waits up to the give-up horizon, and its first attempt
    // there opens a new one; a killed worker's deliveries wait for the lease.
    let bound = settings.policy.give_up * 2 + settings.lease() + Duration::from_secs(120);
    let until = Instant::now() + bound;
    let mut next_print = Instant::now();
    let open = loop {
        rig.check()?;
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM postback.deliveries WHERE state IN ('pending', 'delivering')",
        )
        .fetch_one(&pool)
        .await
        .ok();
        if open == Some(0) || Instant::now() >= until {
            break open;
        }
        if Instant::now() >= next_print {
            println!(
                "  … waiting for {} deliveries to be final (at most {} s more)",
                open.map_or("?".into(), |n| n.to_string()),
                until.saturating_duration_since(Instant::now()).as_secs()
            );
            next_print += Duration::from_secs(15);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drained_after = start.elapsed().saturating_sub(load_took);
    let probe1 = rig.pg.probe().await?;
    let Rig {
        worker,
        incarnation,
        ..
    } = rig;
    let _ = worker.stop(STOP_GRACE).await?;
    let _ = serve.stop(STOP_GRACE).await?;

    // -------- counts
    let sent = std::mem::take(&mut *target.sent.lock().unwrap_or_else(|e| e.into_inner()));
    let accepted = sent.len() as i64;
    let ids: Vec<uuid::Uuid> = sent
        .iter()
        .map(|(id, _, _)| uuid::Uuid::from_u128(*id))
        .collect();
    let by_state = states_of(&pool, &ids).await?;
    let count = |s: &str| by_state.get(s).copied().unwrap_or(0);
    let (delivered, failed) = (count("delivered"), count("failed"));
    let pending = count("pending") + count("delivering");
    let stored: i64 = by_state.values().sum();
    let all_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
        .fetch_one(&pool)
        .await?;
    let healthy_accepted = sent
        .iter()
        .filter(|(_, h, _)| Kind::of(*h as usize) == Kind::Healthy)
        .count() as i64;
    let adds_up = accepted == delivered + failed + pending && stored == accepted;
    println!(
        "  accepted {accepted} = delivered {delivered} + failed {failed} + pending {pending}: {}; \
         {stored} of the accepted ids stored, {all_rows} rows in all",
        if adds_up {
            "adds up"
        } else {
            "DOES NOT ADD UP"
        }
    );

    // -------- receivers: arrivals, duplicates, latency
    let mut missing = 0u64;
    let mut windows: [Vec<Duration>; 3] = Default::default();
    let (during_from, after_from) = (duration.mul_f64(DURING_FROM), duration.mul_f64(AFTER_FROM));
    for (id, h, at) in &sent {
        let host = &hosts[*h as usize];
        if host.kind != Kind::Healthy {
            continue;
        }
        let Some(arrived) = host.rx.as_ref().and_then(|rx| rx.arrival(*id)) else {
            missing += 1;
            continue;
        };
        let since = at.saturating_duration_since(start);
        let w = if since < during_from {
            0
        } else if since < after_from {
            1
        } else {
            2
        };
        windows[w].push(arrived.saturating_duration_since(*at));
    }
    let duplicates: u64 = hosts
        .iter()
        .filter_map(|h| h.rx.as_ref().map(FastReceiver::duplicates))
        .sum();
    let healthy_requests: u64 = hosts
        .iter()
        .filter(|h| h.kind == Kind::Healthy)
        .filter_map(Host::requests)
        .sum();
    let in_flight_at_faults: i64 = timeline.faults.iter().filter_map(|f| f.in_flight).sum();
    let in_flight_at_kills: i64 = timeline
        .faults
        .iter()
        .filter(|f| f.what.starts_with("kill"))
        .filter_map(|f| f.in_flight)
        .sum();

    // -------- breakers: attempts made vs the schedule alone
    let end_secs: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&pool)
        .await?;
    let mut breaker_rows = Vec::new();
    for host in hosts.iter().filter(|h| h.kind != Kind::Healthy) {
        let origin = postback::validate::origin(&host.url);
        let rows: Vec<Life> = sqlx::query_as(
            "SELECT extract(epoch FROM created_at)::float8, attempts, \
                    extract(epoch FROM cycle_started_at - created_at)::float8, \
                    extract(epoch FROM completed_at - created_at)::float8 \
             FROM postback.deliveries WHERE origin = $1",
        )
        .bind(&origin)
        .fetch_all(&pool)
        .await?;
        let (took, retry_after) = match host.kind {
            Kind::Hang => (settings.attempt_timeout, None),
            Kind::TooMany => (
                Duration::ZERO,
                Some(Duration::from_secs(u64::from(RETRY_AFTER_SECS))),
            ),
            _ => (Duration::ZERO, None),
        };
        let end = unix(end_secs);
        let made: u64 = rows.iter().map(|r| r.1.max(0) as u64).sum();
        let scheduled: u64 = if host.kind == Kind::Gone {
            // A 410 ends the delivery at its first attempt.
            rows.len() as u64
        } else {
            rows.iter()
                .map(|r| scheduled_attempts(&settings.policy, unix(r.0), took, retry_after, end))
                .sum()
        };
        let mean = |f: fn(&Life) -> Option<f64>| {
            let v: Vec<f64> = rows.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let first_after = mean(|r| r.2);
        let final_after = mean(|r| r.3);
        let breaker: Option<(String, i32)> = sqlx::query_as(
            "SELECT state, consecutive_failures FROM postback.destinations WHERE origin = $1",
        )
        .bind(&origin)
        .fetch_optional(&pool)
        .await?;
        breaker_rows.push(Failing {
            kind: host.kind,
            deliveries: rows.len(),
            made,
            scheduled,
            requests: host.requests(),
            breaker,
            first_after,
            final_after,
        });
    }
    let (dead_end, live_end, dead_end_n) = dead_tuples(&pool).await?;
    let (wal, _) = pg.delta(&probe0, &probe1).await?;
    pool.close().await;
    drop(hosts);
    pg.stop().await?;

    // -------- report
    let minutes = duration.as_secs_f64() / 60.0;
    report.detail(format!(
        "soak: {rate}/s for {minutes:.1} min through `serve` (POSTBACK_CONCURRENCY=0, the API alone) \
         to one `postback worker` (POSTBACK_CONCURRENCY={}), {HOSTS} hosts 127.0.0.{FIRST_HOST}–{}: \
         46 healthy answering 500 to every {FAIL_EVERY}th request, 1 dead (connection refused), \
         1 hanging (never answers), 1 answering 429 with Retry-After: {RETRY_AFTER_SECS}, 1 answering 410; \
         a cluster of its own; settings {} (lease {} s); faults at 20 % (PostgreSQL restart), 35 % (kill -9 \
         of the worker), 50 % (restart), 65 % (kill -9); latency windows by send time: before = first 20 %, \
         during = 20–80 %, after = last 20 %",
        plan.concurrency,
        FIRST_HOST + HOSTS - 1,
        settings.text(),
        settings.lease().as_secs()
    ));
    if let Some(e) = &res.first_error {
        report.detail(format!("soak: the first refused request: {e}"));
    }
    for f in &timeline.faults {
        report.detail(format!(
            "soak: at {:.0} s, {}: {} deliveries in flight (before a restart; left by a kill), done in {}",
            f.at.as_secs_f64(),
            f.what,
            f.in_flight.map_or("?".into(), |n| n.to_string()),
            ms(f.took)
        ));
    }
    report.row(
        format!("soak: accepted (API 202) in {minutes:.1} min at {rate}/s"),
        format!(
            "{} ({} requests refused; the first: {})",
            thousands(accepted as f64),
            res.errors,
            res.first_error
                .as_deref()
                .map_or("none", |e| e.split(": ").next().unwrap_or(e))
                .replace('|', "/")
        ),
        "",
        None,
    );
    report.row(
        "soak: accepted = delivered + failed + pending (nothing lost)",
        format!(
            "{} = {} + {} + {} ({} of the accepted ids in the database; {} rows in all)",
            thousands(accepted as f64),
            thousands(delivered as f64),
            thousands(failed as f64),
            thousands(pending as f64),
            thousands(stored as f64),
            thousands(all_rows as f64)
        ),
        "adds up, pending 0",
        Some(adds_up && pending == 0),
    );
    report.row(
        "soak: healthy-host deliveries received (2xx) by their receiver",
        format!(
            "{} of {} ({} missing; {} requests, {} answered 500)",
            thousands((healthy_accepted - missing as i64) as f64),
            thousands(healthy_accepted as f64),
            missing,
            thousands(healthy_requests as f64),
            thousands((healthy_requests / FAIL_EVERY) as f64)
        ),
        "all",
        Some(missing == 0),
    );
    report.row(
        "soak: duplicates (2xx twice) vs. deliveries left in flight by the kills / in flight at all faults",
        format!("{duplicates} vs. {in_flight_at_kills} / {in_flight_at_faults}"),
        "≤ in flight at the faults",
        Some(duplicates as i64 <= in_flight_at_faults),
    );
    let (text, met) = growth(
        timeline.serve.0.map(|m| m.rss_kib),
        timeline.serve.1.map(|m| m.rss_kib),
    );
    report.row(
        "soak: `serve` RSS, start → end of the load",
        text,
        "within 10 %",
        met,
    );
    let last = timeline.workers.len().saturating_sub(1);
    for (i, w) in timeline.workers.iter().enumerate() {
        let (text, met) = growth(w.start.map(|m| m.rss_kib), w.end.map(|m| m.rss_kib));
        report.row(
            format!(
                "soak: worker #{} RSS, start → {}",
                i + 1,
                if i == last { "end of the load" } else { "kill" }
            ),
            text,
            if i == last { "within 10 %" } else { "" },
            if i == last { met } else { None },
        );
    }
    let (text, met) = growth(
        timeline.pg.0.map(|m| m.anon_kib),
        timeline.pg.1.map(|m| m.anon_kib),
    );
    report.row(
        "soak: PostgreSQL private RSS (RssAnon, all processes), start → end",
        format!(
            "{text}; {} → {} processes",
            timeline.pg.0.map_or(0, |m| m.processes),
            timeline.pg.1.map_or(0, |m| m.processes),
        ),
        "within 10 %",
        met,
    );
    for (name, sample) in ["before", "during", "after"].iter().zip(windows) {
        let n = sample.len();
        let s = Summary::of(sample);
        report.row(
            format!("soak: healthy hosts, send → received, {name} the faults"),
            format!(
                "p50 {} / p99 {} / max {} ({} deliveries)",
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                thousands(n as f64)
            ),
            "",
            None,
        );
    }
    let secs = |s: Option<f64>| s.map_or("—".into(), |s| format!("{s:.0} s"));
    for f in &breaker_rows {
        let saved = f.scheduled.saturating_sub(f.made);
        report.row(
            format!("soak: {} host, attempts made vs. the schedule alone", f.kind.name()),
            format!(
                "{} made vs. {} = {} saved ({:.0} %) over {} deliveries; {} requests reached it; breaker {}",
                thousands(f.made as f64),
                thousands(f.scheduled as f64),
                thousands(saved as f64),
                saved as f64 * 100.0 / f.scheduled.max(1) as f64,
                thousands(f.deliveries as f64),
                f.requests
                    .map_or("none (nothing listens)".into(), |r| thousands(r as f64)),
                f.breaker
                    .as_ref()
                    .map_or("never recorded".into(), |(s, n)| format!("{s}, {n} consecutive failures"))
            ),
            "",
            None,
        );
        report.detail(format!(
            "soak: {} host: first attempt on average {} after creation, final on average {} after creation \
             ({:.2} attempts per delivery)",
            f.kind.name(),
            secs(f.first_after),
            secs(f.final_after),
            f.made as f64 / f.deliveries.max(1) as f64
        ));
    }
    report.detail(
        "soak: attempts made = the sum of `deliveries.attempts` of the host's deliveries (attempts cut \
         by a kill are not recorded); the schedule alone = for each of those deliveries, the attempts the \
         retry schedule makes from its creation when every attempt fails (after the attempt timeout for \
         the hanging host, honouring Retry-After for the 429 host) up to the end of the run, as \
         `postback::schedule::next_attempt_after` computes them; saved = the difference",
    );
    report.row(
        "soak: WAL written, load and drain",
        format!(
            "{:.1} MiB ({:.0} bytes per accepted delivery)",
            wal / (1 << 20) as f64,
            wal / accepted.max(1) as f64
        ),
        "",
        None,
    );
    report.row(
        "soak: dead tuples at the end (autovacuum keeps up)",
        format!(
            "{} dead of {} live; most seen in deliveries during the load {}",
            thousands(dead_end_n as f64),
            thousands(live_end as f64),
            thousands(timeline.max_dead as f64)
        ),
        "",
        None,
    );
    report.detail(format!("soak: at the end of the load: {dead_load}"));
    report.detail(format!(
        "soak: after the drain ({:.0} s after the load, {} open): {dead_end}",
        drained_after.as_secs_f64(),
        open.map_or("?".into(), |n| n.to_string())
    ));
    report.detail(format!(
        "soak: {} worker processes in all ({} kill -9)",
        incarnation + 1,
        incarnation
    ));
    if open != Some(0) {
        report.detail(format!(
            "soak: WARNING: {} deliveries were still pending or delivering {} s after the load",
            open.map_or("?".into(), |n| n.to_string()),
            drained_after.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_fixed() {
        let kinds: Vec<Kind> = (0..HOSTS).map(Kind::of).collect();
        let n = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(n(Kind::Healthy), 46);
        for k in [Kind::Dead, Kind::Hang, Kind::TooMany, Kind::Gone] {
            assert_eq!(n(k), 1);
        }
    }

    #[test]
    fn the_schedule_alone_counts_every_attempt_to_the_horizon() {
        let policy = Settings::new(false).policy;
        let t0 = unix(1_000_000.0);
        let late = t0 + Duration::from_secs(3600);
        // 0, 0, 0, +5, +10, +20, +30 (= 65 s), then the horizon at 90 s.
        assert_eq!(
            scheduled_attempts(&policy, t0, Duration::ZERO, None, late),
            8
        );
        // Cut at the end of the run.
        assert_eq!(
            scheduled_attempts(
                &policy,
                t0,
                Duration::ZERO,
                None,
                t0 + Duration::from_secs(6)
            ),
            4
        );
        // Retry-After 10 s where it is longer than the schedule's wait:
        // 0, 10, 20, 30, 40, 60, 90.
        let ra = Some(Duration::from_secs(10));
        assert_eq!(scheduled_attempts(&policy, t0, Duration::ZERO, ra, late), 7);
        // Nothing before the first attempt.
        assert_eq!(
            scheduled_attempts(&policy, late, Duration::ZERO, None, t0),
            0
        );
    }

    #[test]
    fn growth_is_judged_against_ten_percent() {
        assert_eq!(growth(Some(1000), Some(1100)).1, Some(true));
        assert_eq!(growth(Some(1000), Some(1101)).1, Some(false));
        assert_eq!(growth(Some(1000), Some(500)).1, Some(true));
        assert_eq!(growth(None, Some(500)).1, None);
    }
}
