//! One HTTP attempt of one delivery: build the request (signature, JWT,
//! caller headers, body or streamed file), send it through the egress
//! client, read at most 1 KiB of the answer, classify the outcome. It must
//! not touch the database or decide what happens next.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Outcome;
use crate::egress::{is_blocked, Egress, PreflightError};
use crate::media::{MediaFile, MediaRoots};
use crate::model::{CallbackAuth, Method};
use crate::queue::Claimed;
use crate::sealing::Keyring;
use crate::signing::{self, MultiSigner, SigningSecret};
use std::sync::Arc;

use super::secrets::Secrets;

/// How much of a response is kept.
pub const SNIPPET_BYTES: usize = 1024;
const FILE_CHUNK: usize = 64 * 1024;
/// How long the snippet of a response may take to read once its headers
/// arrived (SPEC §3: bounded on its own, never a failure).
pub const SNIPPET_READ: Duration = Duration::from_secs(2);

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// Wall-clock start.
    pub started_at: OffsetDateTime,
    /// How long it took.
    pub duration: Duration,
    /// Outcome class.
    pub outcome: Outcome,
    /// HTTP status, when a response arrived.
    pub status_code: Option<u16>,
    /// First 1 KiB of the response, or the error text.
    pub snippet: Option<String>,
    /// What a `429` or `503` asked for in `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl AttemptReport {
    /// The receiver answered `410 Gone`: the delivery ends now.
    pub fn is_gone(&self) -> bool {
        self.status_code == Some(410)
    }
}

/// Sends attempts; one per process, shared by every worker task.
#[derive(Debug)]
pub struct Sender {
    egress: Egress,
    secrets: Arc<Secrets>,
    keys: Arc<Keyring>,
    timeout: Duration,
    user_agent: HeaderValue,
    media: MediaRoots,
}

impl Sender {
    /// A sender signing with each delivery's customer's `secrets`, opening
    /// stored header values and auth secrets with `keys`, bounding every
    /// attempt by `timeout`.
    pub fn new(
        egress: Egress,
        secrets: Arc<Secrets>,
        keys: Arc<Keyring>,
        timeout: Duration,
    ) -> Self {
        Sender {
            egress,
            secrets,
            keys,
            timeout,
            user_agent: HeaderValue::from_static(concat!("postback/", env!("CARGO_PKG_VERSION"))),
            media: MediaRoots::default(),
        }
    }

    /// The fairness key of the address an attempt of `d` connects to, if
    /// it resolves (see [`crate::egress::ip_key`]).
    pub async fn address_key(&self, d: &Claimed) -> Option<String> {
        let url = reqwest::Url::parse(&d.url).ok()?;
        let ip = self.egress.address_of(&url).await?;
        Some(crate::egress::ip_key(ip))
    }

    /// The attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Media files are read only from under `roots` (checked again at
    /// every attempt: the file may have been swapped since intake).
    pub fn with_media_roots(mut self, roots: MediaRoots) -> Self {
        self.media = roots;
        self
    }

