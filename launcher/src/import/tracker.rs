//! `[tracker]` and its low-level config (`ll-config-file`, NvMultiObjectTracker YAML): the
//! `track` stage.
//!
//! The algorithm follows the low-level library and its config: IOU → `iou`, NvSORT → `sort`,
//! NvDCF → `bytetrack` (the nearest: no correlation filters here), NvDeepSORT → `appearance`.

use std::path::Path;

use super::ini::{ConfigError, GroupReader};
use super::render::Table;
use super::{file_name, resolve, Notes};

/// The converted tracker.
#[derive(Debug, Clone)]
pub struct TrackerOut {
    /// Where it came from, for the comment.
    pub from: String,
    pub table: Table,
    /// `display-tracking-id`, which the OSD needs.
    pub show_track_id: bool,
}

/// One `Section: key: value` entry of the tracker YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlEntry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// The two-level YAML NvMultiObjectTracker configs use (`%YAML:1.0`, sections of `key: value`
/// lines, `#` comments). Nested deeper levels are kept under their top section.
pub fn parse_yaml(path: &Path, text: &str) -> Result<Vec<YamlEntry>, ConfigError> {
    let mut entries = Vec::new();
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let content = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('%') || trimmed == "---" {
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            return Err(ConfigError::new(
                path,
                Some(number),
                format!("`{trimmed}` is not a `key: value` line"),
            ));
        };
        let indented = content.starts_with([' ', '\t']);
        let (key, value) = (key.trim(), value.trim());
        if !indented {
            if value.is_empty() {
                section = key.to_string();
                continue;
            }
            entries.push(YamlEntry {
                section: String::new(),
                key: key.to_string(),
                value: value.to_string(),
                line: number,
            });
        } else if !value.is_empty() {
            entries.push(YamlEntry {
                section: section.clone(),
                key: key.to_string(),
                value: value.trim_matches(['"', '\'']).to_string(),
                line: number,
            });
        }
    }
    Ok(entries)
}

/// Algorithms, as the topology names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Iou,
    Sort,
    ByteTrack,
    Appearance,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Iou => "iou",
            Algorithm::Sort => "sort",
            Algorithm::ByteTrack => "bytetrack",
            Algorithm::Appearance => "appearance",
        }
    }
}

/// From file names: `libnvds_mot_iou.so`, `config_tracker_NvDCF_perf.yml`, ...
fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    let n = name.to_ascii_lowercase();
    if n.contains("deepsort") {
        Some(Algorithm::Appearance)
    } else if n.contains("nvdcf") || n.contains("klt") {
        Some(Algorithm::ByteTrack)
    } else if n.contains("nvsort") || n.contains("sort") {
        Some(Algorithm::Sort)
    } else if n.contains("iou") {
        Some(Algorithm::Iou)
    } else {
        None
    }
}

/// From the YAML's contents: a re-id model means DeepSORT, a visual tracker NvDCF, a Kalman
/// state estimator NvSORT, none of those IOU.
fn algorithm_from_yaml(entries: &[YamlEntry]) -> Option<Algorithm> {
    let get = |section: &str, key: &str| {
        entries
            .iter()
            .find(|e| e.section == section && e.key == key)
            .and_then(|e| e.value.parse::<i64>().ok())
    };
    if get("ReID", "reidType").is_some_and(|v| v > 0) {
        return Some(Algorithm::Appearance);
    }
    if get("VisualTracker", "visualTrackerType").is_some_and(|v| v > 0) {
        return Some(Algorithm::ByteTrack);
    }
    if let Some(v) = get("StateEstimator", "stateEstimatorType") {
        return Some(if v > 0 {
            Algorithm::Sort
        } else {
            Algorithm::Iou
        });
    }
    None
}

