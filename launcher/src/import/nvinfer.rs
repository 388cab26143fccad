//! `[primary-gie]` / `[secondary-gieN]` and the nvinfer config files they point at: the
//! `preprocess` and `infer` stages.
//!
//! deepstream-app lets the group override a few of the file's keys (batch-size, interval,
//! gie-unique-id, model-engine-file, labelfile-path); paths in the group are relative to the
//! deepstream-app config, paths in the nvinfer file to the nvinfer file.

use std::path::{Path, PathBuf};

use super::ini::{ConfigError, GroupReader, KeyFile};
use super::onnx::{Dim, ModelInfo};
use super::render::Table;
use super::{file_name, resolve, Notes};

/// A converted gie: its preprocessing and its infer stage.
#[derive(Debug, Clone)]
pub struct Gie {
    /// The nvinfer config's file name, for comments.
    pub config_name: String,
    /// The `preprocess` stage of the primary gie; a secondary gie's preprocessing is the
    /// `preprocess` table inside its infer stage.
    pub preprocess: Option<Table>,
    pub infer: Table,
    /// `gie-unique-id`: what `operate-on-gie-id` of later gies refers to.
    pub unique_id: i64,
    /// A detector (later gies can run on its objects), not a classifier.
    pub detector: bool,
}

/// A gie converted before, as `operate-on-gie-id` can name it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub stage: String,
    pub unique_id: i64,
    pub detector: bool,
}

/// The bytes and path of the config file a gie group names (`what` says which kind): an error
/// when the key is missing or the file cannot be read, as deepstream-app would not start
/// either.
pub(super) fn config_file(
    r: &GroupReader<'_>,
    dir: &Path,
    what: &str,
) -> Result<(Vec<u8>, PathBuf), ConfigError> {
    let Some(name) = r.string("config-file")? else {
        return Err(r.error(
            "enable",
            format!("[{}] has no config-file (the {what} config)", r.name()),
        ));
    };
    let path = resolve(dir, &name);
    let bytes = std::fs::read(&path).map_err(|e| {
        r.error(
            "config-file",
            format!(
                "[{}] config-file={name}: cannot read {}: {e}",
                r.name(),
                path.display()
            ),
        )
    })?;
    Ok((bytes, path))
}

/// The nvinfer config a gie group names, parsed.
fn nvinfer_config(r: &GroupReader<'_>, dir: &Path) -> Result<(KeyFile, PathBuf), ConfigError> {
    let (bytes, path) = config_file(r, dir, "nvinfer")?;
    Ok((KeyFile::parse(&path, &bytes)?, path))
}

/// `[primary-gie]` → a preprocess and an infer stage, or `None` when vidmesh cannot run it
/// (reported).
pub fn primary(
    r: &GroupReader<'_>,
    dir: &Path,
    notes: &mut Notes,
) -> Result<Option<Gie>, ConfigError> {
    gie(r, dir, notes, None)
}

/// `[secondary-gieN]` → an infer stage on the objects of an `upstream` gie (nvinfer's
/// process-mode=2), or `None` when vidmesh cannot run it (reported). deepstream-app runs
/// secondary gies in secondary mode whatever their config says.
pub fn secondary(
    r: &GroupReader<'_>,
    dir: &Path,
    upstream: &[Upstream],
    notes: &mut Notes,
) -> Result<Option<Gie>, ConfigError> {
    gie(r, dir, notes, Some(upstream))
}

/// The value of `key` in the deepstream-app group `r` if set there (it overrides the nvinfer
/// file's, which is then marked read), else in the file's `[property]` group `p`.
fn overridden<T>(
    r: &GroupReader<'_>,
    p: &GroupReader<'_>,
    key: &str,
    get: impl Fn(&GroupReader<'_>, &str) -> Result<Option<T>, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    match get(r, key)? {
        Some(v) => {
            p.touch(key);
            Ok(Some(v))
        }
        None => get(p, key),
    }
}

