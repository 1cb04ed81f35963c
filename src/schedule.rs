//! The retry schedule (SPEC §3) as one pure function, [`next_attempt`]: given
//! the policy, how many attempts of this cycle have failed, when the cycle's
//! first attempt started and when the last one failed, it says when the next
//! attempt is due, or that the delivery is given up. No I/O and no clock
//! reads: every instant is a parameter, so the schedule is the same on every
//! worker and testable to the nanosecond.
//!
//! The rule: the first `immediate` retries are due at once; after that the
//! wait before the k-th scheduled retry (k = 0, 1, …) is `first_delay * 2^k`,
//! never above `max_delay`; no attempt is later than `first_attempt +
//! give_up` (the horizon): when a wait would overshoot it, the attempt is due
//! exactly at the horizon; once an attempt fails at or after the horizon, the
//! delivery is given up. With the defaults (2, 15m, 16h, 36h) that is 11
//! attempts in all.
//!
//! Degenerate policies, decided here once:
//! - `give_up` zero: no retries at all, not even the immediate ones.
//! - `first_delay` or `max_delay` zero (a zero wait after the immediate
//!   phase): only the immediate retries are made, then give up. A zero wait
//!   would otherwise retry in a hot loop against the customer until the
//!   horizon, and jumping to the horizon would wait longer than `max_delay`.
//! - `max_delay` below `first_delay`: the cap wins, every scheduled wait is
//!   `max_delay`.
//! - `attempts_made` zero is read as one (a caller bug must neither stop a
//!   delivery nor make it spin).
//! - Arithmetic saturates: a doubling past `Duration::MAX` is the cap, and an
//!   instant past the calendar's end is its last representable moment, so no
//!   input panics.

use std::time::Duration;

use time::OffsetDateTime;

/// The numbers of the schedule (SPEC §1 `POSTBACK_RETRY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries made at once after a failed first attempt.
    pub immediate: u32,
    /// Wait before the first scheduled retry; doubles each time.
    pub first_delay: Duration,
    /// Cap of the doubling wait.
    pub max_delay: Duration,
    /// Horizon, from the start of the cycle's first attempt, after which
    /// nothing is attempted.
    pub give_up: Duration,
}

