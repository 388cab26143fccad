//! `osd`: draws what was found onto the frame (nvdsosd): each object's box in a colour of its
//! track or class, a label with class, track id and optionally confidence, its instance mask
//! blended in, the trail of where its track has been, whatever `DisplayMeta` other stages
//! attached (rectangles, text, lines, circles), and a per-stream text line (name, fps, counts).
//!
//! Pixels are copied once per frame (copy-on-write of the shared frame buffer), drawn on, and
//! sent on as a new buffer, so stages that still hold the original see it unchanged.
//!
//! Trails need each stream's frames in order, so the kind is delivered per source in order;
//! the trails are its only state, snapshotted so a replacement replica draws on seamlessly.

mod draw;
mod overlay;
mod settings;
mod text;
mod trails;

use std::collections::HashMap;
use std::time::Instant;

use vidmesh_protocol::{
    Batch, DisplayRect, DisplayText, FrameMeta, ObjectMeta, PayloadRef, PixelFormat, Rgba,
    StreamEnd,
};

use crate::registry::{Delivery, StageKind};
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport, StageValue, ValueKind};
use draw::Canvas;
use overlay::FpsMeter;
use settings::Style;
pub use settings::{ColorBy, ColorSpec, OverlaySpec, Settings, DEFAULT_OVERLAY};
use text::GlyphCache;
use trails::Trails;

pub const KIND: StageKind = StageKind {
    name: "osd",
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "draw boxes, labels, masks, track trails, display meta and a stream overlay (nvdsosd)",
    check: |t, ctx| Style::load(t, ctx).map(|_| ()),
    build: |t, ctx| Ok(Box::new(Osd::build(t, ctx)?)),
    makes_streams: None,
};

/// A fixed palette of well-separated colours; tracks (or classes) cycle through it so
/// neighbours differ.
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

/// What the running stage counts for its report.
#[derive(Debug, Default)]
struct Stats {
    frames_drawn: u64,
    masks_drawn: u64,
    objects_blurred: u64,
    /// Masks whose size did not match their data; each is skipped, the first is logged.
    masks_malformed: u64,
}

pub struct Osd {
    style: Style,
    font: GlyphCache,
    trails: Trails,
    fps: HashMap<u32, FpsMeter>,
    stats: Stats,
}

impl Osd {
    fn build(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let style = Style::load(t, ctx)?;
        let font = GlyphCache::load(&ctx.resolve(&style.settings.font))?;
        let (length, forget) = (
            style.settings.trail_length,
            style.settings.trail_forget_after,
        );
        let trails = match ctx.resume.as_ref().and_then(|r| r.snapshot.as_deref()) {
            Some(snapshot) => Trails::restore(length, forget, snapshot).map_err(|e| {
                StageError::Settings(format!("osd: cannot resume from the last snapshot: {e}"))
            })?,
            None => Trails::new(length, forget),
        };
        Ok(Self {
            style,
            font,
            trails,
            fps: HashMap::new(),
            stats: Stats::default(),
        })
    }

    fn class_color(&self, o: &ObjectMeta) -> Rgba {
        self.style
            .label_colors
            .get(&o.label)
            .or_else(|| self.style.class_id_colors.get(&o.class_id))
            .copied()
            .unwrap_or(PALETTE[o.class_id.rem_euclid(PALETTE.len() as i32) as usize])
    }

    /// Whether the object's class is one `blur` names (by label or class id).
    fn blurs(&self, o: &ObjectMeta) -> bool {
        let blur = &self.style.settings.blur;
        !blur.is_empty()
            && blur
                .iter()
                .any(|c| *c == o.label || c.parse::<i32>() == Ok(o.class_id))
    }

    fn object_color(&self, o: &ObjectMeta) -> Rgba {
        match (self.style.settings.color_by, o.track_id) {
            (ColorBy::Track, Some(id)) => PALETTE[(id % PALETTE.len() as u64) as usize],
            _ => self.class_color(o),
        }
    }