    /// Makes one attempt of `d`.
    ///
    /// The attempt timeout bounds everything up to the response's status and
    /// headers; the status decides the outcome there (SPEC §3). The snippet
    /// is read after that under its own bound (`SNIPPET_READ`, 2 s): a receiver
    /// that answers 200 and then stalls its body has still been delivered to,
    /// and resending would only duplicate the callback.
    pub async fn attempt(&self, d: &Claimed) -> AttemptReport {
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.send(d, started_at)).await;
        let duration = clock.elapsed();
        let (outcome, status_code, snippet, retry_after) = match result {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let retry_after = match status {
                    429 | 503 => response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now())),
                    _ => None,
                };
                let snippet = read_snippet(response, SNIPPET_READ).await;
                let outcome = if (200..300).contains(&status) {
                    Outcome::Success
                } else {
                    Outcome::HttpError
                };
                (outcome, Some(status), snippet, retry_after)
            }
            Ok(Err(failure)) => (
                failure.outcome,
                None,
                Some(snippet_text(failure.message.as_bytes())),
                None,
            ),
            Err(_) => (
                Outcome::Timeout,
                None,
                Some(format!("no complete answer within {:?}", self.timeout)),
                None,
            ),
        };
        AttemptReport {
            started_at,
            duration,
            outcome,
            status_code,
            snippet,
            retry_after,
        }
    }

    async fn send(
        &self,
        d: &Claimed,
        started_at: OffsetDateTime,
    ) -> Result<reqwest::Response, Failure> {
        let url =
            reqwest::Url::parse(&d.url).map_err(|e| Failure::other(format!("bad url: {e}")))?;
        // With a proxy, `target` may name the checked address instead of
        // the host (the proxy must not resolve it again), keeping the name
        // in `Host`.
        let target = self.egress.preflight(&url).await.map_err(|e| match e {
            PreflightError::Blocked(b) => Failure::new(Outcome::BlockedDestination, b.to_string()),
            unresolvable => Failure::new(Outcome::ConnectError, unresolvable.to_string()),
        })?;
        let timestamp = started_at.unix_timestamp();
        let msg_id = d.id.to_string();
        let secrets = self
            .secrets
            .for_customer(d.customer_id.as_deref())
            .await
            .map_err(|e| Failure::other(e.to_string()))?;
        let mut headers = self.headers(d, &msg_id, timestamp)?;
        if let Some(host) = &target.host {
            let host = HeaderValue::from_str(host)
                .map_err(|_| Failure::other("the host is not a header value".into()))?;
            headers.insert(reqwest::header::HOST, host);
        }
        let method = match d.method {
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
        };
        let request = self
            .egress
            .client()
            .request(method, target.url)
            .timeout(self.timeout);
        let request = match (&d.body, &d.file_path) {
            (Some(body), _) => {
                let signature = signing::sign_all(&secrets, &msg_id, timestamp, body);
                insert(&mut headers, "webhook-signature", &signature)?;
                request.headers(headers).body(body.0.clone())
            }
            (None, Some(path)) => {
                // One descriptor per attempt: opened (and checked against
                // the media roots) once, signed from, then sent from.
                let media = self
                    .media
                    .open(path)
                    .map_err(|e| Failure::other(format!("media file refused: {e}")))?;
                let (signature, file) = sign_file(&secrets, &msg_id, timestamp, media).await?;
                insert(&mut headers, "webhook-signature", &signature)?;
                headers.insert(CONTENT_LENGTH, HeaderValue::from(file.len));
                request
                    .headers(headers)
                    .body(reqwest::Body::wrap_stream(upload(file)))
            }
            (None, None) => {
                let signature = signing::sign_all(&secrets, &msg_id, timestamp, b"");
                insert(&mut headers, "webhook-signature", &signature)?;
                request.headers(headers)
            }
        };
        let sent = Instant::now();
        request.send().await.map_err(|e| {
            // Through a proxy, a tunnel the shim refused by the policy
            // reaches us only as an unsuccessful tunnel.
            match self.egress.refused_tunnel(&url, sent) {
                Some(blocked) => Failure::new(Outcome::BlockedDestination, blocked.to_string()),
                None => classify(e),
            }
        })
    }

    fn headers(&self, d: &Claimed, msg_id: &str, timestamp: i64) -> Result<HeaderMap, Failure> {
        let mut headers = HeaderMap::new();
        if let Some(map) = d.headers.as_object() {
            for (name, value) in map {
                let Some(stored) = value.as_str() else {
                    continue; // validated at intake; never reached
                };
                let value = self
                    .keys
                    .open(stored)
                    .map_err(|e| Failure::other(format!("stored header {name}: {e}")))?;
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) else {
                    continue; // validated at intake; never reached
                };
                headers.append(name, value);
            }
        }
        insert(&mut headers, "webhook-id", msg_id)?;
        insert(&mut headers, "webhook-timestamp", &timestamp.to_string())?;
        headers.insert(USER_AGENT, self.user_agent.clone());
        let content_type = HeaderValue::from_str(&d.content_type)
            .map_err(|_| Failure::other("stored content type is not a header value".into()))?;
        headers.insert(CONTENT_TYPE, content_type);
        if let Some(auth) = &d.auth {
            let auth: CallbackAuth = serde_json::from_value(auth.clone())
                .map_err(|e| Failure::other(format!("stored auth unreadable: {e}")))?;
            match auth {
                CallbackAuth::Jwt { secret, scheme } => {
                    let secret = self
                        .keys
                        .open(&secret)
                        .map_err(|e| Failure::other(format!("stored auth secret: {e}")))?;
                    let job = d.job_id.as_deref().unwrap_or_default();
                    let token =
                        signing::callback_jwt(&secret, job, msg_id, timestamp).map_err(|e| {
                            Failure::other(format!("cannot make the callback JWT: {e}"))
                        })?;
                    let value = signing::authorization_value(&scheme, &token);
                    insert(&mut headers, "authorization", &value)?;
                }
            }
        }
        Ok(headers)
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay seconds, or an HTTP
/// date (a date in the past is no wait). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A failed attempt before any response.
#[derive(Debug)]
struct Failure {
    outcome: Outcome,
    message: String,
}

