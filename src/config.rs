//! Configuration: every setting of SPEC §1 in one type that `serve` and
//! `worker` read from flags and the environment (through clap, behind the
//! `cli` feature) and that an embedder constructs in code. It owns parsing
//! and validating values; it must not open connections or start anything.
//!
//! Every default is written once, in [`defaults`], in the spelling an
//! operator would type: clap's `default_value`s and [`Config::default`]
//! (which parses the same strings with the same parsers) both read it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::schedule::RetryPolicy;

mod effective;
pub use effective::{redact_database_url, redact_url, EffectiveSettings, REDACTED};

/// The default of every setting that has one, as its flag/env spelling
/// (SPEC §1). The only place defaults are written: clap's `default_value`s
/// and [`Config::default`] both use these.
pub mod defaults {
    /// `POSTBACK_DATA_DIR`.
    pub const DATA_DIR: &str = "./.postback/pg";
    /// `POSTBACK_LISTEN`.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// `POSTBACK_INSECURE_NO_AUTH`.
    pub const INSECURE_NO_AUTH: &str = "0";
    /// `POSTBACK_RETRY_IMMEDIATE`.
    pub const RETRY_IMMEDIATE: &str = "2";
    /// `POSTBACK_RETRY_FIRST_DELAY`.
    pub const RETRY_FIRST_DELAY: &str = "15m";
    /// `POSTBACK_RETRY_MAX_DELAY`.
    pub const RETRY_MAX_DELAY: &str = "16h";
    /// `POSTBACK_RETRY_GIVE_UP`.
    pub const RETRY_GIVE_UP: &str = "36h";
    /// `POSTBACK_ATTEMPT_TIMEOUT`.
    pub const ATTEMPT_TIMEOUT: &str = "30s";
    /// `POSTBACK_CONCURRENCY`.
    pub const CONCURRENCY: &str = "256";
    /// `POSTBACK_PER_HOST_CONCURRENCY`.
    pub const PER_HOST_CONCURRENCY: &str = "16";
    /// `POSTBACK_PER_CUSTOMER_CONCURRENCY`.
    pub const PER_CUSTOMER_CONCURRENCY: &str = "64";
    /// `POSTBACK_BREAKER_FAILURES`.
    pub const BREAKER_FAILURES: &str = "10";
    /// `POSTBACK_BREAKER_COOLDOWN`.
    pub const BREAKER_COOLDOWN: &str = "1m";
    /// `POSTBACK_JOB_TTL`.
    pub const JOB_TTL: &str = "7d";
    /// `POSTBACK_MAX_BODY`.
    pub const MAX_BODY: &str = "16MiB";
    /// `POSTBACK_LOG_FORMAT`.
    pub const LOG_FORMAT: &str = "pretty";
    /// `POSTBACK_DB_SCHEMA`.
    pub const DB_SCHEMA: &str = "postback";
    /// Every list setting (`POSTBACK_EGRESS_ALLOW`, `POSTBACK_MEDIA_ROOT`, …):
    /// the empty list.
    pub const EMPTY_LIST: &str = "";
}

/// The `--help` heading of every setting, by who reads it: `serve` shows
/// all three, `worker` hides the API settings (it never reads them).
pub mod headings {
    /// Read by `serve` and `worker` alike.
    pub const SHARED: &str = "Shared settings";
    /// Read only by `serve` (its API and its private cluster).
    pub const API: &str = "API settings";
    /// Read by the delivery workers (of `worker`, and of `serve` unless
    /// `POSTBACK_CONCURRENCY=0`).
    pub const WORKER: &str = "Worker settings";
}

