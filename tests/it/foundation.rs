//! Issue 3: the binary starts on a fresh machine, refuses bad settings with
//! exit 2 naming them, runs its private PostgreSQL and stops it cleanly.

use std::process::Stdio;

use crate::helpers::{output, postback, wait_ready, TestApp};

/// Every environment variable of SPEC §1's configuration table.
const SPEC_SETTINGS: &[&str] = &[
    "POSTBACK_LISTEN",
    "POSTBACK_API_TOKEN",
    "POSTBACK_SIGNING_SECRET",
    "POSTBACK_RETRY_IMMEDIATE",
    "POSTBACK_RETRY_FIRST_DELAY",
    "POSTBACK_RETRY_MAX_DELAY",
    "POSTBACK_RETRY_GIVE_UP",
    "POSTBACK_ATTEMPT_TIMEOUT",
    "POSTBACK_CONCURRENCY",
    "POSTBACK_PER_HOST_CONCURRENCY",
    "POSTBACK_JOB_TTL",
    "POSTBACK_MAX_BODY",
    "POSTBACK_EGRESS_SOURCE_ADDR",
    "POSTBACK_EGRESS_PROXY",
    "POSTBACK_EGRESS_PUBLIC_IPS",
    "POSTBACK_EGRESS_ALLOW",
    "POSTBACK_EGRESS_DENY",
    "POSTBACK_LOG_FORMAT",
    "POSTBACK_METRICS_LISTEN",
    "DATABASE_URL",
    "POSTBACK_DATA_DIR",
    "POSTBACK_INSECURE_NO_AUTH",
];

#[test]
fn help_lists_every_subcommand_of_the_spec() {
    let (code, text) = output(postback().arg("--help"));
    assert_eq!(code, 0, "{text}");
    for sub in [
        "serve",
        "worker",
        "migrate",
        "deliveries",
        "replay",
        "purge",
        "listen",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}: {text}");
    }
    let (_, text) = output(postback().args(["deliveries", "--help"]));
    assert!(text.contains("list") && text.contains("show"), "{text}");
}

/// Settings only `serve` reads (its API and its private cluster):
/// `worker --help` leaves them out (tests/deploy.rs checks the headings).
const API_ONLY_SETTINGS: &[&str] = &[
    "POSTBACK_LISTEN",
    "POSTBACK_API_TOKEN",
    "POSTBACK_MAX_BODY",
    "POSTBACK_EGRESS_PUBLIC_IPS",
    "POSTBACK_DATA_DIR",
    "POSTBACK_INSECURE_NO_AUTH",
];

#[test]
fn every_spec_setting_is_a_flag_and_an_environment_variable_of_serve_and_worker() {
    for sub in ["serve", "worker"] {
        let (code, text) = output(postback().args([sub, "--help"]));
        assert_eq!(code, 0, "{text}");
        for var in SPEC_SETTINGS {
            let flag = format!(
                "--{}",
                var.trim_start_matches("POSTBACK_")
                    .to_lowercase()
                    .replace('_', "-")
            );
            let shown = sub == "serve" || !API_ONLY_SETTINGS.contains(var);
            assert_eq!(
                text.contains(&format!("env: {var}")),
                shown,
                "{sub} --help and {var}"
            );
            assert_eq!(text.contains(&flag), shown, "{sub} --help and {flag}");
        }
    }
}

