//! Process-wide settings kept in the database.

use sqlx::PgExecutor;

use super::Schema;
use crate::error::Result;

const SIGNING_SECRET: &str = "signing_secret";

/// Statements [`signing_secret`] runs at most before it gives up.
const SECRET_TRIES: usize = 3;

/// The stored signing secret, creating it from `generate()` on first use.
/// Concurrent first starts agree on one secret: the first insert wins and
/// everybody reads the winner back.
pub async fn signing_secret<'e, E>(
    db: E,
    schema: &Schema,
    generate: impl FnOnce() -> String,
) -> Result<String>
where
    E: PgExecutor<'e> + Copy,
{
    let candidate = generate();
    // Under READ COMMITTED an insert that meets another start's uncommitted
    // row waits for it, then does nothing; the SELECT of the same statement
    // reads the snapshot taken before the winner committed and finds
    // nothing. The next statement's snapshot sees the winner, so a retry
    // settles it (found by two `postback worker`s started together).
    for _ in 0..SECRET_TRIES {
        let secret: Option<String> = sqlx::query_scalar(&schema.sql(
            "WITH ins AS (
                 INSERT INTO postback.settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO NOTHING
                 RETURNING value)
             SELECT value FROM ins
             UNION ALL
             SELECT value FROM postback.settings WHERE key = $1
             LIMIT 1",
        ))
        .bind(SIGNING_SECRET)
        .bind(&candidate)
        .fetch_optional(db)
        .await?;
        if let Some(secret) = secret {
            return Ok(secret);
        }
    }
    // Only when the row is deleted between every insert and read.
    Err(sqlx::Error::RowNotFound.into())
}
