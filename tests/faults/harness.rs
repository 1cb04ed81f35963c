//! What every fault case stands on: a private PostgreSQL cluster per test
//! (stopped on drop, also when the test panics), `postback` child processes
//! of the real binary (killed on drop, their log kept and shown when the
//! test fails), one test at a time (timings mean something on two cores),
//! and queueing many deliveries in one transaction as an embedder would.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postback::pgcluster::Cluster;
use serde_json::{json, Value};
use sqlx::PgPool;
use time::OffsetDateTime;

/// The `postback` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_postback");
/// Bearer token of the `serve` processes.
pub const TOKEN: &str = "fault-token";

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one case alone (the cases measure rates and timeouts: two of them
/// at once on a two-core machine would measure each other), on a runtime
/// of its own, bounded by `limit`.
pub fn run_case<F: std::future::Future<Output = ()>>(limit: Duration, case: F) {
    let _alone = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(limit, case)
            .await
            .unwrap_or_else(|_| panic!("the case did not finish within {limit:?}"))
    });
    // Receivers and pollers spawned by the case end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
}

// ------------------------------------------------------------ PostgreSQL

/// A private cluster in its own temporary directory: the test may stop and
/// start it at will without touching any other test's database. Dropping
/// it stops the server and removes the directory.
pub struct PrivatePg {
    cluster: Option<Cluster>,
    dir: PathBuf,
}

