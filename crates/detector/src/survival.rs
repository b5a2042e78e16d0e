//! The survival test: leak verdicts from what a site *retains* of what it allocated (or spawned)
//! and how old the retained part is, so that a leak is named from one profile, and a leak that
//! has stopped growing is still found. Pure functions, no I/O, no clocks.
//!
//! A leak keeps what it allocates, so its live memory (or its tasks) were made over the whole
//! time it has run: its ages are *spread*. What is not a leak looks different:
//! - a churning cache frees most of what it allocates (low survival), and what it holds is young;
//! - short-lived tasks end (low survival), and the alive ones are seconds old;
//! - a table built once at start-up survives whole, but all of it was made at once: its ages are
//!   not spread;
//! - a burst is freed again (low survival), or, if kept, was made at once.
//!
//! Three tests read this evidence:
//! - [`by_age`], from one profile that carries ages (leakfinder's own heap and task profiles):
//!   at least [`AgeThresholds::min_survival`] of what was allocated at the site is still alive,
//!   and its ages spread over at least [`AgeThresholds::min_spread_seconds`];
//! - [`young`], from the first few profiles of a site that appeared during the observation:
//!   it rose at every profile, by a lot, and kept everything it allocated meanwhile;
//! - [`held`], from a series that rose and then stopped (no ages needed): it rose in several
//!   steps and never gave any of it back, and, where allocation counts are known, kept what it
//!   allocated over the whole window.

use crate::analysis::{Point, drops, floor, mann_kendall, p_upward};

/// Live amounts by age: `(age in seconds, amount)`, amounts in bytes or tasks.
pub type Ages = [(f64, f64)];

/// How the ages of what a site retains are spread, weighted by amount.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgeSpread {
    /// The youngest age, seconds.
    pub youngest: f64,
    /// The age under which 10% of the amount lies.
    pub p10: f64,
    /// The median age.
    pub median: f64,
    /// The age under which 90% of the amount lies.
    pub p90: f64,
    /// The oldest age.
    pub oldest: f64,
}

impl AgeSpread {
    /// The width of the middle 80%: how long the retained part took to accumulate.
    pub fn width(&self) -> f64 {
        self.p90 - self.p10
    }
}

/// The amount-weighted spread of `ages`; `None` without a positive, finite amount.
pub fn age_spread(ages: &Ages) -> Option<AgeSpread> {
    let mut ages: Vec<(f64, f64)> = ages
        .iter()
        .copied()
        .filter(|(age, amount)| age.is_finite() && amount.is_finite() && *amount > 0.0)
        .collect();
    let total: f64 = ages.iter().map(|(_, amount)| amount).sum();
    if ages.is_empty() || total <= 0.0 || !total.is_finite() {
        return None;
    }
    ages.sort_by(|a, b| a.0.total_cmp(&b.0));
    let quantile = |q: f64| {
        let mut seen = 0.0;
        for &(age, amount) in &ages {
            seen += amount;
            if seen >= q * total {
                return age;
            }
        }
        ages[ages.len() - 1].0
    };
    Some(AgeSpread {
        youngest: ages[0].0,
        p10: quantile(0.1),
        median: quantile(0.5),
        p90: quantile(0.9),
        oldest: ages[ages.len() - 1].0,
    })
}

