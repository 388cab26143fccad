//! Where a frame's pixels live.
//!
//! Metadata never embeds pixels by value in its own fields; a [`PayloadRef`] points at them. In
//! one process that is a reference-counted buffer (cloning a frame is free); between processes
//! it is a shared-memory slot or a CUDA IPC handle owned by the producer's pool; between hosts
//! it is an encoded blob.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Pixel layouts the pipeline understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B.
    #[default]
    Rgb24,
    /// Packed 8-bit R, G, B, A.
    Rgba32,
    /// Planar Y then interleaved UV at half resolution (NVDEC's native output).
    Nv12,
}

impl PixelFormat {
    /// Bytes per pixel of the first plane.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb24 => 3,
            PixelFormat::Rgba32 => 4,
            PixelFormat::Nv12 => 1,
        }
    }
}

/// Geometry of a raw image in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes from the start of one row to the next (may exceed `width * bpp`).
    pub stride: u32,
}

impl ImageLayout {
    /// A tightly packed layout, rows aligned to 4 bytes like GStreamer's raw video.
    pub fn packed(format: PixelFormat, width: u32, height: u32) -> Self {
        let row = width as usize * format.bytes_per_pixel();
        let stride = row.div_ceil(4) * 4;
        Self {
            format,
            width,
            height,
            stride: stride as u32,
        }
    }

    /// Minimum number of bytes a buffer with this layout must hold, or `None` on overflow
    /// (layouts come from untrusted peers too).
    pub fn min_len(&self) -> Option<usize> {
        let rows = match self.format {
            PixelFormat::Nv12 => (self.height as usize).checked_mul(3)? / 2,
            _ => self.height as usize,
        };
        let row_bytes = (self.width as usize).checked_mul(self.format.bytes_per_pixel())?;
        if rows == 0 {
            return Some(0);
        }
        (self.stride as usize)
            .checked_mul(rows - 1)?
            .checked_add(row_bytes)
    }
}

/// Compressed formats a payload can travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    Jpeg,
    H264,
}

/// A reference to a frame's pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum PayloadRef {
    /// Metadata-only frame (e.g. after a stage that drops pixels to save bandwidth).
    #[default]
    None,
    /// Raw pixels in a reference-counted buffer; cloning shares the buffer.
    Inline { layout: ImageLayout, data: Bytes },
    /// Raw pixels in a producer-owned shared-memory slot; the consumer sends a release for
    /// (`segment`, `slot`, `generation`) when done.
    SharedMemory {
        segment: String,
        slot: u32,
        generation: u64,
        layout: ImageLayout,
    },
    /// Pixels in device memory exported with a CUDA IPC handle (64 opaque bytes).
    CudaIpc {
        device: u32,
        handle: Vec<u8>,
        offset: u64,
        layout: ImageLayout,
    },
    /// A compressed frame.
    Encoded { codec: Codec, data: Bytes },
}

impl PayloadRef {
    /// Raw pixels of an in-process frame, checked against their layout.
    pub fn inline_image(&self) -> Option<(ImageLayout, &Bytes)> {
        match self {
            PayloadRef::Inline { layout, data } => {
                let needed = layout.min_len()?;
                (data.len() >= needed).then_some((*layout, data))
            }
            _ => None,
        }
    }

    /// A short name for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PayloadRef::None => "none",
            PayloadRef::Inline { .. } => "inline",
            PayloadRef::SharedMemory { .. } => "shared-memory",
            PayloadRef::CudaIpc { .. } => "cuda-ipc",
            PayloadRef::Encoded { .. } => "encoded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_layout_aligns_rows_to_four_bytes() {
        let l = ImageLayout::packed(PixelFormat::Rgb24, 5, 2);
        assert_eq!(l.stride, 16);
        assert_eq!(l.min_len(), Some(16 + 15));
    }

    #[test]
    fn inline_image_rejects_short_buffers() {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 4, 4);
        let short = PayloadRef::Inline {
            layout,
            data: Bytes::from(vec![0u8; 10]),
        };
        assert!(short.inline_image().is_none());
        let ok = PayloadRef::Inline {
            layout,
            data: Bytes::from(vec![0u8; 48]),
        };
        assert!(ok.inline_image().is_some());
    }

    #[test]
    fn huge_layout_does_not_overflow() {
        let l = ImageLayout {
            format: PixelFormat::Rgb24,
            width: u32::MAX,
            height: u32::MAX,
            stride: u32::MAX,
        };
        // On 64-bit this fits; the point is that it does not panic.
        let _ = l.min_len();
    }
}
