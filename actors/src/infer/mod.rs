//! `infer`: runs a model on a batch and attaches what it found, like nvinfer.
//!
//! Primary mode (the default) runs on whole frames: the input tensor comes from a `preprocess`
//! stage upstream, or the stage preprocesses for itself when it has a `preprocess` table.
//! Secondary mode (`operate_on = "<infer stage>"`) runs on crops of that stage's objects,
//! batched across frames and sources, and writes classifier results onto the parent object
//! or adds child objects (faces inside persons). The model's outputs go through an output
//! parser (nvinfer's `parse-bbox-func-name`), then the post-processing rules, then are mapped
//! back from network pixels to frame pixels.

pub mod backend;
pub mod parser;
pub mod postprocess;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bytes::Bytes;
use serde::Deserialize;
use vidmesh_protocol::{
    Batch, ClassifierMeta, FrameMeta, LabelInfo, ObjectMeta, TensorMeta, TensorRow, UserMeta,
};

use crate::preprocess::{ImagePreprocessor, Region, RowRequest};
use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};
use backend::{BackendKind, BackendSettings, InferenceBackend, ModelIo};
use parser::{Detection, OutputParser, ParseInput, Parsed};
use postprocess::{ClassAttrs, ClassRules, NmsMode, PostProcess, RoiMargins};

pub const KIND: StageKind = StageKind {
    name: "infer",
    delivery: Delivery::ANY_REPLICA,
    summary: "run a model (ONNX Runtime, or a Triton/KServe-v2 server) on frames or object crops and parse its outputs (nvinfer)",
    check: |t, ctx| Settings::load(t, ctx).map(|_| ()),
    build: |t, ctx| {
        let s = Settings::load(t, ctx)?;
        Ok(Box::new(Infer::new(s, ctx)?))
    },
    makes_streams: None,
};

