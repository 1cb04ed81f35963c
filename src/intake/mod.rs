//! The library API of SPEC §5: create a job, post its result, queue a
//! generic delivery, read jobs and deliveries, replay. Every call takes any
//! sqlx connection source (the pool, or `&mut *tx` inside the caller's own
//! transaction), so an ASR backend commits its own rows and Postback's
//! deliveries together. The HTTP API is a thin layer over this module.
//!
//! It owns the job lifecycle and turning a result into deliveries (rendered
//! bodies included); it must not send anything (that is `delivery`'s).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Acquire, Postgres};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{Config, ConfigError};
mod batcher;
mod customers;
mod destinations;
mod find;
mod reseal;
mod sealed;

pub use batcher::Batcher;
pub use customers::{CustomerPut, ERASE_BATCH};
pub use find::{
    decode_cursor, encode_cursor, parse_host, parse_instant, parse_rate, parse_status, query_of,
    Progress, Source, DEFAULT_PAGE, MAX_PAGE, SAMPLE,
};
pub use reseal::{Resealed, RESEAL_BATCH};

use crate::egress::EgressPolicy;
use crate::error::{Error, ErrorCode, Result};
use crate::media::{MediaError, MediaRoots};
use crate::model::{
    CallbackSpec, CallbackType, JobResult, JobView, MediaStream, NewDelivery, NewJob, ResultStatus,
    StreamName, TranscriptFormat,
};
use crate::queue::{Handoff, Reservation};
use crate::render;
use crate::sealing::Keyring;
use crate::state::{DeliveryKind, DeliveryState, JobState, JobStatus};
use crate::store::{self, deliveries::Replayed, jobs::JobRow, Schema};
use crate::validate;

pub use crate::queue::{notify_workers, WAKE_CHANNEL};

/// Handle to Postback's library API: the settings intake depends on. Cheap
/// to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct Postback {
    schema: Schema,
    keys: Arc<Keyring>,
    job_ttl: Duration,
    policy: Arc<EgressPolicy>,
    media: MediaRoots,
    notify: NotifyMode,
}

/// How library calls wake the workers of other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotifyMode {
    /// `pg_notify` inside the transaction: delivered exactly at commit,
    /// whoever commits (right for a caller's own transaction).
    InTransaction,
    /// The caller wakes workers itself after commit (the API does, through
    /// a coalescing [`crate::queue::Notifier`]).
    Deferred,
}

/// Whether `create_job` made a new job or found the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new job was stored.
    New,
    /// The same job id with the same body already existed.
    Existing,
}

/// A stored callback: its fixed delivery id and configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCallback {
    delivery_id: Uuid,
    spec: CallbackSpec,
}

impl Postback {
    /// The library handle for `config` (schema, job TTL, egress deny list,
    /// the keys stored secrets are sealed with, the media roots). Refuses a
    /// `POSTBACK_SECRETS_KEY` that is not a list of base64 32-byte keys.
    pub fn new(config: &Config) -> std::result::Result<Self, ConfigError> {
        Ok(Postback {
            schema: config.db_schema.clone(),
            keys: Arc::new(config.keyring()?),
            job_ttl: config.job_ttl,
            policy: Arc::new(EgressPolicy::new(
                config.egress_allow.clone(),
                config.egress_deny.clone(),
            )),
            media: MediaRoots::new(config.media_root.iter().cloned()),
            notify: NotifyMode::InTransaction,
        })
    }

    /// This handle's calls do not NOTIFY inside their transactions; the
    /// caller wakes workers after commit instead (see
    /// [`crate::queue::Notifier`]). Under load this keeps commits from
    /// queueing behind PostgreSQL's notification lock.
    pub fn with_deferred_notify(mut self) -> Self {
        self.notify = NotifyMode::Deferred;
        self
    }

    async fn notify_in_tx(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        match self.notify {
            NotifyMode::InTransaction => notify_workers(conn).await,
            NotifyMode::Deferred => Ok(()),
        }
    }