/// `[tracker]` → the `track` stage.
pub fn tracker(
    r: &GroupReader<'_>,
    dir: &Path,
    notes: &mut Notes,
) -> Result<TrackerOut, ConfigError> {
    let lib = r.string("ll-lib-file")?.unwrap_or_default();
    let lib_name = file_name(Path::new(&lib));
    // Several configs (one per sub-batch) may be listed; the first one is used.
    let config = r
        .list("ll-config-file")?
        .and_then(|l| l.into_iter().find(|c| !c.trim().is_empty()));
    let yaml = match &config {
        Some(c) => {
            let path = resolve(dir, c.trim());
            let text = std::fs::read(&path).map_err(|e| {
                r.error(
                    "ll-config-file",
                    format!(
                        "[tracker] ll-config-file={c}: cannot read {}: {e}",
                        path.display()
                    ),
                )
            })?;
            let text = String::from_utf8(text).map_err(|e| {
                ConfigError::new(
                    &path,
                    None,
                    format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to() + 1),
                )
            })?;
            Some((file_name(&path), parse_yaml(&path, &text)?))
        }
        None => None,
    };
    let from_yaml = yaml.as_ref().and_then(|(_, e)| algorithm_from_yaml(e));
    let from_names = yaml
        .as_ref()
        .and_then(|(n, _)| algorithm_from_name(n))
        .or_else(|| algorithm_from_name(&lib_name));
    let algorithm = from_yaml.or(from_names).unwrap_or(Algorithm::Iou);
    let (what, detail) = match algorithm {
        Algorithm::Iou => ("IOU", None),
        Algorithm::Sort => ("NvSORT", None),
        Algorithm::ByteTrack => (
            "NvDCF",
            Some(
                "NvDCF's correlation-filter visual tracking has no vidmesh equivalent; \
                 bytetrack (Kalman motion, low-score detections keep tracks alive) is the \
                 nearest",
            ),
        ),
        Algorithm::Appearance => (
            "NvDeepSORT",
            Some(
                "the re-id network is not run; appearance matches objects' embedding user meta \
                 when present, colour histograms otherwise",
            ),
        ),
    };
    let from = match &yaml {
        Some((n, _)) => format!("{lib_name} + {n} ({what})"),
        None => format!("{lib_name} ({what})"),
    };
    if let Some(why) = detail {
        notes.approximate(format!("[tracker] {from}"), why);
    }
    if from_yaml.is_none() && from_names.is_none() {
        notes.approximate(
            format!("[tracker] ll-lib-file={}", lib_name),
            "the algorithm is not recognisable from the library or config names; iou written",
        );
    }

    let mut table = Table::default();
    table
        .set("kind", "track")
        .set("algorithm", algorithm.name());
    if let Some((name, entries)) = &yaml {
        yaml_settings(name, entries, algorithm, &mut table, notes);
    }

    let (w, h) = (r.int("tracker-width")?, r.int("tracker-height")?);
    if w.is_some() || h.is_some() {
        notes.approximate(
            format!(
                "[tracker] tracker-width={} tracker-height={}",
                w.map_or("-".into(), |v| v.to_string()),
                h.map_or("-".into(), |v| v.to_string())
            ),
            "vidmesh tracks boxes in frame pixels; there is no resized tracking surface",
        );
    }
    if r.bool("enable-past-frame")?.unwrap_or(false) {
        table.set("past_frame_output", true);
    }
    let show_track_id = r.bool("display-tracking-id")?.unwrap_or(true);
    if let Some(mode) = r.int("tracking-id-reset-mode")? {
        if mode != 0 {
            notes.not_mapped(
                format!("[tracker] tracking-id-reset-mode={mode}"),
                "vidmesh never resets track ids (they count per source from 1 with the source \
                 id in the upper 32 bits)",
            );
        }
    }
    r.touch("enable");
    notes.unused(r, None);
    Ok(TrackerOut {
        from,
        table,
        show_track_id,
    })
}

/// YAML keys with a clear counterpart; the rest is summarised in one report line.
fn yaml_settings(
    name: &str,
    entries: &[YamlEntry],
    algorithm: Algorithm,
    table: &mut Table,
    notes: &mut Notes,
) {
    let mut used = Vec::new();
    let number = |e: &YamlEntry| e.value.parse::<f64>().ok().filter(|v| v.is_finite());
    for e in entries {
        let Some(v) = number(e) else { continue };
        match (e.section.as_str(), e.key.as_str()) {
            ("TargetManagement", "maxShadowTrackingAge") if v >= 0.0 => {
                table.set("max_age", v.round() as i64);
            }
            ("TargetManagement", "probationAge") if v >= 0.0 => {
                table.set("min_hits", (v.round() as i64).max(1));
            }
            ("DataAssociator", "minMatchingScore4Iou")
                if v > 0.0 && v <= 1.0 && algorithm != Algorithm::ByteTrack =>
            {
                table.set("iou_threshold", v);
            }
            ("BaseConfig", "minDetectorConfidence")
                if v > 0.0 && v <= 0.5 && algorithm == Algorithm::ByteTrack =>
            {
                table.set("low_threshold", v);
            }
            ("ReID", "reidHistorySize") if v >= 1.0 && algorithm == Algorithm::Appearance => {
                table.set("gallery_size", v.round() as i64);
            }
            _ => continue,
        }
        used.push(e.line);
    }
    let mut left: Vec<(String, usize)> = Vec::new();
    for e in entries.iter().filter(|e| !used.contains(&e.line)) {
        let section = if e.section.is_empty() {
            "(top)".to_string()
        } else {
            e.section.clone()
        };
        match left.iter_mut().find(|(s, _)| *s == section) {
            Some((_, n)) => *n += 1,
            None => left.push((section, 1)),
        }
    }
    if !left.is_empty() {
        let listed: Vec<String> = left.iter().map(|(s, n)| format!("{s} ({n})")).collect();
        notes.approximate(
            format!("[tracker] {name}"),
            format!(
                "mapped maxShadowTrackingAge → max_age, probationAge → min_hits{}; other keys \
                 have no vidmesh counterpart: {}",
                match algorithm {
                    Algorithm::ByteTrack => ", minDetectorConfidence → low_threshold",
                    Algorithm::Appearance =>
                        ", minMatchingScore4Iou → iou_threshold, reidHistorySize → gallery_size",
                    _ => ", minMatchingScore4Iou → iou_threshold",
                },
                listed.join(", ")
            ),
        );
    }
}
