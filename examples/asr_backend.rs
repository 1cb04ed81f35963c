//! A miniature ASR backend that embeds Postback.
//!
//! It owns a `transcripts` table. When "media" is accepted it registers a
//! Postback job; when "recognition" finishes it writes its transcript row
//! AND posts the Postback result in ONE transaction, so the callback is
//! queued if and only if the transcript is stored. The delivery workers run
//! in this program's own tokio runtime and stop through a token it owns.
//!
//! Run: `cargo run --example asr_backend` (uses DATABASE_URL, or starts a
//! private PostgreSQL cluster under ./.postback/example like `serve` does).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use postback::pgcluster::Cluster;
use postback::{
    CallbackSpec, Dispatcher, JobOutput, JobResult, NewJob, Postback, Transcript, Word,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The backend's own database (here: a private cluster when no URL is given).
    let mut cluster = None;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let started = Cluster::start(std::path::Path::new("./.postback/example"))?;
            let url = started.url();
            cluster = Some(started);
            url
        }
    };
    let result = run(&url).await;
    if let Some(mut cluster) = cluster {
        cluster.stop()?;
    }
    result
}

async fn run(url: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await.context("connect")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS transcripts (job_id text PRIMARY KEY, text text NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // A customer's callback endpoint, for the demo on loopback.
    let (received_tx, mut received) = mpsc::unbounded_channel::<String>();
    let customer = start_customer_endpoint(received_tx).await?;

    // --- the lines that matter -------------------------------------------
    postback::migrate(&pool).await?; // tables in their own `postback` schema
    let config = postback::Config {
        egress_allow: vec!["127.0.0.0/8".parse()?], // the demo receiver is on loopback
        ..postback::Config::default()
    };
    let postback = Postback::new(&config)?;
    let secret = postback::signing_secret(&config, &pool, postback.schema()).await?;
    let workers = Dispatcher::new(pool.clone(), &config, secret)?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(workers.run(stop.clone()));

    // Media accepted: register the job with its callback.
    let job = NewJob::new().callback(CallbackSpec::analytics(format!(
        "http://{customer}/callback"
    )));
    let (job, _) = postback.create_job(&pool, job).await?;

    // Recognition done: the transcript row and the callback commit together.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO transcripts (job_id, text) VALUES ($1, $2)")
        .bind(&job.job_id)
        .bind("Hello world.")
        .execute(&mut *tx)
        .await?;
    postback
        .post_result(&mut *tx, &job.job_id, finished("Hello", "world."))
        .await?;
    tx.commit().await?;
    // ----------------------------------------------------------------------

    let body = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .context("no callback within 30 s")?
        .context("receiver stopped")?;
    println!("callback received for job {}:\n{body}", job.job_id);
    stop.cancel();
    running.await??;
    Ok(())
}

fn finished(first: &str, second: &str) -> JobResult {
    let words = vec![
        Word::new(0, 0, 400, 0.98, first),
        Word::new(1, 450, 900, 0.95, second),
    ];
    JobResult::finished(JobOutput::transcript(Transcript::from_words(words)))
}

/// Stands in for the customer's server: passes each body to `tx`.
async fn start_customer_endpoint(tx: mpsc::UnboundedSender<String>) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::post(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
