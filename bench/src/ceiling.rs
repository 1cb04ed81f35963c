//! The bare HTTP ceiling of a run: the load generator straight at the
//! receiver, with the same client stack, body size and receiver as the
//! scenarios, and no Postback or PostgreSQL in between. Every other figure
//! of the run is also reported against it (the machines are shared and
//! their speed changes from day to day; a fraction of the ceiling measured
//! minutes apart is comparable where absolute figures are not).
//!
//! It must not start Postback or touch the database.

use std::time::Duration;

use anyhow::bail;
use postback_test_support::fast::FastReceiver as Receiver;

use crate::figures as f;
use crate::harness::Cpu;
use crate::load::{self, ms, Bare, Summary};
use crate::report::{thousands, Better, Report};
use crate::scenarios::{Ctx, BODY_BYTES};

/// 0. ceiling: closed-loop throughput and light-load round trip.
pub async fn ceiling(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let rx = Receiver::start().await?;
    let clients = ctx.plan.ingest_clients;
    let bare = Bare::new(&rx.url("/ceiling"), 4)?;
    let body = bytes::Bytes::from(vec![b'x'; BODY_BYTES]);
    println!(
        "  {clients} clients on 4 keep-alive connection pools straight at the receiver, \
         {BODY_BYTES}-byte bodies, 1 s warm-up then {} s",
        ctx.plan.ingest_window.as_secs()
    );
    let pg_data = ctx.dir.join("pg").join("data");
    let cpu0 = Cpu::now(None, &pg_data);
    let res = load::closed_loop(
        &bare,
        body.clone(),
        clients,
        Duration::from_secs(1),
        ctx.plan.ingest_window,
    )
    .await;
    let cpu = Cpu::now(None, &pg_data).since(&cpu0);
    if res.errors > 0 {
        bail!(
            "{} bare requests failed (first: {})",
            res.errors,
            res.first_error.unwrap_or_default()
        );
    }
    let rate = res.ok as f64 / res.window.as_secs_f64();
    let (_, _, bench_us) = cpu.per(res.ok_total);
    println!(
        "  {} req/s; {bench_us:.1} µs CPU (client + receiver) per request",
        thousands(rate)
    );

    let light = load::open_loop(&bare, body, 100.0, ctx.plan.light_window, 2048).await;
    if light.errors > 0 {
        bail!(
            "{} bare requests failed at 100/s (first: {})",
            light.errors,
            light.first_error.unwrap_or_default()
        );
    }
    let rtt = Summary::of(light.response);
    println!(
        "  100/s for {} s: round trip p50 {} p99 {}",
        ctx.plan.light_window.as_secs(),
        ms(rtt.p50),
        ms(rtt.p99)
    );
    rx.stop().await;

    report.figure(f::CEILING_RATE, rate, "req/s", Better::Higher);
    report.figure(f::CEILING_CPU, bench_us, "µs", Better::Lower);
    report.figure(f::CEILING_P50, millis(rtt.p50), "ms", Better::Lower);
    report.figure(f::CEILING_P99, millis(rtt.p99), "ms", Better::Lower);
    report.row(
        format!("ceiling: bare HTTP, {clients} clients straight at the receiver"),
        format!(
            "{} req/s, {bench_us:.1} µs CPU per request",
            thousands(rate)
        ),
        "",
        None,
    );
    report.row(
        "ceiling: bare round trip at 100/s, p50 / p99",
        format!("{} / {}", ms(rtt.p50), ms(rtt.p99)),
        "",
        None,
    );
    Ok(())
}

/// A duration in milliseconds, as a figure.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
