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

async fn destinations(app: &TestApp, query: &str) -> Vec<Value> {
    let body = app.get_json(&format!("/v1/destinations{query}")).await;
    body["destinations"].as_array().cloned().unwrap_or_default()
}

/// Polls until the breaker of `rx`'s origin is in `state`.
async fn wait_breaker(app: &TestApp, rx: &Receiver, state: &str, limit: Duration) -> Value {
    let origin = rx.url("").trim_end_matches('/').to_owned();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(d) = destinations(app, "")
            .await
            .into_iter()
            .find(|d| d["origin"] == origin.as_str() && d["state"] == state)
        {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "breaker of {origin} never {state}: {:?}",
            destinations(app, "").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn breaker_config(c: &mut postback::Config) {
    c.breaker_failures = 3;
    c.breaker_cooldown = Duration::from_secs(1);
    c.retry_first_delay = Duration::from_secs(1);
    c.retry_max_delay = Duration::from_secs(4);
    c.retry_give_up = Duration::from_secs(120);
}

#[tokio::test]
async fn a_dead_origin_is_held_probed_once_per_cooldown_and_released_on_recovery() {
    let events = Receiver::start().await;
    let events_url = events.url("/events");
    let app = TestApp::spawn_with(|c| {
        breaker_config(c);
        c.operator_webhook = Some(events_url.parse().unwrap());
    })
    .await;
    let dead = Receiver::start().await;
    dead.always(Answer::status(500));
    let healthy = Receiver::start().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(deliver(&app, dead.url("/d")).await);
    }
    let opened = wait_breaker(&app, &dead, "open", Duration::from_secs(10)).await;
    assert!(
        opened["consecutiveFailures"].as_i64().unwrap() >= 3,
        "{opened}"
    );
    assert!(opened["nextProbeTime"].is_string() && opened["openedAt"].is_string());
    // In-flight attempts finish; from then on only probes reach the origin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_open = dead.received().len();
    // Healthy origins keep flowing while the breaker is open.
    let mut healthy_latency = Vec::new();
    for _ in 0..10 {
        let sent = Instant::now();
        deliver(&app, healthy.url("/h")).await;
        healthy
            .wait_for(healthy_latency.len() + 1, Duration::from_secs(5))
            .await;
        healthy_latency.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let window = dead.received()[at_open..].to_vec();
    // About 3.3 s open with cooldowns 1 s then 2 s: one or two probes, each
    // alone (no second attempt within the cooldown).
    assert!(
        !window.is_empty() && window.len() <= 2,
        "{} attempts reached the dead origin while its breaker was open (expected 1-2 probes)",
        window.len()
    );
    for pair in window.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(900),
            "probes too close"
        );
    }
    healthy_latency.sort();
    assert!(
        healthy_latency[9] < Duration::from_millis(500),
        "healthy origin slowed down: {healthy_latency:?}"
    );
    let listed = destinations(&app, "?state=open").await;
    let half = destinations(&app, "?state=half_open").await;
    assert_eq!(listed.len() + half.len(), 1, "{listed:?} {half:?}");

    // The origin recovers: the next probe succeeds, and everything it held
    // arrives within a second of it.
    dead.always(Answer::ok());
    let first_ok = loop {
        let got = dead.received();
        if got.len() > at_open + window.len() {
            break got[at_open + window.len()].at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for id in &ids {
        app.wait_delivery(id, Duration::from_secs(10), |v| v["status"] == "delivered")
            .await;
    }
    let last = dead.received().iter().map(|r| r.at).max().unwrap();
    assert!(
        last - first_ok < Duration::from_millis(1500),
        "held deliveries took {:?} after the successful probe",
        last - first_ok
    );
    wait_breaker(&app, &dead, "closed", Duration::from_secs(5)).await;

    // The operator heard about both transitions, signed like any callback.
    let got = events.wait_for(2, Duration::from_secs(10)).await;
    let kinds: Vec<String> = got
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        kinds.contains(&"destination.opened".to_owned()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"destination.closed".to_owned()),
        "{kinds:?}"
    );
    assert!(got
        .iter()
        .all(|r| r.headers.contains_key("webhook-signature")));
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("postback_operator_events_total{type=\"destination.opened\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("operator_events"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn two_workers_share_one_breaker_and_never_probe_together() {
    let app = TestApp::spawn_with(breaker_config).await;
    let mut worker_config = app.config.clone();
    worker_config.listen = "127.0.0.1:0".parse().unwrap();
    worker_config.database_url = Some(app.database_url.clone());
    let worker = postback::runtime::Process::start(worker_config, postback::runtime::Role::Worker)
        .await
        .expect("worker starts");
    let stop = tokio_util::sync::CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(stop.clone()));
    let dead = Receiver::start().await;
    dead.always(Answer::status(503));
    for _ in 0..20 {
        deliver(&app, dead.url("/d")).await;
    }
    wait_breaker(&app, &dead, "open", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_open = dead.received().len();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let window = dead.received()[at_open..].to_vec();
    assert!(
        !window.is_empty() && window.len() <= 2,
        "{} attempts while open across two processes (expected 1-2 probes)",
        window.len()
    );
    for pair in window.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(900),
            "two probes together"
        );
    }
    stop.cancel();
    worker_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn destinations_are_listed_and_reset_by_hand() {
    let app = TestApp::spawn_with(|c| {
        breaker_config(c);
        c.breaker_cooldown = Duration::from_secs(60);
    })
    .await;
    let dead = Receiver::start().await;
    dead.always(Answer::status(500));
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(deliver(&app, dead.url("/d")).await);
    }
    wait_breaker(&app, &dead, "open", Duration::from_secs(10)).await;
    let origin = dead.url("").trim_end_matches('/').to_owned();
    // Bad input.
    let bad = app.get("/v1/destinations?state=broken").await;
    assert_eq!(bad.status(), 400);
    for (body, status) in [
        (json!({"origin": "not a url"}), 400),
        (json!({"origin": "ftp://x"}), 400),
        (json!({"origin": "https://never-failed.example:443"}), 404),
    ] {
        let r = app.post("/v1/destinations/reset", body.clone()).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
    }
    // The receiver is back; an operator closes the breaker without waiting
    // a minute for the probe, and every held delivery goes at once.
    dead.always(Answer::ok());
    let before = Instant::now();
    let r = app
        .post("/v1/destinations/reset", json!({"origin": origin}))
        .await;
    assert_eq!(r.status(), 200);
    for id in &ids {
        app.wait_delivery(id, Duration::from_secs(5), |v| v["status"] == "delivered")
            .await;
    }
    assert!(
        before.elapsed() < Duration::from_secs(3),
        "{:?}",
        before.elapsed()
    );
    let closed = destinations(&app, "?state=closed").await;
    assert!(
        closed.iter().any(|d| d["origin"] == origin.as_str()),
        "{closed:?}"
    );
    assert!(destinations(&app, "?state=open").await.is_empty());
}

