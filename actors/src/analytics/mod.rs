//! `analytics`: region-of-interest counting, line crossing, overcrowding and direction of
//! travel, per stream (nvdsanalytics). It goes after `track`: lines and directions follow
//! track ids; ROI counts use every object.
//!
//! Each object is represented by a reference point of its box (bottom-centre by default, as in
//! nvdsanalytics). Results go onto the frame as user meta, which the broker's `native` schema
//! publishes as JSON, and optionally as display meta that the OSD draws. Objects are never
//! removed: being outside every ROI is a flag in the object's meta.
//!
//! Frame user meta, kind `vidmesh.analytics/frame+json`:
//! ```json
//! {"rois": {"walkway": {"count": 2, "by_label": {"person": 2},
//!                       "max_objects": 1, "overcrowded": true}},
//!  "lines": {"west-gate": {"entries": 0, "exits": 1}},
//!  "overcrowding_changes": [{"roi": "walkway", "overcrowded": true}]}
//! ```
//! `max_objects`/`overcrowded` appear for ROIs with a threshold; `lines` are cumulative since
//! the stream started; `overcrowding_changes` appears only on frames where a status changed.
//!
//! Object user meta, kind `vidmesh.analytics/object+json`, on every object of the frame:
//! ```json
//! {"reference_point": [206.5, 600.0], "rois": ["walkway"],
//!  "lines_crossed": [{"line": "west-gate", "crossing": "exit"}], "direction": "west"}
//! ```
//! `lines_crossed` lists the crossings counted on this frame; `direction` is null for
//! untracked or slow objects.
//!
//! The stage is stateful: its snapshot (`snapshot.rs`) holds every stream's totals and the
//! per-ROI and per-track state of the streams under way, and a replacement replica built with
//! [`crate::stage::BuildContext::resume`] carries on from it.

mod crossing;
mod direction;
mod geometry;
mod output;
mod settings;
mod snapshot;

use std::collections::{BTreeMap, HashMap, VecDeque};

use vidmesh_protocol::{Batch, FrameMeta, ObjectMeta, StreamEnd, UserMeta};

use crate::registry::{Delivery, StageKind};
use crate::stage::{Outputs, Stage, StageError, StageReport};
use crossing::LineTrackState;
use geometry::Point;
use output::{
    FrameAnalytics, LineCrossed, LineTotals, ObjectAnalytics, OvercrowdingChange, RoiCount,
};
pub use settings::{ReferencePoint, Settings, StreamConfig, ANY_SOURCE};

pub const KIND: StageKind = StageKind {
    name: "analytics",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary:
        "ROI counts, line crossing, overcrowding, direction of travel per stream (nvdsanalytics)",
    check: |t, ctx| {
        crate::settings::parse::<Settings>(t)
            .and_then(|s| s.compile(ctx))
            .map(|_| ())
    },
    build: |t, ctx| {
        let configs = crate::settings::parse::<Settings>(t)?.compile(ctx)?;
        let sources = ctx.sources.clone();
        match ctx.resume.as_ref().and_then(|r| r.snapshot.as_deref()) {
            Some(snapshot) => Ok(Box::new(
                Analytics::restore(configs, sources, snapshot).map_err(|e| {
                    StageError::Settings(format!(
                        "analytics: cannot resume from the last snapshot: {e}"
                    ))
                })?,
            )),
            None => Ok(Box::new(Analytics::new(configs, sources))),
        }
    },
    makes_streams: None,
};

/// `UserMeta::kind` of the per-frame results.
pub const FRAME_META_KIND: &str = "vidmesh.analytics/frame+json";
/// `UserMeta::kind` of the per-object results.
pub const OBJECT_META_KIND: &str = "vidmesh.analytics/object+json";

/// What the stage remembers of one track.
#[derive(Debug)]
struct TrackState {
    /// Frame number of the last observation.
    last_seen: u64,
    /// Reference points of the last `direction_frames` frames, oldest first; never empty.
    history: VecDeque<(u64, Point)>,
    /// Per configured line.
    lines: Vec<LineTrackState>,
}

/// What one stream's analytics hold between frames.
#[derive(Debug)]
struct StreamState {
    /// Index of the stream's entry in the stage's configs.
    config: usize,
    tracks: HashMap<u64, TrackState>,
    /// Per ROI: overcrowded on the previous frame.
    overcrowded: Vec<bool>,
}