/// What was retained of what was allocated (or spawned): `retained / allocated`, in [0, 1];
/// `None` when nothing was allocated or the numbers are not finite.
pub fn survival(retained: f64, allocated: f64) -> Option<f64> {
    (allocated > 0.0 && retained.is_finite() && allocated.is_finite())
        .then(|| (retained / allocated).clamp(0.0, 1.0))
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`: exact in log space up to 2 000 trials, the normal
/// approximation (with continuity correction) beyond.
pub fn binomial_upper_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if n > 2000 {
        let (n, k) = (n as f64, k as f64);
        let sd = (n * p * (1.0 - p)).sqrt();
        return p_upward((k - 0.5 - n * p) / sd);
    }
    let ln_choose = |n: u64, k: u64| -> f64 {
        let mut sum = 0.0;
        for i in 0..k {
            sum += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        }
        sum
    };
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    (k..=n)
        .map(|i| (ln_choose(n, i) + i as f64 * lp + (n - i) as f64 * lq).exp())
        .sum::<f64>()
        .min(1.0)
}

/// The confidence that a site keeps most of what it allocates: `1 - p` of seeing at least this
/// survival among `n` sampled allocations if only half of them survived.
pub fn survival_confidence(survival: f64, n: u64) -> f64 {
    let kept = (survival * n as f64).round() as u64;
    1.0 - binomial_upper_tail(n, kept, 0.5)
}

/// When the ages of one profile say a site leaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgeThresholds {
    /// The smallest amount worth reporting (bytes or tasks).
    pub min_amount: f64,
    /// The least part of what was allocated that must still be alive.
    pub min_survival: f64,
    /// The least spread of the live ages (the middle 80%), seconds.
    pub min_spread_seconds: f64,
    /// The least confidence (see [`survival_confidence`]).
    pub min_confidence: f64,
}

impl AgeThresholds {
    /// For heap sites, in bytes.
    pub const HEAP: AgeThresholds = AgeThresholds {
        min_amount: 1024.0 * 1024.0,
        min_survival: 0.8,
        min_spread_seconds: 30.0,
        min_confidence: 0.99,
    };
    /// For task sites, in tasks.
    pub const TASKS: AgeThresholds = AgeThresholds {
        min_amount: 5.0,
        min_survival: 0.8,
        min_spread_seconds: 30.0,
        min_confidence: 0.99,
    };
}

/// A site whose ages say it leaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aged {
    /// How its live ages are spread.
    pub spread: AgeSpread,
    /// What it retains of what it allocated.
    pub survival: f64,
    /// The growth per second over the time it accumulated (amount over the age spread).
    pub rate: f64,
    /// Whether it has stopped growing: nothing young is retained (the youngest live part is
    /// older than a tenth of the spread, and than 15 s).
    pub held: bool,
    /// See [`survival_confidence`].
    pub confidence: f64,
}

/// The age test, on one profile: `retained` now, `allocated` since the target started, the live
/// `ages`, and `samples`, how many sampled allocations (or tasks) the survival rests on.
pub fn by_age(
    retained: f64,
    allocated: f64,
    ages: &Ages,
    samples: u64,
    thresholds: &AgeThresholds,
) -> Option<Aged> {
    if retained.is_nan() || retained < thresholds.min_amount {
        return None;
    }
    let survival = survival(retained, allocated)?;
    let spread = age_spread(ages)?;
    if survival < thresholds.min_survival || spread.width() < thresholds.min_spread_seconds {
        return None;
    }
    let confidence = survival_confidence(survival, samples);
    if confidence < thresholds.min_confidence {
        return None;
    }
    let accumulated = (spread.oldest - spread.youngest).max(spread.width());
    Some(Aged {
        spread,
        survival,
        rate: retained / accumulated,
        held: spread.youngest > (0.1 * spread.width()).max(15.0),
        confidence,
    })
}

/// When a site that appeared during the observation is a leak already.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YoungThresholds {
    /// The fewest profiles.
    pub min_points: usize,
    /// The least growth over them (bytes or tasks): large, so a cache warming up or a pool
    /// filling is not caught (those are found, if they are leaks, by the trend test later).
    pub min_growth: f64,
    /// The least part of what was allocated meanwhile that must still be alive.
    pub min_survival: f64,
}

impl YoungThresholds {
    /// For heap sites.
    pub const HEAP: YoungThresholds = YoungThresholds {
        min_points: 5,
        min_growth: 16.0 * 1024.0 * 1024.0,
        min_survival: 0.9,
    };
    /// For task sites (blocked tasks only: see [`young`]).
    pub const TASKS: YoungThresholds = YoungThresholds {
        min_points: 5,
        min_growth: 20.0,
        min_survival: 0.9,
    };
}

/// A site that rose at every profile and kept all it allocated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Young {
    /// Growth per second over the points.
    pub rate: f64,
    /// The growth.
    pub growth: f64,
    /// What was retained of what was allocated over the points.
    pub survival: f64,
    /// `1 - p` of the Mann-Kendall test on the points.
    pub confidence: f64,
}

/// The fast test, for the first profiles of a series: it rose at every one of at least
/// `min_points` profiles, by at least `min_growth`, and `retained/allocated` over them (the
/// allocation counts at the same times, cumulative) is at least `min_survival`. Without
/// allocation counts there is no fast verdict.
pub fn young(points: &[Point], allocated: &[Point], thresholds: &YoungThresholds) -> Option<Young> {
    if points.len() < thresholds.min_points || allocated.len() != points.len() {
        return None;
    }
    let finite = points
        .iter()
        .chain(allocated)
        .all(|p| p.t.is_finite() && p.value.is_finite());
    if !finite || points.windows(2).any(|pair| pair[1].value <= pair[0].value) {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let growth = last.value - first.value;
    let survival = survival(
        growth,
        allocated[allocated.len() - 1].value - allocated[0].value,
    )?;
    let span = last.t - first.t;
    if growth < thresholds.min_growth || survival < thresholds.min_survival || span <= 0.0 {
        return None;
    }
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let (_, z) = mann_kendall(&values);
    Some(Young {
        rate: growth / span,
        growth,
        survival,
        confidence: 1.0 - p_upward(z),
    })
}

/// When a series that rose and stopped is a held leak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeldThresholds {
    /// The fewest profiles.
    pub min_points: usize,
    /// The least rise of the floor.
    pub min_rise: f64,
    /// The least rise without allocation counts: a warm-up that plateaus looks the same then,
    /// so only a large one is reported.
    pub min_rise_unproven: f64,
    /// The fewest steps the floor rises in (a table built at once is one step).
    pub min_steps: usize,
    /// The least rate over the rise (from its first to its last step).
    pub min_rate: f64,
    /// The least time the rise took, from the profile before its first step to its last step
    /// (seconds): a table or cache filled once, in a few seconds, keeps all it allocated too.
    pub min_duration: f64,
    /// The most of the rise the series may give back in drops.
    pub give_back: f64,
    /// The least part of what was allocated over the window that must still be alive.
    pub min_survival: f64,
}

impl HeldThresholds {
    /// For heap sites, in bytes.
    pub const HEAP: HeldThresholds = HeldThresholds {
        min_points: 8,
        min_rise: 1024.0 * 1024.0,
        min_rise_unproven: 32.0 * 1024.0 * 1024.0,
        min_steps: 3,
        min_rate: 32.0 * 1024.0,
        min_duration: 15.0,
        give_back: 0.25,
        min_survival: 0.8,
    };
}

/// A series that rose in steps, kept all of it and stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// How far the floor rose.
    pub rise: f64,
    /// The rate from the first step to the last.
    pub rate: f64,
    /// When the floor rose (seconds).
    pub steps: Vec<f64>,
    /// What was retained of what was allocated over the window, when counts are known.
    pub survival: Option<f64>,
    /// `1 - p` of the Mann-Kendall test on the whole series.
    pub confidence: f64,
}

/// The held test, on a whole series and, when known, its cumulative allocation counts at the
/// same times: the floor (the running minimum from each point on) rose by at least `min_rise` in
/// at least `min_steps` steps at `min_rate`; the series gave back at most `give_back` of the
/// rise; and what was allocated over the window is at least `min_survival` still alive. Without
/// counts, the rise must be at least `min_rise_unproven`.
pub fn held(
    points: &[Point],
    allocated: Option<&[Point]>,
    thresholds: &HeldThresholds,
) -> Option<Held> {
    if points.len() < thresholds.min_points {
        return None;
    }
    let finite = points
        .iter()
        .all(|p| p.t.is_finite() && p.value.is_finite());
    if !finite {
        return None;
    }
    let floor = floor(points);
    let rise = floor[floor.len() - 1] - floor[0];
    let steps: Vec<f64> = (1..points.len())
        .filter(|&index| floor[index] > floor[index - 1])
        .map(|index| points[index].t)
        .collect();
    if steps.len() < thresholds.min_steps || rise < thresholds.min_rise {
        return None;
    }
    if drops(points) > thresholds.give_back * rise {
        return None;
    }
    // From the profile before the first step to the last step.
    let first_step = (1..points.len())
        .find(|&index| floor[index] > floor[index - 1])
        .expect("there are steps");
    let duration = steps[steps.len() - 1] - points[first_step - 1].t;
    let rate = if duration > 0.0 { rise / duration } else { 0.0 };
    if rate < thresholds.min_rate || duration < thresholds.min_duration {
        return None;
    }
    let survival = match allocated {
        Some(allocated) if allocated.len() >= 2 => {
            let grown = allocated[allocated.len() - 1].value - allocated[0].value;
            let kept = points[points.len() - 1].value - points[0].value;
            Some(survival(kept, grown).unwrap_or(0.0))
        }
        _ => None,
    };
    match survival {
        Some(survival) if survival < thresholds.min_survival => return None,
        None if rise < thresholds.min_rise_unproven => return None,
        _ => {}
    }
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let (_, z) = mann_kendall(&values);
    Some(Held {
        rise,
        rate,
        steps,
        survival,
        confidence: 1.0 - p_upward(z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    fn points(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point { t: i as f64, value })
            .collect()
    }

    /// Live amounts of `each` made at a steady rate between `from` and `to` seconds ago.
    fn made_between(from: f64, to: f64, n: usize, each: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (to + (from - to) * i as f64 / (n - 1).max(1) as f64, each))
            .collect()
    }

    #[test]
    fn ages_spread_by_amount() {
        let spread = age_spread(&made_between(100.0, 0.0, 101, MIB)).unwrap();
        assert_eq!((spread.youngest, spread.oldest), (0.0, 100.0));
        assert_eq!((spread.p10, spread.median, spread.p90), (10.0, 50.0, 90.0));
        assert_eq!(spread.width(), 80.0);
        // Amount-weighted: a big old table and a sprinkle of young entries is not spread.
        let mut table = vec![(3600.0, 100.0 * MIB)];
        table.extend(made_between(60.0, 0.0, 10, 1024.0));
        assert_eq!(age_spread(&table).unwrap().width(), 0.0);
        assert_eq!(age_spread(&[]), None);
        assert_eq!(age_spread(&[(f64::NAN, 1.0), (1.0, -1.0)]), None);
    }

    #[test]
    fn binomial_tails_match_known_values() {
        assert!((binomial_upper_tail(10, 10, 0.5) - 1.0 / 1024.0).abs() < 1e-12);
        assert!((binomial_upper_tail(10, 0, 0.5) - 1.0).abs() < 1e-12);
        assert!((binomial_upper_tail(4, 3, 0.5) - 5.0 / 16.0).abs() < 1e-12);
        assert_eq!(binomial_upper_tail(3, 4, 0.5), 0.0);
        let big = binomial_upper_tail(1_000_000, 500_000, 0.5);
        assert!((big - 0.5).abs() < 0.01, "{big}");
        assert!(survival_confidence(1.0, 20) > 0.999_99);
        assert!(
            survival_confidence(1.0, 3) < 0.9,
            "three samples prove little"
        );
    }

    #[test]
    fn a_leak_that_ran_a_minute_is_named_from_one_profile() {
        // 60 s at 10 MiB/s, nothing freed: ~530 sampled 1 MiB chunks.
        let ages = made_between(60.0, 0.0, 600, MIB);
        let aged = by_age(600.0 * MIB, 600.0 * MIB, &ages, 530, &AgeThresholds::HEAP).unwrap();
        assert!(!aged.held, "still growing: {aged:?}");
        assert!((aged.rate / (10.0 * MIB) - 1.0).abs() < 0.05, "{aged:?}");
        assert!(aged.confidence > 0.999);
    }

    #[test]
    fn a_leak_that_stopped_growing_is_held() {
        // 100 s of growth that ended five minutes ago: the capped leak.
        let ages = made_between(400.0, 300.0, 1000, MIB);
        let aged = by_age(1000.0 * MIB, 1000.0 * MIB, &ages, 880, &AgeThresholds::HEAP).unwrap();
        assert!(aged.held, "{aged:?}");
        assert_eq!(aged.spread.youngest, 300.0);
    }

    #[test]
    fn what_is_not_a_leak_is_quiet_by_age() {
        let heap = &AgeThresholds::HEAP;
        // A churning cache: keeps 8 MiB of 200 MiB allocated, all younger than 7 s.
        let cache = made_between(6.4, 0.0, 128, 64.0 * 1024.0);
        assert_eq!(by_age(8.0 * MIB, 200.0 * MIB, &cache, 400, heap), None);
        // A table built once at start-up, an hour ago, in two seconds: kept whole, not spread.
        let table = made_between(3600.0, 3598.0, 100, MIB);
        assert_eq!(by_age(100.0 * MIB, 100.0 * MIB, &table, 100, heap), None);
        // A burst kept, made at once ten minutes ago.
        let burst = made_between(601.0, 600.0, 50, MIB);
        assert_eq!(by_age(50.0 * MIB, 50.0 * MIB, &burst, 45, heap), None);
        // Short-lived tasks: 65 alive of 13 000 spawned, none older than 5 s.
        let tasks = made_between(5.0, 0.0, 65, 1.0);
        assert_eq!(
            by_age(65.0, 13_000.0, &tasks, 13_000, &AgeThresholds::TASKS),
            None
        );
        // Too little to matter, or too few samples to tell.
        let small = made_between(60.0, 0.0, 4, 100.0 * 1024.0);
        assert_eq!(
            by_age(400.0 * 1024.0, 400.0 * 1024.0, &small, 1, heap),
            None
        );
        let few = made_between(60.0, 0.0, 3, MIB);
        assert_eq!(by_age(3.0 * MIB, 3.0 * MIB, &few, 3, heap), None);
    }

    #[test]
    fn a_fast_leak_is_young_and_a_warming_cache_is_not() {
        // 10 MiB/s from the first profile, all kept.
        let leak = points(&[5.0, 15.0, 25.0, 35.0, 45.0].map(|v| v * MIB));
        let allocated = points(&[5.0, 15.0, 25.0, 35.0, 45.0].map(|v| v * MIB));
        let found = young(&leak, &allocated, &YoungThresholds::HEAP).unwrap();
        assert!((found.rate / (10.0 * MIB) - 1.0).abs() < 1e-9);
        assert!(found.confidence > 0.98, "{found:?}");
        // A cache warming up by 1.25 MiB/s: too little.
        let cache = points(&[1.25, 2.5, 3.75, 5.0, 6.25].map(|v| v * MIB));
        assert_eq!(young(&cache, &cache, &YoungThresholds::HEAP), None);
        // Growth that frees most of what it allocates: a rising sawtooth of churn.
        let churn = points(
            &[100.0, 200.0].repeat(3)[..5]
                .iter()
                .map(|v| v * MIB)
                .collect::<Vec<_>>(),
        );
        assert_eq!(young(&churn, &churn, &YoungThresholds::HEAP), None);
        let kept = points(&[5.0, 15.0, 25.0, 35.0, 45.0].map(|v| v * MIB));
        let freed = points(&[5.0, 50.0, 100.0, 150.0, 200.0].map(|v| v * MIB));
        assert_eq!(young(&kept, &freed, &YoungThresholds::HEAP), None);
        // No counts, or too few points: no fast verdict.
        assert_eq!(young(&leak, &[], &YoungThresholds::HEAP), None);
        assert_eq!(
            young(&leak[..4], &allocated[..4], &YoungThresholds::HEAP),
            None
        );
    }

    #[test]
    fn a_leak_that_rose_and_held_is_found_without_ages() {
        // billing in the held recording: 0, 5.8, 152.5, then 251 MiB for 21 windows.
        let mut values = vec![0.0, 5.8, 152.5];
        values.extend([251.0; 21]);
        let series: Vec<Point> = points(&values.iter().map(|v| v * MIB).collect::<Vec<_>>())
            .into_iter()
            .map(|p| Point { t: p.t * 15.0, ..p })
            .collect();
        let found = held(&series, None, &HeldThresholds::HEAP).unwrap();
        assert_eq!(found.steps, vec![15.0, 30.0, 45.0]);
        assert_eq!(found.survival, None);
        // With allocation counts that kept pace: proven, whatever the size.
        let small: Vec<Point> = series
            .iter()
            .map(|p| Point {
                value: p.value / 64.0,
                ..*p
            })
            .collect();
        assert_eq!(
            held(&small, None, &HeldThresholds::HEAP),
            None,
            "4 MiB, unproven"
        );
        let found = held(&small, Some(&small), &HeldThresholds::HEAP).unwrap();
        assert_eq!(found.survival, Some(1.0));
    }

    #[test]
    fn a_cache_that_warmed_up_and_churns_is_not_held() {
        // Warmed up, then sampled sizes creep while it churns: allocation keeps growing.
        let values = [0.0, 6.2, 7.6, 7.6, 7.7, 7.7, 7.7, 7.8, 7.8, 7.9].map(|v| v * MIB);
        let allocated: Vec<f64> = (0..10).map(|i| 1.25 * MIB * 5.0 * i as f64).collect();
        let series = points(&values);
        assert_eq!(
            held(&series, Some(&points(&allocated)), &HeldThresholds::HEAP),
            None
        );
        // Without counts it is too small to be called held.
        assert_eq!(held(&series, None, &HeldThresholds::HEAP), None);
        // A table built at once: one step.
        let table = points(&[0.0, 0.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0].map(|v| v * MIB));
        assert_eq!(held(&table, Some(&table), &HeldThresholds::HEAP), None);
        // A cache filled once in 3 s and kept whole (the corpus's ctl_warmupcache, seen from
        // its start at 1 s profiles): every step kept, but too quick to be a leak that stopped.
        let mut filled = vec![0.4, 1.1, 1.6, 2.0];
        filled.extend([2.0; 20]);
        let filled = points(&filled.iter().map(|v| v * MIB).collect::<Vec<_>>());
        assert_eq!(held(&filled, Some(&filled), &HeldThresholds::HEAP), None);
        // Memory that rose and came back down (a burst).
        let burst = points(&[0.0, 30.0, 60.0, 90.0, 60.0, 30.0, 0.0, 0.0].map(|v| v * MIB));
        assert_eq!(held(&burst, Some(&burst), &HeldThresholds::HEAP), None);
    }
}
