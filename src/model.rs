//! Domain types shared by the library, the HTTP API and the workers: what a
//! caller sends (job requests, callback configuration, results) and what a
//! caller reads back. Pure data with serde (camelCase on the wire, SPEC §2);
//! no I/O and no validation beyond what the types themselves enforce
//! (validation lives in `validate`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::state::{DeliveryKind, DeliveryState, JobStatus};

mod listing;
pub use listing::{
    DeliveryFilter, DeliveryList, DeliveryListQuery, DeliverySummary, QueueStats, ReplayReport,
    ReplayRequest,
};

/// HTTP method of a callback (SPEC §2: POST by default, or PUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`, e.g. to a pre-signed storage URL.
    Put,
}

impl Method {
    /// The method as it goes on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    /// The method spelled `text` (as stored).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            _ => None,
        }
    }
}

crate::state::text_column!(Method);

/// What a callback carries (SPEC §2 "What a callback carries").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CallbackType {
    /// The VoiceBase-style JSON document with everything the job produced.
    #[default]
    Analytics,
    /// The transcript alone, in one `format`.
    Transcript,
    /// The bytes of one media stream.
    Media,
}

impl CallbackType {
    /// The lowercase wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        DeliveryKind::from(self).as_str()
    }
}

impl From<CallbackType> for DeliveryKind {
    fn from(kind: CallbackType) -> Self {
        match kind {
            CallbackType::Analytics => DeliveryKind::Analytics,
            CallbackType::Transcript => DeliveryKind::Transcript,
            CallbackType::Media => DeliveryKind::Media,
        }
    }
}

/// Transcript rendering of a `transcript` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TranscriptFormat {
    /// The transcript object as JSON.
    #[default]
    Json,
    /// The words with spaces between.
    Text,
    /// SubRip cues.
    Srt,
    /// WebVTT cues.
    Webvtt,
    /// TTML/DFXP document.
    Dfxp,
}

/// Sections an analytics callback may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Include {
    /// `transcript` (with its `alternateFormats`).
    Transcript,
    /// `knowledge`.
    Knowledge,
    /// `metadata` given at job creation.
    Metadata,
    /// `prediction`.
    Prediction,
    /// `streams` (name and public location only).
    Streams,
    /// `spotting`.
    Spotting,
}

/// Media stream a `media` callback sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum StreamName {
    /// The recording as received.
    #[default]
    Original,
    /// The recording with redacted parts silenced.
    RedactedAudio,
}

impl StreamName {
    /// The wire name (`original`, `redacted-audio`).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Original => "original",
            StreamName::RedactedAudio => "redacted-audio",
        }
    }
}

/// Per-callback authentication (SPEC §2 `auth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CallbackAuth {
    /// A fresh HS256 JWT on every attempt in `Authorization`.
    Jwt {
        /// HMAC secret the receiver shares.
        secret: String,
        /// Authorization scheme; `""` sends the bare token.
        #[serde(default = "default_scheme")]
        scheme: String,
    },
}

fn default_scheme() -> String {
    "Bearer".to_owned()
}

/// One entry of `publish.callbacks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallbackSpec {
    /// Destination; `http` or `https` with a host.
    pub url: String,
    /// POST (default) or PUT.
    #[serde(default)]
    pub method: Method,
    /// What the callback carries.
    #[serde(default, rename = "type")]
    pub kind: CallbackType,
    /// Transcript format (transcript callbacks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TranscriptFormat>,
    /// Sections of an analytics callback; omitted means everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Include>>,
    /// Stream of a media callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamName>,
    /// Extra headers sent as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Optional per-callback authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CallbackAuth>,
}

/// `publish` section of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Publish {
    /// Callbacks to make when the job's result arrives.
    #[serde(default)]
    pub callbacks: Vec<CallbackSpec>,
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "api", schema(example = json!({
    "jobId": "0190b6a2-7c1e-7d4a-9c55-1f2e3d4c5b6a",
    "metadata": {"customer": "acme"},
    "publish": {"callbacks": [
        {"url": "https://example.org/callback"},
        {"url": "https://example.org/cb/srt", "method": "PUT", "type": "transcript", "format": "srt"},
        {"url": "https://example.org/cb/media", "method": "PUT", "type": "media", "stream": "original",
         "headers": {"x-api-key": "abc"}}
    ]}
})))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJob {
    /// Caller's id; a UUIDv7 is made when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Any JSON, returned in analytics callbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The customer the job is for: its callbacks are signed with that
    /// customer's secret (SPEC §2 "Customers").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Callback configuration.
    #[serde(default)]
    pub publish: Publish,
}