/// What the stage reports per stream; kept after the stream ends.
#[derive(Debug, Default)]
struct StreamStats {
    name: String,
    /// (line name, totals), in configuration order.
    lines: Vec<(String, LineTotals)>,
    /// (ROI name, most objects seen in it on one frame).
    roi_max: Vec<(String, usize)>,
}

/// The running stage.
pub struct Analytics {
    configs: Vec<StreamConfig>,
    /// Source names by `source_id`, for frames that do not carry their name.
    sources: Vec<String>,
    streams: HashMap<u32, StreamState>,
    stats: BTreeMap<u32, StreamStats>,
}

impl Analytics {
    pub fn new(configs: Vec<StreamConfig>, sources: Vec<String>) -> Self {
        Self {
            configs,
            sources,
            streams: HashMap::new(),
            stats: BTreeMap::new(),
        }
    }

    /// The entry for a source: its own, else the "*" one.
    fn config_for(&self, source_name: &str) -> Option<usize> {
        self.configs
            .iter()
            .position(|c| c.source == source_name)
            .or_else(|| self.configs.iter().position(|c| c.source == ANY_SOURCE))
    }

    /// The first frame of a stream: checks the configuration against the frame size.
    fn start_stream(
        &self,
        frame: &FrameMeta,
        name: &str,
    ) -> Result<Option<StreamState>, StageError> {
        let Some(index) = self.config_for(name) else {
            return Ok(None);
        };
        let config = &self.configs[index];
        if let Some([w, h]) = config.frame_size {
            if (w, h) != (frame.width, frame.height) {
                return Err(StageError::Settings(format!(
                    "stream `{}`: frame_size is [{w}, {h}] but the frames of source `{name}` are {}x{}",
                    config.source, frame.width, frame.height
                )));
            }
        }
        config
            .check_frame_size(
                frame.width,
                frame.height,
                &format!("first frame of source `{name}`"),
            )
            .map_err(StageError::Settings)?;
        Ok(Some(StreamState {
            config: index,
            tracks: HashMap::new(),
            overcrowded: vec![false; config.rois.len()],
        }))
    }

    /// Analyses one frame and attaches the results (what `on_batch` does for each frame).
    pub fn analyse_frame(&mut self, frame: &mut FrameMeta) -> Result<(), StageError> {
        if !self.streams.contains_key(&frame.source_id) {
            let name = crate::stage::source_name_of(&self.sources, frame);
            let Some(state) = self.start_stream(frame, &name)? else {
                return Ok(());
            };
            let config = &self.configs[state.config];
            self.stats
                .entry(frame.source_id)
                .or_insert_with(|| StreamStats {
                    name,
                    lines: config
                        .lines
                        .iter()
                        .map(|l| (l.name.clone(), LineTotals::default()))
                        .collect(),
                    roi_max: config.rois.iter().map(|r| (r.name.clone(), 0)).collect(),
                });
            self.streams.insert(frame.source_id, state);
        }
        // Both exist once the stream has started (just above, or on an earlier frame).
        if let (Some(state), Some(stats)) = (
            self.streams.get_mut(&frame.source_id),
            self.stats.get_mut(&frame.source_id),
        ) {
            analyse(&self.configs[state.config], state, stats, frame);
        }
        Ok(())
    }
}

fn reference_point(o: &ObjectMeta, kind: ReferencePoint) -> Point {
    let b = o.bbox;
    let x = (f64::from(b.left) + f64::from(b.right())) / 2.0;
    let y = match kind {
        ReferencePoint::BottomCenter => f64::from(b.bottom()),
        ReferencePoint::Center => (f64::from(b.top) + f64::from(b.bottom())) / 2.0,
    };
    Point::new(x, y)
}

fn user_meta(kind: &str, value: &impl serde::Serialize) -> UserMeta {
    UserMeta {
        kind: kind.to_string(),
        // Plain structs of strings and numbers always serialise.
        data: serde_json::to_vec(value).unwrap_or_default().into(),
    }
}

