//! Observability of SPEC §1 and §4: `postback healthcheck`, the log level
//! setting, colour only on a terminal, and `postback_build_info`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{fresh_database, output, postback, TestApp};

fn run(cmd: &mut Command) -> (i32, String) {
    output(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_is_0_when_ready_1_when_not_and_2_on_a_bad_url() {
    let app = TestApp::spawn().await;
    let (code, text) = run(postback().args(["healthcheck", "--url", &app.base]));
    assert_eq!(code, 0, "{text}");
    // Nothing listens on port 9 of loopback (discard is not served here).
    let started = Instant::now();
    let (code, text) = run(postback().args(["healthcheck", "--url", "http://127.0.0.1:9"]));
    assert_eq!(code, 1, "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (code, text) = run(postback().args(["healthcheck", "--url", "not a url"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--url"), "{text}");
}

#[test]
fn a_log_level_that_is_not_a_filter_is_exit_2_naming_it() {
    let (code, text) = run(postback()
        .args(["serve"])
        .env("POSTBACK_INSECURE_NO_AUTH", "1")
        .env("POSTBACK_LOG_LEVEL", "very=loud=please"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("POSTBACK_LOG_LEVEL") || text.contains("--log-level"),
        "{text}"
    );
}

#[tokio::test]
async fn pretty_logs_into_a_pipe_carry_no_colour_and_honour_the_level() {
    let url = fresh_database().await;
    let mut child = postback()
        .args(["serve"])
        .env("DATABASE_URL", &url)
        .env("POSTBACK_INSECURE_NO_AUTH", "1")
        .env("POSTBACK_LISTEN", "127.0.0.1:0")
        .env("POSTBACK_LOG_LEVEL", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{err}");
    assert!(err.contains("running"), "{err}");
    assert!(
        err.contains("DEBUG"),
        "POSTBACK_LOG_LEVEL=debug shows debug lines: {err}"
    );
    assert!(!err.contains('\u{1b}'), "escape codes in a pipe: {err:?}");
}

#[tokio::test]
async fn build_info_carries_the_version() {
    let app = TestApp::spawn().await;
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "postback_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&line), "{line} missing");
}

// ---------------------------------------------------------------------------
// JSON logs (SPEC §1 `POSTBACK_LOG_FORMAT=json`): every kind of line of a
// real `serve`, parsed, with its fields' types checked.

use postback_test_support::child::{free_port, Child, Options};
use serde_json::{json, Value};

use crate::helpers::{postback_on, Answer, Receiver};

const API_TOKEN: &str = "obs-token-Zq8";
const SIGNING_SECRET: &str = "whsec_b2JzZXJ2YWJpbGl0eS1zZWNyZXQtMTIzNDU2";

/// `serve` as a child on `url`, JSON logs at debug for Postback itself.
fn json_serve(url: &str, port: u16) -> Child {
    let listen = format!("127.0.0.1:{port}");
    Child::spawn(
        "serve-json",
        std::path::Path::new(env!("CARGO_BIN_EXE_postback")),
        "serve",
        [
            ("DATABASE_URL", url),
            ("POSTBACK_LISTEN", listen.as_str()),
            ("POSTBACK_API_TOKEN", API_TOKEN),
            ("POSTBACK_SIGNING_SECRET", SIGNING_SECRET),
            ("POSTBACK_EGRESS_ALLOW", "127.0.0.0/8"),
            ("POSTBACK_RETRY_IMMEDIATE", "0"),
            ("POSTBACK_RETRY_FIRST_DELAY", "10m"),
            ("POSTBACK_RETRY_GIVE_UP", "1h"),
            ("POSTBACK_ATTEMPT_TIMEOUT", "10s"),
            ("POSTBACK_BREAKER_FAILURES", "0"),
            ("POSTBACK_LOG_FORMAT", "json"),
            ("POSTBACK_LOG_LEVEL", "info,postback=debug"),
        ],
        Options {
            drop_grace: Some(Duration::from_secs(5)),
            die_with_parent: true,
            ..Options::default()
        },
    )
    .expect("serve starts")
}

/// Every line of the log as a JSON object (panics on one that is not).
fn json_lines(child: &Child) -> Vec<serde_json::Map<String, Value>> {
    child
        .lines()
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object ({other:?}): {l}"),
        })
        .collect()
}

/// A value that is Rust `Debug` output rather than data.
fn looks_like_debug(text: &str) -> bool {
    let struct_like = text
        .split_once(" {")
        .is_some_and(|(head, _)| !head.is_empty() && head.chars().all(|c| c.is_alphanumeric()));
    let tuple_like = text.split_once('(').is_some_and(|(head, rest)| {
        head.starts_with(|c: char| c.is_ascii_uppercase())
            && head.chars().all(|c| c.is_alphanumeric())
            && rest.ends_with(')')
    });
    text == "None" || text.contains("Some(") || struct_like || tuple_like
}

#[test]
fn debug_text_is_recognised() {
    for debug in [
        "None",
        "Some(3)",
        "Some(2026-12-01 21:44:40.847 +00:00:00)",
        "Duration(5)",
        "Claimed { id: 1 }",
    ] {
        assert!(looks_like_debug(debug), "{debug}");
    }
    for data in [
        "serve",
        "attempt failed; retry scheduled",
        "error sending request for url (http://h/)",
        "127.0.0.1:8080",
        "{}",
    ] {
        assert!(!looks_like_debug(data), "{data}");
    }
}

fn is_rfc3339(text: &str) -> bool {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).is_ok()
}

