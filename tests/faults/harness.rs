//! What the fault cases share beyond `postback-test-support` (which owns
//! the private PostgreSQL cluster per case, the child-process runner and
//! the receivers): one case at a time (timings mean something on two
//! cores), `postback serve` / `worker` children with the suite's settings
//! and panicking waits, and queueing many deliveries in one transaction as
//! an embedder would.
//!
//! It must not hold infrastructure the other harnesses could use (that
//! goes to `test-support/`), nor assertions of a particular case.

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postback_test_support::child::{Child, Options};
use serde_json::{json, Value};
use sqlx::PgPool;
use time::OffsetDateTime;

pub use postback_test_support::pg::PrivatePg;

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

// ------------------------------------------------------- postback processes

/// A `postback` child process of the binary under test (see
/// [`Child`]: its log is kept and its tail shown when the test fails;
/// dropping it kills it with SIGKILL). Waits panic instead of failing.
pub struct Postback(Child);

impl Deref for Postback {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Postback {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Settings every child gets: loopback receivers allowed, JSON logs.
fn base_env(database_url: &str) -> [(&str, &str); 4] {
    [
        ("DATABASE_URL", database_url),
        ("POSTBACK_EGRESS_ALLOW", "127.0.0.0/8"),
        ("POSTBACK_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,sqlx=warn"),
    ]
}

impl Postback {
    /// `postback <subcommand>` on `database_url` with `env` on top of the
    /// base settings (nothing inherited from the test's own environment).
    pub fn spawn(name: &str, subcommand: &str, database_url: &str, env: &[(&str, &str)]) -> Self {
        let all = base_env(database_url)
            .into_iter()
            .chain(env.iter().copied());
        let child = Child::spawn(name, Path::new(BIN), subcommand, all, Options::default())
            .expect("spawn postback");
        Postback(child)
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
        p.0.wait_ready(&base, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
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
        self.0
            .wait_log(limit, pred)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// SIGTERM, then expects a clean exit (status 0) within `limit`.
    pub async fn stop(&mut self, limit: Duration) {
        self.sigterm();
        let status = self.wait_exit(limit).await;
        assert!(status.success(), "{} exited with {status}", self.name());
    }

    /// Waits for it to exit; panics after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.0
            .wait_exit(limit)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
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
    let batch: Vec<postback::store::deliveries::NewDelivery> = (0..n)
        .map(|i| {
            postback::store::deliveries::NewDelivery::generic_json(
                &format!("{url}/{i}"),
                format!("{{\"n\":{i}}}").into_bytes(),
                expires,
            )
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