    /// The schema this handle reads and writes.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The destination policy used to check URLs at intake.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Registers a job (SPEC `POST /v1/jobs`). The same `jobId` with the
    /// same body returns the existing job; with another body, a conflict.
    pub async fn create_job<'a, A>(&self, db: A, job: NewJob) -> Result<(JobView, Created)>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::new_job(&self.policy, &job)?;
        let request = serde_json::to_value(&job)
            .map_err(|e| Error::invalid(ErrorCode::InvalidField, "body", e.to_string()))?;
        let mut conn = db.acquire().await?;
        if let Some(customer) = &job.customer_id {
            self.known_customer(&mut conn, customer).await?;
        }
        let id = job
            .job_id
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let callbacks: Vec<StoredCallback> = job
            .publish
            .callbacks
            .iter()
            .map(|spec| StoredCallback {
                delivery_id: Uuid::now_v7(),
                spec: sealed::seal_spec(&self.keys, spec),
            })
            .collect();
        let row = store::jobs::JobInsert {
            id: id.clone(),
            request: self.sealed_request(&job),
            metadata: job.metadata.clone(),
            customer_id: job.customer_id.clone(),
            callbacks: serde_json::to_value(&callbacks).unwrap_or(Value::Null),
        };
        let (stored, created) =
            store::jobs::insert(&mut conn, &self.schema, &row, self.job_ttl).await?;
        if !created {
            if stored.expired {
                return Err(expired(&stored));
            }
            if self.opened_request(&stored.request)? != request {
                return Err(Error::Conflict {
                    code: ErrorCode::JobExists,
                    message: format!(
                        "job {id} already exists with a different body; use another jobId or repeat the original request"
                    ),
                });
            }
        }
        metrics_created(created);
        let view = self.view(&mut conn, stored).await?;
        Ok((
            view,
            if created {
                Created::New
            } else {
                Created::Existing
            },
        ))
    }

    /// Posts the job's result (SPEC `POST /v1/jobs/{jobId}/result`): in one
    /// transaction (a savepoint inside the caller's), the job is marked done
    /// and one delivery per callback is queued.
    pub async fn post_result<'a, A>(
        &self,
        db: A,
        job_id: &str,
        result: JobResult,
    ) -> Result<JobView>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        validate::job_result(&result)?;
        let mut conn = db.acquire().await?;
        let Some(job) = store::jobs::find(&mut *conn, &self.schema, job_id, false).await? else {
            return Err(self.missing_job(&mut conn, job_id).await);
        };
        may_take_result(&job)?;
        let callbacks: Vec<StoredCallback> = serde_json::from_value(job.callbacks.clone())
            .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))?;
        // Rendering a large result takes long (seconds for megabytes of
        // words): it runs on a blocking thread, so the runtime's timers (and
        // the attempts and leases they bound) are not held up, and before
        // the transaction, so no lock is held meanwhile. Each distinct body
        // is rendered once and shared by every callback that sends it.
        let status = match result.status {
            ResultStatus::Finished => JobState::Completed,
            ResultStatus::Failed => JobState::Failed,
        };
        let this = self.clone();
        let (rendered, result) = tokio::task::spawn_blocking(move || {
            let rendered = this.render_result(&job, &callbacks, &result);
            (rendered, result)
        })
        .await
        .map_err(|e| {
            // A renderer panicked: nothing was stored.
            tracing::error!(error = %e, job_id, "rendering the result's callbacks failed");
            Error::Database(sqlx::Error::WorkerCrashed)
        })?;
        let Rendered { deliveries, bodies } = rendered?;
        let stored = serde_json::to_value(&result).unwrap_or(Value::Null);
        drop(result);

        let mut tx = (&mut *conn).begin().await?;
        // The job may have been given a result (or expired) while we rendered.
        let Some(job) = store::jobs::find(&mut *tx, &self.schema, job_id, true).await? else {
            return Err(self.missing_job(&mut tx, job_id).await);
        };
        may_take_result(&job)?;
        let shared: Vec<Option<&[u8]>> = bodies
            .iter()
            .map(|b| b.as_deref().map(Vec::as_slice))
            .collect();
        store::deliveries::insert_with_bodies(&mut tx, &self.schema, &deliveries, &shared).await?;
        drop(shared);
        drop(bodies);
        store::jobs::set_result(&mut tx, &self.schema, job_id, status, &stored).await?;
        self.notify_in_tx(&mut tx).await?;
        let job = store::jobs::find(&mut *tx, &self.schema, job_id, false)
            .await?
            .ok_or_else(|| not_found_job(job_id))?;
        let view = self.view(&mut tx, job).await?;
        tx.commit().await?;
        for d in &deliveries {
            count_enqueued(d.kind);
        }
        Ok(view)
    }

    /// Queues a generic delivery (SPEC `POST /v1/deliveries`).
    pub async fn enqueue<'a, A>(&self, db: A, delivery: NewDelivery) -> Result<Uuid>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        Ok(self.enqueue_handing_off(db, delivery, None).await?.0)
    }

    /// [`Postback::enqueue`], and when `handoff` has room for the
    /// destination, the delivery is stored already leased to this process
    /// and its first attempt starts at once, without a claim (see
    /// [`crate::queue::Handoff`]). Returns the id and whether the
    /// attempt was started here (else the workers must be woken).
    pub async fn enqueue_handing_off<'a, A>(
        &self,
        db: A,
        delivery: NewDelivery,
        handoff: Option<&Handoff>,
    ) -> Result<(Uuid, bool)>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let row = self.generic_row(delivery)?;
        let body_len = row.body.as_ref().map_or(0, Vec::len);
        let reservation =
            handoff.and_then(|h| h.reserve(&row.host, row.customer_id.as_deref(), body_len));
        let lease = reservation.as_ref().map(Reservation::lease);
        let mut conn = db.acquire().await?;
        // A leased row needs no wake-up: its attempt starts here.
        let notify = self.notify == NotifyMode::InTransaction && lease.is_none();
        let held =
            store::deliveries::insert_one(&mut conn, &self.schema, &row, notify, lease).await?;
        Ok(self.accepted(row, handoff, reservation.filter(|_| !held)))
    }

    /// [`Postback::enqueue_handing_off`] through the API's group-commit
    /// [`Batcher`]; never NOTIFYs (the caller wakes workers after).
    pub async fn enqueue_batched(
        &self,
        batcher: &Batcher,
        delivery: NewDelivery,
        handoff: Option<&Handoff>,
    ) -> Result<(Uuid, bool)> {
        let row = self.generic_row(delivery)?;
        let body_len = row.body.as_ref().map_or(0, Vec::len);
        let reservation =
            handoff.and_then(|h| h.reserve(&row.host, row.customer_id.as_deref(), body_len));
        let lease = reservation.as_ref().map(Reservation::lease);
        // Moved through the writer and back, never copied.
        let (row, held) = batcher.submit(row, lease).await?;
        Ok(self.accepted(row, handoff, reservation.filter(|_| !held)))
    }

    /// A validated generic delivery as it will be stored.
    fn generic_row(&self, delivery: NewDelivery) -> Result<store::deliveries::NewDelivery> {
        let (host, body, content_type) = validate::new_delivery(&self.policy, &delivery)?;
        if let Some(customer) = &delivery.customer_id {
            validate::customer_id(customer, "customerId")?;
        }
        let origin = validate::origin(&delivery.url);
        Ok(store::deliveries::NewDelivery {
            id: Uuid::now_v7(),
            job_id: None,
            customer_id: delivery.customer_id,
            origin,
            kind: DeliveryKind::Generic,
            method: delivery.method,
            url: delivery.url,
            host,
            content_type,
            headers: sealed::headers_json(&self.keys, &delivery.headers),
            auth: None,
            body: Some(body),
            file_path: None,
            // No job: retention counts from its final time alone (SPEC §3),
            // which completion writes on the database's clock; creation is
            // only the lower bound.
            expires_at: now_millis(),
        })
    }

    /// After the row committed: counts it and, when room was reserved,
    /// gives it to this process's engine.
    fn accepted(
        &self,
        row: store::deliveries::NewDelivery,
        handoff: Option<&Handoff>,
        reservation: Option<Reservation>,
    ) -> (Uuid, bool) {
        count_enqueued(row.kind);
        let id = row.id;
        match (handoff, reservation) {
            (Some(handoff), Some(reservation)) => {
                handoff.give(reservation, row);
                (id, true)
            }
            _ => (id, false),
        }
    }

    /// The job as polling shows it.
    pub async fn job<'a, A>(&self, db: A, job_id: &str) -> Result<JobView>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let mut conn = db.acquire().await?;
        let Some(job) = store::jobs::find(&mut *conn, &self.schema, job_id, false).await? else {
            return Err(self.missing_job(&mut conn, job_id).await);
        };
        if job.expired {
            return Err(expired(&job));
        }
        self.view(&mut conn, job).await
    }

    /// The delivery with every attempt.
    pub async fn delivery<'a, A>(&self, db: A, id: Uuid) -> Result<crate::model::DeliveryView>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let mut conn = db.acquire().await?;
        match store::deliveries::find(&mut conn, &self.schema, id).await? {
            Some(view) => Ok(view),
            None => Err(Error::NotFound {
                what: "delivery",
                id: id.to_string(),
            }),
        }
    }

    /// Puts a delivery back in the queue for a fresh schedule, keeping its id.
    pub async fn replay<'a, A>(&self, db: A, id: Uuid) -> Result<()>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let mut tx = db.begin().await?;
        let outcome = store::deliveries::replay(&mut *tx, &self.schema, id, None).await?;
        match outcome {
            Replayed::Queued => {
                self.notify_in_tx(&mut tx).await?;
                tx.commit().await?;
                Ok(())
            }
            Replayed::InFlight => Err(Error::Conflict {
                code: ErrorCode::DeliveryInFlight,
                message: format!(
                    "delivery {id} is being attempted right now; replay it once that attempt ends"
                ),
            }),
            Replayed::Missing => Err(Error::NotFound {
                what: "delivery",
                id: id.to_string(),
            }),
        }
    }

    async fn view(&self, conn: &mut sqlx::PgConnection, job: JobRow) -> Result<JobView> {
        let stored: Vec<StoredCallback> =
            serde_json::from_value(job.callbacks.clone()).unwrap_or_default();
        let callbacks = match job.status {
            JobState::InProgress => configured_callbacks(stored),
            JobState::Completed | JobState::Failed => {
                let found =
                    store::jobs::callback_statuses(&mut *conn, &self.schema, &job.id).await?;
                in_configured_order(found, &stored)
            }
        };
        let result: Option<JobResult> = job
            .result
            .clone()
            .and_then(|r| serde_json::from_value(r).ok());
        let (result_json, error) = match job.status {
            JobState::Completed => (result.as_ref().map(public_result), None),
            JobState::Failed => (
                None,
                result
                    .and_then(|r| r.error)
                    .map(|e| json!({"code": e.code, "message": e.message})),
            ),
            JobState::InProgress => (None, None),
        };
        Ok(JobView {
            job_id: job.id,
            customer_id: job.customer_id,
            creation_time: job.created_at,
            expiration_time: job.expires_at,
            status: JobStatus::from(job.status),
            metadata: job.metadata,
            result: result_json,
            error,
            callbacks,
        })
    }

    /// One delivery per callback of `job` that `result` sends (a failed
    /// job skips transcript and media callbacks), with its body: each
    /// distinct body rendered once and shared by every callback that sends
    /// it (callbacks of one type, `include` and `format` send the same bytes).
    fn render_result(
        &self,
        job: &JobRow,
        callbacks: &[StoredCallback],
        result: &JobResult,
    ) -> Result<Rendered> {
        let mut deliveries = Vec::with_capacity(callbacks.len());
        let mut bodies = Vec::with_capacity(callbacks.len());
        // Render key -> (content type, body).
        let mut rendered: std::collections::HashMap<String, SharedPayload> =
            std::collections::HashMap::new();
        for (i, cb) in callbacks.iter().enumerate() {
            let host = validate::destination(
                &self.policy,
                &cb.spec.url,
                &format!("publish.callbacks[{i}].url"),
            )?;
            let (content_type, body, file_path) = match cb.spec.kind {
                // A media body is a file, read when its attempt starts.
                CallbackType::Media => {
                    let Some(payload) = payload_for(job, &cb.spec, result, i, &self.media)? else {
                        continue;
                    };
                    (payload.content_type, None, payload.file_path)
                }
                CallbackType::Analytics | CallbackType::Transcript => {
                    let key = render_key(&cb.spec, result);
                    if !rendered.contains_key(&key) {
                        let Some(payload) = payload_for(job, &cb.spec, result, i, &self.media)?
                        else {
                            continue;
                        };
                        let body = payload.body.map(Arc::new);
                        rendered.insert(key.clone(), (payload.content_type, body));
                    }
                    let Some((content_type, body)) = rendered.get(&key) else {
                        continue;
                    };
                    (content_type.clone(), body.clone(), None)
                }
            };
            let payload = Payload {
                content_type,
                body: None,
                file_path,
            };
            deliveries.push(callback_delivery(job, cb, host, payload));
            bodies.push(body);
        }
        Ok(Rendered { deliveries, bodies })
    }
}

