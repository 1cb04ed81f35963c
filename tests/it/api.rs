//! Issue 4: every route of SPEC §2 over real HTTP against a real `serve`
//! on its own PostgreSQL database: jobs, results, polling, expiry, generic
//! deliveries, replay, egress, auth, secrets, the bad-input table,
//! atomicity of a result, and the OpenAPI document.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::{Answer, Receiver, TestApp, TOKEN};

/// Every test runs inside this bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test did not finish within 90 s")
}

/// An app that never sends anything (no workers).
async fn api_only() -> TestApp {
    TestApp::spawn_with(|c| c.concurrency = 0).await
}

fn ts(v: &Value) -> OffsetDateTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a time string: {v}"));
    assert!(s.ends_with('Z'), "not UTC: {s}");
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn uuid_of(v: &Value) -> uuid::Uuid {
    uuid::Uuid::parse_str(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// Asserts the SPEC error shape and returns the code.
fn error_code(body: &Value) -> String {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let obj = error
        .as_object()
        .unwrap_or_else(|| panic!("error is not an object: {body}"));
    assert_eq!(obj.len(), 2, "error has exactly code and message: {body}");
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    assert!(!message.trim().is_empty(), "empty message: {body}");
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"));
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "code is not snake_case: {body}"
    );
    code.to_owned()
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let (got, body) = json_of(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(error_code(&body), code, "{body}");
    body
}

fn sample_result() -> Value {
    json!({
        "status": "finished",
        "result": {
            "transcript": {"confidence": 0.91, "words": [
                {"p": 0, "s": 1370, "e": 1609, "c": 0.263, "w": "Hi"},
                {"p": 1, "s": 1700, "e": 2000, "c": 0.9, "w": "there."}
            ]},
            "knowledge": {"topics": []}, "prediction": {}, "spotting": {}
        }
    })
}

#[tokio::test]
async fn create_job_answers_201_with_the_job_and_polling_shows_the_same() {
    bounded(async {
        let app = api_only().await;
        let request = json!({
            "jobId": "job-1",
            "metadata": {"customer": "acme", "n": 1.5},
            "publish": {"callbacks": [
                {"url": "https://example.org/callback"},
                {"url": "https://example.org/cb", "method": "POST",
                 "include": ["transcript", "knowledge", "metadata", "prediction", "streams", "spotting"]},
                {"url": "https://example.org/cb/srt", "method": "PUT", "type": "transcript", "format": "srt"},
                {"url": "https://example.org/cb/media", "method": "PUT", "type": "media", "stream": "original",
                 "headers": {"x-api-key": "abc"}}
            ]}
        });
        let before = OffsetDateTime::now_utc();
        let (status, job) = json_of(app.post("/v1/jobs", request.clone()).await).await;
        let after = OffsetDateTime::now_utc();
        assert_eq!(status, 201, "{job}");
        assert_eq!(job["jobId"], "job-1");
        assert_eq!(job["status"], "InProgress");
        assert!(job.get("result").is_none(), "{job}");
        let created = ts(&job["creationTime"]);
        assert!(created >= before - Duration::from_secs(1) && created <= after + Duration::from_secs(1));
        assert_eq!(ts(&job["expirationTime"]) - created, app.config.job_ttl, "expiration = creation + POSTBACK_JOB_TTL");
        let callbacks = job["callbacks"].as_array().unwrap();
        assert_eq!(callbacks.len(), 4);
        let expected = [
            ("https://example.org/callback", "POST", "analytics"),
            ("https://example.org/cb", "POST", "analytics"),
            ("https://example.org/cb/srt", "PUT", "transcript"),
            ("https://example.org/cb/media", "PUT", "media"),
        ];
        let mut ids = BTreeSet::new();
        for (cb, (url, method, kind)) in callbacks.iter().zip(expected) {
            assert_eq!(cb["url"], url, "{cb}");
            assert_eq!(cb["method"], method, "{cb}");
            assert_eq!(cb["type"], kind, "{cb}");
            assert_eq!(cb["status"], "pending", "{cb}");
            assert_eq!(cb["attempts"], 0, "{cb}");
            assert!(ids.insert(uuid_of(&cb["deliveryId"])), "delivery ids are distinct");
        }
        // Polling answers the same job.
        assert_eq!(app.get_json("/v1/jobs/job-1").await, job);

        // The same body again (keys in another order): 200 and the same job.
        let reordered: Value = serde_json::from_str(
            r#"{"publish": {"callbacks": [
                {"url": "https://example.org/callback"},
                {"method": "POST", "url": "https://example.org/cb",
                 "include": ["transcript", "knowledge", "metadata", "prediction", "streams", "spotting"]},
                {"type": "transcript", "format": "srt", "url": "https://example.org/cb/srt", "method": "PUT"},
                {"headers": {"x-api-key": "abc"}, "url": "https://example.org/cb/media", "method": "PUT", "type": "media", "stream": "original"}
            ]}, "metadata": {"n": 1.5, "customer": "acme"}, "jobId": "job-1"}"#,
        )
        .unwrap();
        let counts = app.table_counts().await;
        let (status, again) = json_of(app.post("/v1/jobs", reordered).await).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, job);
        // A different body with the same id: 409, nothing stored.
        let mut different = request.clone();
        different["metadata"]["customer"] = json!("other");
        expect_error(app.post("/v1/jobs", different).await, 409, "job_exists").await;
        assert_eq!(app.table_counts().await, counts);
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn jobs_without_an_id_get_a_uuid_v7_and_webhook_shorthand_works() {
    bounded(async {
        let app = api_only().await;
        let (status, a) = json_of(app.post("/v1/jobs", json!({})).await).await;
        assert_eq!(status, 201, "{a}");
        let (_, b) = json_of(app.post("/v1/jobs", json!({"publish": {"callbacks": []}})).await).await;
        let (ia, ib) = (uuid_of(&a["jobId"]), uuid_of(&b["jobId"]));
        assert_eq!(ia.get_version_num(), 7, "{ia}");
        assert_eq!(ib.get_version_num(), 7, "{ib}");
        assert_ne!(ia, ib);
        assert_eq!(a["callbacks"], json!([]));
        for cb in [&a, &b] {
            assert_eq!(app.get_json(&format!("/v1/jobs/{}", cb["jobId"].as_str().unwrap())).await, *cb);
        }

        // ?webhook=URL with no body: one analytics POST callback.
        let hook = "https://hooks.example.org/cb?x=1&y=2";
        let response = app
            .http
            .post(app.url("/v1/jobs"))
            .query(&[("webhook", hook)])
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let (status, job) = json_of(response).await;
        assert_eq!(status, 201, "{job}");
        assert_eq!(uuid_of(&job["jobId"]).get_version_num(), 7);
        let cbs = job["callbacks"].as_array().unwrap();
        assert_eq!(cbs.len(), 1, "{job}");
        assert_eq!(cbs[0]["url"], hook);
        assert_eq!(cbs[0]["method"], "POST");
        assert_eq!(cbs[0]["type"], "analytics");

        // ?webhook=URL with a body: the body's callbacks plus the webhook.
        let response = app
            .http
            .post(app.url("/v1/jobs"))
            .query(&[("webhook", "https://hooks.example.org/second")])
            .bearer_auth(TOKEN)
            .json(&json!({"jobId": "hooked", "metadata": {"a": 1},
                          "publish": {"callbacks": [{"url": "https://example.org/t", "type": "transcript", "format": "text"}]}}))
            .send()
            .await
            .unwrap();
        let (status, job) = json_of(response).await;
        assert_eq!(status, 201, "{job}");
        assert_eq!(job["jobId"], "hooked");
        let urls: Vec<&str> = job["callbacks"].as_array().unwrap().iter().map(|c| c["url"].as_str().unwrap()).collect();
        assert_eq!(urls, ["https://example.org/t", "https://hooks.example.org/second"]);

        // A bad webhook URL is refused naming the parameter.
        let counts = app.table_counts().await;
        let response = app
            .http
            .post(app.url("/v1/jobs?webhook=ftp://x/"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 400, "invalid_url").await;
        assert!(body["error"]["message"].as_str().unwrap().contains("webhook"), "{body}");
        assert_eq!(app.table_counts().await, counts);
        app.stop().await;
    })
    .await;
}

/// A file on the Postback host that media callbacks send.
fn media_file(bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pb-media-{}.bin", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn finished_result_queues_one_delivery_per_callback_and_polling_follows_them() {
    bounded(async {
        let app = TestApp::spawn_with(|c| c.media_root = vec![std::env::temp_dir()]).await;
        let rx = Receiver::start().await;
        let media = media_file(b"RIFF-fake-audio-bytes");
        let job = json!({
            "jobId": "asr-1",
            "metadata": {"ticket": 7},
            "publish": {"callbacks": [
                {"url": rx.url("/analytics")},
                {"url": rx.url("/srt"), "method": "PUT", "type": "transcript", "format": "srt"},
                {"url": rx.url("/text"), "type": "transcript", "format": "text"},
                {"url": rx.url("/media"), "method": "PUT", "type": "media", "stream": "original"}
            ]}
        });
        let (status, created) = json_of(app.post("/v1/jobs", job).await).await;
        assert_eq!(status, 201, "{created}");
        let ids: Vec<Value> = created["callbacks"].as_array().unwrap().iter().map(|c| c["deliveryId"].clone()).collect();

        let mut result = sample_result();
        result["streams"] = json!([{"streamName": "original", "path": media.to_str().unwrap(),
                                    "contentType": "audio/mpeg", "location": "https://media.example.org/a.mp3?sig=1"}]);
        let (status, done) = json_of(app.post("/v1/jobs/asr-1/result", result.clone()).await).await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["status"], "Completed");
        assert_eq!(done["result"]["transcript"]["words"][0]["w"], "Hi");
        let done_ids: Vec<Value> = done["callbacks"].as_array().unwrap().iter().map(|c| c["deliveryId"].clone()).collect();
        assert_eq!(done_ids, ids, "the deliveries carry the ids shown at creation, in order");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE job_id = 'asr-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(n, 4);
        // The local path of a stream is never shown.
        assert!(!done.to_string().contains(media.to_str().unwrap()), "{done}");

        // A second result: 409, nothing new.
        let counts = app.table_counts().await;
        expect_error(app.post("/v1/jobs/asr-1/result", result).await, 409, "result_exists").await;
        let counts_after = app.table_counts().await;
        assert_eq!(counts_after[..3], counts[..3], "no job, delivery or payload added");

        let got = rx.wait_for(4, Duration::from_secs(20)).await;
        let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["/analytics", "/media", "/srt", "/text"]);
        let media_req = got.iter().find(|r| r.path == "/media").unwrap();
        assert_eq!(&media_req.body[..], b"RIFF-fake-audio-bytes");
        let text_req = got.iter().find(|r| r.path == "/text").unwrap();
        assert_eq!(&text_req.body[..], b"Hi there.");
        let analytics = got.iter().find(|r| r.path == "/analytics").unwrap();
        let body: Value = serde_json::from_slice(&analytics.body).unwrap();
        assert_eq!(body["jobId"], "asr-1");
        assert_eq!(body["status"], "finished");
        assert_eq!(body["metadata"], json!({"ticket": 7}));

        // Polling shows every callback delivered.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let polled = loop {
            let polled = app.get_json("/v1/jobs/asr-1").await;
            if polled["callbacks"].as_array().unwrap().iter().all(|c| c["status"] == "delivered") {
                break polled;
            }
            assert!(std::time::Instant::now() < deadline, "not all delivered: {polled:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(polled["status"], "Completed");
        assert_eq!(polled["result"], done["result"]);
        for cb in polled["callbacks"].as_array().unwrap() {
            assert_eq!(cb["attempts"], 1, "{cb}");
            assert_eq!(cb["lastStatusCode"], 200, "{cb}");
            ts(&cb["lastAttemptTime"]);
            assert!(cb.get("nextAttemptTime").is_none(), "{cb}");
        }
        let _ = std::fs::remove_file(media);
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failed_result_sends_only_analytics_callbacks() {
    bounded(async {
        let app = TestApp::spawn().await;
        let rx = Receiver::start().await;
        let job = json!({
            "jobId": "asr-fail",
            "publish": {"callbacks": [
                {"url": rx.url("/analytics")},
                {"url": rx.url("/srt"), "type": "transcript", "format": "srt"},
                {"url": rx.url("/media"), "type": "media"},
                {"url": rx.url("/analytics2"), "include": ["metadata"]}
            ]}
        });
        assert_eq!(app.post("/v1/jobs", job).await.status(), 201);
        let failed = json!({"status": "failed", "error": {"code": "media_unreadable", "message": "the media could not be decoded"}});
        let (status, view) = json_of(app.post("/v1/jobs/asr-fail/result", failed.clone()).await).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["status"], "Failed");
        assert!(view.get("result").is_none(), "{view}");
        assert_eq!(view["error"], failed["error"]);
        let kinds: Vec<&str> = view["callbacks"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["analytics", "analytics"]);
        let counts = app.table_counts().await;
        assert_eq!(counts[1].1, 2, "only the analytics callbacks are queued: {counts:?}");
        expect_error(app.post("/v1/jobs/asr-fail/result", sample_result()).await, 409, "result_exists").await;
        let got = rx.wait_for(2, Duration::from_secs(20)).await;
        for r in &got {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body, json!({"jobId": "asr-fail", "status": "failed", "error": failed["error"]}));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rx.received().len(), 2, "transcript and media callbacks are skipped");
        let polled = app.get_json("/v1/jobs/asr-fail").await;
        assert_eq!(polled["status"], "Failed");
        app.stop().await;
    })
    .await;
}

/// Polling and posting a result for the expired (not yet purged) job `id`
/// both answer 404 `job_expired` and store nothing. `serve` also purges
/// expired jobs, at start and then every minute: when its first pass
/// removed the job before the requests saw it, this answers `false` and the
/// caller tries again with another job (the next pass is a minute away).
async fn expired_answers(app: &TestApp, id: &str) -> bool {
    let counts = app.table_counts().await;
    let (get_status, get) = json_of(app.get(&format!("/v1/jobs/{id}")).await).await;
    let (result_status, result) = json_of(
        app.post(&format!("/v1/jobs/{id}/result"), sample_result())
            .await,
    )
    .await;
    let present: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM postback.jobs WHERE id = $1)")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((get_status, result_status), (404, 404), "{get} {result}");
    if !present {
        return false;
    }
    assert_eq!(error_code(&get), "job_expired", "{get}");
    assert_eq!(error_code(&result), "job_expired", "{result}");
    assert_eq!(app.table_counts().await, counts);
    true
}

#[tokio::test]
async fn unknown_and_expired_jobs_answer_404_with_their_codes() {
    bounded(async {
        let app = api_only().await;
        expect_error(app.get("/v1/jobs/never-seen").await, 404, "job_not_found").await;
        expect_error(
            app.post("/v1/jobs/never-seen/result", sample_result())
                .await,
            404,
            "job_not_found",
        )
        .await;

        // Expired by its expiry time (set in the past here).
        let mut checked = false;
        for round in 0..3 {
            let id = format!("old-{round}");
            let request =
                json!({"jobId": id, "publish": {"callbacks": [{"url": "https://example.org/cb"}]}});
            assert_eq!(app.post("/v1/jobs", request).await.status(), 201);
            sqlx::query(
                "UPDATE postback.jobs SET expires_at = now() - interval '1 second' WHERE id = $1",
            )
            .bind(&id)
            .execute(&app.pool)
            .await
            .unwrap();
            if expired_answers(&app, &id).await {
                checked = true;
                break;
            }
        }
        assert!(
            checked,
            "the retention purge removed the expired job every time"
        );
        app.stop().await;

        // A tiny TTL: the job expires by itself, before any purge.
        let app = TestApp::spawn_with(|c| {
            c.concurrency = 0;
            c.job_ttl = Duration::from_millis(300);
            // The TTL must exceed the give-up horizon (SPEC §1).
            c.retry_immediate = 0;
            c.retry_give_up = Duration::from_millis(100);
        })
        .await;
        let mut checked = false;
        for round in 0..3 {
            let id = format!("brief-{round}");
            let (status, job) = json_of(app.post("/v1/jobs", json!({"jobId": id})).await).await;
            assert_eq!(status, 201, "{job}");
            assert_eq!(
                ts(&job["expirationTime"]) - ts(&job["creationTime"]),
                Duration::from_millis(300)
            );
            tokio::time::sleep(Duration::from_millis(400)).await;
            if expired_answers(&app, &id).await {
                checked = true;
                break;
            }
        }
        assert!(
            checked,
            "the retention purge removed the expired job every time"
        );
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn generic_deliveries_are_delivered_with_default_content_types_and_every_attempt() {
    bounded(async {
        let app = TestApp::spawn().await;
        let rx = Receiver::start().await;
        rx.always(Answer::ok().body("thanks"));
        let cases = [
            (
                json!({"url": rx.url("/text"), "body": "hello"}),
                "text/plain; charset=utf-8",
                b"hello".to_vec(),
            ),
            (
                json!({"url": rx.url("/bytes"), "method": "PUT", "bodyBase64": "AAEC/w=="}),
                "application/octet-stream",
                vec![0, 1, 2, 255],
            ),
            (
                json!({"url": rx.url("/json"), "json": {"a": [1, 2]}}),
                "application/json",
                br#"{"a":[1,2]}"#.to_vec(),
            ),
            (
                json!({"url": rx.url("/typed"), "body": "<x/>", "contentType": "application/xml"}),
                "application/xml",
                b"<x/>".to_vec(),
            ),
        ];
        let mut ids = Vec::new();
        for (request, _, _) in &cases {
            let (status, body) = json_of(app.post("/v1/deliveries", request.clone()).await).await;
            assert_eq!(status, 202, "{body}");
            assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
            ids.push(uuid_of(&body["deliveryId"]).to_string());
        }
        let got = rx.wait_for(cases.len(), Duration::from_secs(20)).await;
        for ((request, content_type, bytes), id) in cases.iter().zip(&ids) {
            let path = request["url"].as_str().unwrap().rsplit('/').next().unwrap();
            let r = got.iter().find(|r| r.path == format!("/{path}")).unwrap();
            assert_eq!(r.headers["content-type"], *content_type, "{request}");
            assert_eq!(&r.body[..], &bytes[..], "{request}");
            assert_eq!(r.headers["webhook-id"], id.as_str());
            let method = request
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("POST");
            assert_eq!(r.method.as_str(), method);
            let view = app
                .wait_delivery(id, Duration::from_secs(20), |v| v["status"] == "delivered")
                .await;
            assert_eq!(view["deliveryId"], id.as_str());
            assert_eq!(view["type"], "generic");
            assert_eq!(view["url"], request["url"]);
            assert_eq!(view["method"], method);
            assert_eq!(view["contentType"], *content_type);
            assert_eq!(view["attemptCount"], 1);
            ts(&view["queuedAt"]);
            ts(&view["completedAt"]);
            let attempts = view["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 1, "{view}");
            let a = &attempts[0];
            assert_eq!(a["attempt"], 1);
            ts(&a["startedAt"]);
            assert!(a["durationMs"].as_i64().unwrap() >= 0);
            assert_eq!(a["statusCode"], 200);
            assert_eq!(a["error"], Value::Null);
            assert_eq!(a["responseSnippet"], "thanks");
        }

        // A failed attempt then a success: both recorded with their fields.
        let flaky = Receiver::start().await;
        flaky.script([Answer::status(503).body("busy, try later")]);
        let (_, body) = json_of(
            app.post(
                "/v1/deliveries",
                json!({"url": flaky.url("/f"), "json": {"x": 1}}),
            )
            .await,
        )
        .await;
        let id = body["deliveryId"].as_str().unwrap().to_owned();
        let view = app
            .wait_delivery(&id, Duration::from_secs(20), |v| v["status"] == "delivered")
            .await;
        let attempts = view["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{view}");
        assert_eq!(attempts[0]["attempt"], 1);
        assert_eq!(attempts[0]["statusCode"], 503);
        assert_eq!(attempts[0]["error"], "http_error");
        assert_eq!(attempts[0]["responseSnippet"], "busy, try later");
        assert_eq!(attempts[1]["attempt"], 2);
        assert_eq!(attempts[1]["statusCode"], 200);
        assert_eq!(attempts[1]["error"], Value::Null);

        // Replay: 202, delivered again with the same webhook-id.
        let (status, body) = json_of(
            app.post(&format!("/v1/deliveries/{}/replay", ids[0]), json!({}))
                .await,
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["deliveryId"], ids[0].as_str());
        let got = rx.wait_for(cases.len() + 1, Duration::from_secs(20)).await;
        let again = got.last().unwrap();
        assert_eq!(again.headers["webhook-id"], ids[0].as_str());
        assert_eq!(&again.body[..], b"hello");
        let view = app
            .wait_delivery(&ids[0], Duration::from_secs(20), |v| {
                v["status"] == "delivered" && v["attemptCount"] == 2
            })
            .await;
        assert_eq!(view["attempts"].as_array().unwrap().len(), 2, "{view}");
        // Replay needs no body at all.
        let response = app
            .http
            .post(app.url(&format!("/v1/deliveries/{}/replay", ids[1])))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);

        // Unknown and malformed ids.
        let unknown = uuid::Uuid::now_v7();
        for path in [
            format!("/v1/deliveries/{unknown}"),
            "/v1/deliveries/not-a-uuid".to_owned(),
            "/v1/deliveries/%FF".to_owned(),
        ] {
            expect_error(app.get(&path).await, 404, "delivery_not_found").await;
            expect_error(
                app.post(&format!("{path}/replay"), json!({})).await,
                404,
                "delivery_not_found",
            )
            .await;
        }
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn egress_publishes_the_configured_addresses() {
    bounded(async {
        let app = TestApp::spawn_with(|c| {
            c.concurrency = 0;
            c.egress_source_addr = Some("127.0.0.1".parse().unwrap());
            c.egress_public_ips = vec!["203.0.113.7".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        })
        .await;
        assert_eq!(
            app.get_json("/v1/egress").await,
            json!({"sourceAddresses": ["127.0.0.1"], "publicAddresses": ["203.0.113.7", "2001:db8::1"]})
        );
        app.stop().await;
        // Without public addresses the source address is published.
        let app = TestApp::spawn_with(|c| {
            c.concurrency = 0;
            c.egress_source_addr = Some("127.0.0.1".parse().unwrap());
        })
        .await;
        assert_eq!(
            app.get_json("/v1/egress").await,
            json!({"sourceAddresses": ["127.0.0.1"], "publicAddresses": ["127.0.0.1"]})
        );
        app.stop().await;
        let app = api_only().await;
        assert_eq!(app.get_json("/v1/egress").await, json!({"sourceAddresses": [], "publicAddresses": []}));
        app.stop().await;
    })
    .await;
}

/// Every route of the v1 API.
const V1_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/some-job"),
    ("POST", "/v1/jobs/some-job/result"),
    ("POST", "/v1/deliveries"),
    ("GET", "/v1/deliveries/0190b6a2-0000-7000-8000-000000000000"),
    (
        "POST",
        "/v1/deliveries/0190b6a2-0000-7000-8000-000000000000/replay",
    ),
    ("GET", "/v1/egress"),
];

#[tokio::test]
async fn every_v1_route_needs_the_token_and_health_routes_do_not() {
    bounded(async {
        let app = api_only().await;
        for (method, path) in V1_ROUTES {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let auths: [Option<String>; 5] = [
                None,
                Some("Bearer wrong-token".into()),
                Some(format!("Bearer {TOKEN}x")),
                Some(format!("Basic {TOKEN}")),
                Some(TOKEN.into()),
            ];
            for auth in auths {
                let mut request = app
                    .http
                    .request(method.clone(), app.url(path))
                    .json(&json!({"jobId": "x"}));
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                let response = request.send().await.unwrap();
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
                let body = expect_error(response, 401, "unauthorized").await;
                assert!(!body.to_string().contains(TOKEN), "{body}");
            }
        }
        assert_eq!(
            app.table_counts().await.iter().map(|(_, n)| n).sum::<i64>(),
            0
        );
        // The scheme is case-insensitive; the token is not.
        for auth in [format!("bearer {TOKEN}"), format!("BEARER {TOKEN}")] {
            let response = app
                .http
                .get(app.url("/v1/egress"))
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let response = app
            .http
            .get(app.url("/v1/egress"))
            .header("authorization", format!("Bearer {}", TOKEN.to_uppercase()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let response = app.http.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        let metrics = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("postback_"), "{metrics}");
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    bounded(async {
        let app = api_only().await;
        expect_error(app.get("/v1/nope").await, 404, "not_found").await;
        let response = app
            .http
            .delete(app.url("/v1/jobs/x"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        expect_error(response, 405, "method_not_allowed").await;
        let response = app
            .http
            .get(app.url("/v1/jobs"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        expect_error(response, 405, "method_not_allowed").await;
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn secrets_are_never_returned_by_any_route() {
    bounded(async {
        let app = TestApp::spawn().await;
        let rx = Receiver::start().await;
        const HEADER_SECRET: &str = "hdr-s3cr3t-VALUE-9f1c";
        const JWT_SECRET: &str = "jwt-s3cr3t-VALUE-77ab";
        const GENERIC_SECRET: &str = "generic-s3cr3t-VALUE-0d0d";
        let job = json!({
            "jobId": "secretive",
            "publish": {"callbacks": [
                {"url": rx.url("/a"), "headers": {"x-api-key": HEADER_SECRET, "x-other": "plain"},
                 "auth": {"type": "jwt", "secret": JWT_SECRET, "scheme": "Bearer"}},
                {"url": rx.url("/b"), "type": "transcript", "format": "text",
                 "auth": {"type": "jwt", "secret": JWT_SECRET, "scheme": ""}}
            ]}
        });
        let mut bodies: Vec<(String, String)> = Vec::new();
        let response = app.post("/v1/jobs", job.clone()).await;
        assert_eq!(response.status(), 201);
        bodies.push(("create".into(), response.text().await.unwrap()));
        let response = app.post("/v1/jobs", job).await;
        assert_eq!(response.status(), 200);
        bodies.push(("create again".into(), response.text().await.unwrap()));
        bodies.push(("get job".into(), app.get("/v1/jobs/secretive").await.text().await.unwrap()));
        let response = app.post("/v1/jobs/secretive/result", sample_result()).await;
        assert_eq!(response.status(), 200);
        bodies.push(("result".into(), response.text().await.unwrap()));
        let view = app.get_json("/v1/jobs/secretive").await;
        bodies.push(("get job after".into(), view.to_string()));

        let (status, generic) = json_of(
            app.post("/v1/deliveries", json!({"url": rx.url("/g"), "headers": {"authorization": GENERIC_SECRET}, "body": "x"})).await,
        )
        .await;
        assert_eq!(status, 202);
        bodies.push(("generic create".into(), generic.to_string()));
        let mut delivery_ids: Vec<String> =
            view["callbacks"].as_array().unwrap().iter().map(|c| c["deliveryId"].as_str().unwrap().to_owned()).collect();
        delivery_ids.push(generic["deliveryId"].as_str().unwrap().to_owned());
        rx.wait_for(3, Duration::from_secs(20)).await;
        for id in &delivery_ids {
            let view = app.wait_delivery(id, Duration::from_secs(20), |v| v["status"] == "delivered").await;
            for value in view["headers"].as_object().unwrap().values() {
                assert_eq!(value, "***", "{view}");
            }
            bodies.push((format!("delivery {id}"), view.to_string()));
            let response = app.post(&format!("/v1/deliveries/{id}/replay"), json!({})).await;
            assert_eq!(response.status(), 202);
            bodies.push((format!("replay {id}"), response.text().await.unwrap()));
        }
        let first = app.get_json(&format!("/v1/deliveries/{}", delivery_ids[0])).await;
        assert_eq!(first["headers"], json!({"x-api-key": "***", "x-other": "***"}));
        let generic_view = app.get_json(&format!("/v1/deliveries/{}", delivery_ids[2])).await;
        assert_eq!(generic_view["headers"], json!({"authorization": "***"}));
        for (route, body) in &bodies {
            for secret in [HEADER_SECRET, JWT_SECRET, GENERIC_SECRET] {
                assert!(!body.contains(secret), "{route} returned a secret: {body}");
            }
        }
        // They were stored and used: the receiver saw them.
        let got = rx.received();
        let a = got.iter().find(|r| r.path == "/a").unwrap();
        assert_eq!(a.headers["x-api-key"], HEADER_SECRET);
        assert!(a.headers["authorization"].to_str().unwrap().starts_with("Bearer ey"));
        let b = got.iter().find(|r| r.path == "/b").unwrap();
        assert!(b.headers["authorization"].to_str().unwrap().starts_with("ey"));
        let g = got.iter().find(|r| r.path == "/g").unwrap();
        assert_eq!(g.headers["authorization"], GENERIC_SECRET);
        app.stop().await;
    })
    .await;
}

/// A request of the bad-input table.
enum Body {
    Json(Value),
    Raw(&'static str),
    Bytes(Vec<u8>),
}

#[tokio::test]
async fn bad_input_is_refused_with_a_4xx_naming_it_and_stores_nothing() {
    bounded(async {
        const MAX_BODY: u64 = 8 * 1024;
        let app = TestApp::spawn_with(|c| {
            c.concurrency = 0;
            c.egress_allow.clear();
            c.max_body = MAX_BODY;
            c.media_root = vec![std::env::temp_dir()];
        })
        .await;
        // A finished job (no callbacks) for the "second result" case.
        assert_eq!(app.post("/v1/jobs", json!({"jobId": "done"})).await.status(), 201);
        assert_eq!(app.post("/v1/jobs/done/result", sample_result()).await.status(), 200);
        assert_eq!(app.post("/v1/jobs", json!({"jobId": "open"})).await.status(), 201);
        let media_job = json!({"jobId": "media-job", "publish": {"callbacks": [{"url": "https://example.org/m", "type": "media"}]}});
        assert_eq!(app.post("/v1/jobs", media_job).await.status(), 201);

        let cb = |extra: Value| {
            let mut c = json!({"url": "https://example.org/cb"});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            Body::Json(json!({"publish": {"callbacks": [c]}}))
        };
        let url = |u: &str| Body::Json(json!({"publish": {"callbacks": [{"url": u}]}}));
        let generic = |v: Value| Body::Json(v);
        let big = "x".repeat(MAX_BODY as usize + 1);
        let jobs = "/v1/jobs";
        let result = "/v1/jobs/open/result";
        let deliveries = "/v1/deliveries";
        let g_url = "https://example.org/g";

        let cases: Vec<(&str, Body, u16, &str)> = vec![
            // Malformed JSON and wrong shapes.
            (jobs, Body::Raw("{"), 400, "invalid_json"),
            (jobs, Body::Raw("{\"jobId\": \"a\",}"), 400, "invalid_json"),
            (jobs, Body::Raw(""), 400, "invalid_json"),
            (jobs, Body::Raw("not json"), 400, "invalid_json"),
            (jobs, Body::Bytes(vec![b'{', b'"', 0xff, b'"', b':', b'1', b'}']), 400, "invalid_json"),
            (jobs, Body::Json(json!([])), 400, "invalid_field"),
            (jobs, Body::Json(json!("job")), 400, "invalid_field"),
            (jobs, Body::Json(json!({"jobId": 5})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"jobId": ""})), 400, "invalid_job_id"),
            (jobs, Body::Json(json!({"jobId": "a b"})), 400, "invalid_job_id"),
            (jobs, Body::Json(json!({"jobId": "a/b"})), 400, "invalid_job_id"),
            (jobs, Body::Json(json!({"jobId": "x".repeat(129)})), 400, "invalid_job_id"),
            (jobs, Body::Json(json!({"publish": []})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": {}}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": [{}]}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": ["https://example.org/"]}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": [["https://example.org/"]]}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": [{"url": "https://example.org/", "auth": ["jwt", "s", "Bearer"]}]}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callbacks": [{"url": 7}]}})), 400, "invalid_field"),
            (jobs, cb(json!({"headers": ["x"]})), 400, "invalid_field"),
            (jobs, cb(json!({"headers": {"x-n": 5}})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"metadata": {"nul": "a\u{0}b"}})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "jwt", "secret": "a\u{0}b"}})), 400, "invalid_field"),
            // Unknown enum values.
            (jobs, cb(json!({"method": "GET"})), 400, "invalid_field"),
            (jobs, cb(json!({"method": "post"})), 400, "invalid_field"),
            (jobs, cb(json!({"type": "video"})), 400, "invalid_field"),
            (jobs, cb(json!({"type": "transcript", "format": "docx"})), 400, "invalid_field"),
            (jobs, cb(json!({"include": ["transcript", "everything"]})), 400, "invalid_field"),
            (jobs, cb(json!({"include": "transcript"})), 400, "invalid_field"),
            (jobs, cb(json!({"type": "media", "stream": "stereo"})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "basic", "secret": "s"}})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "jwt"}})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "jwt", "secret": ""}})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "jwt", "secret": "s", "scheme": "Two Words"}})), 400, "invalid_field"),
            // Unknown fields, at every level.
            (jobs, Body::Json(json!({"jobid": "a"})), 400, "invalid_field"),
            (jobs, Body::Json(json!({"publish": {"callback": []}})), 400, "invalid_field"),
            (jobs, cb(json!({"uri": "https://example.org/"})), 400, "invalid_field"),
            (jobs, cb(json!({"auth": {"type": "jwt", "secret": "s", "alg": "none"}})), 400, "invalid_field"),
            // Options on the wrong callback type.
            (jobs, cb(json!({"format": "srt"})), 400, "invalid_field"),
            (jobs, cb(json!({"type": "media", "format": "srt"})), 400, "invalid_field"),
            (jobs, cb(json!({"type": "transcript", "include": ["metadata"]})), 400, "invalid_field"),
            (jobs, cb(json!({"stream": "original"})), 400, "invalid_field"),
            // URLs.
            (jobs, url("ftp://example.org/cb"), 400, "invalid_url"),
            (jobs, url("file:///etc/passwd"), 400, "invalid_url"),
            (jobs, url("javascript:alert(1)"), 400, "invalid_url"),
            (jobs, url("example.org/cb"), 400, "invalid_url"),
            (jobs, url("http://"), 400, "invalid_url"),
            (jobs, url("https:///path"), 400, "invalid_url"),
            (jobs, url(""), 400, "invalid_url"),
            (jobs, url("http://user:pw@example.org/"), 400, "invalid_url"),
            (jobs, url("http:example.org"), 400, "invalid_url"),
            (jobs, url("https://example.org/a\nb"), 400, "invalid_url"),
            (jobs, url("https://example.org/\u{0}"), 400, "invalid_url"),
            // Literal addresses on the deny list.
            (jobs, url("http://10.0.0.1/"), 400, "blocked_destination"),
            (jobs, url("http://169.254.169.254/latest/meta-data/"), 400, "blocked_destination"),
            (jobs, url("http://[::1]/"), 400, "blocked_destination"),
            (jobs, url("http://2130706433/"), 400, "blocked_destination"),
            (jobs, url("http://127.1/"), 400, "blocked_destination"),
            (jobs, url("http://0x7f000001/"), 400, "blocked_destination"),
            (jobs, url("http://[::ffff:127.0.0.1]/"), 400, "blocked_destination"),
            (jobs, url("http://127.0.0.1:8080/"), 400, "blocked_destination"),
            (jobs, url("http://192.168.1.1/"), 400, "blocked_destination"),
            (jobs, url("http://[fd00::1]/"), 400, "blocked_destination"),
            (jobs, url("http://100.64.0.1/"), 400, "blocked_destination"),
            (jobs, url("http://0.0.0.0/"), 400, "blocked_destination"),
            // Headers that may not be set.
            (jobs, cb(json!({"headers": {"Host": "evil.example"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"Content-Length": "5"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"content-type": "text/plain"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"webhook-signature": "v1,x"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"Webhook-Id": "x"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"webhook-timestamp": "1"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"Transfer-Encoding": "chunked"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"authorization": "x"}, "auth": {"type": "jwt", "secret": "s"}})), 400, "reserved_header"),
            (jobs, cb(json!({"headers": {"bad header": "x"}})), 400, "invalid_header"),
            (jobs, cb(json!({"headers": {"X-Key": "a", "x-key": "b"}})), 400, "invalid_header"),
            (jobs, cb(json!({"headers": {"x-ok": "line\nbreak"}})), 400, "invalid_header"),
            // Too many callbacks, too large a body.
            (jobs, Body::Json(json!({"publish": {"callbacks": vec![json!({"url": "https://example.org/"}); 33]}})), 400, "too_many_callbacks"),
            // The ?webhook= shorthand.
            ("/v1/jobs?webhook=http://10.0.0.1/", Body::Raw(""), 400, "blocked_destination"),
            ("/v1/jobs?webhook=ftp://example.org/", Body::Json(json!({"jobId": "w"})), 400, "invalid_url"),
            ("/v1/jobs?webhook=", Body::Raw(""), 400, "invalid_url"),
            ("/v1/jobs?webhook=https://a.example/&webhook=https://b.example/", Body::Raw(""), 400, "invalid_query"),
            ("/v1/jobs?hook=https://a.example/", Body::Raw(""), 400, "invalid_query"),
            (jobs, Body::Json(json!({"metadata": {"big": big}})), 413, "body_too_large"),
            (result, Body::Json(json!({"status": "finished", "result": {"knowledge": {"big": big}}})), 413, "body_too_large"),
            (deliveries, generic(json!({"url": g_url, "body": big})), 413, "body_too_large"),
            // Results.
            (result, Body::Raw("{"), 400, "invalid_json"),
            (result, Body::Raw(""), 400, "invalid_json"),
            (result, Body::Json(json!({})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "done"})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "extra": 1})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"transcript": {"words": [{"w": "x"}]}}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"transcript": {"words": [{"s": -1, "e": 2, "w": "x"}]}}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"transkript": {}}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"transcript": {"words": [{"s": 9, "e": 2, "w": "x"}]}}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"transcript": {"words": [[0, 1, 2, 0.5, "x"]]}}})), 400, "invalid_field"),
            (result, Body::Json(json!([])), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": []})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "error": {"code": "x", "message": "y"}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "failed"})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "failed", "error": {"code": "x"}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "failed", "error": {"code": "x", "message": "y"}, "result": {}})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "streams": [{"streamName": "stereo"}]})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "streams": [{"streamName": "original", "size": 1}]})), 400, "invalid_field"),
            (result, Body::Json(json!({"status": "finished", "result": {"knowledge": {"nul": "\u{0}"}}})), 400, "invalid_field"),
            ("/v1/jobs/never-seen/result", Body::Json(sample_result()), 404, "job_not_found"),
            ("/v1/jobs/%FF/result", Body::Json(sample_result()), 404, "job_not_found"),
            ("/v1/jobs/media-job/result", Body::Json(sample_result()), 400, "missing_stream"),
            (
                "/v1/jobs/media-job/result",
                Body::Json(json!({"status": "finished", "streams": [{"streamName": "original", "path": "/nonexistent/a.mp3"}]})),
                400,
                "missing_stream",
            ),
            ("/v1/jobs/done/result", Body::Json(sample_result()), 409, "result_exists"),
            ("/v1/jobs/done/result", Body::Json(json!({"status": "failed", "error": {"code": "x", "message": "y"}})), 409, "result_exists"),
            // Generic deliveries.
            (deliveries, generic(json!({"url": g_url})), 400, "invalid_body"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "json": {}})), 400, "invalid_body"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "bodyBase64": "YQ=="})), 400, "invalid_body"),
            (deliveries, generic(json!({"url": g_url, "bodyBase64": "not base64!"})), 400, "invalid_body"),
            (deliveries, generic(json!({"url": g_url, "bodyBase64": 5})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": 5})), 400, "invalid_field"),
            (deliveries, generic(json!({"body": "a"})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "method": "DELETE"})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "bogus": true})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "contentType": ""})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "contentType": "a\nb"})), 400, "invalid_field"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "headers": {"Content-Type": "x/y"}})), 400, "reserved_header"),
            (deliveries, generic(json!({"url": g_url, "body": "a", "headers": {"webhook-signature": "v1,x"}})), 400, "reserved_header"),
            (deliveries, generic(json!({"url": "http://10.0.0.1/", "body": "a"})), 400, "blocked_destination"),
            (deliveries, generic(json!({"url": "http://169.254.169.254/", "body": "a"})), 400, "blocked_destination"),
            (deliveries, generic(json!({"url": "gopher://example.org/", "body": "a"})), 400, "invalid_url"),
            (deliveries, Body::Raw("[1,"), 400, "invalid_json"),
            (deliveries, Body::Json(json!([g_url, "POST"])), 400, "invalid_field"),
            (deliveries, Body::Raw(""), 400, "invalid_json"),
        ];

        let mut failures = Vec::new();
        for (i, (path, body, status, code)) in cases.into_iter().enumerate() {
            let before = app.table_counts().await;
            let request = app.http.post(app.url(path)).bearer_auth(TOKEN).header("content-type", "application/json");
            let (shown, request) = match body {
                Body::Json(v) => {
                    let s = v.to_string();
                    (s.chars().take(160).collect::<String>(), request.body(s))
                }
                Body::Raw(s) => (s.to_owned(), request.body(s)),
                Body::Bytes(b) => (format!("{b:?}"), request.body(b)),
            };
            let response = request.send().await.unwrap();
            let got = response.status().as_u16();
            let text = response.text().await.unwrap();
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            let case = format!("case {i}: POST {path} {shown}");
            match parsed {
                Some(body) if got == status => {
                    let got_code = error_code(&body);
                    if got_code != code {
                        failures.push(format!("{case}: code {got_code}, expected {code}: {body}"));
                    }
                }
                _ => failures.push(format!("{case}: {got} {text}, expected {status} {code}")),
            }
            let after = app.table_counts().await;
            if after != before {
                failures.push(format!("{case}: stored something: {before:?} -> {after:?}"));
            }
        }
        assert!(failures.is_empty(), "{} bad-input cases failed:\n{}", failures.len(), failures.join("\n"));
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_result_and_its_deliveries_commit_together() {
    bounded(async {
        let app = api_only().await;
        let job = json!({"jobId": "atomic", "publish": {"callbacks": [
            {"url": "https://example.org/a"},
            {"url": "https://example.org/t", "type": "transcript", "format": "webvtt"}
        ]}});
        assert_eq!(app.post("/v1/jobs", job).await.status(), 201);
        sqlx::raw_sql(
            "CREATE FUNCTION postback.refuse_payload() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'payload insert refused by test'; END $$;
             CREATE TRIGGER refuse_payload BEFORE INSERT ON postback.payloads
               FOR EACH ROW EXECUTE FUNCTION postback.refuse_payload();",
        )
        .execute(&app.pool)
        .await
        .unwrap();
        let response = app.post("/v1/jobs/atomic/result", sample_result()).await;
        assert!(response.status().is_server_error(), "{}", response.status());
        let body = expect_error(response, 500, "internal_error").await;
        assert!(
            !body.to_string().contains("refused by test"),
            "no database internals leak: {body}"
        );
        let view = app.get_json("/v1/jobs/atomic").await;
        assert_eq!(view["status"], "InProgress", "{view}");
        assert!(view.get("result").is_none());
        let counts = app.table_counts().await;
        assert_eq!(
            counts,
            vec![
                ("jobs".into(), 1),
                ("deliveries".into(), 0),
                ("payloads".into(), 0),
                ("attempts".into(), 0)
            ]
        );

        sqlx::raw_sql("DROP TRIGGER refuse_payload ON postback.payloads")
            .execute(&app.pool)
            .await
            .unwrap();
        let (status, view) =
            json_of(app.post("/v1/jobs/atomic/result", sample_result()).await).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["status"], "Completed");
        let counts = app.table_counts().await;
        assert_eq!(counts[1].1, 2);
        assert_eq!(counts[2].1, 2);
        app.stop().await;
    })
    .await;
}

