//! What the scenarios stand on beyond `postback-test-support` (which owns
//! the private cluster, the child-process runner and the receiver): the
//! temporary directory, the cluster's admin pool and its WAL/xid/wait
//! probes, `postback` children with their memory figures read from /proc,
//! CPU accounting, and the machine description. Every guard here stops
//! what it started when dropped (error, panic or Ctrl-C), so a run never
//! leaves a server or a child behind.
//!
//! It must not hold anything the tests could share (that goes to
//! `test-support/`), nor decide what a scenario measures.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use postback_test_support::child::{self, Options};
use postback_test_support::pg::PrivatePg;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub use postback_test_support::child::free_port;

/// A scratch directory removed on drop (unless asked to keep it).
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn create(keep: bool) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("postback-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The private cluster (stopped on drop) and an admin pool on it.
pub struct Pg {
    pg: PrivatePg,
    admin: PgPool,
    bin_dir: PathBuf,
}

impl Pg {
    /// A private cluster in `dir` (same code and settings as `serve`).
    pub async fn start(dir: PathBuf) -> anyhow::Result<Pg> {
        let bin_dir = postback::pgcluster::find_server_binaries().context(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under \
             /usr/lib/postgresql/*/bin: install the PostgreSQL server (e.g. `apt-get install postgresql`)",
        )?;
        let pg = PrivatePg::start_in(dir).await?;
        // On error the cluster stops as `pg` drops.
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&pg.url())
            .await
            .context("connect to the private cluster")?;
        Ok(Pg { pg, admin, bin_dir })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    pub fn url_for(&self, db: &str) -> String {
        self.pg.url_for(db)
    }

    /// A new empty database (dropped first if a previous run left it).
    pub async fn fresh_db(&self, name: &str) -> anyhow::Result<String> {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&self.admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&self.admin)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(self.url_for(name))
    }

    /// Frees the disk a scenario used (best effort).
    pub async fn drop_db(&self, name: &str) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&self.admin)
            .await;
    }

    /// `SHOW name` on the cluster.
    pub async fn setting(&self, name: &str) -> String {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| format!("? ({e})"))
    }

    /// Cluster-wide WAL position and next transaction id, to report WAL
    /// bytes and write transactions per delivery (exact, unlike the
    /// statistics views, which backends flush about once a second).
    pub async fn probe(&self) -> anyhow::Result<Probe> {
        let (lsn, xid): (String, i64) = sqlx::query_as(
            "SELECT pg_current_wal_lsn()::text, \
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&self.admin)
        .await?;
        Ok(Probe { lsn, xid })
    }

    /// WAL bytes and write transactions between two probes.
    pub async fn delta(&self, before: &Probe, after: &Probe) -> anyhow::Result<(f64, i64)> {
        let wal: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
            .bind(&after.lsn)
            .bind(&before.lsn)
            .fetch_one(&self.admin)
            .await?;
        Ok((wal, after.xid - before.xid))
    }

    /// Samples what the active backends of `db` wait on, every 20 ms,
    /// until [`WaitSampler::finish`].
    pub fn sample_waits(&self, db: &str) -> WaitSampler {
        let stop = tokio_util::sync::CancellationToken::new();
        let pool = self.admin.clone();
        let db = db.to_owned();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut samples = 0u64;
            while !until.is_cancelled() {
                let rows: Vec<String> = sqlx::query_scalar(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'on CPU') \
                     FROM pg_stat_activity \
                     WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                )
                .bind(&db)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                samples += 1;
                for r in rows {
                    *seen.entry(r).or_default() += 1;
                }
                tokio::select! {
                    _ = until.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            (seen, samples)
        });
        WaitSampler { stop, task }
    }

    /// `pg_ctl restart -m fast` (stop, then start on the same data): every
    /// connection is cut, the admin pool reconnects on next use. Returns how
    /// long the server was away.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.pg.restart().await?;
        Ok(t.elapsed())
    }

    /// Stops the cluster and says whether it stopped cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.admin.close().await;
        self.pg.stop().await
    }
}

/// See [`Pg::sample_waits`].
pub struct WaitSampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<(HashMap<String, u64>, u64)>,
}

impl WaitSampler {
    /// `PostgreSQL backends (mean 5.2 active): Lock:object 61%, on CPU 20%, …`.
    pub async fn finish(self) -> String {
        self.stop.cancel();
        let Ok((seen, samples)) = self.task.await else {
            return "PostgreSQL wait sampling failed".into();
        };
        let total: u64 = seen.values().sum();
        if total == 0 || samples == 0 {
            return "PostgreSQL backends: never active when sampled".into();
        }
        let mut waits: Vec<(String, u64)> = seen.into_iter().collect();
        waits.sort_by_key(|w| std::cmp::Reverse(w.1));
        let top: Vec<String> = waits
            .iter()
            .take(4)
            .map(|(w, n)| format!("{w} {:.0}%", *n as f64 * 100.0 / total as f64))
            .collect();
        format!(
            "PostgreSQL backends (mean {:.1} active): {}",
            total as f64 / samples as f64,
            top.join(", ")
        )
    }
}

/// See [`Pg::probe`].
#[derive(Debug, Clone)]
pub struct Probe {
    lsn: String,
    xid: i64,
}

/// Memory of a process from `/proc/<pid>/status`, in KiB (read by
/// `postback-test-support`).
pub use postback_test_support::child::Memory as Mem;

pub fn mem_of(pid: u32) -> Option<Mem> {
    child::memory(pid)
}

/// The PostgreSQL processes of the cluster whose data directory is
/// `pg_data`: its postmaster first, then every child of it.
pub fn postgres_pids(pg_data: &Path) -> Vec<u32> {
    let Some(pm) = std::fs::read_to_string(pg_data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let mut pids = vec![pm];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.filter_map(|e| e.ok()) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if proc_stat(pid).is_some_and(|s| s.ppid == pm) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// CPU time used so far by a `postback` child, PostgreSQL (postmaster,
/// its live children and the children it has reaped) and this process.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    at: Instant,
    postback: f64,
    postgres: f64,
    bench: f64,
}

impl Cpu {
    pub fn now(postback_pid: Option<u32>, pg_data: &Path) -> Cpu {
        Cpu::now_many(postback_pid.as_slice(), pg_data)
    }

    /// Like [`Cpu::now`], with the CPU of several `postback` children
    /// added up (the scale-out scenario's workers).
    pub fn now_many(postback_pids: &[u32], pg_data: &Path) -> Cpu {
        let tick = clock_tick();
        let postback = postback_pids
            .iter()
            .filter_map(|&pid| proc_stat(pid))
            .map(|s| (s.utime + s.stime) as f64 / tick)
            .sum();
        let bench =
            proc_stat(std::process::id()).map_or(0.0, |s| (s.utime + s.stime) as f64 / tick);
        // The postmaster counts the children it has reaped too.
        let postgres = postgres_pids(pg_data)
            .iter()
            .enumerate()
            .filter_map(|(i, &pid)| {
                let s = proc_stat(pid)?;
                let reaped = if i == 0 { s.cutime + s.cstime } else { 0 };
                Some(s.utime + s.stime + reaped)
            })
            .sum::<u64>() as f64
            / tick;
        Cpu {
            at: Instant::now(),
            postback,
            postgres,
            bench,
        }
    }

    /// CPU used by each process between `before` and `self`.
    pub fn since(&self, before: &Cpu) -> CpuUse {
        CpuUse {
            wall: self.at.duration_since(before.at).as_secs_f64(),
            postback: self.postback - before.postback,
            postgres: self.postgres - before.postgres,
            bench: self.bench - before.bench,
        }
    }
}

/// CPU seconds each process used over `wall` seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: f64,
    pub postback: f64,
    pub postgres: f64,
    pub bench: f64,
}

impl CpuUse {
    /// Microseconds of CPU per unit of work (`n` deliveries or requests):
    /// (postback, PostgreSQL, bench).
    pub fn per(&self, n: u64) -> (f64, f64, f64) {
        let n = n.max(1) as f64;
        (
            self.postback * 1e6 / n,
            self.postgres * 1e6 / n,
            self.bench * 1e6 / n,
        )
    }
}

impl std::fmt::Display for CpuUse {
    /// `CPU in 2.0 s: postback 1.2 s, PostgreSQL 2.3 s, bench 0.8 s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU in {:.1} s: postback {:.1} s, PostgreSQL {:.1} s, bench (load + receiver) {:.1} s",
            self.wall, self.postback, self.postgres, self.bench
        )
    }
}

struct ProcStat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields from the state (field 3): ppid is 4, utime 14, stime 15, cutime 16, cstime 17.
    let num = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: num(4)? as u32,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
    })
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A `postback` child process: SIGTERM (then SIGKILL) on drop, and when
/// the bench itself dies; its log stays in the run's directory.
pub struct Child(child::Child);

impl Deref for Child {
    type Target = child::Child;
    fn deref(&self) -> &child::Child {
        &self.0
    }
}

impl DerefMut for Child {
    fn deref_mut(&mut self) -> &mut child::Child {
        &mut self.0
    }
}

impl Child {
    /// Runs `bin sub` with exactly `env` on top of the scrubbed environment
    /// (see [`child::Child::spawn`]), logging to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        sub: &str,
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Child> {
        let options = Options {
            log: Some(log),
            drop_grace: Some(Duration::from_secs(10)),
            die_with_parent: true,
        };
        let env = env.iter().map(|(k, v)| (k, v));
        child::Child::spawn(name, bin, sub, env, options).map(Child)
    }

    pub fn mem(&self) -> Option<Mem> {
        mem_of(self.pid())
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Returns
    /// the memory figures read just before the signal.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<Option<Mem>> {
        let mem = self.mem();
        let status = self.0.terminate(grace).await?;
        if !status.success() {
            eprintln!(
                "bench: warning: {} exited with {status} after SIGTERM; end of its log:\n{}",
                self.name(),
                self.log_tail(20)
            );
        }
        Ok(mem)
    }
}

/// Waits until `GET base/readyz` answers 200 (at most 60 s).
pub async fn wait_ready(child: &mut Child, base: &str) -> anyhow::Result<()> {
    child.wait_ready(base, Duration::from_secs(60)).await
}

/// The `postback` binary: `--postback PATH`, else next to this executable.
pub fn locate_postback(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => {
            let me = std::env::current_exe().context("where is postback-bench?")?;
            me.parent()
                .context("postback-bench has no directory")?
                .join("postback")
        }
    };
    if !path.is_file() {
        bail!(
            "the `postback` binary is not at {}: build it first with `cargo build --release -p postback -p postback-bench` \
             (`cargo run -p postback-bench` builds only the benchmark), or pass --postback PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A warning when a Postback source file is newer than the binary (the
/// benchmark would measure old code). Silent when the sources are absent.
pub fn staleness_warning(bin: &Path) -> Option<String> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    // The workspace root: this crate is its `bench/` member.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![
        root.join("src"),
        root.join("migrations"),
        root.join("Cargo.toml"),
    ];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                newest = Some((m, p));
            }
        }
    }
    let (changed, path) = newest?;
    (changed > built).then(|| {
        format!(
            "{} changed after {} was built: run `cargo build --release -p postback -p postback-bench` first, or this run measures old code",
            path.strip_prefix(root).unwrap_or(&path).display(),
            bin.display()
        )
    })
}

/// Lets this process and its children open many sockets.
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Cores, memory, CPU model, PostgreSQL version, commit and date.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub mem_total: String,
    pub cpu: String,
    pub postgres: String,
    pub commit: String,
    pub date: String,
}

impl Machine {
    pub fn describe(pg_bin: &Path) -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "?".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        let postgres = run_text(Command::new(pg_bin.join("postgres")).arg("--version"))
            .unwrap_or_else(|| "?".into());
        let commit = git_commit().unwrap_or_else(|| "unknown".into());
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Machine {
            cores,
            mem_total,
            cpu,
            postgres,
            commit,
            date,
        }
    }
}

fn git_commit() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?
    };
    let head =
        run_text(
            Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["rev-parse", "--short", "HEAD"]),
        )?;
    let dirty = run_text(Command::new("git").arg("-C").arg(&dir).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    })
}

fn run_text(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
