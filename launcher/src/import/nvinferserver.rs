//! `plugin-type=1` gies: nvinferserver configs (protobuf text format, `infer_config { ... }`)
//! → one infer stage. Triton over gRPC (`backend { triton { grpc { url } } }`) becomes
//! `backend = "triton"` on that server; Triton's in-process C API (`model_repo { root }`) has
//! no counterpart here, so the repository's ONNX model runs in ONNX Runtime instead.
//!
//! nvinferserver takes the network's input size from Triton's model config, not from its own
//! file, so the stage gets its preprocessing as its own `preprocess` table, whose size the
//! infer stage reads from the model (the server's metadata, or the ONNX file).

use std::path::{Path, PathBuf};

use super::ini::{ConfigError, GroupReader};
use super::nvinfer::{
    config_file, interpolation, operated_on, path_text, set_offsets, ssd_table, unique_id, Gie,
    Upstream,
};
use super::onnx::ModelInfo;
use super::prototxt::{self, Message};
use super::render::Table;
use super::{file_name, resolve, Notes};

/// Fields that only tune NVIDIA hardware or buffers: one "ignored" line.
const HARDWARE: &[&str] = &[
    "infer_config.gpu_ids",
    "infer_config.max_batch_size",
    "infer_config.backend.output_mem_type",
    "infer_config.backend.triton.grpc.enable_cuda_buffer_sharing",
    "infer_config.backend.triton.model_repo.strict_model_config",
    "infer_config.backend.triton.model_repo.log_level",
    "infer_config.backend.triton.model_repo.tf_gpu_memory_fraction",
    "infer_config.backend.triton.model_repo.tf_disable_soft_placement",
    "infer_config.backend.triton.model_repo.min_compute_capacity",
    "infer_config.backend.triton.model_repo.backend_dir",
    "infer_config.backend.triton.model_repo.cuda_device_memory",
    "infer_config.backend.triton.model_repo.pinned_memory_pool_byte_size",
    "infer_config.preprocess.frame_scaling_hw",
    "infer_config.extra",
];

