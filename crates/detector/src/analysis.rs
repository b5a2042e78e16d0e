//! Leak analysis: pure functions over per-site time series. No I/O, no clocks.
//!
//! A site leaks when its retained amount rises steadily, and is still rising now:
//! - the Mann-Kendall test finds a monotonic upward trend over the whole window, and again over
//!   its recent 60% (a warm-up that plateaus, or a one-off step, is flat by then);
//! - the Theil-Sen slope (the median of pairwise slopes, robust to outliers, sampling noise, GC
//!   lag and sawtooth churn) is at least the minimum rate, over the whole window and recently;
//! - the robust growth (median of the last points minus median of the first) passes a minimum.
//!
//! Long series are first reduced to block medians (see [`MAX_BLOCKS`]): profile-to-profile
//! sampling noise is autocorrelated, and the tests assume independent points.
//!
//! A slow leak that arrives in steps (a rare bug leaving one to three tasks parked a few times a
//! minute: `0 3 3 3 3 3 3 3 3 3 3 3 3 3 3 6 6 6 9 9`) has a Theil-Sen slope of 0, yet a count
//! that never comes down is the strongest leak signal there is. [`ratchet`] finds it: the
//! series' *floor* (its running minimum from each point on) rises in several steps, the series
//! never drops back by more than a small part of that rise, and it has not settled.

use std::collections::BTreeMap;

/// One observation of a site: seconds since the scan started, and the amount retained then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the first sample.
    pub t: f64,
    /// Bytes or tasks retained at `t`.
    pub value: f64,
}

/// When a rising series counts as a leak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// The smallest rate (units per second) worth reporting.
    pub min_rate: f64,
    /// The smallest robust growth over the window (units).
    pub min_growth: f64,
    /// Significance of the whole-window trend (one-sided).
    pub alpha: f64,
    /// Significance of the recent trend (one-sided); fewer points, so looser.
    pub alpha_recent: f64,
    /// Fewest points before any verdict.
    pub min_points: usize,
    /// When a count that never comes down is a leak; `None` where amounts are sampled.
    pub ratchet: Option<RatchetThresholds>,
}

/// When a series is a [`ratchet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatchetThresholds {
    /// The smallest rise of the floor (units).
    pub rise: f64,
    /// The fewest steps in which the floor rises.
    pub steps: usize,
}

impl Thresholds {
    /// For heap profiles, in bytes. No ratchet: a heap profile's amounts are sampled, and the
    /// sampled size of a cache that has warmed up can creep up a few times in a row by chance
    /// (a `/leak-report` test caught exactly that), so only a trend counts.
    pub const HEAP: Thresholds = Thresholds {
        min_rate: 32.0 * 1024.0,
        min_growth: 1024.0 * 1024.0,
        alpha: 0.001,
        alpha_recent: 0.01,
        min_points: 8,
        ratchet: None,
    };

    /// For task (goroutine) profiles, in tasks: exact counts, so a floor that rises is real.
    pub const TASKS: Thresholds = Thresholds {
        min_rate: 0.2,
        min_growth: 3.0,
        alpha: 0.001,
        alpha_recent: 0.01,
        min_points: 8,
        ratchet: Some(RatchetThresholds {
            rise: 3.0,
            steps: 3,
        }),
    };
}

/// A steady upward trend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Theil-Sen slope over the whole window, in units per second.
    pub rate: f64,
    /// Theil-Sen slope over the recent 60% of the window.
    pub recent_rate: f64,
    /// Robust growth over the window.
    pub growth: f64,
    /// `1 - p`, the larger of the two trend tests' p-values.
    pub confidence: f64,
}

/// Why a series is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Not enough points yet.
    TooFewPoints,
    /// No significant upward trend over the window (noise, churn, or flat).
    NoTrend,
    /// It rose, but not any more: a warm-up that plateaued, or a step.
    Settled,
    /// It rises, but slower than the minimum rate or by less than the minimum growth.
    TooSlow,
}

/// The verdict on one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The series leaks.
    Leak(Trend),
    /// The series is not reported, and why.
    Quiet(Quiet),
}

