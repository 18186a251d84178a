//! Per-version statistics in a ring of time buckets.
//!
//! The gateway records each finished request into the *current* bucket with
//! a handful of relaxed atomic adds: no lock, no allocation. A single ticker
//! (the caller, which owns the clock) calls [`VersionStats::advance_to`] once
//! per bucket; it clears the bucket about to be reused *before* making it
//! current, folding its counts into the lifetime totals first. Memory is
//! fixed at construction: `buckets × (6.75 KiB + counters)` per version,
//! however long the process runs.

use super::histogram::{AtomicHistogram, HistogramSnapshot};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How one request ended, as the analysis sees it.
///
/// Client errors are kept apart from server errors so a bad client never
/// counts against a canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The model server answered (2xx/3xx, or gRPC status OK).
    Success,
    /// The model server failed: 5xx, or a gRPC status that blames the server.
    ServerError,
    /// The request was bad: 4xx, or a gRPC status that blames the caller.
    ClientError,
    /// No answer within the route's request timeout.
    Timeout,
    /// No connection could be made to any endpoint.
    ConnectError,
    /// The client went away before the answer was complete.
    Cancelled,
}

/// Counters of one time bucket (or a sum of buckets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub successes: u64,
    pub server_errors: u64,
    pub client_errors: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
    pub cancelled: u64,
    pub response_bytes: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.server_errors += other.server_errors;
        self.client_errors += other.client_errors;
        self.timeouts += other.timeouts;
        self.connect_errors += other.connect_errors;
        self.cancelled += other.cancelled;
        self.response_bytes += other.response_bytes;
    }

    /// Requests that failed because of the version (server side): 5xx,
    /// timeouts and connect failures.
    pub fn failures(&self) -> u64 {
        self.server_errors + self.timeouts + self.connect_errors
    }
}

#[derive(Default)]
struct AtomicCounts {
    requests: AtomicU64,
    successes: AtomicU64,
    server_errors: AtomicU64,
    client_errors: AtomicU64,
    timeouts: AtomicU64,
    connect_errors: AtomicU64,
    cancelled: AtomicU64,
    response_bytes: AtomicU64,
}

impl AtomicCounts {
    fn load(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            successes: self.successes.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            connect_errors: self.connect_errors.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            response_bytes: self.response_bytes.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.successes,
            &self.server_errors,
            &self.client_errors,
            &self.timeouts,
            &self.connect_errors,
            &self.cancelled,
            &self.response_bytes,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Epoch tag of a slot that holds no bucket yet.
const EPOCH_NONE: u64 = u64::MAX;

struct Slot {
    epoch: AtomicU64,
    counts: AtomicCounts,
    latency_us: AtomicHistogram,
}

impl Slot {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(EPOCH_NONE),
            counts: AtomicCounts::default(),
            latency_us: AtomicHistogram::new(),
        }
    }

    fn add_to(&self, counts: &mut Counts, latency: &mut HistogramSnapshot) {
        counts.add(&self.counts.load());
        self.latency_us.add_to(latency);
    }
}

/// Statistics of one model version over a ring of time buckets.
pub struct VersionStats {
    bucket_ms: u64,
    slots: Box<[Slot]>,
    /// Epoch (time / bucket_ms) of the bucket new requests go to.
    current: AtomicU64,
    /// Totals of buckets already recycled: what Prometheus counters need.
    retired: Mutex<(Counts, HistogramSnapshot)>,
}

/// Aggregate over a window of whole buckets, for the analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    /// First and last bucket epoch included (epoch × bucket_ms = Unix ms).
    pub from_epoch: u64,
    pub to_epoch: u64,
    pub bucket_ms: u64,
    #[serde(flatten)]
    pub counts: Counts,
    pub latency_us: HistogramSnapshot,
}

impl WindowSnapshot {
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        self.latency_us.quantile(q)
    }
}

impl VersionStats {
    /// `buckets` slots of `bucket_ms` each, starting at `epoch`.
    pub fn new(bucket_ms: u64, buckets: usize, epoch: u64) -> Self {
        assert!(bucket_ms > 0, "bucket_ms must be positive");
        assert!(
            buckets >= 3,
            "the ticker clears one slot ahead of the current one"
        );
        let slots: Box<[Slot]> = (0..buckets).map(|_| Slot::new()).collect();
        slots[(epoch % buckets as u64) as usize]
            .epoch
            .store(epoch, Ordering::Relaxed);
        Self {
            bucket_ms,
            slots,
            current: AtomicU64::new(epoch),
            retired: Mutex::new(Default::default()),
        }
    }