/// User meta kind on frames an infer stage skipped because of `interval`; the data is the
/// stage's `component_id`, little-endian u32. A tracker carries its tracks over such frames.
pub const SKIPPED_KIND: &str = "vidmesh.infer/skipped";
/// Object user meta kind holding keypoints (facial landmarks): little-endian f32 pairs x, y
/// in frame pixels.
pub const LANDMARKS_KIND: &str = "vidmesh.infer/landmarks-f32";
/// Frame user meta kind of a semantic segmentation: header of little-endian u32 width, height,
/// then f32 scale_x, scale_y, offset_x, offset_y (frame → map pixels, as [`TensorRow`]), then
/// one byte per map pixel: the class id, 255 for none.
pub const SEGMENTATION_KIND: &str = "vidmesh.infer/segmentation-u8";

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Path to the ONNX model (nvinfer `onnx-file`); with `backend = "triton"`, the model's
    /// name on the server. Required.
    pub model: String,
    /// Default "ort".
    #[serde(default)]
    pub backend: BackendKind,
    /// `backend = "triton"`: the KServe-v2 gRPC endpoint, `grpc://host:port`, or
    /// `grpcs://host:port` over TLS. Required there.
    #[serde(default)]
    pub server: Option<String>,
    /// `grpcs://` servers: `{ ca, cert, key, domain }` (a private CA's PEM file, the client
    /// certificate and key for mutual TLS, the name the server's certificate carries).
    #[serde(default)]
    pub tls: Option<backend::triton::TlsFiles>,
    /// `backend = "triton"`: the model version to use; empty = the server's choice.
    #[serde(default)]
    pub model_version: String,
    /// `backend = "triton"`: bound on connecting and on each request. Default 10s.
    #[serde(default = "request_timeout_default", with = "humantime_serde")]
    pub request_timeout: std::time::Duration,
    /// nvinfer `gie-unique-id`: written into each object's `component_id`. Default 1.
    #[serde(default = "one")]
    pub component_id: u32,
    /// Class labels by class id (nvinfer `labelfile-path` content).
    #[serde(default)]
    pub labels: Vec<String>,
    /// A file with one label per line, instead of `labels`; or, as nvinfer's classifier label
    /// files, labels separated by `;` on the first line.
    #[serde(default)]
    pub labels_file: Option<String>,
    /// Minimum confidence kept (nvinfer `pre-cluster-threshold`). Default 0.5.
    #[serde(default = "half")]
    pub score_threshold: f32,
    /// Boxes overlapping more than this are suppressed (nvinfer `nms-iou-threshold`).
    /// Default 0.45.
    #[serde(default = "nms_default")]
    pub nms_iou: f32,
    /// "class" (default), "agnostic" or "none".
    #[serde(default)]
    pub nms: NmsMode,
    /// Most objects kept per frame (or per crop) after NMS (nvinfer `topk`). Default 100.
    #[serde(default = "top_k_default")]
    pub top_k: usize,
    /// Least width and height of a kept object, frame pixels (`detected-min-w/h`).
    #[serde(default)]
    pub min_size: [f32; 2],
    /// Largest width and height of a kept object, frame pixels; 0 = no limit.
    #[serde(default)]
    pub max_size: [f32; 2],
    /// Objects must lie inside these margins from the frame's edges (`roi-*-offset`).
    #[serde(default)]
    pub roi: RoiMargins,
    /// Per-class overrides of the five keys above, by class id (`[class-attrs-N]`).
    #[serde(default)]
    pub class_attrs: BTreeMap<String, ClassAttrs>,
    /// Classes never reported (`filter-out-class-ids`).
    #[serde(default)]
    pub filter_out_classes: Vec<i32>,
    /// How to read the model's outputs: `{ type = "<parser>", ...its options }`.
    pub parser: toml::Table,
    /// Preprocess in this stage (nvinfer's preprocessing keys, as the `preprocess` stage takes
    /// them; width and height default to the model's input). Required with `operate_on`.
    #[serde(default)]
    pub preprocess: Option<toml::Table>,
    /// Secondary mode: run on the objects of this infer stage (nvinfer `operate-on-gie-id`).
    #[serde(default)]
    pub operate_on: Option<String>,
    /// With `operate_on`, only objects of these classes; empty = all (`operate-on-class-ids`).
    #[serde(default)]
    pub operate_on_classes: Vec<i32>,
    /// With `operate_on`, skip objects smaller than this (`input-object-min-width/height`).
    #[serde(default)]
    pub min_object_size: [f32; 2],
    /// With `operate_on`, re-run on a tracked object only every this many frames and reuse
    /// its last classifier result in between (`secondary-reinfer-interval`); 0 = every frame.
    #[serde(default)]
    pub reinfer_interval: u64,
    /// Run on every (interval + 1)-th frame of each source only; the tracker carries objects
    /// over the others (nvinfer `interval`). Default 0.
    #[serde(default)]
    pub interval: u64,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime decide. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Let idle ONNX Runtime threads spin instead of sleeping. Default false: in a pipeline the
    /// decoder and encoder threads need those cycles more than inference needs the lower wake-up
    /// latency.
    #[serde(default)]
    pub spinning: bool,
    /// Path to libonnxruntime.so; defaults to $ORT_DYLIB_PATH, then the .venv the setup makes.
    #[serde(default)]
    pub ort_library: Option<String>,
    /// ONNX Runtime inter-op threads (graph branches run at once); 0 = sequential execution.
    #[serde(default)]
    pub inter_threads: usize,
    /// Graph optimisation level: "all" (default), "extended", "basic", "disable".
    #[serde(default)]
    pub optimization: backend::Optimization,
    /// "cpu" (default) or "cuda:N" (needs the `gpu-ort` feature and onnxruntime-gpu).
    #[serde(default)]
    pub device: backend::Device,
    /// Put ONNX Runtime's TensorRT execution provider in front of CUDA's. Default false.
    #[serde(default)]
    pub tensorrt: bool,
    /// "fp32" (default) or "fp16" (TensorRT may build fp16 engines).
    #[serde(default)]
    pub precision: backend::Precision,
    /// Directory where TensorRT keeps built engines between runs.
    #[serde(default)]
    pub engine_cache: Option<String>,
}

fn one() -> u32 {
    1
}
fn half() -> f32 {
    0.5
}
fn nms_default() -> f32 {
    0.45
}
fn top_k_default() -> usize {
    100
}
fn request_timeout_default() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// Settings after everything that can be checked without loading the model was checked.
struct Loaded {
    settings: Settings,
    model: PathBuf,
    backend: BackendSettings,
    parser: Box<dyn OutputParser>,
    post: PostProcess,
    /// The component id of the stage `operate_on` names.
    parent_component: Option<u32>,
}

