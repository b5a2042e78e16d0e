//! The sample labels of a pushed profile, as Pyroscope keeps them.
//!
//! Pyroscope turns *string* sample labels into series labels and drops numeric ones. The
//! pushed copy of a profile (heap or tasks) therefore replaces a numeric `age` label by a coarse
//! string one (`<1m`, `1m-10m`, `10m-1h`, `>1h`), so the age of what a site holds still shows in
//! Pyroscope and Grafana, and drops every other numeric label (`parked`, `spawned`, ...): few
//! string values keep the series few. String labels (`wait`) stay. Samples that end up alike
//! (one stack, the same labels) are merged, their values added.
//!
//! Pure: a profile in, a profile out. The profiles served on `/debug/pprof` keep their labels.

use std::collections::HashMap;

use leakfinder_pprof::{Label, Profile, Sample};

/// The label whose numeric value becomes a coarse string.
pub const AGE: &str = "age";

/// What makes two samples alike: their stack (location ids) and labels (key, string value).
type SampleKey = (Vec<u64>, Vec<(i64, i64)>);

/// The coarse age of `seconds`, as the pushed `age` label says it.
pub fn age_bucket(seconds: f64) -> &'static str {
    if seconds < 60.0 {
        "<1m"
    } else if seconds < 600.0 {
        "1m-10m"
    } else if seconds < 3600.0 {
        "10m-1h"
    } else {
        ">1h"
    }
}

/// `profile` with its numeric labels as Pyroscope can keep them: a numeric `age` becomes its
/// [`age_bucket`], any other numeric label is dropped. A profile without numeric labels comes
/// back as it was.
pub fn for_pyroscope(mut profile: Profile) -> Profile {
    let numeric = |label: &Label| label.str == 0;
    if !profile
        .sample
        .iter()
        .any(|sample| sample.label.iter().any(numeric))
    {
        return profile;
    }
    let mut strings = Strings::new(&mut profile.string_table);
    let age = strings.find(AGE);
    let samples = std::mem::take(&mut profile.sample);
    let mut merged: Vec<Sample> = Vec::with_capacity(samples.len());
    let mut index: HashMap<SampleKey, usize> = HashMap::new();
    for mut sample in samples {
        let labels = std::mem::take(&mut sample.label);
        for label in labels {
            if !numeric(&label) {
                sample.label.push(label);
            } else if Some(label.key) == age {
                let unit = strings.get(label.num_unit);
                let bucket = age_bucket(seconds(label.num, unit));
                sample.label.push(Label {
                    key: label.key,
                    str: strings.intern(bucket),
                    ..Label::default()
                });
            }
        }
        let key = (
            sample.location_id.clone(),
            sample.label.iter().map(|l| (l.key, l.str)).collect(),
        );
        match index.get(&key) {
            Some(&at) => {
                let into = &mut merged[at].value;
                for (total, value) in into.iter_mut().zip(&sample.value) {
                    *total = total.saturating_add(*value);
                }
            }
            None => {
                index.insert(key, merged.len());
                merged.push(sample);
            }
        }
    }
    profile.sample = merged;
    profile
}

/// A numeric label's value in seconds, by its unit (seconds when it has none).
fn seconds(value: i64, unit: &str) -> f64 {
    let value = value as f64;
    match unit {
        "nanoseconds" => value / 1e9,
        "microseconds" => value / 1e6,
        "milliseconds" => value / 1e3,
        "minutes" => value * 60.0,
        "hours" => value * 3600.0,
        _ => value,
    }
}

/// A profile's string table, with new strings appended.
struct Strings<'a> {
    table: &'a mut Vec<String>,
}

impl<'a> Strings<'a> {
    fn new(table: &'a mut Vec<String>) -> Self {
        if table.is_empty() {
            // Index 0 is always "" in pprof.
            table.push(String::new());
        }
        Self { table }
    }

    fn find(&self, text: &str) -> Option<i64> {
        self.table
            .iter()
            .position(|s| s == text)
            .map(|index| index as i64)
    }