/// The checks every line passes, whatever its kind.
fn check_line(line: &serde_json::Map<String, Value>) {
    let text = serde_json::to_string(line).unwrap();
    let ts = line["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("timestamp: {text}"));
    assert!(is_rfc3339(ts) && ts.ends_with('Z'), "RFC 3339 UTC: {text}");
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&line["level"].as_str().unwrap_or("")),
        "{text}"
    );
    assert!(line["message"].is_string(), "{text}");
    assert!(
        !line.contains_key("spans") && !line.contains_key("fields"),
        "{text}"
    );
    for (key, value) in line {
        assert!(
            !key.contains('_') && key.starts_with(|c: char| c.is_ascii_lowercase()),
            "field {key:?} is not camelCase: {text}"
        );
        if let Value::String(s) = value {
            assert!(!looks_like_debug(s), "{key} = {s:?} is Debug text: {text}");
        }
        assert!(
            !value.is_null(),
            "{key} is null instead of left out: {text}"
        );
    }
    // Known fields have their types.
    for key in [
        "status",
        "attempt",
        "inFlight",
        "latencyMs",
        "durationMs",
        "waitedMs",
        "suppressed",
        "jobs",
        "deliveries",
        "n",
        "waitMs",
    ] {
        if let Some(v) = line.get(key) {
            assert!(v.is_number(), "{key} is not a number: {text}");
        }
    }
    for key in ["nextAttemptAt", "nextProbe"] {
        if let Some(v) = line.get(key) {
            assert!(
                v.as_str().is_some_and(is_rfc3339),
                "{key} is not RFC 3339: {text}"
            );
        }
    }
}

fn with_message<'a>(
    lines: &'a [serde_json::Map<String, Value>],
    start: &str,
) -> Vec<&'a serde_json::Map<String, Value>> {
    lines
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(start)))
        .collect()
}

fn one<'a>(
    lines: &'a [serde_json::Map<String, Value>],
    start: &str,
) -> &'a serde_json::Map<String, Value> {
    with_message(lines, start)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {start:?} line in {lines:#?}"))
}

