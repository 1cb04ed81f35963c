//! Issue 15: reliability. Nothing accepted is dropped or hidden: orphaned
//! leases are due everywhere, a 2xx is final once its headers arrive,
//! retention never removes a delivery still being retried, due times come
//! from the database's clock, the gauges go away while the database does,
//! a failed start stops its private cluster, and fairness counts a host
//! however it is spelled.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{Receiver, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_postback");

/// Queues one generic delivery to `url` and returns its id.
async fn enqueue(app: &TestApp, url: &str) -> String {
    let response = app
        .post("/v1/deliveries", json!({"url": url, "json": {"n": 1}}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["deliveryId"].as_str().expect("id").to_owned()
}

/// Makes delivery `id` look like its worker died mid-attempt: leased, with
/// the lease run out `ago` seconds back.
async fn orphan(app: &TestApp, id: &str, ago: i32) {
    sqlx::query(
        "UPDATE postback.deliveries SET state = 'delivering', lease = gen_random_uuid(),
                next_attempt_at = now() - make_interval(secs => $2), attempts = 1
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(f64::from(ago))
    .execute(&app.pool)
    .await
    .expect("orphan the delivery");
}

// ------------------------------------------------------- 6. orphaned leases

#[tokio::test]
async fn an_orphaned_lease_is_due_everywhere_replayable_listed_and_counted() {
    // No workers: nothing claims the orphan while we look at it.
    let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
    let receiver = Receiver::start().await;
    let id = enqueue(&app, &receiver.url("/orphan")).await;
    orphan(&app, &id, 60).await;

    // Shown as due (pending, with its due time), on the API and the CLI.
    let view = app.get_json(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(view["status"], "pending", "{view:#}");
    assert!(!view["nextAttemptTime"].is_null(), "{view:#}");
    let out = Command::new(BIN)
        .args(["deliveries", "list", "--status", "pending", "--json"])
        .env("DATABASE_URL", &app.database_url)
        .stdin(Stdio::null())
        .output()
        .expect("run postback");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&id), "orphan not listed as pending: {text}");

    // The gauges count it as due, aged from its lease expiry.
    let depth = postback::metrics::queue_depth(&app.pool, &postback::Schema::default())
        .await
        .expect("queue depth");
    assert_eq!((depth.due, depth.in_flight), (1, 0), "{depth:?}");
    assert!(depth.oldest >= 59.0, "{depth:?}");

    // Replay is allowed: the worker that held it is gone.
    let response = app
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let lease: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT lease FROM postback.deliveries WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .expect("read lease");
    assert_eq!(lease, None, "replay must drop the dead worker's lease");

    // A lease that still runs is an attempt in flight: that one is refused.
    sqlx::query(
        "UPDATE postback.deliveries SET state = 'delivering', lease = gen_random_uuid(),
                next_attempt_at = now() + interval '1 minute' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .expect("lease");
    let response = app
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(response.status(), 409);
    app.stop().await;
}

// ------------------------------------------ 7. a 2xx whose body stalls

/// A loopback receiver that reads each request, answers `200` with a
/// `Content-Length` of 100 and 7 bytes of body, then stalls the rest for
/// a minute. Returns its address and the count of requests it got.
async fn stalling_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body its Content-Length announces.
                let (head_end, length) = loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                    .await;
                let _ = socket.flush().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_2xx_whose_body_stalls_is_delivered_once_and_quickly() {
    let (addr, count) = stalling_receiver().await;
    // The attempt timeout is far longer than the snippet's own bound: the
    // old code waited for it, recorded a timeout and sent again.
    let app = TestApp::spawn_with(|c| c.attempt_timeout = Duration::from_secs(8)).await;
    let started = Instant::now();
    let id = enqueue(&app, &format!("http://{addr}/stall")).await;
    let view = app
        .wait_delivery(&id, Duration::from_secs(6), |v| v["status"] == "delivered")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        view["attempts"].as_array().map(Vec::len),
        Some(1),
        "{view:#}"
    );
    let attempt = &view["attempts"][0];
    assert_eq!(attempt["statusCode"], 200, "{view:#}");
    assert!(attempt["error"].is_null(), "{view:#}");
    assert_eq!(attempt["responseSnippet"], "partial", "{view:#}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    app.stop().await;
}

// ------------------------------------------------------------- 1. retention

async fn purge(app: &TestApp) -> postback::store::admin::Purged {
    postback::store::admin::purge_expired(&app.pool, &postback::Schema::default(), 100)
        .await
        .expect("purge")
}

async fn rows_of_job(app: &TestApp, job: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM postback.jobs WHERE id = $1),
                (SELECT count(*) FROM postback.deliveries WHERE job_id = $1),
                (SELECT count(*) FROM postback.attempts a JOIN postback.deliveries d
                    ON d.id = a.delivery_id WHERE d.job_id = $1)",
    )
    .bind(job)
    .fetch_one(&app.pool)
    .await
    .expect("count rows")
}

#[tokio::test]
async fn retention_keeps_a_delivery_being_retried_past_its_jobs_expiry_then_lets_it_go() {
    let receiver = Receiver::start().await;
    receiver.always(crate::helpers::Answer::status(503));
    let app = TestApp::spawn_with(|c| {
        // Long enough a cycle that the delivery is still being retried.
        c.retry_first_delay = Duration::from_secs(1);
        c.retry_give_up = Duration::from_secs(60);
        c.job_ttl = Duration::from_secs(3600);
    })
    .await;
    let job = "late";
    let body = json!({"jobId": job, "publish": {"callbacks": [{"url": receiver.url("/cb")}]}});
    assert_eq!(app.post("/v1/jobs", body).await.status(), 201);
    let result = json!({"status": "finished", "result": {"transcript": {"words": []}}});
    let posted = app.post(&format!("/v1/jobs/{job}/result"), result).await;
    assert_eq!(posted.status(), 200);
    // The first attempt and both immediate retries failed; the next is due.
    receiver.wait_for(3, Duration::from_secs(10)).await;

    // The job's expirationTime passes while its delivery is still retried.
    sqlx::query("UPDATE postback.jobs SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(job)
        .execute(&app.pool)
        .await
        .expect("age the job");
    sqlx::query(
        "UPDATE postback.deliveries SET expires_at = now() - interval '1 minute' WHERE job_id = $1",
    )
    .bind(job)
    .execute(&app.pool)
    .await
    .expect("age its delivery");
    let purged = purge(&app).await;
    assert_eq!((purged.jobs, purged.deliveries), (0, 0), "{purged:?}");
    let (jobs, deliveries, attempts) = rows_of_job(&app, job).await;
    assert_eq!(
        (jobs, deliveries),
        (1, 1),
        "the purge removed a delivery being retried"
    );
    assert!(attempts >= 3, "{attempts} attempts kept");
    // Polling the job answers job_expired from its own expiry meanwhile...
    let polled = app.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(polled.status(), 404);
    let polled: Value = polled.json().await.expect("json");
    assert_eq!(polled["error"]["code"], "job_expired");
    // ...while the delivery itself stays visible.
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM postback.deliveries WHERE job_id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .expect("id");
    let view = app.get_json(&format!("/v1/deliveries/{id}")).await;
    assert_ne!(view["status"], "delivered");

    // It is delivered: now it is kept TTL from its final time, not its job's.
    receiver.always(crate::helpers::Answer::ok());
    app.wait_delivery(&id.to_string(), Duration::from_secs(10), |v| {
        v["status"] == "delivered"
    })
    .await;
    let kept: bool = sqlx::query_scalar(
        "SELECT expires_at = completed_at + interval '1 hour' FROM postback.deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("expiry");
    assert!(kept, "a final delivery expires at its final time + TTL");
    let purged = purge(&app).await;
    assert_eq!((purged.jobs, purged.deliveries), (0, 0), "{purged:?}");

    // An hour later (simulated), it goes, and its job with it.
    sqlx::query(
        "UPDATE postback.deliveries SET completed_at = completed_at - interval '61 minutes',
                expires_at = expires_at - interval '61 minutes' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .expect("age the final delivery");
    let purged = purge(&app).await;
    assert_eq!((purged.jobs, purged.deliveries), (1, 1), "{purged:?}");
    assert_eq!(rows_of_job(&app, job).await, (0, 0, 0));
    let polled = app.get(&format!("/v1/jobs/{job}")).await;
    let polled: Value = polled.json().await.expect("json");
    assert_eq!(polled["error"]["code"], "job_expired");
    app.stop().await;
}

// -------------------------------------- 4. start-up and the private cluster

/// The binary with none of the caller's Postback settings.
fn postback_bin() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTBACK_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn postmaster_running(dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("data").join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn sigterm(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
}

/// Waits for `child` to exit; kills it and panics after `limit`.
fn exit_within(child: &mut std::process::Child, limit: Duration, what: &str) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `serve` on its private cluster in `dir` until ready, then SIGTERM: it
/// exits 0 and leaves no PostgreSQL running.
fn serve_round(dir: &std::path::Path, what: &str) {
    let port = loopback_port();
    let mut child = postback_bin()
        .arg("serve")
        .env("POSTBACK_API_TOKEN", "t")
        .env("POSTBACK_DATA_DIR", dir)
        .env("POSTBACK_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    crate::helpers::wait_ready(port, &mut child);
    sigterm(&child);
    assert_eq!(
        exit_within(&mut child, Duration::from_secs(60), what),
        0,
        "{what}"
    );
    assert!(!postmaster_running(dir), "{what}: PostgreSQL left running");
}

#[test]
fn a_failed_start_stops_its_private_cluster_and_the_next_start_works() {
    let dir = std::env::temp_dir().join(format!("pb-h5-{}", uuid::Uuid::new_v4().simple()));
    // The API address is taken: the start fails after the cluster is up
    // and migrated (the old code returned there with the server running).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = postback_bin()
        .arg("serve")
        .env("POSTBACK_API_TOKEN", "t")
        .env("POSTBACK_DATA_DIR", &dir)
        .env("POSTBACK_LISTEN", addr.to_string())
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("POSTBACK_LISTEN"), "{stderr}");
    assert!(
        !postmaster_running(&dir),
        "the failed start left its PostgreSQL running"
    );
    drop(taken);
    serve_round(&dir, "the start after a failed one");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_adopts_a_postmaster_left_running_on_its_data_dir() {
    let dir = std::env::temp_dir().join(format!("pb-h5-{}", uuid::Uuid::new_v4().simple()));
    // What a crashed serve leaves behind: the server up, holding the lock.
    postback::pgcluster::Cluster::start(&dir)
        .expect("start a cluster")
        .detach();
    assert!(postmaster_running(&dir));
    serve_round(&dir, "serve on a data dir with a running server");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_while_waiting_for_the_database_stops_the_process() {
    let nowhere = std::env::temp_dir().join(format!("pb-none-{}", uuid::Uuid::new_v4().simple()));
    let mut child = postback_bin()
        .arg("serve")
        .env("POSTBACK_API_TOKEN", "t")
        .env("POSTBACK_LISTEN", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!(
                "postgres://postgres@localhost/postgres?host={}",
                nowhere.display()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    // It is retrying the connection now (that goes on for a minute).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(matches!(child.try_wait(), Ok(None)), "serve gave up early");
    let asked = Instant::now();
    sigterm(&child);
    let code = exit_within(&mut child, Duration::from_secs(5), "serve after SIGTERM");
    assert_eq!(code, 0);
    assert!(asked.elapsed() < Duration::from_secs(5));
}

// ------------------------------------ 3. fairness however a host is spelled

/// A loopback receiver that holds each request for 300 ms and keeps the
/// most requests it ever had at once.
#[derive(Clone, Default)]
struct Concurrency {
    now: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Concurrency {
    async fn start(bind: &str) -> (Concurrency, u16) {
        use std::sync::atomic::Ordering;
        let state = Concurrency::default();
        let shared = state.clone();
        let app = axum::Router::new().fallback(move || {
            let s = shared.clone();
            async move {
                let n = s.now.fetch_add(1, Ordering::SeqCst) + 1;
                s.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                s.now.fetch_sub(1, Ordering::SeqCst);
                s.total.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (state, port)
    }

    fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_total(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.total.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "not all {n} requests arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends `per_url` deliveries to each of `urls` (one destination spelled
/// several ways) and returns the most that were in flight at once.
async fn most_in_flight(bind: &str, spellings: &[&str], per_url: usize) -> usize {
    let (receiver, port) = Concurrency::start(bind).await;
    let app = TestApp::spawn_with(|c| c.per_host_concurrency = 2).await;
    let mut n = 0;
    for i in 0..per_url {
        for host in spellings {
            enqueue(&app, &format!("http://{host}:{port}/{i}")).await;
            n += 1;
        }
    }
    receiver.wait_total(n, Duration::from_secs(30)).await;
    app.stop().await;
    receiver.max()
}

#[tokio::test]
async fn two_spellings_of_one_address_share_the_per_host_limit() {
    let most = most_in_flight("127.0.0.2:0", &["127.0.0.2", "[::ffff:127.0.0.2]"], 6).await;
    assert!(most <= 2, "{most} in flight against a limit of 2");
}

#[tokio::test]
async fn names_that_resolve_to_one_address_share_its_limit() {
    let most = most_in_flight("127.0.0.1:0", &["localhost", "127.0.0.1", "LOCALHOST."], 4).await;
    assert!(most <= 2, "{most} in flight against a limit of 2");
}

// ------------------------------------------ 2. one stored copy per body

/// Independent deliveries keep their body with their payload: sharing is
/// for one result's callbacks (the test below); across API requests a
/// `bodies` row per delivery would cost the insert and find nothing to share.
#[tokio::test]
async fn independent_deliveries_store_their_bodies_inline() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        let response = app
            .post(
                "/v1/deliveries",
                json!({"url": "http://127.0.0.1:9/inline", "json": {"same": "body"}}),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    let (inline, hashed, bodies): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM postback.payloads WHERE body IS NOT NULL),
                (SELECT count(*) FROM postback.payloads WHERE body_hash IS NOT NULL),
                (SELECT count(*) FROM postback.bodies)",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!((inline, hashed, bodies), (3, 0, 0));
    app.stop().await;
}

#[tokio::test]
async fn a_results_callbacks_store_each_distinct_body_once_and_all_arrive() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    let mut callbacks: Vec<Value> = (0..30)
        .map(|i| json!({"url": receiver.url(&format!("/a/{i}"))}))
        .collect();
    for i in 0..2 {
        callbacks.push(json!({"url": receiver.url(&format!("/srt/{i}")), "type": "transcript", "format": "srt"}));
    }
    let job = json!({"jobId": "big", "publish": {"callbacks": callbacks}});
    assert_eq!(app.post("/v1/jobs", job).await.status(), 201);
    let words: Vec<Value> = (0..5000)
        .map(
            |i| json!({"p": i, "s": i * 100, "e": i * 100 + 90, "c": 0.9, "w": format!("word{i}")}),
        )
        .collect();
    let result = json!({"status": "finished", "result": {"transcript": {"words": words}}});
    let posted = app.post("/v1/jobs/big/result", result).await;
    assert_eq!(posted.status(), 200, "{:?}", posted.text().await);

    // 32 deliveries (the most a job takes), two distinct bodies (the analytics one, the SubRip one).
    let (payloads, bodies, inline): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM postback.payloads p JOIN postback.deliveries d ON d.id = p.delivery_id
                  WHERE d.job_id = 'big' AND p.body_hash IS NOT NULL),
                (SELECT count(*) FROM postback.bodies),
                (SELECT count(*) FROM postback.payloads WHERE body IS NOT NULL)",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!((payloads, bodies, inline), (32, 2, 0));

    // The analytics body is larger than a claim brings along: it is read
    // when each attempt starts, and still arrives whole.
    let largest: i32 = sqlx::query_scalar("SELECT max(octet_length(body)) FROM postback.bodies")
        .fetch_one(&app.pool)
        .await
        .expect("size");
    let inline = postback::queue::capacity::INLINE_BODY_MAX as i32;
    assert!(
        largest > inline,
        "{largest} bytes: not past the inline limit"
    );

    let got = receiver.wait_for(32, Duration::from_secs(30)).await;
    let analytics: Vec<_> = got.iter().filter(|r| r.path.starts_with("/a/")).collect();
    assert_eq!(analytics.len(), 30);
    assert!(analytics.iter().all(|r| r.body == analytics[0].body));
    assert_eq!(analytics[0].body.len() as i32, largest);
    let body: Value = serde_json::from_slice(&analytics[0].body).expect("analytics JSON");
    assert_eq!(body["jobId"], "big");
    let srt: Vec<_> = got.iter().filter(|r| r.path.starts_with("/srt/")).collect();
    assert_eq!(srt.len(), 2);
    assert!(std::str::from_utf8(&srt[0].body)
        .expect("utf-8")
        .starts_with("1\n00:00:00,000 --> "));
    app.stop().await;
}

#[tokio::test]
async fn a_claim_leaves_large_bodies_in_the_database_until_the_attempt_starts() {
    let app = TestApp::spawn_with(|c| c.concurrency = 0).await;
    let receiver = Receiver::start().await;
    let small = enqueue(&app, &receiver.url("/small")).await;
    let big_text = "x".repeat(100_000);
    let response = app
        .post(
            "/v1/deliveries",
            json!({"url": receiver.url("/big"), "body": big_text, "contentType": "text/plain"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let big: Value = response.json().await.expect("json");
    let big = big["deliveryId"].as_str().expect("id").to_owned();
    let schema = postback::Schema::default();
    let claimed = postback::queue::claim::claim(
        &app.pool,
        &schema,
        10,
        60.0,
        &postback::queue::ClaimRoom {
            hosts: postback::queue::KeyRoom {
                per_key: 10,
                busy: Vec::new(),
            },
            customers: postback::queue::KeyRoom {
                per_key: 10,
                busy: Vec::new(),
            },
        },
        1024,
    )
    .await
    .expect("claim");
    assert_eq!(claimed.len(), 2);
    for d in &claimed {
        if d.id.to_string() == small {
            assert!(d.body.is_some(), "a small body comes with its claim");
        } else {
            assert_eq!(d.id.to_string(), big);
            assert!(
                d.body.is_none(),
                "a large body must not come with its claim"
            );
            assert_eq!(d.body_len, 100_000);
            let body = postback::queue::claim::body_of(&app.pool, &schema, d.id)
                .await
                .expect("read")
                .expect("a body");
            assert_eq!(body.len(), 100_000);
        }
    }
    app.stop().await;
}

/// The server process id of `held`'s connection.
async fn backend_pid(held: &mut postback::store::held::Held) -> postback::Result<i32> {
    held.run(async |c| {
        Ok(sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(c)
            .await?)
    })
    .await
}

/// The group-commit writers, the completer and the claim loop keep one
/// connection between statements (`store::held::Held`). One whose server
/// process died costs the one statement that finds out, never the next:
/// the connection is given back and a fresh one taken. An error of the
/// caller's own after a good statement keeps the connection.
#[tokio::test]
async fn a_held_connection_whose_server_process_died_is_replaced_after_one_failure() {
    let app = TestApp::spawn().await;
    let mut held = postback::store::held::Held::new(app.pool.clone());
    let first = backend_pid(&mut held)
        .await
        .expect("a fresh connection answers");

    let own_error = held
        .run(async |c| {
            sqlx::query("SELECT 1").execute(c).await?;
            Err::<(), _>(postback::Error::invalid(
                postback::ErrorCode::InvalidField,
                "field",
                "the caller's own error",
            ))
        })
        .await;
    assert!(own_error.is_err());
    let same = backend_pid(&mut held).await.expect("still answers");
    assert_eq!(same, first, "kept after the caller's own error");

    app.exec(&format!("SELECT pg_terminate_backend({first})"))
        .await;
    assert!(
        backend_pid(&mut held).await.is_err(),
        "the dead connection's statement fails"
    );
    let replaced = backend_pid(&mut held)
        .await
        .expect("the next statement runs on a fresh connection");
    assert_ne!(replaced, first);
    assert_eq!(
        seqscan(&mut held).await,
        "off",
        "the replacement plans like the first"
    );
    app.stop().await;
}

/// `enable_seqscan` on a held connection.
async fn seqscan(held: &mut postback::store::held::Held) -> String {
    held.run(async |c| {
        Ok(
            sqlx::query_scalar("SELECT current_setting('enable_seqscan')")
                .fetch_one(c)
                .await?,
        )
    })
    .await
    .expect("the held connection answers")
}

/// A hot loop's generic plan must not read `deliveries` whole once the
/// table has grown: held connections plan without sequential scans, and
/// the completion finds its rows by primary key on a young table too
/// (the plan `auto_explain` caught scanning it, one scan per flush).
#[tokio::test]
async fn held_connections_find_rows_by_key_on_a_young_table() {
    let app = TestApp::spawn().await;
    let mut held = postback::store::held::Held::new(app.pool.clone());
    assert_eq!(seqscan(&mut held).await, "off");
    // A few hundred rows, never analyzed: the size at which the cached
    // generic plan was a hash join over a sequential scan.
    app.exec(
        "INSERT INTO postback.deliveries (id, kind, method, url, host, expires_at)
         SELECT gen_random_uuid(), 'generic', 'POST', 'http://x.example/', 'x.example', now() + interval '1 day'
         FROM generate_series(1, 300)",
    )
    .await;
    let plan: Vec<String> = held
        .run(async |c| {
            sqlx::query("SET plan_cache_mode = force_generic_plan")
                .execute(&mut *c)
                .await?;
            sqlx::query(
                "PREPARE complete_probe(uuid[], uuid[]) AS
                 UPDATE postback.deliveries d SET attempts = d.attempts + 1
                 FROM unnest($1, $2) AS u(id, lease) WHERE d.id = u.id AND d.lease = u.lease",
            )
            .execute(&mut *c)
            .await?;
            let plan = sqlx::query_scalar("EXPLAIN EXECUTE complete_probe('{}', '{}')")
                .fetch_all(&mut *c)
                .await?;
            sqlx::query("DEALLOCATE complete_probe")
                .execute(&mut *c)
                .await?;
            sqlx::query("RESET plan_cache_mode")
                .execute(&mut *c)
                .await?;
            Ok(plan)
        })
        .await
        .expect("explains");
    let plan = plan.join("\n");
    assert!(
        !plan.contains("Seq Scan on deliveries"),
        "a held connection scans deliveries whole:\n{plan}"
    );
    // The pool's other connections keep PostgreSQL's defaults.
    let pooled: String = sqlx::query_scalar("SELECT current_setting('enable_seqscan')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(pooled, "on");
    app.stop().await;
}