/// A rendered content type and body, shared by the callbacks that send it.
type SharedPayload = (String, Option<Arc<Vec<u8>>>);

/// A result's deliveries (their own `body` unset) and, side by side, the
/// body each sends: shared, one allocation per distinct body.
struct Rendered {
    deliveries: Vec<store::deliveries::NewDelivery>,
    bodies: Vec<Option<Arc<Vec<u8>>>>,
}

/// What decides a callback's body besides the result: callbacks with the
/// same key send the same bytes.
fn render_key(spec: &CallbackSpec, result: &JobResult) -> String {
    if result.status == ResultStatus::Failed {
        // A failed job's analytics body ignores `include`.
        return format!("{:?}/failed", spec.kind);
    }
    format!("{:?}/{:?}/{:?}", spec.kind, spec.include, spec.format)
}

/// A job can take a result: it exists, has not expired, has none yet.
fn may_take_result(job: &JobRow) -> Result<()> {
    if job.expired {
        return Err(expired(job));
    }
    if job.status != JobState::InProgress {
        return Err(Error::Conflict {
            code: ErrorCode::ResultExists,
            message: format!(
                "job {} already has a result; a job takes one result",
                job.id
            ),
        });
    }
    Ok(())
}

/// What one callback sends.
struct Payload {
    content_type: String,
    body: Option<Vec<u8>>,
    file_path: Option<String>,
}