impl Default for RetryPolicy {
    /// 2 immediate retries, then 15 minutes doubling up to 16 hours, for 36 hours.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        const HOUR: u64 = 60 * MINUTE;
        Self {
            immediate: 2,
            first_delay: Duration::from_secs(15 * MINUTE),
            max_delay: Duration::from_secs(16 * HOUR),
            give_up: Duration::from_secs(36 * HOUR),
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Attempt again at this instant (which may be `now`: due at once).
    At(OffsetDateTime),
    /// The cycle is over; the delivery is `failed`.
    GiveUp,
}

/// When the next attempt of a delivery is due.
///
/// `attempts_made` counts this cycle's attempts so far, all failed (the
/// first attempt included, so it is at least 1); `first_attempt` is when the
/// cycle's first attempt started; `now` is when the last attempt failed.
pub fn next_attempt(
    policy: &RetryPolicy,
    attempts_made: u32,
    first_attempt: OffsetDateTime,
    now: OffsetDateTime,
) -> Next {
    if policy.give_up.is_zero() {
        return Next::GiveUp;
    }
    let horizon = saturating_add(first_attempt, policy.give_up);
    if now >= horizon {
        return Next::GiveUp;
    }
    // The retry about to be scheduled, counted from 1.
    let retry_number = attempts_made.max(1);
    if retry_number <= policy.immediate {
        return Next::At(now);
    }
    let wait = scheduled_wait(policy, retry_number - policy.immediate - 1);
    if wait.is_zero() {
        return Next::GiveUp;
    }
    Next::At(saturating_add(now, wait).min(horizon))
}

/// [`next_attempt`], honouring a receiver's `Retry-After` (SPEC §3): on a
/// `429` or `503` it sets the earliest next attempt, in place of the
/// schedule's wait when it is longer (so it also replaces the immediate
/// retries), capped at `max_delay`; the give-up horizon still holds (the
/// attempt falls at the horizon at the latest).
pub fn next_attempt_after(
    policy: &RetryPolicy,
    attempts_made: u32,
    first_attempt: OffsetDateTime,
    now: OffsetDateTime,
    retry_after: Option<Duration>,
) -> Next {
    let scheduled = next_attempt(policy, attempts_made, first_attempt, now);
    let (Next::At(at), Some(wait)) = (scheduled, retry_after) else {
        return scheduled;
    };
    let horizon = saturating_add(first_attempt, policy.give_up);
    let asked = saturating_add(now, wait.min(policy.max_delay));
    Next::At(at.max(asked).min(horizon))
}

/// The wait before the scheduled retry number `step` (0-based, counted after
/// the immediate ones): `first_delay * 2^step`, capped at `max_delay`.
fn scheduled_wait(policy: &RetryPolicy, step: u32) -> Duration {
    doubled(policy.first_delay, step).min(policy.max_delay)
}

/// `delay * 2^times`, saturating at `Duration::MAX`.
fn doubled(delay: Duration, times: u32) -> Duration {
    match 1u32.checked_shl(times) {
        Some(factor) => delay.checked_mul(factor).unwrap_or(Duration::MAX),
        // 2^32 and beyond: any non-zero delay is past every cap we can hold.
        None if delay.is_zero() => Duration::ZERO,
        None => Duration::MAX,
    }
}

/// `instant + wait`, stopping at the calendar's last instant instead of
/// panicking (a `std` duration can exceed what `time` can represent).
fn saturating_add(instant: OffsetDateTime, wait: Duration) -> OffsetDateTime {
    let wait = time::Duration::try_from(wait).unwrap_or(time::Duration::MAX);
    instant.saturating_add(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2024-03-01 12:00:00 UTC);

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    fn hours(h: u64) -> Duration {
        mins(h * 60)
    }

    /// Runs a whole cycle: attempt `i` (0-based) fails `attempt_duration(i)`
    /// after it starts. Returns each attempt's start, as an offset from the
    /// first. Stops after `limit` attempts so a broken schedule fails the test
    /// instead of hanging it.
    fn simulate(
        policy: &RetryPolicy,
        mut attempt_duration: impl FnMut(usize) -> Duration,
        limit: usize,
    ) -> Vec<time::Duration> {
        let mut starts = vec![T0];
        loop {
            assert!(starts.len() <= limit, "no GiveUp within {limit} attempts");
            let last_start = *starts.last().unwrap();
            let failed_at = last_start + attempt_duration(starts.len() - 1);
            let made = u32::try_from(starts.len()).unwrap();
            match next_attempt(policy, made, T0, failed_at) {
                Next::At(at) => starts.push(at),
                Next::GiveUp => break,
            }
        }
        starts.into_iter().map(|s| s - T0).collect()
    }

    fn offsets(list: &[Duration]) -> Vec<time::Duration> {
        list.iter()
            .map(|d| time::Duration::try_from(*d).unwrap())
            .collect()
    }

    #[test]
    fn retry_after_replaces_a_shorter_wait_and_is_capped() {
        let p = RetryPolicy::default();
        // On the first failure: the immediate retry waits for Retry-After.
        assert_eq!(
            next_attempt_after(&p, 1, T0, T0, Some(Duration::from_secs(120))),
            Next::At(T0 + time::Duration::seconds(120))
        );
        // Shorter than the schedule's 15 minutes: the schedule wins.
        assert_eq!(
            next_attempt_after(&p, 3, T0, T0, Some(Duration::from_secs(60))),
            Next::At(T0 + time::Duration::minutes(15))
        );
        // Beyond the cap: capped at POSTBACK_RETRY_MAX_DELAY.
        assert_eq!(
            next_attempt_after(&p, 1, T0, T0, Some(hours(100))),
            Next::At(T0 + time::Duration::hours(16))
        );
        // Near the horizon: the attempt falls at the horizon.
        let late = T0 + time::Duration::hours(30);
        assert_eq!(
            next_attempt_after(&p, 9, T0, late, Some(hours(10))),
            Next::At(T0 + time::Duration::hours(36))
        );
        // Past it: given up, whatever the receiver asked.
        assert_eq!(
            next_attempt_after(
                &p,
                9,
                T0,
                T0 + time::Duration::hours(36),
                Some(Duration::ZERO)
            ),
            Next::GiveUp
        );
        assert_eq!(
            next_attempt_after(&p, 1, T0, T0, None),
            next_attempt(&p, 1, T0, T0)
        );
    }

    proptest! {
        #[test]
        fn retry_after_never_goes_past_the_horizon_or_before_now(
            made in 1u32..20,
            elapsed_s in 0u64..(40 * 3600),
            wait_s in proptest::option::of(0u64..(200 * 3600)),
            immediate in 0u32..4,
            first_s in 1u64..7200,
            max_s in 1u64..(20 * 3600),
            give_up_s in 1u64..(48 * 3600),
        ) {
            let p = RetryPolicy {
                immediate,
                first_delay: Duration::from_secs(first_s),
                max_delay: Duration::from_secs(max_s.max(first_s)),
                give_up: Duration::from_secs(give_up_s),
            };
            let now = T0 + time::Duration::seconds(elapsed_s as i64);
            let wait = wait_s.map(Duration::from_secs);
            let horizon = T0 + time::Duration::seconds(give_up_s as i64);
            match next_attempt_after(&p, made, T0, now, wait) {
                Next::At(at) => {
                    prop_assert!(at >= now, "before now");
                    prop_assert!(at <= horizon, "past the horizon");
                    prop_assert!(at >= match next_attempt(&p, made, T0, now) {
                        Next::At(s) => s,
                        Next::GiveUp => unreachable!("gave up without Retry-After"),
                    }, "earlier than the schedule");
                    if let Some(w) = wait {
                        let capped = w.min(p.max_delay);
                        let asked = now + time::Duration::try_from(capped).unwrap();
                        prop_assert!(at >= asked.min(horizon), "earlier than Retry-After");
                        prop_assert!(at <= asked.max(match next_attempt(&p, made, T0, now) {
                            Next::At(s) => s,
                            Next::GiveUp => unreachable!(),
                        }), "later than both the cap and the schedule");
                    }
                }
                Next::GiveUp => prop_assert_eq!(next_attempt(&p, made, T0, now), Next::GiveUp),
            }
        }
    }

    #[test]
    fn default_policy_is_the_spec_schedule() {
        let starts = simulate(&RetryPolicy::default(), |_| Duration::ZERO, 100);
        // 0, retries 0 and 0, then +15m, +30m, +1h, +2h, +4h, +8h, +16h after
        // each failure, and the last at exactly 36h.
        let expected = offsets(&[
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            mins(15),
            mins(15 + 30),
            mins(45) + hours(1),
            mins(45) + hours(3),
            mins(45) + hours(7),
            mins(45) + hours(15),
            mins(45) + hours(31),
            hours(36),
        ]);
        assert_eq!(starts.len(), 11);
        assert_eq!(starts, expected);
    }

    #[test]
    fn default_policy_with_attempts_taking_30_seconds() {
        let secs = |s: u64| Duration::from_secs(s);
        let starts = simulate(&RetryPolicy::default(), |_| secs(30), 100);
        // Each wait counts from the failure, 30 s after its attempt started.
        let expected = offsets(&[
            secs(0),
            secs(30),
            secs(60),
            secs(90 + 900),
            secs(1_020 + 1_800),
            secs(2_850 + 3_600),
            secs(6_480 + 7_200),
            secs(13_710 + 14_400),
            secs(28_140 + 28_800),
            secs(56_970 + 57_600),
            hours(36),
        ]);
        assert_eq!(starts, expected);
    }

    #[test]
    fn an_attempt_failing_at_or_past_the_horizon_ends_the_cycle() {
        let policy = RetryPolicy::default();
        let horizon = T0 + hours(36);
        assert_eq!(next_attempt(&policy, 5, T0, horizon), Next::GiveUp);
        assert_eq!(
            next_attempt(&policy, 1, T0, horizon + hours(1)),
            Next::GiveUp
        );
        let just_before = horizon - time::Duration::SECOND;
        assert_eq!(
            next_attempt(&policy, 1, T0, just_before),
            Next::At(just_before)
        );
        assert_eq!(next_attempt(&policy, 3, T0, just_before), Next::At(horizon));
    }

    #[test]
    fn zero_give_up_means_no_retries() {
        let policy = RetryPolicy {
            give_up: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(next_attempt(&policy, 1, T0, T0), Next::GiveUp);
        // Even if the clocks disagree and `now` is before the first attempt.
        assert_eq!(next_attempt(&policy, 1, T0, T0 - hours(1)), Next::GiveUp);
    }

    #[test]
    fn zero_wait_leaves_only_the_immediate_retries() {
        for policy in [
            RetryPolicy {
                first_delay: Duration::ZERO,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                max_delay: Duration::ZERO,
                ..RetryPolicy::default()
            },
        ] {
            let starts = simulate(&policy, |_| Duration::ZERO, 100);
            assert_eq!(starts, vec![time::Duration::ZERO; 3], "{policy:?}");
        }
    }

    #[test]
    fn a_cap_below_the_first_delay_wins() {
        let policy = RetryPolicy {
            immediate: 0,
            first_delay: hours(2),
            max_delay: mins(30),
            give_up: hours(2),
        };
        let starts = simulate(&policy, |_| Duration::ZERO, 100);
        assert_eq!(
            starts,
            offsets(&[Duration::ZERO, mins(30), mins(60), mins(90), hours(2)])
        );
    }

    #[test]
    fn zero_attempts_made_reads_as_one() {
        let policy = RetryPolicy::default();
        assert_eq!(
            next_attempt(&policy, 0, T0, T0),
            next_attempt(&policy, 1, T0, T0)
        );
    }

    #[test]
    fn huge_counts_and_durations_saturate() {
        let policy = RetryPolicy::default();
        assert_eq!(
            next_attempt(&policy, u32::MAX, T0, T0),
            Next::At(T0 + hours(16))
        );

        let endless = RetryPolicy {
            immediate: 0,
            first_delay: Duration::MAX,
            max_delay: Duration::MAX,
            give_up: Duration::MAX,
        };
        let Next::At(at) = next_attempt(&endless, u32::MAX, T0, T0) else {
            panic!("a horizon past the calendar's end is never reached from 2024");
        };
        assert!(at > T0 + hours(24 * 365 * 7000));
        // Already at the end of the calendar: nothing later exists.
        assert_eq!(next_attempt(&endless, 1, T0, at), Next::GiveUp);

        let tiny_doubling = RetryPolicy {
            first_delay: Duration::from_nanos(1),
            ..endless
        };
        assert!(matches!(
            next_attempt(&tiny_doubling, u32::MAX, T0, T0),
            Next::At(_)
        ));
    }

    #[test]
    fn doubling_saturates_instead_of_overflowing() {
        assert_eq!(doubled(mins(15), 3), hours(2));
        assert_eq!(
            doubled(Duration::from_secs(1), 31),
            Duration::from_secs(1 << 31)
        );
        assert_eq!(doubled(Duration::from_secs(1), 32), Duration::MAX);
        assert_eq!(doubled(Duration::MAX, 1), Duration::MAX);
        assert_eq!(doubled(Duration::ZERO, 1_000), Duration::ZERO);
    }

    /// Policies in whole minutes with a non-zero wait of at least a minute,
    /// so a simulated cycle has at most a few thousand attempts.
    fn simulable_policy() -> impl Strategy<Value = RetryPolicy> {
        (0u32..6, 1u64..3_000, 1u64..3_000, 0u64..5_000).prop_map(
            |(immediate, first, max, give_up)| RetryPolicy {
                immediate,
                first_delay: mins(first),
                max_delay: mins(max),
                give_up: mins(give_up),
            },
        )
    }

    /// Seconds up to `limit`, zero often enough to exercise the degenerate cases.
    fn secs_or_zero(limit: u64) -> impl Strategy<Value = Duration> {
        prop_oneof![1 => Just(0u64), 4 => 0..limit].prop_map(Duration::from_secs)
    }

    /// Like [`simulable_policy`] but also with zero waits and sub-minute values.
    fn any_small_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            0u32..6,
            secs_or_zero(200_000),
            secs_or_zero(200_000),
            secs_or_zero(300_000),
        )
            .prop_map(|(immediate, first_delay, max_delay, give_up)| RetryPolicy {
                immediate,
                first_delay,
                max_delay,
                give_up,
            })
    }

