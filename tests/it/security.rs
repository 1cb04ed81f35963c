//! Issue 14: security hardening. Every finding has its regression test
//! here: media only from under POSTBACK_MEDIA_ROOT (and re-checked at the
//! attempt), the schema name, settings that passed parsing and broke later,
//! admin commands on an unreachable database, the API edge, TLS to
//! PostgreSQL, and the proxy path.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Answer, Receiver, TestApp};

/// Every test runs inside this bound.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test did not finish within 90 s")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A fresh directory of this test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pb-sec-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn media_job(id: &str, url: &str) -> Value {
    json!({"jobId": id, "publish": {"callbacks": [
        {"url": url, "method": "PUT", "type": "media", "stream": "original"}
    ]}})
}

fn result_with_stream(path: &Path) -> Value {
    json!({
        "status": "finished",
        "result": {"transcript": {"words": []}},
        "streams": [{"streamName": "original", "path": path.to_string_lossy(), "contentType": "audio/mpeg"}]
    })
}

// ---- Finding 1: any file on the host could be uploaded -------------------

#[tokio::test]
async fn without_a_media_root_a_result_a_media_callback_would_send_is_media_disabled() {
    bounded(async {
        let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
        assert_eq!(
            app.post("/v1/jobs", media_job("m1", "https://example.org/m"))
                .await
                .status(),
            201
        );
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/m1/result",
                result_with_stream(Path::new("/proc/self/environ")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "media_disabled", "{body}");
        let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
            .fetch_one(&app.pool)
            .await
            .expect("count");
        assert_eq!(deliveries, 0, "nothing was queued");
        // A stream no media callback sends is fine without a root.
        let job =
            json!({"jobId": "a1", "publish": {"callbacks": [{"url": "https://example.org/a"}]}});
        assert_eq!(app.post("/v1/jobs", job).await.status(), 201);
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/a1/result",
                result_with_stream(Path::new("/proc/self/environ")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    })
    .await
}

#[tokio::test]
async fn media_paths_outside_the_root_get_the_same_answer_as_missing_ones() {
    bounded(async {
        let root = temp_dir("root");
        let outside = temp_dir("outside");
        std::fs::write(outside.join("secret"), b"SECRET").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).expect("symlink");
        std::fs::write(root.join("ok.bin"), b"audio").expect("write");
        let root_for_app = root.clone();
        let app = TestApp::spawn_with(move |c| {
            c.concurrency = 0;
            c.media_root = vec![root_for_app];
        })
        .await;
        let cases = [
            PathBuf::from("/proc/self/environ"),
            PathBuf::from("/etc/passwd"),
            root.join("..")
                .join(outside.file_name().expect("name"))
                .join("secret"),
            root.join("link"),
            root.join("missing.bin"),
            PathBuf::from("relative/ok.bin"),
        ];
        let mut messages = Vec::new();
        for (i, path) in cases.iter().enumerate() {
            let id = format!("m{i}");
            assert_eq!(
                app.post("/v1/jobs", media_job(&id, "https://example.org/m"))
                    .await
                    .status(),
                201
            );
            let (status, body) = json_of(
                app.post(&format!("/v1/jobs/{id}/result"), result_with_stream(path))
                    .await,
            )
            .await;
            assert_eq!(status, 400, "{path:?}: {body}");
            assert_eq!(body["error"]["code"], "missing_stream", "{path:?}: {body}");
            messages.push(body["error"]["message"].clone());
        }
        assert!(
            messages.windows(2).all(|w| w[0] == w[1]),
            "not found and not allowed must read the same: {messages:?}"
        );
        // A regular file under the root is accepted.
        assert_eq!(
            app.post("/v1/jobs", media_job("ok", "https://example.org/m"))
                .await
                .status(),
            201
        );
        let (status, body) = json_of(
            app.post(
                "/v1/jobs/ok/result",
                result_with_stream(&root.join("ok.bin")),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    })
    .await
}

#[tokio::test]
async fn the_attempt_checks_the_root_again_when_the_file_became_a_symlink() {
    bounded(async {
        let root = temp_dir("root");
        let outside = temp_dir("outside");
        std::fs::write(outside.join("environ"), b"SECRET-ENVIRONMENT").expect("write");
        let media = root.join("a.bin");
        std::fs::write(&media, b"audio-bytes").expect("write");
        let root_for_app = root.clone();
        let app = TestApp::spawn_with(move |c| c.media_root = vec![root_for_app]).await;
        let rx = Receiver::start().await;
        // The first attempt fails slowly: the file is swapped meanwhile.
        rx.script([Answer::status(500).delayed(Duration::from_millis(800))]);
        assert_eq!(
            app.post("/v1/jobs", media_job("j", &rx.url("/media")))
                .await
                .status(),
            201
        );
        let (status, done) = json_of(
            app.post("/v1/jobs/j/result", result_with_stream(&media))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{done}");
        let id = done["callbacks"][0]["deliveryId"]
            .as_str()
            .expect("id")
            .to_owned();
        let first = rx.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(&first[0].body[..], b"audio-bytes");
        std::fs::remove_file(&media).expect("unlink");
        std::os::unix::fs::symlink(outside.join("environ"), &media).expect("symlink");
        // The immediate retries run after the swap: each is refused.
        let view = app
            .wait_delivery(&id, Duration::from_secs(20), |v| {
                v["attempts"].as_array().is_some_and(|a| a.len() >= 3)
            })
            .await;
        for got in rx.received() {
            assert!(
                !String::from_utf8_lossy(&got.body).contains("SECRET"),
                "a file outside the media root was sent"
            );
        }
        assert_eq!(rx.received().len(), 1, "{view:#}");
        let errors = view["attempts"].to_string();
        assert!(errors.contains("media file refused"), "{view:#}");
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    })
    .await
}

// ---- The real binary ------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_postback");

/// The binary with none of the caller's Postback settings.
fn postback() -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTBACK_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Runs `cmd` for at most `limit`: exit code (None if it had to be killed),
/// everything it printed, and how long it ran.
fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> (Option<i32>, String, Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run postback");
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    (code, text, started.elapsed())
}

// ---- Finding 3: SQL injection through the schema name ---------------------

#[test]
fn a_schema_name_that_is_not_a_plain_identifier_is_exit_2_naming_the_setting() {
    let evil = "x; select pg_sleep(5)";
    for args in [
        vec!["migrate", "--db-schema", evil],
        vec!["deliveries", "list", "--db-schema", evil],
        vec!["replay", "--status", "failed", "--db-schema", evil],
        vec!["purge", "--expired", "--db-schema", evil],
    ] {
        let (code, text, _) = run_bounded(
            postback()
                .args(&args)
                .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            Duration::from_secs(20),
        );
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains("POSTBACK_DB_SCHEMA"), "{args:?}: {text}");
    }
    let (code, text, _) = run_bounded(
        postback()
            .arg("migrate")
            .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x")
            .env("POSTBACK_DB_SCHEMA", evil),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("POSTBACK_DB_SCHEMA"), "{text}");
    // The library refuses it too.
    assert!(postback::Schema::new(evil).is_err());
    assert!(postback::Schema::new("Upper").is_err());
    assert!(postback::Schema::new("a".repeat(64)).is_err());
    assert!(postback::Schema::new("dispatch_2").is_ok());
}

// ---- Finding 6: settings that passed parsing and broke later ---------------

#[test]
fn out_of_range_settings_are_exit_2_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("POSTBACK_SIGNING_SECRET", "whsec_AAE=")],
            "POSTBACK_SIGNING_SECRET",
        ),
        // 23 bytes: one short.
        (
            &[(
                "POSTBACK_SIGNING_SECRET",
                "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
            )],
            "POSTBACK_SIGNING_SECRET",
        ),
        (
            &[("POSTBACK_ATTEMPT_TIMEOUT", "300000y")],
            "POSTBACK_ATTEMPT_TIMEOUT",
        ),
        (
            &[("POSTBACK_RETRY_GIVE_UP", "20000y")],
            "POSTBACK_RETRY_GIVE_UP",
        ),
        (
            &[("POSTBACK_CONCURRENCY", "2305843009213693952")],
            "POSTBACK_CONCURRENCY",
        ),
        (&[("POSTBACK_JOB_TTL", "1h")], "POSTBACK_JOB_TTL"),
        (&[("POSTBACK_JOB_TTL", "36h")], "POSTBACK_JOB_TTL"),
        // Immediate retries need a horizon to be made in.
        (
            &[("POSTBACK_RETRY_GIVE_UP", "0s")],
            "POSTBACK_RETRY_GIVE_UP",
        ),
        (&[("DATABASE_URL", "")], "DATABASE_URL"),
        (&[("DATABASE_URL", "not a url")], "DATABASE_URL"),
        (&[("POSTBACK_API_TOKEN", ",,")], "POSTBACK_API_TOKEN"),
        (
            &[("POSTBACK_MEDIA_ROOT", "relative/dir")],
            "POSTBACK_MEDIA_ROOT",
        ),
        (
            &[("POSTBACK_MEDIA_ROOT", "/no/such/postback/dir")],
            "POSTBACK_MEDIA_ROOT",
        ),
        // Empty lists and trailing commas parse: the error is the next one.
        (
            &[
                ("POSTBACK_EGRESS_ALLOW", ""),
                ("POSTBACK_EGRESS_DENY", "10.0.0.0/8,,"),
                ("POSTBACK_EGRESS_PUBLIC_IPS", "203.0.113.7,"),
                ("POSTBACK_MEDIA_ROOT", ","),
                ("POSTBACK_JOB_TTL", "1h"),
            ],
            "POSTBACK_JOB_TTL",
        ),
    ];
    for (env, named) in cases {
        let mut cmd = postback();
        cmd.arg("serve")
            .env("POSTBACK_API_TOKEN", "t")
            .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x");
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let (code, text, _) = run_bounded(&mut cmd, Duration::from_secs(20));
        assert_eq!(code, Some(2), "{env:?}: {text}");
        assert!(text.contains(named), "{env:?} must name {named}: {text}");
        assert!(!text.contains("panicked"), "{env:?}: {text}");
    }
}

