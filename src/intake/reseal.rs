//! `postback secrets reencrypt`: rewrites every stored secret under the
//! first key of `POSTBACK_SECRETS_KEY` (clear rows written before a key was
//! set, and rows sealed with an older key), in batches of [`RESEAL_BATCH`]
//! rows, one transaction per batch. Rows already sealed with the first key
//! are left alone, so a second run rewrites nothing.

use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::sealed::{open_spec, seal_spec};
use super::{Postback, StoredCallback};
use crate::error::{Error, Result};
use crate::model::{CallbackAuth, NewJob};

/// Rows read and rewritten per transaction.
pub const RESEAL_BATCH: i64 = 500;

/// How many rows a re-encryption rewrote, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Customers' signing secrets.
    pub customer_secrets: u64,
    /// Jobs (their stored request and callbacks).
    pub jobs: u64,
    /// Deliveries' payloads (header values, auth secrets).
    pub payloads: u64,
    /// The generated process-wide signing secret.
    pub settings: u64,
}

fn decode(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Database(sqlx::Error::Decode(Box::new(err)))
}

impl Postback {
    /// Rewrites every stored secret under the current key.
    pub async fn reseal_all(&self, pool: &PgPool) -> Result<Resealed> {
        if !self.keys.is_sealing() {
            return Ok(Resealed::default());
        }
        Ok(Resealed {
            customer_secrets: self.reseal_customer_secrets(pool).await?,
            jobs: self.reseal_jobs(pool).await?,
            payloads: self.reseal_payloads(pool).await?,
            settings: self.reseal_settings(pool).await?,
        })
    }

    fn reseal_text(&self, stored: &str) -> Result<Option<String>> {
        if !self.keys.needs_reseal(stored) {
            return Ok(None);
        }
        let text = self.keys.open(stored).map_err(decode)?;
        Ok(Some(self.keys.seal(&text)))
    }

    async fn reseal_customer_secrets(&self, pool: &PgPool) -> Result<u64> {
        let mut done = 0;
        let mut after = (String::new(), time::OffsetDateTime::UNIX_EPOCH);
        loop {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(&self.schema.sql(
                "SELECT customer_id, created_at, secret FROM postback.customer_secrets
                 WHERE (customer_id, created_at) > ($1, $2)
                 ORDER BY customer_id, created_at LIMIT $3 FOR UPDATE",
            ))
            .bind(&after.0)
            .bind(after.1)
            .bind(RESEAL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for row in &rows {
                let (id, at, secret): (String, time::OffsetDateTime, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if let Some(sealed) = self.reseal_text(&secret)? {
                    sqlx::query(&self.schema.sql(
                        "UPDATE postback.customer_secrets SET secret = $3
                         WHERE customer_id = $1 AND created_at = $2",
                    ))
                    .bind(&id)
                    .bind(at)
                    .bind(sealed)
                    .execute(&mut *tx)
                    .await?;
                    done += 1;
                }
                after = (id, at);
            }
            tx.commit().await?;
        }
    }

    async fn reseal_jobs(&self, pool: &PgPool) -> Result<u64> {
        let mut done = 0;
        let mut after = String::new();
        loop {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(&self.schema.sql(
                "SELECT id, request, callbacks FROM postback.jobs WHERE id > $1
                 ORDER BY id LIMIT $2 FOR UPDATE",
            ))
            .bind(&after)
            .bind(RESEAL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for row in &rows {
                let (id, request, callbacks): (String, Value, Value) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let mut job: NewJob = serde_json::from_value(request).map_err(decode)?;
                let mut stored: Vec<StoredCallback> =
                    serde_json::from_value(callbacks).map_err(decode)?;
                let mut changed = false;
                for spec in job
                    .publish
                    .callbacks
                    .iter_mut()
                    .chain(stored.iter_mut().map(|c| &mut c.spec))
                {
                    if self.spec_needs_reseal(spec) {
                        *spec = seal_spec(&self.keys, &open_spec(&self.keys, spec)?);
                        changed = true;
                    }
                }
                if changed {
                    sqlx::query(&self.schema.sql(
                        "UPDATE postback.jobs SET request = $2, callbacks = $3 WHERE id = $1",
                    ))
                    .bind(&id)
                    .bind(serde_json::to_value(&job).map_err(decode)?)
                    .bind(serde_json::to_value(&stored).map_err(decode)?)
                    .execute(&mut *tx)
                    .await?;
                    done += 1;
                }
                after = id;
            }
            tx.commit().await?;
        }
    }

    fn spec_needs_reseal(&self, spec: &crate::model::CallbackSpec) -> bool {
        spec.headers.values().any(|v| self.keys.needs_reseal(v))
            || matches!(&spec.auth, Some(CallbackAuth::Jwt { secret, .. }) if self.keys.needs_reseal(secret))
    }

    async fn reseal_payloads(&self, pool: &PgPool) -> Result<u64> {
        let mut done = 0;
        let mut after = Uuid::nil();
        loop {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(&self.schema.sql(
                "SELECT delivery_id, headers, auth FROM postback.payloads WHERE delivery_id > $1
                 ORDER BY delivery_id LIMIT $2 FOR UPDATE",
            ))
            .bind(after)
            .bind(RESEAL_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for row in &rows {
                let (id, headers, auth): (Uuid, Value, Option<Value>) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let (headers, headers_changed) = self.reseal_header_json(headers)?;
                let (auth, auth_changed) = match auth {
                    Some(auth) => {
                        let (auth, changed) = self.reseal_auth_json(auth)?;
                        (Some(auth), changed)
                    }
                    None => (None, false),
                };
                if headers_changed || auth_changed {
                    sqlx::query(&self.schema.sql(
                        "UPDATE postback.payloads SET headers = $2, auth = $3 WHERE delivery_id = $1",
                    ))
                    .bind(id)
                    .bind(headers)
                    .bind(auth)
                    .execute(&mut *tx)
                    .await?;
                    done += 1;
                }
                after = id;
            }
            tx.commit().await?;
        }
    }

    fn reseal_header_json(&self, mut headers: Value) -> Result<(Value, bool)> {
        let mut changed = false;
        if let Value::Object(map) = &mut headers {
            for value in map.values_mut() {
                if let Some(sealed) = value
                    .as_str()
                    .map(|v| self.reseal_text(v))
                    .transpose()?
                    .flatten()
                {
                    *value = Value::String(sealed);
                    changed = true;
                }
            }
        }
        Ok((headers, changed))
    }

    fn reseal_auth_json(&self, auth: Value) -> Result<(Value, bool)> {
        let auth: CallbackAuth = serde_json::from_value(auth).map_err(decode)?;
        let CallbackAuth::Jwt { secret, scheme } = auth;
        let (secret, changed) = match self.reseal_text(&secret)? {
            Some(sealed) => (sealed, true),
            None => (secret, false),
        };
        let value = serde_json::to_value(CallbackAuth::Jwt { secret, scheme }).map_err(decode)?;
        Ok((value, changed))
    }

    async fn reseal_settings(&self, pool: &PgPool) -> Result<u64> {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query(
            &self
                .schema
                .sql("SELECT key, value FROM postback.settings FOR UPDATE"),
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut done = 0;
        for row in &rows {
            let (key, value): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(sealed) = self.reseal_text(&value)? {
                sqlx::query(
                    &self
                        .schema
                        .sql("UPDATE postback.settings SET value = $2 WHERE key = $1"),
                )
                .bind(&key)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
                done += 1;
            }
        }
        tx.commit().await?;
        Ok(done)
    }
}