/// One gie group; `upstream` is `Some` for a secondary gie (the gies converted before it).
fn gie(
    r: &GroupReader<'_>,
    dir: &Path,
    notes: &mut Notes,
    upstream: Option<&[Upstream]>,
) -> Result<Option<Gie>, ConfigError> {
    let group = format!("[{}]", r.name());
    let plugin = r.int("plugin-type")?.unwrap_or(0);
    if plugin == 1 {
        return super::nvinferserver::gie(r, dir, notes, upstream);
    }
    if plugin != 0 {
        let name = r.string("config-file")?.unwrap_or_default();
        let path = resolve(dir, &name);
        if !path.is_file() {
            return Err(r.error(
                "config-file",
                format!(
                    "{group} config-file={name}: {} does not exist",
                    path.display()
                ),
            ));
        }
        notes.not_mapped(
            format!("{group} plugin-type={plugin}"),
            "vidmesh reads nvinfer (0) and nvinferserver (1) configs; this gie is left out of \
             the topology",
        );
        return Ok(None);
    }
    let (file, path) = nvinfer_config(r, dir)?;
    let nvdir = path.parent().unwrap_or(dir).to_path_buf();
    let fname = file_name(&path);
    let at = format!("{group} {fname}");
    let Some(p) = file.reader("property") else {
        return Err(ConfigError::new(
            &path,
            None,
            "no [property] group (an nvinfer config keeps its settings there)",
        ));
    };

    let network_type = p.int("network-type")?.unwrap_or(0);
    let process_mode = p.int("process-mode")?.unwrap_or(1);
    let detector = match network_type {
        0 => true,
        1 => false,
        _ => {
            notes.not_mapped(
                format!("{at} network-type={network_type}"),
                "vidmesh converts detectors (0) and classifiers (1); segmentation models need \
                 an infer stage with a segmentation parser written by hand",
            );
            return Ok(None);
        }
    };
    if upstream.is_none() && process_mode == 2 {
        notes.not_mapped(
            format!("{at} process-mode=2"),
            "a primary gie in secondary mode has no objects to run on",
        );
        return Ok(None);
    }

    // The group's values win over the file's, as in deepstream-app.
    let engine = match r.string("model-engine-file")? {
        Some(e) => {
            p.touch("model-engine-file");
            Some(resolve(dir, &e))
        }
        None => p.string("model-engine-file")?.map(|e| resolve(&nvdir, &e)),
    };
    let model = match p.string("onnx-file")? {
        Some(onnx) => resolve(&nvdir, &onnx),
        None => match engine.as_deref().and_then(onnx_beside_engine) {
            Some(onnx) => {
                notes.approximate(
                    format!("{at} model-engine-file"),
                    format!(
                        "a TensorRT engine cannot run here; the ONNX model it was built from \
                         ({}) is used",
                        file_name(&onnx)
                    ),
                );
                onnx
            }
            None => {
                let other: Vec<&str> = [
                    "model-engine-file",
                    "uff-file",
                    "tlt-encoded-model",
                    "model-file",
                    "custom-network-config",
                ]
                .into_iter()
                .filter(|k| p.has(k) || r.has(k))
                .collect();
                let place = if other.is_empty() {
                    "onnx-file".to_string()
                } else {
                    other.join(", ")
                };
                notes.not_mapped(
                    format!("{at} {place}"),
                    "vidmesh runs ONNX models (onnx-file) with ONNX Runtime; this gie is left \
                     out of the topology",
                );
                return Ok(None);
            }
        },
    };
    let info = ModelInfo::read(&model);
    let Some(mut pre) = preprocessing(&p, &at, &model, info.as_ref(), notes)? else {
        return Ok(None);
    };

    let mut infer = Table::default();
    infer.set("kind", "infer").set("model", path_text(&model));
    let labels = match r.string("labelfile-path")? {
        Some(l) => {
            p.touch("labelfile-path");
            Some(resolve(dir, &l))
        }
        None => p.string("labelfile-path")?.map(|l| resolve(&nvdir, &l)),
    };
    if let Some(l) = &labels {
        infer.set("labels_file", path_text(l));
    }
    let written = overridden(r, &p, "gie-unique-id", |g, k| g.int(k))?;
    let unique_id = unique_id(written, upstream, &format!("{at} gie-unique-id"), notes)
        .map_err(|e| p.error("gie-unique-id", e))?;
    infer.set("component_id", unique_id);

    if let Some(upstream) = upstream {
        let Some(()) = secondary_mode(r, &p, &at, upstream, &mut infer, notes)? else {
            return Ok(None);
        };
    }

    if detector {
        class_attributes(&file, &fname, &mut infer, notes)?;
        infer.inline(
            "parser",
            parser(&p, &at, labels.as_deref(), info.as_ref(), notes)?,
        );
        if let Some(ids) = p.int_list("filter-out-class-ids")? {
            infer.set("filter_out_classes", ids);
        }
    } else {
        if let Some(t) = p.float("classifier-threshold")? {
            infer.set("score_threshold", unit(&p, "classifier-threshold", t)?);
        }
        let mut parser = Table::default();
        parser.set("type", "classifier");
        if let Some(names) = p.list("output-blob-names")? {
            if let Some(first) = names.first().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                parser.set("output", first);
            }
            if names.len() > 1 {
                notes.approximate(
                    format!("{at} output-blob-names={}", names.join(";")),
                    format!(
                        "vidmesh's classifier reads one output: `{}`",
                        names[0].trim()
                    ),
                );
            }
        }
        infer.inline("parser", parser);
        if let Some(mode) = p.int("classifier-async-mode")?.filter(|m| *m != 0) {
            notes.approximate(
                format!("{at} classifier-async-mode={mode}"),
                "vidmesh classifies in line: results are attached to the frame whose crop was \
                 classified, not to a later one",
            );
        }
        p.touch("classifier-type");
    }

    let interval = overridden(r, &p, "interval", |g, k| g.int(k))?;
    match (interval, upstream) {
        (Some(n), None) if n < 0 => {
            return Err(p.error(
                "interval",
                format!("[property] interval must be 0 or more, got {n}"),
            ))
        }
        (Some(n), None) if n > 0 => {
            infer.set("interval", n);
        }
        // nvinfer applies `interval` to primary gies only.
        _ => {}
    }
    // The batch comes from the mux; a model with a fixed batch runs in chunks of it.
    r.touch("batch-size");
    p.touch("batch-size");
    p.touch("num-detected-classes");
    p.touch("custom-lib-path");
    p.touch("process-mode");
    match p.int("network-mode")?.unwrap_or(0) {
        0 => {}
        mode => notes.approximate(
            format!(
                "{at} network-mode={mode} ({})",
                match mode {
                    1 => "INT8",
                    2 => "FP16",
                    _ => "best",
                }
            ),
            "ONNX Runtime on the CPU computes in FP32, so scores differ slightly from \
             TensorRT's reduced precision",
        ),
    }
    match p.int("cluster-mode")? {
        None | Some(2) => {}
        Some(mode) => notes.approximate(
            format!(
                "{at} cluster-mode={mode} ({})",
                match mode {
                    0 => "group rectangles",
                    1 => "DBSCAN",
                    3 => "DBSCAN + NMS",
                    4 => "no clustering",
                    _ => "unknown",
                }
            ),
            "vidmesh clusters with per-class NMS (cluster-mode=2), using nms-iou-threshold",
        ),
    }
    if p.bool("output-tensor-meta")?.unwrap_or(false) {
        notes.not_mapped(
            format!("{at} output-tensor-meta=1"),
            "the raw output tensors are not attached to frames",
        );
    }
    for key in r.entries().iter().map(|e| e.key.as_str()) {
        if key.starts_with("bbox-border-color") || key.starts_with("bbox-bg-color") {
            r.touch(key);
            notes.not_mapped(
                format!("{group} {key}"),
                "the OSD picks box colours per class itself",
            );
        }
    }
    r.touch("config-file");
    r.touch("plugin-type");
    r.touch("enable");
    notes.unused(r, None);
    notes.unused(&p, Some(&fname));
    for g in &file.groups {
        let known = g.name == "property" || (detector && g.name.starts_with("class-attrs-"));
        if !known {
            notes.not_mapped(
                format!("{fname} [{}]", g.name),
                "a group vidmesh does not use for this kind of model",
            );
        }
    }
    let preprocess = match upstream {
        None => Some(pre),
        Some(_) => {
            // A secondary gie crops and scales objects itself: no stage of its own.
            pre.remove("kind");
            infer.inline("preprocess", pre);
            None
        }
    };
    Ok(Some(Gie {
        config_name: fname,
        preprocess,
        infer,
        unique_id,
        detector,
    }))
}

