//! The library calls behind finding deliveries and replaying them in bulk
//! (SPEC §2 "Finding deliveries and replaying in bulk") and the queue
//! overview: [`Postback::list_deliveries`], [`Postback::replay_matching`],
//! [`Postback::count_matching`], [`Postback::queue_stats`].
//!
//! It owns reading the filters as given (each bad value refused naming its
//! parameter), the opaque keyset cursor, the replay's batching, its rate
//! and its progress; it must not hold SQL (`store::find`) nor know HTTP.

use std::time::Duration;

use base64::Engine as _;
use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Postback;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    DeliveryFilter, DeliveryList, DeliveryListQuery, DeliverySummary, QueueStats, ReplayReport,
    ReplayRequest,
};
use crate::state::DeliveryState;
use crate::store::deliveries::mask_headers;
use crate::store::find::{self, Key, Order, Query, REPLAY_BATCH};

/// Deliveries per page of `GET /v1/deliveries` unless `limit` says.
pub const DEFAULT_PAGE: i64 = 50;
/// The largest page.
pub const MAX_PAGE: i64 = 500;
/// Matching deliveries a replay report shows.
pub const SAMPLE: i64 = 20;

/// Where a filter came from, so an error names what the caller wrote: a
/// query parameter (`status`) or a body field (`filter.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The query string of `GET /v1/deliveries`.
    Query,
    /// The `filter` of a `POST /v1/replays` body.
    Body,
}

impl Source {
    fn field(self, name: &str) -> String {
        match self {
            Source::Query => name.to_owned(),
            Source::Body => format!("filter.{name}"),
        }
    }

    fn code(self) -> ErrorCode {
        match self {
            Source::Query => ErrorCode::InvalidQuery,
            Source::Body => ErrorCode::InvalidField,
        }
    }

    fn invalid(self, name: &str, reason: impl Into<String>) -> Error {
        Error::invalid(self.code(), self.field(name), reason)
    }
}

/// A `status` value: one of the delivery states.
pub fn parse_status(raw: &str) -> std::result::Result<DeliveryState, String> {
    DeliveryState::parse(raw.trim()).ok_or_else(|| {
        let names: Vec<_> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
        format!(
            "{raw:?} is not a delivery state; use one of {}",
            names.join(", ")
        )
    })
}