    fn object_overlay(&self, o: &ObjectMeta, color: Rgba) -> (DisplayRect, DisplayText) {
        let s = &self.style.settings;
        let mut label = o.label.clone();
        if s.show_track_id {
            if let Some(id) = o.track_id {
                label.push_str(&format!(" {id}"));
            }
        }
        if s.show_confidence {
            label.push_str(&format!(" {:.2}", o.confidence));
        }
        if s.show_classifiers {
            for result in &o.classifiers {
                for l in &result.labels {
                    label.push(' ');
                    label.push_str(&l.label);
                }
            }
        }
        let text_h = s.font_size;
        // Label above the box, or inside it when the box touches the top edge.
        let y = if o.bbox.top >= text_h + 4.0 {
            o.bbox.top - text_h - 4.0
        } else {
            o.bbox.top
        };
        (
            DisplayRect {
                bbox: o.bbox,
                border_width: s.border_width,
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

    /// Draws one frame; `now` is when it arrived (for the overlay's fps).
    fn draw_frame(&mut self, frame: &mut FrameMeta, now: Instant) -> Result<(), StageError> {
        let trails = self.trails.update(frame);
        let fps = self
            .style
            .overlay
            .is_some()
            .then(|| self.fps.entry(frame.source_id).or_default().tick(now));
        if frame.objects.is_empty() && frame.display.is_empty() && fps.is_none() {
            return Ok(());
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
                "osd draws on RGB frames; frame {} of `{}` is {:?}",
                frame.frame_num, frame.source_name, layout.format
            )));
        }
        let mut pixels = data.to_vec();
        let mut canvas = Canvas::new(&mut pixels, layout);
        let s = &self.style.settings;
        // Anonymisation first: nothing drawn later may be blurred away, and nothing of the
        // original pixels may survive under a mask or label.
        let blurred: Vec<bool> = frame.objects.iter().map(|o| self.blurs(o)).collect();
        for (o, _) in frame.objects.iter().zip(&blurred).filter(|(_, b)| **b) {
            let radius = match s.blur_radius {
                0 => (o.bbox.width.min(o.bbox.height) / 4.0).max(4.0) as u32,
                r => r,
            };
            canvas.blur(&o.bbox, radius);
            self.stats.objects_blurred += 1;
        }
        let hidden = |i: usize| blurred[i] && !s.draw_blurred;
        let colors: Vec<Rgba> = frame.objects.iter().map(|o| self.object_color(o)).collect();
        // Masks first, so outlines, trails and text stay crisp on top of them.
        if s.display_mask && s.mask_alpha > 0.0 {
            for (o, &color) in frame.objects.iter().zip(&colors) {
                let Some(mask) = &o.mask else { continue };
                match canvas.mask(&o.bbox, mask, color, s.mask_alpha) {
                    Ok(()) => self.stats.masks_drawn += 1,
                    Err(why) => {
                        if self.stats.masks_malformed == 0 {
                            tracing::warn!(
                                source = %frame.source_name,
                                frame = frame.frame_num,
                                "skipping a malformed object mask: {why}"
                            );
                        }
                        self.stats.masks_malformed += 1;
                    }
                }
            }
        }
        let overlays: Vec<(DisplayRect, DisplayText)> = frame
            .objects
            .iter()
            .zip(&colors)
            .enumerate()
            .filter(|(i, _)| !hidden(*i))
            .map(|(_, (o, &c))| self.object_overlay(o, c))
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
        if !trails.is_empty() {
            let track_colors: HashMap<u64, Rgba> = frame
                .objects
                .iter()
                .zip(&colors)
                .filter_map(|(o, &c)| Some((o.track_id?, c)))
                .collect();
            for (id, points) in &trails {
                let color = track_colors.get(id).copied().unwrap_or(PALETTE[0]);
                canvas.polyline(points, s.trail_width, color);
            }
        }
        for text in overlays.iter().map(|(_, t)| t).chain(&frame.display.texts) {
            self.font.draw(&mut canvas, text);
        }
        if let (Some(template), Some(fps)) = (&self.style.overlay, fps) {
            let text = DisplayText {
                text: template.render(frame, fps),
                x: 0.0,
                y: 0.0,
                font_size: self.style.overlay_font_size,
                color: self.style.overlay_color,
                background: Some(self.style.overlay_background),
            };
            self.font.draw(&mut canvas, &text);
        }
        frame.payload = PayloadRef::Inline {
            layout,
            data: pixels.into(),
        };
        self.stats.frames_drawn += 1;
        Ok(())
    }
}

impl Stage for Osd {
    fn on_batch(&mut self, mut batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        let now = Instant::now();
        for frame in &mut batch.frames {
            self.draw_frame(frame, now)?;
        }
        out.emit(batch)
    }

    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.trails.end(end.source_id);
        self.fps.remove(&end.source_id);
        out.end_of_stream(end.clone())
    }

    fn on_finish(&mut self, _out: &mut Outputs) -> Result<StageReport, StageError> {
        let mut report = StageReport::default().with("frames drawn", self.stats.frames_drawn);
        if self.stats.masks_drawn > 0 || self.stats.masks_malformed > 0 {
            report = report
                .with("masks drawn", self.stats.masks_drawn)
                .with("malformed masks skipped", self.stats.masks_malformed);
        }
        if !self.style.settings.blur.is_empty() {
            report = report.with("objects blurred", self.stats.objects_blurred);
        }
        Ok(report)
    }

    fn values(&self) -> Vec<StageValue> {
        if !self.trails.enabled() {
            return Vec::new();
        }
        vec![StageValue {
            name: "osd_trail_tracks",
            help: "Tracks whose trails the OSD remembers.",
            kind: ValueKind::Gauge,
            value: self.trails.tracks() as f64,
        }]
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.trails.enabled().then(|| self.trails.snapshot())
    }

    /// Takes over `sources`' trails from a gone replica's snapshot.
    fn adopt(&mut self, snapshot: &[u8], sources: &[u32]) -> Result<(), StageError> {
        let s = &self.style.settings;
        let other = Trails::restore(s.trail_length, s.trail_forget_after, snapshot)?;
        self.trails.adopt(other, sources);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
