//! The integration tests' own harness: a `postback serve` assembled in
//! this process exactly as the binary does it (`runtime::Process`) on a
//! fresh database of the shared test cluster, with the test settings and
//! an authenticated client. The cluster and the loopback receivers come
//! from `postback-test-support` (re-exported here so that the test modules
//! keep one `use crate::helpers::…`). Nothing is mocked.
//!
//! It must not grow infrastructure another harness could use (that goes
//! to `test-support/`), nor assertions about Postback's behaviour.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postback::runtime::{Process, Role};
use postback::Config;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use postback_test_support::pg::fresh_database;
pub use postback_test_support::receiver::{Answer, Received, Receiver};

pub const TOKEN: &str = "test-token";

/// Settings of a test server: loopback allowed (receivers live there),
/// a compressed schedule, short timeouts.
pub fn test_config(database_url: &str) -> Config {
    Config {
        database_url: Some(database_url.to_owned()),
        listen: "127.0.0.1:0".parse().unwrap(),
        api_token: Some(TOKEN.to_owned()),
        egress_allow: vec!["127.0.0.0/8".parse().unwrap()],
        retry_immediate: 2,
        retry_first_delay: Duration::from_secs(1),
        retry_max_delay: Duration::from_secs(4),
        retry_give_up: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(2),
        concurrency: 64,
        per_host_concurrency: 16,
        ..Config::default()
    }
}

/// A running `serve` on its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub database_url: String,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Runs one statement of the test's own (a fixture change).
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The one `bigint` that `sql` (a `SELECT count(*) …`) answers.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `serve` with the test settings.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// `serve` with the test settings changed by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let url = fresh_database().await;
        let mut config = test_config(&url);
        tweak(&mut config);
        Self::spawn_config(config).await
    }

    /// `serve` with exactly `config`.
    pub async fn spawn_config(config: Config) -> TestApp {
        let process = Process::start(config.clone(), Role::Serve)
            .await
            .expect("serve starts");
        let addr = process.api_addr().expect("API bound");
        let database_url = process.database_url().to_owned();
        let pool = postback_test_support::pg::postback_pool(&database_url).await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(process.run(shutdown.clone()));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            pool,
            database_url,
            config,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request")
    }

    /// JSON of a GET that must answer 200.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("json")
    }

    /// Row counts of every table, to prove a refused request stored nothing.
    pub async fn table_counts(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for table in ["jobs", "deliveries", "payloads", "attempts"] {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM postback.{table}"))
                .fetch_one(&self.pool)
                .await
                .expect("count");
            out.push((table.to_owned(), n));
        }
        out
    }

    /// Polls the delivery until `done` says so, or panics after `limit`.
    pub async fn wait_delivery(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let view = self.get_json(&format!("/v1/deliveries/{id}")).await;
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {id} did not get there in {limit:?}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server the way SIGTERM does and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until `GET /readyz` on `port` of a `postback serve` child answers
/// 200; panics if `child` exits first or after a minute.
pub fn wait_ready(port: u16, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited early with {status}");
        }
        let ready = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .ok()?;
                let mut buf = String::new();
                s.read_to_string(&mut buf).ok()?;
                Some(buf.starts_with("HTTP/1.1 200"))
            });
        if ready == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "serve did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The binary with none of the caller's Postback settings.
pub fn postback() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_postback"));
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTBACK_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

pub fn output(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.output().expect("run postback");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// [`postback`] on the database at `database_url`.
pub fn postback_on(database_url: &str) -> std::process::Command {
    let mut cmd = postback();
    cmd.env("DATABASE_URL", database_url);
    cmd
}

/// Runs `cmd`: its exit code, stdout and stderr apart.
pub fn run_split(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run postback");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
