//! Latency summaries: nearest-rank percentiles over the timed samples.

use std::time::Duration;

use serde::Serialize;

/// One latency metric: how many timed samples, and their spread in
/// milliseconds. Warm-up samples are never part of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none, so an empty run
    /// cannot pretend to have a median.
    pub fn of(mut samples: Vec<Duration>) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Some(Summary {
            samples: samples.len(),
            median_ms: ms(percentile(&samples, 50)),
            p90_ms: ms(percentile(&samples, 90)),
            p99_ms: ms(percentile(&samples, 99)),
            min_ms: ms(samples[0]),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples: the smallest
/// sample with at least `p` percent of all samples at or below it. It is
/// always a value that was measured, never an interpolation. Integer
/// arithmetic keeps `p90` of 100 samples at rank 90 exactly (in floating
/// point, 0.9 × 100 rounds up to rank 91).
pub fn percentile<T: Copy>(sorted: &[T], p: usize) -> T {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!((1..=100).contains(&p), "percentile {p} is outside 1..=100");
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn of_one_to_a_hundred_the_median_is_50_p90_is_90_and_p99_is_99() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50), 50);
        assert_eq!(percentile(&sorted, 90), 90);
        assert_eq!(percentile(&sorted, 99), 99);
        assert_eq!(percentile(&sorted, 100), 100);
    }

    #[test]
    fn of_two_hundred_samples_p99_is_the_198th_and_the_median_the_100th() {
        let sorted: Vec<u32> = (1..=200).collect();
        assert_eq!(percentile(&sorted, 99), 198);
        assert_eq!(percentile(&sorted, 50), 100);
        assert_eq!(percentile(&sorted, 1), 2);
    }

    #[test]
    fn of_few_samples_the_high_percentiles_are_the_maximum() {
        assert_eq!(percentile(&[10, 20, 30], 50), 20);
        assert_eq!(percentile(&[10, 20, 30], 90), 30);
        assert_eq!(percentile(&[7], 1), 7);
        assert_eq!(percentile(&[7], 99), 7);
    }

    #[test]
    fn a_summary_sorts_its_samples_and_reports_milliseconds() {
        let s = Summary::of(vec![
            ms(4),
            ms(1),
            ms(3),
            ms(2),
            ms(5),
            ms(10),
            ms(6),
            ms(8),
            ms(7),
            ms(9),
        ])
        .unwrap();
        assert_eq!(
            s,
            Summary {
                samples: 10,
                median_ms: 5.0,
                p90_ms: 9.0,
                p99_ms: 10.0,
                min_ms: 1.0,
            }
        );
    }

    #[test]
    fn no_samples_give_no_summary() {
        assert_eq!(Summary::of(Vec::new()), None);
    }
}