/// A server whose breakers open after 3 failures and stay open a minute,
/// with a 4 s give-up horizon, and a receiver answering 500.
async fn short_horizon_and_a_dead_receiver() -> (TestApp, Receiver) {
    let app = TestApp::spawn_with(|c| {
        breaker_config(c);
        c.breaker_cooldown = Duration::from_secs(60);
        c.retry_give_up = Duration::from_secs(4);
    })
    .await;
    let dead = Receiver::start().await;
    dead.always(Answer::status(500));
    (app, dead)
}

#[tokio::test]
async fn the_last_attempt_at_the_horizon_goes_even_while_the_breaker_is_open() {
    let (app, dead) = short_horizon_and_a_dead_receiver().await;
    let started = Instant::now();
    let id = deliver(&app, dead.url("/h")).await;
    for _ in 0..3 {
        deliver(&app, dead.url("/other")).await;
    }
    wait_breaker(&app, &dead, "open", Duration::from_secs(10)).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(12), |v| v["status"] == "failed")
        .await;
    let last = view["attempts"].as_array().unwrap().last().unwrap().clone();
    let first = view["attempts"][0]["startedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let gap = parse(last["startedAt"].as_str().unwrap()) - parse(&first);
    assert!(
        gap >= time::Duration::milliseconds(3500) && gap <= time::Duration::seconds(6),
        "the last attempt was {gap} after the first; the horizon is 4 s: {view:#}"
    );
    assert!(started.elapsed() < Duration::from_secs(12));
}