/// A `host` value: a host name as deliveries store it (lowercase, no
/// port, no path). A URL or `host:port` is refused saying what to drop,
/// rather than silently matching nothing.
pub fn parse_host(raw: &str) -> std::result::Result<String, String> {
    let host = raw.trim();
    if host.is_empty() {
        return Err("is empty; give a host name such as hooks.example.org".to_owned());
    }
    if host.contains("://") || host.contains('/') {
        return Err(format!(
            "{raw:?} has a scheme or a path; give the host name alone (drop everything but the host, e.g. hooks.example.org)"
        ));
    }
    // `[::1]` is an IPv6 host as stored; a colon elsewhere is a port.
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(format!(
            "{raw:?} has a port; give the host name alone (drop \":{}\"): deliveries to every port of a host are listed together",
            host.rsplit(':').next().unwrap_or_default()
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// An instant: RFC 3339, or a duration back from `now` (`2h`, `3d`).
pub fn parse_instant(
    raw: &str,
    now: OffsetDateTime,
) -> std::result::Result<OffsetDateTime, String> {
    let raw = raw.trim();
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    let back = humantime::parse_duration(raw).map_err(|_| {
        format!("{raw:?} is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor a duration back from now (2h, 3d)")
    })?;
    time::Duration::try_from(back)
        .ok()
        .and_then(|back| now.checked_sub(back))
        .ok_or_else(|| format!("{raw:?} reaches back further than time goes"))
}

/// A rate: `N/s` or `N` deliveries per second, N > 0.
pub fn parse_rate(raw: &str) -> std::result::Result<f64, String> {
    let number = raw.trim().trim_end_matches("/s").trim();
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!(
            "{raw:?} is not a rate; use deliveries per second such as 50/s"
        )),
    }
}

/// The opaque cursor of the row after which the next page starts:
/// URL-safe base64 of `<created_at unix ns>.<id>`.
pub fn encode_cursor(key: Key) -> String {
    let text = format!("{}.{}", key.created_at.unix_timestamp_nanos(), key.id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Reads [`encode_cursor`]'s output back; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<Key> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (nanos, id) = text.split_once('.')?;
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some(Key {
        created_at,
        id: Uuid::parse_str(id).ok()?,
    })
}

/// A filter value as given; blank counts as not given.
fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `filter` as a store query, at `now`; each bad value names its field.
pub fn query_of(filter: &DeliveryFilter, from: Source, now: OffsetDateTime) -> Result<Query> {
    let status = text(&filter.status)
        .map(|s| parse_status(s).map_err(|e| from.invalid("status", e)))
        .transpose()?;
    let host = text(&filter.host)
        .map(|h| parse_host(h).map_err(|e| from.invalid("host", e)))
        .transpose()?;
    let since = text(&filter.since)
        .map(|s| parse_instant(s, now).map_err(|e| from.invalid("since", e)))
        .transpose()?;
    let until = text(&filter.until)
        .map(|s| parse_instant(s, now).map_err(|e| from.invalid("until", e)))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until) {
        if since >= until {
            return Err(from.invalid("until", "must be later than since"));
        }
    }
    let ids = filter
        .ids
        .as_ref()
        .map(|ids| {
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    Uuid::parse_str(id.trim()).map_err(|_| {
                        from.invalid(
                            &format!("ids[{i}]"),
                            format!("{id:?} is not a delivery id (a UUID, as in webhook-id)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    Ok(Query {
        status,
        customer: text(&filter.customer_id).map(str::to_owned),
        job: text(&filter.job_id).map(str::to_owned),
        host,
        since,
        until,
        ids,
    })
}

fn summary(row: find::SummaryRow) -> DeliverySummary {
    DeliverySummary {
        delivery_id: row.id,
        customer_id: row.customer_id,
        job_id: row.job_id,
        kind: row.kind,
        url: row.url,
        method: row.method,
        host: row.host,
        content_type: row.content_type,
        headers: mask_headers(&row.headers),
        status: row.state,
        attempts: row.attempts,
        last_status_code: row.last_status_code,
        last_error: row.last_error,
        next_attempt_time: row.next_attempt_at,
        created_at: row.created_at,
        queued_at: row.queued_at,
        completed_at: row.completed_at,
    }
}

/// How far a replay got: `done` of `total` matched deliveries handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Handled so far (replayed or skipped).
    pub done: u64,
    /// Matched in all.
    pub total: u64,
}

impl Postback {
    /// One page of deliveries matching `query`, newest first, with the
    /// cursor of the next page (`GET /v1/deliveries`).
    pub async fn list_deliveries(
        &self,
        pool: &PgPool,
        query: &DeliveryListQuery,
    ) -> Result<DeliveryList> {
        let q = query_of(&query.filter(), Source::Query, OffsetDateTime::now_utc())?;
        let limit = match query.limit.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_PAGE,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(Source::Query.invalid(
                        "limit",
                        format!("{raw:?} is not a page size; use 1 to {MAX_PAGE}"),
                    ))
                }
            },
        };
        let after = match query.cursor.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
                Source::Query.invalid(
                    "cursor",
                    "is not a cursor of this API; pass nextCursor of the previous page as given",
                )
            })?),
        };
        self.page(pool, &q, after, limit).await
    }

    /// A page of `q` after `after` (the typed form of
    /// [`Postback::list_deliveries`], for the CLI and embedders).
    pub async fn page(
        &self,
        pool: &PgPool,
        q: &Query,
        after: Option<Key>,
        limit: i64,
    ) -> Result<DeliveryList> {
        // One row more than asked tells whether another page exists, so the
        // last page says so instead of sending the caller to an empty one.
        let mut rows = find::page(
            pool,
            self.schema(),
            q,
            after,
            Order::NewestFirst,
            limit.saturating_add(1),
        )
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit.max(0) as usize);
        let next_cursor = more
            .then(|| rows.last().map(|r| encode_cursor(r.key())))
            .flatten();
        Ok(DeliveryList {
            deliveries: rows.into_iter().map(summary).collect(),
            next_cursor,
        })
    }

    /// Checks a replay request and reads it into a query, a limit and a
    /// rate.
    pub fn replay_plan(
        &self,
        request: &ReplayRequest,
    ) -> Result<(Query, Option<i64>, Option<f64>)> {
        let q = query_of(&request.filter, Source::Body, OffsetDateTime::now_utc())?;
        if q.status.is_none() && q.ids.is_none() {
            return Err(Error::invalid(
                ErrorCode::InvalidField,
                "filter",
                "needs status (e.g. \"failed\") or ids: a replay of every delivery is never meant",
            ));
        }
        let limit = match request.limit {
            None => None,
            Some(0) => {
                return Err(Error::invalid(
                    ErrorCode::InvalidField,
                    "limit",
                    "must be at least 1 (leave it out for no limit)",
                ))
            }
            Some(n) => Some(i64::try_from(n).unwrap_or(i64::MAX)),
        };
        let rate = request
            .rate
            .as_deref()
            .map(|r| parse_rate(r).map_err(|e| Error::invalid(ErrorCode::InvalidField, "rate", e)))
            .transpose()?;
        Ok((q, limit, rate))
    }

    /// How many deliveries `q` matches, counting at most `cap`.
    pub async fn count_matching(&self, pool: &PgPool, q: &Query, cap: Option<i64>) -> Result<u64> {
        let n = find::count(pool, self.schema(), q, cap).await?;
        Ok(n.max(0) as u64)
    }

    /// Matching deliveries per host, most first.
    pub async fn count_by_host(
        &self,
        pool: &PgPool,
        q: &Query,
        cap: Option<i64>,
    ) -> Result<Vec<(String, u64)>> {
        let rows = find::count_by_host(pool, self.schema(), q, cap).await?;
        Ok(rows
            .into_iter()
            .map(|(h, n)| (h, n.max(0) as u64))
            .collect())
    }

    /// `POST /v1/replays`: counts and samples the deliveries the filter
    /// matches and, unless it is a dry run, replays them.
    pub async fn replay_matching(
        &self,
        pool: &PgPool,
        request: &ReplayRequest,
    ) -> Result<ReplayReport> {
        let (q, limit, rate) = self.replay_plan(request)?;
        self.replay_query(pool, &q, limit, rate, request.dry_run, |_| {})
            .await
    }

    /// Replays what `q` matches (the oldest first, at most `limit`), in
    /// statements of [`REPLAY_BATCH`] ids, due `1/rate` seconds apart from
    /// now when a rate is given; `progress` hears after each statement.
    /// Takes the pool, not a caller's transaction: a bulk replay commits
    /// batch by batch, so the workers start on the first batch while the
    /// rest is written, and no statement holds many locks for long.
    pub async fn replay_query(
        &self,
        pool: &PgPool,
        q: &Query,
        limit: Option<i64>,
        rate: Option<f64>,
        dry_run: bool,
        mut progress: impl FnMut(Progress),
    ) -> Result<ReplayReport> {
        let matched = self.count_matching(pool, q, limit).await?;
        let sample_size = limit.map_or(SAMPLE, |l| l.min(SAMPLE));
        let sample = self.page(pool, q, None, sample_size).await?.deliveries;
        let mut report = ReplayReport {
            matched,
            replayed: 0,
            skipped: 0,
            sample,
        };
        if dry_run || matched == 0 {
            return Ok(report);
        }
        let start = OffsetDateTime::now_utc();
        let mut remaining = limit.unwrap_or(i64::MAX);
        let mut after = None;
        let mut done = 0u64;
        while remaining > 0 {
            let want = remaining.min(REPLAY_BATCH as i64);
            let keys = find::keys(pool, self.schema(), q, after, Order::OldestFirst, want).await?;
            let Some(last) = keys.last().copied() else {
                break;
            };
            after = Some(last);
            let ids: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
            let due: Vec<OffsetDateTime> = (0..ids.len() as u64)
                .map(|i| due_at(start, done + i, rate))
                .collect();
            let replayed = find::replay_batch(pool, self.schema(), &ids, &due).await?;
            if !replayed.is_empty() {
                // Committed already (autocommit): wake every process's
                // workers now, not after the last batch.
                let mut conn = pool.acquire().await?;
                super::notify_workers(&mut conn).await?;
            }
            report.replayed += replayed.len() as u64;
            report.skipped += (ids.len() - replayed.len()) as u64;
            done += ids.len() as u64;
            remaining -= ids.len() as i64;
            progress(Progress {
                done,
                total: matched.max(done),
            });
            if (ids.len() as i64) < want {
                break;
            }
        }
        // Rows matched by the count that were gone by the time their batch
        // was read (purged, replayed by someone else) count as skipped.
        report.matched = report.matched.max(done);
        report.skipped += report.matched - done;
        Ok(report)
    }

    /// The queue now and the last hour (`GET /v1/stats`).
    pub async fn queue_stats(&self, pool: &PgPool) -> Result<QueueStats> {
        let depth = crate::metrics::queue_depth(pool, self.schema()).await?;
        let (delivered, failed) =
            find::completed_within(pool, self.schema(), Duration::from_secs(3600)).await?;
        Ok(QueueStats {
            due: depth.due,
            scheduled: depth.scheduled,
            in_flight: depth.in_flight,
            oldest_due_seconds: depth.oldest,
            delivered_last_hour: delivered,
            failed_last_hour: failed,
        })
    }
}

