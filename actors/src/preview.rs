//! Live preview thumbnails: the newest frame of each source leaving a stage, downscaled and
//! JPEG-encoded at most a few times a second, for the dashboard to show.
//!
//! The runtime attaches a [`PreviewBoard`] to the outputs of the stages users look at (the OSD
//! by default), so previews show what the pipeline drew, and no stage kind needs to know about
//! them. Encoding happens on the stage's thread but only once per source per interval: at the
//! default 2 Hz and 320 px width that is well under a millisecond a second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vidmesh_protocol::{Batch, FrameMeta, ImageLayout, PixelFormat};

/// Width of a thumbnail in pixels (narrower frames keep theirs).
pub const THUMBNAIL_WIDTH: u32 = 320;

/// JPEG quality of thumbnails: small files, good enough to see boxes and labels.
const QUALITY: u8 = 70;

/// One thumbnail.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub source_id: u32,
    pub source_name: String,
    pub frame_num: u64,
    pub width: u32,
    pub height: u32,
    /// When it was taken, Unix epoch milliseconds.
    pub taken_ms: u64,
    pub jpeg: Vec<u8>,
}

/// The newest thumbnail of every source seen, shared between the stage threads that offer
/// frames and the server threads that read them.
#[derive(Debug)]
pub struct PreviewBoard {
    interval: Duration,
    slots: Mutex<BTreeMap<u32, Slot>>,
}

#[derive(Debug)]
struct Slot {
    offered: Instant,
    preview: Arc<Preview>,
}

impl PreviewBoard {
    /// A board that takes one thumbnail per source per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes thumbnails of the frames of `batch` whose source has none newer than the interval.
    /// Frames without in-process pixels are skipped.
    pub fn offer(&self, batch: &Batch) {
        for frame in &batch.frames {
            if !self.due(frame.source_id) {
                continue;
            }
            let Some(preview) = thumbnail(frame) else {
                continue;
            };
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.insert(
                frame.source_id,
                Slot {
                    offered: Instant::now(),
                    preview: Arc::new(preview),
                },
            );
        }
    }

    fn due(&self, source_id: u32) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .get(&source_id)
            .is_none_or(|s| s.offered.elapsed() >= self.interval)
    }

    /// The newest thumbnail of a source.
    pub fn latest(&self, source_id: u32) -> Option<Arc<Preview>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(&source_id).map(|s| s.preview.clone())
    }

    /// The newest thumbnail of every source, by source id.
    pub fn all(&self) -> Vec<Arc<Preview>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|s| s.preview.clone()).collect()
    }
}

/// A thumbnail of `frame`, or `None` when its pixels are not in this process or malformed.
pub fn thumbnail(frame: &FrameMeta) -> Option<Preview> {
    let (layout, data) = frame.payload.inline_image()?;
    let (width, height, rgb) = downscale(&layout, data, THUMBNAIL_WIDTH)?;
    let jpeg = vidmesh_transport::net::jpeg::encode(
        &ImageLayout::packed(PixelFormat::Rgb24, width, height),
        &pad_rows(&rgb, width, height),
        QUALITY,
    )?;
    Some(Preview {
        source_id: frame.source_id,
        source_name: frame.source_name.clone(),
        frame_num: frame.frame_num,
        width,
        height,
        taken_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        jpeg: jpeg.to_vec(),
    })
}

/// Packed RGB rows to rows padded to 4 bytes, the layout [`ImageLayout::packed`] describes.
fn pad_rows(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    let row = width as usize * 3;
    let stride = ImageLayout::packed(PixelFormat::Rgb24, width, height).stride as usize;
    if stride == row {
        return rgb.to_vec();
    }
    let mut out = vec![0; stride * height as usize];
    for (dst, src) in out.chunks_exact_mut(stride).zip(rgb.chunks_exact(row)) {
        dst[..row].copy_from_slice(src);
    }
    out
}

/// Averages `layout`'s pixels down to at most `max_width` wide (aspect kept) as packed RGB:
/// `(width, height, pixels)`. `None` for an empty image or data shorter than its layout.
pub fn downscale(layout: &ImageLayout, data: &[u8], max_width: u32) -> Option<(u32, u32, Vec<u8>)> {
    let (sw, sh) = (layout.width as usize, layout.height as usize);
    if sw == 0 || sh == 0 || data.len() < layout.min_len()? {
        return None;
    }
    let dw = sw.min(max_width.max(1) as usize);
    let dh = ((sh * dw) / sw).max(1);
    let stride = layout.stride as usize;
    let mut out = Vec::with_capacity(dw * dh * 3);
    for dy in 0..dh {
        let (y0, y1) = (dy * sh / dh, ((dy + 1) * sh / dh).max(dy * sh / dh + 1));
        for dx in 0..dw {
            let (x0, x1) = (dx * sw / dw, ((dx + 1) * sw / dw).max(dx * sw / dw + 1));
            // A box filter over at most a few source pixels per side; every other row and
            // column is enough for a thumbnail and halves the work on 1080p.
            let step = ((x1 - x0).min(y1 - y0) / 2).max(1);
            let mut sum = [0u32; 3];
            let mut n = 0u32;
            for y in (y0..y1).step_by(step) {
                for x in (x0..x1).step_by(step) {
                    let px = pixel(layout.format, data, stride, sw, sh, x, y);
                    for c in 0..3 {
                        sum[c] += px[c] as u32;
                    }
                    n += 1;
                }
            }
            out.extend(sum.map(|s| (s / n) as u8));
        }
    }
    Some((dw as u32, dh as u32, out))
}