/// `docs/openapi.json`, kept in the repository.
fn committed_openapi_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("openapi.json")
}

#[tokio::test]
async fn openapi_document_is_served_matches_the_repository_and_lists_every_route() {
    bounded(async {
        let app = api_only().await;
        let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let served_text = response.text().await.unwrap();
        let served: Value = serde_json::from_str(&served_text).unwrap();

        // Every documented route is served (not a 404 or 405 fallback).
        for (method, path) in postback::api::routes() {
            let concrete = path
                .replace("{jobId}", "probe-job")
                .replace("{deliveryId}", "0190b6a2-0000-7000-8000-000000000000");
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let response = app
                .http
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            // The fallback's answer, not any text (the document itself lists
            // `not_found` among the error codes).
            let fallback = serde_json::from_str::<Value>(&text)
                .is_ok_and(|v| v["error"]["code"] == "not_found");
            assert!(
                status != 405 && !fallback,
                "{method} {concrete} is documented but not served: {status} {text}"
            );
        }
        app.stop().await;

        // It is the document the code generates.
        let generated: Value = serde_json::from_str(&postback::api::openapi_json()).unwrap();
        assert_eq!(served, generated);

        // OpenAPI 3 with the basics every reader needs.
        assert!(
            served["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            served["openapi"]
        );
        let spec = oas3::from_json(&served_text)
            .unwrap_or_else(|e| panic!("not an OpenAPI 3.1 document: {e}"));
        assert!(spec.openapi.starts_with("3."));
        assert_eq!(
            spec.paths.as_ref().map(|p| p.len()),
            served["paths"].as_object().map(|p| p.len())
        );
        assert!(served["info"]["title"].is_string());
        assert!(served["info"]["version"].is_string());
        assert!(
            served["components"]["securitySchemes"]["bearer"].is_object(),
            "bearer auth is declared"
        );

        // Every route of the router is in it, and nothing else.
        let mut documented = BTreeSet::new();
        for (path, item) in served["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routes: BTreeSet<(String, String)> = postback::api::routes()
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p))
            .collect();
        assert_eq!(documented, routes);
        for (method, path) in V1_ROUTES {
            let template = path
                .replace("some-job", "{jobId}")
                .replace("0190b6a2-0000-7000-8000-000000000000", "{deliveryId}");
            assert!(
                routes.contains(&(method.to_string(), template.clone())),
                "{method} {template}"
            );
        }
        // Every $ref resolves.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        if k == "$ref" {
                            out.extend(v.as_str().map(str::to_owned));
                        } else {
                            refs(v, out);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&served, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external ref {r}"));
            assert!(served.pointer(pointer).is_some(), "dangling $ref {r}");
        }

        // The committed copy cannot drift.
        let path = committed_openapi_path();
        if std::env::var_os("POSTBACK_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, postback::api::openapi_json()).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let committed: Value = serde_json::from_str(&committed).unwrap_or(Value::Null);
        assert!(
            committed == served,
            "{} is not the document the code generates; regenerate it with \
             `POSTBACK_BLESS=1 cargo test --test it openapi` and commit it",
            path.display()
        );
    })
    .await;
}