/// A gie group whose `config-file` is an nvinferserver config; `upstream` is `Some` for a
/// secondary gie.
pub fn gie(
    r: &GroupReader<'_>,
    dir: &Path,
    notes: &mut Notes,
    upstream: Option<&[Upstream]>,
) -> Result<Option<Gie>, ConfigError> {
    let group = format!("[{}]", r.name());
    let (bytes, path) = config_file(r, dir, "nvinferserver")?;
    let root = prototxt::parse(&path, &bytes)?;
    let fname = file_name(&path);
    let at = format!("{group} {fname}");
    let here = path.parent().unwrap_or(dir).to_path_buf();
    let p = path.as_path();
    let Some(config) = root.message(p, "infer_config")? else {
        return Err(ConfigError::new(
            p,
            None,
            "no `infer_config { ... }` (an nvinferserver config keeps its settings there)",
        ));
    };
    let missing = |what: &str| ConfigError::new(p, Some(config.line), format!("no {what}"));

    // Where the network runs.
    let backend = config
        .message(p, "backend")?
        .ok_or_else(|| missing("infer_config.backend"))?;
    let Some(triton) = backend.message(p, "triton")? else {
        notes.not_mapped(
            format!("{at} infer_config.backend"),
            "only `triton { ... }` backends are converted; this gie is left out of the topology",
        );
        return Ok(None);
    };
    let model_name = triton
        .string(p, "model_name")?
        .ok_or_else(|| missing("infer_config.backend.triton.model_name"))?;
    let version = triton.int(p, "version")?.unwrap_or(-1);
    let mut infer = Table::default();
    infer.set("kind", "infer");
    let mut onnx = None;
    if let Some(grpc) = triton.message(p, "grpc")? {
        let url = grpc
            .string(p, "url")?
            .ok_or_else(|| missing("infer_config.backend.triton.grpc.url"))?;
        let server = if url.contains("://") {
            url
        } else {
            format!("grpc://{url}")
        };
        infer
            .set("model", model_name.clone())
            .set("backend", "triton")
            .set("server", server);
        if version > 0 {
            infer.set("model_version", version.to_string());
        }
    } else if let Some(repo) = triton.message(p, "model_repo")? {
        let roots: Vec<String> = repo
            .all("root")
            .filter_map(|f| match &f.value {
                prototxt::Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let found = roots
            .iter()
            .find_map(|r| repository_onnx(&resolve(&here, r), &model_name, version));
        let Some(found) = found else {
            notes.not_mapped(
                format!("{at} infer_config.backend.triton.model_repo"),
                format!(
                    "Triton's in-process C API is not available and no ONNX model \
                     `{model_name}/<version>/model.onnx` was found under {}; this gie is left \
                     out of the topology",
                    roots.join(", ")
                ),
            );
            return Ok(None);
        };
        notes.approximate(
            format!("{at} infer_config.backend.triton.model_repo"),
            format!(
                "Triton's in-process C API is not available: ONNX Runtime runs {} in the stage \
                 (or point `backend = \"triton\"` at a Triton server)",
                found.display()
            ),
        );
        infer.set("model", path_text(&found));
        onnx = Some(found);
    } else {
        return Err(missing(
            "infer_config.backend.triton.grpc { url } or model_repo { root }",
        ));
    }
    let outputs: Vec<String> = backend
        .all("outputs")
        .filter_map(|f| match &f.value {
            prototxt::Value::Message(m) => m.string(p, "name").ok().flatten(),
            _ => None,
        })
        .collect();
    backend.touch("inputs");

    let written = match r.int("gie-unique-id")? {
        Some(id) => {
            config.touch("unique_id");
            Some(id)
        }
        None => config.int(p, "unique_id")?,
    };
    let place = format!("{at} infer_config.unique_id");
    let unique_id = unique_id(written, upstream, &place, notes)
        .map_err(|e| ConfigError::new(p, config.field("unique_id").map(|f| f.line), e))?;
    infer.set("component_id", unique_id);

    // Which frames or objects it runs on.
    let input = root.message(p, "input_control")?;
    let process_mode = match input {
        Some(i) => i.string(p, "process_mode")?,
        None => None,
    };
    let clips = process_mode.as_deref() == Some("PROCESS_MODE_CLIP_OBJECTS");
    match upstream {
        None if clips => {
            notes.not_mapped(
                format!("{at} input_control.process_mode=PROCESS_MODE_CLIP_OBJECTS"),
                "a primary gie in secondary mode has no objects to run on",
            );
            return Ok(None);
        }
        None => {
            let interval = match r.int("interval")? {
                Some(v) => Some(v),
                None => input.map(|i| i.int(p, "interval")).transpose()?.flatten(),
            };
            if let Some(n) = interval.filter(|n| *n > 0) {
                infer.set("interval", n);
            }
        }
        Some(upstream) => {
            let on = match r.int("operate-on-gie-id")? {
                Some(v) => Some(v),
                None => input
                    .map(|i| i.int(p, "operate_on_gie_id"))
                    .transpose()?
                    .flatten(),
            };
            let place = format!("{at} input_control.operate_on_gie_id");
            let Some(target) = operated_on(on, &place, upstream, notes) else {
                return Ok(None);
            };
            infer.set("operate_on", target.stage.clone());
            let classes = match r.int_list("operate-on-class-ids")? {
                Some(ids) => ids,
                None => match input {
                    Some(i) => i.ints(p, "operate_on_class_ids")?,
                    None => Vec::new(),
                },
            };
            if !classes.is_empty() {
                infer.set("operate_on_classes", classes);
            }
            if let Some(i) = input {
                if let Some(n) = i.int(p, "secondary_reinfer_interval")?.filter(|n| *n > 0) {
                    infer.set("reinfer_interval", n);
                }
                i.touch("interval");
                if let Some(filter) = i
                    .message(p, "object_control")?
                    .map(|o| o.message(p, "bbox_filter"))
                    .transpose()?
                    .flatten()
                {
                    let w = filter.float(p, "min_width")?.unwrap_or(0.0);
                    let h = filter.float(p, "min_height")?.unwrap_or(0.0);
                    if w > 0.0 || h > 0.0 {
                        infer.set("min_object_size", vec![w, h]);
                    }
                }
            }
        }
    }
    if let Some(i) = input {
        if i.bool(p, "async_mode")?.unwrap_or(false) {
            notes.approximate(
                format!("{at} input_control.async_mode"),
                "vidmesh classifies in line: results sit on the frame whose crop was classified",
            );
        }
    }

    // Scaling and normalisation; the size comes from the model.
    let mut pre = Table::default();
    if let Some(pp) = config.message(p, "preprocess")? {
        preprocessing(pp, p, &at, &mut pre, notes)?;
    } else {
        pre.set("color_order", "rgb");
    }
    infer.inline("preprocess", pre);

    // What the outputs mean.
    let Some(post) = config.message(p, "postprocess")? else {
        notes.not_mapped(
            format!("{at} infer_config.postprocess"),
            "absent: nothing says how to read the outputs; this gie is left out of the topology",
        );
        return Ok(None);
    };
    let labels = post
        .string(p, "labelfile_path")?
        .map(|l| resolve(&here, &l));
    if let Some(l) = &labels {
        infer.set("labels_file", path_text(l));
    }
    let detector = if let Some(detection) = post.message(p, "detection")? {
        detection_keys(detection, p, &at, &mut infer, notes)?;
        let info = onnx.as_deref().and_then(ModelInfo::read);
        let names = match (&info, outputs.is_empty()) {
            (Some(i), true) => i.outputs.iter().map(|o| o.name.clone()).collect(),
            _ => outputs,
        };
        let func = detection.string(p, "custom_parse_bbox_func")?;
        infer.inline(
            "parser",
            ssd_parser(
                func.as_deref(),
                &names,
                info.as_ref(),
                labels.as_deref(),
                &at,
                notes,
            ),
        );
        true
    } else if let Some(classification) = post.message(p, "classification")? {
        if let Some(t) = classification.float(p, "threshold")? {
            infer.set("score_threshold", t.clamp(0.0, 1.0));
        }
        let mut parser = Table::default();
        parser.set("type", "classifier");
        if let Some(first) = outputs.first() {
            parser.set("output", first.clone());
        }
        infer.inline("parser", parser);
        false
    } else {
        notes.not_mapped(
            format!("{at} infer_config.postprocess"),
            "only detection { } and classification { } are converted (segmentation and \
             custom outputs need an infer stage with the matching parser written by hand); \
             this gie is left out of the topology",
        );
        return Ok(None);
    };

    if let Some(out) = root.message(p, "output_control")? {
        if out.bool(p, "output_tensor_meta")?.unwrap_or(false) {
            notes.not_mapped(
                format!("{at} output_control.output_tensor_meta"),
                "the raw output tensors are not attached to frames",
            );
        }
        let filter = out
            .message(p, "detect_control")?
            .map(|d| d.message(p, "default_filter"))
            .transpose()?
            .flatten()
            .map(|f| f.message(p, "bbox_filter"))
            .transpose()?
            .flatten();
        if let Some(f) = filter {
            for (key, w, h) in [
                ("min_size", "min_width", "min_height"),
                ("max_size", "max_width", "max_height"),
            ] {
                let (w, h) = (f.float(p, w)?, f.float(p, h)?);
                if w.is_some() || h.is_some() {
                    infer.set(key, vec![w.unwrap_or(0.0), h.unwrap_or(0.0)]);
                }
            }
        }
    }

    for key in ["config-file", "plugin-type", "enable", "batch-size"] {
        r.touch(key);
    }
    notes.unused(r, None);
    report_unused(&root, &fname, notes);
    Ok(Some(Gie {
        config_name: fname,
        preprocess: None,
        infer,
        unique_id,
        detector,
    }))
}

/// `ROOT/MODEL/VERSION/model.onnx`; version -1 (the latest) takes the highest numbered
/// version directory that has one.
fn repository_onnx(root: &Path, model: &str, version: i64) -> Option<PathBuf> {
    let dir = root.join(model);
    if version > 0 {
        let onnx = dir.join(version.to_string()).join("model.onnx");
        return onnx.is_file().then_some(onnx);
    }
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u64 = e.file_name().to_str()?.parse().ok()?;
            let onnx = e.path().join("model.onnx");
            onnx.is_file().then_some((v, onnx))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, onnx)| onnx)
}

