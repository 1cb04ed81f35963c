//! `postback-bench`: the reproducible benchmark of issue 8.
//!
//! ```sh
//! cargo build --release -p postback -p postback-bench   # both binaries, in target/release/
//! cargo run --release -p postback-bench -- --quick      # smoke test, ~3 minutes
//! cargo run --release -p postback-bench -- --markdown BENCHMARKS.md
//! ```
//!
//! `cargo run -p postback-bench` builds only this binary; the benchmark
//! runs the real `postback` binary found next to it (`target/release/`),
//! so build that first (`cargo build --release -p postback -p
//! postback-bench`, or `--postback PATH`). A warning is printed when a
//! Postback source file is newer than that binary.
//!
//! This crate owns the scenarios, the load generators and the report; the
//! cluster, the child-process runner and the receiver come from
//! `postback-test-support`. It must not be a dependency of anything, nor
//! change Postback's settings beyond what a scenario states in its report.
//!
//! It needs nothing but the PostgreSQL server binaries: it starts a private
//! cluster with `postback::pgcluster::Cluster` in a temporary directory
//! (durability on: `fsync` and `synchronous_commit` stay on, and the run
//! refuses to start otherwise), a keep-alive HTTP receiver on 127.0.0.1,
//! and `postback serve` / `postback worker` as child processes (so their
//! memory can be read from /proc). Each scenario uses a fresh database.
//! Everything is stopped at the end, on error, on panic and on Ctrl-C.
//!
//! Scenarios: the bare HTTP ceiling (load generator straight at the
//! receiver; every run measures it and reports the other figures against
//! it), drain, ingest, end to end, first-attempt latency at light load,
//! drain behind a large backlog, and memory (peak RSS of `serve`, and RSS
//! growth while a 1 GiB media stream is delivered). The final Markdown
//! table compares each figure with the target of issue 8; CPU µs per
//! delivery is given for Postback and PostgreSQL.
//!
//! Soak (`--only soak`, module `soak`; not in the default run, a short one
//! with `--quick`): `--soak-rate` (500/s) for `--soak-minutes` (10) to 50
//! loopback hosts of a fixed mix (healthy with 10 % 500s, dead, hanging,
//! 429 with `Retry-After`, 410) while PostgreSQL is restarted twice and the
//! worker is killed with SIGKILL twice; it reports whether accepted =
//! delivered + failed + pending, duplicates, RSS at the start and end,
//! latency before, during and after the faults, the attempts the circuit
//! breakers saved, WAL and dead tuples.
//!
//! A/B mode (`--baseline OTHER-BINARY --runs N`, module `ab`): the same
//! scenarios with two `postback` binaries, alternated run by run, reported
//! as medians, spreads and the ratio of the medians.

mod ab;
mod ceiling;
mod figures;
mod harness;
mod load;
mod replay;
mod report;
mod scaleout;
mod scenarios;
mod soak;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::harness::{Machine, Pg, TempDir};
use crate::report::{Header, Report};
use crate::scenarios::{Ctx, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The load generator straight at the receiver: the bare HTTP ceiling.
    Ceiling,
    /// N deliveries queued, then `postback worker` started.
    Drain,
    /// POST /v1/deliveries from concurrent clients, no workers.
    Ingest,
    /// One `serve` taking and delivering at stepped open-loop rates.
    E2e,
    /// 100 deliveries/s, first-attempt latency.
    Light,
    /// Drain behind 1,000,000 deliveries scheduled hours ahead.
    Backlog,
    /// RSS while a 1 GiB media stream is delivered.
    Memory,
    /// The drain by 1, 2 and 4 `postback worker` processes on one database.
    Scaleout,
    /// `postback replay --status failed --yes` of 100,000 failed deliveries.
    Replay,
    /// A fixed rate to 50 hosts of a fixed mix for --soak-minutes while
    /// PostgreSQL restarts and a worker is killed (opt-in: `--only soak`;
    /// `--quick` runs a short one).
    Soak,
}