/// The Mann-Kendall statistic `S` and its normal score `Z` (with the tie correction).
pub fn mann_kendall(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let mut s = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            s += sign(values[j] - values[i]);
        }
    }
    let mut ties: BTreeMap<u64, usize> = BTreeMap::new();
    for value in values {
        *ties.entry(value.to_bits()).or_default() += 1;
    }
    let nf = n as f64;
    let tie_term: f64 = ties
        .values()
        .filter(|&&t| t > 1)
        .map(|&t| {
            let t = t as f64;
            t * (t - 1.0) * (2.0 * t + 5.0)
        })
        .sum();
    let variance = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - tie_term) / 18.0;
    if variance <= 0.0 {
        return (s, 0.0);
    }
    let z = if s > 0.0 {
        (s - 1.0) / variance.sqrt()
    } else if s < 0.0 {
        (s + 1.0) / variance.sqrt()
    } else {
        0.0
    };
    (s, z)
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The one-sided p-value of an upward trend with normal score `z`.
pub fn p_upward(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The Theil-Sen slope: the median of the slopes between every pair of points.
pub fn theil_sen(points: &[Point]) -> f64 {
    let mut slopes = Vec::with_capacity(points.len() * points.len() / 2);
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            let dt = b.t - a.t;
            if dt > 0.0 {
                slopes.push((b.value - a.value) / dt);
            }
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The robust growth of a series: the median of its last three values minus that of its first
/// three.
pub fn robust_growth(points: &[Point]) -> f64 {
    let k = points.len().min(3);
    let mut first: Vec<f64> = points[..k].iter().map(|p| p.value).collect();
    let mut last: Vec<f64> = points[points.len() - k..].iter().map(|p| p.value).collect();
    median(&mut last) - median(&mut first)
}

/// Points the trend tests look at, at least: series of twice as many or more are reduced to
/// between this many and twice this many block medians first.
///
/// Sampling noise is not independent from one profile to the next (a sampled allocation stays in
/// the profile until it is freed), and the trend tests assume it is: over a long window, a
/// plateau's slowly wandering noise would pass for a trend. Block medians restore independence
/// (and shrug off outliers); short series keep every point, so detection stays fast.
pub const MAX_BLOCKS: usize = 12;

/// The series reduced to medians of consecutive points, [`MAX_BLOCKS`] to twice that many.
pub fn blocks(points: &[Point]) -> Vec<Point> {
    let size = (points.len() / MAX_BLOCKS).max(1);
    points
        .chunks(size)
        .map(|chunk| {
            let mut times: Vec<f64> = chunk.iter().map(|p| p.t).collect();
            let mut values: Vec<f64> = chunk.iter().map(|p| p.value).collect();
            Point {
                t: median(&mut times),
                value: median(&mut values),
            }
        })
        .collect()
}

/// The fewest points of the recent part of a trend.
pub const RECENT_MIN: usize = 6;

/// Whether a series leaks.
pub fn assess(points: &[Point], thresholds: &Thresholds) -> Verdict {
    let finite = points
        .iter()
        .all(|p| p.t.is_finite() && p.value.is_finite());
    if points.len() < thresholds.min_points.max(4) || !finite {
        return Verdict::Quiet(Quiet::TooFewPoints);
    }
    let reduced = blocks(points);
    let points = reduced.as_slice();
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let (_, z) = mann_kendall(&values);
    let p_full = p_upward(z);
    if p_full >= thresholds.alpha {
        return Verdict::Quiet(Quiet::NoTrend);
    }
    // The recent 60%, and at least six points: with five, a perfect rise has a Mann-Kendall
    // p-value of 0.0139 and could never pass `alpha_recent` (a leak over exactly eight fleet
    // windows was never reported).
    let recent = &points[(points.len() * 2 / 5).min(points.len().saturating_sub(RECENT_MIN))..];
    let recent_values: Vec<f64> = recent.iter().map(|p| p.value).collect();
    let (_, z_recent) = mann_kendall(&recent_values);
    let p_recent = p_upward(z_recent);
    let rate = theil_sen(points);
    let recent_rate = theil_sen(recent);
    if p_recent >= thresholds.alpha_recent || recent_rate < thresholds.min_rate / 2.0 {
        return Verdict::Quiet(Quiet::Settled);
    }
    let growth = robust_growth(points);
    if rate < thresholds.min_rate || growth < thresholds.min_growth {
        return Verdict::Quiet(Quiet::TooSlow);
    }
    Verdict::Leak(Trend {
        rate,
        recent_rate,
        growth,
        confidence: 1.0 - p_full.max(p_recent),
    })
}

/// The part of a ratchet's rise the series may give back in drops (transient users of the site).
pub const RATCHET_GIVE_BACK: f64 = 0.25;

/// A floor that rises in steps and never comes back down.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratchet {
    /// How far the floor rose over the window (units).
    pub rise: f64,
    /// The rise per second over the window.
    pub rate: f64,
    /// When (seconds) the floor rose.
    pub steps: Vec<f64>,
    /// `1 - p` of the Mann-Kendall test on the whole series.
    pub confidence: f64,
}

/// The floor of a series: at each point, the least value from there on.
pub fn floor(points: &[Point]) -> Vec<f64> {
    let mut floor = vec![0.0; points.len()];
    let mut least = f64::INFINITY;
    for (index, point) in points.iter().enumerate().rev() {
        least = least.min(point.value);
        floor[index] = least;
    }
    floor
}

/// The times at which a series' floor rises.
pub fn floor_steps(points: &[Point]) -> Vec<f64> {
    steps_of(points, &floor(points))
}

fn steps_of(points: &[Point], floor: &[f64]) -> Vec<f64> {
    (1..points.len())
        .filter(|&index| floor[index] > floor[index - 1])
        .map(|index| points[index].t)
        .collect()
}

/// How much a series gives back: the sum of its drops from one point to the next.
pub fn drops(points: &[Point]) -> f64 {
    points
        .windows(2)
        .map(|pair| (pair[0].value - pair[1].value).max(0.0))
        .sum()
}

/// Whether a series is a ratchet: its floor rises by at least `rise` in at least `steps` steps; it gives back at most [`RATCHET_GIVE_BACK`] of that rise in drops; and
/// it has not settled (the time since its last step is at most twice the longest wait for a step
/// before it, so a warm-up that ramps and stops is quiet).
pub fn ratchet(points: &[Point], thresholds: &Thresholds) -> Option<Ratchet> {
    let wanted = thresholds.ratchet?;
    let finite = points
        .iter()
        .all(|p| p.t.is_finite() && p.value.is_finite());
    if points.len() < thresholds.min_points.max(4) || !finite {
        return None;
    }
    let (first, last) = (points[0], points[points.len() - 1]);
    let floor = floor(points);
    let rise = floor[floor.len() - 1] - floor[0];
    let steps = steps_of(points, &floor);
    if steps.len() < wanted.steps.max(2)
        || rise < wanted.rise
        || drops(points) > RATCHET_GIVE_BACK * rise
    {
        return None;
    }
    let mut waits = Vec::with_capacity(steps.len());
    let mut before = first.t;
    for &step in &steps {
        waits.push(step - before);
        before = step;
    }
    let longest_wait = waits.iter().copied().fold(0.0, f64::max);
    let since_last = last.t - before;
    if since_last > 2.0 * longest_wait {
        return None;
    }
    let span = last.t - first.t;
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    let (_, z) = mann_kendall(&values);
    Some(Ratchet {
        rise,
        rate: if span > 0.0 { rise / span } else { 0.0 },
        steps,
        confidence: 1.0 - p_upward(z),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// A deterministic pseudo-random sequence in [-1, 1), so tests are repeatable.
    fn noise(seed: u64) -> impl Iterator<Item = f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::iter::from_fn(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Some((state >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
    }

    fn series(n: usize, mut value: impl FnMut(f64) -> f64) -> Vec<Point> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                Point { t, value: value(t) }
            })
            .collect()
    }

    fn leak(points: &[Point]) -> Trend {
        match assess(points, &Thresholds::HEAP) {
            Verdict::Leak(trend) => trend,
            quiet => panic!("expected a leak, got {quiet:?}"),
        }
    }

    fn quiet(points: &[Point]) -> Quiet {
        match assess(points, &Thresholds::HEAP) {
            Verdict::Quiet(why) => why,
            Verdict::Leak(trend) => panic!("expected no leak, got {trend:?}"),
        }
    }

    #[test]
    fn a_steady_leak_is_found_with_its_rate() {
        let points = series(10, |t| 50.0 * MIB + 10.0 * MIB * t);
        let trend = leak(&points);
        assert!((trend.rate - 10.0 * MIB).abs() < 1.0, "{trend:?}");
        assert!(trend.confidence > 0.99, "{trend:?}");
    }

    #[test]
    fn a_steady_leak_over_the_fewest_points_a_verdict_takes_is_found() {
        // Eight points: the least `min_points` allows (eight 15 s windows of fleet).
        let points = series(Thresholds::HEAP.min_points, |t| 10.0 * MIB + MIB * t);
        leak(&points);
        let tasks = series(Thresholds::TASKS.min_points, |t| 10.0 * t);
        assert!(matches!(
            assess(&tasks, &Thresholds::TASKS),
            Verdict::Leak(_)
        ));
    }

    #[test]
    fn a_slow_leak_is_found_given_time() {
        let mut jitter = noise(1);
        let points = series(60, |t| {
            20.0 * MIB + 64.0 * 1024.0 * t + 16.0 * 1024.0 * jitter.next().unwrap()
        });
        let trend = leak(&points);
        assert!(
            (trend.rate / (64.0 * 1024.0) - 1.0).abs() < 0.1,
            "{trend:?}"
        );
    }

    #[test]
    fn noise_alone_is_quiet() {
        for seed in 0..20 {
            let mut jitter = noise(seed);
            let points = series(60, |_| 40.0 * MIB + 4.0 * MIB * jitter.next().unwrap());
            let why = quiet(&points);
            assert!(
                matches!(why, Quiet::NoTrend | Quiet::Settled | Quiet::TooSlow),
                "seed {seed}: {why:?}"
            );
        }
    }

    #[test]
    fn a_warm_up_that_plateaus_is_quiet() {
        let points = series(60, |t| 8.0 * MIB * (t / 6.0).min(1.0));
        assert!(matches!(quiet(&points), Quiet::Settled | Quiet::NoTrend));
        let saturating = series(60, |t| 16.0 * MIB * (1.0 - (-t / 4.0).exp()));
        assert!(matches!(
            quiet(&saturating),
            Quiet::Settled | Quiet::TooSlow
        ));
    }

    #[test]
    fn a_sawtooth_of_churn_is_quiet() {
        let points = series(60, |t| {
            10.0 * MIB + 8.0 * MIB * ((t as usize % 7) as f64 / 7.0)
        });
        let why = quiet(&points);
        assert!(
            matches!(why, Quiet::NoTrend | Quiet::Settled | Quiet::TooSlow),
            "{why:?}"
        );
    }

    #[test]
    fn a_step_is_quiet_even_late_in_the_window() {
        for step_at in [10.0, 30.0, 36.0, 45.0] {
            let points = series(60, |t| if t < step_at { 10.0 * MIB } else { 50.0 * MIB });
            let why = quiet(&points);
            assert!(
                matches!(why, Quiet::Settled | Quiet::NoTrend | Quiet::TooSlow),
                "step at {step_at}: {why:?}"
            );
        }
    }

    #[test]
    fn a_leak_hidden_in_noise_is_found() {
        let mut jitter = noise(7);
        // 256 KiB/s under ±4 MiB of noise: invisible point to point, clear over a minute.
        let points = series(60, |t| {
            100.0 * MIB + 256.0 * 1024.0 * t + 4.0 * MIB * jitter.next().unwrap()
        });
        let trend = leak(&points);
        assert!(
            (trend.rate / (256.0 * 1024.0) - 1.0).abs() < 0.35,
            "{trend:?}"
        );
    }

    #[test]
    fn a_growing_sawtooth_is_a_leak() {
        // Churn on top of a rising floor: the floor is the leak.
        let points = series(60, |t| {
            5.0 * MIB * t / 10.0 + 4.0 * MIB * ((t as usize % 5) as f64 / 5.0)
        });
        leak(&points);
    }

    #[test]
    fn a_plateau_with_slowly_wandering_noise_is_quiet() {
        // Sampled allocations persist until freed, so a churning cache's sampled size wanders
        // slowly around its plateau: autocorrelated noise (AR(1), 0.85 per profile, ±1 MiB).
        for seed in 0..40 {
            let mut jitter = noise(seed);
            let mut wander = 0.0;
            let points = series(60, |t| {
                wander = 0.85 * wander + MIB * jitter.next().unwrap();
                8.0 * MIB * (t / 6.0).min(1.0) + wander
            });
            let why = quiet(&points);
            assert!(
                matches!(why, Quiet::Settled | Quiet::NoTrend | Quiet::TooSlow),
                "seed {seed}: {why:?}"
            );
        }
    }

    #[test]
    fn long_series_are_reduced_to_block_medians() {
        let reduced = blocks(&series(60, |t| t));
        assert_eq!(reduced.len(), MAX_BLOCKS);
        assert_eq!(reduced[0], Point { t: 2.0, value: 2.0 });
        assert_eq!(
            blocks(&series(10, |t| t)).len(),
            10,
            "short series keep every point"
        );
    }

    #[test]
    fn too_few_points_or_bad_numbers_give_no_verdict() {
        assert_eq!(quiet(&series(3, |t| t * MIB)), Quiet::TooFewPoints);
        let mut points = series(10, |t| t * MIB);
        points[4].value = f64::NAN;
        assert_eq!(quiet(&points), Quiet::TooFewPoints);
        assert_eq!(quiet(&[]), Quiet::TooFewPoints);
    }

    #[test]
    fn mann_kendall_and_theil_sen_agree_with_known_values() {
        let (s, z) = mann_kendall(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(s, 10.0);
        assert!((z - 9.0 / (5.0f64 * 4.0 * 15.0 / 18.0).sqrt()).abs() < 1e-12);
        assert_eq!(mann_kendall(&[3.0, 3.0, 3.0]), (0.0, 0.0));
        assert!((p_upward(1.6449) - 0.05).abs() < 1e-4);
        assert!((p_upward(0.0) - 0.5).abs() < 1e-6);
        let outlier = [
            Point { t: 0.0, value: 0.0 },
            Point { t: 1.0, value: 2.0 },
            Point {
                t: 2.0,
                value: 400.0,
            },
            Point { t: 3.0, value: 6.0 },
            Point { t: 4.0, value: 8.0 },
        ];
        assert!(
            (theil_sen(&outlier) - 2.0).abs() < 1e-9,
            "robust to the outlier"
        );
    }

    #[test]
    fn task_thresholds_find_tasks_piling_up() {
        let points = series(10, |t| 3.0 + 10.0 * t);
        assert!(matches!(
            assess(&points, &Thresholds::TASKS),
            Verdict::Leak(_)
        ));
        let steady = series(30, |t| 12.0 + (t as usize % 3) as f64);
        assert!(matches!(
            assess(&steady, &Thresholds::TASKS),
            Verdict::Quiet(_)
        ));
    }

    fn values(values: &[f64]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point { t: i as f64, value })
            .collect()
    }

    const STEPS: [f64; 20] = [
        0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 6.0, 6.0, 6.0,
        9.0, 9.0,
    ];

    #[test]
    fn the_step_series_that_the_trend_test_misses_is_a_ratchet() {
        let points = values(&STEPS);
        assert!(
            matches!(assess(&points, &Thresholds::TASKS), Verdict::Quiet(_)),
            "the median slope of a step series is 0"
        );
        let found = ratchet(&points, &Thresholds::TASKS).expect("a ratchet");
        assert_eq!(found.steps, vec![1.0, 15.0, 18.0]);
        assert_eq!(found.rise, 9.0);
        assert!((found.rate - 9.0 / 19.0).abs() < 1e-12, "{found:?}");
        assert!(found.confidence > 0.99, "{found:?}");
    }

    #[test]
    fn a_slow_ratchet_of_single_tasks_is_found() {
        let points = values(&[
            1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0,
            4.0, 4.0, 4.0,
        ]);
        assert!(ratchet(&points, &Thresholds::TASKS).is_some());
    }

    #[test]
    fn a_transient_dip_within_the_give_back_is_still_a_ratchet() {
        let mut series = STEPS;
        series[8] = 2.0;
        assert!(ratchet(&values(&series), &Thresholds::TASKS).is_some());
    }

    #[test]
    fn counts_that_come_back_down_are_not_ratchets() {
        // Short blocks and bursty spawn-and-finish: up and down around a floor of zero.
        let bursts = values(&[
            0.0, 4.0, 0.0, 5.0, 1.0, 0.0, 6.0, 2.0, 0.0, 7.0, 0.0, 3.0, 8.0, 0.0, 2.0, 9.0, 4.0,
            10.0, 6.0, 12.0,
        ]);
        assert_eq!(ratchet(&bursts, &Thresholds::TASKS), None);
        // Long sleepers that end: a ramp, then the oldest leave as new ones come.
        let sleepers = values(&[
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 4.0, 5.0, 5.0, 4.0, 5.0, 5.0, 4.0, 5.0, 5.0, 4.0,
            5.0, 5.0, 4.0,
        ]);
        assert_eq!(ratchet(&sleepers, &Thresholds::TASKS), None);
        // Noise that ends high: the floor of the last points rises, but the series gives back.
        let mut jitter = noise(3);
        let noisy = series(20, |t| {
            if t > 17.0 {
                8.0
            } else {
                4.0 + 4.0 * jitter.next().unwrap()
            }
        });
        assert_eq!(ratchet(&noisy, &Thresholds::TASKS), None);
    }

    #[test]
    fn warm_ups_that_settle_are_not_ratchets() {
        // A fixed pool started at once: one step.
        let pool = values(&[
            0.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0,
            8.0, 8.0, 8.0,
        ]);
        assert_eq!(ratchet(&pool, &Thresholds::TASKS), None);
        // A pool that grows one worker a second to 12, then stops: many steps, then settled.
        let ramp = series(20, |t| t.min(12.0));
        assert_eq!(ratchet(&ramp, &Thresholds::TASKS), None);
        // Two warm-up steps are too few.
        let two = values(&[
            0.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0,
            8.0, 8.0, 8.0,
        ]);
        assert_eq!(ratchet(&two, &Thresholds::TASKS), None);
        // A timer's goroutine: constant.
        assert_eq!(ratchet(&series(20, |_| 1.0), &Thresholds::TASKS), None);
    }

    #[test]
    fn ratchets_need_enough_points_and_finite_numbers() {
        assert_eq!(ratchet(&values(&STEPS[..6]), &Thresholds::TASKS), None);
        let mut series = values(&STEPS);
        series[3].value = f64::NAN;
        assert_eq!(ratchet(&series, &Thresholds::TASKS), None);
        assert_eq!(floor(&values(&[3.0, 1.0, 2.0])), vec![1.0, 1.0, 2.0]);
        assert_eq!(drops(&values(&[3.0, 1.0, 2.0, 0.0])), 4.0);
    }

    #[test]
    fn a_warmed_up_heap_site_whose_sampled_size_creeps_up_is_not_a_ratchet() {
        // `/leak-report` on the benign cache, every 5 s: warmed up by the second profile, then
        // sampling noise that happened to rise three times and never fall.
        let creeping = [0.0, 6.2, 7.6, 7.6, 7.7, 7.7, 7.7, 7.8].map(|mib| mib * MIB);
        assert_eq!(ratchet(&values(&creeping), &Thresholds::HEAP), None);
        assert!(ratchet(&values(&STEPS), &Thresholds::TASKS).is_some());
    }
}
