//! `mux`: gathers frames from many sources into batches, like nvstreammux.
//!
//! A batch leaves when it holds `batch_size` frames or when `batch_timeout` has passed since
//! its first frame arrived, whichever comes first, so a slow or stalled source never holds the
//! others back by more than the timeout.

use std::time::{Duration, Instant};

use serde::Deserialize;
use vidmesh_protocol::{Batch, FrameMeta, StreamEnd};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{Outputs, Stage, StageError, StageReport};

pub const KIND: StageKind = StageKind {
    name: "mux",
    delivery: Delivery::PER_SOURCE,
    summary: "batch frames from several sources by size and timeout (nvstreammux)",
    check: |t, _| settings::parse::<Settings>(t).and_then(|s| s.validate()),
    build: |t, _| {
        let s = settings::parse::<Settings>(t)?;
        s.validate()?;
        Ok(Box::new(Mux::new(s)))
    },
    makes_streams: None,
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Frames per batch (nvstreammux `batch-size`). Default 1.
    pub batch_size: usize,
    /// Longest a partial batch waits (nvstreammux `batched-push-timeout`). Default "40ms".
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 1,
            batch_timeout: Duration::from_millis(40),
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), StageError> {
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err(StageError::Settings(format!(
                "batch_size must be 1..=1024, got {}",
                self.batch_size
            )));
        }
        Ok(())
    }
}

/// The running muxer.
pub struct Mux {
    settings: Settings,
    pending: Vec<FrameMeta>,
    /// When the oldest pending frame arrived.
    first_arrival: Option<Instant>,
    next_batch_id: u64,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    batches: u64,
    full_batches: u64,
}

impl Mux {
    pub fn new(settings: Settings) -> Self {
        Self {
            pending: Vec::with_capacity(settings.batch_size),
            settings,
            first_arrival: None,
            next_batch_id: 0,
            stats: Stats::default(),
        }
    }

    fn flush(&mut self, out: &mut Outputs) -> Result<(), StageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let take = self.pending.len().min(self.settings.batch_size);
        let frames: Vec<FrameMeta> = self.pending.drain(..take).collect();
        if frames.len() == self.settings.batch_size {
            self.stats.full_batches += 1;
        }
        self.stats.batches += 1;
        self.first_arrival = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        let batch = Batch {
            batch_id: self.next_batch_id,
            frames,
            tensors: Vec::new(),
        };
        self.next_batch_id += 1;
        out.emit(batch)
    }
}

impl Stage for Mux {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        if self.pending.is_empty() && !batch.frames.is_empty() {
            self.first_arrival = Some(Instant::now());
        }
        self.pending.extend(batch.frames);
        while self.pending.len() >= self.settings.batch_size {
            self.flush(out)?;
        }
        Ok(())
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        // Frames of the ended source must leave before its end-of-stream notice.
        if self.pending.iter().any(|f| f.source_id == end.source_id) {
            while !self.pending.is_empty() {
                self.flush(out)?;
            }
        }
        out.end_of_stream(end.clone())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.first_arrival.map(|t| t + self.settings.batch_timeout)
    }

    fn on_timer(&mut self, now: Instant, out: &mut Outputs) -> Result<(), StageError> {
        if self.next_deadline().is_some_and(|d| d <= now) {
            self.flush(out)?;
        }
        Ok(())
    }

    fn on_finish(&mut self, out: &mut Outputs) -> Result<StageReport, StageError> {
        while !self.pending.is_empty() {
            self.flush(out)?;
        }
        Ok(StageReport::default()
            .with("batches", self.stats.batches)
            .with("full batches", self.stats.full_batches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{DataMessage, StreamEnd};
    use vidmesh_transport::{in_process_link, Received};

    fn frame(source_id: u32, n: u64) -> Batch {
        Batch {
            frames: vec![FrameMeta {
                source_id,
                frame_num: n,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn drain(rx: &mut vidmesh_transport::LinkReceiver) -> Vec<DataMessage> {
        let mut v = Vec::new();
        while let Received::Message(m) = rx.recv_blocking(Some(Instant::now())) {
            v.push(m);
        }
        v
    }

    #[test]
    fn full_batches_leave_at_once_and_partial_ones_at_the_timeout() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, mut rx) = in_process_link("mux->x", 16, rt.handle().clone());
        let mut out = Outputs::new(vec![tx]);
        let mut mux = Mux::new(Settings {
            batch_size: 2,
            batch_timeout: Duration::from_millis(40),
        });
        mux.on_batch(frame(0, 0), &mut out).unwrap();
        mux.on_batch(frame(1, 0), &mut out).unwrap();
        mux.on_batch(frame(0, 1), &mut out).unwrap();
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1);
        let deadline = mux.next_deadline().expect("a partial batch is waiting");
        mux.on_timer(deadline - Duration::from_millis(1), &mut out)
            .unwrap();
        assert!(drain(&mut rx).is_empty(), "not before the timeout");
        mux.on_timer(deadline, &mut out).unwrap();
        match drain(&mut rx).as_slice() {
            [DataMessage::Batch(b)] => assert_eq!((b.frames.len(), b.batch_id), (1, 1)),
            other => panic!("{other:?}"),
        }
        assert!(mux.next_deadline().is_none());
    }

    #[test]
    fn end_of_stream_flushes_that_sources_frames_first() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, mut rx) = in_process_link("mux->x", 16, rt.handle().clone());
        let mut out = Outputs::new(vec![tx]);
        let mut mux = Mux::new(Settings {
            batch_size: 4,
            batch_timeout: Duration::from_secs(10),
        });
        mux.on_batch(frame(0, 0), &mut out).unwrap();
        let end = StreamEnd {
            source_id: 0,
            source_name: "cam0".into(),
            frames: 1,
        };
        mux.on_end_of_stream(&end, &mut out).unwrap();
        let got = drain(&mut rx);
        assert!(matches!(got[0], DataMessage::Batch(_)));
        assert!(matches!(
            got[1],
            DataMessage::EndOfStream(StreamEnd { source_id: 0, .. })
        ));
    }
}