    fn attempt_durations() -> impl Strategy<Value = Vec<Duration>> {
        prop::collection::vec((0u64..7_200_000).prop_map(Duration::from_millis), 1..16)
    }

    /// The most attempts a cycle can have when every scheduled wait is at
    /// least `min_wait` (which is non-zero): the first, the immediate ones,
    /// one per `min_wait` in the horizon, and the one at the horizon.
    fn attempt_bound(policy: &RetryPolicy) -> usize {
        let min_wait = policy.first_delay.min(policy.max_delay);
        let scheduled = policy.give_up.as_nanos() / min_wait.as_nanos();
        2 + policy.immediate as usize + usize::try_from(scheduled).unwrap()
    }

    proptest! {
        #[test]
        fn every_cycle_obeys_the_rules(
            policy in simulable_policy(),
            durations in attempt_durations(),
        ) {
            let horizon = time::Duration::try_from(policy.give_up).unwrap();
            let starts = simulate(&policy, |i| durations[i % durations.len()], attempt_bound(&policy));
            let mut previous_scheduled_wait = time::Duration::ZERO;
            for (i, start) in starts.iter().enumerate().skip(1) {
                let failed_at = starts[i - 1] + durations[(i - 1) % durations.len()];
                let wait = *start - failed_at;
                prop_assert!(*start <= horizon, "attempt {i} at {start} past the horizon");
                prop_assert!(wait >= time::Duration::ZERO, "attempt {i} scheduled in the past");
                prop_assert!(wait <= policy.max_delay, "attempt {i} waited {wait}, above the cap");
                if i <= policy.immediate as usize {
                    prop_assert_eq!(wait, time::Duration::ZERO);
                } else if *start < horizon {
                    // Only the attempt clipped to the horizon may wait less.
                    prop_assert!(wait >= previous_scheduled_wait, "wait {i} shrank");
                    previous_scheduled_wait = wait;
                }
            }
        }

        #[test]
        fn every_cycle_ends_within_a_bound(
            policy in any_small_policy(),
            durations in attempt_durations(),
        ) {
            let wait_is_zero = policy.first_delay.min(policy.max_delay).is_zero();
            let bound = if wait_is_zero || policy.give_up.is_zero() {
                1 + policy.immediate as usize
            } else {
                attempt_bound(&policy)
            };
            let starts = simulate(&policy, |i| durations[i % durations.len()], bound);
            if policy.give_up.is_zero() {
                prop_assert_eq!(starts.len(), 1);
            }
        }

        #[test]
        fn never_panics_and_never_goes_backwards_or_past_the_horizon(
            immediate in any::<u32>(),
            first in any::<(u64, u32)>(),
            max in any::<(u64, u32)>(),
            give_up in any::<(u64, u32)>(),
            attempts_made in any::<u32>(),
            first_unix in -377_705_116_800i64..253_402_300_799,
            since_first in any::<i64>(),
        ) {
            let duration = |(secs, nanos): (u64, u32)| Duration::new(secs, nanos % 1_000_000_000);
            let policy = RetryPolicy {
                immediate,
                first_delay: duration(first),
                max_delay: duration(max),
                give_up: duration(give_up),
            };
            let first_attempt = OffsetDateTime::from_unix_timestamp(first_unix).unwrap();
            let now = first_attempt.saturating_add(time::Duration::nanoseconds(since_first));
            if let Next::At(at) = next_attempt(&policy, attempts_made, first_attempt, now) {
                prop_assert!(at >= now);
                prop_assert!(at <= saturating_add(first_attempt, policy.give_up));
            }
        }
    }
}