#[test]
fn serve_without_a_token_refuses_to_start_with_exit_2() {
    let (code, text) = output(postback().arg("serve"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("POSTBACK_API_TOKEN"), "{text}");
    assert!(text.contains("POSTBACK_INSECURE_NO_AUTH"), "{text}");
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("POSTBACK_RETRY_FIRST_DELAY", "soon", "retry-first-delay"),
        ("POSTBACK_CONCURRENCY", "-3", "concurrency"),
        ("POSTBACK_PER_HOST_CONCURRENCY", "0", "per-host-concurrency"),
        ("POSTBACK_MAX_BODY", "huge", "max-body"),
        ("POSTBACK_EGRESS_ALLOW", "10.0.0.0/99", "egress-allow"),
        ("POSTBACK_EGRESS_PROXY", "socks5://x:1", "egress-proxy"),
        ("POSTBACK_LISTEN", "nowhere", "listen"),
        ("POSTBACK_LOG_FORMAT", "xml", "log-format"),
        (
            "POSTBACK_SIGNING_SECRET",
            "not-base64!",
            "POSTBACK_SIGNING_SECRET",
        ),
        ("POSTBACK_RETRY_MAX_DELAY", "1s", "POSTBACK_RETRY_MAX_DELAY"),
    ];
    for (var, value, named) in cases {
        let (code, text) = output(
            postback()
                .arg("serve")
                .env("POSTBACK_API_TOKEN", "t")
                .env(var, value),
        );
        assert_eq!(code, 2, "{var}={value}: {text}");
        assert!(
            text.contains(named),
            "{var}={value} message does not name {named}: {text}"
        );
        assert!(
            text.contains(var),
            "{var}={value} message does not name the variable: {text}"
        );
    }
}

#[test]
fn admin_commands_without_database_url_exit_2_saying_so() {
    for args in [
        vec!["migrate"],
        vec!["deliveries", "list"],
        vec!["purge", "--expired"],
    ] {
        let (code, text) = output(postback().args(&args));
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains("DATABASE_URL"), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let unknown = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}

fn postgres_running_on(dir: &std::path::Path) -> bool {
    let pid_file = dir.join("data").join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(pid_file) else {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_runs_its_private_postgres_and_sigterm_stops_both_with_exit_0() {
    let dir = std::env::temp_dir().join(format!("pb-serve-{}", uuid::Uuid::new_v4().simple()));
    for round in 0..2 {
        let port = free_port();
        let mut child = postback()
            .arg("serve")
            .env("POSTBACK_API_TOKEN", "t")
            .env("POSTBACK_DATA_DIR", &dir)
            .env("POSTBACK_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        wait_ready(port, &mut child);
        assert!(
            postgres_running_on(&dir),
            "round {round}: no private PostgreSQL"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: exit status");
        let mut stdout = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert!(
            stdout.contains("postgres://"),
            "serve did not print its URL: {stdout}"
        );
        assert!(
            !postgres_running_on(&dir),
            "round {round}: PostgreSQL left running"
        );
        // The second round reuses the data directory initialised by the first.
        assert!(dir.join("data").join("PG_VERSION").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two processes starting together on a fresh database: the one whose
/// insert of the signing secret waits on the other's must read the
/// winner back, not fail with "no rows" (two `postback worker`s started
/// together did, in the scale-out benchmark).
#[tokio::test]
async fn a_start_racing_another_reads_back_the_winning_signing_secret() {
    use std::time::{Duration, Instant};

    let url = crate::helpers::fresh_database().await;
    let pool = postback_test_support::pg::postback_pool(&url).await;
    let schema = postback::Schema::default();
    postback::store::migrate(&pool, &schema)
        .await
        .expect("migrate");
    // The other start: its insert is made, not yet committed.
    let mut other = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO postback.settings (key, value) VALUES ('signing_secret', 'winner')")
        .execute(&mut *other)
        .await
        .expect("insert the winner");
    let racer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            postback::store::settings::signing_secret(&pool, &postback::Schema::default(), || {
                "loser".to_owned()
            })
            .await
        })
    };
    // Wait (bounded) until the racer's insert is blocked on the winner's row.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < until, "the racing insert never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.commit().await.expect("commit the winner");
    let got = tokio::time::timeout(Duration::from_secs(10), racer)
        .await
        .expect("the racer finishes")
        .expect("no panic");
    assert_eq!(got.expect("the racer reads the winner").as_str(), "winner");
}
