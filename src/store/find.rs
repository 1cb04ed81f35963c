//! Finding deliveries by filter and replaying them in bulk: the SQL behind
//! `GET /v1/deliveries`, `POST /v1/replays`, `GET /v1/stats` and the CLI's
//! `deliveries list` and `replay`.
//!
//! It owns the statements and their shape: newest first (or oldest first
//! for replays), keyset paged on `(created_at, id)` so a page is one range
//! scan of an index: `payloads`' listing indexes
//! (`migrations/20261202000600_listing_on_payloads.sql`: written once per
//! delivery, never on a state change), or `deliveries`' `failed` ones when
//! the filter is `failed`; and replays written `REPLAY_BATCH` ids per `UPDATE … FROM unnest`. It
//! must not parse wire input (that is `intake::find`'s) nor decide who may
//! replay what.

use sqlx::{PgExecutor, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Schema;
use crate::error::Result;
use crate::model::Method;
use crate::state::{DeliveryKind, DeliveryState};

/// Ids per replay `UPDATE`: large enough that 100k replays are 100
/// statements, small enough that one statement holds its row locks for
/// milliseconds, not seconds, next to the workers' claims.
pub const REPLAY_BATCH: usize = 1000;

/// The state shown (an orphaned lease is due again: `pending`).
pub const SHOWN_STATE: &str = super::SHOWN_STATE_SQL;

/// The due time shown: a pending row's, or the expiry of a lease that ran
/// out (the moment it became due again); none while an attempt runs.
pub const SHOWN_NEXT_ATTEMPT: &str = super::SHOWN_NEXT_SQL;

/// Which deliveries an operator means; every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// In this (shown) state.
    pub status: Option<DeliveryState>,
    /// Of this customer.
    pub customer: Option<String>,
    /// Of this job.
    pub job: Option<String>,
    /// To this host (lowercase, no port).
    pub host: Option<String>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created before.
    pub until: Option<OffsetDateTime>,
    /// Only these ids.
    pub ids: Option<Vec<Uuid>>,
}

/// A position in the `(created_at, id)` order: the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The row's `created_at`.
    pub created_at: OffsetDateTime,
    /// The row's id.
    pub id: Uuid,
}

/// Which way a scan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Listing: the newest first.
    NewestFirst,
    /// Replaying: the oldest first, so with a rate the oldest is due first.
    OldestFirst,
}

/// One delivery of a list, without its attempts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SummaryRow {
    /// Delivery id.
    pub id: Uuid,
    /// Owning job.
    pub job_id: Option<String>,
    /// Its customer.
    pub customer_id: Option<String>,
    /// What it carries.
    pub kind: DeliveryKind,
    /// POST or PUT.
    pub method: Method,
    /// Destination.
    pub url: String,
    /// Destination host.
    pub host: String,
    /// Shown state ([`SHOWN_STATE`]).
    pub state: DeliveryState,
    /// Attempts ever made.
    pub attempts: i32,
    /// Last HTTP status.
    pub last_status_code: Option<i32>,
    /// Last outcome class.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// (Re)queued.
    pub queued_at: OffsetDateTime,
    /// Shown due time ([`SHOWN_NEXT_ATTEMPT`]).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Delivered or given up.
    pub completed_at: Option<OffsetDateTime>,
    /// Content-Type of the body.
    pub content_type: String,
    /// Caller headers (unmasked: the caller masks).
    pub headers: serde_json::Value,
}

impl SummaryRow {
    /// Where this row is in the list order.
    pub fn key(&self) -> Key {
        Key {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// The table a listing's rows are chosen on, and so the columns its
/// filters and its order name (the same values in both tables: `payloads`
/// copies `created_at`, `host` and `customer_id` when the delivery is
/// queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// `payloads`' indexes (created, host, customer): every filter but
    /// `failed`.
    Payloads,
    /// `deliveries`' partial `failed` indexes: only failed rows are in them.
    Failed,
}

impl Drive {
    fn of(q: &Query) -> Drive {
        if q.status == Some(DeliveryState::Failed) {
            Drive::Failed
        } else {
            Drive::Payloads
        }
    }

    /// `(created_at, id, host, customer_id)` of the driving table.
    fn columns(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Drive::Payloads => ("p.created_at", "p.delivery_id", "p.host", "p.customer_id"),
            Drive::Failed => ("d.created_at", "d.id", "d.host", "d.customer_id"),
        }
    }

    fn from(self) -> &'static str {
        match self {
            Drive::Payloads => {
                " FROM postback.payloads p JOIN postback.deliveries d ON d.id = p.delivery_id WHERE "
            }
            Drive::Failed => {
                " FROM postback.deliveries d JOIN postback.payloads p ON p.delivery_id = d.id WHERE "
            }
        }
    }
}

