//! `[nvds-analytics]` and its config file (nvdsanalytics' `[property]`,
//! `[roi-filtering-stream-N]`, `[overcrowding-stream-N]`, `[line-crossing-stream-N]`,
//! `[direction-detection-stream-N]`): the `analytics` stage, one `stream` entry per source.

use std::path::Path;

use super::ini::{ConfigError, GroupReader, KeyFile};
use super::render::Table;
use super::{file_name, resolve, Notes};

/// The analytics groups, their kind and stream index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Roi,
    Overcrowding,
    Line,
    Direction,
}

fn rule_of(group: &str) -> Option<(Rule, usize)> {
    let (rule, index) = [
        ("roi-filtering-stream-", Rule::Roi),
        ("overcrowding-stream-", Rule::Overcrowding),
        ("line-crossing-stream-", Rule::Line),
        ("direction-detection-stream-", Rule::Direction),
    ]
    .into_iter()
    .find_map(|(prefix, rule)| group.strip_prefix(prefix).map(|rest| (rule, rest)))?;
    Some((rule, index.parse().ok()?))
}

/// A stream's rules being gathered.
#[derive(Debug, Default)]
struct Stream {
    rois: Vec<Table>,
    lines: Vec<Table>,
    directions: Vec<Table>,
}

/// `[nvds-analytics]` → (where from, the `analytics` stage), or `None` when nothing maps.
pub fn analytics(
    r: &GroupReader<'_>,
    dir: &Path,
    source_ids: &[String],
    notes: &mut Notes,
) -> Result<Option<(String, Table)>, ConfigError> {
    let Some(name) = r.string("config-file")? else {
        return Err(r.error(
            "enable",
            "[nvds-analytics] has no config-file (the nvdsanalytics config)",
        ));
    };
    let path = resolve(dir, &name);
    let bytes = std::fs::read(&path).map_err(|e| {
        r.error(
            "config-file",
            format!(
                "[nvds-analytics] config-file={name}: cannot read {}: {e}",
                path.display()
            ),
        )
    })?;
    r.touch("enable");
    notes.unused(r, None);
    let file = KeyFile::parse(&path, &bytes)?;
    let fname = file_name(&path);

    let mut frame_size = None;
    let mut draw = true;
    if let Some(p) = file.reader("property") {
        if !p.enabled(true)? {
            notes.not_mapped(
                format!("{fname} [property] enable=0"),
                "nvdsanalytics is disabled in its own config; no analytics stage",
            );
            return Ok(None);
        }
        let (w, h) = (p.int("config-width")?, p.int("config-height")?);
        if let (Some(w), Some(h)) = (w, h) {
            if w <= 0 || h <= 0 || w > i64::from(u32::MAX) || h > i64::from(u32::MAX) {
                return Err(p.error(
                    "config-width",
                    format!("config-width and config-height must be positive, got {w}x{h}"),
                ));
            }
            frame_size = Some([w, h]);
            notes.approximate(
                format!("{fname} [property] config-width={w} config-height={h}"),
                "nvdsanalytics scales its coordinates to the muxed frames; vidmesh analyses \
                 each source at its own resolution and takes the coordinates as its pixels, so \
                 every source must be this size (checked on the first frame: the run stops \
                 otherwise)",
            );
        }
        draw = p.int("osd-mode")?.unwrap_or(2) != 0;
        for key in ["display-font-size", "display-obj-cnt", "obj-cnt-win-in-ms"] {
            if let Some(v) = p.string(key)? {
                notes.not_mapped(
                    format!("{fname} [property] {key}={v}"),
                    "the analytics stage draws with the OSD's font and counts per frame",
                );
            }
        }
        notes.unused(&p, Some(&fname));
    }

    let mut streams: Vec<(usize, Stream)> = Vec::new();
    for group in &file.groups {
        if group.name == "property" {
            continue;
        }
        let g = GroupReader::new(&file, group);
        let Some((rule, index)) = rule_of(&group.name) else {
            notes.not_mapped(
                format!("{fname} [{}]", group.name),
                "not an nvdsanalytics group vidmesh knows",
            );
            continue;
        };
        if !g.enabled(true)? {
            continue;
        }
        if !notes.stream_exists(&fname, &group.name, index, source_ids.len()) {
            continue;
        }
        let at = match streams.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                streams.push((index, Stream::default()));
                streams.len() - 1
            }
        };
        let stream = &mut streams[at].1;
        rule_group(&g, rule, &fname, stream, notes)?;
        notes.unused(&g, Some(&fname));
    }
    if streams.is_empty() {
        notes.not_mapped(
            format!("[nvds-analytics] {fname}"),
            "no enabled rule for an existing stream; no analytics stage",
        );
        return Ok(None);
    }
    streams.sort_by_key(|(i, _)| *i);
    let tables = streams
        .into_iter()
        .map(|(index, s)| {
            let mut t = Table::default();
            t.set("source", source_ids[index].clone());
            if let Some([w, h]) = frame_size {
                t.set("frame_size", vec![w, h]);
            }
            t.set("draw", draw);
            if !s.rois.is_empty() {
                t.tables("roi", s.rois);
            }
            if !s.lines.is_empty() {
                t.tables("line", s.lines);
            }
            if !s.directions.is_empty() {
                t.tables("direction", s.directions);
            }
            t
        })
        .collect();
    let mut table = Table::default();
    table.set("kind", "analytics").tables("stream", tables);
    Ok(Some((fname, table)))
}

