//! The `customers` and `customer_secrets` tables: registration, the live
//! secrets of a customer, rotation, and erasure in bounded batches.
//!
//! Secrets arrive here already sealed (see `sealing`) and leave sealed: this
//! module never sees a secret's text. Every change NOTIFYs
//! [`CHANGE_CHANNEL`] with the customer id, so every process's cache of
//! secrets drops that customer at commit.

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;

use super::Schema;
use crate::error::Result;

/// The channel a change of a customer (or its secrets) is announced on;
/// the payload is the customer id.
pub const CHANGE_CHANNEL: &str = "postback_customers";

/// A stored customer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CustomerRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Operator's metadata.
    pub metadata: Option<Value>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Set once DELETE began: the customer no longer exists for the API.
    pub deleted_at: Option<OffsetDateTime>,
}

/// One live secret, sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRow {
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it stops signing (`None`: the current one).
    pub expires_at: Option<OffsetDateTime>,
    /// The sealed `whsec_` text.
    pub secret: String,
}

/// What [`put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new customer was stored, with its first secret.
    Created,
    /// An existing customer's name and metadata were updated.
    Updated,
    /// The customer is being erased; nothing changed.
    Deleting,
}

/// Creates customer `id` with its first secret `sealed_secret`, or updates
/// the name and metadata of an existing one (its secrets stay).
pub async fn put(
    conn: &mut PgConnection,
    schema: &Schema,
    id: &str,
    name: Option<&str>,
    metadata: Option<&Value>,
    sealed_secret: &str,
) -> Result<(CustomerRow, Put)> {
    // `xmax = 0` tells an insert from the update of ON CONFLICT; a
    // customer being erased is neither updated nor returned.
    let put: Option<PutRow> = sqlx::query_as(&schema.sql(
        "WITH up AS (
             INSERT INTO postback.customers (id, name, metadata) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, metadata = EXCLUDED.metadata,
                                            updated_at = now()
             WHERE postback.customers.deleted_at IS NULL
             RETURNING id, name, metadata, created_at, deleted_at, (xmax = 0) AS inserted),
         sec AS (
             INSERT INTO postback.customer_secrets (customer_id, secret)
             SELECT id, $4 FROM up WHERE inserted
             RETURNING customer_id)
         SELECT up.*, pg_notify($5, up.id)::text AS notified FROM up",
    ))
    .bind(id)
    .bind(name)
    .bind(metadata)
    .bind(sealed_secret)
    .bind(CHANGE_CHANNEL)
    .fetch_optional(&mut *conn)
    .await?;
    match put {
        Some(PutRow {
            row,
            inserted: true,
        }) => Ok((row, Put::Created)),
        Some(PutRow { row, .. }) => Ok((row, Put::Updated)),
        None => {
            let row = find_any(&mut *conn, schema, id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            Ok((row, Put::Deleting))
        }
    }
}

#[derive(sqlx::FromRow)]
struct PutRow {
    #[sqlx(flatten)]
    row: CustomerRow,
    inserted: bool,
}

