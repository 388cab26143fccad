//! Per-stage counters the stage threads update and the progress reporter reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

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
        if let Some(l) = latency_ns {
            self.last_latency_ns.store(l, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            frames: self.frames.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            blocked_ns: self.blocked_ns.load(Ordering::Relaxed),
            last_latency_ns: self.last_latency_ns.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of [`StageMetrics`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MetricsSnapshot {
    pub frames: u64,
    pub batches: u64,
    pub busy_ns: u64,
    pub blocked_ns: u64,
    pub last_latency_ns: u64,
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
