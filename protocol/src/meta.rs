//! The metadata model: `Batch` → `FrameMeta` → `ObjectMeta` / `DisplayMeta` / `UserMeta`.
//!
//! Names follow DeepStream's `NvDsBatchMeta` tree (frame number, source id, pts, object class id,
//! confidence, tracker id, classifier meta, display meta) so a DeepStream user can map one onto
//! the other. Objects refer to their parent by index within the frame instead of by pointer, so
//! the tree stays a plain value that serialises without recursion.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::payload::PayloadRef;

/// A group of frames processed together, from one or more sources (nvstreammux's output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Batch {
    /// Monotonic per producer; lets downstream stages and logs refer to a batch.
    pub batch_id: u64,
    pub frames: Vec<FrameMeta>,
    /// Batch-level tensors, e.g. the network input written by `preprocess` for `infer`
    /// (DeepStream attaches these as `NvDsPreProcessBatchMeta`).
    pub tensors: Vec<TensorMeta>,
}

impl Batch {
    /// Number of frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the batch carries no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// One video frame of one source, with everything that was found in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FrameMeta {
    /// Index of the source in the topology (DeepStream's `pad_index` / `source_id`).
    pub source_id: u32,
    /// The source's name as written in the topology (the `sensorId` of events).
    pub source_name: String,
    /// Frame number within its source, starting at 0. With `source_id` it identifies a frame
    /// uniquely, which is what downstream deduplication keys on.
    pub frame_num: u64,
    /// Presentation timestamp in nanoseconds, from the container or the capture clock.
    pub pts_ns: u64,
    /// How long the frame is shown, in nanoseconds; 0 when unknown (e.g. live sources).
    pub duration_ns: u64,
    /// Wall-clock capture time (Unix epoch, nanoseconds) when known.
    pub ntp_ns: Option<u64>,
    /// Wall-clock time the frame entered the pipeline (Unix epoch, nanoseconds); end-to-end
    /// latency is measured from here.
    pub ingest_ns: u64,
    pub width: u32,
    pub height: u32,
    pub payload: PayloadRef,
    pub objects: Vec<ObjectMeta>,
    pub display: DisplayMeta,
    pub user: Vec<UserMeta>,
}

/// An axis-aligned box in frame pixels (DeepStream's `NvOSD_RectParams` geometry).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct BBox {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

impl BBox {
    /// Builds a box from its corners.
    pub fn from_corners(left: f32, top: f32, right: f32, bottom: f32) -> Self {
        Self {
            left,
            top,
            width: right - left,
            height: bottom - top,
        }
    }

    pub fn right(&self) -> f32 {
        self.left + self.width
    }

    pub fn bottom(&self) -> f32 {
        self.top + self.height
    }

    pub fn area(&self) -> f32 {
        self.width.max(0.0) * self.height.max(0.0)
    }

    /// Intersection over union; 0 for disjoint or empty boxes.
    pub fn iou(&self, other: &BBox) -> f32 {
        let w = self.right().min(other.right()) - self.left.max(other.left);
        let h = self.bottom().min(other.bottom()) - self.top.max(other.top);
        if w <= 0.0 || h <= 0.0 {
            return 0.0;
        }
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }

    /// The box clipped to a `width` x `height` frame.
    pub fn clipped(&self, width: f32, height: f32) -> BBox {
        let left = self.left.clamp(0.0, width);
        let top = self.top.clamp(0.0, height);
        let right = self.right().clamp(0.0, width);
        let bottom = self.bottom().clamp(0.0, height);
        BBox::from_corners(left, top, right, bottom)
    }
}

/// Something found in a frame: a detection, possibly tracked and classified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObjectMeta {
    /// Which inference component produced the object (nvinfer's `unique-id`).
    pub component_id: u32,
    pub class_id: i32,
    pub label: String,
    /// Detector confidence in 0..1.
    pub confidence: f32,
    pub bbox: BBox,
    /// Stable id assigned by a tracker; `None` before tracking (DeepStream uses
    /// `UNTRACKED_OBJECT_ID` = u64::MAX for that).
    pub track_id: Option<u64>,
    pub tracker_confidence: Option<f32>,
    /// Index of the parent object in the same frame's `objects`, e.g. a face inside a person.
    pub parent: Option<u32>,
    pub classifiers: Vec<ClassifierMeta>,
    pub mask: Option<Mask>,
    pub user: Vec<UserMeta>,
}

/// The result of one secondary classifier on one object (`NvDsClassifierMeta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClassifierMeta {
    pub component_id: u32,
    pub labels: Vec<LabelInfo>,
}

/// One label a classifier assigned (`NvDsLabelInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LabelInfo {
    pub class_id: i32,
    pub label: String,
    pub probability: f32,
}

/// An instance mask over the object's box, row-major, `width * height` values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    /// Values above this are inside the object.
    pub threshold: f32,
    pub data: Vec<f32>,
}

/// Application data attached to a frame or object (`NvDsUserMeta`). `kind` names the format
/// of `data` (e.g. `"vidmesh.analytics/json"`) so consumers can skip what they do not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UserMeta {
    pub kind: String,
    pub data: Bytes,
}