/// The component id of a gie whose config says `written`: the default 1 for a primary gie,
/// the next free id for a secondary one that has none or one an earlier gie took (reported at
/// `place`); an error text for an id out of range.
pub(super) fn unique_id(
    written: Option<i64>,
    upstream: Option<&[Upstream]>,
    place: &str,
    notes: &mut Notes,
) -> Result<i64, String> {
    let earlier = upstream.unwrap_or_default();
    Ok(match written {
        Some(id) if !(0..=i64::from(u32::MAX)).contains(&id) => {
            return Err(format!("{place} must be 0..=4294967295, got {id}"))
        }
        Some(id) if earlier.iter().any(|g| g.unique_id == id) => {
            let free = next_free_id(earlier);
            notes.approximate(
                format!("{place}={id}"),
                format!("an earlier gie has this id; {free} written"),
            );
            free
        }
        Some(id) => id,
        // The infer stage's default, as nvinfer's primary gies usually have.
        None if upstream.is_none() => 1,
        None => next_free_id(earlier),
    })
}

/// One more than the highest id in use.
fn next_free_id(upstream: &[Upstream]) -> i64 {
    upstream.iter().map(|g| g.unique_id).max().unwrap_or(0) + 1
}

/// The detector a secondary gie with `operate-on-gie-id` = `on` runs on; `None` when no
/// converted detector has that id (reported at `place`).
pub(super) fn operated_on<'u>(
    on: Option<i64>,
    place: &str,
    upstream: &'u [Upstream],
    notes: &mut Notes,
) -> Option<&'u Upstream> {
    // Unset or -1: nvinfer takes any upstream gie's objects; the primary detector's here.
    let target = match on.filter(|id| *id >= 0) {
        Some(id) => upstream.iter().find(|g| g.unique_id == id),
        None => upstream.iter().find(|g| g.detector),
    };
    let shown = on
        .map(|v| v.to_string())
        .unwrap_or_else(|| "(unset)".into());
    match target {
        None => {
            notes.not_mapped(
                format!("{place}={shown}"),
                "no converted detector has this gie-unique-id; this gie is left out of the \
                 topology",
            );
            None
        }
        Some(t) if !t.detector => {
            notes.not_mapped(
                format!("{place}={shown}"),
                "that gie is a classifier and makes no objects; this gie is left out of the \
                 topology",
            );
            None
        }
        Some(t) => Some(t),
    }
}

