//! What the scenarios stand on: the temporary directory, the private
//! PostgreSQL cluster (durability on, as `serve` runs it), `postback`
//! child processes with their memory figures, and the machine description.
//! Every guard here stops what it started when dropped (error, panic or
//! Ctrl-C), so a run never leaves a server or a child behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use postback::pgcluster::Cluster;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

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

/// The private cluster, stopped on drop.
pub struct Pg {
    cluster: Option<Cluster>,
    admin: PgPool,
    bin_dir: PathBuf,
}

impl Pg {
    /// `Cluster::start` in `dir` (same code and settings as `serve`).
    pub async fn start(dir: PathBuf) -> anyhow::Result<Pg> {
        let bin_dir = postback::pgcluster::find_server_binaries().context(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under \
             /usr/lib/postgresql/*/bin: install the PostgreSQL server (e.g. `apt-get install postgresql`)",
        )?;
        let mut cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir))
            .await
            .context("cluster start task")?
            .context("start the private PostgreSQL cluster")?;
        let admin = match PgPoolOptions::new()
            .max_connections(2)
            .connect(&cluster.url())
            .await
        {
            Ok(pool) => pool,
            Err(err) => {
                let _ = cluster.stop();
                return Err(err).context("connect to the private cluster");
            }
        };
        Ok(Pg {
            cluster: Some(cluster),
            admin,
            bin_dir,
        })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    pub fn url_for(&self, db: &str) -> String {
        self.cluster
            .as_ref()
            .map(|c| c.url_for(db))
            .unwrap_or_default()
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

    /// Stops the cluster and says whether it stopped cleanly.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.admin.close().await;
        if let Some(mut cluster) = self.cluster.take() {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .context("cluster stop task")?
                .context("stop the private cluster")?;
        }
        Ok(())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            if let Err(err) = cluster.stop() {
                eprintln!("bench: stopping PostgreSQL failed: {err}");
            }
        }
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

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn mem_of(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
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
        let tick = clock_tick();
        let postback = postback_pid
            .and_then(proc_stat)
            .map_or(0.0, |s| (s.utime + s.stime) as f64 / tick);
        let bench =
            proc_stat(std::process::id()).map_or(0.0, |s| (s.utime + s.stime) as f64 / tick);
        let postgres = std::fs::read_to_string(pg_data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            .map_or(0.0, |pm| {
                let mut ticks =
                    proc_stat(pm).map_or(0, |s| s.utime + s.stime + s.cutime + s.cstime);
                if let Ok(dir) = std::fs::read_dir("/proc") {
                    for e in dir.filter_map(|e| e.ok()) {
                        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                        else {
                            continue;
                        };
                        if let Some(s) = proc_stat(pid).filter(|s| s.ppid == pm) {
                            ticks += s.utime + s.stime;
                        }
                    }
                }
                ticks as f64 / tick
            });
        Cpu {
            at: Instant::now(),
            postback,
            postgres,
            bench,
        }
    }

    /// `CPU: postback 1.2 s, PostgreSQL 2.3 s, bench 0.8 s in 2.0 s`.
    pub fn since(&self, before: &Cpu) -> String {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        format!(
            "CPU in {wall:.1} s: postback {:.1} s, PostgreSQL {:.1} s, bench (load + receiver) {:.1} s",
            self.postback - before.postback,
            self.postgres - before.postgres,
            self.bench - before.bench,
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

/// A `postback` child process: SIGTERM (then SIGKILL) on drop.
pub struct Child {
    name: String,
    inner: Option<std::process::Child>,
    log: PathBuf,
    pid: u32,
}

impl Child {
    /// Runs `bin sub` with `env` added to a copy of ours from which every
    /// `POSTBACK_*`, `DATABASE_URL` and `RUST_LOG` is removed (the child
    /// runs with its documented defaults plus exactly what we set).
    pub fn spawn(
        name: &str,
        bin: &Path,
        sub: &str,
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Child> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg(sub);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("POSTBACK_") || k == "DATABASE_URL" || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // If the bench itself is killed outright, its children follow it.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the hook.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let inner = cmd
            .spawn()
            .with_context(|| format!("start {} {sub}", bin.display()))?;
        Ok(Child {
            name: name.to_owned(),
            pid: inner.id(),
            inner: Some(inner),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mem(&self) -> Option<Mem> {
        mem_of(self.pid)
    }

    /// Fails (with the end of its log) if the child has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(inner) = self.inner.as_mut() {
            if let Some(status) = inner.try_wait()? {
                self.inner = None;
                bail!(
                    "{} exited unexpectedly ({status}); end of its log:\n{}",
                    self.name,
                    log_tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Returns
    /// the memory figures read just before the signal.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<Option<Mem>> {
        let mem = self.mem();
        let Some(mut inner) = self.inner.take() else {
            return Ok(mem);
        };
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let until = Instant::now() + grace;
        let status = loop {
            if let Some(status) = inner.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= until {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match status {
            Some(s) if s.success() => Ok(mem),
            Some(s) => {
                eprintln!(
                    "bench: warning: {} exited with {s} after SIGTERM; end of its log:\n{}",
                    self.name,
                    log_tail(&self.log)
                );
                Ok(mem)
            }
            None => {
                let _ = inner.kill();
                let _ = inner.wait();
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed)",
                    self.name
                )
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match inner.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() >= until => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            let _ = inner.kill();
            let _: std::io::Result<ExitStatus> = inner.wait();
        }
    }
}

/// The last lines of a child's log.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A free loopback port (bound then released; the child binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `GET base/readyz` answers 200 (at most 60 s).
pub async fn wait_ready(child: &mut Child, base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        child.ensure_running()?;
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= until {
            bail!("{base}/readyz did not answer 200 within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
            "the `postback` binary is not at {}: build it first with `cargo build --release --bins` \
             (`cargo run --bin postback-bench` builds only the benchmark), or pass --postback PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A warning when a Postback source file is newer than the binary (the
/// benchmark would measure old code). Silent when the sources are absent.
pub fn staleness_warning(bin: &Path) -> Option<String> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![
        root.join("src"),
        root.join("migrations"),
        root.join("Cargo.toml"),
    ];
    while let Some(p) = stack.pop() {
        if p == root.join("src/bin") {
            continue;
        }
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
            "{} changed after {} was built: run `cargo build --release --bins` first, or this run measures old code",
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
