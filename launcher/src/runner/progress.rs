//! The progress line: frames, fps, ETA, and per-stage latency and queue depth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh_actors::source::SourceProgress;
use vidmesh_transport::{LinkReceiver, LinkStats};

use super::metrics::{MetricsSnapshot, StageMetrics};

/// What the reporter watches.
pub struct Watched {
    pub sources: Vec<Arc<SourceProgress>>,
    pub stages: Vec<WatchedStage>,
}

/// One stage: its counters and its inbox's depth.
pub struct WatchedStage {
    pub name: String,
    pub metrics: Arc<StageMetrics>,
    pub inbox: DepthProbe,
}

/// Reads an inbox's queue depth from another thread.
pub struct DepthProbe {
    stats: Arc<LinkStats>,
    capacity: usize,
}

impl DepthProbe {
    pub fn new(inbox: &LinkReceiver) -> Self {
        Self {
            stats: inbox.stats().clone(),
            capacity: inbox.capacity(),
        }
    }

    pub fn depth(&self) -> usize {
        let sent = self.stats.sent.load(Ordering::Relaxed);
        let received = self.stats.received.load(Ordering::Relaxed);
        (sent.saturating_sub(received) as usize).min(self.capacity)
    }
}

pub struct ProgressReporter {
    watched: Watched,
    started: Instant,
    last: Instant,
    last_frames: u64,
    last_stage: Vec<MetricsSnapshot>,
}

impl ProgressReporter {
    pub fn new(watched: Watched) -> Self {
        let n = watched.stages.len();
        let now = Instant::now();
        Self {
            watched,
            started: now,
            last: now,
            last_frames: 0,
            last_stage: vec![MetricsSnapshot::default(); n],
        }
    }

    /// Frames decoded so far and, when every source knows its duration, the expected total.
    fn frames(&self) -> (u64, Option<u64>) {
        let mut done = 0;
        let mut total = Some(0u64);
        for s in &self.watched.sources {
            let frames = s.frames.load(Ordering::Relaxed);
            done += frames;
            let (pos, dur) = (
                s.position_ns.load(Ordering::Relaxed),
                s.duration_ns.load(Ordering::Relaxed),
            );
            total = match total {
                Some(t) if dur > 0 && pos > 0 => {
                    Some(t + ((frames as f64) * dur as f64 / pos as f64).round() as u64)
                }
                _ => None,
            };
        }
        (done, total.map(|t| t.max(done)))
    }

    /// One progress line covering the time since the previous call.
    pub fn line(&mut self) -> String {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let (frames, total) = self.frames();
        let fps = (frames - self.last_frames.min(frames)) as f64 / dt;
        let mut line = format!(
            "[{:>6.1}s] frames {frames}",
            now.duration_since(self.started).as_secs_f64()
        );
        if let Some(total) = total.filter(|t| *t > 0) {
            line.push_str(&format!(
                "/{total} ({:.0}%)",
                100.0 * frames as f64 / total as f64
            ));
        }
        line.push_str(&format!(" {fps:.1} fps"));
        if let Some(total) = total {
            if fps > 0.0 && total > frames {
                line.push_str(&format!(
                    " ETA {}",
                    humantime::format_duration(Duration::from_secs(
                        ((total - frames) as f64 / fps).ceil() as u64
                    ))
                ));
            }
        }
        for (i, stage) in self.watched.stages.iter().enumerate() {
            let snap = stage.metrics.snapshot();
            line.push_str(&format!(
                " | {} {:.1}ms q{}",
                stage.name,
                snap.ms_per_batch_since(&self.last_stage[i]),
                stage.inbox.depth()
            ));
            self.last_stage[i] = snap;
        }
        self.last = now;
        self.last_frames = frames;
        line
    }
}