const ALL: [Scenario; 9] = [
    Scenario::Ceiling,
    Scenario::Drain,
    Scenario::Ingest,
    Scenario::E2e,
    Scenario::Light,
    Scenario::Backlog,
    Scenario::Memory,
    Scenario::Scaleout,
    Scenario::Replay,
];

/// Postback's benchmark: drain, ingest, end to end, light-load latency,
/// backlog and memory, against a private PostgreSQL with durability on.
#[derive(Debug, Parser)]
#[command(name = "postback-bench", version, about, long_about = None)]
struct Args {
    /// Reduced sizes and durations: checks that everything runs (not a measurement).
    #[arg(long)]
    quick: bool,
    /// Append the final Markdown report to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
    /// Run only these scenarios (comma list). `backlog` runs `drain` too, to compare.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Deliveries drained in `drain`, `backlog` and each `scaleout` step [default: 100000; --quick: 10000].
    #[arg(long)]
    deliveries: Option<u64>,
    /// Failed deliveries the `replay` scenario replays [default: 100000; --quick: 10000].
    #[arg(long)]
    replay_deliveries: Option<u64>,
    /// Deliveries scheduled hours ahead in `backlog` [default: 1000000; --quick: 100000].
    #[arg(long)]
    backlog: Option<u64>,
    /// Seconds of the ingest run [default: 10; --quick: 5].
    #[arg(long)]
    ingest_secs: Option<u64>,
    /// Concurrent ingest clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of each end-to-end rate step [default: 5; --quick: 2].
    #[arg(long)]
    step_secs: Option<u64>,
    /// Seconds of the 100/s light-load run [default: 10; --quick: 5].
    #[arg(long)]
    light_secs: Option<u64>,
    /// POSTBACK_CONCURRENCY of the workers (Postback's default).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// POSTBACK_PER_HOST_CONCURRENCY [default: --concurrency, because every
    /// callback goes to the one receiver host, 127.0.0.1].
    #[arg(long)]
    per_host_concurrency: Option<usize>,
    /// The `postback` binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    postback: Option<PathBuf>,
    /// Keep the temporary directory (cluster data and child logs).
    #[arg(long)]
    keep: bool,
    /// Every delivery names a customer (signed with its own secret).
    #[arg(long)]
    customer: bool,
    /// A/B mode: also run the scenarios with this other `postback` binary,
    /// alternating the two run by run, and report the ratio of medians.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Runs of each binary in A/B mode (or of the one binary otherwise).
    /// [default: 3 with --baseline; without it only 1 is allowed]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: Option<u32>,
    /// Worker counts of the `scaleout` steps (comma list).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    scaleout_workers: Vec<u16>,
    /// `scaleout`: every worker gets the full --concurrency [default: it
    /// is split between them, so each step has the same attempts in flight].
    #[arg(long)]
    scaleout_same_concurrency: bool,
    /// Minutes of the `soak` load [default: 10; --quick: 45 seconds].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1440))]
    soak_minutes: Option<u64>,
    /// Deliveries/s the `soak` offers.
    #[arg(long, default_value_t = 500.0)]
    soak_rate: f64,
}

