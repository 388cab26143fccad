//! Appearance descriptors for the appearance tracker, and the per-track gallery of them.
//!
//! A descriptor is one of:
//! * an **embedding** produced upstream (a re-identification network, a secondary `infer`),
//!   attached to the object as a [`UserMeta`](vidmesh_protocol::UserMeta) whose `kind` is the
//!   stage's `embedding_kind` (default `"vidmesh.embedding/f32"`) and whose `data` is the
//!   vector as consecutive little-endian `f32`s, any length;
//! * otherwise, a **colour histogram** of the object's box on the frame's pixels (inline RGB24
//!   or RGBA32): `histogram_bins` bins per channel over the RGB cube, sampled on a grid of at
//!   most 32×32 points over the central part of the box (15 % margins left and right, 10 % top
//!   and bottom, to keep background out of a person's box).
//!
//! Both are stored as unit vectors so one cosine distance serves both: for embeddings it is
//! the usual re-identification distance; histograms are stored as the square roots of the bin
//! frequencies, which makes their dot product the Bhattacharyya coefficient, so the distance
//! is `1 − BC` (0 for identical colour distributions, 1 for disjoint ones). Descriptors of
//! different kinds or lengths are not comparable, and a frame without pixels yields no
//! histogram; the tracker then falls back to motion alone.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vidmesh_protocol::{BBox, FrameMeta, ImageLayout, ObjectMeta, PixelFormat};

/// Largest number of sample points per box side.
const SAMPLES_PER_SIDE: usize = 32;

/// Where a descriptor came from; descriptors of different kinds are never compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DescriptorKind {
    Embedding,
    Histogram,
}

/// A unit-length appearance vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    pub kind: DescriptorKind,
    pub values: Vec<f32>,
}

impl Descriptor {
    /// An embedding from little-endian f32 bytes; `None` if empty, ragged, non-finite or zero.
    pub fn from_embedding(data: &[u8]) -> Option<Self> {
        if data.is_empty() || !data.len().is_multiple_of(4) {
            return None;
        }
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let norm = values
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return None;
        }
        Some(Self {
            kind: DescriptorKind::Embedding,
            values: values
                .iter()
                .map(|v| (f64::from(*v) / norm) as f32)
                .collect(),
        })
    }

    /// The colour histogram of `bbox` (in image pixels) on a packed RGB or RGBA image; `None`
    /// for other formats and boxes without pixels.
    pub fn colour_histogram(
        layout: ImageLayout,
        data: &[u8],
        bbox: &BBox,
        bins: u32,
    ) -> Option<Self> {
        let bpp = match layout.format {
            PixelFormat::Rgb24 | PixelFormat::Rgba32 => layout.format.bytes_per_pixel(),
            PixelFormat::Nv12 => return None,
        };
        if data.len() < layout.min_len()? {
            return None;
        }
        let inner = BBox {
            left: bbox.left + 0.15 * bbox.width,
            top: bbox.top + 0.10 * bbox.height,
            width: 0.70 * bbox.width,
            height: 0.80 * bbox.height,
        }
        .clipped(layout.width as f32, layout.height as f32);
        let (x0, y0) = (inner.left.floor() as usize, inner.top.floor() as usize);
        let (x1, y1) = (
            inner.right().ceil() as usize,
            inner.bottom().ceil() as usize,
        );
        let (x1, y1) = (
            x1.min(layout.width as usize),
            y1.min(layout.height as usize),
        );
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        let step_x = (x1 - x0).div_ceil(SAMPLES_PER_SIDE);
        let step_y = (y1 - y0).div_ceil(SAMPLES_PER_SIDE);
        let bins = bins as usize;
        let mut counts = vec![0u32; bins * bins * bins];
        let mut samples = 0u32;
        let stride = layout.stride as usize;
        for y in (y0..y1).step_by(step_y) {
            let row = &data[y * stride..];
            for x in (x0..x1).step_by(step_x) {
                let p = &row[x * bpp..x * bpp + 3];
                let bin = |v: u8| usize::from(v) * bins / 256;
                counts[(bin(p[0]) * bins + bin(p[1])) * bins + bin(p[2])] += 1;
                samples += 1;
            }
        }
        let samples = f64::from(samples);
        Some(Self {
            kind: DescriptorKind::Histogram,
            values: counts
                .iter()
                .map(|&c| (f64::from(c) / samples).sqrt() as f32)
                .collect(),
        })
    }

    /// Cosine distance in 0..=2 (0..=1 for histograms); `None` if the two are not comparable.
    pub fn distance(&self, other: &Descriptor) -> Option<f32> {
        if self.kind != other.kind || self.values.len() != other.values.len() {
            return None;
        }
        let dot: f32 = self
            .values
            .iter()
            .zip(&other.values)
            .map(|(a, b)| a * b)
            .sum();
        Some((1.0 - dot).clamp(0.0, 2.0))
    }
}