/// A delivery queued while its origin's breaker is open never had a first
/// attempt: the breaker stands in for it, and it gives up the horizon after
/// it was queued (once, at the horizon), not a second horizon after a first
/// attempt the breaker put off (the soak measured twice the horizon).
#[tokio::test]
async fn a_delivery_born_held_gives_up_one_horizon_after_it_was_queued() {
    let (app, dead) = short_horizon_and_a_dead_receiver().await;
    for _ in 0..3 {
        deliver(&app, dead.url("/opener")).await;
    }
    wait_breaker(&app, &dead, "open", Duration::from_secs(10)).await;
    let queued = Instant::now();
    let id = deliver(&app, dead.url("/late")).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(12), |v| v["status"] == "failed")
        .await;
    let took = queued.elapsed();
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(7),
        "failed {took:?} after it was queued; the horizon is 4 s: {view:#}"
    );
    assert_eq!(view["attemptCount"], 1, "{view:#}");
}

/// Store-level fixture: a migrated database of its own (no engine runs on
/// it) with `n` deliveries queued to one origin (`127.0.0.1:9`, nothing
/// listens); the pool, their ids and that origin.
async fn queued_to_one_origin(path: &str, n: usize) -> (sqlx::PgPool, Vec<uuid::Uuid>, String) {
    let url = crate::helpers::fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    postback::migrate(&pool).await.unwrap();
    let lib = postback::Postback::new(&crate::helpers::test_config(&url)).unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let delivery = postback::NewDelivery {
            url: format!("http://127.0.0.1:9{path}"),
            method: Default::default(),
            headers: Default::default(),
            content_type: None,
            customer_id: None,
            body: Some("x".into()),
            body_base64: None,
            json: None,
        };
        ids.push(lib.enqueue(&pool, delivery).await.unwrap());
    }
    let origin: String = sqlx::query_scalar("SELECT DISTINCT origin FROM postback.deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    (pool, ids, origin)
}

