//! Issue 9: the library inside the caller's own transaction. A rolled-back
//! transaction leaves no delivery and the job unchanged; a committed one
//! is delivered over real HTTP by workers running in the caller's runtime.
//! Issue 13 / SPEC §5: `Postback::builder(pool)` sets up both from the
//! caller's pool, the signing secret included, and its shutdown drains.

use std::time::Duration;

use postback::{CallbackSpec, Dispatcher, JobResult, NewJob, Postback, Publish, ResultStatus};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{fresh_database, test_config, Answer, Received, Receiver};

fn job(id: &str, url: String) -> NewJob {
    NewJob {
        job_id: Some(id.to_owned()),
        metadata: None,
        customer_id: None,
        publish: Publish {
            callbacks: vec![CallbackSpec {
                url,
                ..Default::default()
            }],
        },
    }
}

fn failed() -> JobResult {
    JobResult {
        status: ResultStatus::Failed,
        result: None,
        streams: Vec::new(),
        error: Some(postback::JobError {
            code: "media_unreadable".into(),
            message: "the media could not be decoded".into(),
        }),
    }
}

async fn deliveries(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM postback.deliveries")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_result_posted_in_a_rolled_back_transaction_queues_nothing_and_a_committed_one_is_delivered(
) {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    postback::migrate(&pool).await.unwrap();
    // Migrations are idempotent.
    postback::migrate(&pool).await.unwrap();
    sqlx::query("CREATE TABLE transcripts (job_id text PRIMARY KEY, text text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let config = test_config(&url);
    let lib = Postback::new(&config).unwrap();
    lib.create_job(&pool, job("j-embed", receiver.url("/cb")))
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO transcripts VALUES ('j-embed', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap();
    lib.post_result(&mut *tx, "j-embed", failed())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        deliveries(&pool).await,
        0,
        "a rolled-back result queued a delivery"
    );
    let view = lib.job(&pool, "j-embed").await.unwrap();
    assert_eq!(view.status, postback::state::JobStatus::InProgress);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM transcripts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    let secret = postback::signing_secret(&config, &pool, lib.schema())
        .await
        .unwrap();
    let workers = Dispatcher::new(pool.clone(), &config, secret).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(workers.run(stop.clone()));

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO transcripts VALUES ('j-embed', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap();
    lib.post_result(&mut *tx, "j-embed", failed())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["jobId"], "j-embed");
    assert_eq!(body["status"], "failed");
    assert_eq!(
        lib.job(&pool, "j-embed").await.unwrap().status,
        postback::state::JobStatus::Failed
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn migrations_go_to_their_own_schema_and_leave_the_callers_search_path_alone() {
    let url = fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let custom = postback::Schema::new("dispatch").expect("a valid schema");
    postback::migrate_in(&pool, &custom).await.unwrap();
    let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!path.contains("dispatch"), "search_path changed to {path}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'dispatch' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in ["attempts", "deliveries", "jobs", "payloads", "settings"] {
        assert!(
            tables.iter().any(|x| x == t),
            "{t} not in schema dispatch: {tables:?}"
        );
    }
    let in_public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_public, 0, "migrations leaked into public");
    // The library works against the custom schema through a caller's pool.
    let mut config = test_config(&url);
    config.db_schema = postback::Schema::new("dispatch").expect("a valid schema");
    let lib = Postback::new(&config).unwrap();
    let (view, _) = lib
        .create_job(&pool, job("j-custom", "https://example.org/cb".into()))
        .await
        .unwrap();
    assert_eq!(view.job_id, "j-custom");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A 32-byte Standard Webhooks secret.
const EMBED_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The builder with the test servers' schedule: loopback allowed (the
/// receiver lives there), short timeouts.
fn test_builder(pool: &PgPool) -> postback::Builder {
    Postback::builder(pool.clone())
        .egress_allow(["127.0.0.0/8".parse().unwrap()])
        .retry_first_delay(Duration::from_secs(1))
        .retry_max_delay(Duration::from_secs(4))
        .retry_give_up(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(2))
        .concurrency(8)
}

/// Does the attempt's `webhook-signature` carry the Standard Webhooks
/// HMAC of `{id}.{timestamp}.{body}` under `secret` (computed here, not
/// with Postback's verifier)?
fn signed_with(r: &Received, secret: &str) -> bool {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
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
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
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

async fn states(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT state::text, count(*) FROM postback.deliveries GROUP BY 1 ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_builder_runs_intake_and_workers_on_the_callers_pool_and_signs_with_its_secret() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE transcripts (job_id text PRIMARY KEY, text text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    // build() migrates the caller's database itself.
    let built = test_builder(&pool)
        .signing_secret(EMBED_SECRET)
        .build()
        .await
        .expect("builds");
    let (lib, workers) = built.start();
    lib.create_job(&pool, job("j-built", receiver.url("/cb")))
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO transcripts VALUES ('j-built', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap();
    lib.post_result(&mut *tx, "j-built", failed())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        deliveries(&pool).await,
        0,
        "a rolled-back result queued a delivery"
    );
    // The workers run: a delivery would have been sent by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.received().is_empty(),
        "a rolled-back result was sent"
    );

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO transcripts VALUES ('j-built', 'x')")
        .execute(&mut *tx)
        .await
        .unwrap();
    lib.post_result(&mut *tx, "j-built", failed())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["jobId"], "j-built");
    assert!(
        signed_with(&got[0], EMBED_SECRET),
        "not signed with the builder's secret"
    );
    assert!(
        !signed_with(
            &got[0],
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        ),
        "the signature check accepts any secret"
    );
    workers.shutdown().await.expect("drains cleanly");
    assert_eq!(states(&pool).await, vec![("delivered".to_owned(), 1)]);
    assert_eq!(
        lib.job(&pool, "j-built").await.unwrap().status,
        postback::state::JobStatus::Failed
    );
}

#[tokio::test]
async fn builder_shutdown_drains_attempts_in_flight_and_loses_nothing() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    let receiver = Receiver::start().await;
    // Slow answers, so shutdown arrives with attempts in flight.
    receiver.always(Answer::ok().delayed(Duration::from_millis(700)));
    let (lib, workers) = test_builder(&pool)
        .signing_secret(EMBED_SECRET)
        .concurrency(2)
        .build()
        .await
        .expect("builds")
        .start();
    const N: usize = 6;
    let mut tx = pool.begin().await.unwrap();
    for i in 0..N {
        let delivery = postback::NewDelivery {
            url: receiver.url(&format!("/d{i}")),
            body: Some(format!("d{i}")),
            ..Default::default()
        };
        lib.enqueue(&mut *tx, delivery).await.unwrap();
    }
    tx.commit().await.unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let stopping = std::time::Instant::now();
    workers.shutdown().await.expect("drains cleanly");
    // The drain waited for the slow answers it had started.
    let sent = receiver.received().len();
    assert!(
        (1..N).contains(&sent),
        "{sent} of {N} sent before the drain ended"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the drain hung"
    );
    // Nothing is left leased: what was started is written, the rest queued.
    let after = states(&pool).await;
    let delivered = after
        .iter()
        .find(|(s, _)| s == "delivered")
        .map_or(0, |(_, n)| *n);
    assert_eq!(
        delivered as usize, sent,
        "every started attempt is written: {after:?}"
    );
    assert!(
        after
            .iter()
            .all(|(s, _)| s == "delivered" || s == "pending"),
        "a delivery is left in flight after shutdown: {after:?}"
    );
    assert_eq!(after.iter().map(|(_, n)| n).sum::<i64>(), N as i64);

    // The next start delivers the rest: nothing was lost.
    receiver.always(Answer::ok());
    let (_, again) = test_builder(&pool)
        .signing_secret(EMBED_SECRET)
        .build()
        .await
        .expect("builds again")
        .start();
    receiver.wait_for(N, Duration::from_secs(15)).await;
    again.shutdown().await.expect("drains cleanly");
    assert_eq!(
        states(&pool).await,
        vec![("delivered".to_owned(), N as i64)]
    );
}

#[tokio::test]
async fn bad_builder_input_is_a_typed_error_naming_the_setter() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    let cases: Vec<(postback::Builder, &str, &str)> = vec![
        (
            Postback::builder(pool.clone()).per_host_concurrency(0),
            "per_host_concurrency",
            "POSTBACK_PER_HOST_CONCURRENCY",
        ),
        (
            Postback::builder(pool.clone()).per_customer_concurrency(0),
            "per_customer_concurrency",
            "POSTBACK_PER_CUSTOMER_CONCURRENCY",
        ),
        (
            Postback::builder(pool.clone()).signing_secret("whsec_c2hvcnQ="),
            "signing_secret",
            "POSTBACK_SIGNING_SECRET",
        ),
        (
            Postback::builder(pool.clone()).secrets_keys(["not base64!"]),
            "secrets_keys",
            "POSTBACK_SECRETS_KEY",
        ),
        (
            Postback::builder(pool.clone()).schema("Bad-Schema"),
            "schema",
            "POSTBACK_DB_SCHEMA",
        ),
        (
            Postback::builder(pool.clone()).attempt_timeout(Duration::ZERO),
            "attempt_timeout",
            "POSTBACK_ATTEMPT_TIMEOUT",
        ),
        (
            Postback::builder(pool.clone()).breaker_cooldown(Duration::ZERO),
            "breaker_cooldown",
            "POSTBACK_BREAKER_COOLDOWN",
        ),
        (
            Postback::builder(pool.clone()).job_ttl(Duration::from_secs(60)),
            "job_ttl",
            "POSTBACK_JOB_TTL",
        ),
        (
            Postback::builder(pool.clone())
                .retry_first_delay(Duration::from_secs(60))
                .retry_max_delay(Duration::from_secs(1)),
            "retry_max_delay",
            "POSTBACK_RETRY_MAX_DELAY",
        ),
        (
            Postback::builder(pool.clone()).operator_webhook("ftp://ops.example.org/"),
            "operator_webhook",
            "POSTBACK_OPERATOR_WEBHOOK",
        ),
        (
            Postback::builder(pool.clone()).egress_proxy("not a url"),
            "egress_proxy",
            "POSTBACK_EGRESS_PROXY",
        ),
        (
            Postback::builder(pool.clone()).media_roots(["relative/dir"]),
            "media_roots",
            "POSTBACK_MEDIA_ROOT",
        ),
        (
            Postback::builder(pool.clone()).concurrency(usize::MAX),
            "concurrency",
            "POSTBACK_CONCURRENCY",
        ),
    ];
    for (builder, setter, setting) in cases {
        let err = builder.build().await.expect_err(setter);
        assert_eq!(err.setter(), Some(setter), "{err}");
        match &err {
            postback::BuildError::Setting { source, .. } => {
                assert_eq!(source.setting, setting, "{err}")
            }
            other => panic!("{setter}: not a setting error: {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(setter) && text.contains(setting),
            "the message names neither: {text}"
        );
    }
    // Refused before anything touched the database.
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'postback'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a refused build migrated");
    // The defaults are Config's: a builder left alone builds.
    let built = Postback::builder(pool.clone())
        .build()
        .await
        .expect("defaults build");
    assert_eq!(
        built.postback().schema().name(),
        postback::config::defaults::DB_SCHEMA
    );
}

#[tokio::test]
async fn builder_edges_intake_only_a_given_config_and_an_unmigrated_database() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    // Without migrations the stored signing secret has no table: a
    // database error, not a panic.
    let err = Postback::builder(pool.clone())
        .migrate(false)
        .build()
        .await
        .expect_err("no tables");
    assert!(
        matches!(err, postback::BuildError::Database(_)),
        "not a database error: {err}"
    );
    // A Config given whole is checked the same way; a setting only a
    // Config carries is named with the `config` setter.
    let mut config = test_config(&url);
    config.api_token = Some(" , ".into());
    let err = Postback::builder(pool.clone())
        .config(config)
        .build()
        .await
        .expect_err("empty token list");
    assert_eq!(err.setter(), Some("config"), "{err}");
    assert!(err.to_string().contains("POSTBACK_API_TOKEN"), "{err}");
    // concurrency(0): intake only; its workers stop at once.
    let built = Postback::builder(pool.clone())
        .concurrency(0)
        .build()
        .await
        .expect("intake only builds");
    assert!(built.waker().is_none() && built.handoff().is_none());
    let (lib, workers) = built.start();
    let id = lib
        .enqueue(
            &pool,
            postback::NewDelivery {
                url: "https://example.org/hook".into(),
                body: Some("x".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), workers.shutdown())
        .await
        .expect("an intake-only shutdown returns at once")
        .expect("clean");
    assert_eq!(
        states(&pool).await,
        vec![("pending".to_owned(), 1)],
        "{id} was not left queued"
    );
}
