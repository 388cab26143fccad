//! When `record` and `snapshot` fire: rules over the metadata upstream stages put on frames.
//!
//! A rule is one entry of the stage's `on` list:
//! ```toml
//! on = [
//!   { analytics = "line_crossing", name = "door", crossing = "entry" },
//!   { analytics = "roi_entry", name = "walkway", class = "person" },
//!   { analytics = "overcrowding", name = "walkway" },
//!   { class = "person", min_confidence = 0.6 },
//! ]
//! ```
//! Analytics events come from the user meta the `analytics` stage attaches (see
//! [`crate::analytics`]); a rule with only `class` fires on every frame where such an object
//! is present. Any rule that matches fires the stage.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{FrameMeta, ObjectMeta, UserMeta};

use crate::analytics::{FRAME_META_KIND, OBJECT_META_KIND};
use crate::stage::StageError;

/// The analytics events a rule can name, as written in topologies.
pub const EVENTS: [&str; 4] = ["line_crossing", "roi_entry", "roi_exit", "overcrowding"];

/// A track unseen for this many frames is forgotten (its ROI membership too), like the
/// analytics stage's default `forget_after`.
const FORGET_AFTER_FRAMES: u64 = 150;

/// One `on` entry as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// An analytics event: line_crossing, roi_entry, roi_exit or overcrowding.
    #[serde(default)]
    pub analytics: Option<String>,
    /// The line or ROI name the event must be about; any when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// For line_crossing: "entry" or "exit"; both when absent.
    #[serde(default)]
    pub crossing: Option<String>,
    /// The object's label (or class id when it has no label).
    #[serde(default)]
    pub class: Option<String>,
    /// Lowest detector confidence of the object. Default 0.
    #[serde(default)]
    pub min_confidence: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    LineCrossing {
        line: Option<String>,
        crossing: Option<String>,
    },
    RoiEntry(Option<String>),
    RoiExit(Option<String>),
    Overcrowding(Option<String>),
    /// A plain object-presence rule (only `class` / `min_confidence`).
    Presence,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    event: Event,
    class: Option<String>,
    min_confidence: f32,
}

impl Rule {
    fn accepts(&self, o: &ObjectMeta) -> bool {
        o.confidence >= self.min_confidence
            && self.class.as_deref().is_none_or(|c| label_of(o) == c)
    }
}

/// The label an object is matched by: its label, or its class id when it has none (the same
/// convention as the analytics stage's `by_label`).
pub fn label_of(o: &ObjectMeta) -> String {
    if o.label.is_empty() {
        o.class_id.to_string()
    } else {
        o.label.clone()
    }
}

/// Why a stage fired on a frame: one rule matched, about one object or the whole frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Index of the rule in `on`.
    pub rule: usize,
    /// "line_crossing", "roi_entry", "roi_exit", "overcrowding" or "object".
    pub event: &'static str,
    /// The line or ROI the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// "entry"/"exit" for line crossings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crossing: Option<String>,
    /// Index of the object in the frame's `objects`; none for frame events (overcrowding).
    #[serde(skip)]
    pub object: Option<usize>,
}

/// `vidmesh.analytics/object+json`, the parts the rules read.
#[derive(Debug, Deserialize)]
struct ObjectAnalytics {
    #[serde(default)]
    rois: Vec<String>,
    #[serde(default)]
    lines_crossed: Vec<LineCrossed>,
}

#[derive(Debug, Deserialize)]
struct LineCrossed {
    line: String,
    crossing: String,
}

/// `vidmesh.analytics/frame+json`, the parts the rules read.
#[derive(Debug, Deserialize)]
struct FrameAnalytics {
    #[serde(default)]
    overcrowding_changes: Vec<OvercrowdingChange>,
}

#[derive(Debug, Deserialize)]
struct OvercrowdingChange {
    roi: String,
    overcrowded: bool,
}

/// The ROIs a track was in when last seen.
#[derive(Debug)]
struct TrackRois {
    rois: Vec<String>,
    last_seen: u64,
}

/// The compiled rules and the little state they need (ROI membership of tracks, for entries
/// and exits).
#[derive(Debug)]
pub struct TriggerSet {
    rules: Vec<Rule>,
    /// (source id, track id) → ROIs on its previous observation.
    tracks: HashMap<(u32, u64), TrackRois>,
    /// Sources already warned about carrying no analytics results.
    warned_no_analytics: HashSet<u32>,
}

