//! `record` and `snapshot`: what DeepStream calls smart record, and event snapshots.
//!
//! Both fire on the same triggers ([`trigger`]): analytics events the `analytics` stage put on
//! the frames (a line crossed, an ROI entered or left, an ROI overcrowded) or the plain
//! presence of an object of a class. Both pass every batch on unchanged, so they can sit in
//! the middle of a pipeline as well as at its end.
//!
//! * `record` encodes each source continuously (x264, fixed GOP) into a bounded ring of encoded
//!   samples, and on a trigger writes an MP4 from the keyframe at or before `trigger - pre` to
//!   `trigger + post`; triggers during a recording extend it up to `max_duration`.
//! * `snapshot` writes a JPEG of the frame, or of each triggering object's box, rate-limited
//!   per source or track.
//!
//! Both need each source's frames in order (ROI entries compare consecutive observations; a
//! clip is a run of consecutive frames), so their replicas take whole sources.

mod media;
mod recorder;
mod ring;
mod snapshot;
mod trigger;

use std::time::Duration;

use serde::Serialize;
use vidmesh_protocol::ObjectMeta;

use crate::registry::{Delivery, StageKind};

pub use ring::{EncodedSample, SampleRing};
pub use trigger::{Hit, RuleSettings, TriggerSet, EVENTS};

pub const RECORD_KIND: StageKind = StageKind {
    name: "record",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "smart record: MP4 clips from N s before to M s after a trigger (pre-roll ring of x264 samples)",
    check: |t, _ctx| recorder::Settings::load(t).map(|_| ()),
    build: |t, ctx| Ok(Box::new(recorder::Record::build(t, ctx)?)),
    makes_streams: None,
};

pub const SNAPSHOT_KIND: StageKind = StageKind {
    name: "snapshot",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "JPEG snapshots of frames or object crops on triggers, with a JSON line each",
    check: |t, _ctx| snapshot::Settings::load(t).map(|_| ()),
    build: |t, ctx| Ok(Box::new(snapshot::Snapshot::build(t, ctx)?)),
    makes_streams: None,
};

/// A frame's source name: the one it carries, else the topology's by `source_id`.
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An object as the sidecars describe it.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ObjectRef {
    track_id: Option<u64>,
    class_id: i32,
    label: String,
    confidence: f32,
    /// `[left, top, width, height]` in frame pixels.
    bbox: [f32; 4],
}

impl ObjectRef {
    fn of(o: &ObjectMeta) -> Self {
        Self {
            track_id: o.track_id,
            class_id: o.class_id,
            label: trigger::label_of(o),
            confidence: o.confidence,
            bbox: [o.bbox.left, o.bbox.top, o.bbox.width, o.bbox.height],
        }
    }
}