#[tokio::test]
async fn a_finished_result_without_output_still_shows_its_stream_locations() {
    bounded(async {
        let app = api_only().await;
        assert_eq!(app.post("/v1/jobs", json!({"jobId": "bare"})).await.status(), 201);
        let result = json!({"status": "finished", "streams": [
            {"streamName": "original", "path": "/srv/secret/location.mp3", "location": "https://media.example.org/a.mp3"},
            {"streamName": "redacted-audio", "path": "/srv/secret/other.mp3"}
        ]});
        let (status, view) = json_of(app.post("/v1/jobs/bare/result", result).await).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(
            view["result"],
            json!({"streams": [{"streamName": "original", "streamLocation": "https://media.example.org/a.mp3"}]})
        );
        assert!(!view.to_string().contains("/srv/secret"), "{view}");
        assert_eq!(app.get_json("/v1/jobs/bare").await, view);
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn concurrent_creates_and_results_resolve_to_one_job_and_one_result() {
    bounded(async {
        let app = api_only().await;
        let job = json!({"jobId": "raced", "publish": {"callbacks": [
            {"url": "https://example.org/a"}, {"url": "https://example.org/b", "type": "transcript"}
        ]}});
        let creates = (0..12).map(|_| app.post("/v1/jobs", job.clone()));
        let mut statuses = Vec::new();
        let mut views = BTreeSet::new();
        for response in futures_util::future::join_all(creates).await {
            let (status, view) = json_of(response).await;
            statuses.push(status);
            views.insert(view.to_string());
        }
        statuses.sort();
        assert_eq!(statuses[0], 200);
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 201),
            "{statuses:?}"
        );
        assert_eq!(views.len(), 1, "every answer shows the same job: {views:?}");

        let results = (0..8).map(|_| app.post("/v1/jobs/raced/result", sample_result()));
        let mut statuses = Vec::new();
        for response in futures_util::future::join_all(results).await {
            let (status, body) = json_of(response).await;
            if status == 409 {
                assert_eq!(error_code(&body), "result_exists");
            }
            statuses.push(status);
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 409).count(),
            7,
            "{statuses:?}"
        );
        let counts = app.table_counts().await;
        assert_eq!(counts[0].1, 1);
        assert_eq!(
            counts[1].1, 2,
            "one delivery per callback, once: {counts:?}"
        );
        app.stop().await;
    })
    .await;
}
