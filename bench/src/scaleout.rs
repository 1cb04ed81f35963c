//! The scale-out scenario (issue 19, part 3): the same drain worked by 1,
//! 2 and 4 `postback worker` processes started together on one database,
//! each step on a fresh database. It reports throughput (first to last
//! callback), CPU µs per delivery of all workers together and of
//! PostgreSQL, WAL bytes per delivery, duplicates (must be 0) and each
//! worker's share (from its own `/metrics`).
//!
//! It owns only the steps and what they report: the queueing, the workers
//! and the measurement are `scenarios::drain_run`'s, shared with `drain`
//! and `backlog`, so the three can never measure differently. It must not
//! change Postback's settings beyond what its rows state (each worker's
//! POSTBACK_CONCURRENCY and a metrics listener on 127.0.0.1).

use anyhow::Context as _;

use crate::figures as f;
use crate::report::{thousands, Better, Report};
use crate::scenarios::{drain_run, Ctx, Workers};

/// POSTBACK_CONCURRENCY of each of `count` workers. By default the bench's
/// `--concurrency` is split between them, so every step has the same
/// attempts in flight and (through `pool_size`, concurrency / 4 clamped to
/// 16..64) the same 64 database connections at 256: a step then differs
/// from the others only in how many processes share the work.
/// `same_per_worker` gives each the full `--concurrency`, which is how
/// one would deploy more workers, but then a step also multiplies the
/// concurrency.
pub fn per_worker_concurrency(total: usize, count: usize, same_per_worker: bool) -> usize {
    if same_per_worker {
        total.max(1)
    } else {
        (total / count.max(1)).max(1)
    }
}

/// `postback_deliveries_completed_total{result="delivered"}` in a
/// Prometheus text exposition, added up over any other labels; `None` when
/// the series is absent (nothing delivered yet).
pub fn delivered_count(exposition: &str) -> Option<u64> {
    let mut total = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(postback::metrics::DELIVERIES_COMPLETED) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
            continue;
        };
        if !labels
            .split(',')
            .any(|l| l.trim() == r#"result="delivered""#)
        {
            continue;
        }
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *total.get_or_insert(0u64) += v.max(0.0).round() as u64;
    }
    total
}

/// Each worker's share in percent, `"51.2% / 48.8%"`.
pub fn shares_text(shares: &[u64]) -> String {
    let sum = shares.iter().sum::<u64>().max(1) as f64;
    shares
        .iter()
        .map(|&s| format!("{:.1}%", s as f64 * 100.0 / sum))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The figure names of a step of `count` workers, if it has any.
fn figure_names(count: usize) -> Option<[&'static str; 4]> {
    f::SCALEOUT
        .iter()
        .find(|(c, _)| *c == count)
        .map(|(_, names)| *names)
}

fn workers_word(count: usize) -> &'static str {
    if count == 1 {
        "worker"
    } else {
        "workers"
    }
}