/// The keys of a secondary gie: which objects it runs on, how often. `None` when the gie it
/// names was not converted (reported).
fn secondary_mode(
    r: &GroupReader<'_>,
    p: &GroupReader<'_>,
    at: &str,
    upstream: &[Upstream],
    infer: &mut Table,
    notes: &mut Notes,
) -> Result<Option<()>, ConfigError> {
    let on = overridden(r, p, "operate-on-gie-id", |g, k| g.int(k))?;
    let Some(target) = operated_on(on, &format!("{at} operate-on-gie-id"), upstream, notes) else {
        return Ok(None);
    };
    infer.set("operate_on", target.stage.clone());
    if let Some(ids) = overridden(r, p, "operate-on-class-ids", |g, k| g.int_list(k))? {
        infer.set("operate_on_classes", ids);
    }
    let min_w = p.float("input-object-min-width")?.unwrap_or(0.0);
    let min_h = p.float("input-object-min-height")?.unwrap_or(0.0);
    if min_w > 0.0 || min_h > 0.0 {
        infer.set("min_object_size", vec![min_w, min_h]);
    }
    for key in ["input-object-max-width", "input-object-max-height"] {
        if let Some(v) = p.float(key)?.filter(|v| *v > 0.0) {
            notes.not_mapped(
                format!("{at} {key}={v}"),
                "vidmesh has no upper size limit for the objects a secondary gie runs on",
            );
        }
    }
    if let Some(n) = p.int("secondary-reinfer-interval")? {
        if n < 0 {
            return Err(p.error(
                "secondary-reinfer-interval",
                format!("[property] secondary-reinfer-interval must be 0 or more, got {n}"),
            ));
        }
        if n > 0 {
            infer.set("reinfer_interval", n);
        }
    }
    Ok(Some(()))
}

