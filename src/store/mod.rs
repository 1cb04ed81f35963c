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
pub mod destinations;
pub mod find;
pub mod held;
pub mod jobs;
pub mod settings;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Acquire, PgPool, Postgres};

use crate::error::{is_connectivity, Result};

/// The state a delivery row `d` is shown in. A `delivering` row whose lease
/// ran out has lost its worker (it died): it is due like any pending row, so
/// every read, filter and replay treats it as `pending` (SPEC §4: "a delivery
/// whose lease ran out counts as due").
pub const SHOWN_STATE_SQL: &str = "(CASE WHEN d.state = 'delivering' AND d.next_attempt_at <= now() THEN 'pending' ELSE d.state END)";

/// The next attempt time of a row `d` as shown: the due time of a pending
/// row, and of an orphaned lease (already due); none while an attempt runs
/// or once final.
pub const SHOWN_NEXT_SQL: &str = "(CASE WHEN d.state = 'pending' OR (d.state = 'delivering' AND d.next_attempt_at <= now()) THEN d.next_attempt_at END)";

/// True for a row `d` that retention keeps (SPEC §3): every delivery that is
/// not final (whatever its `expires_at`: a delivery still being retried is
/// never expired), and a final one until its `expires_at`, which completion
/// moved to the later of its job's expiry and its final time plus the TTL.
pub const LIVE_SQL: &str = "(d.state NOT IN ('delivered', 'failed') OR d.expires_at > now())";

/// Migrations embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL schema holding Postback's tables: always a plain
/// lower-case identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes), so it can
/// never carry SQL into a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

/// A schema name that is not a plain lower-case identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a plain lower-case PostgreSQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
)]
pub struct InvalidSchema(pub String);

impl Default for Schema {
    fn default() -> Self {
        Schema("postback".to_owned())
    }
}

impl Schema {
    /// A schema name; refused unless it is a plain lower-case identifier
    /// (`[a-z_][a-z0-9_]*`, at most 63 bytes, PostgreSQL's limit).
    pub fn new(name: impl Into<String>) -> std::result::Result<Self, InvalidSchema> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Schema(name))
        } else {
            Err(InvalidSchema(name))
        }
    }

    /// The schema as a quoted SQL identifier (`"name"`).
    pub fn quoted(&self) -> String {
        // A valid name holds no `"`; doubling them anyway keeps this
        // correct on its own.
        format!("\"{}\"", self.0.replace('"', "\"\""))
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
            Cow::Owned(sql.replace("postback.", &format!("{}.", self.quoted())))
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
        .test_before_acquire(false)
        .after_release(|conn, _| {
            Box::pin(async move {
                shrink_buffers(conn);
                Ok(true)
            })
        });
    let connect = || async {
        pool.clone()
            .connect_with(options.clone())
            .await
            .map_err(tls_as_tls)
    };
    let pool = connect
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(15),
        )
        .when(is_connectivity)
        .notify(|err, wait| tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "database not reachable yet, retrying"))
        .await?;
    Ok(pool)
}

/// Connects a pool to `url` for a command that must give up quickly (the
/// admin commands, SPEC §1): retries while the server refuses connections
/// but never past `limit`, and then fails with the last connection error
/// itself (not a pool timeout).
pub async fn connect_within(
    url: &str,
    schema: &Schema,
    max_connections: u32,
    limit: Duration,
) -> Result<PgPool> {
    use sqlx::Connection;
    let options = PgConnectOptions::from_str(url)?
        .application_name("postback")
        .options([("search_path", schema.name())]);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = async {
            sqlx::PgConnection::connect_with(&options)
                .await
                .map_err(tls_as_tls)
        };
        match tokio::time::timeout(left, attempt).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                break;
            }
            Ok(Err(err)) if is_connectivity(&err) && left > RETRY_PAUSE * 2 => {
                tracing::debug!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => {
                return Err(crate::error::Error::Unavailable(sqlx::Error::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer from the database within {}s", limit.as_secs()),
                    ),
                )))
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(limit)
        .connect_with(options)
        .await?;
    Ok(pool)
}

const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Gives back what a connection's buffers grew to beyond their default
/// (8 KiB) when it returns to the pool. A connection keeps the capacity of
/// the largest message it ever sent or read, so without this every pooled
/// connection that once carried a large body (up to POSTBACK_MAX_BODY, or
/// a batch of them) held that much for the life of the process: memory grew
/// with traffic, not with settings (SPEC §3). A small buffer is left as it
/// is (a comparison, no allocation).
fn shrink_buffers(conn: &mut sqlx::PgConnection) {
    use sqlx::Connection;
    conn.shrink_buffers();
}

/// sqlx reports a failed TLS handshake (a certificate the `sslrootcert`
/// does not vouch for, say) as an I/O error, which reads like an outage and
/// would be retried. It is a configuration error: report it as TLS, once.
fn tls_as_tls(err: sqlx::Error) -> sqlx::Error {
    let is_tls = matches!(&err, sqlx::Error::Io(io)
        if io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()));
    match err {
        sqlx::Error::Io(io) if is_tls => {
            sqlx::Error::Tls(format!("{io} (check sslmode and sslrootcert of DATABASE_URL)").into())
        }
        other => other,
    }
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
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted()))
            .execute(&mut *conn)
            .await?;
        let previous: String = sqlx::query_scalar("SELECT current_setting('search_path')")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(&format!("SET search_path TO {}", schema.quoted()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_a_plain_lower_case_identifier_or_refused() {
        for ok in ["postback", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(Schema::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "x; select pg_sleep(5)",
            "Postback",
            "1abc",
            "a-b",
            "a.b",
            "a\"b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(Schema::new(bad).is_err(), "{bad:?} was accepted");
        }
        let custom = Schema::new("dispatch").expect("valid");
        assert_eq!(
            custom.sql("SELECT 1 FROM postback.jobs"),
            "SELECT 1 FROM \"dispatch\".jobs"
        );
    }
}