impl Payload {
    fn json(body: &Value) -> Self {
        Payload {
            content_type: "application/json".to_owned(),
            body: Some(body.to_string().into_bytes()),
            file_path: None,
        }
    }
}

/// The payload of callback `i` of `job` for `result`, or `None` when a
/// failed job skips it (SPEC §2: transcript and media callbacks).
fn payload_for(
    job: &JobRow,
    spec: &CallbackSpec,
    result: &JobResult,
    i: usize,
    media: &MediaRoots,
) -> Result<Option<Payload>> {
    let failed = result.status == ResultStatus::Failed;
    Ok(Some(match (spec.kind, failed) {
        (CallbackType::Transcript | CallbackType::Media, true) => return Ok(None),
        (CallbackType::Analytics, true) => {
            let error = result.error.clone().unwrap_or(crate::model::JobError {
                code: "failed".into(),
                message: "the job failed".into(),
            });
            Payload::json(&render::failed_body(&job.id, &error))
        }
        (CallbackType::Analytics, false) => Payload::json(&render::analytics_body(
            &job.id,
            job.metadata.as_ref(),
            result.result.as_ref(),
            &result.streams,
            spec.include.as_deref(),
        )),
        (CallbackType::Transcript, false) => {
            let transcript = result
                .result
                .as_ref()
                .and_then(|r| r.transcript.clone())
                .unwrap_or_default();
            let rendered = render::render_transcript(
                &transcript,
                spec.format.unwrap_or(TranscriptFormat::Json),
            );
            Payload {
                content_type: rendered.content_type.to_owned(),
                body: Some(rendered.body),
                file_path: None,
            }
        }
        (CallbackType::Media, false) => {
            let wanted = spec.stream.unwrap_or(StreamName::Original);
            Payload {
                content_type: "application/octet-stream".to_owned(),
                body: None,
                file_path: Some(media_path(media, &result.streams, wanted, i)?),
            }
        }
    }))
}