impl Settings {
    /// Parses and checks everything that can be checked without loading the model.
    fn load(table: &toml::Table, ctx: &BuildContext) -> Result<Loaded, StageError> {
        let mut s: Settings = settings::parse(table)?;
        // A model file for ONNX Runtime; a name on the server for triton (messages show it).
        let (model, triton) = match (s.backend, &s.server) {
            (BackendKind::Ort, None) => (backend::model_file(&s.model, ctx)?, None),
            (BackendKind::Triton, Some(server)) => {
                // TOML strings are UTF-8, so the lossy conversion loses nothing.
                let resolve = |p: &std::path::Path| ctx.resolve(&p.to_string_lossy());
                let tls = s.tls.as_ref().map(|t| backend::triton::TlsFiles {
                    ca: t.ca.as_deref().map(resolve),
                    cert: t.cert.as_deref().map(resolve),
                    key: t.key.as_deref().map(resolve),
                    domain: t.domain.clone(),
                });
                (
                    PathBuf::from(&s.model),
                    Some(backend::triton::TritonSettings::new(
                        server,
                        &s.model,
                        &s.model_version,
                        s.request_timeout,
                        tls.as_ref(),
                    )?),
                )
            }
            (BackendKind::Triton, None) => {
                return Err(StageError::Settings(
                    "backend = \"triton\" needs `server = \"grpc://host:port\"`".into(),
                ))
            }
            (BackendKind::Ort, Some(_)) => {
                return Err(StageError::Settings(
                    "`server` is a key of backend = \"triton\"; this stage uses ONNX Runtime"
                        .into(),
                ))
            }
        };
        let backend = BackendSettings {
            kind: s.backend,
            model: model.clone(),
            threads: s.threads,
            inter_threads: s.inter_threads,
            spinning: s.spinning,
            ort_library: s.ort_library.as_deref().map(|p| ctx.resolve(p)),
            optimization: s.optimization,
            device: s.device,
            tensorrt: s.tensorrt,
            precision: s.precision,
            engine_cache: s.engine_cache.as_deref().map(|p| ctx.resolve(p)),
            triton,
        };
        backend.check()?;
        if let Some(file) = &s.labels_file {
            let path = ctx.resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                StageError::Settings(format!("cannot read labels_file {}: {e}", path.display()))
            })?;
            s.labels = labels_from_file(&text);
        }
        let parser = parser::build_parser(&s.parser).map_err(StageError::Settings)?;
        let defaults = ClassRules {
            score_threshold: s.score_threshold,
            nms_iou: s.nms_iou,
            top_k: s.top_k,
            min_size: s.min_size,
            max_size: s.max_size,
            roi: s.roi,
        };
        let post = PostProcess::new(
            defaults,
            &s.class_attrs,
            s.nms,
            s.top_k,
            s.filter_out_classes.clone(),
        )
        .map_err(StageError::Settings)?;
        let parent_component = match &s.operate_on {
            None => None,
            Some(name) => {
                if s.preprocess.is_none() {
                    return Err(StageError::Settings(
                        "operate_on needs a `preprocess` table: a secondary infer stage crops and preprocesses objects itself".into(),
                    ));
                }
                Some(component_of(name, ctx)?)
            }
        };
        if s.min_object_size.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(StageError::Settings(
                "min_object_size must be non-negative".into(),
            ));
        }
        Ok(Loaded {
            settings: s,
            model,
            backend,
            parser,
            post,
            parent_component,
        })
    }
}

/// The `component_id` of infer stage `name` of the topology.
fn component_of(name: &str, ctx: &BuildContext) -> Result<u32, StageError> {
    let infer_stages = || {
        ctx.peers
            .iter()
            .filter(|(_, p)| p.kind == KIND.name)
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let peer = ctx
        .peers
        .get(name)
        .filter(|p| p.kind == KIND.name)
        .ok_or_else(|| {
            StageError::Settings(format!(
                "operate_on = \"{name}\" is not an infer stage of this topology (infer stages: {})",
                infer_stages()
            ))
        })?;
    match peer.table.get("component_id") {
        None => Ok(1),
        Some(v) => v
            .as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                StageError::Settings(format!("stage `{name}` has an invalid component_id"))
            }),
    }
}

/// The last classifier result of a tracked object, for `reinfer_interval`.
struct CachedResult {
    frame_num: u64,
    result: Option<ClassifierMeta>,
}