async fn queue(http: &reqwest::Client, base: &str, url: String) -> String {
    let response = http
        .post(format!("{base}/v1/deliveries"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"url": url, "json": {"n": 1}}))
        .send()
        .await
        .expect("POST /v1/deliveries");
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["deliveryId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_of_every_kind_parse_with_typed_fields() {
    let url = fresh_database().await;
    let (code, text) = output(postback_on(&url).arg("migrate"));
    assert_eq!(code, 0, "{text}");
    // An expired job for the first retention pass (it runs at start).
    let pool = postback_test_support::pg::postback_pool(&url).await;
    sqlx::query(
        "INSERT INTO postback.jobs (id, request, callbacks, expires_at)
         VALUES ('old-job', '{}', '[]', now() - interval '1 minute')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let ok = Receiver::start().await;
    let broken = Receiver::start().await;
    broken.always(Answer::status(500).body("backend exploded\nwhile parsing"));
    let gone = Receiver::start().await;
    gone.always(Answer::status(410));
    let slow = Receiver::start().await;
    slow.always(Answer::ok().delayed(Duration::from_secs(2)));

    let port = free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = json_serve(&url, port);
    child
        .wait_ready(&base, Duration::from_secs(60))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let bounded = Duration::from_secs(20);
    queue(&http, &base, ok.url("/ok")).await;
    ok.wait_for(1, bounded).await;
    queue(&http, &base, broken.url("/broken")).await;
    queue(&http, &base, gone.url("/gone")).await;
    // Nothing listens on port 9 of loopback: a connection error.
    queue(&http, &base, "http://127.0.0.1:9/refused".to_owned()).await;
    for message in [
        "delivered",
        "attempt failed; retry scheduled",
        "delivery failed for good",
    ] {
        child
            .wait_log(bounded, |l| l["message"] == message)
            .await
            .unwrap();
    }
    child
        .wait_log(bounded, |l| l["outcome"] == "connect_error")
        .await
        .unwrap();
    child
        .wait_log(bounded, |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("purged expired"))
        })
        .await
        .unwrap();
    // In flight when SIGTERM arrives: the drain line counts it.
    queue(&http, &base, slow.url("/slow")).await;
    slow.wait_for(1, bounded).await;
    let status = child.terminate(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");

    let lines = json_lines(&child);
    for line in &lines {
        check_line(line);
    }

    let start = one(&lines, "starting");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["role"], "serve");
    let settings = start["settings"].as_str().expect("settings");
    assert!(settings.contains("POSTBACK_CONCURRENCY=256"), "{settings}");
    assert!(
        settings.contains("POSTBACK_ATTEMPT_TIMEOUT=10s"),
        "{settings}"
    );
    assert!(settings.contains("POSTBACK_API_TOKEN=***"), "{settings}");
    assert!(
        settings.contains("POSTBACK_SIGNING_SECRET=***"),
        "{settings}"
    );
    assert!(settings.contains("DATABASE_URL="), "{settings}");
    let all = lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!all.contains(API_TOKEN), "the API token is logged");
    assert!(
        !all.contains(SIGNING_SECRET),
        "the signing secret is logged"
    );
    assert_eq!(one(&lines, "running")["role"], "serve");
    one(&lines, "API listening");

    // Access lines: typed status and latency, the route template.
    let access = with_message(&lines, "finished processing request");
    let post = access
        .iter()
        .find(|l| l["method"] == "POST" && l["path"] == "/v1/deliveries")
        .expect("access line of POST /v1/deliveries");
    assert_eq!(post["status"], 202);
    assert_eq!(post["route"], "/v1/deliveries");
    assert!(post["latencyMs"].is_f64(), "{post:?}");
    assert!(post["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(post["span"], "request");

    // Attempt lines: inside the attempt span, error text on failure.
    let delivered = one(&lines, "delivered");
    assert_eq!(delivered["status"], 200);
    assert_eq!(delivered["attempt"], 1);
    assert_eq!(delivered["outcome"], "success");
    assert!(delivered["deliveryId"].is_string() && delivered["host"].is_string());
    assert!(
        !delivered.contains_key("jobId"),
        "no job: left out, not empty: {delivered:?}"
    );
    assert!(!delivered.contains_key("error"), "{delivered:?}");
    let retry = one(&lines, "attempt failed; retry scheduled");
    assert_eq!(retry["status"], 500);
    assert_eq!(retry["outcome"], "http_error");
    assert_eq!(retry["error"], "backend exploded while parsing");
    assert!(retry["nextAttemptAt"].is_string());
    let failed = one(&lines, "delivery failed for good");
    assert_eq!(failed["status"], 410);
    assert_eq!(failed["level"], "WARN");
    let refused = lines
        .iter()
        .find(|l| l.get("outcome").is_some_and(|o| o == "connect_error"))
        .unwrap();
    assert!(
        !refused.contains_key("status"),
        "no response: no status: {refused:?}"
    );
    let error = refused["error"]
        .as_str()
        .expect("error text of a connect error");
    assert!(!error.is_empty() && error.chars().count() <= 201, "{error}");

    // Housekeeping.
    let purged = one(&lines, "purged expired");
    assert_eq!(purged["jobs"], 1);
    assert_eq!(purged["deliveries"], 0);

    // Shutdown: the signal, the drain with the count in flight, its end.
    one(&lines, "SIGTERM");
    let draining = one(&lines, "draining");
    assert!(
        draining["inFlight"].as_u64().is_some_and(|n| n >= 1),
        "{draining:?}"
    );
    let drained = one(&lines, "drained");
    assert_eq!(drained["inFlight"], draining["inFlight"]);
    assert!(
        drained["waitedMs"].as_u64().is_some_and(|ms| ms >= 500),
        "{drained:?}"
    );
    assert_eq!(slow.received().len(), 1);
    let stopped = lines.last().unwrap();
    assert_eq!(stopped["message"], "stopped", "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_retention_pass_is_a_warning_with_the_error() {
    let url = fresh_database().await;
    let (code, text) = output(postback_on(&url).arg("migrate"));
    assert_eq!(code, 0, "{text}");
    let pool = postback_test_support::pg::postback_pool(&url).await;
    for statement in [
        "INSERT INTO postback.jobs (id, request, callbacks, expires_at)
         VALUES ('old-job', '{}', '[]', now() - interval '1 minute')",
        "CREATE FUNCTION postback.refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'tombstones are read-only in this test'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON postback.job_tombstones
         FOR EACH ROW EXECUTE FUNCTION postback.refuse()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let port = free_port().unwrap();
    let mut child = json_serve(&url, port);
    let line = child
        .wait_log(Duration::from_secs(30), |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("retention pass failed"))
        })
        .await
        .unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["suppressed"], 0, "{line}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("tombstones are read-only")),
        "{line}"
    );
    child.terminate(Duration::from_secs(30)).await.unwrap();
    for line in json_lines(&child) {
        check_line(&line);
    }
}

