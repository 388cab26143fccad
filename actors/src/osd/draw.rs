//! Drawing primitives on a packed RGB image, with alpha blending and clipping to the frame.

use vidmesh_protocol::{BBox, DisplayCircle, DisplayLine, DisplayRect, ImageLayout, Mask, Rgba};

pub struct Canvas<'a> {
    pixels: &'a mut [u8],
    layout: ImageLayout,
}

impl<'a> Canvas<'a> {
    pub fn new(pixels: &'a mut [u8], layout: ImageLayout) -> Self {
        Self { pixels, layout }
    }

    pub fn width(&self) -> i64 {
        self.layout.width as i64
    }

    pub fn height(&self) -> i64 {
        self.layout.height as i64
    }

    /// Blends `color` into pixel (x, y) with extra coverage `alpha` (0..=255); outside the
    /// frame is ignored.
    #[inline]
    pub fn blend(&mut self, x: i64, y: i64, color: Rgba, alpha: u8) {
        if x < 0 || y < 0 || x >= self.width() || y >= self.height() {
            return;
        }
        let a = color.a as u32 * alpha as u32 / 255;
        if a == 0 {
            return;
        }
        let o = y as usize * self.layout.stride as usize + x as usize * 3;
        let px = &mut self.pixels[o..o + 3];
        for (dst, src) in px.iter_mut().zip([color.r, color.g, color.b]) {
            *dst = ((src as u32 * a + *dst as u32 * (255 - a)) / 255) as u8;
        }
    }