/// The stored delivery of callback `cb` of `job`.
fn callback_delivery(
    job: &JobRow,
    cb: &StoredCallback,
    host: String,
    payload: Payload,
) -> store::deliveries::NewDelivery {
    let spec = &cb.spec;
    store::deliveries::NewDelivery {
        id: cb.delivery_id,
        job_id: Some(job.id.clone()),
        customer_id: job.customer_id.clone(),
        kind: spec.kind.into(),
        method: spec.method,
        url: spec.url.clone(),
        origin: validate::origin(&spec.url),
        host,
        content_type: payload.content_type,
        headers: serde_json::to_value(&spec.headers).unwrap_or_else(|_| json!({})),
        auth: spec
            .auth
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
        body: payload.body,
        file_path: payload.file_path,
        expires_at: job.expires_at,
    }
}

/// Before the result no delivery exists: the configured callbacks, each
/// with the id its delivery will carry.
fn configured_callbacks(stored: Vec<StoredCallback>) -> Vec<crate::model::CallbackStatus> {
    stored
        .into_iter()
        .map(|c| crate::model::CallbackStatus {
            delivery_id: c.delivery_id,
            url: c.spec.url,
            method: c.spec.method,
            kind: c.spec.kind.into(),
            status: DeliveryState::Pending,
            attempts: 0,
            last_attempt_time: None,
            last_status_code: None,
            next_attempt_time: None,
        })
        .collect()
}

