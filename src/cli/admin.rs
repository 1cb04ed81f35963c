//! Admin commands that talk to the database directly (`DATABASE_URL`), so
//! they work while the server is down: the connection every one of them
//! uses (`deliveries` and `replay` are in `cli/find.rs`), `purge`, and
//! `migrate`'s connection.

use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use sqlx::PgPool;

use super::Failure;
use crate::config::Config;
use crate::intake::Postback;
use crate::store::{self, Schema};

/// Where the database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding Postback's tables.
    #[arg(long, env = "POSTBACK_DB_SCHEMA", default_value = crate::config::defaults::DB_SCHEMA, value_parser = crate::config::parse_schema)]
    db_schema: Schema,
    /// Where `serve`'s private PostgreSQL cluster keeps its data (used when DATABASE_URL is unset).
    #[arg(long, env = "POSTBACK_DATA_DIR", default_value = crate::config::defaults::DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// Keys that seal stored secrets (the same list `serve` uses).
    #[arg(long, env = "POSTBACK_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
}

/// How long an admin command waits for an unreachable database (SPEC §1).
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

impl DbArgs {
    /// `POSTBACK_SECRETS_KEY` as given.
    pub fn secrets_key(&self) -> Option<&str> {
        self.secrets_key.as_deref().filter(|k| !k.trim().is_empty())
    }

    /// Connects to DATABASE_URL, or without it to the private cluster of
    /// POSTBACK_DATA_DIR when one exists; exits 2 when there is neither,
    /// and gives up within [`CONNECT_LIMIT`] with the connection error.
    pub async fn connect(&self) -> Result<(PgPool, Schema), Failure> {
        let schema = self.db_schema.clone();
        let (url, what) = match self.database_url.as_deref() {
            Some(url) => {
                crate::config::check_database_url(url)
                    .map_err(|reason| Failure::usage(anyhow!("DATABASE_URL {reason}")))?;
                (url.to_owned(), "DATABASE_URL".to_owned())
            }
            None => match crate::pgcluster::existing_url(&self.data_dir) {
                Some(url) => (
                    url,
                    format!(
                        "the private PostgreSQL cluster under {} (POSTBACK_DATA_DIR; is `postback serve` running?)",
                        self.data_dir.display()
                    ),
                ),
                None => {
                    return Err(Failure::usage(anyhow!(
                        "DATABASE_URL is not set and there is no private cluster under {} (POSTBACK_DATA_DIR): \
                         set DATABASE_URL to the database `postback serve` uses (serve prints it at start)",
                        self.data_dir.display()
                    )))
                }
            },
        };
        let pool = store::connect_within(&url, &schema, 2, CONNECT_LIMIT)
            .await
            .with_context(|| format!("cannot connect to {what}"))?;
        Ok((pool, schema))
    }
}

/// `purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delete what is past its expiry.
    #[arg(long)]
    expired: bool,
}

/// The library on the admin command's settings; a bad secrets key is
/// exit 2 naming it.
pub fn library(db: &DbArgs) -> Result<Postback, Failure> {
    Postback::new(&Config {
        db_schema: db.db_schema.clone(),
        secrets_key: db.secrets_key.clone(),
        ..Config::default()
    })
    .map_err(|e| Failure::usage(anyhow!("{e}")))
}

/// `postback purge`.
pub async fn purge(args: PurgeArgs) -> Result<(), Failure> {
    if !args.expired {
        return Err(Failure::usage(anyhow!("say what to purge: --expired")));
    }
    let (pool, schema) = args.db.connect().await?;
    // Batch by batch (as purge_expired does) so stderr shows progress on
    // a terminal while a large backlog goes.
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} purging: {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut purged = store::admin::Purged::default();
    loop {
        let round = store::admin::purge_expired_batch(&pool, &schema, 1000)
            .await
            .map_err(Failure::runtime)?;
        purged.jobs += round.jobs;
        purged.deliveries += round.deliveries;
        bar.set_message(format!(
            "{} jobs, {} deliveries",
            purged.jobs, purged.deliveries
        ));
        if round == store::admin::Purged::default() {
            break;
        }
    }
    bar.finish_and_clear();
    println!(
        "purged {} expired jobs and {} expired deliveries",
        purged.jobs, purged.deliveries
    );
    Ok(())
}