/// The running stage.
pub struct Infer {
    settings: Settings,
    model_path: PathBuf,
    backend: Box<dyn InferenceBackend>,
    parser: Box<dyn OutputParser>,
    post: PostProcess,
    images: Option<ImagePreprocessor>,
    parent_component: Option<u32>,
    /// (source id, track id) → last result.
    cache: HashMap<(u32, u64), CachedResult>,
    /// Objects of this batch (frame index, object index) whose track gets a row on an
    /// earlier frame of the same batch: they take that row's result once it is placed.
    deferred: Vec<(usize, usize, (u32, u64))>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    frames: u64,
    skipped_frames: u64,
    rows: u64,
    objects: u64,
    cached: u64,
    /// Time inside the backend (ONNX Runtime's session runs), to tell the stage's own
    /// overhead (tensor checks, parsing, post-processing, placement) from the model's.
    backend_time: std::time::Duration,
}

impl Infer {
    fn new(loaded: Loaded, ctx: &BuildContext) -> Result<Self, StageError> {
        let Loaded {
            settings,
            model,
            backend,
            parser,
            post,
            parent_component,
        } = loaded;
        let backend = backend::open(&backend)?;
        let io = backend.io().clone();
        parser
            .check(&io)
            .map_err(|e| StageError::Settings(format!("model {}: {e}", model.display())))?;
        if let Some(classes) = parser.class_count(&io) {
            if !settings.labels.is_empty() && settings.labels.len() != classes {
                return Err(StageError::Settings(format!(
                    "{} labels given, but model {} distinguishes {classes} classes",
                    settings.labels.len(),
                    model.display()
                )));
            }
        }
        let images = match &settings.preprocess {
            Some(table) => Some(own_preprocessor(table, &io, &model)?),
            None => {
                check_upstream_preprocess(ctx, &io, &model)?;
                None
            }
        };
        Ok(Self {
            settings,
            model_path: model,
            backend,
            parser,
            post,
            images,
            parent_component,
            cache: HashMap::new(),
            deferred: Vec::new(),
            stats: Stats::default(),
        })
    }

    fn label(&self, class_id: i32) -> String {
        usize::try_from(class_id)
            .ok()
            .and_then(|i| self.settings.labels.get(i))
            .cloned()
            .unwrap_or_else(|| class_id.to_string())
    }

    fn check_input(&self, tensor: &TensorMeta, frames: usize) -> Result<(), StageError> {
        let io = self.backend.io();
        if !shape_fits(&io.input_shape, &tensor.shape) {
            return Err(StageError::Input(format!(
                "model {} expects input `{}` of shape {}, but the preprocessed tensor has shape {:?}; set the preprocess stage's width/height/layout to match the model",
                self.model_path.display(),
                io.input_name,
                ModelIo::shape_text(&io.input_shape),
                tensor.shape
            )));
        }
        if tensor.shape.first() != Some(&tensor.rows.len()) {
            return Err(StageError::Input(format!(
                "tensor batch dimension {:?} does not match its {} rows",
                tensor.shape.first(),
                tensor.rows.len()
            )));
        }
        if let Some(row) = tensor.rows.iter().find(|r| r.frame as usize >= frames) {
            return Err(StageError::Input(format!(
                "tensor row names frame {} of a batch of {frames}",
                row.frame
            )));
        }
        Ok(())
    }

    /// Whether this frame is one `interval` lets through.
    fn runs_on(&self, frame: &FrameMeta) -> bool {
        frame.frame_num.is_multiple_of(self.settings.interval + 1)
    }

    /// The rows this stage preprocesses itself: whole frames, or the crops of qualifying
    /// objects whose cached result is too old.
    fn own_rows(&mut self, batch: &mut Batch) -> Vec<RowRequest> {
        let mut rows = Vec::new();
        // Tracks given a row in this batch, with that row's frame number.
        let mut scheduled: HashMap<(u32, u64), u64> = HashMap::new();
        self.deferred.clear();
        for (fi, frame) in batch.frames.iter_mut().enumerate() {
            if !self.runs_on_frame(frame) {
                continue;
            }
            let Some(parent) = self.parent_component else {
                rows.push(RowRequest {
                    frame: fi as u32,
                    object: None,
                    region: None,
                });
                continue;
            };
            let s = &self.settings;
            for (oi, object) in frame.objects.iter_mut().enumerate() {
                if object.component_id != parent
                    || (!s.operate_on_classes.is_empty()
                        && !s.operate_on_classes.contains(&object.class_id))
                    || object.bbox.width < s.min_object_size[0]
                    || object.bbox.height < s.min_object_size[1]
                {
                    continue;
                }
                let key = object.track_id.map(|t| (frame.source_id, t));
                if let Some(key) = key.filter(|_| s.reinfer_interval > 0) {
                    let age = |since: u64| frame.frame_num.saturating_sub(since);
                    if scheduled
                        .get(&key)
                        .is_some_and(|&f| age(f) < s.reinfer_interval)
                    {
                        self.deferred.push((fi, oi, key));
                        self.stats.cached += 1;
                        continue;
                    }
                }
                if let Some(track) = object.track_id {
                    if let Some(cached) = self.cache.get(&(frame.source_id, track)) {
                        let age = frame.frame_num.saturating_sub(cached.frame_num);
                        if s.reinfer_interval > 0 && age < s.reinfer_interval {
                            if let Some(result) = &cached.result {
                                object.classifiers.push(result.clone());
                            }
                            self.stats.cached += 1;
                            continue;
                        }
                    }
                }
                if let Some(region) = Region::of_box(&object.bbox, frame.width, frame.height) {
                    rows.push(RowRequest {
                        frame: fi as u32,
                        object: Some(oi as u32),
                        region: Some(region),
                    });
                    if let Some(key) = key.filter(|_| s.reinfer_interval > 0) {
                        scheduled.insert(key, frame.frame_num);
                    }
                }
            }
        }
        rows
    }

