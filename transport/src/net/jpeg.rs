//! JPEG payloads for links between hosts (`payload = "jpeg"`): about a tenth of the bytes of
//! raw RGB for the price of lossy pixels, like Savant's JPEG transport between hosts.

use bytes::Bytes;
use vidmesh_protocol::{ImageLayout, PixelFormat};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Largest frame side accepted from a peer (8K is 7680).
const MAX_SIDE: usize = 8192;

/// Encodes packed RGB pixels; `None` for formats JPEG does not carry here (RGBA, NV12) or
/// geometry that does not fit, which then travel raw.
pub fn encode(layout: &ImageLayout, data: &[u8], quality: u8) -> Option<Bytes> {
    if layout.format != PixelFormat::Rgb24 || layout.width > 65_535 || layout.height > 65_535 {
        return None;
    }
    let (w, h) = (layout.width as usize, layout.height as usize);
    let row = w * 3;
    if data.len() < layout.min_len()? {
        return None;
    }
    let packed: std::borrow::Cow<[u8]> = if layout.stride as usize == row {
        std::borrow::Cow::Borrowed(&data[..row * h])
    } else {
        std::borrow::Cow::Owned(
            (0..h)
                .flat_map(|y| &data[y * layout.stride as usize..][..row])
                .copied()
                .collect(),
        )
    };
    let mut out = Vec::with_capacity(row * h / 8);
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(&packed, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    Some(Bytes::from(out))
}

/// Decodes a JPEG from a peer into packed RGB with rows aligned like GStreamer's.
pub fn decode(jpeg: &[u8]) -> Result<(ImageLayout, Bytes), String> {
    let options = DecoderOptions::default()
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    // The decoder is fuzzed upstream; a panic on hostile bytes must still not take the stage down.
    let decoded = std::panic::catch_unwind(|| {
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
        decoder.decode_headers().map_err(|e| e.to_string())?;
        let info = decoder
            .info()
            .ok_or_else(|| "no image size in the JPEG header".to_string())?;
        let (w, h) = (info.width as usize, info.height as usize);
        let len = decoder
            .output_buffer_size()
            .ok_or_else(|| "no output size".to_string())?;
        let mut pixels = vec![0u8; len];
        decoder
            .decode_into(&mut pixels)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((w, h, pixels))
    })
    .map_err(|_| "the JPEG decoder failed on this input".to_string())??;
    let (w, h, pixels) = decoded;
    if pixels.len() != w * h * 3 {
        return Err(format!(
            "decoded {} bytes for a {w}x{h} RGB image",
            pixels.len()
        ));
    }
    let layout = ImageLayout::packed(PixelFormat::Rgb24, w as u32, h as u32);
    let stride = layout.stride as usize;
    if stride == w * 3 {
        return Ok((layout, Bytes::from(pixels)));
    }
    let mut out = vec![0u8; stride * h];
    for (y, row) in pixels.chunks_exact(w * 3).enumerate() {
        out[y * stride..][..w * 3].copy_from_slice(row);
    }
    Ok((layout, Bytes::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_survives_the_round_trip_within_jpeg_loss() {
        // 33 px wide: rows are padded to 4 bytes, exercising both repackings.
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 33, 20);
        let mut data = vec![0u8; layout.min_len().unwrap()];
        for y in 0..20 {
            for x in 0..33 {
                let p = y * layout.stride as usize + x * 3;
                data[p..p + 3].copy_from_slice(&[(x * 7) as u8, (y * 12) as u8, 128]);
            }
        }
        let jpeg = encode(&layout, &data, 95).unwrap();
        assert!(jpeg.len() < data.len());
        let (back, pixels) = decode(&jpeg).unwrap();
        assert_eq!(back, layout);
        let worst = data
            .iter()
            .zip(pixels.iter())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 24, "largest channel error {worst}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xd8\xff",
            b"not a jpeg at all",
            &[0xff; 4096],
        ] {
            assert!(decode(bytes).is_err());
        }
        let layout = ImageLayout::packed(PixelFormat::Nv12, 16, 16);
        assert!(encode(&layout, &[0; 384], 90).is_none(), "NV12 travels raw");
    }
}