/// nvinfer's input keys → a `preprocess` table; `None` when the input size is unknown
/// (reported).
fn preprocessing(
    p: &GroupReader<'_>,
    at: &str,
    model: &Path,
    info: Option<&ModelInfo>,
    notes: &mut Notes,
) -> Result<Option<Table>, ConfigError> {
    let input = info.and_then(|i| i.inputs.first());
    // Network input size and layout: the config's, else the model's own (nvinfer does the same
    // for ONNX models).
    let dims = match p.int_list("infer-dims")? {
        Some(d) => Some(d),
        None => match p.int_list("uff-input-dims")? {
            Some(d) => Some(d),
            None => p.int_list("input-dims")?,
        },
    };
    let model_shape: Option<Vec<i64>> = input.map(|i| {
        i.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => *v,
                Dim::Dynamic => -1,
            })
            .collect()
    });
    let model_nhwc = model_shape
        .as_ref()
        .is_some_and(|s| s.len() == 4 && matches!(s[3], 1 | 3) && !matches!(s[1], 1 | 3));
    let order = match p.int("network-input-order")? {
        Some(o) => Some(o),
        None => p.int("uff-input-order")?,
    };
    let nhwc = match order {
        Some(0) => false,
        Some(1) => true,
        Some(o) => {
            return Err(p.error(
                "network-input-order",
                format!("[property] network-input-order must be 0 (NCHW) or 1 (NHWC), got {o}"),
            ))
        }
        None => {
            if model_nhwc {
                notes.approximate(
                    format!("{at} network-input-order"),
                    "not set (nvinfer assumes NCHW), but the model's input is NHWC: layout = \
                     \"nhwc\" written",
                );
            }
            model_nhwc
        }
    };
    let (width, height) = match (&dims, &model_shape) {
        (Some(d), _) if d.len() >= 3 && d[1] > 0 && d[2] > 0 => (d[2], d[1]),
        (Some(d), _) => {
            return Err(p.error(
                "infer-dims",
                format!(
                    "[property] infer-dims must be C;H;W with positive sizes, got {}",
                    d.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(";")
                ),
            ))
        }
        (None, Some(s)) if s.len() == 4 => {
            let (h, w) = if nhwc { (s[1], s[2]) } else { (s[2], s[3]) };
            if h <= 0 || w <= 0 {
                notes.not_mapped(
                    format!("{at} infer-dims"),
                    "not set and the model's input size is dynamic; add infer-dims=C;H;W (this \
                     gie is left out of the topology)",
                );
                return Ok(None);
            }
            (w, h)
        }
        _ => {
            notes.not_mapped(
                format!("{at} infer-dims"),
                format!(
                    "not set and the input size cannot be read from {}; add infer-dims=C;H;W \
                     (this gie is left out of the topology)",
                    model.display()
                ),
            );
            return Ok(None);
        }
    };
    if let (Some(s), Some(_)) = (&model_shape, &dims) {
        let (mh, mw) = match (s.len(), nhwc) {
            (4, true) => (s[1], s[2]),
            (4, false) => (s[2], s[3]),
            _ => (-1, -1),
        };
        if (mh > 0 && mh != height) || (mw > 0 && mw != width) {
            notes.approximate(
                format!("{at} infer-dims"),
                format!(
                    "{width}x{height} but the model's input is {mw}x{mh} (layout {}): the run \
                     will stop on the mismatch",
                    if nhwc { "NHWC" } else { "NCHW" }
                ),
            );
        }
    }

    let mut pre = Table::default();
    pre.set("kind", "preprocess")
        .set("width", width)
        .set("height", height)
        .set("layout", if nhwc { "nhwc" } else { "nchw" });
    match p.int("model-color-format")?.unwrap_or(0) {
        0 => {
            pre.set("color_order", "rgb");
        }
        1 => {
            pre.set("color_order", "bgr");
        }
        other => notes.not_mapped(
            format!("{at} model-color-format={other}"),
            "vidmesh feeds RGB or BGR (0 or 1), not grayscale; rgb written",
        ),
    }
    if let Some(f) = p.float("net-scale-factor")? {
        pre.set("net_scale_factor", f);
    }
    if let Some(offsets) = p.float_list("offsets")? {
        set_offsets(&offsets, &format!("{at} offsets"), &mut pre, notes);
    }
    if p.bool("maintain-aspect-ratio")?.unwrap_or(false) {
        pre.set("maintain_aspect_ratio", true);
        if p.bool("symmetric-padding")?.unwrap_or(false) {
            pre.set("symmetric_padding", true);
        }
    } else {
        p.touch("symmetric-padding");
    }
    let filter = p.int("scaling-filter")?;
    pre.set(
        "interpolation",
        interpolation(filter, &format!("{at} scaling-filter"), notes),
    );
    Ok(Some(pre))
}

