//! Issue 17: finding deliveries (`GET /v1/deliveries`), replaying them in
//! bulk (`POST /v1/replays`), the queue overview (`GET /v1/stats`), the
//! listing indexes, and the CLI's `deliveries list|show` and `replay`.

use std::time::{Duration, Instant};

use postback::state::DeliveryState;
use postback::store::find::{self, Query};
use postback::store::Schema;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{Answer, Receiver, TestApp};

use crate::helpers::{postback_on as postback, run_split as run};

/// An API-only server: nothing is attempted, so states are the test's.
async fn api_only() -> TestApp {
    TestApp::spawn_with(|c| c.concurrency = 0).await
}

async fn customer(app: &TestApp, id: &str) {
    let response = app
        .http
        .put(app.url(&format!("/v1/customers/{id}")))
        .bearer_auth(crate::helpers::TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "customer {id}");
}

/// Writes `n` deliveries straight into the tables (one statement each),
/// created 1 ms apart ending `age` ago: the fixture of the index, replay
/// and benchmark tests, where going through the API would take minutes.
pub async fn fill(
    pool: &PgPool,
    n: i64,
    host: &str,
    customer: Option<&str>,
    state: &str,
    age: Duration,
) {
    let url = format!("http://{host}:9/hook");
    sqlx::query(
        "WITH d AS (
             INSERT INTO postback.deliveries
                 (id, kind, method, url, host, state, next_attempt_at, attempts, last_status_code,
                  last_error, created_at, queued_at, completed_at, expires_at, customer_id)
             SELECT gen_random_uuid(), 'generic', 'POST', $1, $2, $3,
                    CASE WHEN $3 = 'pending' THEN now() + interval '1 hour' END,
                    CASE WHEN $3 = 'pending' THEN 0 ELSE 3 END,
                    CASE WHEN $3 = 'failed' THEN 503 WHEN $3 = 'delivered' THEN 200 END,
                    CASE WHEN $3 = 'failed' THEN 'http_error' END,
                    now() - make_interval(secs => $5) - g * interval '1 ms',
                    now() - make_interval(secs => $5) - g * interval '1 ms',
                    CASE WHEN $3 IN ('failed', 'delivered') THEN now() END,
                    now() + interval '7 days', $6
             FROM generate_series(1, $4) g
             RETURNING id, created_at, host, customer_id)
         INSERT INTO postback.payloads (delivery_id, content_type, headers, body, created_at, host, customer_id)
         SELECT id, 'application/json', '{\"x-key\": \"secret\"}', '{}', created_at, host, customer_id FROM d",
    )
    .bind(url)
    .bind(host)
    .bind(state)
    .bind(n)
    .bind(age.as_secs_f64())
    .bind(customer)
    .execute(pool)
    .await
    .expect("fill");
}