    /// Blurs the pixels inside `b` with three passes of a box blur of `radius` (close to a
    /// Gaussian), reading only pixels inside the box so nothing from outside bleeds in and
    /// the result depends on the box's content alone.
    pub fn blur(&mut self, b: &BBox, radius: u32) {
        let x0 = (b.left.floor().max(0.0) as i64).min(self.width());
        let y0 = (b.top.floor().max(0.0) as i64).min(self.height());
        let x1 = (b.right().ceil() as i64).clamp(x0, self.width());
        let y1 = (b.bottom().ceil() as i64).clamp(y0, self.height());
        let (w, h) = ((x1 - x0) as usize, (y1 - y0) as usize);
        if w == 0 || h == 0 || radius == 0 {
            return;
        }
        let stride = self.layout.stride as usize;
        let mut plane = vec![0f32; w * h * 3];
        for y in 0..h {
            let row = (y0 as usize + y) * stride + x0 as usize * 3;
            for (d, s) in plane[y * w * 3..(y + 1) * w * 3]
                .iter_mut()
                .zip(&self.pixels[row..row + w * 3])
            {
                *d = *s as f32;
            }
        }
        let r = radius as usize;
        let mut scratch = vec![0f32; w.max(h) * 3];
        for _ in 0..3 {
            for y in 0..h {
                box_blur_line(&mut plane, y * w * 3, 3, w, r, &mut scratch);
            }
            for x in 0..w {
                box_blur_line(&mut plane, x * 3, w * 3, h, r, &mut scratch);
            }
        }
        for y in 0..h {
            let row = (y0 as usize + y) * stride + x0 as usize * 3;
            for (d, s) in self.pixels[row..row + w * 3]
                .iter_mut()
                .zip(&plane[y * w * 3..(y + 1) * w * 3])
            {
                *d = s.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgba) {
        let (x0, x1) = (x0.max(0), x1.min(self.width()));
        let (y0, y1) = (y0.max(0), y1.min(self.height()));
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, color, 255);
            }
        }
    }

    /// A rectangle outline of `border_width` drawn inside the box, plus its optional fill.
    pub fn rect(&mut self, r: &DisplayRect) {
        let (x0, y0) = (r.bbox.left.round() as i64, r.bbox.top.round() as i64);
        let (x1, y1) = (
            r.bbox.right().round() as i64,
            r.bbox.bottom().round() as i64,
        );
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        if let Some(fill) = r.fill {
            self.fill_rect(x0, y0, x1, y1, fill);
        }
        let w = (r.border_width as i64)
            .min((x1 - x0 + 1) / 2)
            .min((y1 - y0 + 1) / 2);
        if w <= 0 {
            return;
        }
        let c = r.border_color;
        self.fill_rect(x0, y0, x1, y0 + w, c);
        self.fill_rect(x0, y1 - w, x1, y1, c);
        self.fill_rect(x0, y0 + w, x0 + w, y1 - w, c);
        self.fill_rect(x1 - w, y0 + w, x1, y1 - w, c);
    }

    /// A text background box.
    pub fn fill(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, color: Rgba) {
        self.fill_rect(
            x0.floor() as i64,
            y0.floor() as i64,
            x1.ceil() as i64,
            y1.ceil() as i64,
            color,
        );
    }

    /// A line of the given width (square brush), stepped along its longer axis.
    pub fn line(&mut self, l: &DisplayLine) {
        let (dx, dy) = (l.x2 - l.x1, l.y2 - l.y1);
        let steps = dx.abs().max(dy.abs()).ceil().clamp(1.0, 1.0e5) as i64;
        let half = (l.width.max(1) as i64 - 1) / 2;
        let extra = (l.width.max(1) as i64 - 1) - half;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let (x, y) = (
                (l.x1 + dx * t).round() as i64,
                (l.y1 + dy * t).round() as i64,
            );
            self.fill_rect(x - half, y - half, x + extra + 1, y + extra + 1, l.color);
        }
    }

    /// A one-pixel circle outline (midpoint algorithm).
    pub fn circle(&mut self, c: &DisplayCircle) {
        let (cx, cy) = (c.x.round() as i64, c.y.round() as i64);
        let r = c.radius.round().clamp(0.0, 1.0e5) as i64;
        let (mut x, mut y, mut err) = (r, 0i64, 1 - r);
        while x >= y {
            for (px, py) in [
                (x, y),
                (y, x),
                (-y, x),
                (-x, y),
                (-x, -y),
                (-y, -x),
                (y, -x),
                (x, -y),
            ] {
                self.blend(cx + px, cy + py, c.color, 255);
            }
            y += 1;
            if err < 0 {
                err += 2 * y + 1;
            } else {
                x -= 1;
                err += 2 * (y - x) + 1;
            }
        }
    }
    /// Connected segments through `points` (a track's trail).
    pub fn polyline(&mut self, points: &[(f32, f32)], width: u32, color: Rgba) {
        for pair in points.windows(2) {
            self.line(&DisplayLine {
                x1: pair[0].0,
                y1: pair[0].1,
                x2: pair[1].0,
                y2: pair[1].1,
                width,
                color,
            });
        }
    }

    /// Blends `color` at `opacity` (0..=1) over the pixels of `bbox` where the instance mask
    /// is above its threshold. The mask is stretched over the box (nearest sample at each
    /// pixel centre), as nvdsosd does. Returns why a malformed mask was not drawn.
    pub fn mask(
        &mut self,
        bbox: &BBox,
        mask: &Mask,
        color: Rgba,
        opacity: f32,
    ) -> Result<(), String> {
        let (mw, mh) = (mask.width as usize, mask.height as usize);
        if mw == 0 || mh == 0 || mw.checked_mul(mh) != Some(mask.data.len()) {
            return Err(format!(
                "mask of {}x{} holds {} values",
                mask.width,
                mask.height,
                mask.data.len()
            ));
        }
        let finite = [bbox.left, bbox.top, bbox.width, bbox.height]
            .iter()
            .all(|v| v.is_finite());
        if !finite || bbox.width <= 0.0 || bbox.height <= 0.0 {
            return Ok(());
        }
        let alpha = (opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
        let x0 = (bbox.left.floor() as i64).max(0);
        let x1 = (bbox.right().ceil() as i64).min(self.width());
        let y0 = (bbox.top.floor() as i64).max(0);
        let y1 = (bbox.bottom().ceil() as i64).min(self.height());
        for y in y0..y1 {
            let fy = (y as f32 + 0.5 - bbox.top) / bbox.height;
            if !(0.0..1.0).contains(&fy) {
                continue;
            }
            let row = ((fy * mh as f32) as usize).min(mh - 1) * mw;
            for x in x0..x1 {
                let fx = (x as f32 + 0.5 - bbox.left) / bbox.width;
                if !(0.0..1.0).contains(&fx) {
                    continue;
                }
                let col = ((fx * mw as f32) as usize).min(mw - 1);
                // NaN compares false: not inside.
                if mask.data[row + col] > mask.threshold {
                    self.blend(x, y, color, alpha);
                }
            }
        }
        Ok(())
    }
}

