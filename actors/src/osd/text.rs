//! Text rendering with a TrueType font. Glyph coverage is rasterised once per (character,
//! size) and reused, since labels repeat the same few characters every frame.

use std::collections::HashMap;
use std::path::Path;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use vidmesh_protocol::DisplayText;

use super::draw::Canvas;
use crate::stage::StageError;

struct Glyph {
    /// Offset of the bitmap's top-left from the pen position on the baseline.
    left: i64,
    top: i64,
    width: usize,
    coverage: Vec<u8>,
    advance: f32,
}

pub struct GlyphCache {
    font: FontVec,
    glyphs: HashMap<(char, u32), Glyph>,
}

impl GlyphCache {
    pub fn load(path: &Path) -> Result<Self, StageError> {
        let bytes = std::fs::read(path)
            .map_err(|e| StageError::runtime(format!("cannot read font {}", path.display()), e))?;
        let font = FontVec::try_from_vec(bytes).map_err(|e| {
            StageError::runtime(
                format!("{} is not a usable TrueType font", path.display()),
                e,
            )
        })?;
        Ok(Self {
            font,
            glyphs: HashMap::new(),
        })
    }

    fn glyph(&mut self, c: char, size: f32) -> &Glyph {
        let key = (c, size.to_bits());
        let font = &self.font;
        self.glyphs.entry(key).or_insert_with(|| {
            let scaled = font.as_scaled(PxScale::from(size));
            let id = font.glyph_id(c);
            let advance = scaled.h_advance(id);
            let glyph = id.with_scale_and_position(size, ab_glyph::point(0.0, 0.0));
            match font.outline_glyph(glyph) {
                Some(outlined) => {
                    let b = outlined.px_bounds();
                    let width = b.width() as usize;
                    let height = b.height() as usize;
                    let mut coverage = vec![0u8; width * height];
                    outlined.draw(|x, y, v| {
                        if let Some(p) = coverage.get_mut(y as usize * width + x as usize) {
                            *p = (v.clamp(0.0, 1.0) * 255.0) as u8;
                        }
                    });
                    Glyph {
                        left: b.min.x as i64,
                        top: b.min.y as i64,
                        width,
                        coverage,
                        advance,
                    }
                }
                // Spaces and unknown characters: advance only.
                None => Glyph {
                    left: 0,
                    top: 0,
                    width: 0,
                    coverage: Vec::new(),
                    advance,
                },
            }
        })
    }

    /// Width of `text` in pixels.
    pub fn measure(&mut self, text: &str, size: f32) -> f32 {
        text.chars().map(|c| self.glyph(c, size).advance).sum()
    }

    /// Draws the text's background (if any) then its glyphs.
    pub fn draw(&mut self, canvas: &mut Canvas, t: &DisplayText) {
        let size = t.font_size;
        let pad = 2.0;
        let width = self.measure(&t.text, size);
        if let Some(bg) = t.background {
            canvas.fill(
                t.x,
                t.y,
                t.x + width + 2.0 * pad,
                t.y + size + 2.0 * pad,
                bg,
            );
        }
        let ascent = self.font.as_scaled(PxScale::from(size)).ascent();
        let mut pen_x = t.x + pad;
        let baseline = (t.y + pad + ascent).round() as i64;
        for c in t.text.chars() {
            let g = self.glyph(c, size);
            let origin_x = pen_x.round() as i64 + g.left;
            let origin_y = baseline + g.top;
            if g.width > 0 {
                for (i, &a) in g.coverage.iter().enumerate() {
                    if a > 0 {
                        canvas.blend(
                            origin_x + (i % g.width) as i64,
                            origin_y + (i / g.width) as i64,
                            t.color,
                            a,
                        );
                    }
                }
            }
            pen_x += g.advance;
        }
    }
}
