//! Assembling a running process from a [`Config`]: the database (given URL
//! or the private cluster), migrations, the signing secret, the workers,
//! the API and metrics listeners, and the order in which they stop. `serve`
//! and `worker` are this with different roles; tests and the benchmark use
//! it too, so they run exactly what users run. An embedder's
//! [`Builder`](crate::embed::Builder) shares its middle part ([`Parts`]:
//! migrations, signing secret, intake handle, workers) on the caller's pool.
//! It must not parse flags.

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::delivery::Dispatcher;
use crate::intake::Postback;
use crate::pgcluster::{Cluster, ClusterError};
use crate::signing::SigningSecret;
use crate::store::{self, Schema};
use crate::throttle::{Throttle, BACKGROUND_EVERY};

/// What the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API + workers + metrics.
    Serve,
    /// Workers (+ optional metrics listener) only.
    Worker,
}

impl Role {
    /// The subcommand that runs it (`serve`, `worker`), as logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Worker => "worker",
        }
    }
}

/// The running version, as `postback --version` and `postback_build_info`
/// show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The private cluster could not be had.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The database refused us.
    #[error("database: {0}")]
    Database(#[from] crate::error::Error),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which setting named it.
        setting: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The outbound HTTP client could not be built.
    #[error("egress: {0}")]
    Egress(#[from] crate::egress::EgressError),
    /// SIGTERM/SIGINT arrived before the process was up.
    #[error("stopped by a signal during start-up")]
    Interrupted,
}

impl From<crate::delivery::DispatcherError> for StartError {
    fn from(err: crate::delivery::DispatcherError) -> Self {
        match err {
            crate::delivery::DispatcherError::Egress(e) => StartError::Egress(e),
            crate::delivery::DispatcherError::Config(e) => StartError::Config(e),
        }
    }
}

impl StartError {
    /// True when the operator must fix a setting or install something
    /// (exit 2) rather than a runtime failure (exit 1).
    pub fn is_usage(&self) -> bool {
        match self {
            StartError::Config(_) | StartError::Egress(_) => true,
            StartError::Cluster(e) => matches!(
                e,
                ClusterError::NoBinaries
                    | ClusterError::NoUnprivilegedUser
                    | ClusterError::DataDir { .. }
            ),
            StartError::Bind { .. } | StartError::Database(_) | StartError::Interrupted => false,
        }
    }
}

/// A started process, ready to [`run`](Process::run).
#[derive(Debug)]
pub struct Process {
    config: Config,
    role: Role,
    pool: PgPool,
    cluster: Option<Cluster>,
    postback: Postback,
    dispatcher: Option<Dispatcher>,
    api: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    database_url: String,
}

impl Process {
    /// Opens the database (starting the private cluster when no URL is
    /// set), migrates, loads the signing secret, builds the workers and
    /// binds the listeners. Nothing runs until [`Process::run`].
    pub async fn start(config: Config, role: Role) -> Result<Process, StartError> {
        Self::start_until(config, role, &CancellationToken::new()).await
    }

    /// [`Process::start`], given up as soon as `shutdown` is cancelled
    /// (SIGTERM while it waits for the database or migrates: the process
    /// stops instead of carrying on into a run nobody wants).
    ///
    /// Whatever ends the start early (an error, or `shutdown`), the private
    /// cluster it started is stopped again: a cluster left running holds
    /// the data directory's lock, and every later start would fail on it.
    pub async fn start_until(
        mut config: Config,
        role: Role,
        shutdown: &CancellationToken,
    ) -> Result<Process, StartError> {
        config.validate()?;
        // What an operator checks first when a process misbehaves: which
        // version runs with which settings (secrets redacted).
        tracing::info!(
            version = VERSION,
            role = role.as_str(),
            settings = %config.effective_settings(),
            "starting"
        );
        let mut cluster = None;
        if config.database_url.is_none() {
            // Not raced against `shutdown`: pg_ctl runs on a blocking thread
            // that would finish starting the server after we gave up on it.
            // It is bounded (`pg_ctl -w -t 60`); the signal is honoured
            // right after.
            let dir = config.data_dir.clone();
            let started = tokio::task::spawn_blocking(move || Cluster::start(&dir))
                .await
                .map_err(|e| ClusterError::Command {
                    command: "start".into(),
                    output: e.to_string(),
                })??;
            tracing::warn!(
                path = %config.data_dir.display(),
                "DATABASE_URL is not set: running on the private PostgreSQL cluster under {}; \
                 set DATABASE_URL if a database of your own was meant",
                config.data_dir.display()
            );
            if started.adopted() {
                tracing::warn!(
                    data_dir = %config.data_dir.display(),
                    "a PostgreSQL server was already running on the data directory (left by an earlier start); using it"
                );
            }
            let url = started.url();
            println!(
                "postback: private PostgreSQL at {url} (data in {})",
                config.data_dir.display()
            );
            config.database_url = Some(url);
            cluster = Some(started);
        }
        let assembled = tokio::select! {
            // A signal wins over a step that finished at the same moment.
            biased;
            _ = shutdown.cancelled() => Err(StartError::Interrupted),
            assembled = Self::assemble(config, role) => assembled,
        };
        match assembled {
            Ok(mut process) => {
                process.cluster = cluster;
                Ok(process)
            }
            Err(err) => {
                stop_cluster(cluster).await;
                Err(err)
            }
        }
    }

    /// Everything of [`Process::start`] after the database URL is known.
    async fn assemble(config: Config, role: Role) -> Result<Process, StartError> {
        let schema = config.db_schema.clone();
        let database_url = config.database_url.clone().unwrap_or_default();
        log_security_warnings(&config, role == Role::Serve);
        let pooled = pool_size(config.concurrency) - HELD_CONNECTIONS;
        let pool = store::connect(&database_url, &schema, pooled).await?;
        store::migrate(&pool, &schema).await?;
        // Before the workers are built, so their metrics have a recorder.
        let metrics = crate::metrics::install();
        let Parts {
            postback,
            dispatcher,
        } = Parts::assemble(&pool, &config).await?;
        let api = match role {
            Role::Serve => Some(bind(config.listen, "POSTBACK_LISTEN").await?),
            Role::Worker => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "POSTBACK_METRICS_LISTEN").await?),
            None => None,
        };
        Ok(Process {
            config,
            role,
            pool,
            cluster: None,
            postback,
            dispatcher,
            api,
            metrics_listener,
            metrics,
            database_url,
        })
    }

    /// The API's bound address (with port 0 resolved).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics listener's bound address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The database URL in use.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The Prometheus handle, when this process installed the recorder.
    pub fn metrics_handle(&self) -> Option<&metrics_exporter_prometheus::PrometheusHandle> {
        self.metrics.as_ref()
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs until `shutdown`: then the API stops accepting, workers finish
    /// their attempts in flight and write them, the pool closes and the
    /// private cluster (if any) stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let schema = self.config.db_schema.clone();
        let mut tasks = tokio::task::JoinSet::new();
        let waker = self.dispatcher.as_ref().map(Dispatcher::waker);
        let handoff = self.dispatcher.as_ref().map(Dispatcher::handoff);
        if let Some(dispatcher) = self.dispatcher.take() {
            let stop = shutdown.clone();
            tasks.spawn(async move { dispatcher.run(stop).await.map_err(anyhow::Error::from) });
        }
        tasks.spawn(infallible(crate::metrics::run_gauges(
            self.pool.clone(),
            schema.clone(),
            shutdown.clone(),
        )));
        if self.role == Role::Serve {
            tasks.spawn(infallible(run_retention(
                self.pool.clone(),
                schema,
                shutdown.clone(),
            )));
        }
        #[cfg(feature = "api")]
        if let Some(listener) = self.api.take() {
            let state = crate::api::AppState::from(crate::api::Shared {
                pool: self.pool.clone(),
                postback: self.postback.clone().with_deferred_notify(),
                notifier: crate::queue::Notifier::new(self.pool.clone()),
                handoff,
                batcher: crate::intake::Batcher::start(
                    self.pool.clone(),
                    self.config.db_schema.clone(),
                    BATCH_WRITERS,
                ),
                token: self.config.api_token.clone().map(Into::into),
                waker,
                metrics: self.metrics.clone(),
                source_addresses: self.config.egress_source_addr.into_iter().collect(),
                public_addresses: self.config.public_addresses(),
                max_body: usize::try_from(self.config.max_body).unwrap_or(usize::MAX),
                body_budget: Default::default(),
            });
            tracing::info!(addr = %listener.local_addr()?, "API listening");
            let app = crate::api::router(state);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::api::serve(listener, app, stop)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        #[cfg(feature = "api")]
        if let (Some(listener), Some(handle)) = (self.metrics_listener.take(), self.metrics.clone())
        {
            let app = crate::api::metrics_router(handle);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                crate::api::serve(listener, app, stop)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        #[cfg(not(feature = "api"))]
        let _ = (waker, handoff);
        tracing::info!(version = VERSION, role = self.role.as_str(), "running");
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(err) = outcome {
                tracing::error!(error = %format!("{err:#}"), "component failed; shutting down");
                shutdown.cancel();
                first_error.get_or_insert(err);
            }
        }
        self.pool.close().await;
        stop_cluster(self.cluster.take()).await;
        tracing::info!("stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// What `serve`, `worker` and an embedder's
/// [`Builder`](crate::embed::Builder) assemble alike on a migrated pool:
/// the intake handle and the workers, signing with the configured secret
/// (or the one stored in the database). One path, so an embedder runs what
/// users run.
#[derive(Debug)]
pub struct Parts {
    /// The library handle of intake (`create_job`, `post_result`, …).
    pub postback: Postback,
    /// The workers; `None` when `concurrency` is 0 (intake only).
    pub dispatcher: Option<Dispatcher>,
}

impl Parts {
    /// The parts for `config` (already validated) on `pool`, whose schema
    /// `config.db_schema` is migrated. Nothing runs yet.
    pub async fn assemble(pool: &PgPool, config: &Config) -> Result<Parts, StartError> {
        let secret = signing_secret(config, pool, &config.db_schema).await?;
        let postback = Postback::new(config)?;
        let dispatcher = if config.concurrency > 0 {
            Some(Dispatcher::new(pool.clone(), config, secret)?)
        } else {
            None
        };
        Ok(Parts {
            postback,
            dispatcher,
        })
    }
}

/// Logs what `config` leaves open in production (`api`: the API's own
/// settings too), once at start.
pub fn log_security_warnings(config: &Config, api: bool) {
    for warning in config.security_warnings(api) {
        tracing::warn!(target: "postback::security", "{warning}");
    }
}

/// The database connections one `serve`/`worker` process opens at most:
/// `POSTBACK_CONCURRENCY / 4`, between 16 and 64. Enough for the API's
/// concurrent requests and the workers' claim, completion, LISTEN and gauge
/// connections. The deploy files state this formula (tests/deploy.rs
/// checks them against this function).
///
/// Of these, `HELD_CONNECTIONS` (4) are the hot loops' own (`store::held`),
/// taken out of the pool for good; the pool gets the rest.
pub fn pool_size(concurrency: usize) -> u32 {
    // At most 64, so the cast cannot truncate.
    (concurrency / 4).clamp(16, 64) as u32
}

/// Connections the hot loops keep out of the pool (`store::held::Held`):
/// the claim loop, the completer and the API's group-commit writers.
const HELD_CONNECTIONS: u32 = 2 + BATCH_WRITERS as u32;

/// Adapts a component that cannot fail to the JoinSet's result type.
async fn infallible(component: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    component.await;
    Ok(())
}

/// Group-commit writers of the API: two, so one batch's commit overlaps the
/// next one's gathering. An idle writer takes the first request that
/// arrives, so every further writer splits the load into smaller batches,
/// and PostgreSQL's cost per statement (executor start-up, a lock per
/// relation and index, the commit) is paid per batch: with 4 writers the
/// 64-client ingest averaged 7.5 rows per statement, with 2 it is 1.29×
/// the requests/s at 0.67× the PostgreSQL CPU per request (BENCHMARKS.md).
const BATCH_WRITERS: usize = 2;

/// How often `serve` purges expired rows, and how many per statement.
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const RETENTION_BATCH: i64 = 500;

/// Housekeeping failures repeat on every pass while the database is away:
/// one warning a minute of each kind.
static RETENTION_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);
static ERASURE_FAILED: Throttle = Throttle::new(BACKGROUND_EVERY);

/// Purges expired jobs and deliveries in small batches until `shutdown`.
async fn run_retention(pool: PgPool, schema: Schema, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match store::admin::purge_expired_batch(&pool, &schema, RETENTION_BATCH).await {
                Ok(p) if p.jobs == 0 && p.deliveries == 0 => break,
                Ok(p) => tracing::info!(jobs = p.jobs, deliveries = p.deliveries, "purged expired"),
                Err(err) => {
                    if let Some(suppressed) = RETENTION_FAILED.admit() {
                        tracing::warn!(error = %err, suppressed, "retention pass failed; next tick retries");
                    }
                    break;
                }
            }
        }
        finish_erasures(&pool, &schema).await;
    }
}

