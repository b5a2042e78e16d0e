//! What a fleet scan asks for: the time range, its push windows, which services this instance
//! owns (`--services`, `--shard`), and times as people write them (RFC 3339) and as Pyroscope
//! takes them (unix milliseconds).
//!
//! Pure: no clock is read here; "now" is passed in.

use std::time::Duration;

/// Why a time, range or shard given on the command line is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Not RFC 3339 (`2026-12-01T14:41:53Z`) nor unix milliseconds.
    #[error("{0:?} is neither an RFC 3339 time (2026-12-01T14:41:53Z) nor unix milliseconds")]
    Time(String),
    /// The range is empty or backwards.
    #[error("the range is empty: --from {from} is not before --to {to}")]
    Empty {
        /// Start, RFC 3339.
        from: String,
        /// End, RFC 3339.
        to: String,
    },
    /// The range holds fewer windows than the analysis needs.
    #[error(
        "{windows} window(s) of {window_s} s fit in the range; the analysis needs at least {MIN_WINDOWS}: widen the range or shorten --window"
    )]
    TooFewWindows {
        /// Windows that fit.
        windows: usize,
        /// The window, in seconds.
        window_s: u64,
    },
    /// The range holds more windows than one scan takes.
    #[error("{windows} windows is more than {MAX_WINDOWS}: narrow the range or widen --window")]
    TooManyWindows {
        /// Windows asked for.
        windows: u64,
    },
    /// Not `N/M` with `1 <= N <= M`.
    #[error("{0:?} is not a shard N/M with 1 <= N <= M (e.g. 1/4)")]
    Shard(String),
}

/// The fewest windows a scan may cover: the trend tests want eight points.
pub const MIN_WINDOWS: usize = 8;
/// The most windows one scan covers (a day of 15 s windows is 5 760).
pub const MAX_WINDOWS: u64 = 10_000;

/// One push window, `[start, end)` in unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub start: i64,
    /// End, exclusive in intent (Pyroscope's range is inclusive; no push lies on a boundary).
    pub end: i64,
}

/// The range a scan covers, cut into push windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Start, unix ms.
    pub from: i64,
    /// End, unix ms.
    pub to: i64,
    /// Window length.
    pub window: Duration,
}

impl Range {
    /// `[from, to)` cut into windows of `window` (whole windows only; a last partial one is left
    /// out, since a heap snapshot may not have landed in it yet).
    pub fn new(from: i64, to: i64, window: Duration) -> Result<Self, PlanError> {
        if from >= to {
            return Err(PlanError::Empty {
                from: format_rfc3339(from),
                to: format_rfc3339(to),
            });
        }
        let step = window_ms(window);
        let windows = ((to - from) / step) as u64;
        if windows > MAX_WINDOWS {
            return Err(PlanError::TooManyWindows { windows });
        }
        if (windows as usize) < MIN_WINDOWS {
            return Err(PlanError::TooFewWindows {
                windows: windows as usize,
                window_s: window.as_secs(),
            });
        }
        Ok(Self { from, to, window })
    }

    /// The range ending at `now` and reaching `since` back.
    pub fn since(now_ms: i64, since: Duration, window: Duration) -> Result<Self, PlanError> {
        let since_ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        Self::new(now_ms.saturating_sub(since_ms), now_ms, window)
    }

    /// The range of the last `since` (in whole windows) ending at the last window boundary at or
    /// before `now`, on the grid of windows through `phase`: watch mode's periods then cut time
    /// into the same windows, and a period reads only those new since the last.
    pub fn since_on_grid(
        now_ms: i64,
        since: Duration,
        window: Duration,
        phase: i64,
    ) -> Result<Self, PlanError> {
        let step = window_ms(window);
        let since_ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        let to = phase + (now_ms - phase).div_euclid(step) * step;
        let from = to.saturating_sub(since_ms / step * step);
        Self::new(from, to, window)
    }

