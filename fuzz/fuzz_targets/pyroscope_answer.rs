//! Pyroscope's answers as `leakfinder fleet` reads them (`fleet::client`): the bounded read, a
//! `LabelValues` JSON answer, a connect error's message, a `SelectMergeProfile` answer, and that
//! profile folded window after window into a service's series (`Series::fold`), heap and
//! goroutine, then its findings. Every input is read as each kind of answer.
//!
//! Asserts: `read_bounded` keeps exactly the answer or refuses it as too large; label values
//! re-encode to the same values; a connect message is never empty; folding gives an error that
//! names the window or is fine; every finding's numbers are finite.

#![no_main]

use leakfinder_detector::fleet::client::{self, QueryError};
use leakfinder_detector::fleet::plan::Window;
use leakfinder_detector::fleet::service::Series;
use leakfinder_detector::profile::{self, ProfileKind};
use leakfinder_fuzz::{SERIES, check_findings};
use leakfinder_pprof::Profile;
use libfuzzer_sys::fuzz_target;

/// The first window of the recorded fleet (unix ms) and the push interval.
const START: i64 = 1_796_136_113_000;
const WINDOW_MS: i64 = 15_000;

fuzz_target!(|data: &[u8]| {
    for limit in [0, data.len().saturating_sub(1), data.len(), data.len() + 1] {
        match client::read_bounded(data, limit, "SelectMergeProfile") {
            Ok(body) => {
                assert!(data.len() <= limit);
                assert_eq!(body, data);
            }
            Err(QueryError::TooLarge { limit: said, .. }) => {
                assert!(data.len() > limit);
                assert_eq!(said, limit);
            }
            Err(error) => panic!("reading a slice failed: {error}"),
        }
    }
    if let Ok(names) = client::parse_label_values(data) {
        let again =
            serde_json::to_vec(&serde_json::json!({ "names": names })).expect("strings serialise");
        assert_eq!(
            client::parse_label_values(&again).expect("re-encoded names parse"),
            names
        );
    }
    assert!(!client::connect_message(data).is_empty());
    let Ok(profile) = client::parse_profile(data) else {
        return;
    };
    let mut series = Series::with_epoch(START, SERIES);
    for k in 0..SERIES {
        let window = Window {
            start: START + WINDOW_MS * k as i64,
            end: START + WINDOW_MS * (k as i64 + 1),
        };
        let grown = grown(&profile, k as i64 + 1);
        for kind in [ProfileKind::Heap, ProfileKind::Tasks] {
            if let Err(error) = series.fold(window, kind, &grown) {
                assert!(
                    error.to_string().contains(" profile of the window at "),
                    "{error}"
                );
            }
        }
    }
    check_findings(&series.findings());
    if let Ok(amounts) = profile::site_amounts(&profile, "alloc_space") {
        assert!(amounts.values().all(|amount| amount.is_finite()));
    }
});

/// The profile with every value `factor` times as large: a service that grows window by window.
fn grown(profile: &Profile, factor: i64) -> Profile {
    let mut grown = profile.clone();
    for sample in &mut grown.sample {
        for value in &mut sample.value {
            *value = value.saturating_mul(factor);
        }
    }
    grown
}