/// Store-level: a breaker opened by three failures, its probe let go, then
/// a late failure of an attempt that started before it opened. The probe
/// must stay due (before the fix it was held again, and the breaker stayed
/// half open with no probe out until the deliveries' horizon).
#[tokio::test]
async fn a_late_failure_does_not_hold_the_probe_again() {
    use postback::store::destinations::{self, OriginOutcomes};
    use postback::Schema;

    let (pool, _ids, origin) = queued_to_one_origin("/late", 3).await;
    let schema = Schema::default();
    let fail = |ids: Vec<uuid::Uuid>| OriginOutcomes {
        origin: origin.clone(),
        succeeded: false,
        trailing_failures: ids.len() as i32,
        last_error: Some("http_error".into()),
        failed_ids: ids,
    };
    let early: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    let (cooldown, max, give_up) = (
        Duration::from_secs(60),
        Duration::from_secs(240),
        Duration::from_secs(3600),
    );
    let mut conn = pool.acquire().await.unwrap();
    let opened = destinations::record(
        &mut conn,
        &schema,
        &[fail(early)],
        3,
        cooldown,
        max,
        give_up,
    )
    .await
    .unwrap();
    assert_eq!(opened.len(), 1, "{opened:?}");
    let held = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM postback.deliveries WHERE held_due IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(held(pool.clone()).await, 3);
    // The cooldown ends; one probe goes.
    sqlx::query("UPDATE postback.destinations SET next_probe_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let probed = destinations::release_probes(&mut conn, &schema)
        .await
        .unwrap();
    assert_eq!(probed, vec![origin.clone()]);
    assert_eq!(held(pool.clone()).await, 2);
    // A failure of an attempt from before the opening arrives now: it
    // neither re-opens the breaker nor holds the probe.
    let late = [fail(vec![uuid::Uuid::now_v7()])];
    let t = destinations::record(&mut conn, &schema, &late, 3, cooldown, max, give_up)
        .await
        .unwrap();
    assert!(t.is_empty(), "{t:?}");
    assert_eq!(
        held(pool.clone()).await,
        2,
        "the late failure held the probe again"
    );
    let due_now: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postback.deliveries WHERE held_due IS NULL AND next_attempt_at <= now()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(due_now, 1, "the probe is not due");
    // The probe's own failure re-opens it with the cooldown doubled and
    // holds the probe's delivery again.
    let probe: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM postback.deliveries WHERE held_due IS NULL AND next_attempt_at <= now()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let t = destinations::record(
        &mut conn,
        &schema,
        &[fail(vec![probe])],
        3,
        cooldown,
        max,
        give_up,
    )
    .await
    .unwrap();
    assert!(
        matches!(
            &t[..],
            [destinations::Transition::Opened { reopened: true, .. }]
        ),
        "{t:?}"
    );
    assert_eq!(held(pool.clone()).await, 3);
    let cooldown_secs: f64 = sqlx::query_scalar("SELECT cooldown_secs FROM postback.destinations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(cooldown_secs, 120.0);
}

/// Store-level: an immediate retry of an origin whose breaker is open is
/// written held by the completion itself (before, it was written due and
/// held a moment later, and a claim in between sent it: the soak saw most
/// of a dead host's deliveries get a third attempt after the breaker had
/// opened). So is a failed probe's retry: written due, it was claimed in
/// the moment before its breaker re-opened.
#[tokio::test]
async fn a_retry_to_an_open_origin_is_written_held_the_probes_too() {
    use postback::queue::claim::{self, Completion};
    use postback::state::{DeliveryKind, DeliveryState};

    let (pool, ids, origin) = queued_to_one_origin("/open", 2).await;
    let lease = uuid::Uuid::now_v7();
    // Both are in flight (leased); the breaker opens with the second as its
    // probe.
    sqlx::query("UPDATE postback.deliveries SET state = 'delivering', lease = $1")
        .bind(lease)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO postback.destinations (origin, state, consecutive_failures, opened_at,
                                            cooldown_secs, next_probe_at, probing_since, probe_id)
         VALUES ($1, 'open', 10, now(), 60, now() + interval '1 minute', now(), $2)",
    )
    .bind(&origin)
    .bind(ids[1])
    .execute(&pool)
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let retry = |id| Completion {
        id,
        lease,
        origin: Some(origin.clone()),
        kind: DeliveryKind::Generic,
        state: DeliveryState::Pending,
        next_attempt_at: Some(now),
        started_at: now,
        duration_ms: 3,
        status_code: Some(500),
        error: Some("http_error"),
        response_snippet: None,
    };
    let give_up = Duration::from_secs(3600);
    let written = claim::complete(
        &pool,
        &postback::Schema::default(),
        &[retry(ids[0]), retry(ids[1])],
        Duration::from_secs(7 * 86_400),
        Some(give_up),
    )
    .await
    .unwrap();
    assert_eq!(written, 2);
    let rows: Vec<(uuid::Uuid, bool, f64)> = sqlx::query_as(
        "SELECT id, held_due IS NOT NULL,
                extract(epoch FROM next_attempt_at - cycle_started_at)::float8
         FROM postback.deliveries",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (id, held, wait) in rows {
        let which = if id == ids[0] { "a retry" } else { "the probe" };
        assert!(held, "{which} was written due behind an open breaker");
        assert!(
            (wait - 3600.0).abs() < 1.0,
            "{which} held until {wait} s, not the horizon"
        );
    }
}