/// `infer_config.preprocess` → the stage's `preprocess` table (without a size).
fn preprocessing(
    pp: &Message,
    p: &Path,
    at: &str,
    pre: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let order = match pp.string(p, "network_format")?.as_deref() {
        None | Some("IMAGE_FORMAT_RGB") => "rgb",
        Some("IMAGE_FORMAT_BGR") => "bgr",
        Some(other) => {
            notes.not_mapped(
                format!("{at} preprocess.network_format={other}"),
                "vidmesh feeds RGB or BGR; rgb written",
            );
            "rgb"
        }
    };
    pre.set("color_order", order);
    match pp.string(p, "tensor_order")?.as_deref() {
        None | Some("TENSOR_ORDER_LINEAR") | Some("TENSOR_ORDER_NONE") => {
            pre.set("layout", "nchw");
        }
        Some("TENSOR_ORDER_NHWC") => {
            pre.set("layout", "nhwc");
        }
        Some(other) => {
            return Err(ConfigError::new(
                p,
                pp.field("tensor_order").map(|f| f.line),
                format!(
                    "preprocess.tensor_order must be TENSOR_ORDER_LINEAR or TENSOR_ORDER_NHWC, got {other}"
                ),
            ))
        }
    }
    pp.touch("tensor_name");
    if pp.int(p, "maintain_aspect_ratio")?.unwrap_or(0) != 0 {
        pre.set("maintain_aspect_ratio", true);
        if pp.int(p, "symmetric_padding")?.unwrap_or(0) != 0 {
            pre.set("symmetric_padding", true);
        }
    } else {
        pp.touch("symmetric_padding");
    }
    let filter = pp.int(p, "frame_scaling_filter")?;
    let place = format!("{at} preprocess.frame_scaling_filter");
    pre.set("interpolation", interpolation(filter, &place, notes));
    if let Some(n) = pp.message(p, "normalize")? {
        if let Some(f) = n.float(p, "scale_factor")? {
            pre.set("net_scale_factor", f);
        }
        let offsets = n.floats(p, "channel_offsets")?;
        let place = format!("{at} preprocess.normalize.channel_offsets");
        set_offsets(&offsets, &place, pre, notes);
    }
    Ok(())
}

