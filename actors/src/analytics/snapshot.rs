//! What `analytics` commits so a replacement replica can carry on ([`Stage::snapshot`]), and
//! how it is read back.
//!
//! JSON with a `version`. One entry per stream seen, ended ones included, so the report after
//! a restart still counts what happened before it:
//! ```json
//! {"version": 1,
//!  "streams": [{"source_id": 0, "name": "cam0",
//!               "lines": [["middle", {"entries": 1, "exits": 0}]],
//!               "roi_max": [["left", 2]],
//!               "running": {"overcrowded": [true],
//!                           "tracks": [{"id": 1, "last_seen": 9,
//!                                       "history": [[8, "310.5", "300"], [9, "320", "300"]],
//!                                       "lines": [{"side": -1.0, "through_segment": false,
//!                                                  "entered": false, "exited": false}]}]}}]}
//! ```
//! `running` is null once the stream has ended. Lists follow the configuration's order (ROIs,
//! lines) or ascending track id; lines and ROIs carry their names so a snapshot taken under
//! another configuration is refused instead of counting into the wrong line.
//!
//! [`Stage::snapshot`]: crate::stage::Stage::snapshot

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::crossing::LineTrackState;
use super::geometry::Point;
use super::output::LineTotals;
use super::settings::StreamConfig;
use super::{Analytics, StreamState, StreamStats, TrackState};
use crate::stage::StageError;

/// The format written; any change to it bumps this, and other versions are refused.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    streams: Vec<StreamSnapshot>,
}

/// Read first, so a snapshot of another version is named as such rather than as garbled.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct StreamSnapshot {
    source_id: u32,
    /// The source's name, which picks the stream entry of the configuration.
    name: String,
    /// Crossings per line since the stream started.
    lines: Vec<(String, LineTotals)>,
    /// Most objects seen in each ROI on one frame.
    roi_max: Vec<(String, usize)>,
    /// `None` once the stream has ended.
    running: Option<RunningStream>,
}

#[derive(Serialize, Deserialize)]
struct RunningStream {
    /// Per ROI: overcrowded on the last frame.
    overcrowded: Vec<bool>,
    tracks: Vec<TrackSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct TrackSnapshot {
    id: u64,
    last_seen: u64,
    /// `(frame_num, x, y)` of the reference points, oldest first.
    history: Vec<(u64, ExactF64, ExactF64)>,
    /// Per line.
    lines: Vec<LineTrackState>,
}

/// A coordinate written as the shortest decimal string that reads back to the same bits.
/// serde_json's default number parsing can be one ulp off, and a resumed stage must compute
/// exactly what its predecessor would have: a point on a line is no crossing, one ulp past it
/// may be.
struct ExactF64(f64);

impl Serialize for ExactF64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ExactF64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map(ExactF64)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a number")))
    }
}