fn ids(list: &Value) -> Vec<String> {
    list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deliveryId"].as_str().unwrap().to_owned())
        .collect()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn the_list_filters_pages_newest_first_and_names_bad_parameters() {
    let app = api_only().await;
    customer(&app, "acme").await;
    fill(
        &app.pool,
        5,
        "a.example",
        Some("acme"),
        "failed",
        Duration::from_secs(3600),
    )
    .await;
    fill(
        &app.pool,
        4,
        "b.example",
        None,
        "delivered",
        Duration::from_secs(60),
    )
    .await;
    fill(
        &app.pool,
        3,
        "a.example",
        None,
        "pending",
        Duration::from_secs(1),
    )
    .await;

    let all = app.get_json("/v1/deliveries").await;
    assert_eq!(ids(&all).len(), 12);
    assert!(all["nextCursor"].is_null());
    let created: Vec<&str> = all["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["createdAt"].as_str().unwrap())
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    let first = &all["deliveries"][0];
    for key in [
        "deliveryId",
        "customerId",
        "jobId",
        "host",
        "attempts",
        "lastStatusCode",
        "lastError",
        "nextAttemptTime",
        "createdAt",
        "status",
        "url",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["headers"]["x-key"], "***", "header values are masked");

    let failed = app
        .get_json("/v1/deliveries?status=failed&customerId=acme&host=A.example")
        .await;
    assert_eq!(ids(&failed).len(), 5);
    assert!(failed["deliveries"].as_array().unwrap().iter().all(|d| {
        d["status"] == "failed" && d["lastError"] == "http_error" && d["lastStatusCode"] == 503
    }));
    assert_eq!(
        ids(&app.get_json("/v1/deliveries?host=b.example").await).len(),
        4
    );
    assert_eq!(
        ids(&app.get_json("/v1/deliveries?since=10m").await).len(),
        7
    );
    assert_eq!(
        ids(&app.get_json("/v1/deliveries?until=10m").await).len(),
        5
    );

    // Paging with the cursor visits every delivery once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/deliveries?limit=5&cursor={c}"),
            None => "/v1/deliveries?limit=5".to_owned(),
        };
        let page = app.get_json(&path).await;
        seen.extend(ids(&page));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids(&all));

    for (query, param) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("cursor=bogus", "cursor"),
        ("host=a.example:8443", "host"),
        ("host=https://a.example/x", "host"),
        ("colour=red", "colour"),
    ] {
        let (status, code, message) =
            error_of(app.get(&format!("/v1/deliveries?{query}")).await).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_query"),
            "{query}: {message}"
        );
        assert!(message.contains(param), "{query}: {message}");
    }
    let (_, _, message) = error_of(app.get("/v1/deliveries?host=a.example:8443").await).await;
    assert!(message.contains("drop"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_whose_lease_ran_out_is_listed_as_due() {
    let app = api_only().await;
    fill(&app.pool, 2, "a.example", None, "pending", Duration::ZERO).await;
    // One worker died mid-attempt (lease expired), one is attempting now.
    sqlx::query(
        "UPDATE postback.deliveries SET state = 'delivering', lease = gen_random_uuid(),
             next_attempt_at = now() + CASE WHEN id = (SELECT id FROM postback.deliveries ORDER BY id LIMIT 1)
                                       THEN interval '-1 minute' ELSE interval '1 minute' END",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let pending = app.get_json("/v1/deliveries?status=pending").await;
    let delivering = app.get_json("/v1/deliveries?status=delivering").await;
    assert_eq!(ids(&pending).len(), 1, "{pending}");
    assert_eq!(ids(&delivering).len(), 1, "{delivering}");
    assert!(pending["deliveries"][0]["nextAttemptTime"].is_string());
    assert!(delivering["deliveries"][0]["nextAttemptTime"].is_null());
    let one = app
        .get_json(&format!("/v1/deliveries/{}", ids(&pending)[0]))
        .await;
    assert_eq!(one["status"], "pending", "the detail agrees with the list");

    // Bulk replay skips the one in flight and takes the abandoned one.
    let report = app
        .post(
            "/v1/replays",
            json!({"filter": {"ids": [ids(&pending)[0], ids(&delivering)[0]]}}),
        )
        .await;
    assert_eq!(report.status(), 200);
    let report: Value = report.json().await.unwrap();
    assert_eq!(
        (&report["matched"], &report["replayed"], &report["skipped"]),
        (&json!(2), &json!(1), &json!(1)),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn replays_preview_then_replay_in_batches_spread_by_the_rate() {
    let app = api_only().await;
    fill(
        &app.pool,
        2_500,
        "a.example",
        None,
        "failed",
        Duration::from_secs(60),
    )
    .await;
    fill(
        &app.pool,
        10,
        "b.example",
        None,
        "failed",
        Duration::from_secs(60),
    )
    .await;
    fill(
        &app.pool,
        10,
        "a.example",
        None,
        "delivered",
        Duration::from_secs(60),
    )
    .await;

    for (body, field) in [
        (json!({"filter": {}}), "filter"),
        (json!({"filter": {"host": "a.example"}}), "filter"),
        (json!({"filter": {"status": "gone"}}), "filter.status"),
        (json!({"filter": {"ids": ["nope"]}}), "filter.ids[0]"),
        (
            json!({"filter": {"status": "failed"}, "rate": "fast"}),
            "rate",
        ),
        (json!({"filter": {"status": "failed"}, "limit": 0}), "limit"),
        (
            json!({"filter": {"status": "failed"}, "colour": 1}),
            "colour",
        ),
    ] {
        let (status, code, message) = error_of(app.post("/v1/replays", body.clone()).await).await;
        assert_eq!(status, 400, "{body}: {message}");
        assert!(code.starts_with("invalid_"), "{body}: {code}");
        assert!(message.contains(field), "{body}: {message}");
    }

    let dry: Value = app
        .post(
            "/v1/replays",
            json!({"filter": {"status": "failed", "host": "a.example"}, "dryRun": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&dry["matched"], &dry["replayed"]),
        (&json!(2500), &json!(0)),
        "{dry}"
    );
    assert_eq!(dry["sample"].as_array().unwrap().len(), 20);
    let still: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(still, 2510, "a dry run changes nothing");

    let started = Instant::now();
    let report: Value = app
        .post(
            "/v1/replays",
            json!({"filter": {"status": "failed", "host": "a.example"}, "limit": 2200, "rate": "1000/s"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&report["matched"], &report["replayed"], &report["skipped"]),
        (&json!(2200), &json!(2200), &json!(0)),
        "{report}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The oldest were taken (limit), spread at 1000/s: 2.2 s from first to last.
    let (pending, spread, newest_failed_is_newer): (i64, f64, bool) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'),
                extract(epoch FROM max(next_attempt_at) - min(next_attempt_at))::float8,
                (SELECT min(created_at) FROM postback.deliveries WHERE state = 'failed' AND host = 'a.example')
                  > max(created_at) FILTER (WHERE state = 'pending')
         FROM postback.deliveries",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(pending, 2200);
    assert!((spread - 2.199).abs() < 0.05, "spread {spread}");
    assert!(newest_failed_is_newer, "the oldest are replayed first");
    let replayed: (i32, Option<i32>) = sqlx::query_as(
        "SELECT max(cycle_attempts), max(CASE WHEN completed_at IS NULL THEN 0 END)
         FROM postback.deliveries WHERE state = 'pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(replayed, (0, Some(0)), "a fresh cycle, no longer completed");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_delivery_found_and_replayed_through_the_api_reaches_the_receiver() {
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(503).body("upstream down"));
    let app = TestApp::spawn_with(|c| {
        c.retry_immediate = 0;
        c.retry_first_delay = Duration::from_millis(200);
        c.retry_max_delay = Duration::from_millis(200);
        c.retry_give_up = Duration::from_millis(300);
    })
    .await;
    let created: Value = app
        .post(
            "/v1/deliveries",
            json!({"url": receiver.url("/hook"), "json": {"n": 1}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["deliveryId"].as_str().unwrap().to_owned();
    app.wait_delivery(&id, Duration::from_secs(15), |v| v["status"] == "failed")
        .await;
    let stats = app.get_json("/v1/stats").await;
    assert_eq!(stats["failedLastHour"], 1, "{stats}");
    for key in [
        "due",
        "scheduled",
        "inFlight",
        "oldestDueSeconds",
        "deliveredLastHour",
    ] {
        assert!(stats[key].is_number(), "{key}: {stats}");
    }
    let list = app
        .get_json("/v1/deliveries?status=failed&host=127.0.0.1")
        .await;
    assert_eq!(ids(&list), std::slice::from_ref(&id));
    let before = receiver.received().len();
    receiver.always(Answer::ok());
    let report: Value = app
        .post("/v1/replays", json!({"filter": {"status": "failed"}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["replayed"], 1, "{report}");
    app.wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let got = receiver.wait_for(before + 1, Duration::from_secs(5)).await;
    assert_eq!(got.last().unwrap().headers["webhook-id"], id.as_str());
    let stats = app.get_json("/v1/stats").await;
    assert_eq!(stats["deliveredLastHour"], 1, "{stats}");
    assert_eq!(stats["failedLastHour"], 0, "replayed: no longer failed");
    app.stop().await;
}

#[tokio::test]
async fn the_cli_previews_with_a_table_asks_for_yes_and_shows_errors() {
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(502).body("bad gateway from upstream"));
    let app = TestApp::spawn_with(|c| {
        c.retry_immediate = 0;
        c.retry_first_delay = Duration::from_millis(200);
        c.retry_max_delay = Duration::from_millis(200);
        c.retry_give_up = Duration::from_millis(300);
    })
    .await;
    let created: Value = app
        .post(
            "/v1/deliveries",
            json!({"url": receiver.url("/hook"), "json": {}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["deliveryId"].as_str().unwrap().to_owned();
    app.wait_delivery(&id, Duration::from_secs(15), |v| v["status"] == "failed")
        .await;
    fill(
        &app.pool,
        1_200,
        "a.example",
        None,
        "failed",
        Duration::from_secs(60),
    )
    .await;

    let (code, out, err) = run(postback(&app.database_url).args(["deliveries", "show", &id]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("http_error") && out.contains("502"), "{out}");
    assert!(out.contains("response: bad gateway from upstream"), "{out}");
    assert!(
        out.contains('T') && out.contains('Z'),
        "RFC 3339 times: {out}"
    );

    let (code, out, err) = run(postback(&app.database_url).args([
        "replay",
        "--status",
        "failed",
        "--dry-run",
        "--limit",
        "1100",
    ]));
    assert_eq!(code, 0, "a dry run never needs --yes: {err}");
    assert!(out.contains("DELIVERY") && out.contains("CREATED"), "{out}");
    assert!(out.contains("would replay 1100 deliveries"), "{out}");
    let hosts: Vec<&str> = out.lines().skip_while(|l| !l.contains("HOST")).collect();
    assert!(hosts.iter().any(|l| l.contains("a.example")), "{hosts:?}");

    let (code, _, err) = run(postback(&app.database_url).args(["replay", "--status", "failed"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1201") && err.contains("--yes"), "{err}");

    let bad_hosts: [&[&str]; 3] = [
        &["deliveries", "list", "--host", "a.example:443"],
        &["deliveries", "list", "--host", "a.example/x"],
        &["replay", "--status", "failed", "--host", "a.example:1"],
    ];
    for args in bad_hosts {
        let (code, _, err) = run(postback(&app.database_url).args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("drop"), "{args:?}: {err}");
    }

    let (code, out, err) = run(postback(&app.database_url).args([
        "deliveries",
        "list",
        "--status",
        "failed",
        "--limit",
        "3",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 deliveries"), "{out}");
    assert!(err.contains("--limit 3 cut the list"), "{err}");

    receiver.always(Answer::ok());
    let (code, out, err) = run(postback(&app.database_url).args([
        "replay",
        "--status",
        "failed",
        "--host",
        "127.0.0.1",
        "--yes",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1 deliveries"), "{out}");
    app.wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    let (code, out, err) =
        run(postback(&app.database_url).args(["replay", "--status", "failed", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1200 deliveries"), "{out}");
    app.stop().await;
}

/// The listing's plans on a table of 200,000 deliveries: each filtered
/// newest-first page is an index scan that stops at LIMIT (no Seq Scan, no
/// Sort). `PRINT_QUERY_PLANS=1` prints them (docs/operations.md).
#[tokio::test]
async fn listing_the_newest_failed_deliveries_among_200k_is_an_index_scan() {
    let app = api_only().await;
    customer(&app, "acme").await;
    customer(&app, "globex").await;
    // Mostly delivered, a few failed, over a few hosts and customers.
    for (i, host) in ["a.example", "b.example", "c.example", "d.example"]
        .iter()
        .enumerate()
    {
        let who = if i % 2 == 0 {
            Some("acme")
        } else {
            Some("globex")
        };
        fill(
            &app.pool,
            49_000,
            host,
            who,
            "delivered",
            Duration::from_secs(7200),
        )
        .await;
        fill(
            &app.pool,
            1_000,
            host,
            who,
            "failed",
            Duration::from_secs(3600),
        )
        .await;
    }
    sqlx::query("ANALYZE postback.deliveries")
        .execute(&app.pool)
        .await
        .unwrap();
    let schema = Schema::default();
    let cases = [
        ("newest", "payloads_created", Query::default()),
        (
            "failed of one customer",
            "deliveries_failed_customer",
            Query {
                status: Some(DeliveryState::Failed),
                customer: Some("acme".into()),
                ..Query::default()
            },
        ),
        (
            "failed of one host",
            "deliveries_failed_host",
            Query {
                status: Some(DeliveryState::Failed),
                host: Some("b.example".into()),
                ..Query::default()
            },
        ),
        (
            "failed",
            "deliveries_failed_created",
            Query {
                status: Some(DeliveryState::Failed),
                ..Query::default()
            },
        ),
        (
            "one customer",
            "payloads_customer_created",
            Query {
                customer: Some("globex".into()),
                ..Query::default()
            },
        ),
        (
            "one host",
            "payloads_host_created",
            Query {
                host: Some("c.example".into()),
                ..Query::default()
            },
        ),
    ];
    for (name, index, q) in cases {
        let plan = find::explain_page(&app.pool, &schema, &q, 51)
            .await
            .unwrap();
        let text = plan.join("\n");
        if std::env::var_os("PRINT_QUERY_PLANS").is_some() {
            println!("-- {name}\n{text}\n");
        }
        assert!(
            text.contains(&format!("Index Scan using {index} ")),
            "{name}:\n{text}"
        );
        assert!(!text.contains("Seq Scan on deliveries"), "{name}:\n{text}");
        assert!(!text.contains("Sort"), "{name}:\n{text}");
    }
    app.stop().await;
}
