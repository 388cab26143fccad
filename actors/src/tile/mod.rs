//! `tile`: composes the frames of every source into one grid picture (nvmultistreamtiler).
//!
//! Source `i` (topology order) fills cell `i` of a `rows` x `columns` grid, row by row,
//! scaled to fit its cell with its aspect ratio kept (letterboxed). The stage emits a single
//! stream (source id 0, named by `name`) with one frame per batch it receives: a cell keeps
//! its source's last frame while that source has none in a batch. When one batch holds two
//! frames of the same source (a muxer timeout with a slow neighbour), the picture is emitted
//! before the second overwrites the first, so no frame of any source goes unshown.
//!
//! Objects and display meta are mapped into the picture's coordinates (boxes clipped to their
//! own cell first, masks cropped with them), so an `osd` after the tiler draws them where the
//! pixels are. Frame-level user meta stays with the per-source frames and is not carried.
//! The tiled stream ends when every source has ended.

mod scale;

use std::collections::HashSet;

use serde::Deserialize;
use vidmesh_protocol::{
    BBox, Batch, DisplayMeta, FrameMeta, ImageLayout, Mask, ObjectMeta, PayloadRef, PixelFormat,
    Rgba, StreamEnd,
};

use crate::osd::ColorSpec;
use crate::registry::{Delivery, StageKind};
use crate::settings;
use crate::stage::{BuildContext, Outputs, Stage, StageError, StageReport};
use scale::ScalePlan;

pub const KIND: StageKind = StageKind {
    name: "tile",
    // Every source must reach the one instance, in order; with one replica (the only
    // sensible count) per-source routing sends them all there.
    delivery: Delivery::PER_SOURCE_ORDERED,
    summary: "compose all sources into one grid stream, metadata mapped (nvmultistreamtiler)",
    check: |t, ctx| Grid::load(t, ctx).map(|_| ()),
    build: |t, ctx| Ok(Box::new(Tiler::new(Grid::load(t, ctx)?, ctx))),
    // Unreadable settings fail in `check`; here they only need a name.
    makes_streams: Some(|t| {
        let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("tiled");
        vec![name.to_string()]
    }),
};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Grid rows. Default: enough for the sources with `columns` columns.
    pub rows: Option<u32>,
    /// Grid columns. Default: the smallest square grid that holds every source.
    pub columns: Option<u32>,
    /// Output width in pixels (even). Default 1280.
    pub width: u32,
    /// Output height in pixels (even). Default 720.
    pub height: u32,
    /// The tiled stream's name (`sensorId` of its events, `{source}` of files). Default "tiled".
    pub name: String,
    /// Colour of the letterbox bars and empty cells. Default black.
    pub background: ColorSpec,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rows: None,
            columns: None,
            width: 1280,
            height: 720,
            name: "tiled".into(),
            background: ColorSpec::Channels(vec![0, 0, 0]),
        }
    }
}

/// Most cells a grid may have.
const MAX_CELLS: u32 = 1024;

/// Settings checked: the grid's shape and output size.
#[derive(Debug, Clone)]
struct Grid {
    rows: u32,
    columns: u32,
    width: u32,
    height: u32,
    name: String,
    background: Rgba,
}

impl Grid {
    fn load(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let s: Settings = settings::parse(t)?;
        let n = (ctx.sources.len() as u32).max(1);
        for (key, v) in [("rows", s.rows), ("columns", s.columns)] {
            if v == Some(0) {
                return Err(StageError::Settings(format!("{key} must be at least 1")));
            }
        }
        let (rows, columns) = match (s.rows, s.columns) {
            (Some(r), Some(c)) => (r, c),
            (Some(r), None) => (r, n.div_ceil(r)),
            (None, Some(c)) => (n.div_ceil(c), c),
            (None, None) => {
                let c = (1..=n).find(|c| c * c >= n).unwrap_or(n);
                (n.div_ceil(c), c)
            }
        };
        if rows
            .checked_mul(columns)
            .is_none_or(|cells| cells > MAX_CELLS)
        {
            return Err(StageError::Settings(format!(
                "a {rows}x{columns} grid has more than {MAX_CELLS} cells"
            )));
        }
        for (key, v) in [("width", s.width), ("height", s.height)] {
            if !(16..=8192).contains(&v) || v % 2 != 0 {
                return Err(StageError::Settings(format!(
                    "{key} must be an even number within 16..=8192 (H.264 4:2:0), got {v}"
                )));
            }
        }
        if s.width / columns < 2 || s.height / rows < 2 {
            return Err(StageError::Settings(format!(
                "{}x{} is too small for a {rows}x{columns} grid",
                s.width, s.height
            )));
        }
        if rows * columns < n {
            tracing::warn!(
                stage = %ctx.stage_name,
                "a {rows}x{columns} grid shows {} of the {n} sources; the others are left out",
                rows * columns
            );
        }
        if s.name.is_empty() {
            return Err(StageError::Settings("name must not be empty".into()));
        }
        Ok(Self {
            rows,
            columns,
            width: s.width,
            height: s.height,
            name: s.name,
            background: s.background.resolve("background")?,
        })
    }

