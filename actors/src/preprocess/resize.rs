//! Bilinear and nearest resampling with per-axis tables computed once per resolution.

use serde::Deserialize;

/// How destination pixels sample the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Interpolation {
    /// Half-pixel centres: `src = (dst + 0.5) * scale - 0.5` (OpenCV, NvBufSurfTransform).
    #[default]
    #[serde(rename = "bilinear")]
    Bilinear,
    /// TensorFlow 1 `ResizeBilinear` (align_corners=false, half_pixel_centers=false):
    /// `src = dst * scale`, computed in f32 in TF's order so results match its graph.
    #[serde(rename = "bilinear-tf1")]
    BilinearTf1,
    #[serde(rename = "nearest")]
    Nearest,
}

/// Where one destination coordinate reads from along one axis.
#[derive(Debug, Clone, Copy)]
struct Tap {
    lower: usize,
    upper: usize,
    lerp: f32,
}

/// Precomputed taps for a source → destination size pair.
#[derive(Debug, Clone)]
pub struct ResizePlan {
    xs: Vec<Tap>,
    ys: Vec<Tap>,
}

fn taps(src: u32, dst: u32, mode: Interpolation) -> Vec<Tap> {
    let scale = src as f32 / dst as f32;
    let last = src as usize - 1;
    (0..dst)
        .map(|i| {
            let pos = match mode {
                Interpolation::Bilinear => ((i as f32 + 0.5) * scale - 0.5).max(0.0),
                Interpolation::BilinearTf1 => i as f32 * scale,
                Interpolation::Nearest => {
                    let n = ((i as f32 * scale).floor() as usize).min(last);
                    return Tap {
                        lower: n,
                        upper: n,
                        lerp: 0.0,
                    };
                }
            };
            let floor = pos.floor();
            let lower = (floor as usize).min(last);
            // TF uses ceil for the upper tap; for non-integer positions that equals floor + 1.
            let upper = (pos.ceil() as usize).min(last);
            Tap {
                lower,
                upper,
                lerp: pos - floor,
            }
        })
        .collect()
}

impl ResizePlan {
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32, mode: Interpolation) -> Self {
        Self {
            xs: taps(src_w, dst_w, mode),
            ys: taps(src_h, dst_h, mode),
        }
    }

    pub fn dst_width(&self) -> u32 {
        self.xs.len() as u32
    }

    pub fn dst_height(&self) -> u32 {
        self.ys.len() as u32
    }

    /// Samples destination row `y` of a packed RGB image into `out` (RGB triples as f32
    /// 0..255, `dst_width * 3` values).
    pub fn sample_row(&self, data: &[u8], stride: usize, y: usize, out: &mut [f32]) {
        let ty = self.ys[y];
        let top = &data[ty.lower * stride..];
        let bottom = &data[ty.upper * stride..];
        let wy = ty.lerp;
        for (px, tx) in out.chunks_exact_mut(3).zip(&self.xs) {
            let (l, r, wx) = (tx.lower * 3, tx.upper * 3, tx.lerp);
            for c in 0..3 {
                let tl = top[l + c] as f32;
                let tr = top[r + c] as f32;
                let bl = bottom[l + c] as f32;
                let br = bottom[r + c] as f32;
                // Same operation order as TensorFlow's compute_lerp, so f32 results agree.
                let t = tl + (tr - tl) * wx;
                let b = bl + (br - bl) * wx;
                px[c] = t + (b - t) * wy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf1_taps_sample_at_dst_times_scale() {
        let t = taps(4, 2, Interpolation::BilinearTf1);
        assert_eq!((t[0].lower, t[0].upper, t[0].lerp), (0, 0, 0.0));
        assert_eq!((t[1].lower, t[1].upper, t[1].lerp), (2, 2, 0.0));
        let t = taps(3, 2, Interpolation::BilinearTf1);
        assert_eq!((t[1].lower, t[1].upper), (1, 2));
        assert!((t[1].lerp - 0.5).abs() < 1e-6);
    }

    #[test]
    fn half_pixel_taps_are_centred() {
        let t = taps(4, 2, Interpolation::Bilinear);
        // dst 0 centre maps to src 0.5: halfway between pixels 0 and 1.
        assert_eq!((t[0].lower, t[0].upper), (0, 1));
        assert!((t[0].lerp - 0.5).abs() < 1e-6);
    }

    #[test]
    fn upscaling_clamps_at_the_last_pixel() {
        let t = taps(2, 5, Interpolation::BilinearTf1);
        assert!(t.iter().all(|tap| tap.upper <= 1));
    }
}