impl TriggerSet {
    /// Validates the `on` list; errors name the entry (`on[1]`) and what is wrong.
    pub fn compile(on: &[RuleSettings]) -> Result<Self, StageError> {
        if on.is_empty() {
            return Err(StageError::Settings(
                "`on` is empty: add at least one trigger, e.g. on = [{ analytics = \"line_crossing\", name = \"door\" }] or on = [{ class = \"person\" }]".into(),
            ));
        }
        let rules = on
            .iter()
            .enumerate()
            .map(|(i, r)| {
                compile_rule(r).map_err(|e| StageError::Settings(format!("on[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rules,
            tracks: HashMap::new(),
            warned_no_analytics: HashSet::new(),
        })
    }

    fn needs_analytics(&self) -> bool {
        self.rules.iter().any(|r| r.event != Event::Presence)
    }

    fn tracks_rois(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.event, Event::RoiEntry(_) | Event::RoiExit(_)))
    }

    /// The rules that match `frame`, in rule order then object order. Frames must arrive in
    /// order per source (ROI entries compare with a track's previous observation).
    pub fn evaluate(&mut self, stage: &str, frame: &FrameMeta) -> Result<Vec<Hit>, StageError> {
        let bad = |what: &str, e: serde_json::Error| {
            StageError::Input(format!(
                "{stage}: frame {} of source `{}`: malformed {what} user meta: {e}",
                frame.frame_num, frame.source_name
            ))
        };
        let frame_analytics = match find_meta(&frame.user, FRAME_META_KIND) {
            Some(m) => Some(
                serde_json::from_slice::<FrameAnalytics>(&m.data)
                    .map_err(|e| bad(FRAME_META_KIND, e))?,
            ),
            None => None,
        };
        let mut objects = Vec::with_capacity(frame.objects.len());
        for o in &frame.objects {
            objects.push(match find_meta(&o.user, OBJECT_META_KIND) {
                Some(m) => Some(
                    serde_json::from_slice::<ObjectAnalytics>(&m.data)
                        .map_err(|e| bad(OBJECT_META_KIND, e))?,
                ),
                None => None,
            });
        }
        if frame_analytics.is_none()
            && self.needs_analytics()
            && self.warned_no_analytics.insert(frame.source_id)
        {
            tracing::warn!(
                stage,
                source = %frame.source_name,
                "frames carry no analytics results, so analytics triggers cannot fire for this \
                 source: put the stage after `analytics` and give the source a stream entry"
            );
        }

        // ROI membership before this frame, per object (None: the track is new or untracked).
        let previous: Vec<Option<Vec<String>>> = frame
            .objects
            .iter()
            .map(|o| {
                o.track_id
                    .and_then(|id| self.tracks.get(&(frame.source_id, id)))
                    .map(|t| t.rois.clone())
            })
            .collect();

        let mut hits = Vec::new();
        for (rule_index, rule) in self.rules.iter().enumerate() {
            let hit = |event, name: Option<&str>, crossing: Option<&str>, object| Hit {
                rule: rule_index,
                event,
                name: name.map(str::to_string),
                crossing: crossing.map(str::to_string),
                object,
            };
            if let Event::Overcrowding(roi) = &rule.event {
                for c in frame_analytics
                    .iter()
                    .flat_map(|f| &f.overcrowding_changes)
                    .filter(|c| c.overcrowded && roi.as_deref().is_none_or(|r| r == c.roi))
                {
                    hits.push(hit("overcrowding", Some(&c.roi), None, None));
                }
                continue;
            }
            for (i, o) in frame.objects.iter().enumerate() {
                if !rule.accepts(o) {
                    continue;
                }
                let meta = objects[i].as_ref();
                match &rule.event {
                    Event::Presence => hits.push(hit("object", None, None, Some(i))),
                    Event::LineCrossing { line, crossing } => {
                        for c in meta.iter().flat_map(|m| &m.lines_crossed).filter(|c| {
                            line.as_deref().is_none_or(|l| l == c.line)
                                && crossing.as_deref().is_none_or(|x| x == c.crossing)
                        }) {
                            hits.push(hit(
                                "line_crossing",
                                Some(&c.line),
                                Some(&c.crossing),
                                Some(i),
                            ));
                        }
                    }
                    Event::RoiEntry(roi) | Event::RoiExit(roi) => {
                        // Untracked objects have no previous observation to compare with.
                        let (Some(meta), Some(before)) = (meta, previous[i].as_ref()) else {
                            continue;
                        };
                        let entry = matches!(rule.event, Event::RoiEntry(_));
                        let (now_in, was_in): (&[String], &[String]) = if entry {
                            (&meta.rois, before)
                        } else {
                            (before, &meta.rois)
                        };
                        for r in now_in.iter().filter(|r| {
                            !was_in.contains(r) && roi.as_deref().is_none_or(|n| n == r.as_str())
                        }) {
                            let event = if entry { "roi_entry" } else { "roi_exit" };
                            hits.push(hit(event, Some(r), None, Some(i)));
                        }
                    }
                    Event::Overcrowding(_) => {}
                }
            }
        }

        if self.tracks_rois() {
            let now = frame.frame_num;
            for (o, meta) in frame.objects.iter().zip(&objects) {
                if let (Some(id), Some(meta)) = (o.track_id, meta) {
                    self.tracks.insert(
                        (frame.source_id, id),
                        TrackRois {
                            rois: meta.rois.clone(),
                            last_seen: now,
                        },
                    );
                }
            }
            let source = frame.source_id;
            self.tracks
                .retain(|(s, _), t| *s != source || t.last_seen + FORGET_AFTER_FRAMES >= now);
        }
        Ok(hits)
    }

    /// Forgets a source's state when its stream ends.
    pub fn end_stream(&mut self, source_id: u32) {
        self.tracks.retain(|(s, _), _| *s != source_id);
        self.warned_no_analytics.remove(&source_id);
    }
}

fn find_meta<'a>(user: &'a [UserMeta], kind: &str) -> Option<&'a UserMeta> {
    user.iter().find(|u| u.kind == kind)
}