/// `postprocess.detection`: thresholds, NMS, per-class thresholds.
fn detection_keys(
    d: &Message,
    p: &Path,
    at: &str,
    infer: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    d.touch("num_detected_classes");
    let unit = |v: f64| v.clamp(0.0, 1.0);
    if let Some(nms) = d.message(p, "nms")? {
        if let Some(t) = nms.float(p, "confidence_threshold")? {
            infer.set("score_threshold", unit(t));
        }
        if let Some(t) = nms.float(p, "iou_threshold")? {
            infer.set("nms_iou", unit(t));
        }
        if let Some(k) = nms.int(p, "topk")?.filter(|k| *k > 0) {
            infer.set("top_k", k);
        }
    } else {
        let clustering = ["simple_cluster", "group_rectangle", "dbscan"]
            .into_iter()
            .find(|c| d.has(c));
        if let Some(c) = clustering {
            if let Some(t) = d
                .message(p, c)?
                .map(|m| m.float(p, "threshold"))
                .transpose()?
                .flatten()
            {
                infer.set("score_threshold", unit(t));
            }
            notes.approximate(
                format!("{at} postprocess.detection.{c}"),
                "vidmesh clusters with per-class NMS (nms { }), IoU 0.45 unless set",
            );
        }
    }
    let mut per_class = Table::default();
    for f in d.all("per_class_params") {
        let prototxt::Value::Message(entry) = &f.value else {
            continue;
        };
        let Some(class) = entry.int(p, "key")? else {
            continue;
        };
        if let Some(t) = entry
            .message(p, "value")?
            .map(|v| v.float(p, "pre_threshold"))
            .transpose()?
            .flatten()
        {
            let mut rules = Table::default();
            rules.set("score_threshold", unit(t));
            per_class.inline(&class.to_string(), rules);
        }
    }
    if !per_class.0.is_empty() {
        infer.inline("class_attrs", per_class);
    }
    Ok(())
}

/// The ssd parser for `custom_parse_bbox_func` and the model's output names (shapes from
/// `info` when the model could be read).
fn ssd_parser(
    func: Option<&str>,
    names: &[String],
    info: Option<&ModelInfo>,
    labels: Option<&Path>,
    at: &str,
    notes: &mut Notes,
) -> Table {
    let tf_ssd = func == Some("NvDsInferParseCustomTfSSD");
    match func {
        Some("NvDsInferParseCustomTfSSD") => {}
        Some(f) => notes.not_mapped(
            format!("{at} postprocess.detection.custom_parse_bbox_func={f}"),
            "vidmesh cannot load custom parser libraries; its ssd parser is configured instead \
             (boxes [N, anchors, 4], scores [N, anchors, classes]); the run stops if the model \
             has other outputs",
        ),
        None => notes.not_mapped(
            format!("{at} postprocess.detection"),
            "no custom_parse_bbox_func: nvinferserver's built-in parser has no vidmesh \
             equivalent; the ssd parser is configured instead",
        ),
    }
    ssd_table(names, info, tf_ssd, labels).0
}

/// Every field nothing read: hardware tuning as one "ignored" line, the rest one line each.
fn report_unused(root: &Message, fname: &str, notes: &mut Notes) {
    let unused = root.unused();
    let hardware: Vec<&str> = unused
        .iter()
        .map(|(path, _)| path.as_str())
        .filter(|path| HARDWARE.contains(path))
        .collect();
    if !hardware.is_empty() {
        notes.ignored(
            format!("{fname} {}", hardware.join(", ")),
            "NVIDIA GPU/memory settings; vidmesh runs on the CPU",
        );
    }
    for (path, line) in unused
        .iter()
        .filter(|(p, _)| !HARDWARE.contains(&p.as_str()))
    {
        notes.not_mapped(
            format!("{fname}:{line} {path}"),
            "vidmesh has no equivalent setting",
        );
    }
}