    /// Cell `index`'s rectangle (x, y, width, height) in the picture.
    fn cell(&self, index: u32) -> (u32, u32, u32, u32) {
        let (w, h) = (self.width / self.columns, self.height / self.rows);
        ((index % self.columns) * w, (index / self.columns) * h, w, h)
    }
}

/// Where a source's frame lands in the picture: `picture = frame * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placement {
    /// The scaled image inside the cell.
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    scale_x: f32,
    scale_y: f32,
}

impl Placement {
    /// Letterboxed into the cell, centred.
    fn fit(cell: (u32, u32, u32, u32), src_w: u32, src_h: u32) -> Self {
        let (cx, cy, cw, ch) = cell;
        let s = (cw as f64 / src_w as f64).min(ch as f64 / src_h as f64);
        let width = ((src_w as f64 * s).round() as u32).clamp(1, cw);
        let height = ((src_h as f64 * s).round() as u32).clamp(1, ch);
        Self {
            x: cx + (cw - width) / 2,
            y: cy + (ch - height) / 2,
            width,
            height,
            scale_x: width as f32 / src_w as f32,
            scale_y: height as f32 / src_h as f32,
        }
    }

    fn point(&self, x: f32, y: f32) -> (f32, f32) {
        (
            self.x as f32 + x * self.scale_x,
            self.y as f32 + y * self.scale_y,
        )
    }

    fn bbox(&self, b: &BBox) -> BBox {
        let (l, t) = self.point(b.left, b.top);
        BBox {
            left: l,
            top: t,
            width: b.width * self.scale_x,
            height: b.height * self.scale_y,
        }
    }

    /// Maps an object, clipped to its frame first so it cannot spill into a neighbour's cell.
    /// `None` when nothing of it is inside the frame.
    fn object(&self, o: &ObjectMeta, src_w: u32, src_h: u32) -> Option<ObjectMeta> {
        let clipped = o.bbox.clipped(src_w as f32, src_h as f32);
        if !(clipped.width > 0.0 && clipped.height > 0.0) {
            return None;
        }
        let mut mapped = o.clone();
        if clipped != o.bbox {
            mapped.mask = o
                .mask
                .as_ref()
                .and_then(|m| crop_mask(m, &o.bbox, &clipped));
        }
        mapped.bbox = self.bbox(&clipped);
        Some(mapped)
    }

    fn display(&self, d: &DisplayMeta) -> DisplayMeta {
        let mut d = d.clone();
        for r in &mut d.rects {
            r.bbox = self.bbox(&r.bbox);
        }
        for t in &mut d.texts {
            (t.x, t.y) = self.point(t.x, t.y);
            t.font_size = (t.font_size * self.scale_y).max(4.0);
        }
        for l in &mut d.lines {
            (l.x1, l.y1) = self.point(l.x1, l.y1);
            (l.x2, l.y2) = self.point(l.x2, l.y2);
        }
        for c in &mut d.circles {
            (c.x, c.y) = self.point(c.x, c.y);
            c.radius *= self.scale_x.min(self.scale_y);
        }
        d
    }
}

