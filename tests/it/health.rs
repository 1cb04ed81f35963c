//! Endpoint health (SPEC §3): `Retry-After` on 429/503 sets the earliest
//! next attempt, `410 Gone` ends a delivery at once, and circuit breakers
//! shared through PostgreSQL hold a dead origin's deliveries without
//! attempts, probe it once per cooldown, and release them when it recovers.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::helpers::{Answer, Receiver, TestApp};

async fn deliver(app: &TestApp, url: String) -> String {
    let response = app
        .post("/v1/deliveries", json!({"url": url, "json": {}}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["deliveryId"].as_str().unwrap().to_owned()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn a_410_ends_the_delivery_at_once_as_failed_gone() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.always(Answer::status(410));
    let id = deliver(&app, rx.url("/gone")).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "failed")
        .await;
    assert_eq!(view["attemptCount"], 1, "{view:#}");
    assert_eq!(view["attempts"][0]["statusCode"], 410);
    assert_eq!(view["attempts"][0]["error"], "gone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1, "no retry after 410");
}

#[tokio::test]
async fn retry_after_in_seconds_replaces_the_immediate_retries() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.script([Answer::status(429).header("retry-after", "2")]);
    rx.always(Answer::ok());
    let id = deliver(&app, rx.url("/limited")).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4),
        "the retry waited {gap:?}, Retry-After said 2 s (without it: at once)"
    );
    app.wait_delivery(&id, Duration::from_secs(5), |v| v["status"] == "delivered")
        .await;
}

#[tokio::test]
async fn retry_after_as_an_http_date_on_a_503() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    rx.script([Answer::status(503).header("retry-after", leak(date))]);
    rx.always(Answer::ok());
    deliver(&app, rx.url("/busy")).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    // The date has one-second resolution: between 2 and 3 s from now.
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_secs(5),
        "the retry waited {gap:?} for an HTTP date 3 s ahead"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_cap_waits_only_the_cap() {
    // The test schedule's cap (POSTBACK_RETRY_MAX_DELAY) is 4 s.
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.script([Answer::status(429).header("retry-after", "3600")]);
    rx.always(Answer::ok());
    let id = deliver(&app, rx.url("/capped")).await;
    let started = Instant::now();
    let view = app
        .wait_delivery(&id, Duration::from_secs(5), |v| {
            v["attemptCount"] == 1 && v["status"] == "pending"
        })
        .await;
    let next = time::OffsetDateTime::parse(
        view["nextAttemptTime"].as_str().expect("scheduled"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let wait = next - time::OffsetDateTime::now_utc();
    assert!(
        wait <= time::Duration::seconds(4) && wait > time::Duration::seconds(1),
        "next attempt in {wait}, expected the 4 s cap"
    );
    app.wait_delivery(&id, Duration::from_secs(8), |v| v["status"] == "delivered")
        .await;
    assert!(started.elapsed() >= Duration::from_secs(3));
}
