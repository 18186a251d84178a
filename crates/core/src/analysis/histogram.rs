//! A log-linear latency histogram with atomic buckets.
//!
//! Same idea as HdrHistogram with two significant digits, but with atomic
//! `u32` counters so many threads record into one histogram without a lock
//! and without allocating:
//!
//! - values below 128 µs have a bucket each (exact);
//! - above that, every power of two is split into 64 equal sub-buckets, so a
//!   bucket is at most 1/64 of its value wide. Quantiles report the bucket
//!   midpoint: **relative error ≤ 1/128 (0.79%)**.
//! - values are clamped to [`VALUE_MAX_US`] (about 71 minutes).
//!
//! 1728 buckets × 4 bytes = 6.75 KiB per histogram.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

/// log2 of the number of sub-buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Largest value recorded as itself; larger values land in the last bucket.
pub const VALUE_MAX_US: u64 = u32::MAX as u64;
/// Number of buckets needed to cover `0..=VALUE_MAX_US`.
pub const BUCKETS: usize = ((32 - SUB_BITS + 1) as usize) * SUB_COUNT as usize;
/// Stated error bound of a reported quantile, relative to the true value.
pub const RELATIVE_ERROR_MAX: f64 = 1.0 / (2.0 * SUB_COUNT as f64);

/// Bucket index of a value in microseconds.
#[inline]
pub fn bucket_index(value_us: u64) -> usize {
    let v = value_us.min(VALUE_MAX_US);
    if v < 2 * SUB_COUNT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) - SUB_COUNT;
    ((shift as u64 + 1) * SUB_COUNT + sub) as usize
}

/// Lowest value (inclusive) and width of bucket `index`.
#[inline]
pub fn bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < 2 * SUB_COUNT {
        return (index, 1);
    }
    let shift = index / SUB_COUNT - 1;
    let sub = index % SUB_COUNT + SUB_COUNT;
    (sub << shift, 1 << shift)
}

/// The value a quantile reports for bucket `index`: its midpoint.
#[inline]
fn bucket_value(index: usize) -> u64 {
    let (low, width) = bucket_range(index);
    low + width / 2
}

/// Lock-free histogram the hot path records into.
pub struct AtomicHistogram {
    counts: Box<[AtomicU32]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHistogram {
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Records one value. Wait-free: one relaxed atomic add, no allocation.
    #[inline]
    pub fn record(&self, value_us: u64) {
        self.counts[bucket_index(value_us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds this histogram's counts into `into`.
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        for (sum, count) in into.counts.iter_mut().zip(self.counts.iter()) {
            *sum += u64::from(count.load(Ordering::Relaxed));
        }
    }

    pub fn reset(&self) {
        for count in self.counts.iter() {
            count.store(0, Ordering::Relaxed);
        }
    }

    /// Bytes this histogram occupies (counters only).
    pub const fn size_bytes() -> usize {
        BUCKETS * std::mem::size_of::<AtomicU32>()
    }
}

/// A plain (non-atomic) copy of one or more histograms, for analysis.
///
/// Serialized sparsely as `[[bucket_low_us, count], ...]` for non-empty
/// buckets so that API payloads stay small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
        }
    }
}

impl HistogramSnapshot {
    pub fn record(&mut self, value_us: u64) {
        self.counts[bucket_index(value_us)] += 1;
    }

    /// Records one value known only by its bucket index (as from
    /// [`bucket_index`]): what the simulator draws. Panics if
    /// `index >= BUCKETS`.
    #[inline]
    pub fn record_bucket(&mut self, index: usize) {
        self.counts[index] += 1;
    }

    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (0.0..=1.0), or `None` when empty.
    /// Within [`RELATIVE_ERROR_MAX`] of the exact sample quantile.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // Rank of the sample that the quantile names (1-based, nearest rank).
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(index));
            }
        }
        unreachable!("rank is at most the total count")
    }

    /// Number of recorded values that are at most `bound_us` (bucket
    /// granularity: a bucket counts when its lowest value is ≤ the bound).
    pub fn count_at_most(&self, bound_us: u64) -> u64 {
        let last = bucket_index(bound_us);
        self.counts[..=last].iter().sum()
    }

    /// Sum of recorded values, from bucket midpoints.
    pub fn sum_estimate(&self) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .map(|(index, count)| count * bucket_value(index))
            .sum()
    }

    /// Non-empty buckets as `(bucket_low_us, count)`.
    pub fn nonzero_buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| (bucket_range(index).0, *count))
    }
}

impl Serialize for HistogramSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.nonzero_buckets())
    }
}

impl<'de> Deserialize<'de> for HistogramSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut snapshot = HistogramSnapshot::default();
        for (low, count) in pairs {
            snapshot.counts[bucket_index(low)] += count;
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_the_range() {
        let mut next_low = 0;
        for index in 0..BUCKETS {
            let (low, width) = bucket_range(index);
            assert_eq!(
                low, next_low,
                "bucket {index} starts where the previous ended"
            );
            assert_eq!(bucket_index(low), index);
            assert_eq!(bucket_index(low + width - 1), index);
            next_low = low + width;
        }
        assert_eq!(next_low, VALUE_MAX_US + 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bucket_width_respects_the_error_bound() {
        for index in 0..BUCKETS {
            let (low, width) = bucket_range(index);
            if width > 1 {
                let error = (width / 2) as f64 / low as f64;
                assert!(error <= RELATIVE_ERROR_MAX, "bucket {index}: {error}");
            }
        }
    }

    #[test]
    fn quantiles_are_within_the_stated_error() {
        let histogram = AtomicHistogram::new();
        // A deterministic spread of values from 1 µs to ~10 s.
        let mut values: Vec<u64> = (0..20_000u64)
            .map(|i| 1 + (i * i * 7919) % 10_000_000)
            .collect();
        for v in &values {
            histogram.record(*v);
        }
        values.sort_unstable();
        let mut snapshot = HistogramSnapshot::default();
        histogram.add_to(&mut snapshot);
        assert_eq!(snapshot.count(), values.len() as u64);
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1] as f64;
            let estimate = snapshot.quantile(q).unwrap() as f64;
            let error = (estimate - exact).abs() / exact;
            assert!(
                error <= RELATIVE_ERROR_MAX,
                "q={q} exact={exact} estimate={estimate}"
            );
        }
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut snapshot = HistogramSnapshot::default();
        for v in [3, 150, 150, 99_999, 5_000_000] {
            snapshot.record(v);
        }
        let json = serde_json::to_string(&snapshot).unwrap();
        assert_eq!(
            json, "[[3,1],[150,2],[99328,1],[4980736,1]]",
            "sparse, bucket lows"
        );
        let back: HistogramSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
    }

    #[test]
    fn size_is_bounded() {
        assert!(AtomicHistogram::size_bytes() <= 7 * 1024);
    }
}
