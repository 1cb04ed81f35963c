//! Issue 5: the delivery engine, end to end over real HTTP on loopback and a
//! real PostgreSQL: bodies and Content-Types of every callback type, Standard
//! Webhooks signatures and callback JWTs, the retry schedule (compressed, and
//! the default one as polling shows it), outcome classes, per-host fairness,
//! and at-least-once delivery across `postback worker` processes (two
//! draining one queue; one killed with SIGKILL and restarted).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use postback::model::{Transcript, TranscriptFormat};
use postback::schedule::{next_attempt, Next, RetryPolicy};
use postback::signing::{self, SigningSecret};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use crate::helpers::{Answer, Received, Receiver, TestApp};

/// The Standard Webhooks reference secret, given to the server explicitly.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BIN: &str = env!("CARGO_BIN_EXE_postback");

// ---------------------------------------------------------------- helpers

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("{} {} has no {name} header", r.method, r.path))
        .to_str()
        .expect("ASCII header")
}

fn json_body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{}: not JSON: {e}", r.path))
}

fn utf8(r: &Received) -> &str {
    std::str::from_utf8(&r.body).unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", r.path))
}

fn by_path(got: &[Received]) -> HashMap<String, Received> {
    let mut map = HashMap::new();
    for r in got {
        assert!(
            map.insert(r.path.clone(), r.clone()).is_none(),
            "{} arrived twice",
            r.path
        );
    }
    map
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Checks the Standard Webhooks headers of one attempt against the server's
/// secret: id, a current timestamp, and a signature over the exact bytes.
fn assert_signed(r: &Received, expected_id: &str) {
    let secret = SigningSecret::parse(SECRET).expect("secret");
    let id = header(r, "webhook-id");
    assert_eq!(id, expected_id, "{}: webhook-id", r.path);
    let ts: i64 = header(r, "webhook-timestamp")
        .parse()
        .expect("webhook-timestamp is Unix seconds");
    assert!(
        (ts - unix_now()).abs() <= 10,
        "{}: webhook-timestamp {ts} is not current",
        r.path
    );
    let signature = header(r, "webhook-signature");
    assert!(signature.starts_with("v1,"), "{signature}");
    signing::verify(&secret, id, ts, &r.body, signature, unix_now(), 10)
        .unwrap_or_else(|e| panic!("{}: signature does not verify: {e}", r.path));
    assert_eq!(
        header(r, "user-agent"),
        concat!("postback/", env!("CARGO_PKG_VERSION"))
    );
}

/// Queues a generic delivery through the API; returns its id.
async fn enqueue(app: &TestApp, body: Value) -> String {
    let response = app.post("/v1/deliveries", body).await;
    assert_eq!(response.status(), 202);
    let v: Value = response.json().await.expect("json");
    v["deliveryId"].as_str().expect("deliveryId").to_owned()
}

async fn create_job(app: &TestApp, body: Value) -> Value {
    let response = app.post("/v1/jobs", body).await;
    assert_eq!(response.status(), 201);
    response.json().await.expect("json")
}

async fn post_result(app: &TestApp, job_id: &str, body: Value) -> Value {
    let response = app.post(&format!("/v1/jobs/{job_id}/result"), body).await;
    let status = response.status();
    let v: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{v:#}");
    v
}

/// The delivery ids of a job's callbacks, by URL.
async fn delivery_ids(app: &TestApp, job_id: &str) -> HashMap<String, String> {
    let job = app.get_json(&format!("/v1/jobs/{job_id}")).await;
    job["callbacks"]
        .as_array()
        .expect("callbacks")
        .iter()
        .map(|c| {
            (
                c["url"].as_str().unwrap().to_owned(),
                c["deliveryId"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A file that is removed when the test ends, however it ends.
struct TempFile(PathBuf);

impl TempFile {
    fn with(bytes: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("postback-media-{}.bin", uuid::Uuid::new_v4()));
        std::fs::write(&path, bytes).expect("write media file");
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deterministic bytes of every value, NULs and invalid UTF-8 included.
fn media_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 7) as u8
        })
        .collect()
}

// ------------------------------------------------- bodies and content types

fn words() -> Value {
    json!([
        {"p": 0, "s": 1370, "e": 1609, "c": 0.263, "w": "Hi"},
        {"p": 1, "s": 1700, "e": 2000, "c": 0.9, "w": "there."},
        {"p": 2, "s": 2100, "e": 2300, "c": 0.8, "w": "How"},
        {"p": 3, "s": 2300, "e": 2500, "c": 0.8, "w": "are"},
        {"p": 4, "s": 2500, "e": 2900, "c": 0.7, "w": "you?"}
    ])
}

/// The two cues the words above make (break after `.`, `?`), as
/// (start ms, end ms, text).
const CUES: [(u64, u64, &str); 2] = [(1370, 2000, "Hi there."), (2100, 2900, "How are you?")];

fn check_srt(doc: &str) {
    let subs = srtlib::Subtitles::parse_from_str(doc.to_owned())
        .unwrap_or_else(|e| panic!("srtlib: {e:?}\n{doc}"));
    let ms = |t: &srtlib::Timestamp| {
        let (h, m, s, ms) = t.get();
        ((u64::from(h) * 60 + u64::from(m)) * 60 + u64::from(s)) * 1000 + u64::from(ms)
    };
    let read: Vec<(u64, u64, String)> = subs
        .to_vec()
        .into_iter()
        .map(|s| {
            (
                ms(&s.start_time),
                ms(&s.end_time),
                s.text.trim_end().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, String)> = CUES
        .iter()
        .map(|(a, b, t)| (*a, *b, (*t).to_owned()))
        .collect();
    assert_eq!(read, want, "{doc}");
}

fn check_webvtt(doc: &str) {
    let vtt =
        webvtt_parser::Vtt::parse(doc).unwrap_or_else(|e| panic!("webvtt-parser: {e:?}\n{doc}"));
    let read: Vec<(u64, u64, String)> = vtt
        .cues
        .iter()
        .map(|c| {
            (
                c.start.as_milliseconds(),
                c.end.as_milliseconds(),
                c.text.to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, String)> = CUES
        .iter()
        .map(|(a, b, t)| (*a, *b, (*t).to_owned()))
        .collect();
    assert_eq!(read, want, "{doc}");
}

fn check_dfxp(doc: &str) {
    let xml = roxmltree::Document::parse(doc).unwrap_or_else(|e| panic!("roxmltree: {e}\n{doc}"));
    assert_eq!(
        xml.root_element().tag_name().namespace(),
        Some("http://www.w3.org/ns/ttml")
    );
    let texts: Vec<&str> = xml
        .descendants()
        .filter(|n| n.has_tag_name(("http://www.w3.org/ns/ttml", "p")))
        .filter_map(|p| p.text())
        .collect();
    assert_eq!(texts, ["Hi there.", "How are you?"], "{doc}");
    let parsed = ttml_subtitle::Document::parse_str(doc)
        .unwrap_or_else(|e| panic!("ttml-subtitle: {e:?}\n{doc}"));
    let body = parsed.tt.body.as_ref().expect("body");
    let n: usize = body.divs.iter().map(|d| d.paragraphs.len()).sum();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn every_callback_type_and_format_arrives_with_its_content_type_and_body() {
    let app = TestApp::spawn_with(|c| {
        c.signing_secret = Some(SECRET.to_owned());
        c.media_root = vec![std::env::temp_dir()];
    })
    .await;
    let rx = Receiver::start().await;
    let original = media_bytes(300_000, 1);
    let redacted = media_bytes(4_321, 2);
    let original_file = TempFile::with(&original);
    let redacted_file = TempFile::with(&redacted);
    let location = "https://media.example.org/a.mp3?signature=abc";

    let callbacks = json!([
        {"url": rx.url("/analytics/all")},
        {"url": rx.url("/analytics/some"), "method": "PUT", "include": ["transcript", "streams"]},
        {"url": rx.url("/analytics/meta"), "include": ["metadata", "knowledge"]},
        {"url": rx.url("/transcript/json"), "type": "transcript", "format": "json"},
        {"url": rx.url("/transcript/text"), "type": "transcript", "format": "text", "method": "PUT"},
        {"url": rx.url("/transcript/srt"), "type": "transcript", "format": "srt"},
        {"url": rx.url("/transcript/webvtt"), "type": "transcript", "format": "webvtt"},
        {"url": rx.url("/transcript/dfxp"), "type": "transcript", "format": "dfxp"},
        {"url": rx.url("/media/original"), "method": "PUT", "type": "media", "stream": "original",
         "headers": {"x-api-key": "abc"}},
        {"url": rx.url("/media/redacted"), "type": "media", "stream": "redacted-audio"}
    ]);
    let n = callbacks.as_array().unwrap().len();
    create_job(&app, json!({"jobId": "job-formats", "metadata": {"customer": 7}, "publish": {"callbacks": callbacks}}))
        .await;
    let transcript = json!({"confidence": 0.91, "engine": "x", "words": words()});
    post_result(
        &app,
        "job-formats",
        json!({
            "status": "finished",
            "result": {"transcript": transcript, "knowledge": {"topics": ["greeting"]},
                       "prediction": {"churn": 0.1}, "spotting": {"groups": []}},
            "streams": [
                {"streamName": "original", "path": original_file.path(), "contentType": "audio/mpeg", "location": location},
                {"streamName": "redacted-audio", "path": redacted_file.path()}
            ]
        }),
    )
    .await;
    let got = by_path(&rx.wait_for(n, Duration::from_secs(20)).await);
    let ids = delivery_ids(&app, "job-formats").await;
    for r in got.values() {
        assert_signed(r, &ids[&rx.url(&r.path)]);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("postback-media-"),
            "{}: a local path leaked",
            r.path
        );
    }

    // Methods as configured.
    for (path, method) in [
        ("/analytics/all", "POST"),
        ("/analytics/some", "PUT"),
        ("/transcript/text", "PUT"),
        ("/transcript/srt", "POST"),
        ("/media/original", "PUT"),
        ("/media/redacted", "POST"),
    ] {
        assert_eq!(got[path].method.as_str(), method, "{path}");
    }

    // Exact Content-Types of the SPEC table.
    for (path, ct) in [
        ("/analytics/all", "application/json"),
        ("/analytics/some", "application/json"),
        ("/analytics/meta", "application/json"),
        ("/transcript/json", "application/json"),
        ("/transcript/text", "text/plain"),
        ("/transcript/srt", "text/srt"),
        ("/transcript/webvtt", "text/vtt"),
        ("/transcript/dfxp", "application/ttaf+xml"),
        ("/media/original", "application/octet-stream"),
        ("/media/redacted", "application/octet-stream"),
    ] {
        assert_eq!(header(&got[path], "content-type"), ct, "{path}");
    }

    // Analytics: everything, in VoiceBase's shape.
    let all = json_body(&got["/analytics/all"]);
    let mut keys: Vec<&str> = all
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "jobId",
            "knowledge",
            "metadata",
            "prediction",
            "spotting",
            "status",
            "streams",
            "transcript"
        ]
    );
    assert_eq!(all["jobId"], "job-formats");
    assert_eq!(all["status"], "finished");
    assert_eq!(all["metadata"], json!({"customer": 7}));
    assert_eq!(all["knowledge"], json!({"topics": ["greeting"]}));
    assert_eq!(all["prediction"], json!({"churn": 0.1}));
    assert_eq!(all["spotting"], json!({"groups": []}));
    assert_eq!(
        all["streams"],
        json!([{"streamName": "original", "streamLocation": location}])
    );
    assert_eq!(all["transcript"]["confidence"], 0.91);
    assert_eq!(all["transcript"]["engine"], "x");
    assert_eq!(all["transcript"]["words"], words());
    let formats = all["transcript"]["alternateFormats"]
        .as_array()
        .expect("alternateFormats");
    let names: Vec<&str> = formats
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dfxp", "webvtt", "srt", "text"]);
    for f in formats {
        let name = f["format"].as_str().unwrap();
        assert_eq!(f["contentEncoding"], "Base64");
        assert_eq!(f["charset"], "utf-8");
        let data = STANDARD
            .decode(f["data"].as_str().expect("data"))
            .expect("base64");
        // The same document the matching transcript callback carried.
        let sent = &got[&format!("/transcript/{name}")];
        assert_eq!(f["contentType"], header(sent, "content-type"), "{name}");
        assert_eq!(data, sent.body.as_ref(), "{name}");
    }

    // Analytics limited by include.
    let some = json_body(&got["/analytics/some"]);
    let mut keys: Vec<&str> = some
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["jobId", "status", "streams", "transcript"]);
    assert_eq!(some["streams"], all["streams"]);
    assert_eq!(some["transcript"], all["transcript"]);
    let meta = json_body(&got["/analytics/meta"]);
    assert_eq!(
        meta,
        json!({"jobId": "job-formats", "status": "finished", "metadata": {"customer": 7},
               "knowledge": {"topics": ["greeting"]}})
    );

    // Transcript formats, read back by independent readers.
    assert_eq!(json_body(&got["/transcript/json"]), transcript);
    assert_eq!(utf8(&got["/transcript/text"]), "Hi there. How are you?");
    check_srt(utf8(&got["/transcript/srt"]));
    check_webvtt(utf8(&got["/transcript/webvtt"]));
    check_dfxp(utf8(&got["/transcript/dfxp"]));
    let parsed: Transcript = serde_json::from_value(transcript.clone()).unwrap();
    for (name, format) in [
        ("srt", TranscriptFormat::Srt),
        ("webvtt", TranscriptFormat::Webvtt),
        ("dfxp", TranscriptFormat::Dfxp),
        ("text", TranscriptFormat::Text),
    ] {
        let rendered = postback::render::render_transcript(&parsed, format);
        assert_eq!(
            got[&format!("/transcript/{name}")].body.as_ref(),
            rendered.body,
            "{name}"
        );
    }

    // Media: the file's exact bytes, with Content-Length, signed over them.
    let media = &got["/media/original"];
    assert_eq!(media.body.as_ref(), original.as_slice());
    assert_eq!(header(media, "content-length"), original.len().to_string());
    assert!(
        media.headers.get("transfer-encoding").is_none(),
        "media must not be chunked"
    );
    assert_eq!(header(media, "x-api-key"), "abc");
    let media = &got["/media/redacted"];
    assert_eq!(media.body.as_ref(), redacted.as_slice());
    assert_eq!(header(media, "content-length"), redacted.len().to_string());

    // Polling agrees: every callback delivered on its first attempt.
    for id in ids.values() {
        app.wait_delivery(id, Duration::from_secs(5), |v| v["status"] == "delivered")
            .await;
    }
    let job = app.get_json("/v1/jobs/job-formats").await;
    assert_eq!(job["callbacks"].as_array().unwrap().len(), n);
    for c in job["callbacks"].as_array().unwrap() {
        assert_eq!(c["status"], "delivered", "{c:#}");
        assert_eq!(c["attempts"], 1, "{c:#}");
        assert_eq!(c["lastStatusCode"], 200, "{c:#}");
    }
    assert_eq!(rx.received().len(), n, "nothing sent twice");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_job_sends_only_its_analytics_callbacks() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let media = TempFile::with(b"audio");
    create_job(
        &app,
        json!({"jobId": "job-failed", "metadata": {"m": 1}, "publish": {"callbacks": [
            {"url": rx.url("/analytics")},
            {"url": rx.url("/analytics/limited"), "method": "PUT", "include": ["transcript"]},
            {"url": rx.url("/transcript"), "type": "transcript", "format": "srt"},
            {"url": rx.url("/media"), "method": "PUT", "type": "media"}
        ]}}),
    )
    .await;
    let error = json!({"code": "media_unreadable", "message": "The media could not be decoded."});
    let _ = &media;
    post_result(
        &app,
        "job-failed",
        json!({"status": "failed", "error": error}),
    )
    .await;
    let got = by_path(&rx.wait_for(2, Duration::from_secs(10)).await);
    let expected = json!({"jobId": "job-failed", "status": "failed", "error": error});
    for (path, method) in [("/analytics", "POST"), ("/analytics/limited", "PUT")] {
        let r = &got[path];
        assert_eq!(r.method.as_str(), method);
        assert_eq!(header(r, "content-type"), "application/json");
        assert_eq!(json_body(r), expected, "{path}");
    }
    // Nothing else comes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        rx.received().len(),
        2,
        "transcript and media callbacks of a failed job are skipped"
    );
    let job = app.get_json("/v1/jobs/job-failed").await;
    assert_eq!(job["status"], "Failed");
    for c in job["callbacks"].as_array().unwrap() {
        assert_eq!(c["type"], "analytics", "{c:#}");
        assert_eq!(c["status"], "delivered", "{c:#}");
    }
    app.stop().await;
}

// ---------------------------------------------------- signatures and auth

#[tokio::test]
async fn every_attempt_is_signed_with_a_stable_id_and_caller_headers_pass_through() {
    let app = TestApp::spawn_with(|c| c.signing_secret = Some(SECRET.to_owned())).await;
    let rx = Receiver::start().await;
    rx.script([Answer::status(500), Answer::status(503)]);
    let id = enqueue(
        &app,
        json!({"url": rx.url("/hook"), "method": "PUT", "headers": {"x-api-key": "k1", "X-Trace": "t-9"},
               "json": {"hello": "world"}}),
    )
    .await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let got = rx.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.method.as_str(), "PUT");
        assert_signed(r, &id);
        assert_eq!(header(r, "x-api-key"), "k1");
        assert_eq!(header(r, "x-trace"), "t-9");
        assert_eq!(header(r, "content-type"), "application/json");
        assert_eq!(json_body(r), json!({"hello": "world"}));
    }
    let codes: Vec<&Value> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["statusCode"])
        .collect();
    assert_eq!(codes, [&json!(500), &json!(503), &json!(200)]);
    // The stored headers are masked.
    assert_eq!(view["headers"]["x-api-key"], "***");
    app.stop().await;
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    jti: String,
    iat: i64,
    exp: i64,
}

fn check_jwt(token: &str, secret: &str, job_id: &str, delivery_id: &str) {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["postback"]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "iat"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("callback JWT does not verify: {e}"));
    let c = data.claims;
    assert_eq!(data.header.alg, jsonwebtoken::Algorithm::HS256);
    assert_eq!(c.iss, "postback");
    assert_eq!(c.sub, job_id);
    assert_eq!(c.jti, delivery_id);
    assert_eq!(c.exp, c.iat + 300);
    assert!((c.iat - unix_now()).abs() <= 10, "iat {} is not now", c.iat);
    // Signed with another secret, the token is refused.
    assert!(jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b"other"),
        &validation
    )
    .is_err());
}

