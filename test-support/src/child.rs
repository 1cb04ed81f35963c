//! The real `postback` binary as a child process: started with a clean
//! environment (every `POSTBACK_*`, `DATABASE_URL` and `RUST_LOG` of the
//! caller removed, then exactly what the caller sets), its stdout and
//! stderr kept in a log file, waited on until ready, and stopped when
//! dropped (at once, or SIGTERM first), with the end of its log printed
//! when the thread that owns it panics.
//!
//! It must not locate the binary (callers pass its path: the tests'
//! `env!("CARGO_BIN_EXE_postback")`, the benchmark's own directory), nor
//! decide any setting of the child beyond the environment scrub.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How a [`Child`] is run and put away.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where its stdout and stderr go. `None`: a file in the temporary
    /// directory, removed on drop unless the owning thread is panicking.
    /// A given file is always left in place.
    pub log: Option<PathBuf>,
    /// On drop: SIGTERM and up to this long for it to exit before SIGKILL.
    /// `None`: SIGKILL at once.
    pub drop_grace: Option<Duration>,
    /// SIGTERM the child when the thread that spawned it dies
    /// (`PR_SET_PDEATHSIG`), so that a killed parent leaves nothing behind.
    pub die_with_parent: bool,
}

/// A running `postback <subcommand>`.
pub struct Child {
    name: String,
    inner: std::process::Child,
    pid: u32,
    log: PathBuf,
    remove_log: bool,
    drop_grace: Option<Duration>,
    exited: Option<ExitStatus>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Child {
    /// Runs `bin subcommand` with `env` on top of a copy of this process's
    /// environment from which every `POSTBACK_*`, `DATABASE_URL` and
    /// `RUST_LOG` is removed (the child runs with its documented defaults
    /// plus exactly what is set here).
    pub fn spawn<K, V>(
        name: &str,
        bin: &Path,
        subcommand: &str,
        env: impl IntoIterator<Item = (K, V)>,
        options: Options,
    ) -> anyhow::Result<Child>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let (log, remove_log) = match options.log {
            Some(path) => (path, false),
            None => {
                let file = format!(
                    "postback-child-{}-{}-{}.log",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed),
                    name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
                );
                (std::env::temp_dir().join(file), true)
            }
        };
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg(subcommand);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("POSTBACK_") || k == "DATABASE_URL" || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env).stdin(Stdio::null()).stdout(out).stderr(err);
        if options.die_with_parent {
            // SAFETY: prctl is async-signal-safe; nothing else runs in the hook.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let inner = cmd
            .spawn()
            .with_context(|| format!("start {} {subcommand}", bin.display()))?;
        Ok(Child {
            name: name.to_owned(),
            pid: inner.id(),
            inner,
            log,
            remove_log,
            drop_grace: options.drop_grace,
            exited: None,
        })
    }

    /// The name it was given (in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its log so far, a line each.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The last `n` lines of its log (read from the last 16 KiB).
    pub fn log_tail(&self, n: usize) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return "(no log)".into();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.inner.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Fails, with the end of its log, if it has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait() {
            bail!(
                "{} exited unexpectedly ({status}); end of its log:\n{}",
                self.name,
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// Panics, with the end of its log, if it has exited.
    pub fn assert_running(&mut self) {
        if let Err(err) = self.ensure_running() {
            panic!("{err:#}");
        }
    }

    /// Its resident memory (see [`memory`]); `None` once it has exited.
    pub fn memory(&self) -> Option<Memory> {
        memory(self.pid)
    }

    /// Sends SIGTERM, the way systemd or Kubernetes stops it.
    pub fn sigterm(&self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
    }

    /// Waits up to `limit` for it to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL (and an
    /// error saying so).
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Ok(status);
        }
        self.sigterm();
        match self.wait_exit(grace).await {
            Ok(status) => Ok(status),
            Err(_) => {
                let _ = self.inner.kill();
                self.exited = self.inner.wait().ok();
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed)",
                    self.name
                )
            }
        }
    }

    /// Waits for a JSON log line matching `pred`; fails after `limit` or
    /// when it exits first.
    pub async fn wait_log(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| pred(l));
            if let Some(line) = found {
                return Ok(line);
            }
            self.ensure_running()?;
            if Instant::now() >= deadline {
                bail!("{}: expected log line not seen in {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET base/readyz` answers 200; fails after `limit` or
    /// when it exits first.
    pub async fn wait_ready(&mut self, base: &str, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + limit;
        loop {
            self.ensure_running()?;
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {base}/readyz did not answer 200 within {limit:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            if let Some(grace) = self.drop_grace {
                self.sigterm();
                let until = Instant::now() + grace;
                while self.try_wait().is_none() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if self.try_wait().is_none() {
                let _ = self.inner.kill();
                let _ = self.inner.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} (all of it in {}) ----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        } else if self.remove_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A free loopback port (bound, then released: the child binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Resident memory of a process, in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// Resident at its peak (`VmHWM`).
    pub hwm_kib: u64,
    /// Resident anonymous memory (`RssAnon`): RSS without the shared
    /// memory and file pages it maps.
    pub anon_kib: u64,
}

/// The resident memory of process `pid`; `None` once it has exited.
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printenv NAME` stands in for `postback`: it prints the variable
    /// and exits 1 when it is unset.
    fn printenv(env: &[(&str, &str)]) -> Child {
        Child::spawn(
            "printenv",
            Path::new("/usr/bin/printenv"),
            "POSTBACK_TEST_SUPPORT_PROBE",
            env.iter().copied(),
            Options::default(),
        )
        .expect("spawn printenv")
    }

    #[tokio::test]
    async fn the_childs_environment_is_scrubbed_then_set_and_its_output_logged() {
        std::env::set_var("POSTBACK_TEST_SUPPORT_PROBE", "inherited");
        let mut scrubbed = printenv(&[]);
        let status = scrubbed.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(1), "the caller's POSTBACK_* leaked");

        let mut given = printenv(&[("POSTBACK_TEST_SUPPORT_PROBE", "given")]);
        let status = given.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(status.success());
        assert_eq!(given.lines(), ["given"]);
        assert!(given.ensure_running().is_err());
        let log = given.log_path().to_owned();
        drop(given);
        assert!(!log.exists(), "a temporary log is removed on drop");
    }
}