/// The longest duration any setting takes (100 years): longer ones are
/// "too large to compute with" (SPEC §1), refused with exit 2 instead of
/// overflowing a timestamp later.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Every setting of `serve` and `worker` (SPEC §1).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Config {
    /// PostgreSQL URL; unset: `serve` runs a private cluster under POSTBACK_DATA_DIR.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "DATABASE_URL", help_heading = headings::SHARED, hide_env_values = true)
    )]
    pub database_url: Option<String>,

    /// Where the embedded PostgreSQL cluster keeps its data.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_DATA_DIR", help_heading = headings::API, default_value = defaults::DATA_DIR)
    )]
    pub data_dir: PathBuf,

    /// API address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_LISTEN", help_heading = headings::API, default_value = defaults::LISTEN)
    )]
    pub listen: SocketAddr,

    /// Bearer token for /v1/*; a comma list is accepted (every listed token works).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_API_TOKEN", help_heading = headings::API, hide_env_values = true)
    )]
    pub api_token: Option<String>,

    /// Run the API without a token (development only).
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_INSECURE_NO_AUTH", help_heading = headings::API, value_parser = parse_flag, default_value = defaults::INSECURE_NO_AUTH))]
    pub insecure_no_auth: bool,

    /// Standard Webhooks secret (`whsec_` + base64); unset: generated once and kept in the database.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_SIGNING_SECRET", help_heading = headings::SHARED, hide_env_values = true)
    )]
    pub signing_secret: Option<String>,

    /// Comma list of base64 32-byte keys: stored secrets are sealed with the first, opened with any.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_SECRETS_KEY", help_heading = headings::SHARED, hide_env_values = true)
    )]
    pub secrets_key: Option<String>,

    /// Immediate retries after a failed first attempt.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_RETRY_IMMEDIATE", help_heading = headings::WORKER, default_value = defaults::RETRY_IMMEDIATE)
    )]
    pub retry_immediate: u32,

    /// Wait before the first scheduled retry.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_RETRY_FIRST_DELAY", help_heading = headings::WORKER, default_value = defaults::RETRY_FIRST_DELAY, value_parser = parse_duration))]
    pub retry_first_delay: Duration,

    /// Cap of the doubling wait.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_RETRY_MAX_DELAY", help_heading = headings::WORKER, default_value = defaults::RETRY_MAX_DELAY, value_parser = parse_duration))]
    pub retry_max_delay: Duration,

    /// Give-up horizon, measured from the first attempt.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_RETRY_GIVE_UP", help_heading = headings::WORKER, default_value = defaults::RETRY_GIVE_UP, value_parser = parse_duration))]
    pub retry_give_up: Duration,

    /// One attempt, connect to last response byte.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_ATTEMPT_TIMEOUT", help_heading = headings::WORKER, default_value = defaults::ATTEMPT_TIMEOUT, value_parser = parse_positive_duration))]
    pub attempt_timeout: Duration,

    /// Attempts in flight per process; 0 runs the API alone.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_CONCURRENCY", help_heading = headings::WORKER, default_value = defaults::CONCURRENCY)
    )]
    pub concurrency: usize,

    /// Attempts in flight per destination host per process.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_PER_HOST_CONCURRENCY", help_heading = headings::WORKER, default_value = defaults::PER_HOST_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..)))]
    pub per_host_concurrency: u32,

    /// Attempts in flight per customer per process.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_PER_CUSTOMER_CONCURRENCY", help_heading = headings::WORKER, default_value = defaults::PER_CUSTOMER_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..)))]
    pub per_customer_concurrency: u32,

    /// Consecutive failed attempts to one origin that open its circuit breaker; 0 turns breakers off.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "POSTBACK_BREAKER_FAILURES", help_heading = headings::WORKER, default_value = defaults::BREAKER_FAILURES)
    )]
    pub breaker_failures: u32,

    /// First wait of an open breaker before its probe; doubles on each failed probe.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_BREAKER_COOLDOWN", help_heading = headings::WORKER, default_value = defaults::BREAKER_COOLDOWN, value_parser = parse_positive_duration))]
    pub breaker_cooldown: Duration,

    /// URL that receives operator events (destination.opened/closed, delivery.failed).
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_OPERATOR_WEBHOOK", help_heading = headings::WORKER, value_parser = parse_webhook))]
    pub operator_webhook: Option<url::Url>,

    /// Job and delivery lifetime from creation.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_JOB_TTL", help_heading = headings::SHARED, default_value = defaults::JOB_TTL, value_parser = parse_positive_duration))]
    pub job_ttl: Duration,

    /// Largest request body the API accepts.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_MAX_BODY", help_heading = headings::API, default_value = defaults::MAX_BODY, value_parser = parse_bytes))]
    pub max_body: u64,

    /// Local IP every outbound connection binds to.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_EGRESS_SOURCE_ADDR", help_heading = headings::SHARED))]
    pub egress_source_addr: Option<IpAddr>,

    /// HTTP(S) proxy every delivery goes through.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_EGRESS_PROXY", help_heading = headings::WORKER, value_parser = parse_proxy))]
    pub egress_proxy: Option<url::Url>,

    /// Comma list of public addresses published at GET /v1/egress (default: the source address).
    // The lists are spelled `::std::vec::Vec` so that clap takes the whole
    // comma list as one value (SPEC §1: an empty value is the empty list,
    // empty entries are ignored) instead of one value per entry.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_EGRESS_PUBLIC_IPS", help_heading = headings::API, value_parser = parse_ip_list, default_value = defaults::EMPTY_LIST))]
    pub egress_public_ips: ::std::vec::Vec<IpAddr>,

    /// Comma list of CIDRs exempt from the private-address deny list.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_EGRESS_ALLOW", help_heading = headings::SHARED, value_parser = parse_cidr_list, default_value = defaults::EMPTY_LIST))]
    pub egress_allow: ::std::vec::Vec<IpNet>,

    /// Extra CIDRs to deny.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_EGRESS_DENY", help_heading = headings::SHARED, value_parser = parse_cidr_list, default_value = defaults::EMPTY_LIST))]
    pub egress_deny: ::std::vec::Vec<IpNet>,

    /// Comma list of directories media callbacks may send files from; unset: media callbacks are refused.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_MEDIA_ROOT", help_heading = headings::SHARED, value_parser = parse_path_list, default_value = defaults::EMPTY_LIST))]
    pub media_root: ::std::vec::Vec<PathBuf>,

    /// `pretty` or `json`.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "POSTBACK_LOG_FORMAT", help_heading = headings::SHARED,
            value_enum,
            default_value = defaults::LOG_FORMAT
        )
    )]
    pub log_format: LogFormat,

    /// `error`, `warn`, `info`, `debug`, `trace`, or a filter such as `info,postback::delivery=debug` (RUST_LOG when unset; default info).
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_LOG_LEVEL", help_heading = headings::SHARED, value_parser = parse_log_level))]
    pub log_level: Option<String>,

    /// Extra address serving only /metrics.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_METRICS_LISTEN", help_heading = headings::SHARED))]
    pub metrics_listen: Option<SocketAddr>,

    /// PostgreSQL schema that holds Postback's tables.
    #[cfg_attr(feature = "cli", arg(long, env = "POSTBACK_DB_SCHEMA", help_heading = headings::SHARED, default_value = defaults::DB_SCHEMA, value_parser = parse_schema))]
    pub db_schema: crate::store::Schema,
}

