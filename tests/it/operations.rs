//! Issue 7: operating Postback — the admin CLI against the database, the
//! dev receiver, and the Prometheus exposition, each through the real
//! binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{fresh_database, Answer, Receiver, TestApp, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_postback");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A child process killed when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use crate::helpers::{postback_on as postback, run_split as run};

/// Deliveries fail for good within about a second with these settings.
async fn app_that_gives_up_fast() -> TestApp {
    TestApp::spawn_with(|c| {
        c.retry_immediate = 0;
        c.retry_first_delay = Duration::from_millis(200);
        c.retry_max_delay = Duration::from_millis(200);
        c.retry_give_up = Duration::from_millis(300);
    })
    .await
}

async fn enqueue(app: &TestApp, url: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let response = app
            .post("/v1/deliveries", json!({"url": url, "json": {"n": i}}))
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["deliveryId"].as_str().unwrap().to_owned());
    }
    ids
}

async fn status_of(app: &TestApp, id: &str) -> String {
    app.get_json(&format!("/v1/deliveries/{id}")).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn failed_deliveries_are_listed_dry_run_replayed_and_then_delivered_with_their_ids() {
    let receiver = Receiver::start().await;
    receiver.always(Answer::status(503));
    let app = app_that_gives_up_fast().await;
    let ids = enqueue(&app, &receiver.url("/hook"), 3).await;
    for id in &ids {
        app.wait_delivery(id, Duration::from_secs(15), |v| v["status"] == "failed")
            .await;
    }
    let before = receiver.received().len();

    let (code, out, err) = run(postback(&app.database_url).args([
        "deliveries",
        "list",
        "--status",
        "failed",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{out}");
    assert!(listed
        .iter()
        .all(|l| l["status"] == "failed" && l["lastError"] == "http_error"));
    let (code, table, _) =
        run(postback(&app.database_url).args(["deliveries", "list", "--host", "127.0.0.1"]));
    assert_eq!(code, 0);
    assert!(table.contains("3 deliveries"), "{table}");

    let (code, out, err) =
        run(postback(&app.database_url).args(["replay", "--status", "failed", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would replay 3 deliveries"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        assert_eq!(status_of(&app, id).await, "failed", "dry run changed {id}");
    }
    assert_eq!(receiver.received().len(), before, "dry run sent something");

    let (code, out, err) = run(postback(&app.database_url).args(["deliveries", "show", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("failed") && out.contains("503"), "{out}");

    receiver.always(Answer::ok());
    let (code, out, err) =
        run(postback(&app.database_url).args(["replay", "--status", "failed", "--rate", "20/s"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 3 deliveries"), "{out}");
    for id in &ids {
        let view = app
            .wait_delivery(id, Duration::from_secs(10), |v| v["status"] == "delivered")
            .await;
        assert!(view["attemptCount"].as_i64().unwrap() >= 2);
    }
    let ok_ids: Vec<String> = receiver
        .received()
        .iter()
        .skip(before)
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        assert!(
            ok_ids.contains(id),
            "replayed delivery {id} changed its webhook-id"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn replay_by_id_and_bad_usage() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    let ids = enqueue(&app, &receiver.url("/x"), 1).await;
    app.wait_delivery(&ids[0], Duration::from_secs(10), |v| {
        v["status"] == "delivered"
    })
    .await;
    let (code, out, err) = run(postback(&app.database_url).args(["replay", &ids[0]]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1 deliveries"), "{out}");
    receiver.wait_for(2, Duration::from_secs(10)).await;

    let usage: &[&[&str]] = &[
        &["replay"],
        &["replay", "not-a-uuid"],
        &["replay", "--status", "delivered"],
        &["replay", "--status", "failed", "--rate", "fast"],
        &["replay", &ids[0], "--host", "x"],
        &["deliveries", "list", "--since", "yesterday"],
        &["deliveries", "list", "--limit", "0"],
        &["deliveries", "show", "nope"],
        &["purge"],
    ];
    for args in usage {
        let (code, _, err) = run(postback(&app.database_url).args(*args));
        assert_eq!(code, 2, "{args:?} should be bad usage: {err}");
        assert!(!err.trim().is_empty(), "{args:?} says nothing");
    }
    let (code, _, err) =
        run(postback(&app.database_url).args(["replay", &uuid::Uuid::now_v7().to_string()]));
    assert_eq!(code, 1, "unknown id: {err}");
    app.stop().await;
}

/// Payloads and attempts whose delivery is gone (must be none).
const ORPHANS: &str = "SELECT (SELECT count(*) FROM postback.payloads p WHERE NOT EXISTS (SELECT 1 FROM postback.deliveries d WHERE d.id = p.delivery_id))
                            + (SELECT count(*) FROM postback.attempts a WHERE NOT EXISTS (SELECT 1 FROM postback.deliveries d WHERE d.id = a.delivery_id))";

/// Payloads and attempts carry no foreign key (it cost a check per row on
/// every insert); a statement trigger removes them with their delivery,
/// however the delivery goes: deleted itself, or with its job.
#[tokio::test]
async fn a_delivery_deleted_any_way_takes_its_payload_and_attempts() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    for job in ["kept", "dropped"] {
        let body = json!({"jobId": job, "publish": {"callbacks": [{"url": receiver.url("/cb")}, {"url": receiver.url("/cb2")}]}});
        assert_eq!(app.post("/v1/jobs", body).await.status(), 201);
        let result = json!({"status": "finished", "result": {"transcript": {"words": []}}});
        let posted = app.post(&format!("/v1/jobs/{job}/result"), result).await;
        assert_eq!(posted.status(), 200);
    }
    receiver.wait_for(4, Duration::from_secs(10)).await;
    let children = "SELECT (SELECT count(*) FROM postback.payloads) + (SELECT count(*) FROM postback.attempts)";
    // 4 deliveries, each with a payload and (once delivered) an attempt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count(children).await < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.count(children).await, 8);
    // One delivery of "kept" deleted on its own.
    app.exec("DELETE FROM postback.deliveries WHERE id = (SELECT id FROM postback.deliveries WHERE job_id = 'kept' LIMIT 1)").await;
    // "dropped" deleted as a job: its deliveries go by the jobs' cascade.
    app.exec("DELETE FROM postback.jobs WHERE id = 'dropped'")
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM postback.deliveries").await,
        1
    );
    assert_eq!(
        app.count(children).await,
        2,
        "children outlived their delivery"
    );
    assert_eq!(app.count(ORPHANS).await, 0);
}

#[tokio::test]
async fn purge_expired_leaves_no_row_of_an_expired_job() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    for job in ["old", "young"] {
        let body = json!({"jobId": job, "publish": {"callbacks": [{"url": receiver.url("/cb")}]}});
        assert_eq!(app.post("/v1/jobs", body).await.status(), 201);
        let result = json!({"status": "finished", "result": {"transcript": {"words": []}}});
        assert_eq!(
            app.post(&format!("/v1/jobs/{job}/result"), result)
                .await
                .status(),
            200
        );
    }
    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.exec("UPDATE postback.jobs SET expires_at = now() - interval '1 minute' WHERE id = 'old'")
        .await;
    app.exec("UPDATE postback.deliveries SET expires_at = now() - interval '1 minute' WHERE job_id = 'old'").await;
    let (code, out, err) = run(postback(&app.database_url).args(["purge", "--expired"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 1 expired jobs"), "{out}");
    for (table, column) in [("jobs", "id"), ("deliveries", "job_id")] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM postback.{table} WHERE {column} = 'old'"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} keeps rows of the expired job");
    }
    assert_eq!(app.count(ORPHANS).await, 0);
    assert_eq!(app.get("/v1/jobs/young").await.status(), 200);
    let gone = app.get("/v1/jobs/old").await;
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "job_expired",
        "a purged job must still answer job_expired"
    );
    let never = app.get("/v1/jobs/never-seen").await;
    assert_eq!(
        never.json::<Value>().await.unwrap()["error"]["code"],
        "job_not_found"
    );
    app.stop().await;
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
            Err(_) => panic!("no matching line in {limit:?}; got:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test]
async fn listen_receives_a_signed_callback_from_serve_and_reports_it_verified() {
    let mut child = Command::new(BIN)
        .args(["listen", "--port", "0", "--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let _guard = ChildGuard(child);
    let mut seen = Vec::new();
    let line = wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.contains("receiving on")
    });
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();

    let app = TestApp::spawn_with(|c| c.signing_secret = Some(SECRET.to_owned())).await;
    let response = app
        .post(
            "/v1/deliveries",
            json!({"url": format!("{url}hook"), "json": {"hello": "listener"}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["deliveryId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_delivery(&id, Duration::from_secs(10), |v| v["status"] == "delivered")
        .await;
    wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.starts_with("signature:")
    });
    let all = seen.join("\n");
    assert!(all.contains("signature: verified"), "{all}");
    assert!(all.contains("POST /hook"), "{all}");
    assert!(all.contains("\"hello\": \"listener\""), "{all}");

    // A wrong secret is reported, and Validation-Token is echoed.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{url}check"))
        .header("validation-token", "abc123")
        .header("webhook-id", "msg_1")
        .header(
            "webhook-timestamp",
            time::OffsetDateTime::now_utc().unix_timestamp().to_string(),
        )
        .header("webhook-signature", "v1,AAAA")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["validation-token"], "abc123");
    let line = wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.starts_with("signature:")
    });
    assert!(line.contains("INVALID"), "{line}");
    app.stop().await;
}

/// A signed request to a `listen` at `base`: (status, validation-token echoed).
async fn send_signed(base: &str, secret: &str, body: &str) -> (u16, Option<String>) {
    let secret = postback::signing::SigningSecret::parse(secret).unwrap();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut signer = postback::signing::Signer::new(&secret, "msg_ok", ts);
    signer.update(body.as_bytes());
    let answer = reqwest::Client::new()
        .post(format!("{base}/signed?x=1"))
        .header("validation-token", "tok-1")
        .header("webhook-id", "msg_ok")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signer.finish())
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let echoed = answer
        .headers()
        .get("validation-token")
        .map(|v| v.to_str().unwrap().to_owned());
    (answer.status().as_u16(), echoed)
}

#[tokio::test]
async fn listen_binds_where_asked_answers_the_status_given_rejects_bad_signatures_and_prints_json()
{
    let port = postback_test_support::child::free_port().unwrap();
    let mut child = Command::new(BIN)
        .args(["listen", "--bind", "127.0.0.2", "--port", &port.to_string()])
        .args([
            "--secret",
            SECRET,
            "--respond",
            "503",
            "--reject-invalid",
            "--json",
        ])
        .env_remove("POSTBACK_SIGNING_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let _guard = ChildGuard(child);
    let base = format!("http://127.0.0.2:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "listen did not bind 127.0.0.2:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the address asked for: not 127.0.0.1.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut seen = Vec::new();

    // A good signature gets the --respond status, and one JSON line.
    let (status, echoed) = send_signed(&base, SECRET, r#"{"hello":"json"}"#).await;
    assert_eq!(status, 503);
    assert_eq!(echoed.as_deref(), Some("tok-1"));
    let line = wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.starts_with('{')
    });
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/signed?x=1");
    assert_eq!(
        v["body"],
        json!({"hello": "json"}),
        "the body as JSON, not text"
    );
    assert_eq!(v["bytes"], 16);
    assert_eq!(v["truncated"], false);
    assert_eq!(v["signature"], "verified");
    assert_eq!(v["status"], 503);
    assert_eq!(v["headers"]["webhook-id"], "msg_ok");

    // A bad one: 401 with --reject-invalid, and the line says why.
    let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (status, _) = send_signed(&base, other, "plain text").await;
    assert_eq!(status, 401);
    let line = wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.starts_with('{')
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["body"], "plain text");
    assert_eq!(v["status"], 401);
    assert!(
        v["signature"].as_str().unwrap().starts_with("INVALID"),
        "{v}"
    );
    // Unsigned: invalid too.
    let answer = reqwest::Client::new()
        .post(format!("{base}/unsigned"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let line = wait_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.starts_with('{')
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v.get("body").is_none(), "an empty body is left out: {v}");
    assert_eq!(v["bytes"], 0);
    assert!(
        seen.iter().all(|l| l.starts_with('{')),
        "--json prints only JSON lines: {seen:?}"
    );
}

#[test]
fn listen_bad_flags_are_exit_2_naming_the_flag() {
    for (args, flag) in [
        (vec!["--respond", "99"], "--respond"),
        (vec!["--respond", "600"], "--respond"),
        (vec!["--respond", "ok"], "--respond"),
        (vec!["--port", "70000"], "--port"),
        (vec!["--bind", "localhost:80"], "--bind"),
        (vec!["--secret", "not-a-secret"], "--secret"),
        (vec!["--reject-invalid"], "--secret"),
        (vec!["--json=yes"], "--json"),
    ] {
        let mut cmd = crate::helpers::postback();
        cmd.arg("listen");
        if !args.contains(&"--port") {
            cmd.args(["--port", "0"]);
        }
        let (code, out, err) = run(cmd.args(&args));
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
    }
}

/// Parses the Prometheus text format into (name{labels}, value) pairs.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(metrics: &[(String, f64)], key: &str) -> f64 {
    metrics
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no series {key}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn metrics_families_and_exact_counts_after_a_scripted_run() {
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.always(Answer::status(500));
    let database_url = fresh_database().await;
    let port = free_port();
    let mut cmd = postback(&database_url);
    cmd.arg("serve")
        .env("POSTBACK_API_TOKEN", TOKEN)
        .env("POSTBACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("POSTBACK_EGRESS_ALLOW", "127.0.0.0/8")
        .env("POSTBACK_RETRY_IMMEDIATE", "1")
        .env("POSTBACK_RETRY_FIRST_DELAY", "100ms")
        .env("POSTBACK_RETRY_MAX_DELAY", "100ms")
        .env("POSTBACK_RETRY_GIVE_UP", "150ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _guard = ChildGuard(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "serve not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    // One job, two callbacks (analytics + srt), delivered.
    let job = json!({"jobId": "m1", "publish": {"callbacks": [
        {"url": ok.url("/a")},
        {"url": ok.url("/t"), "type": "transcript", "format": "srt"}]}});
    assert_eq!(post("/v1/jobs", job).await.unwrap().status(), 201);
    let result = json!({"status": "finished", "result": {"transcript": {"words": [{"p":0,"s":0,"e":400,"c":0.9,"w":"Hi."}]}}});
    assert_eq!(
        post("/v1/jobs/m1/result", result).await.unwrap().status(),
        200
    );
    // One generic delivery that fails every attempt: 1 + 1 immediate + retries until 150 ms.
    let response = post(
        "/v1/deliveries",
        json!({"url": failing.url("/f"), "json": {}}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["deliveryId"]
        .as_str()
        .unwrap()
        .to_owned();
    ok.wait_for(2, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed_attempts = loop {
        let view: Value = http
            .get(format!("{base}/v1/deliveries/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["status"] == "failed" {
            break view["attemptCount"].as_f64().unwrap();
        }
        assert!(Instant::now() < deadline, "never failed: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "# TYPE postback_jobs_created_total counter",
        "# TYPE postback_deliveries_enqueued_total counter",
        "# TYPE postback_delivery_attempts_total counter",
        "# TYPE postback_deliveries_completed_total counter",
        "# TYPE postback_attempt_duration_seconds histogram",
        "# TYPE postback_delivery_latency_seconds histogram",
        "# TYPE postback_queue_depth gauge",
        "# TYPE postback_oldest_due_seconds gauge",
    ] {
        assert!(text.contains(family), "missing {family}:\n{text}");
    }
    let m = parse_metrics(&text);
    assert_eq!(value(&m, "postback_jobs_created_total"), 1.0);
    assert_eq!(
        value(&m, "postback_deliveries_enqueued_total{type=\"analytics\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "postback_deliveries_enqueued_total{type=\"transcript\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "postback_deliveries_enqueued_total{type=\"generic\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "postback_delivery_attempts_total{outcome=\"success\"}"),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "postback_delivery_attempts_total{outcome=\"http_error\"}"
        ),
        failed_attempts
    );
    assert_eq!(
        value(&m, "postback_delivery_attempts_total{outcome=\"timeout\"}"),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "postback_deliveries_completed_total{result=\"delivered\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&m, "postback_deliveries_completed_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(value(&m, "postback_delivery_latency_seconds_count"), 2.0);
    assert_eq!(
        value(
            &m,
            "postback_attempt_duration_seconds_count{outcome=\"success\"}"
        ),
        2.0
    );
    for state in ["due", "scheduled", "in_flight"] {
        value(&m, &format!("postback_queue_depth{{state=\"{state}\"}}"));
    }
    value(&m, "postback_oldest_due_seconds");
}