/// Appends `FROM … WHERE …` for `q` (and the keyset bound after `after`).
/// Only the predicates in use are written, so the planner sees constants
/// and picks the matching index on every call (a `$1 IS NULL OR …` form
/// would leave a generic plan that uses none).
fn push_where(
    b: &mut QueryBuilder<'_, Postgres>,
    schema: &Schema,
    q: &Query,
    after: Option<Key>,
    order: Order,
) {
    let drive = Drive::of(q);
    let (created, id, host, customer) = drive.columns();
    b.push(schema.sql(drive.from()));
    // Retention keeps every delivery that is not final (SPEC §3).
    b.push(super::LIVE_SQL);
    match q.status {
        None => {}
        Some(DeliveryState::Pending) => {
            b.push(
                " AND (d.state = 'pending' OR (d.state = 'delivering' AND d.next_attempt_at <= now()))",
            );
        }
        Some(DeliveryState::Delivering) => {
            b.push(" AND d.state = 'delivering' AND d.next_attempt_at > now()");
        }
        Some(state) => {
            // A literal, not a parameter: the failed listing's partial
            // indexes (`WHERE state = 'failed'`) must stay provable when
            // PostgreSQL switches the statement to a generic plan.
            b.push(format!(" AND d.state = '{}'", state.as_str()));
        }
    }
    if let Some(c) = &q.customer {
        b.push(format!(" AND {customer} = ")).push_bind(c.clone());
    }
    if let Some(job) = &q.job {
        b.push(" AND d.job_id = ").push_bind(job.clone());
    }
    if let Some(h) = &q.host {
        b.push(format!(" AND {host} = ")).push_bind(h.clone());
    }
    if let Some(since) = q.since {
        b.push(format!(" AND {created} >= ")).push_bind(since);
    }
    if let Some(until) = q.until {
        b.push(format!(" AND {created} < ")).push_bind(until);
    }
    if let Some(ids) = &q.ids {
        b.push(format!(" AND {id} = ANY("))
            .push_bind(ids.clone())
            .push(")");
    }
    if let Some(key) = after {
        // Row comparison: one index condition on (created_at, id).
        let op = match order {
            Order::NewestFirst => "<",
            Order::OldestFirst => ">",
        };
        b.push(format!(" AND ({created}, {id}) {op} ("))
            .push_bind(key.created_at)
            .push(", ")
            .push_bind(key.id)
            .push(")");
    }
}

fn order_by(drive: Drive, order: Order) -> String {
    let (created, id, _, _) = drive.columns();
    match order {
        Order::NewestFirst => format!(" ORDER BY {created} DESC, {id} DESC"),
        Order::OldestFirst => format!(" ORDER BY {created}, {id}"),
    }
}

/// The statement of [`page`], after `prefix` (empty, or `EXPLAIN …`).
fn page_query<'a>(
    prefix: &str,
    schema: &Schema,
    q: &Query,
    after: Option<Key>,
    order: Order,
    limit: i64,
) -> QueryBuilder<'a, Postgres> {
    // The page is chosen on one index (range scan + LIMIT); the other
    // table is joined by primary key for the page's rows only.
    let mut b = QueryBuilder::new(format!(
        "{prefix}SELECT d.id, d.job_id, d.customer_id, d.kind, d.method, d.url, d.host,
                {SHOWN_STATE} AS state, d.attempts, d.last_status_code, d.last_error,
                d.created_at, d.queued_at, {SHOWN_NEXT_ATTEMPT} AS next_attempt_at, d.completed_at,
                p.content_type, p.headers"
    ));
    push_where(&mut b, schema, q, after, order);
    b.push(order_by(Drive::of(q), order));
    b.push(" LIMIT ").push_bind(limit);
    b
}

