//! The `replay` scenario: an operator's bulk replay of failed deliveries
//! after an incident (`postback replay --status failed --yes`), timed as
//! the real CLI runs it against a table of failed rows.
//!
//! It owns only this scenario: the rows are written straight into the
//! tables (what the engine leaves after giving up; going through the API
//! and the schedule would take hours), spread over four hosts, and the
//! command is the `postback` binary under test. It must not measure
//! anything but the replay itself: the fill and `ANALYZE` come first, the
//! clock starts when the command is started.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::PgPool;

use crate::figures as f;
use crate::report::{Better, Report};
use crate::scenarios::Ctx;

/// Hosts the failed deliveries are spread over (as after an incident that
/// hit a few customers' endpoints).
const HOSTS: [&str; 4] = ["a.example", "b.example", "c.example", "d.example"];
/// Rate the replay spreads the deliveries' due times at.
const RATE: &str = "5000/s";
/// Longest the replay may take before the scenario gives up.
const LIMIT: Duration = Duration::from_secs(300);

/// Fills `n` failed deliveries (with payloads), then times `postback replay
/// --status failed --yes --rate 5000/s` and checks every one is pending
/// again.
pub async fn replay(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.plan.replay_n;
    let db = "bench_replay";
    let url = ctx.pg.fresh_db(db).await?;
    ctx.migrate(&url).await?;
    let pool = PgPool::connect(&url).await.context("connect")?;
    let per_host = n / HOSTS.len() as u64;
    for host in HOSTS {
        fill_failed(&pool, per_host, host).await?;
    }
    let total = per_host * HOSTS.len() as u64;
    sqlx::query("ANALYZE postback.deliveries")
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE postback.payloads")
        .execute(&pool)
        .await?;
    let started = Instant::now();
    let run = tokio::process::Command::new(&ctx.bin)
        .args(["replay", "--status", "failed", "--yes", "--rate", RATE])
        .env("DATABASE_URL", &url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, run)
        .await
        .with_context(|| format!("postback replay did not finish within {LIMIT:?}"))?
        .context("run postback replay")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "postback replay failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM postback.deliveries WHERE state = 'pending'")
            .fetch_one(&pool)
            .await?;
    if pending as u64 != total {
        bail!("replay left {pending} of {total} deliveries pending");
    }
    pool.close().await;
    let rate = total as f64 / took.as_secs_f64();
    println!(
        "  replayed {total} failed deliveries in {:.2} s ({rate:.0}/s)",
        took.as_secs_f64()
    );
    report.figure(f::REPLAY_RATE, rate, "/s", Better::Higher);
    report.row(
        format!("bulk replay: `postback replay --status failed --yes --rate {RATE}`, {total} rows"),
        format!("{:.2} s ({rate:.0} deliveries/s)", took.as_secs_f64()),
        "—",
        None,
    );
    ctx.pg.drop_db(db).await;
    Ok(())
}

/// `n` deliveries to `host` that gave up (3 attempts, last a 503), with
/// their payloads, created 1 ms apart an hour ago.
async fn fill_failed(pool: &PgPool, n: u64, host: &str) -> anyhow::Result<()> {
    const BATCH: u64 = 25_000;
    let url = format!("http://{host}:9/hook");
    let mut done = 0;
    while done < n {
        let k = BATCH.min(n - done) as i64;
        sqlx::query(
            "WITH d AS (
                 INSERT INTO postback.deliveries
                     (id, kind, method, url, host, state, next_attempt_at, attempts, last_status_code,
                      last_error, created_at, queued_at, completed_at, expires_at)
                 SELECT gen_random_uuid(), 'generic', 'POST', $1, $2, 'failed', NULL, 3, 503,
                        'http_error', now() - interval '1 hour' - g * interval '1 ms',
                        now() - interval '1 hour' - g * interval '1 ms', now(), now() + interval '7 days'
                 FROM generate_series(1, $3) g
                 RETURNING id, created_at, host)
             INSERT INTO postback.payloads (delivery_id, content_type, headers, body, created_at, host)
             SELECT id, 'application/json', '{}'::jsonb, '{}', created_at, host FROM d",
        )
        .bind(&url)
        .bind(host)
        .bind(k)
        .execute(pool)
        .await
        .context("fill failed deliveries")?;
        done += k as u64;
    }
    Ok(())
}