#[tokio::test]
async fn jwt_auth_carries_a_fresh_token_with_the_scheme_or_bare() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    // The bearer callback fails once, so its retry carries a token too.
    rx.script([Answer::status(401)]);
    create_job(
        &app,
        json!({"jobId": "job-jwt", "publish": {"callbacks": [
            {"url": rx.url("/bearer"), "auth": {"type": "jwt", "secret": "s3cret"}},
            {"url": rx.url("/custom"), "auth": {"type": "jwt", "secret": "other-secret", "scheme": "JWT"}},
            {"url": rx.url("/bare"), "type": "transcript", "format": "text",
             "auth": {"type": "jwt", "secret": "bare-secret", "scheme": ""}}
        ]}}),
    )
    .await;
    post_result(
        &app,
        "job-jwt",
        json!({"status": "finished", "result": {"transcript": {"words": words()}}}),
    )
    .await;
    let got = rx.wait_for(4, Duration::from_secs(10)).await;
    let ids = delivery_ids(&app, "job-jwt").await;
    let mut seen = HashMap::<String, usize>::new();
    for r in &got {
        *seen.entry(r.path.clone()).or_default() += 1;
        let id = &ids[&rx.url(&r.path)];
        let auth = header(r, "authorization");
        match r.path.as_str() {
            "/bearer" => check_jwt(
                auth.strip_prefix("Bearer ").expect("Bearer scheme"),
                "s3cret",
                "job-jwt",
                id,
            ),
            "/custom" => check_jwt(
                auth.strip_prefix("JWT ").expect("JWT scheme"),
                "other-secret",
                "job-jwt",
                id,
            ),
            "/bare" => {
                assert_eq!(auth.split('.').count(), 3, "a bare JWT: {auth}");
                check_jwt(auth, "bare-secret", "job-jwt", id);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(seen.values().sum::<usize>(), 4, "{seen:?}");
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The secrets never come back.
    let job = app.get("/v1/jobs/job-jwt").await.text().await.unwrap();
    for secret in ["s3cret", "other-secret", "bare-secret"] {
        assert!(!job.contains(secret), "{job}");
    }
    app.stop().await;
}

// ------------------------------------------------------------- the schedule

/// Attempt start times (ms after the first) the compressed schedule makes
/// when every attempt fails at once: 0, 0, 0, +1s, +2s, +4s, then the
/// horizon (first + 10s).
fn compressed_offsets(policy: &RetryPolicy) -> Vec<Duration> {
    let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let mut starts = vec![t0];
    loop {
        assert!(starts.len() < 50, "schedule does not end");
        match next_attempt(policy, starts.len() as u32, t0, *starts.last().unwrap()) {
            Next::At(at) => starts.push(at),
            Next::GiveUp => break,
        }
    }
    starts
        .iter()
        .map(|s| Duration::try_from(*s - t0).unwrap())
        .collect()
}

#[tokio::test]
async fn the_compressed_schedule_runs_end_to_end_then_fails() {
    let app = TestApp::spawn().await;
    let policy = app.config.retry_policy();
    let expected = compressed_offsets(&policy);
    let secs = |s: u64| Duration::from_secs(s);
    assert_eq!(
        expected,
        [
            secs(0),
            secs(0),
            secs(0),
            secs(1),
            secs(3),
            secs(7),
            secs(10)
        ],
        "the test configuration's schedule"
    );
    let rx = Receiver::start().await;
    rx.always(Answer::status(500).body("nope"));
    let id = enqueue(&app, json!({"url": rx.url("/down"), "json": {"n": 1}})).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(25), |v| v["status"] == "failed")
        .await;
    let got = rx.received();
    assert_eq!(got.len(), expected.len(), "attempts made");

    // Arrival times at the receiver against the ideal schedule.
    let first = got[0].at;
    for (i, (r, want)) in got.iter().zip(&expected).enumerate() {
        let at = r.at - first;
        let diff = at.as_secs_f64() - want.as_secs_f64();
        assert!(
            (-0.05..0.5).contains(&diff),
            "attempt {} came at {at:?}, expected {want:?}",
            i + 1
        );
    }
    // The recorded attempts against the schedule function, fed the real
    // failure times: each attempt starts within a few hundred ms of when
    // the previous failure made it due.
    let attempts = view["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), expected.len());
    assert_eq!(view["attemptCount"], expected.len());
    let t0 = rfc3339(&attempts[0]["startedAt"]);
    for (i, pair) in attempts.windows(2).enumerate() {
        let failed_at = rfc3339(&pair[0]["startedAt"])
            + time::Duration::milliseconds(pair[0]["durationMs"].as_i64().unwrap());
        let Next::At(due) = next_attempt(&policy, i as u32 + 1, t0, failed_at) else {
            panic!("the schedule gave up before attempt {}", i + 2);
        };
        let started = rfc3339(&pair[1]["startedAt"]);
        let late = (started - due).as_seconds_f64();
        assert!(
            (-0.01..0.4).contains(&late),
            "attempt {} started {late}s after it was due",
            i + 2
        );
    }
    let last = rfc3339(&attempts[attempts.len() - 1]["startedAt"]);
    let horizon = t0 + time::Duration::seconds(10);
    assert!(
        (last - horizon).as_seconds_f64().abs() < 0.4,
        "last attempt at {last}, horizon {horizon}"
    );
    for a in attempts {
        assert_eq!(a["statusCode"], 500);
        assert_eq!(a["error"], "http_error");
        assert_eq!(a["responseSnippet"], "nope");
    }
    assert!(view.get("nextAttemptTime").is_none(), "{view:#}");
    assert!(view["completedAt"].is_string(), "{view:#}");
    // Given up: nothing more is sent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(rx.received().len(), expected.len());
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_recovers_after_failures() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.script([
        Answer::status(503),
        Answer::status(503),
        Answer::status(503),
    ]);
    let id = enqueue(&app, json!({"url": rx.url("/flaky"), "body": "hi"})).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let codes: Vec<i64> = view["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [503, 503, 503, 200]);
    assert_eq!(view["attemptCount"], 4);
    let got = rx.received();
    assert_eq!(got.len(), 4);
    // Three at once, the fourth after the first delay (1 s).
    let gap = got[3].at - got[2].at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_millis(1500),
        "{gap:?}"
    );
    assert!(got[2].at - got[0].at < Duration::from_millis(400));
    assert_eq!(view["attempts"][3]["error"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_is_a_failed_attempt_and_never_followed() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let elsewhere = Box::leak(rx.url("/elsewhere").into_boxed_str());
    rx.script([Answer::status(302).header("location", elsewhere)]);
    let id = enqueue(&app, json!({"url": rx.url("/moved"), "json": {}})).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["statusCode"], 302);
    assert_eq!(attempts[0]["error"], "http_error");
    assert_eq!(attempts[1]["statusCode"], 200);
    let paths: Vec<String> = rx.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/moved", "/moved"],
        "the Location was never requested"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_slower_than_the_attempt_timeout_is_a_timeout() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.script([Answer::ok().delayed(Duration::from_secs(4))]);
    let id = enqueue(&app, json!({"url": rx.url("/slow"), "json": {}})).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(12), |v| v["status"] == "delivered")
        .await;
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{view:#}");
    assert_eq!(attempts[0]["error"], "timeout");
    assert_eq!(attempts[0]["statusCode"], Value::Null);
    let ms = attempts[0]["durationMs"].as_i64().unwrap();
    assert!(
        (1900..2600).contains(&ms),
        "the timeout is 2 s, the attempt took {ms} ms"
    );
    assert_eq!(attempts[1]["statusCode"], 200);
    app.stop().await;
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let app = TestApp::spawn().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let id = enqueue(
        &app,
        json!({"url": format!("http://{closed}/nobody"), "json": {}}),
    )
    .await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| {
            v["attemptCount"].as_i64() >= Some(3)
        })
        .await;
    for a in &view["attempts"].as_array().unwrap()[..3] {
        assert_eq!(a["error"], "connect_error", "{view:#}");
        assert_eq!(a["statusCode"], Value::Null);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_response_snippet_is_at_most_one_kib_and_any_body_is_recorded() {
    let app = TestApp::spawn().await;
    // 1 + 2 * 3000 bytes: the 1 KiB cut falls inside a two-byte character.
    let long: &'static str = Box::leak(format!("a{}", "é".repeat(3000)).into_boxed_str());
    let rx_long = Receiver::start().await;
    rx_long.script([Answer::status(500).body(long)]);
    // NUL bytes and invalid UTF-8 (PostgreSQL text takes neither as is).
    let rx_nul = Receiver::start().await;
    rx_nul.always(Answer::ok().body("ok\0\u{1}binary\0"));
    let long_id = enqueue(&app, json!({"url": rx_long.url("/long"), "json": {}})).await;
    let nul_id = enqueue(&app, json!({"url": rx_nul.url("/nul"), "json": {}})).await;

    let view = app
        .wait_delivery(&long_id, Duration::from_secs(10), |v| {
            v["status"] == "delivered"
        })
        .await;
    let snippet = view["attempts"][0]["responseSnippet"]
        .as_str()
        .expect("snippet");
    assert!(snippet.len() <= 1024, "snippet of {} bytes", snippet.len());
    assert!(snippet.len() >= 1020, "snippet of {} bytes", snippet.len());
    assert!(
        long.starts_with(snippet),
        "the snippet is the start of the response"
    );

    let view = app
        .wait_delivery(&nul_id, Duration::from_secs(10), |v| {
            v["status"] == "delivered"
        })
        .await;
    assert_eq!(view["attemptCount"], 1, "{view:#}");
    let snippet = view["attempts"][0]["responseSnippet"]
        .as_str()
        .expect("snippet");
    assert!(
        snippet.starts_with("ok") && snippet.contains("binary"),
        "{snippet:?}"
    );
    assert!(!snippet.contains('\0'));
    app.stop().await;
}

#[tokio::test]
async fn with_the_default_schedule_the_fourth_attempt_is_due_15_minutes_after_the_third() {
    let app = TestApp::spawn_with(|c| {
        let defaults = postback::Config::default();
        c.retry_immediate = defaults.retry_immediate;
        c.retry_first_delay = defaults.retry_first_delay;
        c.retry_max_delay = defaults.retry_max_delay;
        c.retry_give_up = defaults.retry_give_up;
    })
    .await;
    let rx = Receiver::start().await;
    rx.always(Answer::status(503));
    create_job(
        &app,
        json!({"jobId": "job-default", "publish": {"callbacks": [{"url": rx.url("/cb")}]}}),
    )
    .await;
    post_result(
        &app,
        "job-default",
        json!({"status": "finished", "result": {}}),
    )
    .await;
    rx.wait_for(3, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let job = loop {
        let job = app.get_json("/v1/jobs/job-default").await;
        if job["callbacks"][0]["attempts"] == 3 && job["callbacks"][0]["status"] == "pending" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cb = &job["callbacks"][0];
    assert_eq!(cb["lastStatusCode"], 503);
    let id = cb["deliveryId"].as_str().unwrap();
    let view = app.get_json(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(view["status"], "pending");
    let attempts = view["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    let third = &attempts[2];
    let third_start = rfc3339(&third["startedAt"]);
    assert_eq!(rfc3339(&cb["lastAttemptTime"]), third_start);
    let failed_at =
        third_start + time::Duration::milliseconds(third["durationMs"].as_i64().unwrap());
    for next in [
        rfc3339(&cb["nextAttemptTime"]),
        rfc3339(&view["nextAttemptTime"]),
    ] {
        let wait = (next - failed_at).as_seconds_f64();
        assert!(
            (900.0..900.01).contains(&wait),
            "next attempt {wait}s after the third failed"
        );
        let after_last = (next - third_start).as_seconds_f64();
        assert!(
            (900.0..901.0).contains(&after_last),
            "next attempt {after_last}s after the last attempt"
        );
    }
    assert_eq!(rx.received().len(), 3);
    app.stop().await;
}

// --------------------------------------------------------- per-host fairness

/// A receiver that reads requests and never answers, counting how many
/// requests it holds at once. A request counts as held from its arrival
/// until the client hangs up; one that stays connected longer than
/// `attempt_timeout - 300 ms` no longer counts (the client gave up on it
/// and only the socket teardown is still in progress).
/// (arrival, hang-up) of every request a [`Hanging`] receiver got.
type Held = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

struct Hanging {
    addr: SocketAddr,
    /// (arrival, hang-up) per request.
    held: Held,
    stop: tokio_util::sync::CancellationToken,
}

impl Hanging {
    async fn start(addr: &str) -> Hanging {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind hanging receiver");
        let addr = listener.local_addr().unwrap();
        let held: Held = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let (h, s) = (held.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                };
                let (held, stop) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let index = {
                        let mut held = held.lock().unwrap();
                        held.push((Instant::now(), None));
                        held.len() - 1
                    };
                    // Hold it until the client hangs up (bounded).
                    let wait = async {
                        loop {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::timeout(Duration::from_secs(15), wait) => {}
                    }
                    held.lock().unwrap()[index].1 = Some(Instant::now());
                });
            }
        });
        Hanging { addr, held, stop }
    }

    fn requests(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// The most requests the client had in flight at once.
    fn max_in_flight(&self, attempt_timeout: Duration) -> usize {
        let held = self.held.lock().unwrap().clone();
        let window = attempt_timeout - Duration::from_millis(300);
        held.iter()
            .map(|(arrival, _)| {
                held.iter()
                    .filter(|(a, end)| {
                        a <= arrival && *arrival < *a + window && end.is_none_or(|e| *arrival < e)
                    })
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn a_hanging_host_holds_at_most_its_share_while_a_healthy_one_flows() {
    let attempt_timeout = Duration::from_secs(3);
    let app = TestApp::spawn_with(|c| {
        c.per_host_concurrency = 2;
        c.attempt_timeout = attempt_timeout;
    })
    .await;
    let hanging = Hanging::start("127.0.0.2:0").await;
    let healthy = Receiver::start_on("127.0.0.3:0").await;
    for i in 0..10 {
        enqueue(
            &app,
            json!({"url": format!("http://{}/hang/{i}", hanging.addr), "json": {"i": i}}),
        )
        .await;
    }
    let started = Instant::now();
    let mut healthy_ids = HashSet::new();
    for i in 0..30 {
        healthy_ids.insert(
            enqueue(
                &app,
                json!({"url": healthy.url(&format!("/ok/{i}")), "json": {"i": i}}),
            )
            .await,
        );
    }
    // All 30 arrive while the hanging host's first attempts still hang.
    let got = healthy.wait_for(30, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < attempt_timeout - Duration::from_millis(500),
        "the healthy host waited {took:?}"
    );
    let ids: HashSet<String> = got
        .iter()
        .map(|r| header(r, "webhook-id").to_owned())
        .collect();
    assert_eq!(ids, healthy_ids);
    assert_eq!(
        hanging.requests(),
        2,
        "two attempts hang, the other eight wait their turn"
    );
    // Past the first timeouts, the next two go out: still never more than two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hanging.requests() < 4 {
        assert!(
            Instant::now() < deadline,
            "the hanging host got no second wave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hanging.max_in_flight(attempt_timeout), 2);
    // The healthy deliveries are all recorded as delivered.
    for id in &healthy_ids {
        app.wait_delivery(id, Duration::from_secs(5), |v| v["status"] == "delivered")
            .await;
    }
    app.stop().await;
}

// ----------------------------------------------- workers in other processes

/// `postback worker` child processes, killed with SIGKILL when dropped (a
/// failing test must not leave them running).
struct Workers(Vec<Child>);

impl Workers {
    /// Starts one; returns its index (valid until a `kill`).
    fn spawn(&mut self, database_url: &str) -> usize {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("POSTBACK_") || key == "DATABASE_URL" || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .arg("worker")
            .env("DATABASE_URL", database_url)
            .env("POSTBACK_EGRESS_ALLOW", "127.0.0.0/8")
            .env("POSTBACK_ATTEMPT_TIMEOUT", "1s")
            .env("POSTBACK_CONCURRENCY", "64")
            .env("POSTBACK_PER_HOST_CONCURRENCY", "32")
            .env("POSTBACK_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn postback worker");
        self.0.push(child);
        self.0.len() - 1
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.0.remove(i);
        child.kill().expect("SIGKILL the worker");
        let _ = child.wait();
    }

    fn assert_running(&mut self) {
        for child in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("a worker exited early: {status}");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Queues `n` generic deliveries to `url` in one transaction (as an
/// embedding backend would) and wakes the workers; returns their ids.
async fn queue_many(app: &TestApp, url: &str, n: usize) -> HashSet<String> {
    let expires = OffsetDateTime::now_utc() + time::Duration::days(1);
    let batch: Vec<postback::store::deliveries::NewDelivery> = (0..n)
        .map(|i| {
            postback::store::deliveries::NewDelivery::generic_json(
                url,
                format!("{{\"n\":{i}}}").into_bytes(),
                expires,
            )
        })
        .collect();
    let mut tx = app.pool.begin().await.unwrap();
    postback::store::deliveries::insert(&mut tx, &postback::store::Schema::default(), &batch)
        .await
        .unwrap();
    postback::intake::notify_workers(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    batch.iter().map(|d| d.id.to_string()).collect()
}

async fn count_state(app: &TestApp, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = $1")
        .bind(state)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn wait_all_delivered(app: &TestApp, n: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let delivered = count_state(app, "delivered").await;
        if delivered == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {n} delivered after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn arrivals(rx: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in rx.received() {
        *counts
            .entry(header(&r, "webhook-id").to_owned())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_drain_one_queue_without_sending_anything_twice() {
    // The API alone; the workers are separate processes.
    let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
    let rx = Receiver::start().await;
    let mut workers = Workers(Vec::new());
    workers.spawn(&app.database_url);
    workers.spawn(&app.database_url);
    // Let both start and LISTEN, so they race for the same rows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ids = queue_many(&app, &rx.url("/drain"), 2000).await;
    rx.wait_for(2000, Duration::from_secs(40)).await;
    wait_all_delivered(&app, 2000, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.assert_running();
    let counts = arrivals(&rx);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(rx.received().len(), 2000);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.attempts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_drain_loses_nothing_once_another_takes_over() {
    let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
    let rx = Receiver::start().await;
    // Slow enough answers that the kill lands with attempts in flight.
    rx.always(Answer::ok().delayed(Duration::from_millis(20)));
    let mut workers = Workers(Vec::new());
    let first = workers.spawn(&app.database_url);
    let ids = queue_many(&app, &rx.url("/crash"), 2000).await;
    rx.wait_for(300, Duration::from_secs(20)).await;
    workers.kill(first);
    // What the dead worker held: claimed, never completed.
    let leased = count_state(&app, "delivering").await;
    let sent_before = rx.received().len();
    assert!(
        sent_before < 2000,
        "the worker finished before it was killed"
    );
    assert!(leased > 0, "the kill landed with nothing in flight");
    workers.spawn(&app.database_url);
    // Everything arrives and is recorded as delivered: the rest at once,
    // the dead worker's rows when their lease (2 x 1 s + 30 s) runs out.
    let deadline = Instant::now() + Duration::from_secs(50);
    loop {
        let counts = arrivals(&rx);
        let delivered = count_state(&app, "delivered").await;
        if counts.len() == ids.len() && delivered == 2000 {
            assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), ids);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} arrived, {delivered} recorded as delivered",
            counts.len(),
            ids.len()
        );
        workers.assert_running();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let duplicates = rx.received().len() - ids.len();
    eprintln!("killed with {leased} in flight after {sent_before} sent; {duplicates} sent twice");
    assert!(
        duplicates as i64 <= leased,
        "{duplicates} duplicates, but only {leased} deliveries were in flight at the kill"
    );
}
