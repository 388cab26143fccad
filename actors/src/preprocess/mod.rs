//! `preprocess`: frames → the network's input tensor, configured like nvinfer's
//! preprocessing keys (`net-scale-factor`, `offsets`, `model-color-format`,
//! `maintain-aspect-ratio`, `symmetric-padding`).
//!
//! Each output value is `net_scale_factor * (pixel - offsets[c])`. Results carry a
//! [`FrameTransform`] per frame so detections can be mapped back to frame pixels.

mod resize;

use bytes::Bytes;
use serde::Deserialize;
use vidmesh_protocol::{Batch, DataType, FrameTransform, PixelFormat, TensorLayout, TensorMeta};

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
    build: |t, _| {
        let s = settings::parse::<Settings>(t)?;
        s.validate()?;
        Ok(Box::new(Preprocess::new(s)))
    },
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
    fn validate(&self) -> Result<(), StageError> {
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

/// The running stage. Resize plans are cached per source resolution.
pub struct Preprocess {
    settings: Settings,
    plans: Vec<((u32, u32), ResizePlan, FrameTransform)>,
}

impl Preprocess {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            plans: Vec::new(),
        }
    }

    fn plan_for(&mut self, width: u32, height: u32) -> usize {
        if let Some(i) = self
            .plans
            .iter()
            .position(|(k, _, _)| *k == (width, height))
        {
            return i;
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
        let plan = ResizePlan::new(width, height, dst_w, dst_h, s.interpolation);
        let transform = FrameTransform {
            scale_x: dst_w as f32 / width as f32,
            scale_y: dst_h as f32 / height as f32,
            offset_x: off_x as f32,
            offset_y: off_y as f32,
        };
        self.plans.push(((width, height), plan, transform));
        self.plans.len() - 1
    }

    /// Writes one frame into `out` (one image's worth of the tensor).
    fn fill(
        &mut self,
        frame: &vidmesh_protocol::FrameMeta,
        out: &mut [f32],
    ) -> Result<FrameTransform, StageError> {
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
        let index = self.plan_for(layout.width, layout.height);
        let (_, plan, transform) = &self.plans[index];
        let s = &self.settings;
        let (w, h) = (s.width as usize, s.height as usize);
        // Channel c of the output reads source channel `src_channel[c]`.
        let src_channel = match s.color_order {
            ColorOrder::Rgb => [0usize, 1, 2],
            ColorOrder::Bgr => [2usize, 1, 0],
        };
        let scale = s.net_scale_factor;
        let offsets = [s.offsets[0], s.offsets[1], s.offsets[2]];
        let pad = [
            -offsets[0] * scale,
            -offsets[1] * scale,
            -offsets[2] * scale,
        ];
        let (ox, oy) = (transform.offset_x as usize, transform.offset_y as usize);
        if plan.dst_width() as usize != w || plan.dst_height() as usize != h {
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
        let dst_w = plan.dst_width() as usize;
        let mut row = vec![0f32; dst_w * 3];
        for y in 0..plan.dst_height() as usize {
            plan.sample_row(data, layout.stride as usize, y, &mut row);
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
        Ok(*transform)
    }
}

/// Owns the tensor's f32 storage so `Bytes` can share it without a copy.
struct F32Storage(Vec<f32>);

impl AsRef<[u8]> for F32Storage {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl Stage for Preprocess {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        let n = batch.frames.len();
        if n == 0 {
            return out.emit(batch);
        }
        let per_image = self.settings.width as usize * self.settings.height as usize * 3;
        let mut data = vec![0f32; per_image * n];
        let mut transforms = Vec::with_capacity(n);
        for (i, frame) in batch.frames.iter().enumerate() {
            transforms.push(self.fill(frame, &mut data[i * per_image..(i + 1) * per_image])?);
        }
        let (w, h) = (self.settings.width as usize, self.settings.height as usize);
        let shape = match self.settings.layout {
            Layout::Nhwc => vec![n, h, w, 3],
            Layout::Nchw => vec![n, 3, h, w],
        };
        batch.tensors.push(TensorMeta {
            name: self.settings.tensor_name.clone(),
            dtype: DataType::F32,
            shape,
            layout: Some(match self.settings.layout {
                Layout::Nhwc => TensorLayout::Nhwc,
                Layout::Nchw => TensorLayout::Nchw,
            }),
            data: Bytes::from_owner(F32Storage(data)),
            transforms,
        });
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

    #[test]
    fn normalises_and_orders_channels_like_nvinfer() {
        let mut p = Preprocess::new(settings(
            "width = 2\nheight = 2\nnet_scale_factor = 0.5\noffsets = [1, 2, 3]\ncolor_order = 'bgr'\nlayout = 'nchw'",
        ));
        let f = frame(2, 2, |_, _| [10, 20, 30]);
        let mut out = vec![0f32; 12];
        p.fill(&f, &mut out).unwrap();
        // Channel 0 is blue: (30 - 1) * 0.5.
        assert_eq!(&out[0..4], &[14.5; 4]);
        assert_eq!(&out[4..8], &[9.0; 4]);
        assert_eq!(&out[8..12], &[3.5; 4]);
    }

    #[test]
    fn letterbox_pads_and_reports_the_transform() {
        let mut p = Preprocess::new(settings(
            "width = 4\nheight = 4\nmaintain_aspect_ratio = true\nsymmetric_padding = true\nlayout = 'nhwc'\nnet_scale_factor = 1.0",
        ));
        let f = frame(8, 4, |_, _| [255, 255, 255]);
        let mut out = vec![-1f32; 48];
        let t = p.fill(&f, &mut out).unwrap();
        assert_eq!(
            (t.scale_x, t.scale_y, t.offset_x, t.offset_y),
            (0.5, 0.5, 0.0, 1.0)
        );
        // Row 0 is padding (0), rows 1..3 are image (255), row 3 padding.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[4 * 3], 255.0);
        assert_eq!(out[3 * 4 * 3], 0.0);
    }

    #[test]
    fn rejects_frames_without_pixels() {
        let mut p = Preprocess::new(settings("width = 2\nheight = 2"));
        let f = FrameMeta {
            source_name: "cam0".into(),
            ..Default::default()
        };
        let err = p.fill(&f, &mut [0f32; 12]).unwrap_err().to_string();
        assert!(
            err.contains("cam0") && err.contains("no raw pixels"),
            "{err}"
        );
    }
}