/// Customer `id`, deleted or not.
pub async fn find_any<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
) -> Result<Option<CustomerRow>> {
    Ok(sqlx::query_as(&schema.sql(
        "SELECT id, name, metadata, created_at, deleted_at FROM postback.customers WHERE id = $1",
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Customer `id`, unless it does not exist or is being deleted.
pub async fn find<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
) -> Result<Option<CustomerRow>> {
    Ok(find_any(db, schema, id)
        .await?
        .filter(|c| c.deleted_at.is_none()))
}

/// The live secrets of customer `id`, newest first (none when the customer
/// does not exist or is being deleted).
pub async fn secrets<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    id: &str,
) -> Result<Vec<SecretRow>> {
    Ok(sqlx::query_as(&schema.sql(
        "SELECT s.created_at, s.expires_at, s.secret
         FROM postback.customer_secrets s JOIN postback.customers c ON c.id = s.customer_id
         WHERE s.customer_id = $1 AND c.deleted_at IS NULL
           AND (s.expires_at IS NULL OR s.expires_at > now())
         ORDER BY s.created_at DESC",
    ))
    .bind(id)
    .fetch_all(db)
    .await?)
}

/// Makes `sealed_secret` the current secret of customer `id`; the one it
/// replaces signs for `grace` more. Secrets replaced earlier keep their end
/// time; ended ones are deleted. `false` when there is no such customer.
pub async fn rotate(
    conn: &mut PgConnection,
    schema: &Schema,
    id: &str,
    sealed_secret: &str,
    grace: std::time::Duration,
) -> Result<bool> {
    // Separate statements: one statement's sub-statements run in no set
    // order, and the new current secret may only be inserted once the old
    // one is no longer current (one current secret per customer).
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let found: Option<String> =
        sqlx::query_scalar(&schema.sql(
            "SELECT id FROM postback.customers WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if found.is_none() {
        return Ok(false);
    }
    sqlx::query(&schema.sql(
        "DELETE FROM postback.customer_secrets WHERE customer_id = $1 AND expires_at <= now()",
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&schema.sql(
        "UPDATE postback.customer_secrets SET expires_at = now() + make_interval(secs => $2)
         WHERE customer_id = $1 AND expires_at IS NULL",
    ))
    .bind(id)
    .bind(grace.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query(&schema.sql(
        "INSERT INTO postback.customer_secrets (customer_id, secret, created_at)
         VALUES ($1, $2, clock_timestamp())",
    ))
    .bind(id)
    .bind(sealed_secret)
    .execute(&mut *tx)
    .await?;
    announce(&mut tx, id).await?;
    tx.commit().await?;
    Ok(true)
}

/// Tells every process that customer `id` changed (delivered at commit).
async fn announce(conn: &mut PgConnection, id: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGE_CHANNEL)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Starts erasing customer `id`: it is gone for the API, its secrets are
/// deleted (nothing is signed with them any more). `false` when there is
/// no such customer.
pub async fn mark_deleted(conn: &mut PgConnection, schema: &Schema, id: &str) -> Result<bool> {
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let marked = sqlx::query(&schema.sql(
        "UPDATE postback.customers SET deleted_at = coalesce(deleted_at, now()) WHERE id = $1",
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query(&schema.sql("DELETE FROM postback.customer_secrets WHERE customer_id = $1"))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    announce(&mut tx, id).await?;
    tx.commit().await?;
    Ok(marked)
}

/// Deletes up to `batch` deliveries (with payloads and attempts) and up to
/// `batch` jobs of customer `id`; returns how many rows went.
pub async fn erase_batch(
    conn: &mut PgConnection,
    schema: &Schema,
    id: &str,
    batch: i64,
) -> Result<u64> {
    let deliveries = sqlx::query(&schema.sql(
        // Found through the payloads' customer index (payloads_customer_created):
        // deliveries has no index on its customer (see the 000600 migration).
        "DELETE FROM postback.deliveries WHERE id IN (
             SELECT delivery_id FROM postback.payloads WHERE customer_id = $1 LIMIT $2)",
    ))
    .bind(id)
    .bind(batch)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let jobs = sqlx::query(&schema.sql(
        "DELETE FROM postback.jobs WHERE id IN (
             SELECT id FROM postback.jobs WHERE customer_id = $1 LIMIT $2)",
    ))
    .bind(id)
    .bind(batch)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(deliveries + jobs)
}

/// Deletes the row of a customer whose rows are all erased. `false` when
/// rows still reference it (written while it was being erased): erase
/// again.
///
/// The row is taken FOR UPDATE first, which waits for every intake that
/// holds it FOR KEY SHARE (a batch writing a delivery of this customer,
/// see `deliveries::insert_leased`) to commit; the check that nothing is
/// left then runs on a snapshot that sees those rows. Intakes that come
/// later wait for this transaction and then find no customer.
pub async fn delete_row(conn: &mut PgConnection, schema: &Schema, id: &str) -> Result<bool> {
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let locked: Option<i32> = sqlx::query_scalar(&schema.sql(
        "SELECT 1 FROM postback.customers WHERE id = $1 AND deleted_at IS NOT NULL FOR UPDATE",
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if locked.is_none() {
        return Ok(false);
    }
    let done = sqlx::query(&schema.sql(
        "DELETE FROM postback.customers WHERE id = $1
           AND NOT EXISTS (SELECT 1 FROM postback.payloads WHERE customer_id = $1)
           AND NOT EXISTS (SELECT 1 FROM postback.jobs WHERE customer_id = $1)",
    ))
    .bind(id)
    .execute(&mut *tx)
    .await;
    match done {
        Ok(done) => {
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        }
        // A job inserted between the check and the delete (jobs keep their
        // foreign key: a job is one row, not a batch of them).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            tx.rollback().await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Rows one erasure statement deletes at most (per table).
pub const ERASE_BATCH: i64 = 1000;

/// Deletes what is left of customer `id`, whose erasure began
/// ([`mark_deleted`]): batches of `batch` rows until none is left, then the
/// customer row. Returns how many rows went.
pub async fn erase(conn: &mut PgConnection, schema: &Schema, id: &str, batch: i64) -> Result<u64> {
    let mut erased = 0;
    loop {
        let n = erase_batch(&mut *conn, schema, id, batch).await?;
        erased += n;
        if n > 0 {
            continue;
        }
        // Rows may arrive while erasing (an intake that checked the
        // customer a moment before): the row goes only once none is left.
        if delete_row(&mut *conn, schema, id).await?
            || find_any(&mut *conn, schema, id).await?.is_none()
        {
            return Ok(erased);
        }
    }
}

/// Customers whose erasure began and did not finish (a process stopped
/// mid-way): the retention pass finishes them.
pub async fn being_deleted<'e, E: PgExecutor<'e>>(db: E, schema: &Schema) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(&schema.sql(
        "SELECT id FROM postback.customers WHERE deleted_at IS NOT NULL ORDER BY deleted_at LIMIT 100",
    ))
    .fetch_all(db)
    .await?)
}