/// Up to `limit` deliveries matching `q` after `after`, in `order`.
pub async fn page<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    q: &Query,
    after: Option<Key>,
    order: Order,
    limit: i64,
) -> Result<Vec<SummaryRow>> {
    let mut b = page_query("", schema, q, after, order, limit);
    Ok(b.build_query_as().fetch_all(db).await?)
}

/// The plan PostgreSQL runs for the first page of `q` (`EXPLAIN (ANALYZE,
/// COSTS OFF)` lines), as docs/operations.md shows it: for the runbook and
/// for the test that keeps the listing an index scan.
pub async fn explain_page<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    q: &Query,
    limit: i64,
) -> Result<Vec<String>> {
    let mut b = page_query(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ",
        schema,
        q,
        None,
        Order::NewestFirst,
        limit,
    );
    Ok(b.build_query_scalar().fetch_all(db).await?)
}

/// Keys of up to `limit` deliveries matching `q` after `after`, in `order`
/// (what a replay pages through: no payload read).
pub async fn keys<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    q: &Query,
    after: Option<Key>,
    order: Order,
    limit: i64,
) -> Result<Vec<Key>> {
    let mut b = QueryBuilder::new("SELECT d.created_at, d.id");
    push_where(&mut b, schema, q, after, order);
    b.push(order_by(Drive::of(q), order));
    b.push(" LIMIT ").push_bind(limit);
    let rows: Vec<(OffsetDateTime, Uuid)> = b.build_query_as().fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(created_at, id)| Key { created_at, id })
        .collect())
}

/// How many deliveries match `q`, counting at most `cap` (a replay's
/// limit: counting past it would scan for nothing).
pub async fn count<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    q: &Query,
    cap: Option<i64>,
) -> Result<i64> {
    let mut b = QueryBuilder::new("SELECT count(*) FROM (SELECT 1");
    push_where(&mut b, schema, q, None, Order::NewestFirst);
    if let Some(cap) = cap {
        b.push(" LIMIT ").push_bind(cap);
    }
    b.push(") m");
    Ok(b.build_query_scalar().fetch_one(db).await?)
}

/// Matching deliveries per host, most first (of at most `cap` matches).
pub async fn count_by_host<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    q: &Query,
    cap: Option<i64>,
) -> Result<Vec<(String, i64)>> {
    let mut b = QueryBuilder::new("SELECT host, count(*) FROM (SELECT d.host");
    push_where(&mut b, schema, q, None, Order::OldestFirst);
    if let Some(cap) = cap {
        b.push(order_by(Drive::of(q), Order::OldestFirst));
        b.push(" LIMIT ").push_bind(cap);
    }
    b.push(") m GROUP BY host ORDER BY count(*) DESC, host");
    Ok(b.build_query_as().fetch_all(db).await?)
}

/// Puts `ids[i]` back in the queue due at `due[i]`, for a fresh cycle of
/// the schedule, in ONE statement; returns the ids replayed.
///
/// Skipped: deliveries being attempted right now (leased, lease running:
/// replaying would fence out the worker's outcome while its request is
/// already on the wire, so the receiver would get it twice for nothing)
/// and deliveries gone or expired since they were matched. A delivery
/// whose lease ran out is replayed: nobody is attempting it.
pub async fn replay_batch<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    ids: &[Uuid],
    due: &[OffsetDateTime],
) -> Result<Vec<Uuid>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(&schema.sql(
        "UPDATE postback.deliveries d
         SET state = 'pending', next_attempt_at = t.due, lease = NULL,
             cycle_attempts = 0, cycle_started_at = NULL, held_due = NULL,
             queued_at = now(), completed_at = NULL
         FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, due)
         WHERE d.id = t.id AND (d.state NOT IN ('delivered', 'failed') OR d.expires_at > now())
           AND NOT (d.state = 'delivering' AND d.next_attempt_at > now())
         RETURNING d.id",
    ))
    .bind(ids)
    .bind(due)
    .fetch_all(db)
    .await?)
}

/// Deliveries that ended in the last `window`: (delivered, failed).
pub async fn completed_within<'e, E: PgExecutor<'e>>(
    db: E,
    schema: &Schema,
    window: std::time::Duration,
) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(&schema.sql(
        "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FILTER (WHERE state = 'failed')
         FROM postback.deliveries
         WHERE completed_at > now() - make_interval(secs => $1)",
    ))
    .bind(window.as_secs_f64())
    .fetch_one(db)
    .await?)
}