impl Default for Config {
    /// The settings of `postback serve` with no flags and no environment:
    /// [`defaults`], parsed as clap parses them.
    fn default() -> Self {
        fn parse<T>(what: &str, value: &str, parser: impl Fn(&str) -> Result<T, String>) -> T {
            parser(value).unwrap_or_else(|e| panic!("defaults::{what} = {value:?}: {e}"))
        }
        fn from_str<T: std::str::FromStr>(s: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            s.parse().map_err(|e: T::Err| e.to_string())
        }
        Config {
            database_url: None,
            data_dir: PathBuf::from(defaults::DATA_DIR),
            listen: parse("LISTEN", defaults::LISTEN, from_str),
            api_token: None,
            insecure_no_auth: parse("INSECURE_NO_AUTH", defaults::INSECURE_NO_AUTH, parse_flag),
            signing_secret: None,
            secrets_key: None,
            retry_immediate: parse("RETRY_IMMEDIATE", defaults::RETRY_IMMEDIATE, from_str),
            retry_first_delay: parse(
                "RETRY_FIRST_DELAY",
                defaults::RETRY_FIRST_DELAY,
                parse_duration,
            ),
            retry_max_delay: parse("RETRY_MAX_DELAY", defaults::RETRY_MAX_DELAY, parse_duration),
            retry_give_up: parse("RETRY_GIVE_UP", defaults::RETRY_GIVE_UP, parse_duration),
            attempt_timeout: parse(
                "ATTEMPT_TIMEOUT",
                defaults::ATTEMPT_TIMEOUT,
                parse_positive_duration,
            ),
            concurrency: parse("CONCURRENCY", defaults::CONCURRENCY, from_str),
            per_host_concurrency: parse(
                "PER_HOST_CONCURRENCY",
                defaults::PER_HOST_CONCURRENCY,
                from_str,
            ),
            per_customer_concurrency: parse(
                "PER_CUSTOMER_CONCURRENCY",
                defaults::PER_CUSTOMER_CONCURRENCY,
                from_str,
            ),
            breaker_failures: parse("BREAKER_FAILURES", defaults::BREAKER_FAILURES, from_str),
            breaker_cooldown: parse(
                "BREAKER_COOLDOWN",
                defaults::BREAKER_COOLDOWN,
                parse_positive_duration,
            ),
            operator_webhook: None,
            job_ttl: parse("JOB_TTL", defaults::JOB_TTL, parse_positive_duration),
            max_body: parse("MAX_BODY", defaults::MAX_BODY, parse_bytes),
            egress_source_addr: None,
            egress_proxy: None,
            egress_public_ips: Vec::new(),
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            media_root: Vec::new(),
            log_format: parse("LOG_FORMAT", defaults::LOG_FORMAT, parse_log_format),
            log_level: None,
            metrics_listen: None,
            db_schema: parse("DB_SCHEMA", defaults::DB_SCHEMA, parse_schema),
        }
    }
}