    /// Interval check that also marks skipped frames for the tracker.
    fn runs_on_frame(&mut self, frame: &mut FrameMeta) -> bool {
        if self.runs_on(frame) {
            return true;
        }
        self.stats.skipped_frames += 1;
        frame.user.push(UserMeta {
            kind: SKIPPED_KIND.to_string(),
            data: Bytes::copy_from_slice(&self.settings.component_id.to_le_bytes()),
        });
        false
    }

    /// Places what the parser found for one row of a `net` (width, height) input.
    fn place(&mut self, frame: &mut FrameMeta, row: &TensorRow, parsed: Parsed, net: (f32, f32)) {
        let (fw, fh) = (frame.width as f32, frame.height as f32);
        let component_id = self.settings.component_id;
        // What the model saw: the whole frame, or the crop of the parent object. A box a
        // model extends into the letterbox padding is cut back to it.
        let seen = row
            .object
            .and_then(|i| frame.objects.get(i as usize))
            .and_then(|o| Region::of_box(&o.bbox, frame.width, frame.height))
            .map(|r| {
                let (x, y) = (r.x as f32, r.y as f32);
                vidmesh_protocol::BBox::from_corners(x, y, x + r.width as f32, y + r.height as f32)
            })
            .unwrap_or(vidmesh_protocol::BBox::from_corners(0.0, 0.0, fw, fh));
        let mapped: Vec<Detection> = parsed
            .detections
            .into_iter()
            .map(|d| Detection {
                bbox: clip_to(row.transform.to_frame(d.bbox), &seen),
                landmarks: d
                    .landmarks
                    .iter()
                    .map(|&(x, y)| {
                        let t = &row.transform;
                        ((x - t.offset_x) / t.scale_x, (y - t.offset_y) / t.scale_y)
                    })
                    .collect(),
                ..d
            })
            .collect();
        let kept = self.post.apply(mapped, fw, fh);
        self.stats.objects += kept.len() as u64;
        for d in kept {
            let mut user = Vec::new();
            if !d.landmarks.is_empty() {
                let bytes: Vec<u8> = d
                    .landmarks
                    .iter()
                    .flat_map(|&(x, y)| x.to_le_bytes().into_iter().chain(y.to_le_bytes()))
                    .collect();
                user.push(UserMeta {
                    kind: LANDMARKS_KIND.to_string(),
                    data: bytes.into(),
                });
            }
            frame.objects.push(ObjectMeta {
                component_id,
                class_id: d.class_id,
                label: self.label(d.class_id),
                confidence: d.confidence,
                bbox: d.bbox,
                parent: row.object,
                mask: d.mask,
                user,
                ..Default::default()
            });
        }
        if !parsed.classes.is_empty() {
            let labels: Vec<LabelInfo> = parsed
                .classes
                .iter()
                .filter(|c| self.post.keeps_score(c.class_id, c.probability))
                .map(|c| LabelInfo {
                    class_id: c.class_id,
                    label: self.label(c.class_id),
                    probability: c.probability,
                })
                .collect();
            self.attach_classes(frame, row.object, labels);
        }
        if let Some(seg) = parsed.segmentation {
            frame.user.push(UserMeta {
                kind: SEGMENTATION_KIND.to_string(),
                data: encode_segmentation(&seg, row, net),
            });
        }
    }