impl PrivatePg {
    /// initdb + start, in a fresh directory named after the case.
    pub async fn start(case: &str) -> PrivatePg {
        let dir = std::env::temp_dir().join(format!("pbf-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let at = dir.clone();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(&at))
            .await
            .expect("join")
            .expect("start a private PostgreSQL cluster");
        PrivatePg {
            cluster: Some(cluster),
            dir,
        }
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster")
    }

    /// The libpq URL of its `postgres` database.
    pub fn url(&self) -> String {
        self.cluster().url()
    }

    /// A pool on the cluster, with Postback's schema migrated.
    pub async fn pool(&self) -> PgPool {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET search_path TO postback")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(&self.url())
            .await
            .expect("test pool");
        postback::migrate(&pool).await.expect("migrate");
        pool
    }

    /// `pg_ctl stop -m fast` as the cluster's owner; returns once it is down.
    pub async fn stop_for_restart(&mut self) {
        let cluster = self.cluster.take().expect("cluster");
        let (cluster, stopped) = tokio::task::spawn_blocking(move || {
            let stopped = cluster.stop_for_restart();
            (cluster, stopped)
        })
        .await
        .expect("join");
        self.cluster = Some(cluster);
        stopped.expect("pg_ctl stop -m fast");
    }

    /// `pg_ctl start` again on the same data and socket.
    pub async fn start_again(&mut self) {
        let mut cluster = self.cluster.take().expect("cluster");
        let (cluster, started) = tokio::task::spawn_blocking(move || {
            let started = cluster.start_again();
            (cluster, started)
        })
        .await
        .expect("join");
        self.cluster = Some(cluster);
        started.expect("pg_ctl start");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            // Already down (a case that stopped it and then failed) is fine.
            let _ = cluster.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------- postback processes

/// A `postback` child process. Its stderr (JSON log lines) is kept; when
/// the test fails, the tail is printed. Dropping it kills it (SIGKILL).
pub struct Postback {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

/// Settings every child gets: loopback receivers allowed, JSON logs.
fn base_env(database_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url),
        ("POSTBACK_EGRESS_ALLOW", "127.0.0.0/8"),
        ("POSTBACK_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,sqlx=warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

impl Postback {
    /// `postback <subcommand>` on `database_url` with `env` on top of the
    /// base settings (nothing inherited from the test's own environment).
    pub fn spawn(name: &str, subcommand: &str, database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("POSTBACK_") || key == "DATABASE_URL" || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.envs(base_env(database_url));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg(subcommand)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postback");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Postback {
            name: name.to_owned(),
            child,
            log,
            exited: None,
        }
    }

    /// `postback serve` with its API on a free loopback port; returns once
    /// `/readyz` answers 200, with the API's base URL.
    pub async fn serve(name: &str, database_url: &str, env: &[(&str, &str)]) -> (Self, String) {
        let mut all = vec![
            ("POSTBACK_LISTEN", "127.0.0.1:0"),
            ("POSTBACK_API_TOKEN", TOKEN),
        ];
        all.extend_from_slice(env);
        let mut p = Self::spawn(name, "serve", database_url, &all);
        let line = p
            .wait_log(Duration::from_secs(30), |l| l["message"] == "API listening")
            .await;
        let addr = line["addr"].as_str().expect("addr in the log").to_owned();
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: /readyz never said 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (p, base)
    }

    /// `postback worker`; returns once it logged that it runs.
    pub async fn worker(name: &str, database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut p = Self::spawn(name, "worker", database_url, env);
        p.wait_log(Duration::from_secs(30), |l| l["message"] == "running")
            .await;
        p
    }

    /// Waits for a JSON log line matching `pred`; panics after `limit` or
    /// if the process exits first.
    pub async fn wait_log(&mut self, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| pred(l));
            if let Some(line) = found {
                return line;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{}: expected log line not seen in {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its log so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Panics if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("{} exited unexpectedly: {status}", self.name);
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, the way systemd or Kubernetes stops it.
    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// SIGTERM, then expects a clean exit (status 0) within `limit`.
    pub async fn stop(&mut self, limit: Duration) {
        self.sigterm();
        let status = self.wait_exit(limit).await;
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// Waits for it to exit; panics after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Postback {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let lines = self.lines();
            let file = std::env::temp_dir().join(format!(
                "postback-faults-{}-{}.log",
                std::process::id(),
                self.name.replace(' ', "-")
            ));
            let _ = std::fs::write(&file, lines.join("\n"));
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!(
                "---- last log lines of {} (all of it in {}) ----",
                self.name,
                file.display()
            );
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// A plain client for a `serve` API.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// The body of a generic delivery to `url`.
pub fn delivery_body(url: &str, n: usize) -> Value {
    json!({"url": url, "json": {"n": n}})
}

// ------------------------------------------------------------------ queue

/// Queues `n` generic deliveries to `url` in one transaction (as an
/// embedding backend would) and wakes the workers; returns their ids.
pub async fn queue_many(pool: &PgPool, url: &str, n: usize) -> Vec<String> {
    let expires = OffsetDateTime::now_utc() + time::Duration::days(1);
    let host = url::Url::parse(url)
        .expect("url")
        .host_str()
        .expect("host")
        .to_owned();
    let batch: Vec<postback::store::deliveries::NewDelivery> = (0..n)
        .map(|i| postback::store::deliveries::NewDelivery {
            id: uuid::Uuid::now_v7(),
            job_id: None,
            customer_id: None,
            kind: postback::state::DeliveryKind::Generic,
            method: postback::Method::Post,
            url: format!("{url}/{i}"),
            host: host.clone(),
            content_type: "application/json".into(),
            headers: json!({}),
            auth: None,
            body: Some(format!("{{\"n\":{i}}}").into_bytes()),
            file_path: None,
            expires_at: expires,
        })
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    postback::store::deliveries::insert(&mut tx, &postback::store::Schema::default(), &batch)
        .await
        .expect("insert");
    postback::intake::notify_workers(&mut tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");
    batch.iter().map(|d| d.id.to_string()).collect()
}

/// How many deliveries are in `state`.
pub async fn count_state(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Waits until every id in `ids` is recorded `delivered`; panics after `limit`.
pub async fn wait_delivered(pool: &PgPool, ids: &HashSet<String>, limit: Duration) {
    let wanted: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().expect("uuid")).collect();
    let deadline = Instant::now() + limit;
    loop {
        let delivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM postback.deliveries WHERE id = ANY($1) AND state = 'delivered'",
        )
        .bind(&wanted)
        .fetch_one(pool)
        .await
        .expect("count delivered");
        if delivered == wanted.len() as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {} recorded as delivered after {limit:?}",
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
