//! Operator events (SPEC §3, `POSTBACK_OPERATOR_WEBHOOK`): `destination.opened`, `destination.closed`
//! and `delivery.failed`, POSTed as `{"type", "timestamp", "data"}` to
//! `POSTBACK_OPERATOR_WEBHOOK`. Each event is queued as a delivery of its
//! own (kind `event`), so it is signed with the process secret, retried on
//! the schedule and delivered at least once like any callback.
//!
//! Events about the operator webhook itself (its breaker, its failed
//! events) are not sent: they would feed themselves. It must not decide
//! when an event happens; callers report what happened.

use serde_json::{json, Value};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::state::DeliveryKind;
use crate::store::deliveries::NewDelivery;
use crate::store::Schema;

use crate::metrics::OPERATOR_EVENTS;

/// Where operator events go (cheap to clone).
#[derive(Debug, Clone)]
pub struct Events {
    url: String,
    origin: String,
    lifetime: std::time::Duration,
}

impl Events {
    /// Events to `url`, kept for `lifetime` (`POSTBACK_JOB_TTL`).
    pub fn new(url: &url::Url, lifetime: std::time::Duration) -> Self {
        Events {
            url: url.to_string(),
            origin: crate::validate::origin(url.as_str()),
            lifetime,
        }
    }

    /// True for the operator webhook's own origin (no events about it).
    pub fn is_own_origin(&self, origin: &str) -> bool {
        self.origin == origin
    }

    /// Queues one event of `kind` with `data`.
    pub async fn emit(&self, pool: &PgPool, schema: &Schema, kind: &'static str, data: Value) {
        let now = OffsetDateTime::now_utc();
        let body = json!({
            "type": kind,
            "timestamp": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "data": data,
        });
        let expires = time::Duration::try_from(self.lifetime)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .unwrap_or(now);
        let mut row = NewDelivery::generic_json(&self.url, body.to_string().into_bytes(), expires);
        row.kind = DeliveryKind::Event;
        let queued = async {
            let mut conn = pool.acquire().await?;
            crate::store::deliveries::insert(&mut conn, schema, &[row]).await?;
            crate::queue::notify_workers(&mut conn).await
        }
        .await;
        match queued {
            Ok(()) => metrics::counter!(OPERATOR_EVENTS, "type" => kind).increment(1),
            Err(err) => {
                tracing::warn!(error = %err, event = kind, "could not queue an operator event")
            }
        }
    }
}