    /// Classifier labels go onto the object the row is a crop of; a full-frame classifier
    /// adds one object covering the frame, labelled with its best class.
    fn attach_classes(
        &mut self,
        frame: &mut FrameMeta,
        object: Option<u32>,
        labels: Vec<LabelInfo>,
    ) {
        let component_id = self.settings.component_id;
        let meta = (!labels.is_empty()).then(|| ClassifierMeta {
            component_id,
            labels: labels.clone(),
        });
        match object.and_then(|i| frame.objects.get_mut(i as usize)) {
            Some(parent) => {
                if let Some(track) = parent.track_id {
                    self.cache.insert(
                        (frame.source_id, track),
                        CachedResult {
                            frame_num: frame.frame_num,
                            result: meta.clone(),
                        },
                    );
                }
                parent.classifiers.extend(meta);
            }
            None => {
                if let (Some(best), Some(meta)) = (labels.first(), meta) {
                    self.stats.objects += 1;
                    frame.objects.push(ObjectMeta {
                        component_id,
                        class_id: best.class_id,
                        label: best.label.clone(),
                        confidence: best.probability,
                        bbox: vidmesh_protocol::BBox::from_corners(
                            0.0,
                            0.0,
                            frame.width as f32,
                            frame.height as f32,
                        ),
                        classifiers: vec![meta],
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// Objects deferred by [`Self::own_rows`] get the result their track's row just placed.
    fn give_deferred(&mut self, frames: &mut [FrameMeta]) {
        for (fi, oi, key) in self.deferred.drain(..) {
            let result = self.cache.get(&key).and_then(|c| c.result.clone());
            if let (Some(result), Some(object)) = (
                result,
                frames.get_mut(fi).and_then(|f| f.objects.get_mut(oi)),
            ) {
                object.classifiers.push(result);
            }
        }
    }

    /// Forgets cached results of tracks not seen for a long while, so the cache stays small
    /// on endless streams.
    fn prune_cache(&mut self, frames: &[FrameMeta]) {
        if self.cache.len() < 4096 {
            return;
        }
        let keep = (self.settings.reinfer_interval * 4).max(300);
        let newest: HashMap<u32, u64> = frames.iter().map(|f| (f.source_id, f.frame_num)).collect();
        self.cache.retain(|(source, _), c| {
            newest
                .get(source)
                .is_none_or(|&n| n.saturating_sub(c.frame_num) <= keep)
        });
    }
}

/// Labels from a labels file: one per line (detectors), or nvinfer's classifier format of
/// `;`-separated labels per output layer, of which the first line is this stage's.
fn labels_from_file(text: &str) -> Vec<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.clone().next() {
        Some(first) if first.contains(';') => first
            .split(';')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        _ => lines.by_ref().map(str::to_string).collect(),
    }
}

/// `b` cut to the rectangle `to`.
fn clip_to(b: vidmesh_protocol::BBox, to: &vidmesh_protocol::BBox) -> vidmesh_protocol::BBox {
    let left = b.left.clamp(to.left, to.right());
    let top = b.top.clamp(to.top, to.bottom());
    let right = b.right().clamp(to.left, to.right());
    let bottom = b.bottom().clamp(to.top, to.bottom());
    vidmesh_protocol::BBox::from_corners(left, top, right, bottom)
}

/// Does a tensor of shape `got` fit a model input declared as `declared` (-1 = any)? The batch
/// dimension is free: fixed batches run in chunks.
fn shape_fits(declared: &[i64], got: &[usize]) -> bool {
    declared.len() == got.len()
        && declared
            .iter()
            .zip(got)
            .skip(1)
            .all(|(&e, &g)| e < 0 || e as usize == g)
}

/// The preprocessor of a stage with its own `preprocess` table: width and height default to
/// the model's input size, and must match it when given.
fn own_preprocessor(
    table: &toml::Table,
    io: &ModelIo,
    model: &std::path::Path,
) -> Result<ImagePreprocessor, StageError> {
    let mut table = table.clone();
    let layout = table
        .get("layout")
        .and_then(|l| l.as_str())
        .unwrap_or("nchw")
        .to_string();
    let (h_axis, w_axis) = if layout == "nhwc" { (1, 2) } else { (2, 3) };
    let dim = |axis: usize| io.input_shape.get(axis).copied().filter(|d| *d > 0);
    for (key, axis) in [("width", w_axis), ("height", h_axis)] {
        if !table.contains_key(key) {
            let value = dim(axis).ok_or_else(|| {
                StageError::Settings(format!(
                    "model {} input has no fixed {key} (shape {}); set preprocess.{key}",
                    model.display(),
                    ModelIo::shape_text(&io.input_shape)
                ))
            })?;
            table.insert(key.to_string(), toml::Value::Integer(value));
        }
    }
    let settings: crate::preprocess::Settings =
        settings::parse(&table).map_err(|e| StageError::Settings(format!("preprocess: {e}")))?;
    let images = ImagePreprocessor::new(settings)?;
    let s = images.settings();
    let shape = match layout.as_str() {
        "nhwc" => vec![1, s.height as usize, s.width as usize, 3],
        _ => vec![1, 3, s.height as usize, s.width as usize],
    };
    if !shape_fits(&io.input_shape, &shape) {
        return Err(StageError::Settings(format!(
            "model {} expects input `{}` of shape {}, but preprocess makes {:?} ({} layout); fix preprocess.width/height/layout",
            model.display(),
            io.input_name,
            ModelIo::shape_text(&io.input_shape),
            shape,
            layout
        )));
    }
    Ok(images)
}

/// With a separate `preprocess` stage feeding this one (directly), check its tensor shape
/// against the model before any frame flows.
fn check_upstream_preprocess(
    ctx: &BuildContext,
    io: &ModelIo,
    model: &std::path::Path,
) -> Result<(), StageError> {
    let Some(me) = ctx.peers.get(&ctx.stage_name) else {
        return Ok(()); // Built outside a topology (tests, tools).
    };
    for name in &me.inputs {
        let Some(peer) = ctx.peers.get(name).filter(|p| p.kind == "preprocess") else {
            continue;
        };
        let Ok(s) = settings::parse::<crate::preprocess::Settings>(&peer.table) else {
            continue; // That stage reports its own settings errors.
        };
        let (w, h) = (s.width as usize, s.height as usize);
        let shape = match s.layout {
            crate::preprocess::Layout::Nhwc => vec![1, h, w, 3],
            crate::preprocess::Layout::Nchw => vec![1, 3, h, w],
        };
        if !shape_fits(&io.input_shape, &shape) {
            return Err(StageError::Settings(format!(
                "model {} expects input `{}` of shape {}, but preprocess stage `{name}` makes {:?}; set its width/height/layout to match the model",
                model.display(),
                io.input_name,
                ModelIo::shape_text(&io.input_shape),
                shape
            )));
        }
    }
    Ok(())
}

fn encode_segmentation(seg: &parser::Segmentation, row: &TensorRow, net: (f32, f32)) -> Bytes {
    let t = &row.transform;
    // The map is often smaller than the network input (1/4, 1/8): compose frame → network
    // with network → map so that consumers get frame → map.
    let (kx, ky) = (seg.width as f32 / net.0, seg.height as f32 / net.1);
    let mut out = Vec::with_capacity(24 + seg.class_map.len());
    out.extend_from_slice(&(seg.width as u32).to_le_bytes());
    out.extend_from_slice(&(seg.height as u32).to_le_bytes());
    for v in [
        t.scale_x * kx,
        t.scale_y * ky,
        t.offset_x * kx,
        t.offset_y * ky,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend(
        seg.class_map
            .iter()
            .map(|&c| u8::try_from(c).ok().filter(|&c| c != 255).unwrap_or(255)),
    );
    out.into()
}

impl Stage for Infer {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        if batch.frames.is_empty() {
            return out.emit(batch);
        }
        let tensor = if self.images.is_some() {
            let rows = self.own_rows(&mut batch);
            if rows.is_empty() {
                self.stats.frames += batch.frames.len() as u64;
                return out.emit(batch);
            }
            let images = self.images.as_mut().expect("checked");
            images.tensor(&batch.frames, &rows)?
        } else {
            let input_name = &self.backend.io().input_name;
            let position = batch
                .tensors
                .iter()
                .position(|t| t.name.is_empty() || &t.name == input_name)
                .ok_or_else(|| {
                    StageError::Input(format!(
                        "batch {} carries no input tensor for model input `{input_name}`: put a preprocess stage before this infer stage, or give it a `preprocess` table",
                        batch.batch_id
                    ))
                })?;
            // The tensor is consumed here; downstream stages only need the objects.
            let mut tensor = batch.tensors.swap_remove(position);
            // Frames `interval` skips are dropped from the tensor here.
            if self.settings.interval > 0 {
                tensor = self.skip_rows(tensor, &mut batch.frames)?;
            }
            tensor
        };
        self.check_input(&tensor, batch.frames.len())?;
        let (net_w, net_h) = tensor
            .layout
            .and_then(|l| l.image_size(&tensor.shape))
            .ok_or_else(|| {
                StageError::Input(format!(
                    "tensor of shape {:?} is not an image batch",
                    tensor.shape
                ))
            })?;
        let outputs = if tensor.rows.is_empty() {
            Vec::new()
        } else {
            let input = tensor_values(&tensor)?;
            let started = std::time::Instant::now();
            let outputs = backend::run_batch(self.backend.as_mut(), &input, &tensor.shape)?;
            self.stats.backend_time += started.elapsed();
            outputs
        };
        let min_score = self.post.min_score();
        for (index, row) in tensor.rows.iter().enumerate() {
            let parsed = self.parser.parse(&ParseInput {
                outputs: &outputs,
                index,
                net_width: net_w as f32,
                net_height: net_h as f32,
                min_score,
            })?;
            let frame = &mut batch.frames[row.frame as usize];
            self.place(frame, row, parsed, (net_w as f32, net_h as f32));
        }
        self.give_deferred(&mut batch.frames);
        self.stats.rows += tensor.rows.len() as u64;
        self.stats.frames += batch.frames.len() as u64;
        self.prune_cache(&batch.frames);
        out.emit(batch)
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        Ok(StageReport::default()
            .with("frames", self.stats.frames)
            .with("skipped_frames", self.stats.skipped_frames)
            .with("inferred_images", self.stats.rows)
            .with("cached_results", self.stats.cached)
            .with("objects", self.stats.objects)
            .with(
                "backend_ms",
                format!("{:.1}", self.stats.backend_time.as_secs_f64() * 1e3),
            ))
    }

    fn values(&self) -> Vec<crate::stage::StageValue> {
        vec![crate::stage::StageValue::new(
            "infer_backend_seconds_total",
            "Time spent inside the inference backend (the model's runs)",
            crate::stage::ValueKind::Counter,
            self.stats.backend_time.as_secs_f64(),
        )]
    }
}

impl Infer {
    /// Drops the rows of frames `interval` skips from an upstream tensor.
    fn skip_rows(
        &mut self,
        tensor: TensorMeta,
        frames: &mut [FrameMeta],
    ) -> Result<TensorMeta, StageError> {
        let mut keep_frame = Vec::with_capacity(frames.len());
        for frame in frames.iter_mut() {
            keep_frame.push(self.runs_on_frame(frame));
        }
        if keep_frame.iter().all(|k| *k) {
            return Ok(tensor);
        }
        let per_row = tensor.shape[1..].iter().product::<usize>() * tensor.dtype.size();
        let mut data = Vec::with_capacity(tensor.data.len());
        let mut rows = Vec::new();
        for (i, row) in tensor.rows.iter().enumerate() {
            if keep_frame.get(row.frame as usize).copied().unwrap_or(false) {
                let bytes = tensor
                    .data
                    .get(i * per_row..(i + 1) * per_row)
                    .ok_or_else(|| {
                        StageError::Input("the input tensor is shorter than its shape".into())
                    })?;
                data.extend_from_slice(bytes);
                rows.push(*row);
            }
        }
        let mut shape = tensor.shape.clone();
        shape[0] = rows.len();
        Ok(TensorMeta {
            shape,
            data: data.into(),
            rows,
            ..tensor
        })
    }
}

/// The tensor's values as f32 (borrowed when aligned).
fn tensor_values(tensor: &TensorMeta) -> Result<std::borrow::Cow<'_, [f32]>, StageError> {
    if tensor.dtype != vidmesh_protocol::DataType::F32 {
        return Err(StageError::Input(format!(
            "the infer stage needs float32 input, got {:?}",
            tensor.dtype
        )));
    }
    Ok(match bytemuck::try_cast_slice::<u8, f32>(&tensor.data) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        // Unaligned storage (e.g. after a network hop): copy once.
        Err(_) => tensor
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::labels_from_file;

    #[test]
    fn labels_files_of_detectors_and_of_nvinfer_classifiers() {
        assert_eq!(
            labels_from_file("background\n person \n\nbicycle\n"),
            ["background", "person", "bicycle"]
        );
        assert_eq!(
            labels_from_file("dark;light; red;\nno_bag;backpack\n"),
            ["dark", "light", "red"],
            "a classifier file: the first output layer's labels"
        );
        assert!(labels_from_file("\n \n").is_empty());
    }
}
