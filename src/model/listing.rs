//! Wire types of finding deliveries and replaying them in bulk (SPEC §2
//! "Finding deliveries and replaying in bulk") and of the queue overview
//! (`GET /v1/stats`). Filters arrive as text, exactly as given, so that
//! `intake::find` can refuse a bad value naming its parameter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DeliveryKind, DeliveryState, Method};

/// Which deliveries: every field given narrows the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryFilter {
    /// pending, delivering, delivered or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Of this customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Of this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// To this host: the name only, without port or path (`example.org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Created at or after: RFC 3339, or a duration back from now (`2h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Created before: RFC 3339, or a duration back from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only these delivery ids (replays only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// The query of `GET /v1/deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "api", into_params(parameter_in = Query))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryListQuery {
    /// pending, delivering, delivered or failed.
    pub status: Option<String>,
    /// Of this customer.
    pub customer_id: Option<String>,
    /// Of this job.
    pub job_id: Option<String>,
    /// To this host: the name only, without port or path (`example.org`).
    pub host: Option<String>,
    /// Created at or after: RFC 3339, or a duration back from now (`2h`).
    pub since: Option<String>,
    /// Created before: RFC 3339, or a duration back from now.
    pub until: Option<String>,
    /// Deliveries per page, 1–500 (default 50).
    pub limit: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl DeliveryListQuery {
    /// The filter part of the query.
    pub fn filter(&self) -> DeliveryFilter {
        DeliveryFilter {
            status: self.status.clone(),
            customer_id: self.customer_id.clone(),
            job_id: self.job_id.clone(),
            host: self.host.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            ids: None,
        }
    }
}

/// A delivery in a list: the delivery without its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeliverySummary {
    /// The delivery id (`webhook-id`).
    pub delivery_id: uuid::Uuid,
    /// The customer it is for, if any.
    pub customer_id: Option<String>,
    /// The job it belongs to, if any.
    pub job_id: Option<String>,
    /// analytics, transcript, media or generic.
    #[serde(rename = "type")]
    pub kind: DeliveryKind,
    /// Destination.
    pub url: String,
    /// POST or PUT.
    pub method: Method,
    /// Destination host.
    pub host: String,
    /// Content-Type of the body.
    pub content_type: String,
    /// Caller headers, values masked as `***`.
    pub headers: BTreeMap<String, String>,
    /// pending, delivering, delivered or failed (a delivery whose worker's
    /// lease ran out is due again: `pending`).
    pub status: DeliveryState,
    /// Attempts made so far.
    pub attempts: i32,
    /// HTTP status of the last attempt, when a response arrived.
    pub last_status_code: Option<i32>,
    /// Outcome class of the last attempt when it failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_time: Option<time::OffsetDateTime>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// When it was (last) queued.
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: time::OffsetDateTime,
    /// When it was delivered or given up.
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<time::OffsetDateTime>,
}

/// Answer of `GET /v1/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Body of `POST /v1/replays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "api", schema(example = json!({
    "filter": {"status": "failed", "host": "hooks.example.org", "since": "2h"},
    "dryRun": true, "limit": 5000, "rate": "50/s"
})))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// Which deliveries; needs `status` or `ids`.
    pub filter: DeliveryFilter,
    /// Count and sample the matches, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Replay at most this many (the oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Spread the due times at N per second (`50/s`), so the workers pace a
    /// recovering receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
}

/// Answer of `POST /v1/replays`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Deliveries the filter matched (at most `limit`).
    pub matched: u64,
    /// Deliveries put back in the queue (0 on a dry run).
    pub replayed: u64,
    /// Matched but not replayed: being attempted right now (replay them
    /// once the attempt ends), or expired meanwhile. 0 on a dry run.
    pub skipped: u64,
    /// Up to 20 matching deliveries, newest first, as they were before.
    pub sample: Vec<DeliverySummary>,
}

/// Answer of `GET /v1/stats`: the queue now and the last hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Due now (waiting for a worker).
    pub due: i64,
    /// Pending, due later.
    pub scheduled: i64,
    /// Being attempted.
    pub in_flight: i64,
    /// Age in seconds of the oldest due delivery (0 when none is due).
    pub oldest_due_seconds: f64,
    /// Delivered in the last hour.
    pub delivered_last_hour: i64,
    /// Given up in the last hour.
    pub failed_last_hour: i64,
}