/// One recognised word (SPEC §2; times in milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub struct Word {
    /// Position in the transcript.
    #[serde(default)]
    pub p: u64,
    /// Start, milliseconds from the beginning of the media.
    pub s: u64,
    /// End, milliseconds.
    pub e: u64,
    /// Confidence, 0..1.
    #[serde(default)]
    pub c: f64,
    /// The word (punctuation is attached to it or stands as its own word).
    pub w: String,
}

/// The transcript of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
pub struct Transcript {
    /// Overall confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Words in order.
    #[serde(default)]
    pub words: Vec<Word>,
    /// Anything else the ASR engine put in the transcript, passed through.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// `result` of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobOutput {
    /// The transcript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
    /// Knowledge extraction (topics, keywords), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<Value>,
    /// Classifier predictions, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Value>,
    /// Keyword spotting, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spotting: Option<Value>,
}

/// A media stream produced by the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaStream {
    /// `original` or `redacted-audio`.
    pub stream_name: String,
    /// File on the Postback host that media callbacks send; never shown to customers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Content type of the file (informational; media is sent as octet-stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Public URL listed in analytics callbacks as `streamLocation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Outcome of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// The job produced a result.
    Finished,
    /// The job failed; `error` says why.
    Failed,
}

/// Error of a failed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobError {
    /// Machine-readable code.
    pub code: String,
    /// Human sentence.
    pub message: String,
}

/// Body of `POST /v1/jobs/{jobId}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "api", schema(example = json!({
    "status": "finished",
    "result": {
        "transcript": {"confidence": 0.91, "words": [{"p": 0, "s": 1370, "e": 1609, "c": 0.263, "w": "Hi"}]},
        "knowledge": {}, "prediction": {}, "spotting": {}
    },
    "streams": [{"streamName": "original", "path": "/srv/media/a.mp3", "contentType": "audio/mpeg",
                 "location": "https://media.example.org/a.mp3"}]
})))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobResult {
    /// `finished` or `failed`.
    pub status: ResultStatus,
    /// The output of a finished job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobOutput>,
    /// Media streams of a finished job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<MediaStream>,
    /// Why a failed job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// State of one callback's delivery as a customer polls it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CallbackStatus {
    /// The delivery id (also the `webhook-id` header).
    pub delivery_id: uuid::Uuid,
    /// Destination.
    pub url: String,
    /// POST or PUT.
    pub method: Method,
    /// analytics, transcript or media.
    #[serde(rename = "type")]
    pub kind: DeliveryKind,
    /// pending, delivering, delivered or failed.
    pub status: DeliveryState,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the last attempt started.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub last_attempt_time: Option<time::OffsetDateTime>,
    /// HTTP status of the last attempt, when it got one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_status_code: Option<i32>,
    /// When the next attempt is due (pending deliveries only).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub next_attempt_time: Option<time::OffsetDateTime>,
}

/// A job as `GET /v1/jobs/{jobId}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job id.
    pub job_id: String,
    /// The customer it is for, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub customer_id: Option<String>,
    /// When the job was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub creation_time: time::OffsetDateTime,
    /// When the job and its deliveries are forgotten.
    #[serde(with = "time::serde::rfc3339")]
    pub expiration_time: time::OffsetDateTime,
    /// InProgress, Completed or Failed.
    pub status: JobStatus,
    /// Metadata given at creation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metadata: Option<Value>,
    /// The result, once Completed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<Value>,
    /// The error, once Failed: `{"code", "message"}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[cfg_attr(feature = "api", schema(value_type = Option<JobError>))]
    pub error: Option<Value>,
    /// Each callback and its delivery state.
    pub callbacks: Vec<CallbackStatus>,
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// 1-based attempt number over the delivery's whole life.
    pub attempt: i32,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    /// How long it took.
    pub duration_ms: i32,
    /// HTTP status, when a response arrived.
    pub status_code: Option<i32>,
    /// Outcome class when it failed (`http_error`, `timeout`, `connect_error`, `blocked_destination`, `other`).
    pub error: Option<String>,
    /// First 1 KiB of the response body.
    pub response_snippet: Option<String>,
}

