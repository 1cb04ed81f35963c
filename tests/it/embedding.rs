//! Issue 9: the library inside the caller's own transaction. A rolled-back
//! transaction leaves no delivery and the job unchanged; a committed one
//! is delivered over real HTTP by workers running in the caller's runtime.

use std::time::Duration;

use postback::{CallbackSpec, Dispatcher, JobResult, NewJob, Postback, Publish, ResultStatus};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{fresh_database, test_config, Receiver};

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
