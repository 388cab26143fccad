//! Per-stage counters the stage threads update and the progress reporter reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vidmesh_actors::stage::StageValue;

/// Upper bounds (Prometheus `le`) of the duration histogram buckets, in nanoseconds.
///
/// Integers so that bucketing a duration is exact; [`BUCKET_BOUNDS_S`] is the same in seconds.
pub const BUCKET_BOUNDS_NS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// [`BUCKET_BOUNDS_NS`] in seconds, as exported to Prometheus.
pub const BUCKET_BOUNDS_S: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One count per bound plus the overflow (`+Inf`) bucket.
const BUCKETS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// A lock-free histogram of durations with the fixed buckets of [`BUCKET_BOUNDS_NS`].
///
/// Counts are kept per bucket (not cumulative) so one observation is one `fetch_add`; the
/// exporter accumulates them.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// Counts one observation of `ns` nanoseconds.
    pub fn observe_ns(&self, ns: u64) {
        // First bucket whose bound is >= ns (`le` semantics); past the last bound: overflow.
        let i = BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`DurationHistogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative: `counts[i]` for `i < 13` counts the durations in
    /// `(BUCKET_BOUNDS_NS[i-1], BUCKET_BOUNDS_NS[i]]`, `counts[13]` those above 10 s.
    pub counts: [u64; BUCKETS],
    /// Sum of all observed durations.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// The bucket upper bounds in seconds, one per entry of `counts` except the last (`+Inf`).
    pub fn bounds_seconds(&self) -> &'static [f64] {
        &BUCKET_BOUNDS_S
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// Live counters of one stage.
#[derive(Debug, Default)]
pub struct StageMetrics {
    pub frames: AtomicU64,
    pub batches: AtomicU64,
    /// Time spent processing, excluding time blocked on a full downstream queue.
    pub busy_ns: AtomicU64,
    /// Time blocked on full downstream queues (backpressure).
    pub blocked_ns: AtomicU64,
    /// End-to-end latency (ingest → leaving this stage) of the most recent frame.
    pub last_latency_ns: AtomicU64,
    /// End-to-end latency (ingest → leaving this stage), one observation per batch that
    /// reported one.
    pub latency: DurationHistogram,
    /// Processing time per batch (the `busy` part of [`StageMetrics::record`]).
    pub processing: DurationHistogram,
    /// The stage kind's own values ([`vidmesh_actors::Stage::values`]) as of its last batch.
    values: std::sync::Mutex<Vec<StageValue>>,
}

impl StageMetrics {
    pub fn record(
        &self,
        frames: usize,
        busy: Duration,
        blocked: Duration,
        latency_ns: Option<u64>,
    ) {
        self.frames.fetch_add(frames as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        self.blocked_ns
            .fetch_add(blocked.as_nanos() as u64, Ordering::Relaxed);
        self.processing.observe(busy);
        if let Some(l) = latency_ns {
            self.last_latency_ns.store(l, Ordering::Relaxed);
            self.latency.observe_ns(l);
        }
    }

    /// Keeps the stage's own values for the exporter.
    pub fn set_values(&self, values: Vec<StageValue>) {
        *self.values.lock().unwrap_or_else(|p| p.into_inner()) = values;
    }

    pub fn values(&self) -> Vec<StageValue> {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            frames: self.frames.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            blocked_ns: self.blocked_ns.load(Ordering::Relaxed),
            last_latency_ns: self.last_latency_ns.load(Ordering::Relaxed),
            latency: self.latency.snapshot(),
            processing: self.processing.snapshot(),
        }
    }
}

/// A point-in-time copy of [`StageMetrics`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub frames: u64,
    pub batches: u64,
    pub busy_ns: u64,
    pub blocked_ns: u64,
    pub last_latency_ns: u64,
    /// End-to-end latency histogram (see [`StageMetrics::latency`]); absent from summaries
    /// written before it existed.
    #[serde(default)]
    pub latency: HistogramSnapshot,
    /// Per-batch processing time histogram (see [`StageMetrics::processing`]).
    #[serde(default)]
    pub processing: HistogramSnapshot,
}

impl MetricsSnapshot {
    /// Mean processing time per batch, in milliseconds, since `earlier`.
    pub fn ms_per_batch_since(&self, earlier: &MetricsSnapshot) -> f64 {
        let batches = self.batches.saturating_sub(earlier.batches);
        if batches == 0 {
            return 0.0;
        }
        self.busy_ns.saturating_sub(earlier.busy_ns) as f64 / batches as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_seconds_match_nanoseconds() {
        for (ns, s) in BUCKET_BOUNDS_NS.iter().zip(BUCKET_BOUNDS_S) {
            assert_eq!(*ns as f64 / 1e9, s);
        }
        assert!(BUCKET_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observations_land_in_le_buckets() {
        let h = DurationHistogram::default();
        h.observe_ns(0); // <= 1 ms
        h.observe_ns(1_000_000); // exactly on a bound: that bucket (le)
        h.observe_ns(1_000_001); // just above: the next one
        h.observe(Duration::from_millis(30)); // (25 ms, 50 ms]
        h.observe_ns(10_000_000_001); // overflow
        h.observe(Duration::MAX); // saturates into overflow
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[5], 1);
        assert_eq!(s.counts[13], 2);
        assert_eq!(s.count(), 6);
        assert_eq!(s.bounds_seconds().len() + 1, s.counts.len());
    }

    #[test]
    fn record_fills_both_histograms() {
        let m = StageMetrics::default();
        m.record(
            4,
            Duration::from_millis(3),
            Duration::from_millis(1),
            Some(20_000_000),
        );
        m.record(4, Duration::from_millis(7), Duration::ZERO, None);
        let s = m.snapshot();
        assert_eq!((s.frames, s.batches), (8, 2));
        assert_eq!(s.last_latency_ns, 20_000_000);
        assert_eq!(s.latency.count(), 1);
        assert_eq!(s.latency.counts[4], 1); // (10 ms, 25 ms]
        assert_eq!(s.processing.count(), 2);
        assert_eq!(s.processing.counts[2], 1); // 3 ms in (2.5 ms, 5 ms]
        assert_eq!(s.processing.counts[3], 1); // 7 ms in (5 ms, 10 ms]
        assert_eq!(s.processing.sum_ns, 10_000_000);
        // Still part of the JSON summary, with the old field names untouched.
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["frames"], 8);
        assert_eq!(json["latency"]["counts"][4], 1);
        let back: MetricsSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!((back.latency, back.processing), (s.latency, s.processing));
        // Summaries from before the histograms still read.
        let old: MetricsSnapshot = serde_json::from_str(
            r#"{"frames":1,"batches":1,"busy_ns":2,"blocked_ns":0,"last_latency_ns":3}"#,
        )
        .unwrap();
        assert_eq!((old.frames, old.latency.count()), (1, 0));
    }
}