fn analyse(
    config: &StreamConfig,
    state: &mut StreamState,
    stats: &mut StreamStats,
    frame: &mut FrameMeta,
) {
    let now = frame.frame_num;
    let points: Vec<Point> = frame
        .objects
        .iter()
        .map(|o| reference_point(o, config.reference_point))
        .collect();

    // ROIs and overcrowding.
    let mut counts = vec![RoiCount::default(); config.rois.len()];
    let mut changes = Vec::new();
    for (i, roi) in config.rois.iter().enumerate() {
        let count = &mut counts[i];
        for (o, p) in frame.objects.iter().zip(&points) {
            if roi.holds(*p) {
                count.count += 1;
                let label = if o.label.is_empty() {
                    o.class_id.to_string()
                } else {
                    o.label.clone()
                };
                *count.by_label.entry(label).or_default() += 1;
            }
        }
        if let Some(max) = roi.max_objects {
            let over = count.count > max;
            count.max_objects = Some(max);
            count.overcrowded = Some(over);
            if over != state.overcrowded[i] {
                state.overcrowded[i] = over;
                changes.push(OvercrowdingChange {
                    roi: &roi.name,
                    overcrowded: over,
                });
            }
        }
        let seen_max = &mut stats.roi_max[i].1;
        *seen_max = (*seen_max).max(count.count);
    }

    // Tracks: line crossing and direction of travel.
    let mut object_meta = Vec::with_capacity(frame.objects.len());
    for (o, &p) in frame.objects.iter().zip(&points) {
        let mut crossed = Vec::new();
        let mut direction = None;
        if let Some(id) = o.track_id {
            let track = state.tracks.entry(id).or_insert_with(|| TrackState {
                last_seen: now,
                history: VecDeque::new(),
                lines: vec![LineTrackState::default(); config.lines.len()],
            });
            let previous = track.history.back().map(|&(_, q)| q);
            for (i, line) in config.lines.iter().enumerate() {
                if let Some(c) = track.lines[i].advance(line, previous, p, config.hysteresis) {
                    stats.lines[i].1.add(c);
                    crossed.push(LineCrossed {
                        line: &line.name,
                        crossing: c,
                    });
                }
            }
            track.last_seen = now;
            track.history.push_back((now, p));
            while track
                .history
                .front()
                .is_some_and(|&(n, _)| n + config.direction_frames < now)
            {
                track.history.pop_front();
            }
            if let Some(&(_, oldest)) = track.history.front() {
                direction = direction::classify(
                    p.sub(oldest),
                    &config.directions,
                    config.direction_min_distance,
                    config.direction_tolerance,
                );
            }
        }
        object_meta.push(ObjectAnalytics {
            reference_point: [p.x as f32, p.y as f32],
            rois: config
                .rois
                .iter()
                .filter(|r| r.holds(p))
                .map(|r| r.name.as_str())
                .collect(),
            lines_crossed: crossed,
            direction,
        });
    }
    // Track ids are never reused, so a forgotten track only loses its debounce memory.
    state
        .tracks
        .retain(|_, t| t.last_seen + config.forget_after >= now);

    for (o, meta) in frame.objects.iter_mut().zip(&object_meta) {
        o.user.push(user_meta(OBJECT_META_KIND, meta));
    }
    let line_totals: Vec<LineTotals> = stats.lines.iter().map(|(_, t)| *t).collect();
    let frame_meta = FrameAnalytics {
        rois: config
            .rois
            .iter()
            .zip(&counts)
            .map(|(r, c)| (r.name.as_str(), c.clone()))
            .collect(),
        lines: config
            .lines
            .iter()
            .zip(&line_totals)
            .map(|(l, t)| (l.name.as_str(), *t))
            .collect(),
        overcrowding_changes: changes,
    };
    frame.user.push(user_meta(FRAME_META_KIND, &frame_meta));
    if config.draw {
        output::draw(config, &counts, &line_totals, &mut frame.display);
    }
}

impl Stage for Analytics {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &mut batch.frames {
            self.analyse_frame(frame)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        // Totals stay in `stats` for the report; the per-track state goes.
        self.streams.remove(&end.source_id);
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let mut report = StageReport::default();
        for s in self.stats.values() {
            for (line, t) in &s.lines {
                report = report
                    .with(&format!("{}/{line} entries", s.name), t.entries)
                    .with(&format!("{}/{line} exits", s.name), t.exits);
            }
            for (roi, max) in &s.roi_max {
                report = report.with(&format!("{}/{roi} max count", s.name), max);
            }
        }
        Ok(report)
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        Some(self.to_snapshot())
    }

    /// Takes over `sources` (state and totals) from a gone replica's snapshot.
    fn adopt(&mut self, snapshot: &[u8], sources: &[u32]) -> Result<(), StageError> {
        let mut other = Analytics::restore(self.configs.clone(), self.sources.clone(), snapshot)?;
        for source in sources {
            if let Some(state) = other.streams.remove(source) {
                self.streams.insert(*source, state);
            }
            if let Some(stats) = other.stats.remove(source) {
                self.stats.insert(*source, stats);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
