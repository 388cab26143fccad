//! `preprocess`: frames → the network's input tensor, configured like nvinfer's
//! preprocessing keys (`net-scale-factor`, `offsets`, `model-color-format`,
//! `maintain-aspect-ratio`, `symmetric-padding`).
//!
//! Each output value is `net_scale_factor * (pixel - offsets[c])`. Results carry a
//! [`FrameTransform`] per frame so detections can be mapped back to frame pixels.

mod resize;

use bytes::Bytes;
use serde::Deserialize;
use vidmesh_protocol::{
    Batch, DataType, FrameTransform, PixelFormat, TensorLayout, TensorMeta, TensorRow,
};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{Outputs, Stage, StageError};
pub use resize::Interpolation;
use resize::ResizePlan;

pub const KIND: StageKind = StageKind {
    name: "preprocess",
    delivery: Delivery::ANY_REPLICA,
    summary: "scale/letterbox, colour order and normalisation into the model's input tensor",
    check: |t, _| settings::parse::<Settings>(t).and_then(|s| s.validate()),
    build: |t, _| Ok(Box::new(Preprocess::new(settings::parse::<Settings>(t)?)?)),
    makes_streams: None,
};

/// Channel order the model expects (nvinfer `model-color-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// Tensor memory layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// batch, channel, height, width (nvinfer's default, most PyTorch exports).
    Nchw,
    /// batch, height, width, channel (TensorFlow exports).
    Nhwc,
}

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Network input width in pixels. Required.
    pub width: u32,
    /// Network input height in pixels. Required.
    pub height: u32,
    /// Multiplier applied after subtracting the offsets. Default 1.0.
    #[serde(default = "one")]
    pub net_scale_factor: f32,
    /// Per-channel values subtracted first, in the model's channel order. Default [0, 0, 0].
    #[serde(default)]
    pub offsets: [f32; 3],
    /// Default "rgb".
    #[serde(default = "rgb")]
    pub color_order: ColorOrder,
    /// Default "nchw".
    #[serde(default = "nchw")]
    pub layout: Layout,
    /// Keep the frame's aspect ratio and pad the rest (letterbox). Default false.
    #[serde(default)]
    pub maintain_aspect_ratio: bool,
    /// With `maintain_aspect_ratio`, centre the image instead of padding right/bottom.
    #[serde(default)]
    pub symmetric_padding: bool,
    /// Default "bilinear" (half-pixel centres, as OpenCV and NvBufSurfTransform);
    /// "bilinear-tf1" reproduces TensorFlow 1 `ResizeBilinear` for models whose graph resized
    /// that way; "nearest".
    #[serde(default)]
    pub interpolation: Interpolation,
    /// The model input this tensor feeds; empty means the model's first input.
    #[serde(default)]
    pub tensor_name: String,
}

fn one() -> f32 {
    1.0
}
fn rgb() -> ColorOrder {
    ColorOrder::Rgb
}
fn nchw() -> Layout {
    Layout::Nchw
}

impl Settings {
    pub fn validate(&self) -> Result<(), StageError> {
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(StageError::Settings(format!(
                "width and height must be 1..=8192, got {}x{}",
                self.width, self.height
            )));
        }
        if !self.net_scale_factor.is_finite() || self.offsets.iter().any(|o| !o.is_finite()) {
            return Err(StageError::Settings(
                "net_scale_factor and offsets must be finite numbers".into(),
            ));
        }
        Ok(())
    }
}

/// A region of a frame to preprocess instead of the whole frame (secondary inference crops),
/// in whole frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Region {
    /// The pixels a box covers, rounded outwards and clipped to a `width` x `height` frame;
    /// `None` when nothing of it is inside.
    pub fn of_box(b: &vidmesh_protocol::BBox, width: u32, height: u32) -> Option<Region> {
        if ![b.left, b.top, b.width, b.height]
            .iter()
            .all(|v| v.is_finite())
        {
            return None;
        }
        let x0 = b.left.floor().clamp(0.0, width as f32) as u32;
        let y0 = b.top.floor().clamp(0.0, height as f32) as u32;
        let x1 = b.right().ceil().clamp(0.0, width as f32) as u32;
        let y1 = b.bottom().ceil().clamp(0.0, height as f32) as u32;
        (x1 > x0 && y1 > y0).then_some(Region {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        })
    }
}

/// One image to put into the tensor: a frame of the batch, or a region of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRequest {
    pub frame: u32,
    /// The object whose crop this is (recorded in the tensor row).
    pub object: Option<u32>,
    pub region: Option<Region>,
}

/// Frames → network input tensor; used by the `preprocess` stage and by `infer` when it
/// preprocesses for itself (secondary inference on crops). Resize plans are cached per
/// source size.
pub struct ImagePreprocessor {
    settings: Settings,
    plans: Vec<((u32, u32), std::sync::Arc<Plan>)>,
}

