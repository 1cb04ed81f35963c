//! Process-wide settings kept in the database.

use sqlx::PgExecutor;

use super::Schema;
use crate::error::Result;

const SIGNING_SECRET: &str = "signing_secret";

/// The stored signing secret, creating it from `generate()` on first use.
/// Concurrent first starts agree on one secret: the first insert wins and
/// everybody reads the winner back.
pub async fn signing_secret<'e, E>(
    db: E,
    schema: &Schema,
    generate: impl FnOnce() -> String,
) -> Result<String>
where
    E: PgExecutor<'e>,
{
    let secret: String = sqlx::query_scalar(&schema.sql(
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
    .bind(generate())
    .fetch_one(db)
    .await?;
    Ok(secret)
}