impl Failure {
    fn new(outcome: Outcome, message: String) -> Self {
        Failure { outcome, message }
    }
    fn other(message: String) -> Self {
        Failure::new(Outcome::Other, message)
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) -> Result<(), Failure> {
    let value = HeaderValue::from_str(value)
        .map_err(|_| Failure::other(format!("{name} is not a header value")))?;
    headers.insert(HeaderName::from_static(name), value);
    Ok(())
}

fn classify(err: reqwest::Error) -> Failure {
    let outcome = if is_blocked(&err) {
        Outcome::BlockedDestination
    } else if err.is_timeout() {
        Outcome::Timeout
    } else if err.is_connect() {
        Outcome::ConnectError
    } else {
        Outcome::Other
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Failure::new(outcome, message)
}

/// Reads up to [`SNIPPET_BYTES`] of the body, for at most `limit`; what
/// arrived by then is kept. A body that fits is read to its end so the
/// connection goes back to the keep-alive pool.
async fn read_snippet(response: reqwest::Response, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let Ok(chunk) = chunk else { break };
        let room = SNIPPET_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= SNIPPET_BYTES {
            break;
        }
    }
    if buf.is_empty() {
        return None;
    }
    Some(snippet_text(&buf))
}

/// The text kept of a response (or an error): at most [`SNIPPET_BYTES`]
/// bytes of UTF-8 that PostgreSQL's `text` accepts. A character cut in half
/// by the 1 KiB limit is dropped, invalid bytes and NULs (which `text`
/// refuses, failing the whole batch of outcomes) become U+FFFD.
pub fn snippet_text(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(SNIPPET_BYTES)];
    let bytes = match std::str::from_utf8(bytes) {
        // Only an incomplete character at the end: cut before it.
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    let mut text = String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}");
    if text.len() > SNIPPET_BYTES {
        let mut cut = SNIPPET_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Signs an opened media file's bytes without holding them: one streaming
/// pass from its start, then the same descriptor is handed back rewound.
/// A file whose size is no longer what `fstat` saw is a failed attempt.
async fn sign_file(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    media: MediaFile,
) -> Result<(String, OpenMedia), Failure> {
    let unreadable = |e: std::io::Error| Failure::other(format!("media file unreadable: {e}"));
    let len = media.len;
    let mut file = tokio::fs::File::from_std(media.file);
    let mut signer = MultiSigner::new(secrets, msg_id, timestamp);
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(unreadable)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > len {
            return Err(changed());
        }
        signer.update(&buf[..n]);
    }
    if read != len {
        return Err(changed());
    }
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(unreadable)?;
    Ok((signer.finish(), OpenMedia { file, len }))
}

fn changed() -> Failure {
    Failure::other("the media file changed size while it was signed; not sent".to_owned())
}

/// The signed media file, rewound, with the length that was signed.
struct OpenMedia {
    file: tokio::fs::File,
    len: u64,
}

/// The body of a media attempt: exactly `len` bytes from the descriptor
/// that was signed. The file ending early, or having grown by the end, is
/// an error of the body (so the attempt fails) rather than a body that
/// does not match its signature or Content-Length.
fn upload(
    media: OpenMedia,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let changed = || std::io::Error::other("the media file changed size while it was sent");
    futures_util::stream::try_unfold((media, 0u64), move |(mut media, sent)| async move {
        if sent == media.len {
            let now = media.file.metadata().await?.len();
            return if now == media.len {
                Ok(None)
            } else {
                Err(changed())
            };
        }
        let want = usize::try_from(media.len - sent)
            .unwrap_or(FILE_CHUNK)
            .min(FILE_CHUNK);
        let mut buf = vec![0u8; want];
        let n = media.file.read(&mut buf).await?;
        if n == 0 {
            return Err(changed());
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), (media, sent + n as u64))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(
        stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>>,
    ) -> std::io::Result<Vec<u8>> {
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// SPEC §3: one descriptor per attempt, signed and sent from it; a file
    /// that changes size between the two is a failed attempt, never a body
    /// that does not match its signature.
    #[tokio::test]
    async fn a_media_file_is_signed_and_sent_from_one_descriptor() {
        let dir = std::env::temp_dir().join(format!("postback-upload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.bin");
        let body = vec![7u8; 3 * FILE_CHUNK + 5];
        std::fs::write(&path, &body).expect("write");
        let roots = MediaRoots::new([dir.clone()]);
        let secret = SigningSecret::generate();
        let open = || roots.open(&path.to_string_lossy()).expect("opens");

        // Unchanged: the bytes sent are the bytes signed.
        let (signature, file) = sign_file(std::slice::from_ref(&secret), "msg", 1, open())
            .await
            .expect("signs");
        assert_eq!(signature, signing::sign(&secret, "msg", 1, &body));
        assert_eq!(file.len, body.len() as u64);
        assert_eq!(drain(upload(file)).await.expect("sent"), body);

        // Replaced by another file after the open: the open descriptor still
        // reads the file that was signed.
        let (signature, file) = sign_file(std::slice::from_ref(&secret), "msg", 1, open())
            .await
            .expect("signs");
        std::fs::remove_file(&path).expect("unlink");
        std::fs::write(&path, b"other").expect("replace");
        assert_eq!(signature, signing::sign(&secret, "msg", 1, &body));
        assert_eq!(drain(upload(file)).await.expect("sent"), body);

        // Grows after signing: the body errors instead of completing.
        std::fs::write(&path, &body).expect("write");
        let (_, file) = sign_file(std::slice::from_ref(&secret), "msg", 1, open())
            .await
            .expect("signs");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        std::io::Write::write_all(&mut f, b"more").expect("append");
        assert!(
            drain(upload(file)).await.is_err(),
            "a grown file is not sent as signed"
        );

        // Shrinks after signing: the body errors too.
        std::fs::write(&path, &body).expect("write");
        let (_, file) = sign_file(std::slice::from_ref(&secret), "msg", 1, open())
            .await
            .expect("signs");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(10))
            .expect("truncate");
        assert!(
            drain(upload(file)).await.is_err(),
            "a shrunk file is not sent"
        );

        // Changed between fstat and the signing pass: refused before sending.
        std::fs::write(&path, &body).expect("write");
        let media = open();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(10))
            .expect("truncate");
        assert!(sign_file(std::slice::from_ref(&secret), "msg", 1, media)
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Through a proxy, an https destination whose name re-resolves to an
    /// internal address between the preflight and the tunnel is refused by
    /// the CONNECT shim; the attempt records `blocked_destination`, not a
    /// connect error. (The shim refuses before it contacts the proxy, so
    /// the proxy address here is never used.)
    #[tokio::test]
    async fn a_tunnel_refused_by_the_shim_is_a_blocked_destination() {
        let policy =
            crate::egress::EgressPolicy::new(vec!["127.0.0.2/32".parse().expect("net")], vec![]);
        let resolver = crate::egress::resolver::tests::offline(policy, None).with_answers(
            "localhost",
            vec![vec![[127, 0, 0, 2].into()], vec![[127, 0, 0, 3].into()]],
        );
        let egress = Egress::with_resolver(
            crate::egress::EgressSettings {
                proxy: Some("http://127.0.0.1:9".parse().expect("url")),
                policy: resolver.policy().clone(),
                ..Default::default()
            },
            Duration::from_secs(2),
            resolver,
        )
        .expect("egress");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://unused@127.0.0.1:9/unused")
            .expect("lazy pool, never connected: no customer");
        let keys = Arc::new(Keyring::clear());
        let secrets = Arc::new(Secrets::new(
            pool,
            crate::store::Schema::default(),
            keys.clone(),
            SigningSecret::generate(),
        ));
        let sender = Sender::new(egress, secrets, keys, Duration::from_secs(5));
        let now = OffsetDateTime::now_utc();
        let claimed = Claimed {
            id: uuid::Uuid::new_v4(),
            job_id: None,
            customer_id: None,
            kind: crate::state::DeliveryKind::Generic,
            method: Method::Post,
            url: "https://localhost:8443/cb".into(),
            host: "localhost".into(),
            origin: None,
            lease: uuid::Uuid::new_v4(),
            cycle_attempts: 0,
            cycle_started_at: None,
            queued_at: now,
            claimed_at: now,
            content_type: "application/json".into(),
            headers: serde_json::json!({}),
            auth: None,
            body: None,
            body_len: 0,
            file_path: None,
        };
        let report = sender.attempt(&claimed).await;
        assert_eq!(report.outcome, Outcome::BlockedDestination, "{report:?}");
        let snippet = report.snippet.unwrap_or_default();
        assert!(
            snippet.starts_with("blocked destination: localhost"),
            "{snippet}"
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn snippets_are_at_most_1_kib_of_text_postgres_accepts() {
        assert_eq!(snippet_text(b"ok"), "ok");
        // A two-byte character cut by the limit is dropped, not replaced.
        let long = format!("a{}", "é".repeat(3000));
        let s = snippet_text(long.as_bytes());
        assert_eq!(s.len(), 1023);
        assert!(long.starts_with(&s));
        // NULs and invalid bytes become U+FFFD; the result still fits.
        let s = snippet_text(b"ok\0\xffbin");
        assert_eq!(s, "ok\u{FFFD}\u{FFFD}bin");
        let s = snippet_text(&[0u8; 4096]);
        assert!(s.len() <= SNIPPET_BYTES && !s.contains('\0'));
        let s = snippet_text(&[0xffu8; 4096]);
        assert!(s.len() <= SNIPPET_BYTES);
        assert_eq!(snippet_text(b""), "");
    }
}
