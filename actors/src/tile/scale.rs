//! Bilinear scaling of a packed RGB image into a rectangle of a larger one (half-pixel
//! centres, like NvBufSurfTransform), with the per-axis taps computed once per size pair.

use vidmesh_protocol::ImageLayout;

/// Where one destination coordinate reads from along one axis; `weight` is the share of
/// `upper`, in 1/256.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lower: usize,
    upper: usize,
    weight: u32,
}

fn taps(src: u32, dst: u32) -> Vec<Tap> {
    let scale = src as f64 / dst as f64;
    let last = src as usize - 1;
    (0..dst)
        .map(|i| {
            let pos = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let lower = (pos.floor() as usize).min(last);
            Tap {
                lower,
                upper: (lower + 1).min(last),
                weight: ((pos - pos.floor()) * 256.0).round() as u32,
            }
        })
        .collect()
}

/// Scaling from one source size to one destination size.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePlan {
    src: (u32, u32),
    xs: Vec<Tap>,
    ys: Vec<Tap>,
}

impl ScalePlan {
    /// Both sizes must be at least 1x1.
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        Self {
            src: (src_w, src_h),
            xs: taps(src_w, dst_w),
            ys: taps(src_h, dst_h),
        }
    }

    pub fn fits(&self, src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> bool {
        self.src == (src_w, src_h)
            && self.xs.len() == dst_w as usize
            && self.ys.len() == dst_h as usize
    }

    /// Writes the scaled `src` with its top-left at (`x0`, `y0`) of `dst`. The caller has
    /// checked that `src` holds its layout and that the rectangle lies inside `dst`.
    pub fn run(
        &self,
        src: &[u8],
        src_layout: ImageLayout,
        dst: &mut [u8],
        dst_stride: usize,
        x0: usize,
        y0: usize,
    ) {
        let s_stride = src_layout.stride as usize;
        for (dy, ty) in self.ys.iter().enumerate() {
            let row_a = &src[ty.lower * s_stride..];
            let row_b = &src[ty.upper * s_stride..];
            let out = &mut dst[(y0 + dy) * dst_stride + x0 * 3..];
            let wy = ty.weight;
            for (dx, tx) in self.xs.iter().enumerate() {
                let (a, b) = (tx.lower * 3, tx.upper * 3);
                let wx = tx.weight;
                for c in 0..3 {
                    let top = row_a[a + c] as u32 * (256 - wx) + row_a[b + c] as u32 * wx;
                    let bottom = row_b[a + c] as u32 * (256 - wx) + row_b[b + c] as u32 * wx;
                    let v = (top * (256 - wy) + bottom * wy + (1 << 15)) >> 16;
                    out[dx * 3 + c] = v as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::PixelFormat;

    #[test]
    fn same_size_is_a_copy_and_halving_averages() {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 4, 2);
        let mut src = vec![0u8; layout.min_len().unwrap()];
        for y in 0..2 {
            for x in 0..4 {
                let o = y * layout.stride as usize + x * 3;
                src[o..o + 3].copy_from_slice(&[(x * 40) as u8, (y * 100) as u8, 7]);
            }
        }
        let mut dst = vec![0u8; 4 * 3 * 2];
        ScalePlan::new(4, 2, 4, 2).run(&src, layout, &mut dst, 12, 0, 0);
        assert_eq!(&dst[..3], &[0, 0, 7]);
        assert_eq!(&dst[12 + 9..12 + 12], &[120, 100, 7]);
        let mut half = vec![0u8; 2 * 3];
        ScalePlan::new(4, 2, 2, 1).run(&src, layout, &mut half, 6, 0, 0);
        // Pixel centres fall between source pixels: the mean of the 2x2 block.
        assert_eq!(half, vec![20, 50, 7, 100, 50, 7]);
    }
}