/// Finishes erasing customers whose `DELETE` was cut short (a process
/// stopped mid-way).
async fn finish_erasures(pool: &PgPool, schema: &Schema) {
    let ids = match store::customers::being_deleted(pool, schema).await {
        Ok(ids) => ids,
        Err(err) => {
            if let Some(suppressed) = ERASURE_FAILED.admit() {
                tracing::warn!(error = %err, suppressed, "could not look for customers being erased; next pass retries");
            }
            return;
        }
    };
    for id in ids {
        let erased = async {
            let mut conn = pool.acquire().await?;
            store::customers::erase(&mut conn, schema, &id, store::customers::ERASE_BATCH).await
        }
        .await;
        match erased {
            Ok(n) => {
                tracing::info!(customer_id = %id, rows = n, "finished erasing a deleted customer")
            }
            Err(err) => {
                if let Some(suppressed) = ERASURE_FAILED.admit() {
                    tracing::warn!(customer_id = %id, error = %err, suppressed, "erasing a deleted customer failed; next pass retries");
                }
            }
        }
    }
}

async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr,
            setting,
            source,
        })
}

/// The signing secret of `config`, or the one stored in the database
/// (generated and stored on first use, so every process agrees).
pub async fn signing_secret(
    config: &Config,
    pool: &PgPool,
    schema: &Schema,
) -> Result<SigningSecret, StartError> {
    let text = match &config.signing_secret {
        Some(s) => s.clone(),
        None => {
            // Stored sealed when POSTBACK_SECRETS_KEY is set, like every
            // other secret.
            let keys = config.keyring()?;
            let stored = store::settings::signing_secret(pool, schema, || {
                keys.seal(&SigningSecret::generate().as_whsec())
            })
            .await?;
            keys.open(&stored).map_err(|e| {
                StartError::Config(ConfigError {
                    setting: "POSTBACK_SECRETS_KEY",
                    reason: format!("cannot open the stored signing secret: {e}"),
                })
            })?
        }
    };
    SigningSecret::parse(&text).map_err(|e| {
        StartError::Config(ConfigError {
            setting: "POSTBACK_SIGNING_SECRET",
            reason: e.to_string(),
        })
    })
}

async fn stop_cluster(cluster: Option<Cluster>) {
    if let Some(mut cluster) = cluster {
        let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
        match stopped {
            Ok(Ok(())) => tracing::info!("private PostgreSQL stopped"),
            Ok(Err(err)) => {
                tracing::error!(error = %err, "private PostgreSQL did not stop cleanly")
            }
            Err(err) => tracing::error!(error = %err, "private PostgreSQL stop task failed"),
        }
    }
}