/// An RGBA colour, 8 bits per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Rgba {
    pub r: u8,
    pub g: u8,
    pub b: u8,
    pub a: u8,
}

impl Rgba {
    pub const fn new(r: u8, g: u8, b: u8, a: u8) -> Self {
        Self { r, g, b, a }
    }
}

/// What the on-screen display draws on a frame (`NvDsDisplayMeta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DisplayMeta {
    pub rects: Vec<DisplayRect>,
    pub texts: Vec<DisplayText>,
    pub lines: Vec<DisplayLine>,
    pub circles: Vec<DisplayCircle>,
}

impl DisplayMeta {
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
            && self.texts.is_empty()
            && self.lines.is_empty()
            && self.circles.is_empty()
    }
}

/// A rectangle outline, optionally filled (`NvOSD_RectParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DisplayRect {
    pub bbox: BBox,
    pub border_width: u32,
    pub border_color: Rgba,
    pub fill: Option<Rgba>,
}

/// A text label with an optional background (`NvOSD_TextParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DisplayText {
    pub text: String,
    /// Top-left corner of the text box in frame pixels.
    pub x: f32,
    pub y: f32,
    pub font_size: f32,
    pub color: Rgba,
    pub background: Option<Rgba>,
}

/// A straight line segment (`NvOSD_LineParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DisplayLine {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
    pub width: u32,
    pub color: Rgba,
}

/// A circle outline (`NvOSD_CircleParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DisplayCircle {
    pub x: f32,
    pub y: f32,
    pub radius: f32,
    pub color: Rgba,
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum DataType {
    #[default]
    F32,
    F16,
    U8,
}

impl DataType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::F32 => 4,
            DataType::F16 => 2,
            DataType::U8 => 1,
        }
    }
}

/// A tensor that travels with a batch, plus how each frame was mapped into it so results can
/// be mapped back to frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TensorMeta {
    /// The name of the model input this tensor feeds (empty = the model's first input).
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    /// How an image batch is laid out in `shape`, when the tensor holds images.
    pub layout: Option<TensorLayout>,
    /// Little-endian elements, `shape.iter().product() * dtype.size()` bytes.
    pub data: Bytes,
    /// What each image of the batch dimension shows, in order: `shape[0]` entries.
    pub rows: Vec<TensorRow>,
}

/// One image of a tensor's batch dimension: which frame (and, for secondary inference, which
/// object's crop) it shows, and how its pixels map back to that frame's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct TensorRow {
    /// Index of the frame in the batch.
    pub frame: u32,
    /// Index of the object in that frame whose crop this row is; `None` for the whole frame.
    pub object: Option<u32>,
    pub transform: FrameTransform,
}

/// Axis order of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorLayout {
    /// batch, channels, height, width
    Nchw,
    /// batch, height, width, channels
    Nhwc,
}

impl TensorLayout {
    /// (width, height) of the images in a tensor of this layout, if `shape` has rank 4.
    pub fn image_size(self, shape: &[usize]) -> Option<(usize, usize)> {
        match (self, shape) {
            (TensorLayout::Nchw, [_, _, h, w]) | (TensorLayout::Nhwc, [_, h, w, _]) => {
                Some((*w, *h))
            }
            _ => None,
        }
    }
}

/// How frame pixels map to network-input pixels: `net = frame * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrameTransform {
    pub scale_x: f32,
    pub scale_y: f32,
    pub offset_x: f32,
    pub offset_y: f32,
}

impl Default for FrameTransform {
    fn default() -> Self {
        Self {
            scale_x: 1.0,
            scale_y: 1.0,
            offset_x: 0.0,
            offset_y: 0.0,
        }
    }
}

impl FrameTransform {
    /// Maps a box from network-input pixels back to frame pixels.
    pub fn to_frame(&self, net: BBox) -> BBox {
        BBox {
            left: (net.left - self.offset_x) / self.scale_x,
            top: (net.top - self.offset_y) / self.scale_y,
            width: net.width / self.scale_x,
            height: net.height / self.scale_y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_boxes_is_one_and_of_disjoint_is_zero() {
        let a = BBox::from_corners(0.0, 0.0, 10.0, 10.0);
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        let b = BBox::from_corners(20.0, 20.0, 30.0, 30.0);
        assert_eq!(a.iou(&b), 0.0);
        let c = BBox::from_corners(5.0, 0.0, 15.0, 10.0);
        assert!((a.iou(&c) - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn transform_maps_letterboxed_box_back_to_frame() {
        // A 600x300 frame letterboxed into 300x300: scale 0.5, 75 px padding on top.
        let t = FrameTransform {
            scale_x: 0.5,
            scale_y: 0.5,
            offset_x: 0.0,
            offset_y: 75.0,
        };
        let back = t.to_frame(BBox::from_corners(10.0, 85.0, 20.0, 95.0));
        assert_eq!(back, BBox::from_corners(20.0, 20.0, 40.0, 40.0));
    }
}
