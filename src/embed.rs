//! Embedding (SPEC §5): [`Postback::builder`] takes the caller's own pool
//! and sets up the intake handle and the workers, the signing secret
//! included, for a backend that runs Postback inside its own process.
//!
//! It owns the builder's setters and their typed error only. Every default
//! is [`Config::default`]'s (so [`crate::config::defaults`] stays the one
//! source), every check is [`Config::validate`]'s or one of `config`'s
//! parsers, and the assembly is [`runtime::Parts`]'s, the one `serve` and
//! `worker` use. It must not open connections of its own, install a metrics
//! recorder, or start anything before [`Embedded::start`]/[`Workers::run`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};
use crate::delivery::Dispatcher;
use crate::intake::Postback;
use crate::queue::{Handoff, Waker};
use crate::runtime::{self, Parts, StartError};
use crate::store::Schema;

/// Each builder setter and the setting (SPEC §1) it stands for, so a
/// refusal names both the call to fix and the documented setting.
const SETTERS: &[(&str, &str)] = &[
    ("schema", "POSTBACK_DB_SCHEMA"),
    ("signing_secret", "POSTBACK_SIGNING_SECRET"),
    ("secrets_keys", "POSTBACK_SECRETS_KEY"),
    ("concurrency", "POSTBACK_CONCURRENCY"),
    ("per_host_concurrency", "POSTBACK_PER_HOST_CONCURRENCY"),
    (
        "per_customer_concurrency",
        "POSTBACK_PER_CUSTOMER_CONCURRENCY",
    ),
    ("attempt_timeout", "POSTBACK_ATTEMPT_TIMEOUT"),
    ("retry_immediate", "POSTBACK_RETRY_IMMEDIATE"),
    ("retry_first_delay", "POSTBACK_RETRY_FIRST_DELAY"),
    ("retry_max_delay", "POSTBACK_RETRY_MAX_DELAY"),
    ("retry_give_up", "POSTBACK_RETRY_GIVE_UP"),
    ("breaker_failures", "POSTBACK_BREAKER_FAILURES"),
    ("breaker_cooldown", "POSTBACK_BREAKER_COOLDOWN"),
    ("operator_webhook", "POSTBACK_OPERATOR_WEBHOOK"),
    ("job_ttl", "POSTBACK_JOB_TTL"),
    ("egress_source_addr", "POSTBACK_EGRESS_SOURCE_ADDR"),
    ("egress_proxy", "POSTBACK_EGRESS_PROXY"),
    ("egress_allow", "POSTBACK_EGRESS_ALLOW"),
    ("egress_deny", "POSTBACK_EGRESS_DENY"),
    ("media_roots", "POSTBACK_MEDIA_ROOT"),
];

/// The builder setter of a setting; `config` for one only a
/// [`Builder::config`] value can carry.
fn setter_of(setting: &'static str) -> &'static str {
    SETTERS
        .iter()
        .find(|(_, s)| *s == setting)
        .map_or("config", |(setter, _)| setter)
}

/// Why [`Builder::build`] refused.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is wrong: `setter` is the builder call to fix, and
    /// `source.setting` the SPEC §1 setting it stands for.
    #[error("Postback::builder().{setter}(…): {} ({})", source.reason, source.setting)]
    Setting {
        /// The builder method whose value is refused.
        setter: &'static str,
        /// The setting and what is wrong with it.
        source: ConfigError,
    },
    /// The database refused the migrations or the signing secret's row.
    #[error("database: {0}")]
    Database(#[source] crate::error::Error),
    /// The egress settings (source address, proxy) cannot be used.
    #[error("egress: {0}")]
    Egress(#[source] crate::egress::EgressError),
    /// Any other start-up failure of the shared assembly (none reaches
    /// `build` today: it starts no cluster and binds nothing).
    #[error(transparent)]
    Start(StartError),
}

impl BuildError {
    /// The builder method at fault, when a setting is.
    pub fn setter(&self) -> Option<&'static str> {
        match self {
            BuildError::Setting { setter, .. } => Some(setter),
            _ => None,
        }
    }

    fn setting(source: ConfigError) -> Self {
        BuildError::Setting {
            setter: setter_of(source.setting),
            source,
        }
    }
}

impl From<StartError> for BuildError {
    fn from(err: StartError) -> Self {
        match err {
            StartError::Config(e) => BuildError::setting(e),
            StartError::Database(e) => BuildError::Database(e),
            StartError::Egress(e) => BuildError::Egress(e),
            other => BuildError::Start(other),
        }
    }
}

impl Postback {
    /// A builder of the intake handle and the workers on the caller's own
    /// `pool` (SPEC §5), every setting at its [`Config::default`].
    pub fn builder(pool: PgPool) -> Builder {
        Builder {
            pool,
            config: Config::default(),
            migrate: true,
            refused: None,
        }
    }
}

/// Settings of an embedded Postback; [`Builder::build`] checks them all
/// with [`Config::validate`] and names the first one refused.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build()"]
pub struct Builder {
    pool: PgPool,
    config: Config,
    migrate: bool,
    /// A value a setter could not parse, reported by `build` (setters
    /// chain, so they cannot return the error themselves).
    /// (setting, reason), as a `ConfigError` holds them.
    refused: Option<(&'static str, String)>,
}

/// One setter per line: stores the typed value in the config.
macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $field:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$field = value;
            self
        }
    };
}