/// One box-blur pass along a line of `len` RGB pixels starting at `start`, `step` values
/// apart: each pixel becomes the mean of the pixels within `radius` (the window shrinks at the
/// ends rather than reading outside the line).
fn box_blur_line(
    plane: &mut [f32],
    start: usize,
    step: usize,
    len: usize,
    radius: usize,
    scratch: &mut [f32],
) {
    let at = |i: usize| start + i * step;
    for c in 0..3 {
        let mut sum = 0f32;
        let mut count = 0usize;
        // Window [lo, hi) around pixel i, grown and shrunk incrementally.
        let (mut lo, mut hi) = (0usize, 0usize);
        for i in 0..len {
            let want_lo = i.saturating_sub(radius);
            let want_hi = (i + radius + 1).min(len);
            while hi < want_hi {
                sum += plane[at(hi) + c];
                count += 1;
                hi += 1;
            }
            while lo < want_lo {
                sum -= plane[at(lo) + c];
                count -= 1;
                lo += 1;
            }
            scratch[i * 3 + c] = sum / count as f32;
        }
    }
    for i in 0..len {
        plane[at(i)..at(i) + 3].copy_from_slice(&scratch[i * 3..i * 3 + 3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::{BBox, PixelFormat};

    #[test]
    fn rect_outline_stays_inside_the_box_and_leaves_the_middle() {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 10, 10);
        let mut px = vec![0u8; layout.min_len().unwrap()];
        let mut c = Canvas::new(&mut px, layout);
        c.rect(&DisplayRect {
            bbox: BBox::from_corners(2.0, 2.0, 8.0, 8.0),
            border_width: 1,
            border_color: Rgba::new(255, 0, 0, 255),
            fill: None,
        });
        let at = |x: usize, y: usize| px[y * layout.stride as usize + x * 3];
        assert_eq!(at(2, 2), 255);
        assert_eq!(at(7, 5), 255);
        assert_eq!(at(5, 5), 0, "inside untouched");
        assert_eq!(at(8, 8), 0, "right/bottom edges are exclusive");
    }

    #[test]
    fn drawing_off_frame_is_clipped_not_a_panic() {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 4, 4);
        let mut px = vec![0u8; layout.min_len().unwrap()];
        let mut c = Canvas::new(&mut px, layout);
        c.rect(&DisplayRect {
            bbox: BBox::from_corners(-50.0, -50.0, 500.0, 500.0),
            border_width: 3,
            border_color: Rgba::new(1, 1, 1, 255),
            fill: None,
        });
        c.line(&DisplayLine {
            x1: -1e9,
            y1: 0.0,
            x2: 1e9,
            y2: 3.0,
            width: 5,
            color: Rgba::new(1, 1, 1, 255),
        });
        c.circle(&DisplayCircle {
            x: 2.0,
            y: 2.0,
            radius: 100.0,
            color: Rgba::new(1, 1, 1, 255),
        });
    }

    fn grey(width: u32, height: u32) -> (ImageLayout, Vec<u8>) {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, width, height);
        (layout, vec![100u8; layout.min_len().unwrap()])
    }

    fn pixel(px: &[u8], layout: ImageLayout, x: usize, y: usize) -> [u8; 3] {
        let o = y * layout.stride as usize + x * 3;
        [px[o], px[o + 1], px[o + 2]]
    }

    #[test]
    fn mask_blends_the_colour_where_the_mask_is_set_and_only_inside_the_box() {
        let (layout, mut px) = grey(10, 10);
        let mut c = Canvas::new(&mut px, layout);
        // A 2x2 mask over a 4x4 box: top-left and bottom-right quarters set.
        let mask = Mask {
            width: 2,
            height: 2,
            threshold: 0.5,
            data: vec![0.9, 0.1, f32::NAN, 0.6],
        };
        c.mask(
            &BBox::from_corners(2.0, 2.0, 6.0, 6.0),
            &mask,
            Rgba::new(255, 0, 0, 255),
            0.4,
        )
        .unwrap();
        // 40% red over grey 100: 255*0.4 + 100*0.6 = 162, 0*0.4 + 100*0.6 = 60.
        for (x, y) in [(2, 2), (3, 3), (4, 4), (5, 5)] {
            assert_eq!(pixel(&px, layout, x, y), [162, 60, 60], "({x},{y}) masked");
        }
        for (x, y) in [(4, 2), (5, 3), (2, 4), (3, 5), (1, 1), (6, 6), (8, 2)] {
            assert_eq!(
                pixel(&px, layout, x, y),
                [100, 100, 100],
                "({x},{y}) not masked"
            );
        }
    }

    #[test]
    fn malformed_masks_are_refused_not_a_panic() {
        let (layout, mut px) = grey(4, 4);
        let mut c = Canvas::new(&mut px, layout);
        let bbox = BBox::from_corners(0.0, 0.0, 4.0, 4.0);
        let red = Rgba::new(255, 0, 0, 255);
        for (w, h, n) in [(2, 2, 3), (0, 2, 0), (u32::MAX, u32::MAX, 1)] {
            let mask = Mask {
                width: w,
                height: h,
                threshold: 0.5,
                data: vec![1.0; n],
            };
            assert!(c.mask(&bbox, &mask, red, 0.5).is_err(), "{w}x{h} with {n}");
        }
        let ok = Mask {
            width: 1,
            height: 1,
            threshold: 0.5,
            data: vec![1.0],
        };
        let huge = BBox::from_corners(-1e30, f32::NAN, 1e30, 1e30);
        assert!(c.mask(&huge, &ok, red, 0.5).is_ok());
        assert!(px.iter().all(|&v| v == 100));
    }

    #[test]
    fn blur_smooths_inside_the_box_and_leaves_the_rest() {
        // A checkerboard of 0/255 pixels: after a blur the box's pixels are near the mean.
        let layout = ImageLayout::packed(PixelFormat::Rgb24, 40, 30);
        let mut px: Vec<u8> = (0..30 * 40)
            .flat_map(|i| {
                let v = if (i % 40 + i / 40) % 2 == 0 { 255 } else { 0 };
                [v, v, v]
            })
            .collect();
        let before = px.clone();
        Canvas::new(&mut px, layout).blur(&BBox::from_corners(10.0, 5.0, 30.0, 25.0), 4);
        for y in 0..30 {
            for x in 0..40 {
                let inside = (10..30).contains(&x) && (5..25).contains(&y);
                let (a, b) = (pixel(&px, layout, x, y), pixel(&before, layout, x, y));
                if inside {
                    assert!((100..=155).contains(&a[0]), "({x},{y}) = {a:?}");
                } else {
                    assert_eq!(a, b, "({x},{y}) outside the box changed");
                }
            }
        }
        // Off-frame and empty boxes are clipped, not a panic.
        Canvas::new(&mut px, layout).blur(&BBox::from_corners(-50.0, -50.0, 500.0, 500.0), 9);
        Canvas::new(&mut px, layout).blur(&BBox::from_corners(100.0, 5.0, 90.0, 25.0), 3);
        Canvas::new(&mut px, layout).blur(&BBox::from_corners(f32::NAN, 5.0, 90.0, 25.0), 3);
    }

    #[test]
    fn polyline_draws_every_segment() {
        let (layout, mut px) = grey(10, 10);
        let mut c = Canvas::new(&mut px, layout);
        let green = Rgba::new(0, 255, 0, 255);
        c.polyline(&[(1.0, 1.0), (8.0, 1.0), (8.0, 8.0)], 1, green);
        for (x, y) in [(1, 1), (4, 1), (8, 1), (8, 4), (8, 8)] {
            assert_eq!(
                pixel(&px, layout, x, y),
                [0, 255, 0],
                "({x},{y}) on the trail"
            );
        }
        for (x, y) in [(4, 4), (1, 8), (4, 2), (7, 4)] {
            assert_eq!(
                pixel(&px, layout, x, y),
                [100, 100, 100],
                "({x},{y}) off it"
            );
        }
    }
}