/// How one source size maps into the network input.
struct Plan {
    resize: ResizePlan,
    /// Frame (or region) pixels → network pixels, before the region's offset is added.
    transform: FrameTransform,
}

/// Crops come in many sizes; a bounded cache keeps memory flat on long runs.
const MAX_CACHED_PLANS: usize = 256;

impl ImagePreprocessor {
    pub fn new(settings: Settings) -> Result<Self, StageError> {
        settings.validate()?;
        Ok(Self {
            settings,
            plans: Vec::new(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn plan_for(&mut self, width: u32, height: u32) -> std::sync::Arc<Plan> {
        if let Some((_, plan)) = self.plans.iter().find(|(k, _)| *k == (width, height)) {
            return plan.clone();
        }
        let s = &self.settings;
        let (dst_w, dst_h, off_x, off_y) = if s.maintain_aspect_ratio {
            let scale = (s.width as f64 / width as f64).min(s.height as f64 / height as f64);
            let w = ((width as f64 * scale).round() as u32).clamp(1, s.width);
            let h = ((height as f64 * scale).round() as u32).clamp(1, s.height);
            if s.symmetric_padding {
                (w, h, (s.width - w) / 2, (s.height - h) / 2)
            } else {
                (w, h, 0, 0)
            }
        } else {
            (s.width, s.height, 0, 0)
        };
        let plan = std::sync::Arc::new(Plan {
            resize: ResizePlan::new(width, height, dst_w, dst_h, s.interpolation),
            transform: FrameTransform {
                scale_x: dst_w as f32 / width as f32,
                scale_y: dst_h as f32 / height as f32,
                offset_x: off_x as f32,
                offset_y: off_y as f32,
            },
        });
        if self.plans.len() >= MAX_CACHED_PLANS {
            self.plans.clear();
        }
        self.plans.push(((width, height), plan.clone()));
        plan
    }

    /// Builds the tensor for `rows` of `frames`, the rows filled in parallel.
    pub fn tensor(
        &mut self,
        frames: &[vidmesh_protocol::FrameMeta],
        rows: &[RowRequest],
    ) -> Result<TensorMeta, StageError> {
        let (w, h) = (self.settings.width as usize, self.settings.height as usize);
        let per_image = w * h * 3;
        // Everything that can fail is checked before any work is spread over threads.
        let mut jobs = Vec::with_capacity(rows.len());
        let mut tensor_rows = Vec::with_capacity(rows.len());
        for row in rows {
            let frame = frames.get(row.frame as usize).ok_or_else(|| {
                StageError::Input(format!(
                    "row names frame {} of a batch of {}",
                    row.frame,
                    frames.len()
                ))
            })?;
            let (layout, data) = image_of(frame)?;
            let region = row.region.unwrap_or(Region {
                x: 0,
                y: 0,
                width: layout.width,
                height: layout.height,
            });
            if region.width == 0
                || region.height == 0
                || region.x.saturating_add(region.width) > layout.width
                || region.y.saturating_add(region.height) > layout.height
            {
                return Err(StageError::Input(format!(
                    "region {region:?} is outside frame {} of source `{}` ({}x{})",
                    frame.frame_num, frame.source_name, layout.width, layout.height
                )));
            }
            let plan = self.plan_for(region.width, region.height);
            let t = plan.transform;
            tensor_rows.push(TensorRow {
                frame: row.frame,
                object: row.object,
                transform: FrameTransform {
                    offset_x: t.offset_x - region.x as f32 * t.scale_x,
                    offset_y: t.offset_y - region.y as f32 * t.scale_y,
                    ..t
                },
            });
            let start = region.y as usize * layout.stride as usize + region.x as usize * 3;
            jobs.push((plan, layout.stride as usize, data.slice(start..)));
        }
        let mut data = vec![0f32; per_image * rows.len()];
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(rows.len())
            .max(1);
        let per_thread = rows.len().div_ceil(threads).max(1);
        let settings = &self.settings;
        std::thread::scope(|scope| {
            for (images, jobs) in data
                .chunks_mut(per_image * per_thread)
                .zip(jobs.chunks(per_thread))
            {
                scope.spawn(move || {
                    for (out, (plan, stride, pixels)) in
                        images.chunks_exact_mut(per_image).zip(jobs)
                    {
                        fill(settings, plan, pixels, *stride, out);
                    }
                });
            }
        });
        let s = &self.settings;
        let shape = match s.layout {
            Layout::Nhwc => vec![rows.len(), h, w, 3],
            Layout::Nchw => vec![rows.len(), 3, h, w],
        };
        Ok(TensorMeta {
            name: s.tensor_name.clone(),
            dtype: DataType::F32,
            shape,
            layout: Some(match s.layout {
                Layout::Nhwc => TensorLayout::Nhwc,
                Layout::Nchw => TensorLayout::Nchw,
            }),
            data: Bytes::from_owner(F32Storage(data)),
            rows: tensor_rows,
        })
    }
}

/// The frame's RGB pixels, or an error saying why there are none.
fn image_of(
    frame: &vidmesh_protocol::FrameMeta,
) -> Result<(vidmesh_protocol::ImageLayout, Bytes), StageError> {
    let (layout, data) = frame.payload.inline_image().ok_or_else(|| {
        StageError::Input(format!(
            "frame {} of source `{}` has no raw pixels in memory (payload: {}); preprocess needs RGB frames",
            frame.frame_num,
            frame.source_name,
            frame.payload.kind_name()
        ))
    })?;
    if layout.format != PixelFormat::Rgb24 {
        return Err(StageError::Input(format!(
            "preprocess needs RGB frames, got {:?}",
            layout.format
        )));
    }
    Ok((layout, data.clone()))
}

/// Writes one image (`pixels` starts at the region's top-left corner) into `out`.
fn fill(s: &Settings, plan: &Plan, pixels: &[u8], stride: usize, out: &mut [f32]) {
    let (w, h) = (s.width as usize, s.height as usize);
    // Channel c of the output reads source channel `src_channel[c]`.
    let src_channel = match s.color_order {
        ColorOrder::Rgb => [0usize, 1, 2],
        ColorOrder::Bgr => [2usize, 1, 0],
    };
    let scale = s.net_scale_factor;
    let offsets = s.offsets;
    let pad = [
        -offsets[0] * scale,
        -offsets[1] * scale,
        -offsets[2] * scale,
    ];
    let resize = &plan.resize;
    let (ox, oy) = (
        plan.transform.offset_x as usize,
        plan.transform.offset_y as usize,
    );
    if resize.dst_width() as usize != w || resize.dst_height() as usize != h {
        match s.layout {
            Layout::Nhwc => out
                .chunks_exact_mut(3)
                .for_each(|px| px.copy_from_slice(&pad)),
            Layout::Nchw => {
                for (c, plane) in out.chunks_exact_mut(w * h).enumerate() {
                    plane.fill(pad[c]);
                }
            }
        }
    }
    // One resampled RGB row at a time, then normalised into place: the inner loops are
    // branch-free and walk memory in order.
    let dst_w = resize.dst_width() as usize;
    let mut row = vec![0f32; dst_w * 3];
    for y in 0..resize.dst_height() as usize {
        resize.sample_row(pixels, stride, y, &mut row);
        let (ty, tx) = (y + oy, ox);
        match s.layout {
            Layout::Nhwc => {
                let dst = &mut out[(ty * w + tx) * 3..(ty * w + tx + dst_w) * 3];
                for (d, rgb) in dst.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
                    for c in 0..3 {
                        d[c] = (rgb[src_channel[c]] - offsets[c]) * scale;
                    }
                }
            }
            Layout::Nchw => {
                for c in 0..3 {
                    let start = c * w * h + ty * w + tx;
                    let dst = &mut out[start..start + dst_w];
                    for (d, rgb) in dst.iter_mut().zip(row.chunks_exact(3)) {
                        *d = (rgb[src_channel[c]] - offsets[c]) * scale;
                    }
                }
            }
        }
    }
}

/// Owns the tensor's f32 storage so `Bytes` can share it without a copy.
struct F32Storage(Vec<f32>);

impl AsRef<[u8]> for F32Storage {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// The running stage: one tensor row per frame.
pub struct Preprocess {
    images: ImagePreprocessor,
}

impl Preprocess {
    pub fn new(settings: Settings) -> Result<Self, StageError> {
        Ok(Self {
            images: ImagePreprocessor::new(settings)?,
        })
    }
}

impl Stage for Preprocess {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        if batch.frames.is_empty() {
            return out.emit(batch);
        }
        let rows: Vec<RowRequest> = (0..batch.frames.len() as u32)
            .map(|frame| RowRequest {
                frame,
                object: None,
                region: None,
            })
            .collect();
        let tensor = self.images.tensor(&batch.frames, &rows)?;
        batch.tensors.push(tensor);
        out.emit(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{FrameMeta, ImageLayout, PayloadRef};

    fn frame(w: u32, h: u32, fill: impl Fn(u32, u32) -> [u8; 3]) -> FrameMeta {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, w, h);
        let mut data = vec![0u8; layout.min_len().unwrap()];
        for y in 0..h {
            for x in 0..w {
                let o = (y * layout.stride + x * 3) as usize;
                data[o..o + 3].copy_from_slice(&fill(x, y));
            }
        }
        FrameMeta {
            width: w,
            height: h,
            payload: PayloadRef::Inline {
                layout,
                data: data.into(),
            },
            ..Default::default()
        }
    }

    fn settings(toml_text: &str) -> Settings {
        settings::parse(&toml::from_str(toml_text).unwrap()).unwrap()
    }

    /// The tensor of one whole frame.
    fn one(toml_text: &str, f: FrameMeta) -> Result<TensorMeta, StageError> {
        let mut p = ImagePreprocessor::new(settings(toml_text)).unwrap();
        let row = RowRequest {
            frame: 0,
            object: None,
            region: None,
        };
        p.tensor(&[f], &[row])
    }

    fn values(t: &TensorMeta) -> Vec<f32> {
        bytemuck::cast_slice::<u8, f32>(&t.data).to_vec()
    }

    #[test]
    fn normalises_and_orders_channels_like_nvinfer() {
        let f = frame(2, 2, |_, _| [10, 20, 30]);
        let t = one(
            "width = 2\nheight = 2\nnet_scale_factor = 0.5\noffsets = [1, 2, 3]\ncolor_order = 'bgr'\nlayout = 'nchw'",
            f,
        )
        .unwrap();
        let out = values(&t);
        assert_eq!(t.shape, vec![1, 3, 2, 2]);
        // Channel 0 is blue: (30 - 1) * 0.5.
        assert_eq!(&out[0..4], &[14.5; 4]);
        assert_eq!(&out[4..8], &[9.0; 4]);
        assert_eq!(&out[8..12], &[3.5; 4]);
    }

    #[test]
    fn letterbox_pads_and_reports_the_transform() {
        let f = frame(8, 4, |_, _| [255, 255, 255]);
        let t = one(
            "width = 4\nheight = 4\nmaintain_aspect_ratio = true\nsymmetric_padding = true\nlayout = 'nhwc'\nnet_scale_factor = 1.0",
            f,
        )
        .unwrap();
        let r = t.rows[0].transform;
        assert_eq!(
            (r.scale_x, r.scale_y, r.offset_x, r.offset_y),
            (0.5, 0.5, 0.0, 1.0)
        );
        let out = values(&t);
        // Row 0 is padding (0), rows 1..3 are image (255), row 3 padding.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[4 * 3], 255.0);
        assert_eq!(out[3 * 4 * 3], 0.0);
    }

    #[test]
    fn crops_map_back_to_frame_pixels_and_rows_name_their_object() {
        // Left half black, right half white; the crop is the white 4x4 square at (4, 2).
        let f = frame(8, 8, |x, _| if x >= 4 { [255; 3] } else { [0; 3] });
        let mut p =
            ImagePreprocessor::new(settings("width = 2\nheight = 2\nlayout = 'nhwc'")).unwrap();
        let rows = [
            RowRequest {
                frame: 0,
                object: None,
                region: None,
            },
            RowRequest {
                frame: 0,
                object: Some(3),
                region: Some(Region {
                    x: 4,
                    y: 2,
                    width: 4,
                    height: 4,
                }),
            },
        ];
        let t = p.tensor(&[f], &rows).unwrap();
        assert_eq!(t.shape, vec![2, 2, 2, 3]);
        assert_eq!(t.rows[1].object, Some(3));
        let crop = &values(&t)[12..24];
        assert!(crop.iter().all(|v| *v == 255.0), "{crop:?}");
        // Network pixel (1, 1) of the crop is frame pixel (6, 4).
        let back = t.rows[1]
            .transform
            .to_frame(vidmesh_protocol::BBox::from_corners(1.0, 1.0, 2.0, 2.0));
        assert_eq!(
            (back.left, back.top, back.width, back.height),
            (6.0, 4.0, 2.0, 2.0)
        );
        let outside = RowRequest {
            frame: 0,
            object: Some(0),
            region: Some(Region {
                x: 6,
                y: 0,
                width: 4,
                height: 4,
            }),
        };
        let f = frame(8, 8, |_, _| [0; 3]);
        assert!(p.tensor(&[f], &[outside]).is_err());
    }

    #[test]
    fn regions_of_boxes_round_outwards_and_clip() {
        let b = vidmesh_protocol::BBox::from_corners(-3.5, 1.2, 5.5, 20.0);
        assert_eq!(
            Region::of_box(&b, 10, 10),
            Some(Region {
                x: 0,
                y: 1,
                width: 6,
                height: 9
            })
        );
        let outside = vidmesh_protocol::BBox::from_corners(12.0, 0.0, 15.0, 4.0);
        assert_eq!(Region::of_box(&outside, 10, 10), None);
    }

    #[test]
    fn rejects_frames_without_pixels() {
        let f = FrameMeta {
            source_name: "cam0".into(),
            ..Default::default()
        };
        let err = one("width = 2\nheight = 2", f).unwrap_err().to_string();
        assert!(
            err.contains("cam0") && err.contains("no raw pixels"),
            "{err}"
        );
    }
}