// ---------------------------------------------------------------------------
// SPEC §4: HTTP and process metrics.

/// The value of the series `key` (`name{labels}` exactly as exposed).
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == key))
        .and_then(|(_, v)| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn http_requests_are_counted_by_route_template_and_status_with_unmatched_paths_under_one_label(
) {
    let app = TestApp::spawn().await;
    let job_404 = "postback_http_requests_total{route=\"/v1/jobs/{jobId}\",status=\"404\"}";
    let unmatched_404 = "postback_http_requests_total{route=\"unmatched\",status=\"404\"}";
    let unauthorized = "postback_http_requests_total{route=\"/v1/jobs/{jobId}\",status=\"401\"}";
    let before = scrape(&app).await;
    let count = |text: &str, key: &str| series(text, key).unwrap_or(0.0);
    let probe = uuid::Uuid::new_v4().simple().to_string();
    for _ in 0..2 {
        let r = app.get(&format!("/v1/jobs/no-such-{probe}")).await;
        assert_eq!(r.status(), 404);
    }
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs/{probe}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in [format!("/scan/{probe}"), format!("/v1/nothing/{probe}")] {
        let r = app.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    let after = scrape(&app).await;
    assert_eq!(
        count(&after, job_404) - count(&before, job_404),
        2.0,
        "{after}"
    );
    assert_eq!(
        count(&after, unauthorized) - count(&before, unauthorized),
        1.0,
        "{after}"
    );
    assert_eq!(
        count(&after, unmatched_404) - count(&before, unmatched_404),
        2.0,
        "{after}"
    );
    // The paths themselves never become labels.
    assert!(
        !after.contains(&probe),
        "a request path became a label: {after}"
    );
    // The histogram has buckets, by route.
    let bucket =
        "postback_http_request_duration_seconds_bucket{route=\"/v1/jobs/{jobId}\",le=\"+Inf\"}";
    assert!(count(&after, bucket) >= 3.0, "{after}");
    assert!(after.contains("# TYPE postback_http_request_duration_seconds histogram"));
    assert!(after.contains("# TYPE postback_http_requests_total counter"));
    // The scrape before this one was counted under its own route.
    assert!(
        count(
            &after,
            "postback_http_requests_total{route=\"/metrics\",status=\"200\"}"
        ) >= 1.0,
        "{after}"
    );
    app.stop().await;
}

#[tokio::test]
async fn process_metrics_are_exposed() {
    let app = TestApp::spawn().await;
    let text = scrape(&app).await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        let value = series(&text, name).unwrap_or_else(|| panic!("{name} missing: {text}"));
        assert!(value >= 0.0, "{name} = {value}");
    }
    assert!(series(&text, "process_resident_memory_bytes").unwrap() > 1_000_000.0);
    assert!(series(&text, "process_open_fds").unwrap() >= 3.0);
    let started = series(&text, "process_start_time_seconds").unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        started > now - 3600.0 && started <= now + 1.0,
        "{started} vs {now}"
    );
    app.stop().await;
}