impl Args {
    fn plan(&self) -> Plan {
        let q = self.quick;
        let pick =
            |v: Option<u64>, full: u64, quick: u64| v.unwrap_or(if q { quick } else { full });
        Plan {
            quick: q,
            drain_n: pick(self.deliveries, 100_000, 10_000).max(2),
            backlog_n: pick(self.backlog, 1_000_000, 100_000),
            replay_n: pick(self.replay_deliveries, 100_000, 10_000).max(4),
            ingest_window: Duration::from_secs(pick(self.ingest_secs, 10, 5).max(1)),
            ingest_clients: self.clients.max(1),
            step: Duration::from_secs(pick(self.step_secs, 5, 2).max(1)),
            light_window: Duration::from_secs(pick(self.light_secs, 10, 5).max(1)),
            media_bytes: 1 << 30,
            concurrency: self.concurrency.max(1),
            per_host: self.per_host_concurrency.unwrap_or(self.concurrency).max(1),
            customer: self.customer,
            scaleout_workers: self
                .scaleout_workers
                .iter()
                .map(|&w| usize::from(w))
                .collect(),
            scaleout_same_concurrency: self.scaleout_same_concurrency,
            soak_duration: match self.soak_minutes {
                Some(m) => Duration::from_secs(m * 60),
                None if q => Duration::from_secs(45),
                None => Duration::from_secs(600),
            },
            soak_rate: if self.soak_rate.is_finite() && self.soak_rate >= 50.0 {
                self.soak_rate
            } else {
                50.0
            },
        }
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let mut wanted = self.only.clone();
        if wanted.contains(&Scenario::Backlog) && !wanted.contains(&Scenario::Drain) {
            wanted.push(Scenario::Drain);
        }
        // Every run measures its ceiling: the other figures are read against it.
        if !wanted.is_empty() && !wanted.contains(&Scenario::Ceiling) {
            wanted.push(Scenario::Ceiling);
        }
        // The soak takes minutes: only when asked for, or short with --quick.
        let soak = (wanted.contains(&Scenario::Soak) || (wanted.is_empty() && self.quick))
            .then_some(Scenario::Soak);
        ALL.into_iter()
            .filter(|s| wanted.is_empty() || wanted.contains(s))
            .chain(soak)
            .collect()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` when one failed or the run was interrupted.
async fn run(args: Args) -> anyhow::Result<bool> {
    let plan = args.plan();
    let bin = harness::locate_postback(args.postback.clone())?;
    let stale = harness::staleness_warning(&bin);
    if let Some(w) = &stale {
        eprintln!("bench: WARNING: {w}");
    }
    harness::raise_fd_limit();
    let dir = TempDir::create(args.keep)?;
    println!(
        "bench: postback binary {}; starting PostgreSQL in {}",
        bin.display(),
        dir.path().display()
    );
    let pg = Pg::start(dir.path().join("pg")).await?;
    let durability = format!(
        "fsync={}, synchronous_commit={}",
        pg.setting("fsync").await,
        pg.setting("synchronous_commit").await
    );
    if durability != "fsync=on, synchronous_commit=on" {
        bail!("durability is not on ({durability}); the benchmark refuses to run");
    }
    let machine = Machine::describe(pg.bin_dir());
    println!(
        "bench: {} cores, {} memory, {}, {}",
        machine.cores, machine.mem_total, machine.postgres, durability
    );
    let mut ctx = Ctx {
        plan: plan.clone(),
        bin: bin.clone(),
        pg,
        dir: dir.path().to_path_buf(),
        token: format!("bench-{}", uuid::Uuid::new_v4().simple()),
    };
    let mut report = Report::default();
    let which = args.scenarios();
    let mut comparison = None;
    let interrupted = match &args.baseline {
        Some(base) => {
            let base = harness::locate_postback(Some(base.clone()))?;
            let mut cmp = ab::Comparison::default();
            let runs = args.runs.unwrap_or(3);
            let interrupted = tokio::select! {
                () = ab_rounds(&mut ctx, &which, [&base, &bin], runs, &mut cmp) => false,
                () = interrupt() => true,
            };
            report.failures = cmp.failures.clone();
            comparison = Some((base, cmp));
            interrupted
        }
        None => {
            if args.runs.is_some_and(|r| r > 1) {
                bail!("--runs above 1 needs --baseline (the A/B mode)");
            }
            tokio::select! {
                () = run_scenarios(&ctx, &which, &mut report) => false,
                () = interrupt() => true,
            }
        }
    };
    report.finish_memory();
    report.against_ceiling();
    if let Some(w) = stale {
        report.detail(format!("WARNING: {w}"));
    }
    let header = Header {
        command: command_line(),
        quick: plan.quick,
        machine,
        durability,
        settings: format!(
            "POSTBACK_CONCURRENCY={}, POSTBACK_PER_HOST_CONCURRENCY={}, other settings at their defaults \
             (media run: POSTBACK_ATTEMPT_TIMEOUT=300s); callbacks and API bodies of 1 KiB",
            plan.concurrency, plan.per_host
        ),
        interrupted,
    };
    let md = match &comparison {
        Some((base, cmp)) => format!(
            "{}{}",
            report::header_markdown(&header),
            cmp.markdown(&base.display().to_string(), &bin.display().to_string())
        ),
        None => report.markdown(&header),
    };
    println!("\n{md}");
    if let Some(path) = &args.markdown {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(f, "\n{md}").with_context(|| format!("write {}", path.display()))?;
        println!("bench: report appended to {}", path.display());
    }
    for f in &report.failures {
        eprintln!("bench: FAILED {f}");
    }
    let Ctx { pg, .. } = ctx;
    pg.stop().await?;
    drop(dir);
    Ok(!interrupted && report.failures.is_empty())
}

/// A/B rounds: the ceiling once per round, then both binaries in
/// alternating order (A B, B A, …), each on fresh databases.
async fn ab_rounds(
    ctx: &mut Ctx,
    which: &[Scenario],
    [base, candidate]: [&PathBuf; 2],
    runs: u32,
    cmp: &mut ab::Comparison,
) {
    let binary_scenarios: Vec<Scenario> = which
        .iter()
        .copied()
        .filter(|s| *s != Scenario::Ceiling)
        .collect();
    for round in 0..runs {
        if which.contains(&Scenario::Ceiling) {
            let mut shared = Report::default();
            run_scenarios(ctx, &[Scenario::Ceiling], &mut shared).await;
            cmp.failures.extend(shared.failures);
            cmp.shared.push(shared.figures);
        }
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_candidate in order {
            let bin = if is_candidate { candidate } else { base };
            println!(
                "\n#### round {} of {runs}: {} ({})",
                round + 1,
                if is_candidate {
                    "candidate"
                } else {
                    "baseline"
                },
                bin.display()
            );
            ctx.bin = bin.clone();
            let mut report = Report::default();
            run_scenarios(ctx, &binary_scenarios, &mut report).await;
            cmp.add(is_candidate, report);
        }
    }
}

async fn run_scenarios(ctx: &Ctx, which: &[Scenario], report: &mut Report) {
    for &s in which {
        let (name, title) = match s {
            Scenario::Ceiling => ("ceiling", "0. ceiling: bare HTTP, no Postback"),
            Scenario::Drain => ("drain", "1. drain"),
            Scenario::Ingest => ("ingest", "2. ingest"),
            Scenario::E2e => ("end to end", "3. end to end"),
            Scenario::Light => ("light load", "4. first-attempt latency at light load"),
            Scenario::Backlog => ("backlog", "5. backlog"),
            Scenario::Memory => ("memory", "6. memory: 1 GiB media stream"),
            Scenario::Scaleout => ("scaleout", "7. scale-out: several workers on one database"),
            Scenario::Soak => ("soak", "8. soak: a fixed rate through faults"),
            Scenario::Replay => ("replay", "9. bulk replay of failed deliveries"),
        };
        println!("\n== {title} ==");
        let started = Instant::now();
        let outcome = match s {
            Scenario::Ceiling => ceiling::ceiling(ctx, report).await,
            Scenario::Drain => scenarios::drain(ctx, report).await,
            Scenario::Ingest => scenarios::ingest(ctx, report).await,
            Scenario::E2e => scenarios::end_to_end(ctx, report).await,
            Scenario::Light => scenarios::light(ctx, report).await,
            Scenario::Backlog => scenarios::backlog(ctx, report).await,
            Scenario::Memory => scenarios::memory(ctx, report).await,
            Scenario::Scaleout => scaleout::scaleout(ctx, report).await,
            Scenario::Soak => soak::soak(ctx, report).await,
            Scenario::Replay => replay::replay(ctx, report).await,
        };
        if let Err(err) = outcome {
            eprintln!("bench: {name} failed: {err:#}");
            report.failed(name, &err);
        }
        println!("  ({name}: {:.1} s)", started.elapsed().as_secs_f64());
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupt() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    eprintln!("bench: interrupted; stopping the children and PostgreSQL");
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = "cargo run --release -p postback-bench".to_owned();
    if !args.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&args.join(" "));
    }
    cmd
}