/// A delivery with every attempt (`GET /v1/deliveries/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// The delivery id (`webhook-id`).
    pub delivery_id: uuid::Uuid,
    /// The customer it is for, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub customer_id: Option<String>,
    /// The job it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub job_id: Option<String>,
    /// analytics, transcript, media or generic.
    #[serde(rename = "type")]
    pub kind: DeliveryKind,
    /// Destination.
    pub url: String,
    /// POST or PUT.
    pub method: Method,
    /// Content-Type of the body.
    pub content_type: String,
    /// Caller headers, values masked as `***`.
    pub headers: BTreeMap<String, String>,
    /// pending, delivering, delivered or failed.
    pub status: DeliveryState,
    /// Attempts made so far.
    pub attempt_count: i32,
    /// When it was (last) queued.
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: time::OffsetDateTime,
    /// When the next attempt is due (pending only).
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub next_attempt_time: Option<time::OffsetDateTime>,
    /// When it was delivered or given up.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub completed_at: Option<time::OffsetDateTime>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// Body of `POST /v1/deliveries`: any callback outside the job flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "api", schema(example = json!({
    "url": "https://example.org/hook", "method": "POST",
    "headers": {"x-api-key": "abc"}, "json": {"event": "ping"}
})))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewDelivery {
    /// Destination.
    pub url: String,
    /// POST (default) or PUT.
    #[serde(default)]
    pub method: Method,
    /// Extra headers sent as given.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Content-Type of the body; defaults to `application/json` for `json`,
    /// `text/plain; charset=utf-8` for `body` and `application/octet-stream`
    /// for `bodyBase64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The customer it is for: signed with that customer's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Body as base64 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Body as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
}

/// Answer of `POST /v1/deliveries` and `POST /v1/deliveries/{id}/replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAccepted {
    /// The delivery id (`webhook-id`).
    pub delivery_id: uuid::Uuid,
}

/// `GET /v1/egress`: what customers allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EgressView {
    /// Local addresses every outbound connection binds to.
    #[cfg_attr(feature = "api", schema(value_type = Vec<String>, example = json!(["203.0.113.7"])))]
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Addresses callbacks arrive from, as the receiver sees them.
    #[cfg_attr(feature = "api", schema(value_type = Vec<String>, example = json!(["203.0.113.7"])))]
    pub public_addresses: Vec<std::net::IpAddr>,
}

/// Builders for the common shapes, so an embedder writes what it means
/// instead of struct literals with `..Default::default()`.
///
/// ```
/// use postback::{CallbackSpec, JobResult, NewJob, TranscriptFormat};
///
/// let job = NewJob::new()
///     .id("job-42")
///     .callback(CallbackSpec::analytics("https://example.org/cb"))
///     .callback(CallbackSpec::transcript("https://example.org/srt", TranscriptFormat::Srt).put())
///     .callback(CallbackSpec::analytics("https://example.org/auth").header("x-api-key", "k"));
/// assert_eq!(job.publish.callbacks.len(), 3);
///
/// let failed = JobResult::failed("media_unreadable", "the media could not be decoded");
/// assert!(failed.error.is_some());
/// ```
impl NewJob {
    /// A job with a generated id and no callbacks.
    pub fn new() -> Self {
        NewJob::default()
    }

    /// Uses the caller's job id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Metadata returned in analytics callbacks.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Adds a callback.
    pub fn callback(mut self, callback: CallbackSpec) -> Self {
        self.publish.callbacks.push(callback);
        self
    }
}

impl CallbackSpec {
    /// An analytics callback (POST, every section).
    pub fn analytics(url: impl Into<String>) -> Self {
        CallbackSpec {
            url: url.into(),
            ..CallbackSpec::default()
        }
    }

