//! The customers of SPEC §2 as library calls: register or update, read,
//! rotate the signing secret with a grace period, erase. The HTTP API and
//! the CLI are thin layers over these.
//!
//! Secrets are generated or checked here, sealed before they are stored and
//! shown once (in the answer that made them); they are never read back out.

use sqlx::{Acquire, Postgres};

use super::Postback;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{CustomerRequest, CustomerView, RotateSecret, RotatedSecret, SecretInfo};
use crate::signing::SigningSecret;
use crate::store::customers::{self as rows, CustomerRow, Put};
use crate::validate;

pub use crate::store::customers::ERASE_BATCH;

/// Whether `put_customer` made a new customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerPut {
    /// Created: the view carries the signing secret (shown this once).
    Created,
    /// Name and metadata updated; secrets unchanged.
    Updated,
}

impl Postback {
    /// Registers customer `id` (`PUT /v1/customers/{id}`), or updates its
    /// name and metadata. A new customer gets `request.signing_secret` or a
    /// generated one, returned in the view this once.
    pub async fn put_customer<'a, A>(
        &self,
        db: A,
        id: &str,
        request: CustomerRequest,
    ) -> Result<(CustomerView, CustomerPut)>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::customer_id(id, "customerId")?;
        if let Some(metadata) = &request.metadata {
            validate::storable_json(metadata, "metadata")?;
        }
        let secret = match &request.signing_secret {
            Some(text) => validate::signing_secret(text, "signingSecret")?,
            None => SigningSecret::generate(),
        };
        let text = secret.as_whsec();
        let mut conn = db.acquire().await?;
        let (row, put) = rows::put(
            &mut conn,
            &self.schema,
            id,
            request.name.as_deref(),
            request.metadata.as_ref(),
            &self.keys.seal(&text),
        )
        .await?;
        match put {
            Put::Created => Ok((view(row, Some(text), None), CustomerPut::Created)),
            Put::Updated => Ok((view(row, None, None), CustomerPut::Updated)),
            Put::Deleting => Err(Error::Conflict {
                code: ErrorCode::UnknownCustomer,
                message: format!(
                    "customer {id} is being deleted; create it again once its erasure has finished"
                ),
            }),
        }
    }

    /// Customer `id` with its live secrets (never their values).
    pub async fn customer<'a, A>(&self, db: A, id: &str) -> Result<CustomerView>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::customer_id(id, "customerId")?;
        let mut conn = db.acquire().await?;
        let row = rows::find(&mut *conn, &self.schema, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        let secrets = rows::secrets(&mut *conn, &self.schema, id)
            .await?
            .into_iter()
            .map(|s| SecretInfo {
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect();
        Ok(view(row, None, Some(secrets)))
    }

    /// Makes a new secret (given or generated) sign customer `id`'s
    /// callbacks from now on; the one it replaces keeps signing for the
    /// grace period (default 24 h, at most 7 days).
    pub async fn rotate_secret<'a, A>(
        &self,
        db: A,
        id: &str,
        request: RotateSecret,
    ) -> Result<RotatedSecret>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::customer_id(id, "customerId")?;
        let grace = validate::grace_period(request.grace_period.as_deref(), "gracePeriod")?;
        let secret = match &request.signing_secret {
            Some(text) => validate::signing_secret(text, "signingSecret")?,
            None => SigningSecret::generate(),
        };
        let text = secret.as_whsec();
        let mut conn = db.acquire().await?;
        if !rows::rotate(&mut conn, &self.schema, id, &self.keys.seal(&text), grace).await? {
            return Err(not_found(id));
        }
        Ok(RotatedSecret {
            signing_secret: text,
        })
    }

    /// Erases customer `id`: at once it is gone for the API and nothing is
    /// signed with its secrets any more; then its deliveries (payloads and
    /// attempts with them) and jobs are deleted in batches of
    /// [`ERASE_BATCH`], and the customer row last. Attempts in flight
    /// write nothing back (their rows are gone). If this call is cut short,
    /// the retention pass of `serve` (and `postback purge`) finishes it.
    pub async fn delete_customer<'a, A>(&self, db: A, id: &str) -> Result<u64>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::customer_id(id, "customerId")?;
        let mut conn = db.acquire().await?;
        if rows::find(&mut *conn, &self.schema, id).await?.is_none() {
            return Err(not_found(id));
        }
        rows::mark_deleted(&mut conn, &self.schema, id).await?;
        rows::erase(&mut conn, &self.schema, id, ERASE_BATCH).await
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "customer",
        id: id.to_owned(),
    }
}

fn view(
    row: CustomerRow,
    secret: Option<String>,
    secrets: Option<Vec<SecretInfo>>,
) -> CustomerView {
    CustomerView {
        customer_id: row.id,
        name: row.name,
        metadata: row.metadata,
        created_at: row.created_at,
        signing_secret: secret,
        secrets,
    }
}
