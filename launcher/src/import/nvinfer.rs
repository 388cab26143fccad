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
use super::{file_name, resolve, short, Notes};

/// The converted primary detector.
#[derive(Debug, Clone)]
pub struct Detector {
    /// The nvinfer config's file name, for comments.
    pub config_name: String,
    pub preprocess: Table,
    pub infer: Table,
}

/// Reads the nvinfer config a gie group names: an error when the key is missing or the file
/// cannot be read, as deepstream-app would not start either.
fn nvinfer_config(r: &GroupReader<'_>, dir: &Path) -> Result<(KeyFile, PathBuf), ConfigError> {
    let Some(name) = r.string("config-file")? else {
        return Err(r.error(
            "enable",
            format!("[{}] has no config-file (the nvinfer config)", r.name()),
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
    Ok((KeyFile::parse(&path, &bytes)?, path))
}

/// `[primary-gie]` → (preprocess, infer), or `None` when vidmesh cannot run it (reported).
pub fn primary(
    r: &GroupReader<'_>,
    dir: &Path,
    notes: &mut Notes,
) -> Result<Option<Detector>, ConfigError> {
    let plugin = r.int("plugin-type")?.unwrap_or(0);
    if plugin != 0 {
        let name = r.string("config-file")?.unwrap_or_default();
        let path = resolve(dir, &name);
        if !path.is_file() {
            return Err(r.error(
                "config-file",
                format!(
                    "[primary-gie] config-file={name}: {} does not exist",
                    path.display()
                ),
            ));
        }
        notes.not_mapped(
            format!("[primary-gie] plugin-type={plugin} (nvinferserver / Triton)"),
            "vidmesh reads nvinfer configs only; no detector in the topology (write an nvinfer \
             config with onnx-file for the same model)",
        );
        return Ok(None);
    }
    let (file, path) = nvinfer_config(r, dir)?;
    let nvdir = path.parent().unwrap_or(dir).to_path_buf();
    let fname = file_name(&path);
    let Some(p) = file.reader("property") else {
        return Err(ConfigError::new(
            &path,
            None,
            "no [property] group (an nvinfer config keeps its settings there)",
        ));
    };

    let network_type = p.int("network-type")?.unwrap_or(0);
    let process_mode = p.int("process-mode")?.unwrap_or(1);
    if network_type != 0 || process_mode == 2 {
        notes.not_mapped(
            format!(
                "[primary-gie] {fname} network-type={network_type} process-mode={process_mode}"
            ),
            "vidmesh's infer stage runs full-frame detectors (network-type=0) only",
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
                    format!("[primary-gie] {fname} model-engine-file"),
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
                    format!("[primary-gie] {fname} {place}"),
                    "vidmesh runs ONNX models (onnx-file) with ONNX Runtime; no detector in \
                     the topology",
                );
                return Ok(None);
            }
        },
    };
    let info = ModelInfo::read(&model);
    let input = info.as_ref().and_then(|i| i.inputs.first());

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
                    format!("[primary-gie] {fname} network-input-order"),
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
                    format!("[primary-gie] {fname} infer-dims"),
                    "not set and the model's input size is dynamic; add infer-dims=C;H;W (no \
                     detector in the topology)",
                );
                return Ok(None);
            }
            (w, h)
        }
        _ => {
            notes.not_mapped(
                format!("[primary-gie] {fname} infer-dims"),
                format!(
                    "not set and the input size cannot be read from {}; add infer-dims=C;H;W \
                     (no detector in the topology)",
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
                format!("[primary-gie] {fname} infer-dims"),
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
            format!("[primary-gie] {fname} model-color-format={other}"),
            "vidmesh feeds RGB or BGR (0 or 1), not grayscale; rgb written",
        ),
    }
    if let Some(f) = p.float("net-scale-factor")? {
        pre.set("net_scale_factor", f);
    }
    if let Some(offsets) = p.float_list("offsets")? {
        match offsets.as_slice() {
            [v] => {
                pre.set("offsets", vec![*v, *v, *v]);
            }
            [a, b, c] => {
                pre.set("offsets", vec![*a, *b, *c]);
            }
            other => notes.not_mapped(
                format!("[primary-gie] {fname} offsets"),
                format!("{} values; vidmesh takes 1 or 3", other.len()),
            ),
        }
    }
    if p.bool("maintain-aspect-ratio")?.unwrap_or(false) {
        pre.set("maintain_aspect_ratio", true);
        if p.bool("symmetric-padding")?.unwrap_or(false) {
            pre.set("symmetric_padding", true);
        }
    } else {
        p.touch("symmetric-padding");
    }
    let interpolation = match p.int("scaling-filter")? {
        None | Some(0) => "nearest",
        Some(1) => "bilinear",
        Some(other) => {
            notes.approximate(
                format!("[primary-gie] {fname} scaling-filter={other}"),
                "vidmesh scales with nearest or bilinear; bilinear written",
            );
            "bilinear"
        }
    };
    pre.set("interpolation", interpolation);

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
    let unique_id = match r.int("gie-unique-id")? {
        Some(v) => {
            p.touch("gie-unique-id");
            Some(v)
        }
        None => p.int("gie-unique-id")?,
    };
    if let Some(id) = unique_id {
        if !(0..=i64::from(u32::MAX)).contains(&id) {
            return Err(p.error(
                "gie-unique-id",
                format!("gie-unique-id must be 0..=4294967295, got {id}"),
            ));
        }
        infer.set("component_id", id);
    }

    class_attributes(&file, &fname, &mut infer, notes)?;
    infer.inline(
        "parser",
        parser(&p, &fname, labels.as_deref(), info.as_ref(), notes)?,
    );

    let interval = match r.int("interval")? {
        Some(v) => {
            p.touch("interval");
            Some(v)
        }
        None => p.int("interval")?,
    };
    if let Some(n) = interval.filter(|n| *n > 0) {
        notes.not_mapped(
            format!("[primary-gie] interval={n}"),
            "vidmesh runs the detector on every frame; the tracker does not fill in skipped \
             frames",
        );
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
                "[primary-gie] {fname} network-mode={mode} ({})",
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
                "[primary-gie] {fname} cluster-mode={mode} ({})",
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
            format!("[primary-gie] {fname} output-tensor-meta=1"),
            "the raw output tensors are not attached to frames",
        );
    }
    if let Some(ids) = p.string("filter-out-class-ids")? {
        notes.not_mapped(
            format!("[primary-gie] {fname} filter-out-class-ids={ids}"),
            "vidmesh keeps every class the parser reports",
        );
    }
    for key in r.entries().iter().map(|e| e.key.as_str()) {
        if key.starts_with("bbox-border-color") || key.starts_with("bbox-bg-color") {
            r.touch(key);
            notes.not_mapped(
                format!("[primary-gie] {key}"),
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
        if g.name != "property" && !g.name.starts_with("class-attrs-") {
            notes.not_mapped(
                format!("{fname} [{}]", g.name),
                "a group nvinfer detectors do not use, or vidmesh does not know",
            );
        }
    }
    Ok(Some(Detector {
        config_name: fname,
        preprocess: pre,
        infer,
    }))
}

/// `[class-attrs-all]` → thresholds; per-class groups are reported (vidmesh has one set).
fn class_attributes(
    file: &KeyFile,
    fname: &str,
    infer: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    if let Some(c) = file.reader("class-attrs-all") {
        let threshold = match c.float("pre-cluster-threshold")? {
            Some(t) => Some(t),
            None => c.float("threshold")?,
        };
        if let Some(t) = threshold {
            infer.set("score_threshold", unit(&c, "pre-cluster-threshold", t)?);
        }
        if let Some(t) = c.float("nms-iou-threshold")? {
            infer.set("nms_iou", unit(&c, "nms-iou-threshold", t)?);
        }
        if let Some(k) = c.int("topk")? {
            if k > 0 {
                infer.set("top_k", k);
            }
        }
        notes.unused(&c, Some(fname));
    }
    for g in file
        .groups
        .iter()
        .filter(|g| g.name.starts_with("class-attrs-") && g.name != "class-attrs-all")
    {
        let keys: Vec<String> = g
            .entries
            .iter()
            .map(|e| format!("{}={}", e.key, short(&e.raw)))
            .collect();
        notes.approximate(
            format!("{fname} [{}] {}", g.name, keys.join(" ")),
            "vidmesh has one set of thresholds for all classes ([class-attrs-all]); per-class \
             values are not applied",
        );
    }
    Ok(())
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
    fname: &str,
    labels: Option<&Path>,
    info: Option<&ModelInfo>,
    notes: &mut Notes,
) -> Result<Table, ConfigError> {
    let func = p.string("parse-bbox-func-name")?;
    let lib = p.string("custom-lib-path")?;
    let place = match (&func, &lib) {
        (Some(f), Some(l)) => format!(
            "[primary-gie] {fname} parse-bbox-func-name={f} (custom-lib-path={})",
            file_name(Path::new(l))
        ),
        (Some(f), None) => format!("[primary-gie] {fname} parse-bbox-func-name={f}"),
        _ => format!("[primary-gie] {fname} parse-bbox-func-name"),
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
    if names.len() > 2 {
        notes.approximate(
            format!(
                "[primary-gie] {fname} output-blob-names={}",
                names.join(";")
            ),
            format!(
                "the ssd parser reads two outputs: boxes `{}`, scores `{}`",
                boxes.as_deref().unwrap_or("boxes"),
                scores.as_deref().unwrap_or("scores")
            ),
        );
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
    Ok(table)
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

/// `[secondary-gieN]`: classifiers and secondary detectors on objects. The nvinfer config must
/// exist (deepstream-app needs it); the group is reported as not mapped.
pub fn secondary(r: &GroupReader<'_>, dir: &Path, notes: &mut Notes) -> Result<(), ConfigError> {
    let (file, _) = nvinfer_config(r, dir)?;
    let p = file.reader("property");
    let get = |key: &str| -> Result<Option<String>, ConfigError> {
        match r.string(key)? {
            Some(v) => Ok(Some(v)),
            None => p.as_ref().map_or(Ok(None), |p| p.string(key)),
        }
    };
    let network = match p
        .as_ref()
        .map(|p| p.int("network-type"))
        .transpose()?
        .flatten()
    {
        Some(1) => "classifier",
        Some(0) => "detector",
        Some(2) => "segmentation",
        _ => "model",
    };
    let on_gie = get("operate-on-gie-id")?.unwrap_or_else(|| "1".into());
    let classes = get("operate-on-class-ids")?
        .map(|c| format!(", classes {c}"))
        .unwrap_or_default();
    notes.not_mapped(
        format!(
            "[{}] ({network} on the objects of gie {on_gie}{classes})",
            r.name()
        ),
        "vidmesh has no secondary (per-object) inference yet; objects keep the primary \
         detector's labels only",
    );
    Ok(())
}

/// A path as written into the topology.
pub fn path_text(path: &Path) -> String {
    path.display().to_string()
}