impl Analytics {
    /// Everything [`Analytics::restore`] needs, as JSON.
    pub(super) fn to_snapshot(&self) -> Vec<u8> {
        let streams = self
            .stats
            .iter()
            .map(|(&source_id, stats)| StreamSnapshot {
                source_id,
                name: stats.name.clone(),
                lines: stats.lines.clone(),
                roi_max: stats.roi_max.clone(),
                running: self.streams.get(&source_id).map(save_stream),
            })
            .collect();
        let snapshot = Snapshot {
            version: VERSION,
            streams,
        };
        // Strings, integers, booleans and ±1.0: always serialisable.
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// Rebuilds a stage from [`crate::stage::Stage::snapshot`] output: same totals, same
    /// per-stream and per-track state. The configuration must be the one it was taken under.
    pub fn restore(
        configs: Vec<StreamConfig>,
        sources: Vec<String>,
        snapshot: &[u8],
    ) -> Result<Self, StageError> {
        let unreadable =
            |e: serde_json::Error| StageError::Input(format!("unreadable analytics snapshot: {e}"));
        let Versioned { version } = serde_json::from_slice(snapshot).map_err(unreadable)?;
        if version != VERSION {
            return Err(StageError::Input(format!(
                "analytics snapshot version {version} is not supported (this build reads \
                 version {VERSION})"
            )));
        }
        let snapshot: Snapshot = serde_json::from_slice(snapshot).map_err(unreadable)?;
        let mut analytics = Analytics::new(configs, sources);
        for s in snapshot.streams {
            let source_id = s.source_id;
            let (stats, state) = analytics.restore_stream(s).map_err(StageError::Input)?;
            if analytics.stats.insert(source_id, stats).is_some() {
                return Err(StageError::Input(format!(
                    "the analytics snapshot holds source id {source_id} twice"
                )));
            }
            if let Some(state) = state {
                analytics.streams.insert(source_id, state);
            }
        }
        Ok(analytics)
    }

    /// One stream of a snapshot, checked against the configuration: its totals, and its state
    /// if it was under way.
    fn restore_stream(
        &self,
        s: StreamSnapshot,
    ) -> Result<(StreamStats, Option<StreamState>), String> {
        let Some(index) = self.config_for(&s.name) else {
            return Err(format!(
                "the snapshot has stream `{}`, which no stream entry applies to",
                s.name
            ));
        };
        let config = &self.configs[index];
        let line_names: Vec<&str> = config.lines.iter().map(|l| l.name.as_str()).collect();
        let roi_names: Vec<&str> = config.rois.iter().map(|r| r.name.as_str()).collect();
        let names_match = |snapshot: Vec<&str>, configured: &[&str], what: &str| {
            if snapshot == configured {
                Ok(())
            } else {
                Err(format!(
                    "stream `{}`: the snapshot's {what} are [{}], the configuration's [{}]",
                    s.name,
                    snapshot.join(", "),
                    configured.join(", ")
                ))
            }
        };
        names_match(
            s.lines.iter().map(|(n, _)| n.as_str()).collect(),
            &line_names,
            "lines",
        )?;
        names_match(
            s.roi_max.iter().map(|(n, _)| n.as_str()).collect(),
            &roi_names,
            "rois",
        )?;
        let state = match s.running {
            None => None,
            Some(running) => Some(restore_running(running, index, config, &s.name)?),
        };
        let stats = StreamStats {
            name: s.name,
            lines: s.lines,
            roi_max: s.roi_max,
        };
        Ok((stats, state))
    }
}

fn save_stream(state: &StreamState) -> RunningStream {
    let mut tracks: Vec<TrackSnapshot> = state
        .tracks
        .iter()
        .map(|(&id, t)| TrackSnapshot {
            id,
            last_seen: t.last_seen,
            history: t
                .history
                .iter()
                .map(|&(n, p)| (n, ExactF64(p.x), ExactF64(p.y)))
                .collect(),
            lines: t.lines.clone(),
        })
        .collect();
    tracks.sort_by_key(|t| t.id);
    RunningStream {
        overcrowded: state.overcrowded.clone(),
        tracks,
    }
}

fn restore_running(
    running: RunningStream,
    config_index: usize,
    config: &StreamConfig,
    name: &str,
) -> Result<StreamState, String> {
    if running.overcrowded.len() != config.rois.len() {
        return Err(format!(
            "stream `{name}`: the snapshot has overcrowding states for {} rois, not {}",
            running.overcrowded.len(),
            config.rois.len()
        ));
    }
    let mut tracks = HashMap::with_capacity(running.tracks.len());
    for t in running.tracks {
        if t.lines.len() != config.lines.len() || t.history.is_empty() {
            return Err(format!(
                "stream `{name}`: track {} in the snapshot has {} line states and {} reference \
                 points; expected {} and at least 1",
                t.id,
                t.lines.len(),
                t.history.len(),
                config.lines.len()
            ));
        }
        let track = TrackState {
            last_seen: t.last_seen,
            history: t
                .history
                .into_iter()
                .map(|(n, x, y)| (n, Point::new(x.0, y.0)))
                .collect(),
            lines: t.lines,
        };
        tracks.insert(t.id, track);
    }
    Ok(StreamState {
        config: config_index,
        tracks,
        overcrowded: running.overcrowded,
    })
}