fn compile_rule(r: &RuleSettings) -> Result<Rule, String> {
    let min_confidence = r.min_confidence.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_confidence) {
        return Err(format!(
            "min_confidence must be within 0..=1, got {min_confidence}"
        ));
    }
    if r.name.as_deref() == Some("") {
        return Err("`name` is empty; leave it out to match any line or ROI".into());
    }
    if r.class.as_deref() == Some("") {
        return Err("`class` is empty; leave it out to match any object".into());
    }
    let event = match r.analytics.as_deref() {
        None => {
            if r.name.is_some() || r.crossing.is_some() {
                return Err(
                    "`name` and `crossing` need an `analytics` event, e.g. { analytics = \"line_crossing\", name = \"door\" }".into(),
                );
            }
            if r.class.is_none() && r.min_confidence.is_none() {
                return Err(format!(
                    "give an `analytics` event ({}) and/or a `class`",
                    EVENTS.join(", ")
                ));
            }
            Event::Presence
        }
        Some("line_crossing") => {
            if let Some(c) = r.crossing.as_deref() {
                if c != "entry" && c != "exit" {
                    return Err(format!(
                        "crossing `{c}` is not one of entry, exit (leave it out for both)"
                    ));
                }
            }
            Event::LineCrossing {
                line: r.name.clone(),
                crossing: r.crossing.clone(),
            }
        }
        Some(other) => {
            if r.crossing.is_some() {
                return Err(format!(
                    "`crossing` applies to line_crossing only, not to {other}"
                ));
            }
            match other {
                "roi_entry" => Event::RoiEntry(r.name.clone()),
                "roi_exit" => Event::RoiExit(r.name.clone()),
                "overcrowding" => {
                    if r.class.is_some() || r.min_confidence.is_some() {
                        return Err(
                            "overcrowding is an event of the whole ROI; `class` and `min_confidence` do not apply (set the ROI's max_objects in analytics)".into(),
                        );
                    }
                    Event::Overcrowding(r.name.clone())
                }
                unknown => {
                    return Err(format!(
                        "unknown analytics event `{unknown}`; expected one of {}",
                        EVENTS.join(", ")
                    ))
                }
            }
        }
    };
    Ok(Rule {
        event,
        class: r.class.clone(),
        min_confidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::BBox;

    fn rules(text: &str) -> Result<TriggerSet, String> {
        #[derive(Deserialize)]
        struct On {
            on: Vec<RuleSettings>,
        }
        let on: On = toml::from_str(text).map_err(|e| e.to_string())?;
        TriggerSet::compile(&on.on).map_err(|e| e.to_string())
    }

    fn object(label: &str, track: u64, meta: serde_json::Value) -> ObjectMeta {
        ObjectMeta {
            label: label.into(),
            confidence: 0.9,
            bbox: BBox::from_corners(10.0, 10.0, 50.0, 90.0),
            track_id: Some(track),
            user: vec![UserMeta {
                kind: OBJECT_META_KIND.into(),
                data: serde_json::to_vec(&meta).unwrap().into(),
            }],
            ..Default::default()
        }
    }

    fn frame(n: u64, objects: Vec<ObjectMeta>, changes: serde_json::Value) -> FrameMeta {
        FrameMeta {
            source_name: "cam".into(),
            frame_num: n,
            objects,
            user: vec![UserMeta {
                kind: FRAME_META_KIND.into(),
                data: serde_json::to_vec(&serde_json::json!({ "overcrowding_changes": changes }))
                    .unwrap()
                    .into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mistakes_are_named_with_the_entry() {
        let e = rules(r#"on = [{ class = "person" }, { analytics = "line_cross" }]"#).unwrap_err();
        assert_eq!(
            e,
            "on[1]: unknown analytics event `line_cross`; expected one of line_crossing, roi_entry, roi_exit, overcrowding"
        );
        let e = rules("on = [{}]").unwrap_err();
        assert!(e.starts_with("on[0]: give an `analytics` event"), "{e}");
        let e = rules(r#"on = [{ analytics = "line_crossing", crossing = "in" }]"#).unwrap_err();
        assert!(e.contains("crossing `in` is not one of entry, exit"), "{e}");
        let e = rules(r#"on = [{ analytics = "overcrowding", class = "person" }]"#).unwrap_err();
        assert!(
            e.contains("overcrowding is an event of the whole ROI"),
            "{e}"
        );
        let e = rules(r#"on = [{ class = "person", min_confidence = 1.5 }]"#).unwrap_err();
        assert!(e.contains("min_confidence must be within 0..=1"), "{e}");
        let e = rules(r#"on = [{ name = "door" }]"#).unwrap_err();
        assert!(e.contains("need an `analytics` event"), "{e}");
        let e = rules("on = []").unwrap_err();
        assert!(e.contains("`on` is empty"), "{e}");
        let e = rules(r#"on = [{ clas = "person" }]"#).unwrap_err();
        assert!(e.contains("clas"), "{e}");
    }

    #[test]
    fn line_crossings_match_by_name_and_direction() {
        let mut t =
            rules(r#"on = [{ analytics = "line_crossing", name = "door", crossing = "exit" }]"#)
                .unwrap();
        let crossed = |line: &str, c: &str| serde_json::json!({ "rois": [], "lines_crossed": [{ "line": line, "crossing": c }] });
        let f = frame(
            1,
            vec![
                object("person", 1, crossed("door", "exit")),
                object("person", 2, crossed("door", "entry")),
                object("person", 3, crossed("gate", "exit")),
            ],
            serde_json::json!([]),
        );
        let hits = t.evaluate("rec", &f).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].object, Some(0));
        assert_eq!(hits[0].name.as_deref(), Some("door"));
        assert_eq!(hits[0].crossing.as_deref(), Some("exit"));
    }

    #[test]
    fn roi_entries_compare_with_the_previous_observation() {
        let mut t = rules(r#"on = [{ analytics = "roi_entry", name = "zone", class = "person" }, { analytics = "roi_exit" }]"#).unwrap();
        let inside =
            |yes: bool| serde_json::json!({ "rois": if yes { vec!["zone"] } else { vec![] } });
        // A new track already inside is not an entry: it was never seen outside.
        let f = frame(
            0,
            vec![
                object("person", 7, inside(true)),
                object("person", 8, inside(false)),
            ],
            serde_json::json!([]),
        );
        assert!(t.evaluate("s", &f).unwrap().is_empty());
        let f = frame(
            1,
            vec![
                object("person", 7, inside(true)),
                object("person", 8, inside(true)),
            ],
            serde_json::json!([]),
        );
        let hits = t.evaluate("s", &f).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].event, hits[0].object), ("roi_entry", Some(1)));
        let f = frame(
            2,
            vec![object("car", 7, inside(false))],
            serde_json::json!([]),
        );
        let hits = t.evaluate("s", &f).unwrap();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].event, hits[0].rule), ("roi_exit", 1));
    }

    #[test]
    fn overcrowding_and_presence() {
        let mut t = rules(r#"on = [{ analytics = "overcrowding" }, { class = "person", min_confidence = 0.95 }, { class = "car" }]"#).unwrap();
        let f = frame(
            0,
            vec![
                object("person", 1, serde_json::json!({})),
                object("car", 2, serde_json::json!({})),
            ],
            serde_json::json!([{ "roi": "a", "overcrowded": true }, { "roi": "b", "overcrowded": false }]),
        );
        let hits = t.evaluate("s", &f).unwrap();
        let got: Vec<_> = hits.iter().map(|h| (h.rule, h.event, h.object)).collect();
        // The person's 0.9 is below 0.95.
        assert_eq!(got, vec![(0, "overcrowding", None), (2, "object", Some(1))]);
    }

    #[test]
    fn malformed_meta_is_an_error_naming_the_frame() {
        let mut t = rules(r#"on = [{ analytics = "line_crossing" }]"#).unwrap();
        let mut f = frame(4, vec![], serde_json::json!([]));
        f.user[0].data = b"{not json".to_vec().into();
        let e = t.evaluate("rec", &f).unwrap_err().to_string();
        assert!(
            e.starts_with("rec: frame 4 of source `cam`: malformed vidmesh.analytics/frame+json"),
            "{e}"
        );
    }
}
