//! Drawing primitives on a packed RGB image, with alpha blending and clipping to the frame.

use vidmesh_protocol::{DisplayCircle, DisplayLine, DisplayRect, ImageLayout, Rgba};

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
}