/// The part of `mask` (laid over `full`) that covers `part`, a box inside `full`.
fn crop_mask(mask: &Mask, full: &BBox, part: &BBox) -> Option<Mask> {
    let (mw, mh) = (mask.width as usize, mask.height as usize);
    if mw == 0
        || mh == 0
        || mw.checked_mul(mh) != Some(mask.data.len())
        || full.width <= 0.0
        || full.height <= 0.0
    {
        return None;
    }
    let span = |from: f32, to: f32, origin: f32, size: f32, n: usize| {
        let a = (((from - origin) / size * n as f32).floor().max(0.0) as usize).min(n - 1);
        let b = (((to - origin) / size * n as f32).ceil().max(1.0) as usize).clamp(a + 1, n);
        (a, b)
    };
    let (x0, x1) = span(part.left, part.right(), full.left, full.width, mw);
    let (y0, y1) = span(part.top, part.bottom(), full.top, full.height, mh);
    let data = (y0..y1)
        .flat_map(|y| mask.data[y * mw + x0..y * mw + x1].iter().copied())
        .collect();
    Some(Mask {
        width: (x1 - x0) as u32,
        height: (y1 - y0) as u32,
        threshold: mask.threshold,
        data,
    })
}

/// What one cell shows now.
#[derive(Debug, Default)]
struct Cell {
    placement: Option<Placement>,
    plan: Option<ScalePlan>,
    objects: Vec<ObjectMeta>,
    display: DisplayMeta,
}

#[derive(Debug, Default)]
struct Stats {
    frames_in: u64,
    /// Frames of sources beyond the grid's cells.
    left_out: u64,
}

pub struct Tiler {
    grid: Grid,
    layout: ImageLayout,
    /// The picture as it stands; cells are overwritten as their sources' frames arrive.
    picture: Vec<u8>,
    cells: Vec<Cell>,
    /// Sources with a frame in the picture being assembled.
    in_round: HashSet<u32>,
    /// For the picture being assembled: latest pts, earliest ingest time, a frame duration.
    round: Option<(u64, u64, u64)>,
    next_frame: u64,
    last_pts: Option<u64>,
    next_batch_id: u64,
    sources: usize,
    ended: HashSet<u32>,
    end_sent: bool,
    stats: Stats,
}

impl Tiler {
    fn new(grid: Grid, ctx: &BuildContext) -> Self {
        let layout = ImageLayout::packed(PixelFormat::Rgb24, grid.width, grid.height);
        let mut picture = vec![0u8; layout.min_len().unwrap_or(0)];
        let bg = grid.background;
        for px in picture.chunks_exact_mut(3) {
            px.copy_from_slice(&[bg.r, bg.g, bg.b]);
        }
        let cells = (0..grid.rows * grid.columns)
            .map(|_| Cell::default())
            .collect();
        Self {
            grid,
            layout,
            picture,
            cells,
            in_round: HashSet::new(),
            round: None,
            next_frame: 0,
            last_pts: None,
            next_batch_id: 0,
            sources: ctx.sources.len().max(1),
            ended: HashSet::new(),
            end_sent: false,
            stats: Stats::default(),
        }
    }

