//! `postback migrate`: apply migrations and exit.

use super::admin::DbArgs;
use super::Failure;

/// Applies the embedded migrations to DATABASE_URL.
pub async fn run(args: DbArgs) -> Result<(), Failure> {
    let (pool, schema) = args.connect().await?;
    crate::store::migrate(&pool, &schema)
        .await
        .map_err(Failure::runtime)?;
    println!("migrations applied to schema {}", schema.name());
    Ok(())
}