#[tokio::test]
async fn admin_durations_and_rates_too_large_to_compute_with_are_exit_2_not_a_panic() {
    let url = crate::helpers::fresh_database().await;
    let (code, text, _) = run_bounded(
        postback().args(["migrate"]).env("DATABASE_URL", &url),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{text}");
    let (code, text, _) = run_bounded(
        postback()
            .args(["deliveries", "list", "--since", "20000y"])
            .env("DATABASE_URL", &url),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--since"), "{text}");
    let ids = [
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    ];
    let (code, text, _) = run_bounded(
        postback()
            .args(["replay", &ids[0], &ids[1], "--rate", "1e-12/s"])
            .env("DATABASE_URL", &url),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--rate") && !text.contains("panicked"),
        "{text}"
    );
    assert!(
        !text.contains("no such delivery"),
        "nothing was replayed first: {text}"
    );
}

// ---- Finding 7: a silent second database ----------------------------------

#[test]
fn admin_commands_give_up_on_an_unreachable_database_within_10_s_with_the_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }; // closed again: nothing listens there
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    for args in [vec!["deliveries", "list"], vec!["migrate"]] {
        let (code, text, took) = run_bounded(
            postback().args(&args).env("DATABASE_URL", &url),
            Duration::from_secs(30),
        );
        assert!(code.is_some(), "{args:?} still running after 30 s: {text}");
        assert_ne!(code, Some(0), "{args:?}: {text}");
        assert!(
            took < Duration::from_secs(12),
            "{args:?} took {took:?}: {text}"
        );
        assert!(
            text.contains("Connection refused") && !text.contains("pool timed out"),
            "{args:?} must print the connection error: {text}"
        );
    }
}