/// When the `index`-th replayed delivery is due: all now, or spread
/// `1/rate` seconds apart so the workers (not the caller) pace a
/// recovering receiver.
fn due_at(start: OffsetDateTime, index: u64, rate: Option<f64>) -> OffsetDateTime {
    match rate {
        Some(r) => start + Duration::from_secs_f64(index as f64 / r),
        None => start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let key = Key {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_789)
                .unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(key)), Some(key));
        for bad in ["", "x", "!!!", "MTIz", &encode_cursor(key)[3..]] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn hosts_with_a_port_or_a_path_say_what_to_drop() {
        assert_eq!(
            parse_host(" Hooks.Example.ORG ").unwrap(),
            "hooks.example.org"
        );
        assert_eq!(parse_host("[::1]").unwrap(), "[::1]");
        let port = parse_host("example.org:8443").unwrap_err();
        assert!(port.contains("drop \":8443\""), "{port}");
        for bad in ["https://example.org", "example.org/hook"] {
            assert!(parse_host(bad).unwrap_err().contains("drop"), "{bad}");
        }
    }

    #[test]
    fn instants_are_rfc3339_or_a_duration_back() {
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        assert_eq!(
            parse_instant("2h", now).unwrap(),
            now - time::Duration::hours(2)
        );
        assert_eq!(
            parse_instant("2026-12-01T08:00:00Z", now).unwrap(),
            OffsetDateTime::parse("2026-12-01T08:00:00Z", &Rfc3339).unwrap()
        );
        assert!(parse_instant("yesterday", now).is_err());
    }

    #[test]
    fn bad_filter_values_name_their_parameter() {
        let now = OffsetDateTime::now_utc();
        let cases = [
            (
                DeliveryFilter {
                    status: Some("lost".into()),
                    ..Default::default()
                },
                "status",
            ),
            (
                DeliveryFilter {
                    host: Some("a:1".into()),
                    ..Default::default()
                },
                "host",
            ),
            (
                DeliveryFilter {
                    since: Some("soon".into()),
                    ..Default::default()
                },
                "since",
            ),
            (
                DeliveryFilter {
                    since: Some("1h".into()),
                    until: Some("2h".into()),
                    ..Default::default()
                },
                "until",
            ),
            (
                DeliveryFilter {
                    ids: Some(vec!["x".into()]),
                    ..Default::default()
                },
                "ids[0]",
            ),
        ];
        for (filter, field) in cases {
            match query_of(&filter, Source::Query, now) {
                Err(Error::Validation { field: f, code, .. }) => {
                    assert_eq!(f, field);
                    assert_eq!(code, ErrorCode::InvalidQuery);
                }
                other => panic!("{filter:?}: {other:?}"),
            }
            match query_of(&filter, Source::Body, now) {
                Err(Error::Validation { field: f, .. }) => assert_eq!(f, format!("filter.{field}")),
                other => panic!("{filter:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_rate_spreads_due_times() {
        let start = OffsetDateTime::now_utc();
        assert_eq!(due_at(start, 100, None), start);
        assert_eq!(
            due_at(start, 100, Some(50.0)),
            start + Duration::from_secs(2)
        );
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert!(parse_rate("0").is_err() && parse_rate("fast").is_err());
    }
}
