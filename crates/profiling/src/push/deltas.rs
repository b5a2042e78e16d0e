//! What was allocated since the previous push: the pushed heap profile's `alloc_*` values.
//!
//! The heap profile counts `alloc_objects` and `alloc_space` since the process started, as Go's
//! runtime does. Pyroscope adds the profiles of a range up, so, as Go's agent (godeltaprof)
//! does, each push carries only what was allocated since the previous one, and says so with the
//! series label `__delta__="false"` (already a delta: Pyroscope's v1 storage would otherwise
//! compute one). Per stack, the pushed copy has one sample with the delta (in-use values zero,
//! no labels: an allocation made and perhaps freed since has no age), and its other samples keep
//! their in-use values with zero allocations.
//!
//! Pure: the previous push's totals in, the pushed copy out.

use std::collections::HashMap;

use leakfinder_pprof::{Profile, Sample};

/// A stack as the heap profile builds it: each location's address and how many lines it shows
/// (the same address trimmed differently is another location).
type StackKey = Vec<(u64, usize)>;

/// The allocation totals of the previous push, per stack.
#[derive(Debug, Default)]
pub struct AllocDeltas {
    previous: HashMap<StackKey, [i64; 2]>,
}

impl AllocDeltas {
    /// Rewrites `profile`'s `alloc_objects` and `alloc_space` as what was allocated since the
    /// previous call, and remembers the totals. With `allocations_only`, in-use values are left
    /// out (a push whose in-use snapshot would land too close to the previous one). A profile
    /// without those sample types is left as it is; returns whether it had them.
    pub fn apply(&mut self, profile: &mut Profile, allocations_only: bool) -> bool {
        let column = |name: &str| {
            profile.sample_type.iter().position(|t| {
                profile
                    .string_table
                    .get(t.r#type as usize)
                    .is_some_and(|s| s == name)
            })
        };
        let (Some(objects), Some(space)) = (column("alloc_objects"), column("alloc_space")) else {
            return false;
        };
        let in_use: Vec<usize> = ["inuse_objects", "inuse_space"]
            .iter()
            .filter_map(|name| column(name))
            .collect();
        let locations: HashMap<u64, (u64, usize)> = profile
            .location
            .iter()
            .map(|location| (location.id, (location.address, location.line.len())))
            .collect();
        let key = |sample: &Sample| -> StackKey {
            sample
                .location_id
                .iter()
                .map(|id| locations.get(id).copied().unwrap_or((0, 0)))
                .collect()
        };
        // Per stack: its totals now, and its location ids (the delta sample's stack).
        let mut totals: HashMap<StackKey, ([i64; 2], Vec<u64>)> = HashMap::new();
        for sample in &mut profile.sample {
            let (Some(&o), Some(&s)) = (sample.value.get(objects), sample.value.get(space)) else {
                continue;
            };
            let entry = totals
                .entry(key(sample))
                .or_insert_with(|| ([0, 0], sample.location_id.clone()));
            entry.0[0] = entry.0[0].saturating_add(o);
            entry.0[1] = entry.0[1].saturating_add(s);
            sample.value[objects] = 0;
            sample.value[space] = 0;
        }
        profile.sample.retain(|sample| {
            !allocations_only
                && in_use
                    .iter()
                    .any(|&c| sample.value.get(c).is_some_and(|v| *v != 0))
        });
        let width = profile.sample_type.len();
        for (stack, (now, location_id)) in &totals {
            let before = self.previous.get(stack).copied().unwrap_or([0, 0]);
            let delta = [
                now[0].saturating_sub(before[0]).max(0),
                now[1].saturating_sub(before[1]).max(0),
            ];
            if delta[1] > 0 || delta[0] > 0 {
                let mut value = vec![0; width];
                value[objects] = delta[0];
                value[space] = delta[1];
                profile.sample.push(Sample {
                    location_id: location_id.clone(),
                    value,
                    label: Vec::new(),
                });
            }
        }
        self.previous = totals
            .into_iter()
            .map(|(stack, (now, _))| (stack, now))
            .collect();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry};

    fn heap(stacks: &[(u64, [i64; 4], Option<i64>)]) -> Profile {
        let mut builder = ProfileBuilder::new(
            &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
            ("space", "bytes"),
            524_288,
        );
        for &(address, value, age) in stacks {
            let entry = StackEntry {
                address,
                frames: vec![Frame::new(&format!("f{address}"), "src/a.rs", 1)].into(),
                skip: 0,
            };
            let age: Vec<(&str, i64, &str)> =
                age.map(|age| ("age", age, "seconds")).into_iter().collect();
            builder.add_sample_with_numbers(&[entry], value.to_vec(), &[], &age);
        }
        builder.build()
    }

    /// (alloc_space, inuse_space) per leaf function.
    fn totals(profile: &Profile) -> Vec<(String, i64, i64)> {
        let mut totals: HashMap<String, (i64, i64)> = HashMap::new();
        for sample in &profile.sample {
            let location = &profile.location[sample.location_id[0] as usize - 1];
            let function = &profile.function[location.line[0].function_id as usize - 1];
            let name = profile.string_table[function.name as usize].clone();
            let entry = totals.entry(name).or_default();
            entry.0 += sample.value[1];
            entry.1 += sample.value[3];
        }
        let mut totals: Vec<_> = totals.into_iter().map(|(n, (a, i))| (n, a, i)).collect();
        totals.sort();
        totals
    }

    #[test]
    fn each_push_carries_what_was_allocated_since_the_previous_one() {
        let mut deltas = AllocDeltas::default();
        // A leak (two age groups) and churn (a freed sample).
        let mut first = heap(&[
            (1, [2, 200, 2, 200], Some(30)),
            (1, [1, 100, 1, 100], Some(5)),
            (2, [10, 1000, 0, 0], None),
            (2, [1, 100, 1, 100], Some(1)),
        ]);
        assert!(deltas.apply(&mut first, false));
        assert_eq!(
            totals(&first),
            [("f1".into(), 300, 300), ("f2".into(), 1100, 100)],
            "the first push carries everything since the start"
        );
        let delta_samples: Vec<&Sample> = first.sample.iter().filter(|s| s.value[1] > 0).collect();
        assert!(
            delta_samples
                .iter()
                .all(|s| s.label.is_empty() && s.value[3] == 0)
        );

        let mut second = heap(&[
            (1, [4, 400, 4, 400], Some(30)),
            (2, [20, 2000, 0, 0], None),
            (2, [1, 100, 1, 100], Some(1)),
        ]);
        deltas.apply(&mut second, false);
        assert_eq!(
            totals(&second),
            [("f1".into(), 100, 400), ("f2".into(), 1000, 100)],
            "in use as it is, allocated since the first push"
        );

        // At exit, soon after: allocations only.
        let mut last = heap(&[(1, [5, 500, 5, 500], Some(31)), (2, [21, 2100, 0, 0], None)]);
        deltas.apply(&mut last, true);
        assert_eq!(
            totals(&last),
            [("f1".into(), 100, 0)],
            "nothing allocated at f2 since, nothing in use sent"
        );
    }

    #[test]
    fn a_profile_without_allocation_counts_is_left_alone() {
        let mut builder = ProfileBuilder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
        builder.add_sample(&[], vec![3], &[]);
        let mut profile = builder.build();
        let before = profile.clone();
        assert!(!AllocDeltas::default().apply(&mut profile, false));
        assert_eq!(profile, before);
    }
}
