//! Fault suite (issue 8): what Postback survives, each case asserting that
//! nothing accepted was lost and counting duplicates by `webhook-id` at a
//! loopback receiver. Postback runs as child processes of the real binary
//! (real signals, real exit codes) on a private PostgreSQL cluster per
//! case, so a case may stop the database without disturbing anything else.
//!
//! `kill -9` of a worker mid-drain and two workers draining one queue are
//! in `tests/it/delivery.rs`; this binary has:
//! - PostgreSQL stopped for 10 s in the middle of a drain;
//! - a receiver that never answers and one that trickles a byte a second,
//!   next to a healthy host that keeps its rate;
//! - SIGTERM during a drain (`worker`), and during intake (`serve`);
//! - four `postback worker` processes draining one queue.
//!
//! Run alone with `cargo test --test faults -- --nocapture` to see the
//! timings each case prints.

mod faults {
    pub mod harness;
}

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use faults::harness::{
    count_state, delivery_body, http, queue_many, run_case, wait_delivered, Postback, PrivatePg,
    TOKEN,
};
use postback_test_support::raw::{Misbehaviour, Raw};
use postback_test_support::recorder::Recorder;

/// Asserts a `503` with `{"error": {"code": "database_unavailable"}}`.
async fn assert_unavailable(response: reqwest::Response, what: &str) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 503, "{what} while the database is down: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(
        body["error"]["code"], "database_unavailable",
        "{what}: {body}"
    );
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

// ------------------------------------------------- 1. PostgreSQL goes away

#[test]
fn postgres_stopped_for_ten_seconds_mid_drain_loses_nothing_and_serve_keeps_running() {
    run_case(Duration::from_secs(120), postgres_outage());
}

/// What a client POSTing deliveries all through the outage (and its two
/// transitions) got: ids of 202s, and every other answer.
#[derive(Default)]
struct Hammer {
    accepted: Vec<String>,
    refused: usize,
    wrong: Vec<String>,
}