    /// Bytes one bucket occupies: the bound on statistics per version per window.
    pub const fn bucket_size_bytes() -> usize {
        std::mem::size_of::<Slot>() + AtomicHistogram::size_bytes()
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    pub fn current_epoch(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    fn slot(&self, epoch: u64) -> &Slot {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }

    /// Records one finished request. Lock-free and allocation-free.
    #[inline]
    pub fn record(&self, outcome: Outcome, latency_us: u64, response_bytes: u64) {
        let slot = self.slot(self.current.load(Ordering::Acquire));
        let counts = &slot.counts;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        // Each outcome has its own counter, so exported counters never go
        // down between two reads (no `requests - errors` arithmetic).
        let counter = match outcome {
            Outcome::Success => Some(&counts.successes),
            Outcome::ServerError => Some(&counts.server_errors),
            Outcome::ClientError => Some(&counts.client_errors),
            Outcome::Timeout => Some(&counts.timeouts),
            Outcome::ConnectError => Some(&counts.connect_errors),
            Outcome::Cancelled => Some(&counts.cancelled),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if response_bytes > 0 {
            counts
                .response_bytes
                .fetch_add(response_bytes, Ordering::Relaxed);
        }
        // Timeouts and connect failures have no meaningful latency.
        if matches!(
            outcome,
            Outcome::Success | Outcome::ServerError | Outcome::ClientError
        ) {
            slot.latency_us.record(latency_us);
        }
    }

    /// Moves the current bucket to `epoch`. Called by the single ticker that
    /// owns the clock; epochs that go backwards are ignored.
    pub fn advance_to(&self, epoch: u64) {
        let current = self.current.load(Ordering::Acquire);
        if epoch <= current {
            return;
        }
        let ring = self.slots.len() as u64;
        // Only the last `ring` epochs can still be held.
        let first = (current + 1).max(epoch.saturating_sub(ring - 1));
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for next in first..=epoch {
            let slot = self.slot(next);
            if slot.epoch.load(Ordering::Acquire) != EPOCH_NONE {
                let (counts, latency) = &mut *retired;
                slot.add_to(counts, latency);
            }
            slot.counts.reset();
            slot.latency_us.reset();
            slot.epoch.store(next, Ordering::Release);
        }
        self.current.store(epoch, Ordering::Release);
    }

    /// Sum of the last `buckets` buckets, ending with the current one.
    pub fn window(&self, buckets: usize) -> WindowSnapshot {
        let to = self.current_epoch();
        let buckets = buckets.clamp(1, self.slots.len()) as u64;
        self.range(to.saturating_sub(buckets - 1), to)
    }

    /// Sum of buckets with epochs in `from..=to` that are still held.
    pub fn range(&self, from: u64, to: u64) -> WindowSnapshot {
        let mut snapshot = WindowSnapshot {
            from_epoch: from,
            to_epoch: to,
            bucket_ms: self.bucket_ms,
            ..Default::default()
        };
        let ring = self.slots.len() as u64;
        for epoch in from.max(to.saturating_sub(ring - 1))..=to {
            let slot = self.slot(epoch);
            if slot.epoch.load(Ordering::Acquire) == epoch {
                slot.add_to(&mut snapshot.counts, &mut snapshot.latency_us);
            }
        }
        snapshot
    }

    /// Totals since this version's statistics were created (monotonic, for
    /// Prometheus counters).
    pub fn lifetime(&self) -> (Counts, HistogramSnapshot) {
        // Hold the lock so a bucket is never counted both live and retired.
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let (mut counts, mut latency) = retired.clone();
        for slot in self.slots.iter() {
            if slot.epoch.load(Ordering::Acquire) != EPOCH_NONE {
                slot.add_to(&mut counts, &mut latency);
            }
        }
        (counts, latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_the_current_bucket() {
        let stats = VersionStats::new(1000, 4, 100);
        stats.record(Outcome::Success, 1000, 10);
        stats.record(Outcome::ServerError, 2000, 5);
        stats.record(Outcome::Timeout, 0, 0);
        let window = stats.window(1);
        assert_eq!(window.counts.requests, 3);
        assert_eq!(window.counts.successes, 1);
        assert_eq!(window.counts.server_errors, 1);
        assert_eq!(window.counts.timeouts, 1);
        assert_eq!(window.counts.response_bytes, 15);
        assert_eq!(window.counts.failures(), 2);
        assert_eq!(window.latency_us.count(), 2, "timeouts carry no latency");
    }

    #[test]
    fn windows_cover_whole_buckets_and_old_buckets_roll_off() {
        let stats = VersionStats::new(1000, 4, 0);
        for epoch in 0..10u64 {
            stats.advance_to(epoch);
            for _ in 0..=epoch {
                stats.record(Outcome::Success, 50, 0);
            }
        }
        // Current epoch 9 holds 10 requests, epoch 8 holds 9, ...
        assert_eq!(stats.window(1).counts.requests, 10);
        assert_eq!(stats.window(2).counts.requests, 19);
        assert_eq!(stats.window(4).counts.requests, 10 + 9 + 8 + 7);
        // The ring holds 4 buckets: a longer window is clamped.
        assert_eq!(stats.window(100).counts.requests, 34);
        // Epochs that rolled off are gone from ranges.
        assert_eq!(stats.range(0, 5).counts.requests, 0);
        // The lifetime keeps everything: 1 + 2 + ... + 10.
        assert_eq!(stats.lifetime().0.requests, 55);
        assert_eq!(stats.lifetime().1.count(), 55);
    }

    #[test]
    fn jumping_far_ahead_clears_every_stale_bucket() {
        let stats = VersionStats::new(1000, 3, 0);
        stats.record(Outcome::Success, 50, 0);
        stats.advance_to(1_000);
        assert_eq!(stats.window(3).counts.requests, 0);
        assert_eq!(stats.lifetime().0.requests, 1);
        stats.advance_to(999); // backwards: ignored
        assert_eq!(stats.current_epoch(), 1_000);
    }

    #[test]
    fn memory_per_bucket_is_within_16_kib() {
        assert!(VersionStats::bucket_size_bytes() <= 16 * 1024);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let stats = std::sync::Arc::new(VersionStats::new(1000, 8, 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        stats.record(Outcome::Success, i % 5000, 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let window = stats.window(1);
        assert_eq!(window.counts.requests, 40_000);
        assert_eq!(window.latency_us.count(), 40_000);
        assert_eq!(window.counts.response_bytes, 40_000);
    }
}