    fn fill(&mut self, (x, y, w, h): (u32, u32, u32, u32)) {
        let bg = self.grid.background;
        let stride = self.layout.stride as usize;
        for row in y as usize..(y + h) as usize {
            let start = row * stride + x as usize * 3;
            for px in self.picture[start..start + w as usize * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&[bg.r, bg.g, bg.b]);
            }
        }
    }

    /// Puts a frame into its cell; false for a source beyond the grid.
    fn place(&mut self, frame: &FrameMeta) -> Result<bool, StageError> {
        let index = frame.source_id;
        if index as usize >= self.cells.len() {
            self.stats.left_out += 1;
            return Ok(false);
        }
        let Some((layout, data)) = frame.payload.inline_image() else {
            return Err(StageError::Input(format!(
                "tile needs raw pixels in memory; frame {} of `{}` has payload {}",
                frame.frame_num,
                frame.source_name,
                frame.payload.kind_name()
            )));
        };
        if layout.format != PixelFormat::Rgb24 || layout.width == 0 || layout.height == 0 {
            return Err(StageError::Input(format!(
                "tile composes RGB frames; frame {} of `{}` is {:?} {}x{}",
                frame.frame_num, frame.source_name, layout.format, layout.width, layout.height
            )));
        }
        let cell_rect = self.grid.cell(index);
        let placement = Placement::fit(cell_rect, layout.width, layout.height);
        let cell = &mut self.cells[index as usize];
        if cell.placement != Some(placement) {
            // A first frame, or a new frame size: the bars around the image change.
            cell.placement = Some(placement);
            cell.plan = None;
            self.fill(cell_rect);
        }
        let cell = &mut self.cells[index as usize];
        let (w, h) = (layout.width, layout.height);
        if !cell
            .plan
            .as_ref()
            .is_some_and(|p| p.fits(w, h, placement.width, placement.height))
        {
            cell.plan = Some(ScalePlan::new(w, h, placement.width, placement.height));
        }
        if let Some(plan) = &cell.plan {
            plan.run(
                data,
                layout,
                &mut self.picture,
                self.layout.stride as usize,
                placement.x as usize,
                placement.y as usize,
            );
        }
        cell.objects = frame
            .objects
            .iter()
            .filter_map(|o| placement.object(o, w, h))
            .collect();
        cell.display = placement.display(&frame.display);
        let (pts, ingest, duration) = self.round.unwrap_or((0, u64::MAX, 0));
        self.round = Some((
            pts.max(frame.pts_ns),
            ingest.min(frame.ingest_ns),
            if duration == 0 {
                frame.duration_ns
            } else {
                duration
            },
        ));
        Ok(true)
    }

    /// The picture as it stands, as the next frame of the tiled stream.
    fn picture_frame(&mut self) -> FrameMeta {
        let (pts, ingest, duration) = self.round.take().unwrap_or_default();
        self.in_round.clear();
        // mp4mux and players need strictly increasing timestamps.
        let pts = match self.last_pts {
            Some(last) if pts <= last => last + duration.max(1),
            _ => pts,
        };
        self.last_pts = Some(pts);
        let mut objects = Vec::new();
        let mut display = DisplayMeta::default();
        for cell in &self.cells {
            let base = objects.len() as u32;
            objects.extend(cell.objects.iter().map(|o| {
                let mut o = o.clone();
                // Parents are indices within the frame; the cell's objects now start at `base`.
                o.parent = o
                    .parent
                    .and_then(|p| ((p as usize) < cell.objects.len()).then_some(base + p));
                o
            }));
            display.rects.extend(cell.display.rects.iter().cloned());
            display.texts.extend(cell.display.texts.iter().cloned());
            display.lines.extend(cell.display.lines.iter().cloned());
            display.circles.extend(cell.display.circles.iter().cloned());
        }
        let frame = FrameMeta {
            source_id: 0,
            source_name: self.grid.name.clone(),
            frame_num: self.next_frame,
            pts_ns: pts,
            duration_ns: duration,
            ntp_ns: None,
            ingest_ns: if ingest == u64::MAX { 0 } else { ingest },
            width: self.grid.width,
            height: self.grid.height,
            payload: PayloadRef::Inline {
                layout: self.layout,
                data: self.picture.clone().into(),
            },
            objects,
            display,
            user: Vec::new(),
        };
        self.next_frame += 1;
        frame
    }

    fn send_end(&mut self, out: &mut Outputs) -> Result<(), StageError> {
        if self.end_sent {
            return Ok(());
        }
        self.end_sent = true;
        out.end_of_stream(StreamEnd {
            source_id: 0,
            source_name: self.grid.name.clone(),
            frames: self.next_frame,
        })
    }
}

impl Stage for Tiler {
    fn on_batch(&mut self, batch: Batch, out: &mut Outputs) -> Result<(), StageError> {
        let mut frames = Vec::new();
        for frame in &batch.frames {
            self.stats.frames_in += 1;
            if self.in_round.contains(&frame.source_id) {
                frames.push(self.picture_frame());
            }
            if self.place(frame)? {
                self.in_round.insert(frame.source_id);
            }
        }
        if !self.in_round.is_empty() {
            frames.push(self.picture_frame());
        }
        if frames.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            batch_id: self.next_batch_id,
            frames,
            tensors: Vec::new(),
        };
        self.next_batch_id += 1;
        out.emit(batch)
    }

    /// Sources' ends are not forwarded: downstream sees one stream, which ends with the last.
    fn on_end_of_stream(&mut self, end: &StreamEnd, out: &mut Outputs) -> Result<(), StageError> {
        self.ended.insert(end.source_id);
        if self.ended.len() >= self.sources {
            self.send_end(out)?;
        }
        Ok(())
    }

    fn on_finish(&mut self, out: &mut Outputs) -> Result<StageReport, StageError> {
        if self.next_frame > 0 {
            self.send_end(out)?;
        }
        let mut report = StageReport::default()
            .with("grid", format!("{}x{}", self.grid.rows, self.grid.columns))
            .with("frames", self.next_frame);
        if self.stats.left_out > 0 {
            report = report.with("frames outside the grid", self.stats.left_out);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