    /// A transcript callback in `format`.
    pub fn transcript(url: impl Into<String>, format: TranscriptFormat) -> Self {
        CallbackSpec {
            url: url.into(),
            kind: CallbackType::Transcript,
            format: Some(format),
            ..CallbackSpec::default()
        }
    }

    /// A media callback sending `stream`.
    pub fn media(url: impl Into<String>, stream: StreamName) -> Self {
        CallbackSpec {
            url: url.into(),
            kind: CallbackType::Media,
            stream: Some(stream),
            ..CallbackSpec::default()
        }
    }

    /// Sends with PUT (pre-signed storage URLs) instead of POST.
    pub fn put(mut self) -> Self {
        self.method = Method::Put;
        self
    }

    /// Limits an analytics callback to these sections.
    pub fn include(mut self, sections: impl IntoIterator<Item = Include>) -> Self {
        self.include = Some(sections.into_iter().collect());
        self
    }

    /// Adds a header sent as given.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Each attempt carries a fresh HS256 JWT signed with `secret`.
    pub fn jwt(mut self, secret: impl Into<String>, scheme: impl Into<String>) -> Self {
        self.auth = Some(CallbackAuth::Jwt {
            secret: secret.into(),
            scheme: scheme.into(),
        });
        self
    }
}

impl JobResult {
    /// A finished job with its output.
    pub fn finished(output: JobOutput) -> Self {
        JobResult {
            status: ResultStatus::Finished,
            result: Some(output),
            streams: Vec::new(),
            error: None,
        }
    }

    /// A failed job, with why.
    pub fn failed(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobResult {
            status: ResultStatus::Failed,
            result: None,
            streams: Vec::new(),
            error: Some(JobError {
                code: code.into(),
                message: message.into(),
            }),
        }
    }

    /// Adds a media stream (its `path` is sent by media callbacks).
    pub fn stream(mut self, stream: MediaStream) -> Self {
        self.streams.push(stream);
        self
    }
}

impl JobOutput {
    /// Output holding a transcript.
    pub fn transcript(transcript: Transcript) -> Self {
        JobOutput {
            transcript: Some(transcript),
            ..JobOutput::default()
        }
    }
}

impl Transcript {
    /// A transcript of these words.
    pub fn from_words(words: Vec<Word>) -> Self {
        Transcript {
            words,
            ..Transcript::default()
        }
    }
}

impl Word {
    /// Word `w` at position `p` from `s` to `e` milliseconds, confidence `c`.
    pub fn new(p: u64, s: u64, e: u64, c: f64, w: impl Into<String>) -> Self {
        Word {
            p,
            s,
            e,
            c,
            w: w.into(),
        }
    }
}

/// Body of `PUT /v1/customers/{customerId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerRequest {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any JSON the operator keeps with the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// `whsec_` + base64 of at least 24 bytes; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

/// One live signing secret of a customer, never with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// When it stops signing; null for the current secret.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// A customer as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CustomerView {
    /// The customer id.
    pub customer_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Operator's metadata.
    pub metadata: Option<Value>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// The signing secret, only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signing_secret: Option<String>,
    /// The live secrets, newest first (on `GET` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secrets: Option<Vec<SecretInfo>>,
}

/// Body of `POST /v1/customers/{customerId}/rotate-secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the replaced secret keeps signing (0 to 7 days; default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
    /// The new secret; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

/// Answer of a rotation: the new secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    /// The secret that signs from now on.
    pub signing_secret: String,
}

/// A destination's circuit breaker (`GET /v1/destinations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DestinationView {
    /// `scheme://host:port`.
    pub origin: String,
    /// `closed`, `open` or `half_open` (a probe is out).
    pub state: String,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// When it opened.
    #[serde(with = "time::serde::rfc3339::option")]
    pub opened_at: Option<time::OffsetDateTime>,
    /// When the next probe may go.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_probe_time: Option<time::OffsetDateTime>,
    /// The last failure's error.
    pub last_error: Option<String>,
}

/// Answer of `GET /v1/destinations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DestinationList {
    /// Open ones first.
    pub destinations: Vec<DestinationView>,
}

/// Body of `POST /v1/destinations/reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetDestination {
    /// The origin, e.g. `https://host:443` (the port may be left out).
    pub origin: String,
}