/// The RGB value at (x, y); NV12 with BT.601 limited range, as GStreamer's decoders output.
fn pixel(
    format: PixelFormat,
    data: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    x: usize,
    y: usize,
) -> [u8; 3] {
    match format {
        PixelFormat::Rgb24 => {
            let i = y * stride + x * 3;
            [data[i], data[i + 1], data[i + 2]]
        }
        PixelFormat::Rgba32 => {
            let i = y * stride + x * 4;
            [data[i], data[i + 1], data[i + 2]]
        }
        PixelFormat::Nv12 => {
            let luma = data[y * stride + x] as f32;
            let uv = height * stride + (y / 2) * stride + (x / 2) * 2;
            let (u, v) = if uv + 1 < data.len() && x < width {
                (data[uv] as f32 - 128.0, data[uv + 1] as f32 - 128.0)
            } else {
                (0.0, 0.0)
            };
            let c = 1.164 * (luma - 16.0);
            let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
            [
                clamp(c + 1.596 * v),
                clamp(c - 0.392 * u - 0.813 * v),
                clamp(c + 2.017 * u),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use vidmesh_protocol::PayloadRef;

    fn frame(source_id: u32, layout: ImageLayout, data: Vec<u8>) -> FrameMeta {
        FrameMeta {
            source_id,
            source_name: format!("cam{source_id}"),
            width: layout.width,
            height: layout.height,
            payload: PayloadRef::Inline {
                layout,
                data: Bytes::from(data),
            },
            ..Default::default()
        }
    }

    /// A 640x360 RGB frame, left half red, right half blue.
    fn halves() -> (ImageLayout, Vec<u8>) {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 640, 360);
        let mut data = vec![0u8; layout.min_len().unwrap()];
        for y in 0..360 {
            for x in 0..640 {
                let i = y * layout.stride as usize + x * 3;
                data[i..i + 3].copy_from_slice(if x < 320 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        (layout, data)
    }

    #[test]
    fn downscale_keeps_aspect_and_colours() {
        let (layout, data) = halves();
        let (w, h, rgb) = downscale(&layout, &data, 320).unwrap();
        assert_eq!((w, h), (320, 180));
        assert_eq!(&rgb[..3], &[255, 0, 0]);
        assert_eq!(&rgb[rgb.len() - 3..], &[0, 0, 255]);
        // Narrower than the limit: kept.
        assert_eq!(downscale(&layout, &data, 1000).unwrap().0, 640);
    }

    #[test]
    fn nv12_grey_stays_grey() {
        let layout = ImageLayout::packed(PixelFormat::Nv12, 64, 32);
        let mut data = vec![128u8; layout.min_len().unwrap()];
        data[..64 * 32].fill(126); // Y: mid grey
        let (_, _, rgb) = downscale(&layout, &data, 16).unwrap();
        for px in rgb.chunks(3) {
            assert!(px.iter().all(|&c| (c as i32 - 128).abs() <= 2), "{px:?}");
        }
    }

    #[test]
    fn malformed_images_give_no_thumbnail() {
        let (mut layout, data) = halves();
        assert!(downscale(&layout, &data[..1000], 320).is_none());
        layout.width = 0;
        assert!(downscale(&layout, &data, 320).is_none());
        assert!(thumbnail(&FrameMeta::default()).is_none());
    }

    #[test]
    fn the_board_keeps_the_newest_per_source_at_most_once_per_interval() {
        let board = PreviewBoard::new(Duration::from_secs(3600));
        let (layout, data) = halves();
        let mut batch = Batch::default();
        batch.frames.push(frame(0, layout, data.clone()));
        batch.frames.push(frame(1, layout, data.clone()));
        board.offer(&batch);
        let first = board.latest(0).unwrap();
        assert_eq!((first.width, first.height), (320, 180));
        assert!(first.jpeg.starts_with(&[0xFF, 0xD8]), "a JPEG");
        assert_eq!(board.all().len(), 2);
        // Within the interval a newer frame is not encoded.
        let mut later = frame(0, layout, data);
        later.frame_num = 7;
        board.offer(&Batch {
            frames: vec![later.clone()],
            ..Default::default()
        });
        assert_eq!(board.latest(0).unwrap().frame_num, 0);
        let eager = PreviewBoard::new(Duration::ZERO);
        eager.offer(&Batch {
            frames: vec![later],
            ..Default::default()
        });
        assert_eq!(eager.latest(0).unwrap().frame_num, 7);
        assert!(eager.latest(5).is_none());
    }
}