/// Per-channel offsets (1 value for all three, or 3) into `pre`; other counts are reported.
pub(super) fn set_offsets(offsets: &[f64], place: &str, pre: &mut Table, notes: &mut Notes) {
    match offsets {
        [] => {}
        [v] => {
            pre.set("offsets", vec![*v; 3]);
        }
        [a, b, c] => {
            pre.set("offsets", vec![*a, *b, *c]);
        }
        other => notes.not_mapped(
            place.to_string(),
            format!("{} values; vidmesh takes 1 or 3", other.len()),
        ),
    }
}

/// nvinfer's scaling filter number (0 nearest, 1 bilinear) as a preprocess `interpolation`;
/// other filters become bilinear, reported at `place`.
pub(super) fn interpolation(filter: Option<i64>, place: &str, notes: &mut Notes) -> &'static str {
    match filter {
        None | Some(0) => "nearest",
        Some(1) => "bilinear",
        Some(other) => {
            notes.approximate(
                format!("{place}={other}"),
                "vidmesh scales with nearest or bilinear; bilinear written",
            );
            "bilinear"
        }
    }
}

/// `[class-attrs-all]` → the stage's post-processing keys; `[class-attrs-N]` → its
/// `class_attrs` overrides for class N.
fn class_attributes(
    file: &KeyFile,
    fname: &str,
    infer: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    if let Some(c) = file.reader("class-attrs-all") {
        for (key, value) in class_rules(&c)?.0 {
            infer.0.push((key, value));
        }
        notes.unused(&c, Some(fname));
    }
    let mut per_class = Table::default();
    for g in file
        .groups
        .iter()
        .filter(|g| g.name.starts_with("class-attrs-") && g.name != "class-attrs-all")
    {
        let c = GroupReader::new(file, g);
        let id = &g.name["class-attrs-".len()..];
        if id.parse::<u32>().is_err() {
            notes.not_mapped(
                format!("{fname} [{}]", g.name),
                "not a class id: nvinfer reads [class-attrs-all] and [class-attrs-<id>]",
            );
            continue;
        }
        let rules = class_rules(&c)?;
        notes.unused(&c, Some(fname));
        if !rules.0.is_empty() {
            per_class.inline(id, rules);
        }
    }
    if !per_class.0.is_empty() {
        infer.inline("class_attrs", per_class);
    }
    Ok(())
}

