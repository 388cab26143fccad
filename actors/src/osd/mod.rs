//! `osd`: draws what was found onto the frame (nvdsosd): each object's box in a colour of its
//! track, a label with class, track id and optionally confidence, and whatever `DisplayMeta`
//! other stages attached (rectangles, text, lines, circles).
//!
//! Pixels are copied once per frame (copy-on-write of the shared frame buffer), drawn on, and
//! sent on as a new buffer, so stages that still hold the original see it unchanged.

mod draw;
mod text;

use serde::Deserialize;
use vidmesh_protocol::{
    Batch, DisplayRect, DisplayText, ObjectMeta, PayloadRef, PixelFormat, Rgba,
};

use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError};
use draw::Canvas;
use text::GlyphCache;

pub const KIND: StageKind = StageKind {
    name: "osd",
    delivery: Delivery::ANY_REPLICA,
    summary: "draw boxes, labels, track ids and display meta onto frames (nvdsosd)",
    check: |t, ctx| Settings::load(t, ctx).map(|_| ()),
    build: |t, ctx| {
        let s = Settings::load(t, ctx)?;
        let font = GlyphCache::load(&ctx.resolve(&s.font))?;
        Ok(Box::new(Osd { settings: s, font }))
    },
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Box outline width in pixels. Default 3.
    pub border_width: u32,
    /// Label text height in pixels. Default 16.
    pub font_size: f32,
    /// A TrueType font. Default DejaVu Sans from Debian's fonts-dejavu-core.
    pub font: String,
    /// Write the track id into labels. Default true.
    pub show_track_id: bool,
    /// Write the confidence into labels. Default false.
    pub show_confidence: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            border_width: 3,
            font_size: 16.0,
            font: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            show_track_id: true,
            show_confidence: false,
        }
    }
}

impl Settings {
    fn load(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let s: Settings = settings::parse(t)?;
        if !ctx.resolve(&s.font).is_file() {
            return Err(StageError::Settings(format!(
                "font {} does not exist (install fonts-dejavu-core or set `font`)",
                s.font
            )));
        }
        if !(4.0..=256.0).contains(&s.font_size) {
            return Err(StageError::Settings(format!(
                "font_size must be within 4..=256, got {}",
                s.font_size
            )));
        }
        Ok(s)
    }
}

/// A fixed palette of well-separated colours; tracks cycle through it so neighbours differ.
const PALETTE: [Rgba; 8] = [
    Rgba::new(230, 25, 75, 255),
    Rgba::new(60, 180, 75, 255),
    Rgba::new(255, 225, 25, 255),
    Rgba::new(0, 130, 200, 255),
    Rgba::new(245, 130, 48, 255),
    Rgba::new(145, 30, 180, 255),
    Rgba::new(70, 240, 240, 255),
    Rgba::new(240, 50, 230, 255),
];

struct Osd {
    settings: Settings,
    font: GlyphCache,
}

impl Osd {
    fn object_overlay(&self, o: &ObjectMeta) -> (DisplayRect, DisplayText) {
        let color = match o.track_id {
            Some(id) => PALETTE[(id % PALETTE.len() as u64) as usize],
            None => Rgba::new(200, 200, 200, 255),
        };
        let mut label = o.label.clone();
        if self.settings.show_track_id {
            if let Some(id) = o.track_id {
                label.push_str(&format!(" {id}"));
            }
        }
        if self.settings.show_confidence {
            label.push_str(&format!(" {:.2}", o.confidence));
        }
        let text_h = self.settings.font_size;
        // Label above the box, or inside it when the box touches the top edge.
        let y = if o.bbox.top >= text_h + 4.0 {
            o.bbox.top - text_h - 4.0
        } else {
            o.bbox.top
        };
        (
            DisplayRect {
                bbox: o.bbox,
                border_width: self.settings.border_width,
                border_color: color,
                fill: None,
            },
            DisplayText {
                text: label,
                x: o.bbox.left,
                y,
                font_size: text_h,
                color: Rgba::new(0, 0, 0, 255),
                background: Some(color),
            },
        )
    }
}

impl Stage for Osd {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        for frame in &mut batch.frames {
            if frame.objects.is_empty() && frame.display.is_empty() {
                continue;
            }
            let Some((layout, data)) = frame.payload.inline_image() else {
                return Err(StageError::Input(format!(
                    "osd needs raw pixels in memory; frame {} of `{}` has payload {}",
                    frame.frame_num,
                    frame.source_name,
                    frame.payload.kind_name()
                )));
            };
            if layout.format != PixelFormat::Rgb24 {
                return Err(StageError::Input(format!(
                    "osd draws on RGB frames, got {:?}",
                    layout.format
                )));
            }
            let mut pixels = data.to_vec();
            let mut canvas = Canvas::new(&mut pixels, layout);
            let overlays: Vec<(DisplayRect, DisplayText)> = frame
                .objects
                .iter()
                .map(|o| self.object_overlay(o))
                .collect();
            for (rect, _) in &overlays {
                canvas.rect(rect);
            }
            for rect in &frame.display.rects {
                canvas.rect(rect);
            }
            for line in &frame.display.lines {
                canvas.line(line);
            }
            for circle in &frame.display.circles {
                canvas.circle(circle);
            }
            for text in overlays.iter().map(|(_, t)| t).chain(&frame.display.texts) {
                self.font.draw(&mut canvas, text);
            }
            frame.payload = PayloadRef::Inline {
                layout,
                data: pixels.into(),
            };
        }
        out.emit(batch)
    }
}