/// The descriptor of every object of `frame` (`None` where there is none): the embedding
/// named `embedding_kind` if the object carries a usable one, else its colour histogram if the
/// frame has pixels.
pub fn describe_objects(
    frame: &FrameMeta,
    embedding_kind: &str,
    bins: u32,
) -> Vec<Option<Descriptor>> {
    let image = frame.payload.inline_image();
    // Boxes are in frame pixels; the payload may have been scaled.
    let scale = |image_size: u32, frame_size: u32| {
        if frame_size == 0 {
            1.0
        } else {
            image_size as f32 / frame_size as f32
        }
    };
    frame
        .objects
        .iter()
        .map(|object| {
            embedding(object, embedding_kind).or_else(|| {
                let (layout, data) = image?;
                let (sx, sy) = (
                    scale(layout.width, frame.width),
                    scale(layout.height, frame.height),
                );
                let b = object.bbox;
                let in_image = BBox {
                    left: b.left * sx,
                    top: b.top * sy,
                    width: b.width * sx,
                    height: b.height * sy,
                };
                Descriptor::colour_histogram(layout, data, &in_image, bins)
            })
        })
        .collect()
}

fn embedding(object: &ObjectMeta, kind: &str) -> Option<Descriptor> {
    object
        .user
        .iter()
        .find(|u| u.kind == kind)
        .and_then(|u| Descriptor::from_embedding(&u.data))
}

/// A track's last descriptors, newest last. Matching against the nearest of several past
/// looks (DeepSORT's gallery) tolerates pose and lighting changes that a single running
/// average would blur.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gallery {
    entries: VecDeque<Descriptor>,
}

impl Gallery {
    /// Adds `descriptor`, forgetting the oldest beyond `capacity`.
    pub fn push(&mut self, descriptor: Descriptor, capacity: usize) {
        self.entries.push_back(descriptor);
        while self.entries.len() > capacity {
            self.entries.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The smallest distance from `descriptor` to a comparable entry; `None` if there is none.
    pub fn distance(&self, descriptor: &Descriptor) -> Option<f32> {
        self.entries
            .iter()
            .filter_map(|e| e.distance(descriptor))
            .min_by(f32::total_cmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use vidmesh_protocol::{PayloadRef, UserMeta};

    /// A 40x20 RGB image: left half red, right half blue.
    fn image() -> (ImageLayout, Vec<u8>) {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 40, 20);
        let mut data = vec![0u8; layout.min_len().unwrap()];
        for y in 0..20 {
            for x in 0..40 {
                let p = y * layout.stride as usize + x * 3;
                data[p..p + 3].copy_from_slice(if x < 20 {
                    &[220, 20, 20]
                } else {
                    &[20, 20, 220]
                });
            }
        }
        (layout, data)
    }

    fn embedding_bytes(v: &[f32]) -> Bytes {
        Bytes::from(v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn histograms_tell_colours_apart() {
        let (layout, data) = image();
        let h = |l: f32| {
            Descriptor::colour_histogram(
                layout,
                &data,
                &BBox::from_corners(l, 0.0, l + 15.0, 20.0),
                8,
            )
            .unwrap()
        };
        let (red, red2, blue) = (h(0.0), h(3.0), h(24.0));
        assert!(red.distance(&red2).unwrap() < 1e-5);
        assert!(red.distance(&blue).unwrap() > 0.99);
        let norm: f32 = red.values.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(Descriptor::colour_histogram(
            layout,
            &data,
            &BBox::from_corners(50.0, 0.0, 60.0, 9.0),
            8
        )
        .is_none());
    }

    #[test]
    fn embeddings_are_read_from_user_meta_and_preferred_over_pixels() {
        let (layout, data) = image();
        let object = |v: &[f32]| ObjectMeta {
            bbox: BBox::from_corners(0.0, 0.0, 15.0, 20.0),
            user: vec![UserMeta {
                kind: "vidmesh.embedding/f32".into(),
                data: embedding_bytes(v),
            }],
            ..Default::default()
        };
        let frame = FrameMeta {
            width: 40,
            height: 20,
            payload: PayloadRef::Inline {
                layout,
                data: Bytes::from(data),
            },
            objects: vec![
                object(&[3.0, 4.0]),
                object(&[6.0, 8.0]),
                object(&[-4.0, 3.0]),
                object(&[]),
            ],
            ..Default::default()
        };
        let d = describe_objects(&frame, "vidmesh.embedding/f32", 8);
        let d: Vec<&Descriptor> = d.iter().map(|d| d.as_ref().unwrap()).collect();
        assert_eq!(d[0].kind, DescriptorKind::Embedding);
        assert!(d[0].distance(d[1]).unwrap() < 1e-6, "scale does not matter");
        assert!(
            (d[0].distance(d[2]).unwrap() - 1.0).abs() < 1e-6,
            "orthogonal"
        );
        assert_eq!(
            d[3].kind,
            DescriptorKind::Histogram,
            "an empty embedding falls back"
        );
        assert_eq!(d[0].distance(d[3]), None, "kinds are not compared");
        let other_kind = describe_objects(&frame, "other", 8);
        assert_eq!(
            other_kind[0].as_ref().unwrap().kind,
            DescriptorKind::Histogram
        );
    }

    #[test]
    fn the_gallery_keeps_the_newest_and_answers_with_the_nearest() {
        let e = |v: &[f32]| Descriptor::from_embedding(&embedding_bytes(v)).unwrap();
        let mut g = Gallery::default();
        assert_eq!(g.distance(&e(&[1.0, 0.0])), None);
        g.push(e(&[1.0, 0.0]), 2);
        g.push(e(&[0.0, 1.0]), 2);
        assert!(g.distance(&e(&[1.0, 0.0])).unwrap() < 1e-6);
        g.push(e(&[0.0, 1.0]), 2);
        assert!(
            (g.distance(&e(&[1.0, 0.0])).unwrap() - 1.0).abs() < 1e-6,
            "oldest forgotten"
        );
    }
}