    fn get(&self, index: i64) -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.table.get(index))
            .map_or("", String::as_str)
    }

    fn intern(&mut self, text: &str) -> i64 {
        self.find(text).unwrap_or_else(|| {
            self.table.push(text.to_owned());
            self.table.len() as i64 - 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry};

    fn stack(function: &str, address: u64) -> Vec<StackEntry> {
        vec![StackEntry {
            address,
            frames: vec![Frame::new(function, "src/app.rs", 7)].into(),
            skip: 0,
        }]
    }

    /// A task profile as the tasks engineer writes it: `wait`, and numeric `age`, `parked` and
    /// `spawned` labels.
    fn labelled() -> Profile {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        // Three age buckets of one stack, two of which are under a minute.
        builder.add_sample(&stack("app::wait", 1), vec![3], &[("wait", "chan send")]);
        builder.add_sample(&stack("app::wait", 1), vec![4], &[("wait", "chan send")]);
        builder.add_sample(&stack("app::wait", 1), vec![5], &[("wait", "chan send")]);
        builder.add_sample(&stack("app::idle", 2), vec![1], &[("wait", "select")]);
        let mut profile = builder.build();
        let key = |profile: &mut Profile, text: &str| {
            profile.string_table.push(text.to_owned());
            profile.string_table.len() as i64 - 1
        };
        let (age, parked, spawned, seconds, count) = (
            key(&mut profile, "age"),
            key(&mut profile, "parked"),
            key(&mut profile, "spawned"),
            key(&mut profile, "seconds"),
            key(&mut profile, "count"),
        );
        let numeric = |key, num, num_unit| Label {
            key,
            num,
            num_unit,
            ..Label::default()
        };
        for (sample, age_seconds) in profile.sample.iter_mut().zip([5, 40, 700, 7200]) {
            sample.label.push(numeric(age, age_seconds, seconds));
            sample.label.push(numeric(parked, age_seconds / 2, seconds));
            sample.label.push(numeric(spawned, 900, count));
        }
        profile
    }

    /// (function, value, labels as `key=value`) of each sample.
    fn read(profile: &Profile) -> Vec<(String, i64, Vec<String>)> {
        let name = |index: i64| profile.string_table[index as usize].clone();
        profile
            .sample
            .iter()
            .map(|sample| {
                let location = &profile.location[sample.location_id[0] as usize - 1];
                let function = &profile.function[location.line[0].function_id as usize - 1];
                let labels = sample
                    .label
                    .iter()
                    .map(|label| {
                        if label.str != 0 {
                            format!("{}={}", name(label.key), name(label.str))
                        } else {
                            format!("{}#{}", name(label.key), label.num)
                        }
                    })
                    .collect();
                (name(function.name), sample.value[0], labels)
            })
            .collect()
    }

    #[test]
    fn ages_become_coarse_strings_and_other_numbers_are_dropped() {
        let pushed = for_pyroscope(labelled());
        assert_eq!(
            read(&pushed),
            vec![
                (
                    "app::wait".into(),
                    7,
                    vec!["wait=chan send".into(), "age=<1m".into()]
                ),
                (
                    "app::wait".into(),
                    5,
                    vec!["wait=chan send".into(), "age=10m-1h".into()]
                ),
                (
                    "app::idle".into(),
                    1,
                    vec!["wait=select".into(), "age=>1h".into()]
                ),
            ],
            "the two samples under a minute are one now"
        );
        assert!(
            pushed
                .sample
                .iter()
                .flat_map(|sample| &sample.label)
                .all(|label| label.str != 0 && label.num == 0 && label.num_unit == 0),
            "string labels only"
        );
        // Encodes and decodes as any profile.
        let decoded =
            leakfinder_pprof::decode(&leakfinder_pprof::encode_gzip(&pushed), 1 << 20).unwrap();
        assert_eq!(decoded, pushed);
    }

    #[test]
    fn age_buckets_have_their_bounds_and_units_are_read() {
        for (seconds, bucket) in [
            (0.0, "<1m"),
            (59.9, "<1m"),
            (60.0, "1m-10m"),
            (599.0, "1m-10m"),
            (600.0, "10m-1h"),
            (3599.0, "10m-1h"),
            (3600.0, ">1h"),
            (1e9, ">1h"),
        ] {
            assert_eq!(age_bucket(seconds), bucket, "{seconds}");
        }
        assert_eq!(seconds(90_000_000_000, "nanoseconds"), 90.0);
        assert_eq!(seconds(90_000, "milliseconds"), 90.0);
        assert_eq!(seconds(90, "seconds"), 90.0);
        assert_eq!(seconds(90, ""), 90.0);
    }

    #[test]
    fn a_profile_without_numeric_labels_is_left_as_it_is() {
        let mut builder = ProfileBuilder::new(&[("inuse_space", "bytes")], ("space", "bytes"), 1);
        builder.add_sample(&stack("app::leak", 1), vec![10], &[]);
        builder.add_sample(&stack("app::leak", 1), vec![20], &[]);
        builder.add_sample(&stack("app::wait", 2), vec![1], &[("wait", "chan send")]);
        let profile = builder.build();
        assert_eq!(for_pyroscope(profile.clone()), profile);
        assert_eq!(
            for_pyroscope(Profile::default()),
            Profile::default(),
            "nothing at all"
        );
    }
}