/// The keys of one class-attrs group as infer keys (`score_threshold`, `nms_iou`, `top_k`,
/// `min_size`, `max_size`, `roi`). DBSCAN and group-rectangles keys are not read: they are
/// reported with the group's other unused keys.
fn class_rules(c: &GroupReader<'_>) -> Result<Table, ConfigError> {
    let mut rules = Table::default();
    let threshold = match c.float("pre-cluster-threshold")? {
        Some(t) => Some(("pre-cluster-threshold", t)),
        None => c.float("threshold")?.map(|t| ("threshold", t)),
    };
    if let Some((key, t)) = threshold {
        rules.set("score_threshold", unit(c, key, t)?);
    }
    if let Some(t) = c.float("nms-iou-threshold")? {
        rules.set("nms_iou", unit(c, "nms-iou-threshold", t)?);
    }
    if let Some(k) = c.int("topk")?.filter(|k| *k > 0) {
        rules.set("top_k", k);
    }
    let pixels = |key: &str| -> Result<Option<f64>, ConfigError> {
        match c.float(key)? {
            Some(v) if v < 0.0 => Err(c.error(
                key,
                format!("[{}] {key} must be 0 or more, got {v}", c.name()),
            )),
            other => Ok(other),
        }
    };
    for (key, w, h) in [
        ("min_size", "detected-min-w", "detected-min-h"),
        ("max_size", "detected-max-w", "detected-max-h"),
    ] {
        let (w, h) = (pixels(w)?, pixels(h)?);
        if w.is_some() || h.is_some() {
            rules.set(key, vec![w.unwrap_or(0.0), h.unwrap_or(0.0)]);
        }
    }
    let (top, bottom) = (pixels("roi-top-offset")?, pixels("roi-bottom-offset")?);
    if top.is_some() || bottom.is_some() {
        let mut roi = Table::default();
        if let Some(t) = top {
            roi.set("top", t);
        }
        if let Some(b) = bottom {
            roi.set("bottom", b);
        }
        rules.inline("roi", roi);
    }
    Ok(rules)
}

fn unit(c: &GroupReader<'_>, key: &str, v: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(c.error(
            key,
            format!("[{}] {key} must be within 0..=1, got {v}", c.name()),
        ))
    }
}

