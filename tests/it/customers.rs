//! Customers (SPEC §2): each customer's callbacks are signed with its own
//! secret and with no other's, rotation signs with both secrets during the
//! grace period, stored secrets are sealed when a key is set, per-customer
//! concurrency holds, and DELETE erases everything of the customer.
//! Signatures are checked with an HMAC computed here from the Standard
//! Webhooks definition (the reference vectors' algorithm), not with
//! Postback's own verifier.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{Received, Receiver, TestApp, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_postback");

/// A customer secret of 32 bytes (`whsec_` + base64).
fn secret(fill: u8) -> String {
    format!("whsec_{}", STANDARD.encode([fill; 32]))
}

/// Does any `v1,` entry of the attempt's `webhook-signature` match
/// `secret` over `{id}.{timestamp}.{body}`?
fn verifies(r: &Received, secret: &str) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_owned()
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .any(|entry| entry == expected)
}

fn signatures(r: &Received) -> usize {
    r.headers
        .get("webhook-signature")
        .and_then(|v| v.to_str().ok())
        .map_or(0, |v| v.split(' ').count())
}

async fn put(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .put(app.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn status_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn deliver(app: &TestApp, url: String, customer: &str, n: u32) -> String {
    let (status, body) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": url, "customerId": customer, "json": {"n": n}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["deliveryId"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn each_customer_verifies_only_with_its_own_secret() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let (status, a) = put(&app, "/v1/customers/acme", json!({"name": "Acme"})).await;
    assert_eq!(status, 201, "{a}");
    let secret_a = a["signingSecret"]
        .as_str()
        .expect("generated secret")
        .to_owned();
    assert!(secret_a.starts_with("whsec_"));
    assert_eq!(STANDARD.decode(&secret_a[6..]).unwrap().len(), 32);
    let secret_b = secret(7);
    let (status, b) = put(
        &app,
        "/v1/customers/globex",
        json!({"signingSecret": secret_b}),
    )
    .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["signingSecret"], secret_b);
    // A later PUT updates and never shows the secret again.
    let (status, again) = put(&app, "/v1/customers/acme", json!({"name": "Acme Inc"})).await;
    assert_eq!(status, 200, "{again}");
    assert!(again.get("signingSecret").is_none(), "{again}");
    assert_eq!(again["name"], "Acme Inc");

    let id_a = deliver(&app, receiver.url("/a"), "acme", 1).await;
    // A job of customer B: its callbacks are signed with B's secret too.
    let (status, job) = status_json(
        app.post(
            "/v1/jobs",
            json!({"jobId": "job-b", "customerId": "globex",
                   "publish": {"callbacks": [{"url": receiver.url("/b")}]}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["customerId"], "globex");
    let (status, _) = status_json(
        app.post(
            "/v1/jobs/job-b/result",
            json!({"status": "finished", "result": {"transcript": {"words": []}}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let by_path = |p: &str| got.iter().find(|r| r.path == p).expect("arrived").clone();
    let (ra, rb) = (by_path("/a"), by_path("/b"));
    assert!(
        verifies(&ra, &secret_a),
        "A's callback verifies with A's secret"
    );
    assert!(
        !verifies(&ra, &secret_b),
        "A's callback must not verify with B's"
    );
    assert!(
        verifies(&rb, &secret_b),
        "B's callback verifies with B's secret"
    );
    assert!(
        !verifies(&rb, &secret_a),
        "B's callback must not verify with A's"
    );
    assert_eq!((signatures(&ra), signatures(&rb)), (1, 1));
    let view = app.get_json(&format!("/v1/deliveries/{id_a}")).await;
    assert_eq!(view["customerId"], "acme");
    // The customer view lists its secret without the value.
    let view = app.get_json("/v1/customers/acme").await;
    assert_eq!(view["secrets"].as_array().map(Vec::len), Some(1), "{view}");
    assert!(view["secrets"][0]["expiresAt"].is_null());
    assert!(!view.to_string().contains(&secret_a[6..]), "{view}");
}

#[tokio::test]
async fn during_a_grace_period_both_secrets_sign_then_only_the_new_one() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let old = secret(1);
    let (status, _) = put(&app, "/v1/customers/c1", json!({"signingSecret": old})).await;
    assert_eq!(status, 201);
    // Warm the secrets cache with the old secret: the rotation must reach
    // it through NOTIFY, not by luck.
    deliver(&app, receiver.url("/before"), "c1", 0).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;

    let (status, rotated) = status_json(
        app.post(
            "/v1/customers/c1/rotate-secret",
            json!({"gracePeriod": "3s"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["signingSecret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(new, old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    deliver(&app, receiver.url("/grace"), "c1", 1).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let grace = got.iter().find(|r| r.path == "/grace").expect("arrived");
    assert_eq!(signatures(grace), 2, "one signature per live secret");
    assert!(verifies(grace, &new) && verifies(grace, &old));
    let header = grace.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    let newest = header.split(' ').next().unwrap().to_owned();
    let only_new = Received {
        headers: {
            let mut h = grace.headers.clone();
            h.insert("webhook-signature", newest.parse().unwrap());
            h
        },
        ..grace.clone()
    };
    assert!(
        verifies(&only_new, &new),
        "the newest secret's signature comes first"
    );
    let view = app.get_json("/v1/customers/c1").await;
    let secrets = view["secrets"].as_array().expect("secrets").clone();
    assert_eq!(secrets.len(), 2, "{view}");
    assert!(secrets[0]["expiresAt"].is_null() && secrets[1]["expiresAt"].is_string());

    tokio::time::sleep(Duration::from_millis(3200)).await;
    deliver(&app, receiver.url("/after"), "c1", 2).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let after = got.iter().find(|r| r.path == "/after").expect("arrived");
    assert_eq!(signatures(after), 1);
    assert!(verifies(after, &new));
    assert!(
        !verifies(after, &old),
        "the old secret stops signing when its grace ends"
    );
    let view = app.get_json("/v1/customers/c1").await;
    assert_eq!(view["secrets"].as_array().map(Vec::len), Some(1), "{view}");
}

#[tokio::test]
async fn bad_customer_input_is_a_400_that_names_the_field() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let before = app.table_counts().await;
    let (status, body) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": receiver.url("/x"), "customerId": "nobody", "json": {}}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "unknown_customer"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("customerId"));
    let (status, body) = status_json(
        app.post(
            "/v1/jobs",
            json!({"customerId": "nobody", "publish": {"callbacks": [{"url": receiver.url("/j")}]}}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "unknown_customer"), "{body}");
    let (status, body) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": receiver.url("/x"), "customerId": "bad id!", "json": {}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "invalid_customer_id"),
        "{body}"
    );
    assert_eq!(app.table_counts().await, before, "nothing stored");

    let long = "x".repeat(129);
    for (path, want) in [
        ("/v1/customers/bad%20id".to_owned(), "invalid_customer_id"),
        (format!("/v1/customers/{long}"), "invalid_customer_id"),
    ] {
        let (status, body) = put(&app, &path, json!({})).await;
        assert_eq!((status, code(&body)), (400, want), "{path}: {body}");
    }
    for (secret, why) in [
        (format!("whsec_{}", STANDARD.encode([1u8; 23])), "23 bytes"),
        (STANDARD.encode([1u8; 32]), "no whsec_ prefix"),
        ("whsec_not base64!".to_owned(), "not base64"),
    ] {
        let (status, body) = put(&app, "/v1/customers/c", json!({"signingSecret": secret})).await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_field"),
            "{why}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("signingSecret"),
            "{body}"
        );
    }
    let (status, _) = put(&app, "/v1/customers/c", json!({})).await;
    assert_eq!(status, 201);
    for grace in ["8d", "-1s", "soon"] {
        let (status, body) = status_json(
            app.post(
                "/v1/customers/c/rotate-secret",
                json!({"gracePeriod": grace}),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "invalid_field"),
            "{grace}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gracePeriod"),
            "{body}"
        );
    }
    let (status, body) = status_json(
        app.post(
            "/v1/customers/c/rotate-secret",
            json!({"signingSecret": "whsec_c2hvcnQ="}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_field"), "{body}");
    let (status, body) = status_json(app.get("/v1/customers/nobody").await).await;
    assert_eq!((status, code(&body)), (404, "customer_not_found"), "{body}");
    let (status, body) = status_json(
        app.post("/v1/customers/nobody/rotate-secret", json!({}))
            .await,
    )
    .await;
    assert_eq!((status, code(&body)), (404, "customer_not_found"), "{body}");
    let (status, body) = status_json(
        app.http
            .delete(app.url("/v1/customers/nobody"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (404, "customer_not_found"), "{body}");
}

/// Every text value of every row of every table of Postback's schema.
async fn every_stored_text(app: &TestApp) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'postback'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 7, "{tables:?}");
    let mut all = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM postback.\"{table}\" t"))
                .fetch_all(&app.pool)
                .await
                .unwrap();
        for row in rows {
            all.push_str(&row);
            all.push('\n');
        }
    }
    all
}

#[tokio::test]
async fn with_a_key_no_secret_or_header_value_is_stored_in_clear() {
    let key = postback::sealing::Keyring::generate_key();
    let app = TestApp::spawn_with(|c| c.secrets_key = Some(key.clone())).await;
    let receiver = Receiver::start().await;
    let customer_secret = secret(42);
    let (status, _) = put(
        &app,
        "/v1/customers/sealed",
        json!({"signingSecret": customer_secret}),
    )
    .await;
    assert_eq!(status, 201);
    let sealed_job = json!({"jobId": "sealed-job", "customerId": "sealed", "publish": {"callbacks": [
                {"url": receiver.url("/h"), "headers": {"x-api-key": "hdr-secret-one"},
                 "auth": {"type": "jwt", "secret": "jwt-secret-two"}}]}});
    let (status, body) = status_json(app.post("/v1/jobs", sealed_job.clone()).await).await;
    assert_eq!(status, 201, "{body}");
    // The same job again is recognised as the same (the stored request is
    // compared opened), not as a conflict.
    let (status, _) = status_json(app.post("/v1/jobs", sealed_job).await).await;
    assert_eq!(status, 200);
    let (status, _) = status_json(
        app.post(
            "/v1/jobs/sealed-job/result",
            json!({"status": "finished", "result": {"transcript": {"words": []}}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": receiver.url("/g"), "headers": {"x-token": "hdr-secret-three"}, "json": {}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    // What goes out is the clear text: the worker opened what was sealed.
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let h = got.iter().find(|r| r.path == "/h").expect("job callback");
    assert_eq!(h.headers["x-api-key"], "hdr-secret-one");
    assert!(h.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Bearer ey"));
    assert!(verifies(h, &customer_secret));
    let g = got
        .iter()
        .find(|r| r.path == "/g")
        .expect("generic delivery");
    assert_eq!(g.headers["x-token"], "hdr-secret-three");
    let process_secret =
        postback::signing_secret(&app.config, &app.pool, &postback::Schema::default())
            .await
            .expect("the process secret opens")
            .as_whsec();

    let stored = every_stored_text(&app).await;
    assert!(stored.contains("pbsealed:v1:"), "values are sealed");
    for secret_text in [
        customer_secret.as_str(),
        &customer_secret[6..],
        "hdr-secret-one",
        "jwt-secret-two",
        "hdr-secret-three",
        process_secret.as_str(),
        &process_secret[6..],
    ] {
        assert!(
            !stored.contains(secret_text),
            "{secret_text:?} is stored in clear"
        );
    }
}

#[tokio::test]
async fn rows_written_before_the_key_stay_readable_and_reencrypt_seals_them() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let customer_secret = secret(9);
    put(
        &app,
        "/v1/customers/old",
        json!({"signingSecret": customer_secret}),
    )
    .await;
    let (status, _) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": receiver.url("/clear"), "customerId": "old",
                   "headers": {"x-k": "clear-header-value"}, "json": {}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(every_stored_text(&app).await.contains("clear-header-value"));

    let key = postback::sealing::Keyring::generate_key();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", &app.database_url)
            .env("POSTBACK_SECRETS_KEY", &key)
            .env_remove("POSTBACK_DB_SCHEMA")
            .stdin(Stdio::null())
            .output()
            .expect("run postback");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run(&["secrets", "reencrypt"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 customer secrets") && out.contains("1 payloads"),
        "{out}"
    );
    let stored = every_stored_text(&app).await;
    assert!(!stored.contains("clear-header-value") && !stored.contains(&customer_secret[6..]));
    let (code, out) = run(&["secrets", "reencrypt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 customer secrets, 0 jobs, 0 payloads, 0 settings"),
        "{out}"
    );

    // The CLI rotation prints the new secret once; bad input is exit 2.
    let (code, out) = run(&["customers", "secret", "rotate", "old", "--grace", "1h"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.trim().starts_with("whsec_"), "{out}");
    let (code, _) = run(&["customers", "secret", "rotate", "old", "--grace", "30d"]);
    assert_eq!(code, 2);
    let (code, _) = run(&["customers", "secret", "rotate", "nobody"]);
    assert_eq!(code, 2);
}

#[tokio::test]
async fn delete_erases_everything_of_the_customer_and_nothing_else() {
    let app = TestApp::spawn().await;
    let dead = Receiver::start().await;
    dead.always(crate::helpers::Answer::status(500));
    put(&app, "/v1/customers/gone", json!({})).await;
    put(&app, "/v1/customers/stays", json!({})).await;
    for i in 0..5 {
        deliver(&app, dead.url("/gone"), "gone", i).await;
    }
    deliver(&app, dead.url("/stays"), "stays", 0).await;
    let (status, _) = status_json(
        app.post(
            "/v1/jobs",
            json!({"jobId": "gone-job", "customerId": "gone",
                   "publish": {"callbacks": [{"url": dead.url("/gone-job")}]}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    app.post(
        "/v1/jobs/gone-job/result",
        json!({"status": "finished", "result": {"transcript": {"words": []}}}),
    )
    .await;
    dead.wait_for(7, Duration::from_secs(10)).await;

    let response = app
        .http
        .delete(app.url("/v1/customers/gone"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.count("SELECT count(*) FROM postback.deliveries WHERE customer_id = 'gone'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM postback.jobs WHERE customer_id = 'gone'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM postback.customers WHERE id = 'gone'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM postback.customer_secrets WHERE customer_id = 'gone'")
            .await,
        0
    );
    // Payloads and attempts went with their deliveries: what is left is the
    // other customer's.
    assert_eq!(
        app.count("SELECT count(*) FROM postback.deliveries").await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM postback.payloads").await,
        1,
        "payloads of erased deliveries remain"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM postback.attempts a LEFT JOIN postback.deliveries d ON d.id = a.delivery_id WHERE d.id IS NULL").await,
        0
    );
    let (status, body) = status_json(app.get("/v1/customers/gone").await).await;
    assert_eq!((status, code(&body)), (404, "customer_not_found"));
    let (status, body) = status_json(
        app.post(
            "/v1/deliveries",
            json!({"url": dead.url("/late"), "customerId": "gone", "json": {}}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "unknown_customer"), "{body}");
    // Nothing of the erased customer is attempted any more.
    let before = dead
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/gone"))
        .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = dead
        .received()
        .iter()
        .filter(|r| r.path.starts_with("/gone"))
        .count();
    assert_eq!(
        before, after,
        "an erased customer's deliveries are not retried"
    );
    // A customer of that id can be created again afresh.
    let (status, _) = put(&app, "/v1/customers/gone", json!({})).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn one_customer_never_holds_more_than_its_limit_and_others_keep_flowing() {
    const LIMIT: u32 = 3;
    let app = TestApp::spawn_with(|c| {
        c.per_customer_concurrency = LIMIT;
        c.per_host_concurrency = 16;
        c.concurrency = 64;
        c.attempt_timeout = Duration::from_secs(5);
    })
    .await;
    put(&app, "/v1/customers/slow", json!({})).await;
    put(&app, "/v1/customers/fast", json!({})).await;
    // Twenty slow hosts of one customer, each answering after 600 ms.
    let mut slow = Vec::new();
    for i in 0..20 {
        let addr = format!("127.0.0.{}:0", 30 + i);
        slow.push(
            postback_test_support::recorder::Recorder::start(&addr, Duration::from_millis(600))
                .await,
        );
    }
    let fast = Receiver::start().await;
    for (i, host) in slow.iter().enumerate().cycle().take(40) {
        deliver(&app, host.url(&format!("/s{i}")), "slow", i as u32).await;
    }
    let started = Instant::now();
    let mut peak = 0;
    let mut latencies = Vec::new();
    for n in 0..10 {
        let sent = Instant::now();
        deliver(&app, fast.url(&format!("/f{n}")), "fast", n).await;
        loop {
            peak = peak.max(slow.iter().map(|r| r.in_progress()).sum::<usize>());
            if fast.received().len() > n as usize {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "customer B starved"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(sent.elapsed());
    }
    while slow.iter().map(|r| r.total()).sum::<usize>() < 40 {
        peak = peak.max(slow.iter().map(|r| r.in_progress()).sum::<usize>());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slow customer's deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        peak <= LIMIT as usize,
        "customer held {peak} attempts, limit {LIMIT}"
    );
    assert!(peak >= 2, "the slow customer did run in parallel ({peak})");
    latencies.sort();
    let p90 = latencies[8];
    assert!(
        p90 < Duration::from_millis(500),
        "the other customer's deliveries kept their latency: {latencies:?}"
    );
}

/// Deliveries written while their customer is being erased never outlive
/// it: intake locks the customer row per batch (there is no foreign key on
/// `deliveries.customer_id`), and erasure deletes the row only after taking
/// it FOR UPDATE and finding nothing left. Every request is either erased
/// with the customer or refused as `unknown_customer`.
#[tokio::test]
async fn deliveries_racing_an_erasure_are_erased_or_refused_never_orphaned() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    rx.always(crate::helpers::Answer::status(500));
    put(&app, "/v1/customers/racing", json!({})).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let http = app.http.clone();
        let url = app.url("/v1/deliveries");
        let target = rx.url(&format!("/w{w}"));
        let stop = stop.clone();
        writers.spawn(async move {
            let (mut accepted, mut refused) = (0u32, 0u32);
            // Bounded: at most 300 requests per writer.
            for _ in 0..300 {
                let response = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({"url": target, "customerId": "racing", "json": {}}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                match status {
                    202 => accepted += 1,
                    400 => {
                        assert_eq!(code(&body), "unknown_customer", "{body}");
                        refused += 1;
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (accepted, refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = app
        .http
        .delete(app.url("/v1/customers/racing"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut accepted, mut refused) = (0, 0);
    while let Some(done) = writers.join_next().await {
        let (a, r) = done.unwrap();
        accepted += a;
        refused += r;
    }
    assert!(accepted > 0, "no delivery was written before the erasure");
    assert!(refused > 0, "no delivery was refused after the erasure");
    // The erasure of rows that committed while DELETE ran is finished by
    // the DELETE itself or, if any came after its last pass, by the next
    // retention pass; wait for the customer's row to go, bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (customers, payloads, deliveries): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM postback.customers WHERE id = 'racing'),
                    (SELECT count(*) FROM postback.payloads WHERE customer_id = 'racing'),
                    (SELECT count(*) FROM postback.deliveries WHERE customer_id = 'racing')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if customers == 0 {
            assert_eq!(
                (payloads, deliveries),
                (0, 0),
                "rows of the erased customer outlived it ({accepted} accepted, {refused} refused)"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the customer row is still there after 20 s ({payloads} payloads, {deliveries} deliveries left)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// The deterministic form of the race above: a delivery whose batch is
/// still uncommitted holds its customer's row FOR KEY SHARE, so erasure
/// waits for it, then erases it too, and only then deletes the customer.
#[tokio::test]
async fn an_erasure_waits_for_a_delivery_being_written_and_erases_it_too() {
    use postback::store::{customers, deliveries, Schema};
    let app = TestApp::spawn().await;
    put(&app, "/v1/customers/slow-writer", json!({})).await;
    let schema = Schema::default();
    let mut writer = app.pool.begin().await.unwrap();
    let mut row = deliveries::NewDelivery::generic_json(
        "http://127.0.0.1:9/x",
        b"{}".to_vec(),
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    );
    row.customer_id = Some("slow-writer".into());
    deliveries::insert(&mut writer, &schema, &[row])
        .await
        .unwrap();

    let pool = app.pool.clone();
    let eraser = tokio::spawn(async move {
        let schema = Schema::default();
        let mut conn = pool.acquire().await.unwrap();
        assert!(customers::mark_deleted(&mut conn, &schema, "slow-writer")
            .await
            .unwrap());
        customers::erase(&mut conn, &schema, "slow-writer", 1000)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !eraser.is_finished(),
        "the erasure finished while a delivery of the customer was being written"
    );
    writer.commit().await.unwrap();
    let erased = tokio::time::timeout(Duration::from_secs(10), eraser)
        .await
        .expect("the erasure did not finish after the writer committed")
        .unwrap();
    assert_eq!(erased, 1, "the delivery written meanwhile was not erased");
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM postback.customers WHERE id = 'slow-writer'),
                (SELECT count(*) FROM postback.payloads WHERE customer_id = 'slow-writer'),
                (SELECT count(*) FROM postback.deliveries WHERE customer_id = 'slow-writer')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
    app.stop().await;
}