#[tokio::test]
async fn admin_commands_without_database_url_use_the_private_cluster_of_the_data_dir() {
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("skipped: the suite runs on DATABASE_URL, not on a private cluster");
        return;
    }
    // The suite's own cluster is a private cluster started the way `serve`
    // starts one (tests/it/helpers.rs).
    let _ = crate::helpers::fresh_database().await;
    let dir = std::env::temp_dir().join(format!("postback-test-{}", std::process::id()));
    let schema = format!("s_{}", uuid::Uuid::new_v4().simple());
    for args in [vec!["migrate"], vec!["deliveries", "list"]] {
        let (code, text, _) = run_bounded(
            postback()
                .args(&args)
                .env("POSTBACK_DATA_DIR", &dir)
                .env("POSTBACK_DB_SCHEMA", &schema),
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
    // No cluster there: exit 2 naming both ways out.
    let empty = temp_dir("nodata");
    let (code, text, _) = run_bounded(
        postback()
            .args(["deliveries", "list"])
            .env("POSTBACK_DATA_DIR", &empty),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("DATABASE_URL") && text.contains("POSTBACK_DATA_DIR"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

// ---- Finding 4: the API edge ----------------------------------------------

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_head_is_closed_within_10_s() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: postback\r\nContent-Type: application/json\r\n",
        )
        .await
        .expect("half a request head");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(16), stream.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the connection was still open after {took:?}");
    assert!(
        took >= Duration::from_secs(8),
        "closed after {took:?}, before the 10 s allowed"
    );
    // A complete request on a fresh connection is still served.
    assert_eq!(app.get("/v1/egress").await.status(), 200);
}

#[tokio::test]
async fn unknown_v1_paths_are_401_without_a_token_and_404_with_one() {
    bounded(async {
        let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
        let http = reqwest::Client::new();
        for path in ["/v1/no-such-thing", "/v1/jobs/x/nope", "/v1", "/v1/"] {
            let r = http.get(app.url(path)).send().await.expect("request");
            assert_eq!(r.status(), 401, "{path} without a token");
            let r = http.delete(app.url(path)).send().await.expect("request");
            assert_eq!(r.status(), 401, "DELETE {path} without a token");
        }
        let r = app.get("/v1/no-such-thing").await;
        assert_eq!(r.status(), 404);
        // Open routes stay open.
        let r = http.get(app.url("/healthz")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        let r = http.get(app.url("/nowhere")).send().await.expect("request");
        assert_eq!(r.status(), 404);
    })
    .await
}

#[tokio::test]
async fn every_response_carries_an_x_request_id_the_callers_when_sent() {
    bounded(async {
        let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
        let http = reqwest::Client::new();
        let r = http
            .get(app.url("/v1/egress"))
            .header("x-request-id", "caller-id-42")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-request-id"], "caller-id-42");
        let mut seen = std::collections::BTreeSet::new();
        for path in ["/healthz", "/v1/egress", "/nowhere"] {
            let r = http.get(app.url(path)).send().await.expect("request");
            let id = r
                .headers()
                .get("x-request-id")
                .expect("x-request-id")
                .to_str()
                .expect("text");
            assert!(
                uuid::Uuid::parse_str(id).is_ok(),
                "{path}: generated id {id}"
            );
            assert!(seen.insert(id.to_owned()), "ids are fresh");
        }
        let r = app.get("/v1/egress").await;
        assert!(r.headers().contains_key("x-request-id"));
    })
    .await
}

#[tokio::test]
async fn every_token_of_a_comma_list_works() {
    bounded(async {
        let app = TestApp::spawn_with(|c| {
            c.concurrency = 0;
            c.api_token = Some("tok-new, tok-old,".to_owned());
        })
        .await;
        let http = reqwest::Client::new();
        for (token, status) in [
            ("tok-new", 200),
            ("tok-old", 200),
            ("tok-other", 401),
            ("", 401),
        ] {
            let r = http
                .get(app.url("/v1/egress"))
                .bearer_auth(token)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), status, "token {token:?}");
        }
    })
    .await
}

#[tokio::test]
async fn the_access_log_names_each_request_id() {
    let url = crate::helpers::fresh_database().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let child = postback()
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("POSTBACK_API_TOKEN", "t")
        .env("POSTBACK_CONCURRENCY", "0")
        .env("POSTBACK_LOG_FORMAT", "json")
        .env("POSTBACK_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .get(format!("{base}/v1/egress"))
        .bearer_auth("t")
        .header("x-request-id", "access-log-7f3a")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("serve output");
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access-log-7f3a"))
        .collect();
    assert_eq!(lines.len(), 1, "one access-log line for the request: {log}");
    let line: Value = serde_json::from_str(lines[0]).expect("a JSON log line");
    assert_eq!(line["status"], 200, "{line}");
    // Span fields are flattened into the line, once, in camelCase.
    assert_eq!(line["span"], "request", "{line}");
    assert_eq!(line["path"], "/v1/egress", "{line}");
    assert_eq!(line["route"], "/v1/egress", "{line}");
    assert_eq!(line["requestId"], "access-log-7f3a", "{line}");
}

// ---- Finding 2: TLS to PostgreSQL -----------------------------------------

/// Runs a command, panicking with its output when it fails.
fn must(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unprivileged owner PostgreSQL runs as when the tests run as root.
fn pg_owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("user lookup")
        .expect("a postgres system user (.ci/run creates it)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn as_owner(
    cmd: &mut std::process::Command,
    owner: Option<(u32, u32)>,
) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown_all(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        must(std::process::Command::new("chown").args([
            "-R",
            &format!("{uid}:{gid}"),
            &path.to_string_lossy(),
        ]));
    }
}

/// A CA (`{name}.pem`, `{name}.key`) made with openssl.
fn make_ca(dir: &Path, name: &str) {
    must(
        std::process::Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
    );
}

/// A PostgreSQL cluster of its own on 127.0.0.1 with `ssl = on`, a server
/// certificate signed by `ca.pem` (made here), and only `hostssl` allowed
/// over TCP, as a managed service that forces TLS. Stopped on drop.
struct TlsCluster {
    dir: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let bin = postback::pgcluster::find_server_binaries().expect("PostgreSQL server binaries");
        let owner = pg_owner();
        let dir = temp_dir("tls-pg");
        let data = dir.join("data");
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("run dir");
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        must(
            std::process::Command::new("openssl")
                .current_dir(&dir)
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ]),
        );
        must(
            std::process::Command::new("openssl")
                .current_dir(&dir)
                .args([
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-days",
                    "2",
                    "-extfile",
                    "server.ext",
                ]),
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("key mode");
        chown_all(&dir, owner);
        must(as_owner(
            std::process::Command::new(bin.join("initdb")).args([
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ]),
            owner,
        ));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        conf.push_str(&format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            run.display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
        ));
        std::fs::write(data.join("postgresql.conf"), conf).expect("conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("hba");
        chown_all(&dir, owner);
        let cluster = TlsCluster {
            dir,
            bin,
            owner,
            port,
        };
        must(as_owner(
            std::process::Command::new(cluster.bin.join("pg_ctl")).args([
                "-D",
                &data.to_string_lossy(),
                "-l",
                &cluster.dir.join("run").join("log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ]),
            owner,
        ));
        cluster
    }

    fn url(&self, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            self.port
        )
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_owner(
            std::process::Command::new(self.bin.join("pg_ctl")).args([
                "-D",
                &self.dir.join("data").to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]),
            self.owner,
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn database_url_takes_sslmode_and_sslrootcert() {
    let cluster = TlsCluster::start();
    let migrate = |url: String| {
        run_bounded(
            postback().arg("migrate").env("DATABASE_URL", url),
            Duration::from_secs(30),
        )
    };
    // The server takes TCP connections only with TLS.
    let (code, text, _) = migrate(cluster.url("sslmode=disable"));
    assert_ne!(code, Some(0), "a plain connection must be refused: {text}");
    for params in [
        "sslmode=require".to_owned(),
        "sslmode=prefer".to_owned(),
        format!("sslmode=verify-ca&sslrootcert={}", cluster.file("ca.pem")),
        format!("sslmode=verify-full&sslrootcert={}", cluster.file("ca.pem")),
    ] {
        let (code, text, _) = migrate(cluster.url(&params));
        assert_eq!(code, Some(0), "{params}: {text}");
    }
    // The wrong CA: refused, and the message says it is the certificate.
    for mode in ["verify-full", "verify-ca"] {
        let params = format!(
            "sslmode={mode}&sslrootcert={}",
            cluster.file("other-ca.pem")
        );
        let (code, text, took) = migrate(cluster.url(&params));
        assert_eq!(code, Some(1), "{params}: {text}");
        assert!(
            text.contains("TLS") && text.to_lowercase().contains("certificate"),
            "{params}: the error must name TLS and the certificate: {text}"
        );
        assert!(took < Duration::from_secs(12), "{params}: took {took:?}");
    }
}

#[tokio::test]
async fn serve_on_its_private_cluster_warns_with_the_path_and_admin_commands_find_it() {
    let dir = temp_dir("private");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let child = postback()
        .arg("serve")
        .env("POSTBACK_API_TOKEN", "t")
        .env("POSTBACK_CONCURRENCY", "0")
        .env("POSTBACK_DATA_DIR", &dir)
        .env("POSTBACK_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // DATABASE_URL unset: the admin command uses the same private cluster.
    let (code, text, _) = run_bounded(
        postback()
            .args(["deliveries", "list"])
            .env("POSTBACK_DATA_DIR", &dir),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{text}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("serve output");
    let log = String::from_utf8_lossy(&out.stderr);
    let warned = log.lines().any(|l| {
        l.contains("WARN") && l.contains("DATABASE_URL") && l.contains(&*dir.to_string_lossy())
    });
    assert!(
        warned,
        "no warning naming the private cluster's path: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