/// `found` in the order the job configured its callbacks, whatever order
/// the ids sort in.
fn in_configured_order(
    mut found: Vec<crate::model::CallbackStatus>,
    stored: &[StoredCallback],
) -> Vec<crate::model::CallbackStatus> {
    let order: std::collections::HashMap<Uuid, usize> = stored
        .iter()
        .enumerate()
        .map(|(i, c)| (c.delivery_id, i))
        .collect();
    found.sort_by_key(|c| order.get(&c.delivery_id).copied().unwrap_or(usize::MAX));
    found
}

fn count_enqueued(kind: DeliveryKind) {
    metrics::counter!(crate::metrics::DELIVERIES_ENQUEUED, "type" => kind.as_str()).increment(1);
}

/// The path of the stream a media callback sends, once it is known to be a
/// regular file under `POSTBACK_MEDIA_ROOT`. A missing file and a file
/// outside the roots get the same answer (no oracle for what exists).
fn media_path(
    media: &MediaRoots,
    streams: &[MediaStream],
    wanted: StreamName,
    callback: usize,
) -> Result<String> {
    if media.is_empty() {
        return Err(Error::invalid(
            ErrorCode::MediaDisabled,
            "streams",
            format!(
                "publish.callbacks[{callback}] is a media callback, but media callbacks are disabled on this server (the operator sets POSTBACK_MEDIA_ROOT to enable them)"
            ),
        ));
    }
    let stream = streams.iter().find(|s| s.stream_name == wanted.as_str());
    let Some(path) = stream.and_then(|s| s.path.clone()) else {
        return Err(Error::invalid(
            ErrorCode::MissingStream,
            "streams",
            format!(
                "publish.callbacks[{callback}] sends the {} stream, but the result has no stream of that name with a path",
                wanted.as_str()
            ),
        ));
    };
    match media.resolve(&path) {
        Ok(_) => Ok(path),
        Err(MediaError::Disabled | MediaError::NotAllowed | MediaError::Changed) => {
            Err(Error::invalid(
                ErrorCode::MissingStream,
                "streams",
                format!(
                    "the {} stream's path is not a readable file under the server's media directories",
                    wanted.as_str()
                ),
            ))
        }
    }
}