/// A log filter (`POSTBACK_LOG_LEVEL`): a level, or a `tracing` filter
/// such as `info,postback::delivery=debug`.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("is empty; use error, warn, info, debug or trace".to_owned());
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!(
                "{e}; use error, warn, info, debug, trace or a filter such as info,postback=debug"
            )
        })
}

/// `pretty` or `json` (what clap's `value_enum` accepts, without clap).
fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format; use pretty or json")),
    }
}

/// A setting that cannot be used, named the way the operator set it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// Environment variable (and flag) at fault.
    pub setting: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

impl Config {
    /// The retry schedule these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            immediate: self.retry_immediate,
            first_delay: self.retry_first_delay,
            max_delay: self.retry_max_delay,
            give_up: self.retry_give_up,
        }
    }

    /// Addresses published as `publicAddresses` at `GET /v1/egress`.
    pub fn public_addresses(&self) -> Vec<IpAddr> {
        if self.egress_public_ips.is_empty() {
            self.egress_source_addr.into_iter().collect()
        } else {
            self.egress_public_ips.clone()
        }
    }

    /// Checks the relations between settings that no single parser sees.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_max_delay < self.retry_first_delay {
            return Err(ConfigError {
                setting: "POSTBACK_RETRY_MAX_DELAY",
                reason: format!(
                    "the cap ({}) is shorter than POSTBACK_RETRY_FIRST_DELAY ({}); raise it or lower the first delay",
                    humantime::format_duration(self.retry_max_delay),
                    humantime::format_duration(self.retry_first_delay)
                ),
            });
        }
        if self.per_host_concurrency == 0 {
            return Err(ConfigError {
                setting: "POSTBACK_PER_HOST_CONCURRENCY",
                reason: "must be at least 1".to_owned(),
            });
        }
        // The flags' parser refuses 0s; a Config built in code gets the same rule.
        for (setting, d) in [
            ("POSTBACK_ATTEMPT_TIMEOUT", self.attempt_timeout),
            ("POSTBACK_BREAKER_COOLDOWN", self.breaker_cooldown),
        ] {
            if d.is_zero() {
                return Err(ConfigError {
                    setting,
                    reason: "must be longer than 0s".to_owned(),
                });
            }
        }
        if self.max_body == 0 {
            return Err(ConfigError {
                setting: "POSTBACK_MAX_BODY",
                reason: "must be larger than 0 bytes".to_owned(),
            });
        }
        if self.api_token.is_some() && self.api_tokens().is_empty() {
            return Err(ConfigError {
                setting: "POSTBACK_API_TOKEN",
                reason: "is set but empty; set a long random token".to_owned(),
            });
        }
        if let Some(secret) = &self.signing_secret {
            let parsed = crate::signing::SigningSecret::parse(secret).map_err(|e| ConfigError {
                setting: "POSTBACK_SIGNING_SECRET",
                reason: format!("{e}; expected whsec_ followed by base64"),
            })?;
            if parsed.len() < MIN_SECRET_BYTES || !secret.trim().starts_with("whsec_") {
                return Err(ConfigError {
                    setting: "POSTBACK_SIGNING_SECRET",
                    reason: format!(
                        "is {} bytes long; it must be whsec_ + base64 of at least {MIN_SECRET_BYTES} random bytes",
                        parsed.len()
                    ),
                });
            }
        }
        if let Some(url) = &self.database_url {
            check_database_url(url).map_err(|reason| ConfigError {
                setting: "DATABASE_URL",
                reason,
            })?;
        }
        self.validate_ranges()?;
        for dir in &self.media_root {
            crate::media::MediaRoots::check_root(dir).map_err(|reason| ConfigError {
                setting: "POSTBACK_MEDIA_ROOT",
                reason: format!("{reason}; list absolute directories"),
            })?;
        }
        if self.per_customer_concurrency == 0 {
            return Err(ConfigError {
                setting: "POSTBACK_PER_CUSTOMER_CONCURRENCY",
                reason: "must be at least 1".to_owned(),
            });
        }
        self.keyring()?;
        Ok(())
    }

    /// The keys of `POSTBACK_SECRETS_KEY` (none: stored secrets stay clear).
    pub fn keyring(&self) -> Result<crate::sealing::Keyring, ConfigError> {
        match &self.secrets_key {
            // An empty list is no key (SPEC §1: empty list values are lists).
            None => Ok(crate::sealing::Keyring::clear()),
            Some(list) if list.split(',').all(|k| k.trim().is_empty()) => {
                Ok(crate::sealing::Keyring::clear())
            }
            Some(list) => crate::sealing::Keyring::parse(list).map_err(|e| ConfigError {
                setting: "POSTBACK_SECRETS_KEY",
                reason: format!(
                    "{e}; give a comma list of base64 32-byte keys (e.g. `openssl rand -base64 32`)"
                ),
            }),
        }
    }

    /// Values that parse but that Postback cannot compute with, and the
    /// relations between the schedule, the TTL and the concurrency (SPEC §1).
    fn validate_ranges(&self) -> Result<(), ConfigError> {
        let fail = |setting: &'static str, reason: String| Err(ConfigError { setting, reason });
        let show = |d: Duration| humantime::format_duration(d).to_string();
        for (setting, d) in [
            ("POSTBACK_RETRY_FIRST_DELAY", self.retry_first_delay),
            ("POSTBACK_RETRY_MAX_DELAY", self.retry_max_delay),
            ("POSTBACK_RETRY_GIVE_UP", self.retry_give_up),
            ("POSTBACK_ATTEMPT_TIMEOUT", self.attempt_timeout),
            ("POSTBACK_BREAKER_COOLDOWN", self.breaker_cooldown),
            ("POSTBACK_JOB_TTL", self.job_ttl),
        ] {
            if d > MAX_DURATION {
                return fail(setting, format!("{} is longer than 100 years", show(d)));
            }
        }
        // The semaphore of `queue::capacity` (its MAX_CONCURRENCY) holds at most this.
        const MAX_CONCURRENCY: usize = tokio::sync::Semaphore::MAX_PERMITS;
        if self.concurrency > MAX_CONCURRENCY {
            return fail(
                "POSTBACK_CONCURRENCY",
                format!(
                    "{} is above the most attempts one process can hold ({})",
                    self.concurrency, MAX_CONCURRENCY
                ),
            );
        }
        if self.job_ttl <= self.retry_give_up {
            return fail(
                "POSTBACK_JOB_TTL",
                format!(
                    "{} must exceed POSTBACK_RETRY_GIVE_UP ({}): a delivery would expire while still retried",
                    show(self.job_ttl),
                    show(self.retry_give_up)
                ),
            );
        }
        // The immediate retries are due at once after a failure, so they fit
        // any horizon but an empty one (which makes no retry at all).
        if self.retry_immediate > 0 && self.retry_give_up.is_zero() {
            return fail(
                "POSTBACK_RETRY_GIVE_UP",
                format!(
                    "0s leaves no room for POSTBACK_RETRY_IMMEDIATE={} immediate retries; \
                     set a horizon (such as 36h) or POSTBACK_RETRY_IMMEDIATE=0",
                    self.retry_immediate
                ),
            );
        }
        Ok(())
    }

    /// Every bearer token of `POSTBACK_API_TOKEN` (a comma list; empty
    /// entries ignored).
    pub fn api_tokens(&self) -> Vec<String> {
        self.api_token
            .as_deref()
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a production deployment should set and this one left unset
    /// (docs/operations.md, "Security"): one sentence per setting, for
    /// `serve` and `worker` to log at warn level at start.
    pub fn security_warnings(&self, api: bool) -> Vec<String> {
        let mut out = Vec::new();
        if api && self.api_tokens().is_empty() && self.insecure_no_auth {
            out.push(
                "POSTBACK_INSECURE_NO_AUTH=1: the API answers /v1 without authentication; \
                 set POSTBACK_API_TOKEN in production"
                    .to_owned(),
            );
        }
        if self.keyring().map(|k| !k.is_sealing()).unwrap_or(false) {
            out.push(
                "POSTBACK_SECRETS_KEY is not set: customers' signing secrets, callback auth secrets \
                 and header values are stored in clear; set it to a base64 32-byte key \
                 (openssl rand -base64 32)"
                    .to_owned(),
            );
        }
        if self.media_root.is_empty() {
            out.push(
                "POSTBACK_MEDIA_ROOT is not set: media callbacks are refused (400 media_disabled); \
                 set it to the directories the ASR backend writes media to"
                    .to_owned(),
            );
        }
        if let Some(url) = &self.database_url {
            if let Some(host) = database_without_tls(url) {
                out.push(format!(
                    "DATABASE_URL connects to {host} without requiring TLS; \
                     add sslmode=verify-full (and sslrootcert=…) unless the network is private"
                ));
            }
        }
        out
    }

    /// The API refuses to start unauthenticated unless told so explicitly.
    pub fn validate_api(&self) -> Result<(), ConfigError> {
        if self.api_token.is_none() && !self.insecure_no_auth {
            return Err(ConfigError {
                setting: "POSTBACK_API_TOKEN",
                reason: "is not set: set POSTBACK_API_TOKEN to a long random token, \
                         or POSTBACK_INSECURE_NO_AUTH=1 to run the API without authentication"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// Humantime duration (`150ms`, `15m`, `36h`, `7d`), at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; use a duration such as 150ms, 15m, 36h or 7d"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "{} is longer than the longest duration Postback computes with (100 years)",
            s.trim()
        ));
    }
    Ok(d)
}

/// A comma list (SPEC §1): an empty value is the empty list, empty entries
/// are ignored, every other entry must parse.
pub fn parse_list<T>(s: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(item)
        .collect()
}

/// A comma list of CIDRs or addresses ([`parse_cidr`]).
pub fn parse_cidr_list(s: &str) -> Result<Vec<IpNet>, String> {
    parse_list(s, parse_cidr)
}

/// A comma list of IP addresses.
pub fn parse_ip_list(s: &str) -> Result<Vec<IpAddr>, String> {
    parse_list(s, |e| {
        e.parse::<IpAddr>()
            .map_err(|_| format!("{e:?} is not an IP address"))
    })
}

/// A comma list of paths (checked by [`Config::validate`]).
pub fn parse_path_list(s: &str) -> Result<Vec<PathBuf>, String> {
    parse_list(s, |e| Ok(PathBuf::from(e)))
}

/// The shortest signing secret accepted (SPEC §1: base64 of at least 24 bytes).
pub const MIN_SECRET_BYTES: usize = 24;

/// A `DATABASE_URL` that libpq's URL rules accept.
pub fn check_database_url(url: &str) -> Result<(), String> {
    use std::str::FromStr;
    if url.trim().is_empty() {
        return Err("is set but empty; set it to a postgres:// URL, or unset it".to_owned());
    }
    sqlx::postgres::PgConnectOptions::from_str(url.trim())
        .map(|_| ())
        .map_err(|e| format!("is not a PostgreSQL URL ({e}); use postgres://user:password@host/db"))
}

/// The host of a `DATABASE_URL` that reaches another machine over TCP
/// without requiring TLS (`sslmode` unset, `disable`, `allow` or `prefer`);
/// `None` for TLS-required URLs, Unix sockets and loopback.
fn database_without_tls(url: &str) -> Option<String> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    use std::str::FromStr;
    let options = PgConnectOptions::from_str(url.trim()).ok()?;
    if options.get_socket().is_some() {
        return None;
    }
    let host = options.get_host().to_owned();
    let local = host == "localhost"
        || host.starts_with('/')
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let required = matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    (!local && !required).then_some(host)
}

