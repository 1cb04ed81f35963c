//! PostgreSQL: connections, migrations, and the tables' statements outside
//! the hot queue protocol (that is `queue`'s: claim, lease, complete). It
//! owns the schema; it must not make HTTP calls or decide policy (what to
//! retry when is `schedule`'s, what is valid is `validate`'s).
//!
//! Statements name their tables as `postback.<table>`; when the configured
//! schema is another one, [`Schema::sql`] rewrites them once per call. That
//! keeps every statement correct on a caller's own connection, whatever its
//! `search_path`.

pub mod admin;
pub mod customers;
pub mod deliveries;
pub mod find;
pub mod jobs;
pub mod settings;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Acquire, PgPool, Postgres};

use crate::error::{is_connectivity, Result};

/// Migrations embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL schema holding Postback's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Default for Schema {
    fn default() -> Self {
        Schema("postback".to_owned())
    }
}

impl Schema {
    /// A schema name; must be a plain lowercase identifier (checked by config).
    pub fn new(name: impl Into<String>) -> Self {
        Schema(name.into())
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `sql` with `postback.` replaced by this schema.
    pub fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if self.0 == "postback" {
            Cow::Borrowed(sql)
        } else {
            Cow::Owned(sql.replace("postback.", &format!("{}.", self.0)))
        }
    }
}

/// Connects a pool to `url`, retrying while the server is not up yet (a
/// fresh container, a cluster still starting) for up to about a minute.
pub async fn connect(url: &str, schema: &Schema, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("postback")
        .options([("search_path", schema.name())]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false);
    let connect = || pool.clone().connect_with(options.clone());
    let pool = connect
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(15),
        )
        .when(is_connectivity)
        .notify(|err, wait| tracing::warn!(%err, ?wait, "database not reachable yet, retrying"))
        .await?;
    Ok(pool)
}

/// Creates `schema` if needed and applies the embedded migrations inside it,
/// on any connection (the caller's pool or its own), leaving the
/// connection's `search_path` as it was.
pub async fn migrate<'a, A>(db: A, schema: &Schema) -> Result<()>
where
    A: Acquire<'a, Database = Postgres>,
{
    let mut conn = db.acquire().await?;
    // Serialise concurrent `postback migrate`/`serve` starts on one database:
    // CREATE SCHEMA IF NOT EXISTS is not race-free on its own.
    sqlx::query("SELECT pg_advisory_lock(7253011)")
        .execute(&mut *conn)
        .await?;
    let result = async {
        sqlx::query(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            schema.name()
        ))
        .execute(&mut *conn)
        .await?;
        let previous: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(&format!("SET search_path TO \"{}\"", schema.name()))
            .execute(&mut *conn)
            .await?;
        let migrated = MIGRATOR.run_direct(&mut *conn).await;
        sqlx::query("SELECT set_config('search_path', $1, false)")
            .bind(previous)
            .execute(&mut *conn)
            .await?;
        migrated.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => e,
            other => sqlx::Error::Migrate(Box::new(other)),
        })?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(7253011)")
        .execute(&mut *conn)
        .await?;
    result?;
    Ok(())
}

/// True when the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
