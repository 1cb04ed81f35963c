//! Shared test harness: one real PostgreSQL cluster per test binary (the
//! same code as `serve`'s private cluster, or the server at DATABASE_URL),
//! a fresh database per test, a `postback serve` process assembled exactly
//! as the binary does it, and loopback HTTP receivers that record what
//! they get. Nothing is mocked.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use postback::pgcluster::Cluster;
use postback::runtime::{Process, Role};
use postback::Config;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token";

struct SharedCluster {
    /// URL template with `{db}` where the database name goes.
    template: String,
    admin_url: String,
}

static CLUSTER: OnceLock<SharedCluster> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(dir) = CLUSTER_DIR.get() {
        let bin = postback::pgcluster::find_server_binaries();
        if let Some(bin) = bin {
            let mut cmd = std::process::Command::new(bin.join("pg_ctl"));
            cmd.args([
                "-D",
                &dir.join("data").to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]);
            if nix::unistd::geteuid().is_root() {
                if let Ok(Some(user)) = nix::unistd::User::from_name("postgres") {
                    use std::os::unix::process::CommandExt;
                    cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
                }
            }
            let _ = cmd
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

fn shared() -> &'static SharedCluster {
    CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let mut parsed = url::Url::parse(&url).expect("DATABASE_URL is a URL");
            parsed.set_path("/{db}");
            let template = parsed.to_string().replace("%7Bdb%7D", "{db}");
            return SharedCluster {
                template,
                admin_url: url,
            };
        }
        let dir = std::env::temp_dir().join(format!("postback-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = Cluster::start(&dir).expect("start the test PostgreSQL cluster");
        let _ = CLUSTER_DIR.set(dir);
        // The harness exits through process::exit: stop the server then.
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        let admin_url = cluster.url();
        let template = cluster.url_for("{db}");
        cluster.detach();
        SharedCluster {
            template,
            admin_url,
        }
    })
}

/// A fresh, empty database of its own for one test.
pub async fn fresh_database() -> String {
    let shared = shared();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&shared.admin_url)
        .await
        .expect("connect admin");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    shared.template.replace("{db}", &name)
}

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
            .connect(&database_url)
            .await
            .expect("test pool");
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

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub peer: SocketAddr,
}

/// How a receiver answers: a queue of scripted answers, then `default`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub delay: Duration,
    pub body: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Answer {
    pub fn status(code: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            delay: Duration::ZERO,
            body: "",
            headers: Vec::new(),
        }
    }
    pub fn ok() -> Answer {
        Answer::status(200)
    }
    pub fn delayed(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
    pub fn body(mut self, body: &'static str) -> Answer {
        self.body = body;
        self
    }
    pub fn header(mut self, name: &'static str, value: &'static str) -> Answer {
        self.headers.push((name, value));
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    notify: tokio::sync::Notify,
}

/// An HTTP receiver on 127.0.0.1 that records every request.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// On a given loopback address (e.g. `127.0.0.2:0` for a second host).
    pub async fn start_on(addr: &str) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        *state.default.lock().unwrap() = Some(Answer::ok());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
    }

    /// Answers these first, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.script.lock().unwrap().extend(answers);
    }

    /// Answer after the script runs out.
    pub fn always(&self, answer: Answer) {
        *self.state.default.lock().unwrap() = Some(answer);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.state.notify.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "receiver got {} of {n} requests in {limit:?}",
                got.len()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let scripted = state.script.lock().unwrap().pop_front();
        scripted
            .or_else(|| state.default.lock().unwrap().clone())
            .unwrap_or_else(Answer::ok)
    };
    state.got.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
        peer,
    });
    state.notify.notify_waiters();
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (answer.status, answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