/// The result as customers may see it: never a stream's local `path`.
fn public_result(result: &JobResult) -> Value {
    let mut value = match &result.result {
        Some(output) => serde_json::to_value(output).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    if let Value::Object(map) = &mut value {
        let streams: Vec<Value> = result
            .streams
            .iter()
            .filter_map(|s| {
                s.location
                    .as_ref()
                    .map(|l| json!({"streamName": s.stream_name, "streamLocation": l}))
            })
            .collect();
        if !streams.is_empty() {
            map.insert("streams".into(), Value::Array(streams));
        }
    }
    value
}

impl Postback {
    /// The creation request as stored: its callbacks' secrets sealed.
    fn sealed_request(&self, job: &NewJob) -> Value {
        let mut sealed = job.clone();
        for spec in &mut sealed.publish.callbacks {
            *spec = sealed::seal_spec(&self.keys, spec);
        }
        serde_json::to_value(&sealed).unwrap_or(Value::Null)
    }

    /// A stored creation request as it was accepted (secrets opened), to
    /// compare a repeated `POST /v1/jobs` with.
    fn opened_request(&self, stored: &Value) -> Result<Value> {
        let mut job: NewJob = serde_json::from_value(stored.clone())
            .map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))?;
        for spec in &mut job.publish.callbacks {
            *spec = sealed::open_spec(&self.keys, spec)?;
        }
        serde_json::to_value(&job).map_err(|e| Error::Database(sqlx::Error::Decode(Box::new(e))))
    }

    /// `customer` exists and is not being erased (else `unknown_customer`).
    async fn known_customer(&self, conn: &mut sqlx::PgConnection, customer: &str) -> Result<()> {
        validate::customer_id(customer, "customerId")?;
        match store::customers::find(&mut *conn, &self.schema, customer).await? {
            Some(_) => Ok(()),
            None => Err(Error::invalid(
                ErrorCode::UnknownCustomer,
                "customerId",
                format!("no customer has the id {customer:?}; create it with PUT /v1/customers/{{customerId}} first"),
            )),
        }
    }

    /// The error for a job that is not stored: `job_expired` when a purge
    /// left its tombstone, `job_not_found` for ids never seen.
    async fn missing_job(&self, conn: &mut sqlx::PgConnection, id: &str) -> Error {
        match store::jobs::tombstone(&mut *conn, &self.schema, id).await {
            Ok(Some(expired_at)) => Error::Expired {
                id: id.to_owned(),
                expired_at: expired_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            },
            Ok(None) => not_found_job(id),
            Err(err) => err,
        }
    }
}

fn not_found_job(id: &str) -> Error {
    Error::NotFound {
        what: "job",
        id: id.to_owned(),
    }
}

fn expired(job: &JobRow) -> Error {
    Error::Expired {
        id: job.id.clone(),
        expired_at: job
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }
}

fn metrics_created(created: bool) {
    if created {
        metrics::counter!(crate::metrics::JOBS_CREATED).increment(1);
    }
}

/// Now, truncated to PostgreSQL's microseconds so that what we return equals
/// what a later read returns.
fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