/// POSTs a delivery every few milliseconds until `stop`: every answer must
/// be a 202 or a 503 `database_unavailable`, whatever the database is doing.
async fn hammer_intake(
    base: String,
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> Hammer {
    let client = http();
    let mut got = Hammer::default();
    let mut i = 2_000_000;
    while !stop.is_cancelled() {
        i += 1;
        let sent = client
            .post(format!("{base}/v1/deliveries"))
            .bearer_auth(TOKEN)
            .json(&delivery_body(&url, i))
            .send()
            .await;
        match sent {
            Err(e) => got.wrong.push(format!("no answer: {e}")),
            Ok(r) if r.status() == 202 => {
                let v: Value = r.json().await.unwrap_or_default();
                match v["deliveryId"].as_str() {
                    Some(id) => got.accepted.push(id.to_owned()),
                    None => got.wrong.push(format!("202 without an id: {v}")),
                }
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let code = serde_json::from_str::<Value>(&text).unwrap_or_default()["error"]
                    ["code"]
                    .clone();
                if status == 503 && code == "database_unavailable" {
                    got.refused += 1;
                } else {
                    got.wrong.push(format!("{status}: {text}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got
}

async fn postgres_outage() {
    const N: usize = 3000;
    const DOWN: Duration = Duration::from_secs(10);
    let mut pg = PrivatePg::start("outage").await;
    let pool = pg.pool().await;
    // Slow enough answers (and few enough slots) that the drain takes a
    // few seconds, so the stop lands in its middle.
    let rx = Recorder::start("127.0.0.1:0", Duration::from_millis(10)).await;
    let (mut serve, base) = Postback::serve(
        "serve",
        &pg.url(),
        &[
            ("POSTBACK_ATTEMPT_TIMEOUT", "2s"),
            ("POSTBACK_CONCURRENCY", "8"),
            ("POSTBACK_PER_HOST_CONCURRENCY", "8"),
        ],
    )
    .await;
    let pid = serve.pid();
    let client = http();

    // Accepted through the API: 202 means committed.
    let started = Instant::now();
    let url = rx.url("/outage");
    let ids: Vec<String> = futures_util::stream::iter(0..N)
        .map(|i| {
            let (client, base, body) = (client.clone(), base.clone(), delivery_body(&url, i));
            async move {
                let response = client
                    .post(format!("{base}/v1/deliveries"))
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("POST /v1/deliveries");
                assert_eq!(response.status(), 202, "accepted before the outage");
                let accepted: Value = response.json().await.expect("json");
                accepted["deliveryId"]
                    .as_str()
                    .expect("deliveryId")
                    .to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let accepted_in = started.elapsed();
    // A job, to ask about while the database is gone.
    let job = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"publish": {"callbacks": [{"url": rx.url("/job")}]}}))
        .send()
        .await
        .expect("POST /v1/jobs");
    assert_eq!(job.status(), 201);
    let job: Value = job.json().await.expect("json");
    let job_id = job["jobId"].as_str().expect("jobId").to_owned();
    let before_stop = rx.total();
    assert!(
        before_stop + 500 < N,
        "{before_stop} of {N} already arrived before the stop: the drain is too fast for this case"
    );

    // Take the database away for DOWN while serve keeps running; a client
    // keeps sending deliveries all through it.
    let hammer_stop = tokio_util::sync::CancellationToken::new();
    let hammer = tokio::spawn(hammer_intake(
        base.clone(),
        url.clone(),
        hammer_stop.clone(),
    ));
    pg.stop_for_restart().await;
    let stopped = Instant::now();
    let at_stop = rx.total();
    let mut checks = 0;
    let some_id = &ids[0];
    while stopped.elapsed() < DOWN {
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("GET /readyz answers while the database is down");
        assert_unavailable(ready, "GET /readyz").await;
        let intake = client
            .post(format!("{base}/v1/deliveries"))
            .bearer_auth(TOKEN)
            .json(&delivery_body(&url, 999_999))
            .send()
            .await
            .expect("POST /v1/deliveries answers while the database is down");
        assert_unavailable(intake, "POST /v1/deliveries").await;
        // Every other route that needs the database, in turn.
        let (what, request) = match checks % 5 {
            0 => (
                "GET /v1/deliveries/{id}",
                client.get(format!("{base}/v1/deliveries/{some_id}")),
            ),
            1 => (
                "POST /v1/deliveries/{id}/replay",
                client.post(format!("{base}/v1/deliveries/{some_id}/replay")),
            ),
            2 => (
                "POST /v1/jobs",
                client
                    .post(format!("{base}/v1/jobs"))
                    .json(&serde_json::json!({"publish": {"callbacks": [{"url": url}]}})),
            ),
            3 => (
                "GET /v1/jobs/{id}",
                client.get(format!("{base}/v1/jobs/{job_id}")),
            ),
            _ => (
                "POST /v1/jobs/{id}/result",
                client
                    .post(format!("{base}/v1/jobs/{job_id}/result"))
                    .json(&serde_json::json!({"status": "finished", "result": {}})),
            ),
        };
        let answer = request.bearer_auth(TOKEN).send().await.expect(what);
        assert_unavailable(answer, what).await;
        checks += 1;
        serve.assert_running();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during_outage = rx.total() - at_stop;
    pg.start_again().await;
    let restarted = Instant::now();

    // Ready again, and taking deliveries again, without a restart.
    let ready_after = loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "/readyz not 200 within 15 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut after = Vec::new();
    let mut refused_after = 0;
    while after.len() < 5 {
        let response = client
            .post(format!("{base}/v1/deliveries"))
            .bearer_auth(TOKEN)
            .json(&delivery_body(&url, 1_000_000 + after.len()))
            .send()
            .await
            .expect("POST after the restart");
        match response.status().as_u16() {
            202 => {
                let v: Value = response.json().await.expect("json");
                after.push(v["deliveryId"].as_str().expect("id").to_owned());
            }
            503 => {
                refused_after += 1;
                assert!(
                    restarted.elapsed() < Duration::from_secs(15),
                    "intake still refused 15 s after the restart"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!(
                "POST after the restart answered {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    hammer_stop.cancel();
    let hammer = hammer.await.expect("hammer");
    assert!(
        hammer.wrong.is_empty(),
        "intake answers other than 202 or 503 database_unavailable around the outage: {:?}",
        hammer.wrong
    );
    assert!(hammer.refused > 0, "the hammer never saw the outage");

    // Everything accepted (before, during and after the outage) arrives,
    // and is recorded as delivered.
    let everything: Vec<String> = ids
        .iter()
        .chain(&after)
        .chain(&hammer.accepted)
        .cloned()
        .collect();
    rx.wait_ids(&everything, Duration::from_secs(60)).await;
    let drained_after_restart = restarted.elapsed();
    let all: HashSet<String> = everything.iter().cloned().collect();
    wait_delivered(&pool, &all, Duration::from_secs(15)).await;
    assert_eq!(serve.pid(), pid);
    serve.assert_running();

    let counts = rx.counts();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    assert_eq!(counts.len(), all.len(), "only accepted deliveries arrive");
    eprintln!(
        "outage: {N} accepted in {accepted_in:?}; {before_stop} arrived before the stop, \
         {during_outage} during the {DOWN:?} outage ({checks} rounds of readyz, intake and \
         other routes all answered 503 database_unavailable; a client posting throughout got \
         {} accepted and {} refused), /readyz 200 {ready_after:?} after the restart, \
         {refused_after} intake 503s after it, all arrived {drained_after_restart:?} after it; \
         {duplicates} duplicates",
        hammer.accepted.len(),
        hammer.refused
    );
    assert_eq!(duplicates, 0, "deliveries sent more than once");
    assert_eq!(count_state(&pool, "delivering").await, 0);

    serve.stop(Duration::from_secs(10)).await;
}

// --------------------------------------------- 2. hanging and slow receivers

#[test]
fn hanging_and_trickling_receivers_time_out_while_a_healthy_host_keeps_its_rate() {
    run_case(Duration::from_secs(90), slow_receivers());
}

async fn slow_receivers() {
    const HEALTHY: usize = 500;
    const BAD: usize = 50;
    const PER_HOST: usize = 4;
    let timeout = Duration::from_secs(1);
    let pg = PrivatePg::start("slow").await;
    let pool = pg.pool().await;
    let healthy = Recorder::start("127.0.0.1:0", Duration::ZERO).await;
    let hang = Raw::start("127.0.0.2:0", Misbehaviour::Hang).await;
    let trickle = Raw::start("127.0.0.3:0", Misbehaviour::Trickle).await;
    let mut worker = Postback::worker(
        "worker",
        &pg.url(),
        &[
            ("POSTBACK_ATTEMPT_TIMEOUT", "1s"),
            ("POSTBACK_CONCURRENCY", "32"),
            ("POSTBACK_PER_HOST_CONCURRENCY", "4"),
            // One attempt per bad delivery, so the case stays bounded.
            ("POSTBACK_RETRY_IMMEDIATE", "0"),
            ("POSTBACK_RETRY_FIRST_DELAY", "1h"),
            ("POSTBACK_RETRY_MAX_DELAY", "1h"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // LISTEN is up

    // The healthy host alone.
    let started = Instant::now();
    let alone = queue_many(&pool, &healthy.url("/alone"), HEALTHY).await;
    healthy.wait_ids(&alone, Duration::from_secs(30)).await;
    let alone_took = started.elapsed();
    wait_delivered(
        &pool,
        &alone.iter().cloned().collect(),
        Duration::from_secs(10),
    )
    .await;

    // The bad hosts fill their slots, then the healthy host again.
    let hang_ids = queue_many(&pool, &hang.url("/hang"), BAD).await;
    let mut trickle_ids = queue_many(&pool, &trickle.url("/trickle/head"), BAD / 2).await;
    trickle_ids.extend(queue_many(&pool, &trickle.url("/trickle/body"), BAD / 2).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while hang.held().len() < PER_HOST || trickle.held().len() < PER_HOST {
        assert!(Instant::now() < deadline, "the bad hosts got no attempts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mixed = queue_many(&pool, &healthy.url("/mixed"), HEALTHY).await;
    healthy.wait_ids(&mixed, Duration::from_secs(30)).await;
    let mixed_took = started.elapsed();
    // The bad hosts were busy during the healthy drain: count their attempts
    // held at some moment of it. (A snapshot at its end was 0 once on CI:
    // a host's four attempts start together and time out together, and the
    // drain ended in the instant between one wave and the next.)
    let finished = started + mixed_took;
    let bad_in_flight = |raw: &Raw| {
        raw.held()
            .iter()
            .filter(|(arrival, end)| *arrival < finished && end.is_none_or(|e| e > started))
            .count()
    };
    let (hang_busy, trickle_busy) = (bad_in_flight(&hang), bad_in_flight(&trickle));

    // A few waves of timeouts at each bad host.
    let bad: Vec<uuid::Uuid> = hang_ids
        .iter()
        .chain(&trickle_ids)
        .map(|i| i.parse().expect("uuid"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let attempts: Vec<(uuid::Uuid, i32, Option<i32>, Option<String>)> = loop {
        let rows: Vec<(uuid::Uuid, i32, Option<i32>, Option<String>)> = sqlx::query_as(
            "SELECT delivery_id, duration_ms, status_code, error FROM postback.attempts
             WHERE delivery_id = ANY($1)",
        )
        .bind(&bad)
        .fetch_all(&pool)
        .await
        .expect("attempts");
        if rows.len() >= 6 * PER_HOST {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "only {} attempts at the bad hosts recorded",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let durations: Vec<i32> = attempts.iter().map(|a| a.1).collect();
    eprintln!(
        "slow receivers: {HEALTHY} to the healthy host took {alone_took:?} alone and \
         {mixed_took:?} beside the bad hosts ({hang_busy} + {trickle_busy} bad-host attempts \
         held during it); bad-host attempt durations (ms): {durations:?}"
    );
    for (id, duration_ms, status, error) in &attempts {
        assert_eq!(error.as_deref(), Some("timeout"), "attempt of {id}");
        assert_eq!(*status, None, "attempt of {id} recorded a status");
        let ms = i64::from(*duration_ms);
        assert!(
            (995..=1000 + 700).contains(&ms),
            "attempt of {id} took {ms} ms with a {timeout:?} timeout"
        );
    }
    // Both kinds of trickle were tried.
    let hosts_tried: HashSet<bool> = attempts
        .iter()
        .map(|a| hang_ids.contains(&a.0.to_string()))
        .collect();
    assert_eq!(hosts_tried.len(), 2, "attempts at both bad hosts");
    // Each bad host held at most its share, and every connection was
    // dropped at the timeout, not kept. (A close the receiver notices up to
    // 200 ms late is not an overlap: an attempt over the limit would
    // overlap for its whole second. Without the allowance one run in a
    // loaded machine's several saw 5 for 4.)
    let lag = Duration::from_millis(200);
    for (name, raw) in [("hanging", &hang), ("trickling", &trickle)] {
        assert!(
            raw.max_concurrent_within(lag) <= PER_HOST,
            "{name} host had {} attempts at once ({} counting closes as the receiver saw them)",
            raw.max_concurrent_within(lag),
            raw.max_concurrent()
        );
        for (arrival, end) in raw.held() {
            if let Some(end) = end {
                let held = end - arrival;
                assert!(
                    held < timeout + Duration::from_millis(700),
                    "{name} host kept a connection {held:?}"
                );
            }
        }
    }
    assert!(
        hang_busy >= PER_HOST && trickle_busy >= PER_HOST,
        "the bad hosts were not busy during the healthy drain ({hang_busy} + {trickle_busy} attempts held in it)"
    );
    // "About the time it takes alone": a generous bound for a loaded
    // two-core machine, still far below one attempt timeout per slot wave.
    assert!(
        mixed_took <= alone_took * 2 + Duration::from_millis(500),
        "the healthy host slowed down beside the bad ones: {mixed_took:?} vs {alone_took:?} alone"
    );
    // Nothing healthy was lost or sent twice.
    wait_delivered(
        &pool,
        &mixed.iter().cloned().collect(),
        Duration::from_secs(10),
    )
    .await;
    let counts = healthy.counts();
    assert_eq!(counts.len(), 2 * HEALTHY);
    assert!(
        counts.values().all(|n| *n == 1),
        "a healthy delivery was sent twice"
    );

    // Shutting down with attempts hanging: they end at the timeout.
    let term = Instant::now();
    worker.stop(timeout + Duration::from_secs(5)).await;
    eprintln!(
        "slow receivers: worker exited {:?} after SIGTERM",
        term.elapsed()
    );
    assert_eq!(count_state(&pool, "delivering").await, 0);
}

// ---------------------------------------------------- 3. SIGTERM mid-drain

#[test]
fn sigterm_mid_drain_finishes_attempts_in_flight_releases_the_rest_and_exits_0() {
    run_case(Duration::from_secs(90), sigterm_mid_drain());
}

async fn sigterm_mid_drain() {
    const N: usize = 96;
    const SLOTS: usize = 16;
    let timeout = Duration::from_secs(2);
    let pg = PrivatePg::start("sigterm").await;
    let pool = pg.pool().await;
    let rx = Recorder::start("127.0.0.1:0", Duration::from_millis(500)).await;
    let env = [
        ("POSTBACK_ATTEMPT_TIMEOUT", "2s"),
        ("POSTBACK_CONCURRENCY", "16"),
        ("POSTBACK_PER_HOST_CONCURRENCY", "16"),
    ];
    let mut first = Postback::worker("first worker", &pg.url(), &env).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // LISTEN is up
    let ids = queue_many(&pool, &rx.url("/term"), N).await;

    // SIGTERM while the first wave is being answered.
    rx.wait_until(Duration::from_secs(20), "a first wave", |got| {
        got.len() >= SLOTS
    })
    .await;
    let in_flight = rx.in_progress();
    let term = Instant::now();
    first.sigterm();
    assert!(in_flight > 0, "nothing was in flight at the SIGTERM");
    let status = first.wait_exit(timeout + Duration::from_secs(3)).await;
    let exited_in = term.elapsed();
    assert!(status.success(), "worker exited with {status}");

    // Every attempt that reached the receiver finished and was recorded
    // as delivered; nothing is left leased.
    let arrived: HashSet<String> = rx.arrivals().into_iter().map(|a| a.id).collect();
    let answered: HashSet<String> = rx.answered().into_iter().collect();
    assert_eq!(rx.in_progress(), 0, "a request was cut off");
    assert!(
        arrived.is_subset(&answered),
        "requests that were not answered"
    );
    let uuids: Vec<uuid::Uuid> = arrived.iter().map(|i| i.parse().expect("uuid")).collect();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postback.deliveries d
         WHERE d.id = ANY($1) AND d.state = 'delivered' AND d.last_status_code = 200",
    )
    .bind(&uuids)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        recorded,
        arrived.len() as i64,
        "attempts in flight at the SIGTERM were not all recorded as delivered"
    );
    assert_eq!(
        count_state(&pool, "delivering").await,
        0,
        "deliveries left leased"
    );
    let waiting_for_lease: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postback.deliveries WHERE state <> 'delivered'
           AND (lease IS NOT NULL OR next_attempt_at > now())",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(waiting_for_lease, 0, "deliveries not released at once");
    let pending = count_state(&pool, "pending").await;
    assert_eq!(pending + arrived.len() as i64, N as i64);
    assert!(pending > 0, "the first worker finished everything");

    // A second worker delivers the rest at once, not after the lease
    // (2 x 2 s + 30 s).
    let restart = Instant::now();
    let mut second = Postback::worker("second worker", &pg.url(), &env).await;
    rx.wait_ids(&ids, Duration::from_secs(20)).await;
    wait_delivered(
        &pool,
        &ids.iter().cloned().collect(),
        Duration::from_secs(10),
    )
    .await;
    let rest_took = restart.elapsed();
    let counts = rx.counts();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "sigterm: {} in flight at the signal, exit 0 after {exited_in:?}, {} delivered by then, \
         {pending} released; the second worker delivered them in {rest_took:?}; \
         {duplicates} duplicates",
        in_flight,
        arrived.len()
    );
    assert!(
        exited_in < timeout + Duration::from_secs(2),
        "exit took {exited_in:?}"
    );
    assert!(
        rest_took < Duration::from_secs(15),
        "the rest waited {rest_took:?}: were they left leased?"
    );
    assert_eq!(duplicates, 0, "deliveries sent twice");
    assert_eq!(counts.len(), N);

    second.stop(timeout + Duration::from_secs(3)).await;
}

#[test]
fn sigterm_to_serve_while_it_takes_deliveries_loses_nothing_and_leaves_nothing_leased() {
    run_case(Duration::from_secs(90), sigterm_serve_mid_intake());
}

/// `serve` starts fresh deliveries itself (the in-process handoff): a
/// SIGTERM that lands while requests are being accepted must neither lose
/// an accepted delivery nor leave one leased to the stopped process.
async fn sigterm_serve_mid_intake() {
    const POSTS: usize = 240;
    const CLIENTS: usize = 4;
    let timeout = Duration::from_secs(2);
    let pg = PrivatePg::start("sigterm-serve").await;
    let pool = pg.pool().await;
    let rx = Recorder::start("127.0.0.1:0", Duration::from_millis(300)).await;
    let (mut serve, base) = Postback::serve(
        "serve",
        &pg.url(),
        &[
            ("POSTBACK_ATTEMPT_TIMEOUT", "2s"),
            ("POSTBACK_CONCURRENCY", "16"),
            ("POSTBACK_PER_HOST_CONCURRENCY", "16"),
        ],
    )
    .await;
    let url = rx.url("/serve-term");
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, url) = (http(), base.clone(), url.clone());
        let (accepted, next) = (accepted.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= POSTS {
                    return;
                }
                let sent = client
                    .post(format!("{base}/v1/deliveries"))
                    .bearer_auth(TOKEN)
                    .json(&delivery_body(&url, i))
                    .send()
                    .await;
                // After the SIGTERM the API stops taking requests: the
                // client sees a refused connection or a 503, never a 5xx
                // that hides an accepted delivery.
                let Ok(response) = sent else { return };
                match response.status().as_u16() {
                    202 => {
                        let v: Value = response.json().await.expect("json");
                        let id = v["deliveryId"].as_str().expect("id").to_owned();
                        accepted.lock().expect("lock").push(id);
                    }
                    503 => return,
                    other => panic!("POST /v1/deliveries answered {other}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // SIGTERM halfway through the intake, with attempts in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.lock().expect("lock").len() < POSTS / 2 {
        assert!(Instant::now() < deadline, "intake too slow");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let in_flight = rx.in_progress();
    let term = Instant::now();
    serve.sigterm();
    let status = serve.wait_exit(timeout + Duration::from_secs(3)).await;
    let exited_in = term.elapsed();
    assert!(status.success(), "serve exited with {status}");
    for c in clients {
        c.await.expect("client");
    }
    let accepted: Vec<String> = accepted.lock().expect("lock").clone();

    // Every accepted delivery is stored; whatever reached the receiver is
    // recorded as delivered; nothing is left leased.
    let uuids: Vec<uuid::Uuid> = accepted.iter().map(|i| i.parse().expect("uuid")).collect();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE id = ANY($1)")
            .bind(&uuids)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(stored, accepted.len() as i64, "accepted deliveries missing");
    assert_eq!(rx.in_progress(), 0, "a request was cut off");
    let arrived: HashSet<String> = rx.arrivals().into_iter().map(|a| a.id).collect();
    let answered: HashSet<String> = rx.answered().into_iter().collect();
    assert!(
        arrived.is_subset(&answered),
        "requests that were not answered"
    );
    let arrived_ids: Vec<uuid::Uuid> = arrived.iter().map(|i| i.parse().expect("uuid")).collect();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postback.deliveries WHERE id = ANY($1) AND state = 'delivered'",
    )
    .bind(&arrived_ids)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        recorded,
        arrived.len() as i64,
        "attempts that reached the receiver are not all recorded"
    );
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM postback.deliveries WHERE state <> 'delivered'
           AND (state = 'delivering' OR lease IS NOT NULL OR next_attempt_at > now())",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(leased, 0, "deliveries left leased to the stopped process");

    // A worker delivers the rest at once.
    let restart = Instant::now();
    let mut worker = Postback::worker(
        "worker",
        &pg.url(),
        &[
            ("POSTBACK_ATTEMPT_TIMEOUT", "2s"),
            ("POSTBACK_CONCURRENCY", "64"),
            ("POSTBACK_PER_HOST_CONCURRENCY", "64"),
        ],
    )
    .await;
    rx.wait_ids(&accepted, Duration::from_secs(20)).await;
    wait_delivered(
        &pool,
        &accepted.iter().cloned().collect(),
        Duration::from_secs(10),
    )
    .await;
    let rest_took = restart.elapsed();
    let counts = rx.counts();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "sigterm (serve): {} accepted, {in_flight} attempts in flight at the signal, exit 0 after \
         {exited_in:?} with {} delivered; a worker delivered the other {} in {rest_took:?}; \
         {duplicates} duplicates",
        accepted.len(),
        arrived.len(),
        accepted.len() - arrived.len()
    );
    assert!(in_flight > 0, "nothing was in flight at the SIGTERM");
    assert!(
        exited_in < timeout + Duration::from_secs(2),
        "exit took {exited_in:?}"
    );
    assert!(
        rest_took < Duration::from_secs(15),
        "the rest waited {rest_took:?}: were they left leased?"
    );
    assert_eq!(duplicates, 0, "deliveries sent twice");
    assert_eq!(
        counts.len(),
        accepted.len(),
        "only accepted deliveries arrive"
    );
    worker.stop(timeout + Duration::from_secs(3)).await;
}

// ------------------------------------------ 4. several workers, one queue

#[test]
fn four_worker_processes_drain_one_queue_without_sending_anything_twice() {
    run_case(Duration::from_secs(90), workers_drain(4, 4000));
}

/// `workers` processes, each sending from its own loopback address, drain
/// `n` deliveries queued at once: every one arrives exactly once, and every
/// worker took part. (Two workers: `tests/it/delivery.rs`.)
async fn workers_drain(workers: usize, n: usize) {
    let pg = PrivatePg::start(&format!("workers{workers}")).await;
    let pool = pg.pool().await;
    let rx = Recorder::start("127.0.0.1:0", Duration::ZERO).await;
    let mut procs = Vec::new();
    for w in 0..workers {
        let source = format!("127.0.1.{}", w + 1);
        procs.push(
            Postback::worker(
                &format!("worker {w}"),
                &pg.url(),
                &[
                    ("POSTBACK_ATTEMPT_TIMEOUT", "2s"),
                    ("POSTBACK_CONCURRENCY", "64"),
                    ("POSTBACK_PER_HOST_CONCURRENCY", "32"),
                    ("POSTBACK_EGRESS_SOURCE_ADDR", &source),
                ],
            )
            .await,
        );
    }
    // Every worker LISTENs, so they all race for the same rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let ids = queue_many(&pool, &rx.url("/many"), n).await;
    rx.wait_ids(&ids, Duration::from_secs(60)).await;
    let took = started.elapsed();
    wait_delivered(
        &pool,
        &ids.iter().cloned().collect(),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &mut procs {
        p.assert_running();
    }

    let arrivals = rx.arrivals();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for a in &arrivals {
        *counts.entry(a.id.as_str()).or_default() += 1;
        *by_worker.entry(a.from.to_string()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    let mut shares: Vec<_> = by_worker.iter().collect();
    shares.sort();
    eprintln!(
        "{workers} workers: {n} delivered in {took:?} ({:.0}/s); per worker: {shares:?}; {} duplicates",
        n as f64 / took.as_secs_f64(),
        arrivals.len() - counts.len()
    );
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(arrivals.len(), n);
    let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(counts.keys().copied().collect::<HashSet<_>>(), expected);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.attempts")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(attempts, n as i64, "one attempt per delivery");
    assert_eq!(
        by_worker.len(),
        workers,
        "not every worker took part: {shares:?}"
    );

    for p in &procs {
        p.sigterm();
    }
    for p in &mut procs {
        let status = p.wait_exit(Duration::from_secs(5)).await;
        assert!(status.success(), "worker exited with {status}");
    }
}

// ------------------------------- 6. kill -9 of serve with handed-off attempts

#[test]
fn kill_9_of_serve_with_handed_off_attempts_in_flight_loses_nothing() {
    run_case(Duration::from_secs(120), kill_serve_mid_handoff());
}

/// `serve` stores a fresh delivery already leased to itself and sends it at
/// once (the in-process handoff). If the process dies mid-attempt, the row
/// is committed and leased like a claimed one: a worker delivers it once
/// the lease runs out.
async fn kill_serve_mid_handoff() {
    const N: usize = 12;
    let pg = PrivatePg::start("kill-serve").await;
    let pool = pg.pool().await;
    // Answers after 3 s: the first attempts are still open when serve dies.
    let rx = Recorder::start("127.0.0.1:0", Duration::from_secs(3)).await;
    let env = [
        ("POSTBACK_ATTEMPT_TIMEOUT", "5s"),
        ("POSTBACK_PER_HOST_CONCURRENCY", "64"),
    ];
    let (mut serve, base) = Postback::serve("serve", &pg.url(), &env).await;
    let client = http();
    let mut ids = Vec::new();
    for i in 0..N {
        let response = client
            .post(format!("{base}/v1/deliveries"))
            .bearer_auth(TOKEN)
            .json(&delivery_body(&rx.url("/handoff"), i))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), 202);
        let v: Value = response.json().await.expect("json");
        ids.push(v["deliveryId"].as_str().expect("id").to_owned());
    }
    rx.wait_ids(&ids, Duration::from_secs(10)).await;
    let pid = nix::unistd::Pid::from_raw(serve.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let _ = serve.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        count_state(&pool, "delivering").await,
        N as i64,
        "handed-off deliveries must be stored leased, not lost"
    );
    let killed = Instant::now();
    let mut worker = Postback::worker("worker", &pg.url(), &env).await;
    wait_delivered(
        &pool,
        &ids.iter().cloned().collect(),
        Duration::from_secs(75),
    )
    .await;
    let recovered_in = killed.elapsed();
    let counts = rx.counts();
    for id in &ids {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!((1..=2).contains(&n), "{id} arrived {n} times");
    }
    eprintln!(
        "kill -9 of serve: {N} handed-off deliveries recovered by a worker in {recovered_in:?}"
    );
    worker.stop(Duration::from_secs(10)).await;
}

// ------------------------------- 8. gauges while the database is away

#[test]
fn while_postgres_is_down_metrics_say_database_up_0_and_leave_the_queue_gauges_out() {
    run_case(Duration::from_secs(90), database_down_gauges());
}

/// `/metrics` of `base`, as text.
async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(
        response.status(),
        200,
        "/metrics answers whatever the database does"
    );
    response.text().await.expect("metrics text")
}

/// Scrapes until `pred` holds; panics with the last scrape after `limit`.
async fn scrape_until(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = scrape(client, base).await;
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen in {limit:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn database_down_gauges() {
    let mut pg = PrivatePg::start("gauges").await;
    let (mut serve, base) = Postback::serve("serve", &pg.url(), &[]).await;
    let client = http();
    let has_queue = |t: &str| {
        t.contains("postback_queue_depth{") && t.contains("\npostback_oldest_due_seconds ")
    };
    scrape_until(
        &client,
        &base,
        Duration::from_secs(15),
        "database up with queue gauges",
        |t| t.contains("\npostback_database_up 1\n") && has_queue(t),
    )
    .await;

    pg.stop_for_restart().await;
    let down = scrape_until(
        &client,
        &base,
        Duration::from_secs(20),
        "database_up 0",
        |t| t.contains("\npostback_database_up 0\n"),
    )
    .await;
    assert!(
        !down.contains("postback_queue_depth"),
        "frozen queue gauges:\n{down}"
    );
    assert!(
        !down.contains("postback_oldest_due_seconds"),
        "frozen oldest-due:\n{down}"
    );
    // And they stay out for as long as it is down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = scrape(&client, &base).await;
    assert!(still.contains("\npostback_database_up 0\n"), "{still}");
    assert!(!still.contains("postback_queue_depth"), "{still}");

    pg.start_again().await;
    scrape_until(
        &client,
        &base,
        Duration::from_secs(20),
        "gauges back",
        |t| t.contains("\npostback_database_up 1\n") && has_queue(t),
    )
    .await;
    serve.stop(Duration::from_secs(20)).await;
}

// ------------------------------------------------------- memory (issue 15)

/// Peak resident memory of `serve` while large results and large generic
/// deliveries go out (issue 15, finding 2: one 2.8 MB result with 32
/// analytics callbacks grew `serve` from 13 MB to 541 MB, and 40
/// concurrent 6 MB generic deliveries took it to 1.04 GB). SPEC §3: memory
/// is bounded by settings, not by traffic.
#[test]
fn large_results_and_bodies_keep_serve_under_its_memory_bound() {
    run_case(Duration::from_secs(240), large_payload_memory());
}

/// A transcript of `words` words: about 45 bytes of JSON each.
fn big_transcript(words: usize) -> Value {
    let list: Vec<Value> = (0..words)
        .map(|i| {
            let s = i as u64 * 300;
            serde_json::json!({"p": i, "s": s, "e": s + 250, "c": 0.9, "w": format!("w{}", i % 1000)})
        })
        .collect();
    serde_json::json!({"confidence": 0.9, "words": list})
}

/// Resets the process's peak resident memory (VmHWM) to what it holds now.
fn reset_peak(p: &Postback) {
    std::fs::write(format!("/proc/{}/clear_refs", p.pid()), "5").expect("reset VmHWM");
}

/// POSTs a JSON body already serialized (large bodies are built once, up
/// front) to `serve`, with the token and a timeout that fits them.
async fn post_json_bytes(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(60))
        .body(body)
        .send()
        .await
}

fn peak_mib(p: &Postback) -> f64 {
    let mem = p.memory().expect("serve is running");
    mem.hwm_kib as f64 / 1024.0
}

async fn large_payload_memory() {
    use postback_test_support::receiver::{Answer, Receiver};

    let pg = PrivatePg::start("memory").await;
    let url = pg.url();
    let (mut serve, base) = Postback::serve("serve", &url, &[]).await;
    let rx = Receiver::start().await;
    // Slow answers keep every attempt in flight together.
    rx.always(Answer::ok().delayed(Duration::from_millis(500)));
    rx.keep_lengths_only();
    let client = http();
    let start_mib = peak_mib(&serve);

    // 1. One result of about 2.8 MB with 32 analytics callbacks.
    let callbacks: Vec<Value> = (0..32)
        .map(|i| serde_json::json!({"url": rx.url(&format!("/a{i}"))}))
        .collect();
    let job = serde_json::json!({"jobId": "big", "publish": {"callbacks": callbacks}});
    let r = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&job)
        .send()
        .await
        .expect("create job");
    assert_eq!(r.status(), 201);
    let result =
        serde_json::json!({"status": "finished", "result": {"transcript": big_transcript(62_000)}});
    let body = serde_json::to_vec(&result).unwrap();
    let result_mib = body.len() as f64 / 1048576.0;
    let r = post_json_bytes(&client, &base, "/v1/jobs/big/result", body)
        .await
        .expect("post result");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    rx.wait_for(32, Duration::from_secs(90)).await;
    let after_result = peak_mib(&serve);

    // 2. 40 generic deliveries of 6 MB each, sent concurrently, measured
    // on their own (the peak is reset first).
    reset_peak(&serve);
    let before_generic = peak_mib(&serve);
    // Serialized up front: the client must not be the slow part.
    let big = "x".repeat(6 << 20);
    let bodies: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            format!(
                r#"{{"url":"{}","body":"{big}"}}"#,
                rx.url(&format!("/g{i}"))
            )
            .into_bytes()
        })
        .collect();
    drop(big);
    let sends = bodies.into_iter().map(|body| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = post_json_bytes(&client, &base, "/v1/deliveries", body)
                .await
                .map_err(|e| format!("{e:?}"))?;
            if r.status() != 202 {
                return Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ));
            }
            Ok::<(), String>(())
        }
    });
    let sent = futures_util::future::join_all(sends).await;
    let refused: Vec<&String> = sent.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refused.is_empty(),
        "{} of 40 refused: {:?}\n{}",
        refused.len(),
        refused.first(),
        serve
            .lines()
            .into_iter()
            .filter(|l| (l.contains("\"ERROR\"")
                || l.contains("\"WARN\"")
                || l.contains("finished processing"))
                && !l.contains("slow statement")
                && !l.contains("\"status\":202"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    rx.wait_for(72, Duration::from_secs(120)).await;
    let after_generic = peak_mib(&serve);
    println!(
        "serve peak RSS: {start_mib:.0} MiB at start, {after_result:.0} MiB after a {result_mib:.1} MB result \
         with 32 analytics callbacks; {before_generic:.0} MiB then, and at most {after_generic:.0} MiB \
         while 40 concurrent 6 MB deliveries were taken and sent"
    );
    serve.assert_running();
    // The shipped API pod limit is 512 MiB; before the fixes the result
    // alone took 541 MB and the generic deliveries 1.04 GB. Measured with
    // them (debug build, 2 cores): 214-273 MiB and 331 MiB. The bounds
    // leave the pod limit a margin.
    assert!(
        after_result < 384.0,
        "{after_result:.0} MiB after the result"
    );
    assert!(
        after_generic < 448.0,
        "{after_generic:.0} MiB while the generic deliveries went"
    );
    serve.stop(Duration::from_secs(30)).await;
    drop(rx);
    pg.stop().await.expect("stop cluster");
}