/// One `[<rule>-stream-N]` group into `stream`.
fn rule_group(
    g: &GroupReader<'_>,
    rule: Rule,
    fname: &str,
    stream: &mut Stream,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let group = g.name().to_string();
    if let Some(class) = g.int("class-id")? {
        if class >= 0 {
            notes.approximate(
                format!("{fname} [{group}] class-id={class}"),
                "vidmesh's analytics count objects of every class",
            );
        }
    }
    match rule {
        Rule::Roi | Rule::Overcrowding => {
            let inverse = rule == Rule::Roi && g.bool("inverse-roi")?.unwrap_or(false);
            let threshold = if rule == Rule::Overcrowding {
                g.int("object-threshold")?
            } else {
                None
            };
            if let Some(ms) = g.int("time-threshold")? {
                notes.not_mapped(
                    format!("{fname} [{group}] time-threshold={ms}"),
                    "a ROI counts as overcrowded on the first frame over the threshold",
                );
            }
            for e in g.entries().iter().filter(|e| e.key.starts_with("roi-")) {
                let name = e.key["roi-".len()..].to_string();
                let points = pairs(g, &e.key, 3)?;
                let existing = stream
                    .rois
                    .iter_mut()
                    .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name.as_str()));
                match existing {
                    Some(t) if t.get("points") == Some(&points_value(&points)) => {
                        if let Some(n) = threshold {
                            t.set("max_objects", n);
                        }
                    }
                    clash => {
                        let name = if clash.is_some() {
                            let renamed = format!("{name}-overcrowding");
                            notes.approximate(
                                format!("{fname} [{group}] {}", e.key),
                                format!(
                                    "another ROI of this stream is named `{name}`; this one is \
                                     `{renamed}`"
                                ),
                            );
                            renamed
                        } else {
                            name
                        };
                        let mut t = Table::default();
                        t.set("name", name).set("points", points_value(&points));
                        if inverse {
                            t.set("inverse", true);
                        }
                        if let Some(n) = threshold {
                            t.set("max_objects", n);
                        }
                        stream.rois.push(t);
                    }
                }
            }
        }
        Rule::Line => {
            for e in g
                .entries()
                .iter()
                .filter(|e| e.key.starts_with("line-crossing-"))
            {
                let v = pairs(g, &e.key, 4)?;
                if v.len() != 4 {
                    return Err(g.error(
                        &e.key,
                        format!(
                            "[{group}] {}: expected dx1;dy1;dx2;dy2;x1;y1;x2;y2 (8 numbers), got \
                             {}",
                            e.key,
                            v.len() * 2
                        ),
                    ));
                }
                let mut t = Table::default();
                t.set("name", e.key["line-crossing-".len()..].to_string())
                    .set("points", points_value(&v[2..]))
                    .set("direction", points_value(&v[..2]));
                stream.lines.push(t);
            }
            if g.int("extended")?.unwrap_or(0) != 0 {
                notes.not_mapped(
                    format!("{fname} [{group}] extended=1"),
                    "crossings count within the segment only (extended lines are not \
                     supported)",
                );
            }
            if let Some(mode) = g.string("mode")? {
                if mode != "balanced" {
                    notes.approximate(
                        format!("{fname} [{group}] mode={mode}"),
                        "vidmesh counts a crossing once the reference point is `hysteresis` \
                         (5) pixels past the line, between nvdsanalytics' loose and strict \
                         modes",
                    );
                }
            }
        }
        Rule::Direction => {
            for e in g
                .entries()
                .iter()
                .filter(|e| e.key.starts_with("direction-"))
            {
                let v = pairs(g, &e.key, 2)?;
                if v.len() != 2 {
                    return Err(g.error(
                        &e.key,
                        format!(
                            "[{group}] {}: expected x1;y1;x2;y2, got {} numbers",
                            e.key,
                            v.len() * 2
                        ),
                    ));
                }
                let mut t = Table::default();
                t.set("name", e.key["direction-".len()..].to_string())
                    .set("points", points_value(&v));
                stream.directions.push(t);
            }
            g.touch("mode");
        }
    }
    Ok(())
}

/// `x1;y1;x2;y2;...` → points; at least `min` of them, an even count of numbers.
fn pairs(g: &GroupReader<'_>, key: &str, min: usize) -> Result<Vec<[f64; 2]>, ConfigError> {
    let values = g.float_list(key)?.unwrap_or_default();
    if values.len() % 2 != 0 || values.len() / 2 < min {
        return Err(g.error(
            key,
            format!(
                "[{}] {key}: expected at least {min} x;y pairs, got {} numbers",
                g.name(),
                values.len()
            ),
        ));
    }
    Ok(values.chunks(2).map(|c| [c[0], c[1]]).collect())
}

/// Points as TOML: whole numbers as integers, as people write them.
fn points_value(points: &[[f64; 2]]) -> toml::Value {
    let number = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e12 {
            toml::Value::Integer(v as i64)
        } else {
            toml::Value::Float(v)
        }
    };
    toml::Value::Array(
        points
            .iter()
            .map(|[x, y]| toml::Value::Array(vec![number(*x), number(*y)]))
            .collect(),
    )
}