    /// The windows, oldest first.
    pub fn windows(&self) -> Vec<Window> {
        let step = window_ms(self.window);
        let count = (self.to - self.from) / step;
        (0..count)
            .map(|k| Window {
                start: self.from + k * step,
                end: self.from + (k + 1) * step,
            })
            .collect()
    }

    /// Seconds from the range's start to `at` (ms): the time axis of the analysis.
    pub fn seconds(&self, at: i64) -> f64 {
        (at - self.from) as f64 / 1000.0
    }
}

fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// `--shard N/M`: this instance owns the services whose name hashes to `N - 1` modulo `M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based index.
    pub index: u32,
    /// How many instances split the fleet.
    pub count: u32,
}

impl Shard {
    /// Every service.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Parses `N/M`.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        let bad = || PlanError::Shard(text.to_owned());
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// Whether this shard owns `service`. The hash (FNV-1a) depends on the name alone, so a
    /// service stays with its shard as others come and go, on every instance and version.
    pub fn owns(&self, service: &str) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in service.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash % u64::from(self.count) == u64::from(self.index - 1)
    }
}

/// The services of `all` this instance scans: those `filter` matches and the shard owns, sorted.
pub fn select(all: &[String], filter: Option<&regex::Regex>, shard: Shard) -> Vec<String> {
    let mut chosen: Vec<String> = all
        .iter()
        .filter(|service| filter.is_none_or(|filter| filter.is_match(service)))
        .filter(|service| shard.owns(service))
        .cloned()
        .collect();
    chosen.sort();
    chosen.dedup();
    chosen
}