impl Builder {
    /// Starts from `config` instead of the defaults (for an embedder that
    /// reads its settings the way `serve` does). Its database URL, data
    /// directory and API settings are ignored: the pool is the caller's.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The PostgreSQL schema of Postback's tables (`POSTBACK_DB_SCHEMA`).
    pub fn schema(mut self, name: &str) -> Self {
        match config::parse_schema(name) {
            Ok(schema) => self.config.db_schema = schema,
            Err(reason) => self.refuse("POSTBACK_DB_SCHEMA", reason),
        }
        self
    }

    /// Like [`Builder::schema`], with a schema already checked.
    pub fn db_schema(mut self, schema: Schema) -> Self {
        self.config.db_schema = schema;
        self
    }

    /// The secret that signs deliveries without a customer
    /// (`POSTBACK_SIGNING_SECRET`, `whsec_` + base64 of at least 24
    /// bytes). Unset: the one stored in the database, generated once, so
    /// every process agrees.
    pub fn signing_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.signing_secret = Some(secret.into());
        self
    }

    /// The keys stored secrets are sealed with (`POSTBACK_SECRETS_KEY`):
    /// base64 32-byte keys, the first seals, any opens.
    pub fn secrets_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        self.config.secrets_key = Some(list.join(","));
        self
    }

    setter!(
        /// Attempts in flight in this process (`POSTBACK_CONCURRENCY`);
        /// 0 builds intake only, with no workers.
        concurrency: usize => concurrency
    );
    setter!(
        /// Attempts in flight per destination host (`POSTBACK_PER_HOST_CONCURRENCY`).
        per_host_concurrency: u32 => per_host_concurrency
    );
    setter!(
        /// Attempts in flight per customer (`POSTBACK_PER_CUSTOMER_CONCURRENCY`).
        per_customer_concurrency: u32 => per_customer_concurrency
    );
    setter!(
        /// One attempt, connect to last response byte (`POSTBACK_ATTEMPT_TIMEOUT`).
        attempt_timeout: Duration => attempt_timeout
    );
    setter!(
        /// Immediate retries after a failed first attempt (`POSTBACK_RETRY_IMMEDIATE`).
        retry_immediate: u32 => retry_immediate
    );
    setter!(
        /// Wait before the first scheduled retry (`POSTBACK_RETRY_FIRST_DELAY`).
        retry_first_delay: Duration => retry_first_delay
    );
    setter!(
        /// Cap of the doubling wait (`POSTBACK_RETRY_MAX_DELAY`).
        retry_max_delay: Duration => retry_max_delay
    );
    setter!(
        /// Give-up horizon from the first attempt (`POSTBACK_RETRY_GIVE_UP`).
        retry_give_up: Duration => retry_give_up
    );
    setter!(
        /// Consecutive failures that open an origin's breaker; 0 turns
        /// breakers off (`POSTBACK_BREAKER_FAILURES`).
        breaker_failures: u32 => breaker_failures
    );
    setter!(
        /// First wait of an open breaker (`POSTBACK_BREAKER_COOLDOWN`).
        breaker_cooldown: Duration => breaker_cooldown
    );
    setter!(
        /// Job and delivery lifetime from creation (`POSTBACK_JOB_TTL`).
        job_ttl: Duration => job_ttl
    );

    /// The URL that receives operator events (`POSTBACK_OPERATOR_WEBHOOK`).
    pub fn operator_webhook(mut self, url: &str) -> Self {
        match config::parse_webhook(url) {
            Ok(url) => self.config.operator_webhook = Some(url),
            Err(reason) => self.refuse("POSTBACK_OPERATOR_WEBHOOK", reason),
        }
        self
    }

    /// The local address every outbound connection binds to
    /// (`POSTBACK_EGRESS_SOURCE_ADDR`).
    pub fn egress_source_addr(mut self, addr: IpAddr) -> Self {
        self.config.egress_source_addr = Some(addr);
        self
    }

    /// The HTTP(S) proxy every delivery goes through (`POSTBACK_EGRESS_PROXY`).
    pub fn egress_proxy(mut self, url: &str) -> Self {
        match config::parse_proxy(url) {
            Ok(url) => self.config.egress_proxy = Some(url),
            Err(reason) => self.refuse("POSTBACK_EGRESS_PROXY", reason),
        }
        self
    }

    /// Networks exempt from the private-address deny list
    /// (`POSTBACK_EGRESS_ALLOW`).
    pub fn egress_allow(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.config.egress_allow = nets.into_iter().collect();
        self
    }

    /// Extra networks to deny (`POSTBACK_EGRESS_DENY`).
    pub fn egress_deny(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.config.egress_deny = nets.into_iter().collect();
        self
    }

    /// Directories media callbacks may send files from; none: media
    /// callbacks are refused (`POSTBACK_MEDIA_ROOT`).
    pub fn media_roots<P: Into<PathBuf>>(mut self, roots: impl IntoIterator<Item = P>) -> Self {
        self.config.media_root = roots.into_iter().map(Into::into).collect();
        self
    }

    /// Whether `build` applies Postback's migrations (idempotent; default
    /// yes). Turn it off when the caller migrates with [`crate::migrate_in`]
    /// itself.
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    fn refuse(&mut self, setting: &'static str, reason: String) {
        self.refused.get_or_insert((setting, reason));
    }

    /// Checks every setting, migrates (unless turned off), loads the
    /// signing secret and builds the intake handle and the workers.
    /// Nothing runs until [`Embedded::start`] or [`Workers::run`].
    pub async fn build(self) -> Result<Embedded, BuildError> {
        if let Some((setting, reason)) = self.refused {
            return Err(BuildError::setting(ConfigError { setting, reason }));
        }
        // The caller's pool is the database: a URL left in a given config
        // would only be checked, never used.
        let config = Config {
            database_url: None,
            ..self.config
        };
        config.validate().map_err(BuildError::setting)?;
        runtime::log_security_warnings(&config, false);
        if self.migrate {
            crate::store::migrate(&self.pool, &config.db_schema)
                .await
                .map_err(BuildError::Database)?;
        }
        let Parts {
            postback,
            dispatcher,
        } = Parts::assemble(&self.pool, &config).await?;
        Ok(Embedded {
            postback,
            workers: Workers { dispatcher },
        })
    }
}

