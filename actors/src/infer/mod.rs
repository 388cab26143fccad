//! `infer`: runs a detector on the batch's input tensor and attaches objects, like nvinfer in
//! detector mode (`network-type=0`).
//!
//! The tensor comes from a `preprocess` stage upstream; the model's outputs go through an
//! output parser (the part nvinfer calls `parse-bbox-func-name`), then per-class NMS, then are
//! mapped back from network pixels to frame pixels.

mod nms;
mod ort_backend;
mod parser;

use std::path::PathBuf;

use serde::Deserialize;
use vidmesh_protocol::{Batch, ObjectMeta, TensorMeta};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};
pub use nms::non_max_suppression;
use ort_backend::{ModelIo, OrtBackend};
pub use parser::{BoxFormat, Detection, ParserSettings};

pub const KIND: StageKind = StageKind {
    name: "infer",
    delivery: Delivery::ANY_REPLICA,
    summary: "run an ONNX detector (ONNX Runtime) and parse its boxes (nvinfer)",
    check: |t, ctx| Settings::load(t, ctx).map(|_| ()),
    build: |t, ctx| {
        let s = Settings::load(t, ctx)?;
        Ok(Box::new(Infer::new(s, ctx)?))
    },
    makes_streams: None,
};

/// Inference backends. More (TensorRT, Triton, native CUDA) arrive behind the same settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// ONNX Runtime on CPU.
    #[default]
    Ort,
}

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Path to the ONNX model (nvinfer `onnx-file`). Required.
    pub model: String,
    /// Default "ort".
    #[serde(default)]
    pub backend: Backend,
    /// nvinfer `gie-unique-id`: written into each object's `component_id`. Default 1.
    #[serde(default = "one")]
    pub component_id: u32,
    /// Class labels by class id (nvinfer `labelfile-path` content).
    #[serde(default)]
    pub labels: Vec<String>,
    /// A file with one label per line, instead of `labels`.
    #[serde(default)]
    pub labels_file: Option<String>,
    /// Minimum confidence kept (nvinfer `pre-cluster-threshold`). Default 0.5.
    #[serde(default = "half")]
    pub score_threshold: f32,
    /// Boxes of the same class overlapping more than this are suppressed
    /// (nvinfer `nms-iou-threshold`). Default 0.45.
    #[serde(default = "nms_default")]
    pub nms_iou: f32,
    /// Most objects kept per frame after NMS (nvinfer `topk`). Default 100.
    #[serde(default = "top_k_default")]
    pub top_k: usize,
    /// How to read the model's outputs.
    pub parser: ParserSettings,
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

impl Settings {
    /// Parses and checks everything that can be checked without loading the model.
    fn load(table: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let mut s: Settings = settings::parse(table)?;
        let model = ctx.resolve(&s.model);
        if !model.is_file() {
            return Err(StageError::Settings(format!(
                "model file {} does not exist",
                model.display()
            )));
        }
        if let Some(file) = &s.labels_file {
            let path = ctx.resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                StageError::Settings(format!("cannot read labels_file {}: {e}", path.display()))
            })?;
            s.labels = text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
        }
        if !(0.0..=1.0).contains(&s.score_threshold) || !(0.0..=1.0).contains(&s.nms_iou) {
            return Err(StageError::Settings(
                "score_threshold and nms_iou must be within 0..=1".into(),
            ));
        }
        Ok(s)
    }
}

/// The running stage.
pub struct Infer {
    settings: Settings,
    model_path: PathBuf,
    backend: OrtBackend,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    frames: u64,
    objects: u64,
}

impl Infer {
    fn new(settings: Settings, ctx: &BuildContext) -> Result<Self, StageError> {
        let model_path = ctx.resolve(&settings.model);
        let backend = OrtBackend::load(
            &model_path,
            settings.threads,
            settings.spinning,
            settings.ort_library.as_deref().map(|p| ctx.resolve(p)),
        )?;
        settings.parser.check_outputs(backend.io(), &model_path)?;
        Ok(Self {
            settings,
            model_path,
            backend,
            stats: Stats::default(),
        })
    }

    fn check_input(&self, tensor: &TensorMeta) -> Result<(), StageError> {
        let expected = &self.backend.io().input_shape;
        let matches = expected.len() == tensor.shape.len()
            && expected
                .iter()
                .zip(&tensor.shape)
                .skip(1)
                .all(|(&e, &g)| e < 0 || e as usize == g);
        if !matches {
            return Err(StageError::Input(format!(
                "model {} expects input `{}` of shape {}, but the preprocessed tensor has shape {:?}; set the preprocess stage's width/height/layout to match the model",
                self.model_path.display(),
                self.backend.io().input_name,
                ModelIo::shape_text(expected),
                tensor.shape
            )));
        }
        Ok(())
    }

    fn label(&self, class_id: i32) -> String {
        usize::try_from(class_id)
            .ok()
            .and_then(|i| self.settings.labels.get(i))
            .cloned()
            .unwrap_or_else(|| class_id.to_string())
    }
}

impl Stage for Infer {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        if batch.frames.is_empty() {
            return out.emit(batch);
        }
        let position = batch
            .tensors
            .iter()
            .position(|t| t.name.is_empty() || t.name == self.backend.io().input_name)
            .ok_or_else(|| {
                StageError::Input(format!(
                    "batch {} carries no input tensor for model input `{}`: put a preprocess stage before this infer stage",
                    batch.batch_id,
                    self.backend.io().input_name
                ))
            })?;
        // The tensor is consumed here; downstream stages only need the objects.
        let tensor = batch.tensors.swap_remove(position);
        self.check_input(&tensor)?;
        if tensor.shape.first() != Some(&batch.frames.len())
            || tensor.transforms.len() != batch.frames.len()
        {
            return Err(StageError::Input(format!(
                "tensor batch dimension {:?} does not match the {} frames of batch {}",
                tensor.shape.first(),
                batch.frames.len(),
                batch.batch_id
            )));
        }
        let (net_w, net_h) = tensor
            .layout
            .and_then(|l| l.image_size(&tensor.shape))
            .ok_or_else(|| {
                StageError::Input(format!(
                    "tensor of shape {:?} is not an image batch",
                    tensor.shape
                ))
            })?;
        let outputs = self.backend.run(&tensor)?;
        for (i, frame) in batch.frames.iter_mut().enumerate() {
            let detections = self.settings.parser.parse(
                &outputs,
                i,
                net_w as f32,
                net_h as f32,
                self.settings.score_threshold,
            )?;
            let transform = tensor.transforms[i];
            let (fw, fh) = (frame.width as f32, frame.height as f32);
            let mapped: Vec<Detection> = detections
                .into_iter()
                .map(|d| Detection {
                    bbox: transform.to_frame(d.bbox).clipped(fw, fh),
                    ..d
                })
                .filter(|d| d.bbox.area() > 0.0)
                .collect();
            let mut kept = non_max_suppression(mapped, self.settings.nms_iou);
            kept.truncate(self.settings.top_k);
            self.stats.frames += 1;
            self.stats.objects += kept.len() as u64;
            frame.objects.extend(kept.into_iter().map(|d| ObjectMeta {
                component_id: self.settings.component_id,
                class_id: d.class_id,
                label: self.label(d.class_id),
                confidence: d.confidence,
                bbox: d.bbox,
                ..Default::default()
            }));
        }
        out.emit(batch)
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        Ok(StageReport::default()
            .with("frames", self.stats.frames)
            .with("objects", self.stats.objects))
    }
}