/// 7. scale-out.
pub async fn scaleout(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let plan = &ctx.plan;
    let n = plan.drain_n;
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let mode = if plan.scaleout_same_concurrency {
        "each worker with the full --concurrency"
    } else {
        "--concurrency split between the workers"
    };
    println!(
        "  {} due deliveries per step, workers {:?}, {mode}, on {cores} cores",
        thousands(n as f64),
        plan.scaleout_workers
    );
    let mut base_rate = None;
    let mut duplicates = 0;
    for &count in &plan.scaleout_workers {
        let count = count.max(1);
        let concurrency =
            per_worker_concurrency(plan.concurrency, count, plan.scaleout_same_concurrency);
        println!(
            "  -- {count} {} × POSTBACK_CONCURRENCY={concurrency}",
            workers_word(count)
        );
        let workers = Workers {
            count,
            concurrency,
            metrics: true,
        };
        let db = format!("bench_scaleout_{count}");
        let d = drain_run(ctx, report, &db, n, 0, &workers)
            .await
            .with_context(|| format!("{count} {}", workers_word(count)))?;
        let shares = d.shares.clone().unwrap_or_default();
        let counted: u64 = shares.iter().sum();
        println!(
            "  {count} {}: {} deliveries/s, CPU per delivery postback {:.1} µs / PostgreSQL {:.1} µs, \
             {:.0} WAL bytes per delivery, {} duplicates, shares {}",
            workers_word(count),
            thousands(d.rate),
            d.cpu_us.0,
            d.cpu_us.1,
            d.wal_per_delivery,
            d.duplicates,
            shares_text(&shares)
        );
        if let Some([rate, cpu_pb, cpu_pg, wal]) = figure_names(count) {
            report.figure(rate, d.rate, "/s", Better::Higher);
            report.figure(cpu_pb, d.cpu_us.0, "µs", Better::Lower);
            report.figure(cpu_pg, d.cpu_us.1, "µs", Better::Lower);
            report.figure(wal, d.wal_per_delivery, "B", Better::Lower);
        }
        let base = *base_rate.get_or_insert(d.rate);
        report.row(
            format!(
                "scaleout: {count} {} × POSTBACK_CONCURRENCY={concurrency}, {} queued",
                workers_word(count),
                thousands(n as f64)
            ),
            format!(
                "{} deliveries/s ({:.2} s, {:.2}× the first step); CPU postback {:.1} µs + PostgreSQL {:.1} µs; \
                 {:.0} WAL B per delivery",
                thousands(d.rate),
                d.elapsed.as_secs_f64(),
                d.rate / base.max(1e-9),
                d.cpu_us.0,
                d.cpu_us.1,
                d.wal_per_delivery
            ),
            "",
            None,
        );
        report.row(
            format!("scaleout: {count} {}: share of each", workers_word(count)),
            shares_text(&shares),
            "",
            None,
        );
        if counted != n {
            report.detail(format!(
                "{db}: WARNING: the workers' metrics count {counted} delivered, expected {n}"
            ));
        }
        duplicates += d.duplicates;
    }
    report.figure(f::SCALEOUT_DUPLICATES, duplicates as f64, "", Better::Lower);
    report.row(
        "scaleout: duplicate callbacks over every step",
        duplicates.to_string(),
        "0",
        Some(duplicates == 0),
    );
    report.detail(format!(
        "scaleout: measured on {cores} cores shared by PostgreSQL, the workers, the receiver and the bench: \
         with fewer cores than workers the rate cannot grow, and this shows only that more workers \
         stay correct (no duplicates) and what they cost"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_split_or_kept() {
        assert_eq!(per_worker_concurrency(256, 1, false), 256);
        assert_eq!(per_worker_concurrency(256, 2, false), 128);
        assert_eq!(per_worker_concurrency(256, 4, false), 64);
        assert_eq!(per_worker_concurrency(3, 4, false), 1, "never 0");
        assert_eq!(per_worker_concurrency(256, 0, false), 256, "0 workers is 1");
        assert_eq!(per_worker_concurrency(256, 4, true), 256);
    }

    #[test]
    fn delivered_count_reads_only_the_delivered_series() {
        let text = "\
# HELP postback_deliveries_completed_total Deliveries completed.
# TYPE postback_deliveries_completed_total counter
postback_deliveries_completed_total{result=\"failed\"} 7
postback_deliveries_completed_total{result=\"delivered\"} 12345
postback_deliveries_completed_total_other{result=\"delivered\"} 99
postback_delivery_attempts_total{outcome=\"success\"} 12352
";
        assert_eq!(delivered_count(text), Some(12345));
    }

    #[test]
    fn delivered_count_adds_other_labels_and_reads_floats() {
        let text = "\
postback_deliveries_completed_total{kind=\"a\",result=\"delivered\"} 1.5e3
postback_deliveries_completed_total{result=\"delivered\",kind=\"b\"} 500 1700000000000
";
        assert_eq!(delivered_count(text), Some(2000));
    }

    #[test]
    fn delivered_count_is_none_without_the_series_or_with_garbage() {
        assert_eq!(delivered_count(""), None);
        assert_eq!(
            delivered_count("postback_deliveries_completed_total{result=\"failed\"} 3"),
            None
        );
        assert_eq!(
            delivered_count("postback_deliveries_completed_total{result=\"delivered\"} x"),
            None
        );
        assert_eq!(
            delivered_count("postback_deliveries_completed_total 3"),
            None
        );
    }

    #[test]
    fn shares_are_percentages_of_the_sum() {
        assert_eq!(shares_text(&[100]), "100.0%");
        assert_eq!(shares_text(&[512, 488]), "51.2% / 48.8%");
        assert_eq!(shares_text(&[0, 0]), "0.0% / 0.0%");
        assert_eq!(shares_text(&[]), "");
    }

    #[test]
    fn figures_exist_for_the_default_steps_only_once_each() {
        for count in [1, 2, 4] {
            let names = figure_names(count).expect("default step has figures");
            assert!(names.iter().all(|n| n.contains(&format!("{count} worker"))));
        }
        assert!(figure_names(3).is_none());
        let mut all: Vec<&str> = f::SCALEOUT.iter().flat_map(|(_, n)| n.to_vec()).collect();
        let len = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), len, "figure names are unique");
    }
}