/// A built Postback: the intake handle and the workers, not yet running.
#[derive(Debug)]
pub struct Embedded {
    postback: Postback,
    workers: Workers,
}

impl Embedded {
    /// The intake handle: `create_job`, `post_result`, `enqueue`, … on the
    /// pool or inside the caller's own transaction (`&mut *tx`). Cheap to
    /// clone.
    pub fn postback(&self) -> &Postback {
        &self.postback
    }

    /// Wakes this process's workers at once (they also wake on the NOTIFY
    /// each library call sends at commit); `None` without workers.
    pub fn waker(&self) -> Option<Waker> {
        self.workers.dispatcher.as_ref().map(Dispatcher::waker)
    }

    /// Hands fresh deliveries to this process's workers without a claim
    /// (see [`Postback::enqueue_handing_off`]); `None` without workers.
    pub fn handoff(&self) -> Option<Handoff> {
        self.workers.dispatcher.as_ref().map(Dispatcher::handoff)
    }

    /// The intake handle and the workers apart, for a caller that runs the
    /// workers itself ([`Workers::run`]).
    pub fn into_parts(self) -> (Postback, Workers) {
        (self.postback, self.workers)
    }

    /// Spawns the workers on the caller's tokio runtime; returns the intake
    /// handle and the handle that stops them.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does; use
    /// [`Embedded::into_parts`] and [`Workers::run`] to drive them elsewhere.
    pub fn start(self) -> (Postback, Running) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.workers.run(stop.clone()));
        (self.postback, Running { stop, task })
    }
}

/// The workers of an embedded Postback (none when built with
/// `concurrency(0)`).
#[derive(Debug)]
pub struct Workers {
    dispatcher: Option<Dispatcher>,
}

impl Workers {
    /// Runs until `shutdown` is cancelled, then stops claiming, lets the
    /// attempts in flight finish, writes their outcomes and returns.
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        match self.dispatcher {
            Some(dispatcher) => dispatcher.run(shutdown).await,
            None => {
                shutdown.cancelled().await;
                Ok(())
            }
        }
    }
}

/// Workers running on the caller's runtime ([`Embedded::start`]).
#[derive(Debug)]
#[must_use = "dropping it leaves the workers running with no way to drain them"]
pub struct Running {
    stop: CancellationToken,
    task: JoinHandle<crate::Result<()>>,
}

/// Why the workers stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// The database failed the workers.
    #[error(transparent)]
    Database(#[from] crate::error::Error),
    /// The workers' task panicked or was aborted.
    #[error("the workers' task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Running {
    /// The token that stops the workers; cancel it from anywhere (a signal
    /// handler), then await [`Running::shutdown`] for the drain.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops claiming, waits for the attempts in flight (each bounded by
    /// the attempt timeout) and for their outcomes to be written.
    /// Deliveries not started stay queued for the next start.
    pub async fn shutdown(self) -> Result<(), WorkersError> {
        self.stop.cancel();
        Ok(self.task.await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setter_names_a_documented_setting_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (setter, setting) in SETTERS {
            assert!(seen.insert(*setting), "{setting} has two setters");
            assert!(
                setting.starts_with("POSTBACK_"),
                "{setter} names {setting}, not a setting"
            );
        }
        assert_eq!(
            setter_of("POSTBACK_PER_HOST_CONCURRENCY"),
            "per_host_concurrency"
        );
        assert_eq!(setter_of("POSTBACK_API_TOKEN"), "config");
    }
}