/// nvinfer's output parsing → vidmesh's `ssd` parser.
fn parser(
    p: &GroupReader<'_>,
    at: &str,
    labels: Option<&Path>,
    info: Option<&ModelInfo>,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let func = p.string("parse-bbox-func-name")?;
    let lib = p.string("custom-lib-path")?;
    let place = match (&func, &lib) {
        (Some(f), Some(l)) => format!(
            "{at} parse-bbox-func-name={f} (custom-lib-path={})",
            file_name(Path::new(l))
        ),
        (Some(f), None) => format!("{at} parse-bbox-func-name={f}"),
        _ => format!("{at} parse-bbox-func-name"),
    };
    // TensorFlow Object Detection API SSDs (the DeepStream TF SSD sample): boxes ymin, xmin,
    // ymax, xmax in 0..1, score column 0 is the background.
    let tf_ssd = func.as_deref() == Some("NvDsInferParseCustomTfSSD");
    match func.as_deref() {
        Some("NvDsInferParseCustomTfSSD") => {}
        Some("NvDsInferParseCustomSSD") => notes.approximate(
            place,
            "the SSD sample's parser reads TensorRT's NMS plugin output; vidmesh's ssd parser \
             reads decoded boxes [N, anchors, 4] and per-class scores [N, anchors, classes] and \
             runs NMS itself",
        ),
        Some(_) => notes.not_mapped(
            place,
            "vidmesh cannot load custom parser libraries; its ssd parser is configured instead \
             (boxes [N, anchors, 4], scores [N, anchors, classes]); the run stops if the model \
             has other outputs",
        ),
        None => notes.not_mapped(
            place,
            "not set: nvinfer's built-in DetectNet_v2 grid parser has no vidmesh equivalent; \
             the ssd parser is configured instead (the run stops if the model's outputs do not \
             fit it)",
        ),
    }

    let names: Vec<String> = match p.list("output-blob-names")? {
        Some(n) if !n.is_empty() => n.into_iter().map(|s| s.trim().to_string()).collect(),
        _ => info
            .map(|i| i.outputs.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default(),
    };
    let (table, boxes, scores) = ssd_table(&names, info, tf_ssd, labels);
    if names.len() > 2 {
        notes.approximate(
            format!("{at} output-blob-names={}", names.join(";")),
            format!(
                "the ssd parser reads two outputs: boxes `{}`, scores `{}`",
                boxes.as_deref().unwrap_or("boxes"),
                scores.as_deref().unwrap_or("scores")
            ),
        );
    }
    Ok(table)
}

/// The `ssd` parser table for a model with outputs `names` (shapes from `info` when the model
/// could be read): the boxes output is the [N, A, 4] one, else the one named like boxes; the
/// scores output the other one named like scores, else the other one. TF Object Detection API
/// SSDs (`tf_ssd`) have yxyx boxes and a background column, as have models whose labels file
/// starts with a background label. Returns the table and the outputs it chose.
pub(super) fn ssd_table(
    names: &[String],
    info: Option<&ModelInfo>,
    tf_ssd: bool,
    labels: Option<&Path>,
) -> (Table, Option<String>, Option<String>) {
    let shape_of = |name: &str| -> Option<Vec<Dim>> {
        info.and_then(|i| i.outputs.iter().find(|o| o.name == name))
            .map(|o| o.shape.clone())
    };
    let last_is_4 = |name: &str| {
        shape_of(name).is_some_and(|s| s.len() == 3 && s.last() == Some(&Dim::Fixed(4)))
    };
    let lower = |s: &String| s.to_ascii_lowercase();
    let boxes = names
        .iter()
        .find(|n| last_is_4(n))
        .or_else(|| {
            names
                .iter()
                .find(|n| lower(n).contains("box") || lower(n).contains("loc"))
        })
        .cloned();
    let scores = names
        .iter()
        .filter(|n| Some(*n) != boxes.as_ref())
        .find(|n| {
            let l = lower(n);
            l.contains("score") || l.contains("conf") || l.contains("cls") || l.contains("class")
        })
        .or_else(|| names.iter().find(|n| Some(*n) != boxes.as_ref()))
        .cloned();
    let mut table = Table::default();
    table.set("type", "ssd");
    if let Some(b) = &boxes {
        table.set("boxes_output", b.clone());
    }
    if let Some(s) = &scores {
        table.set("scores_output", s.clone());
    }
    table.set("box_format", if tf_ssd { "yxyx" } else { "xyxy" });
    table.set("normalized", true);
    let first_label = labels
        .and_then(|l| std::fs::read_to_string(l).ok())
        .and_then(|t| t.lines().next().map(|l| l.trim().to_ascii_lowercase()));
    let background_label = first_label.as_deref().is_some_and(|l| {
        matches!(
            l,
            "background" | "__background__" | "unlabeled" | "bg" | "???"
        )
    });
    if tf_ssd || background_label {
        table.set("background_class", 0);
    }
    (table, boxes, scores)
}

/// deepstream-app names built engines `MODEL_b<batch>_gpu<id>_<precision>.engine`; the ONNX
/// file they were built from is MODEL when it sits next to them.
fn onnx_beside_engine(engine: &Path) -> Option<PathBuf> {
    let name = engine.file_name()?.to_str()?;
    let stem = name.strip_suffix(".engine")?;
    let mut parts: Vec<&str> = stem.rsplitn(4, '_').collect();
    parts.reverse();
    let base = match parts.as_slice() {
        [base, b, gpu, _precision] if b.starts_with('b') && gpu.starts_with("gpu") => *base,
        _ => stem,
    };
    let candidate = engine.with_file_name(base);
    let onnx = if base.ends_with(".onnx") {
        candidate
    } else {
        engine.with_file_name(format!("{base}.onnx"))
    };
    onnx.is_file().then_some(onnx)
}

/// A path as written into the topology.
pub fn path_text(path: &Path) -> String {
    path.display().to_string()
}