/// A humantime duration longer than zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than 0s".to_owned());
    }
    Ok(d)
}

/// Byte size such as `16MiB`, `512KiB` or `1048576`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{e}; use a size such as 16MiB"))?;
    if size.as_u64() == 0 {
        return Err("must be larger than 0 bytes".to_owned());
    }
    Ok(size.as_u64())
}

/// A CIDR (`10.0.0.0/8`) or a single address (taken as /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or an IP address"))
}

/// An `http://` or `https://` URL with a host (the operator webhook).
pub fn parse_webhook(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| format!("{e}; use https://host/path"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(url)
}

/// An `http://` or `https://` proxy URL with a host.
pub fn parse_proxy(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| format!("{e}; use http://host:port"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".to_owned());
    }
    Ok(url)
}

/// `1`, `true`, `yes`, `on` (any case) are true; `0`, `false`, `no`, `off`, empty are false.
pub fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not a boolean; use 1 or 0")),
    }
}

/// `POSTBACK_DB_SCHEMA`: a plain lower-case identifier.
pub fn parse_schema(s: &str) -> Result<crate::store::Schema, String> {
    crate::store::Schema::new(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_bytes_and_cidrs_parse_the_spec_spellings() {
        assert_eq!(
            parse_duration("150ms").ok(),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            parse_duration("36h").ok(),
            Some(Duration::from_secs(36 * 3600))
        );
        assert_eq!(
            parse_duration("7d").ok(),
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_bytes("16MiB").ok(), Some(16 * 1024 * 1024));
        assert_eq!(parse_bytes("1024").ok(), Some(1024));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").ok(), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_cidr("127.0.0.1").ok(), "127.0.0.1/32".parse().ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_proxy("socks5://x:1").is_err());
        assert!(parse_proxy("http://proxy:3128").is_ok());
    }

    #[test]
    fn cross_setting_validation_names_the_setting() {
        let cfg = Config {
            retry_first_delay: Duration::from_secs(60),
            retry_max_delay: Duration::from_secs(1),
            ..Config::default()
        };
        let err = cfg.validate().err().map(|e| e.setting);
        assert_eq!(err, Some("POSTBACK_RETRY_MAX_DELAY"));
        let err = Config::default().validate_api().err().map(|e| e.setting);
        assert_eq!(err, Some("POSTBACK_API_TOKEN"));
        let insecure = Config {
            insecure_no_auth: true,
            ..Config::default()
        };
        assert!(insecure.validate_api().is_ok());
        let bad_secret = Config {
            signing_secret: Some("not base64!".into()),
            ..Config::default()
        };
        assert_eq!(
            bad_secret.validate().err().map(|e| e.setting),
            Some("POSTBACK_SIGNING_SECRET")
        );
    }

    #[test]
    fn the_defaults_are_the_schedule_and_schema_defaults_and_valid() {
        let config = Config::default();
        assert_eq!(config.retry_policy(), RetryPolicy::default());
        assert_eq!(config.db_schema, crate::store::Schema::default());
        config.validate().expect("the defaults are valid");
        assert!(
            config.job_ttl > config.retry_give_up,
            "SPEC: the TTL exceeds the give-up"
        );
    }

    #[test]
    fn security_warnings_name_each_production_setting_left_unset() {
        let open = Config {
            insecure_no_auth: true,
            database_url: Some("postgres://u@db.internal/postback".into()),
            ..Config::default()
        };
        let warnings = open.security_warnings(true).join("\n");
        for named in [
            "POSTBACK_INSECURE_NO_AUTH",
            "POSTBACK_MEDIA_ROOT",
            "DATABASE_URL",
            "POSTBACK_SECRETS_KEY",
        ] {
            assert!(warnings.contains(named), "{named}: {warnings}");
        }
        let hardened = Config {
            api_token: Some("t".into()),
            secrets_key: Some(crate::sealing::Keyring::generate_key()),
            media_root: vec![std::env::temp_dir()],
            database_url: Some("postgres://u@db.internal/postback?sslmode=verify-full".into()),
            ..Config::default()
        };
        assert!(hardened.security_warnings(true).is_empty());
        for local in [
            "postgres://u@localhost/db",
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@x/db?host=/run/postgresql",
            "postgres://u@db/db?sslmode=require",
        ] {
            assert_eq!(database_without_tls(local), None, "{local}");
        }
    }

    /// `Config::default()` is what `serve` runs with when given no flags and
    /// no environment: every setting, compared field by field.
    #[cfg(feature = "cli")]
    #[test]
    fn the_default_is_what_clap_parses_from_no_flags_and_no_environment() {
        use clap::{Args, FromArgMatches};
        // No environment: the variables of this process (DATABASE_URL of a
        // developer's shell, say) must not count, so every `env` is dropped.
        let command = Config::augment_args(clap::Command::new("serve"))
            .no_binary_name(true)
            .mut_args(|arg| arg.env(None));
        assert!(
            command.get_arguments().all(|a| a.get_env().is_none()),
            "an env is left"
        );
        let matches = command
            .try_get_matches_from(Vec::<String>::new())
            .expect("no flags parse");
        let parsed = Config::from_arg_matches(&matches).expect("the defaults parse");
        assert_eq!(parsed, Config::default());
    }

    /// Every clap default of `Config` comes from [`defaults`]: a literal
    /// `default_value` there would be a second place to write one.
    #[test]
    fn clap_defaults_are_only_written_in_the_defaults_module() {
        let source = include_str!("config.rs");
        let needle = ["default_value", " = \""].concat();
        assert!(
            !source.contains(&needle),
            "a literal default_value in config.rs; add it to `defaults`"
        );
    }
}