/// The Prometheus-style selector of one service: `{service_name="NAME"}`, quotes escaped.
pub fn selector(service: &str) -> String {
    let escaped = service.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{{service_name=\"{escaped}\"}}")
}

/// Parses `--from`/`--to`: RFC 3339 (`2026-12-01T14:41:53Z`, `...53.250+01:00`) or unix ms.
pub fn parse_time(text: &str) -> Result<i64, PlanError> {
    let text = text.trim();
    let bad = || PlanError::Time(text.to_owned());
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' {
        return Err(bad());
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes[16] != b':' {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, PlanError> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    if second > 60 {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(bad()),
            };
            let (hours, minutes) = rest[1..].split_once(':').ok_or_else(bad)?;
            if hours.len() != 2 || minutes.len() != 2 {
                return Err(bad());
            }
            let hours: i64 = hours.parse().map_err(|_| bad())?;
            let minutes: i64 = minutes.parse().map_err(|_| bad())?;
            sign * (hours * 60 + minutes)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Unix milliseconds as RFC 3339 UTC, to the second (`2026-12-01T14:41:53Z`), or with
/// milliseconds when there are any.
pub fn format_rfc3339(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixtures' span: 2026-12-01 14:41:53 UTC.
    const S: i64 = 1_796_136_113_000;

    #[test]
    fn times_parse_as_rfc3339_or_unix_ms_and_format_back() {
        assert_eq!(parse_time("1796136113000"), Ok(S));
        assert_eq!(parse_time("2026-12-01T14:41:53Z"), Ok(S));
        assert_eq!(parse_time("2026-12-01T14:41:53.250Z"), Ok(S + 250));
        assert_eq!(parse_time("2026-12-01T15:41:53+01:00"), Ok(S));
        assert_eq!(parse_time("2026-12-01T13:41:53.5-01:00"), Ok(S + 500));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(format_rfc3339(S), "2026-12-01T14:41:53Z");
        assert_eq!(format_rfc3339(S + 7), "2026-12-01T14:41:53.007Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        for bad in [
            "",
            "now-1h",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T14:41:53",
            "2026-12-01T14:41:53+0100",
            "2026-12-01T14:41:53.Z",
            "12e9",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        for ms in [0, S, S + 999, 4_102_444_800_000, 1_709_164_800_123] {
            assert_eq!(parse_time(&format_rfc3339(ms)), Ok(ms));
        }
    }

    #[test]
    fn a_range_is_cut_into_whole_push_windows() {
        let range = Range::new(S, S + 360_000, Duration::from_secs(15)).unwrap();
        let windows = range.windows();
        assert_eq!(windows.len(), 24);
        assert_eq!(
            windows[0],
            Window {
                start: S,
                end: S + 15_000
            }
        );
        assert_eq!(windows[23].start, S + 345_000);
        assert_eq!(range.seconds(windows[1].start), 15.0);
        // A partial last window is left out.
        let partial = Range::new(S, S + 130_000, Duration::from_secs(15)).unwrap();
        assert_eq!(partial.windows().len(), 8);
        assert_eq!(
            Range::new(S, S + 100_000, Duration::from_secs(15)),
            Err(PlanError::TooFewWindows {
                windows: 6,
                window_s: 15
            })
        );
        assert!(matches!(
            Range::new(S, S, Duration::from_secs(15)),
            Err(PlanError::Empty { .. })
        ));
        assert!(matches!(
            Range::new(0, S, Duration::from_secs(15)),
            Err(PlanError::TooManyWindows { .. })
        ));
        let since = Range::since(
            S + 1_800_000,
            Duration::from_secs(1800),
            Duration::from_secs(15),
        )
        .unwrap();
        assert_eq!((since.from, since.windows().len()), (S, 120));
    }

    #[test]
    fn watch_periods_share_the_first_periods_window_grid() {
        let window = Duration::from_secs(15);
        let since = Duration::from_secs(600);
        let first = Range::since(S + 600_000, since, window).unwrap();
        assert_eq!((first.from, first.windows().len()), (S, 40));
        // 5 minutes and 4 s later: the range ends at the last boundary of the same grid.
        let later = Range::since_on_grid(S + 900_000 + 4_000, since, window, first.from).unwrap();
        assert_eq!((later.from, later.to), (S + 300_000, S + 900_000));
        assert_eq!(later.windows().len(), 40);
        let shared: Vec<Window> = first
            .windows()
            .into_iter()
            .filter(|w| later.windows().contains(w))
            .collect();
        assert_eq!(
            shared.len(),
            20,
            "half of the windows were read last period"
        );
        // On the grid already: the same as `since`.
        assert_eq!(
            Range::since_on_grid(S + 600_000, since, window, S).unwrap(),
            first
        );
    }

    #[test]
    fn shards_split_the_fleet_without_overlap_or_gaps() {
        let fleet: Vec<String> = (0..1000).map(|i| format!("svc-{i:04}")).collect();
        let shards: Vec<Shard> = (1..=4)
            .map(|n| Shard::parse(&format!("{n}/4")).unwrap())
            .collect();
        let mut seen = 0;
        for shard in &shards {
            let owned = select(&fleet, None, *shard);
            assert!(owned.len() > 150 && owned.len() < 350, "{}", owned.len());
            seen += owned.len();
        }
        assert_eq!(seen, 1000);
        for service in &fleet {
            assert_eq!(shards.iter().filter(|s| s.owns(service)).count(), 1);
        }
        for bad in ["0/4", "5/4", "1", "a/b", "1/0", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(select(&fleet, None, Shard::ALL).len(), 1000);
    }

    #[test]
    fn services_are_filtered_by_regex_and_selectors_escape_quotes() {
        let all: Vec<String> = ["orders-go", "checkout", "catalog", "checkout"]
            .map(String::from)
            .to_vec();
        let filter = regex::Regex::new("^c").unwrap();
        assert_eq!(
            select(&all, Some(&filter), Shard::ALL),
            vec!["catalog", "checkout"]
        );
        assert_eq!(selector("checkout"), r#"{service_name="checkout"}"#);
        assert_eq!(selector(r#"a"b\c"#), r#"{service_name="a\"b\\c"}"#);
    }
}
