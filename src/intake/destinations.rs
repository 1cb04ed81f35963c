//! Circuit breakers as library calls (SPEC §2 "Destinations", §5): list
//! them, and close one by hand. The engine opens and closes them on its
//! own (`delivery::breakers`); this is the operator's side.

use sqlx::{Acquire, Postgres};

use super::Postback;
use crate::error::{Error, Result};
use crate::model::{DestinationList, DestinationView};
use crate::store::destinations as rows;
use crate::validate;

impl Postback {
    /// The breakers, optionally only those in `state` (`open`,
    /// `half_open`, `closed`), open ones first.
    pub async fn destinations<'a, A>(&self, db: A, state: Option<&str>) -> Result<DestinationList>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        if let Some(state) = state {
            validate::breaker_state(state, "state")?;
        }
        let mut conn = db.acquire().await?;
        let destinations = rows::list(&mut *conn, &self.schema, state)
            .await?
            .into_iter()
            .map(|r| DestinationView {
                origin: r.origin,
                state: r.state,
                consecutive_failures: r.consecutive_failures,
                opened_at: r.opened_at,
                next_probe_time: r.next_probe_at,
                last_error: r.last_error,
            })
            .collect();
        Ok(DestinationList { destinations })
    }

    /// Closes `origin`'s breaker now: its waiting deliveries are due at
    /// once. Returns the origin as normalised.
    pub async fn reset_destination<'a, A>(&self, db: A, origin: &str) -> Result<String>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let origin = validate::origin_filter(origin, "origin")?;
        let mut conn = db.acquire().await?;
        if !rows::reset(&mut conn, &self.schema, &origin).await? {
            return Err(Error::NotFound {
                what: "destination",
                id: origin,
            });
        }
        crate::queue::notify_workers(&mut conn).await?;
        tracing::info!(%origin, "circuit breaker reset by an operator");
        Ok(origin)
    }
}
