//! The tiler on small solid-colour frames: grid shapes, letterboxing, kept cells, mapped
//! metadata, and the tiled stream's numbering and end.

use std::time::Instant;

use vidmesh_protocol::{DataMessage, DisplayLine};
use vidmesh_transport::{in_process_link, LinkReceiver, Received};

use super::*;

fn ctx(sources: usize) -> BuildContext {
    BuildContext {
        stage_name: "tiler".into(),
        replica: 0,
        base_dir: std::env::temp_dir(),
        sources: (0..sources).map(|i| format!("cam{i}")).collect(),
        resume: None,
        peers: Default::default(),
    }
}

fn grid(sources: usize, text: &str) -> Result<Grid, StageError> {
    Grid::load(&toml::from_str(text).unwrap(), &ctx(sources))
}

fn tiler(sources: usize, text: &str) -> Tiler {
    Tiler::new(grid(sources, text).unwrap(), &ctx(sources))
}

fn frame(source_id: u32, frame_num: u64, w: u32, h: u32, color: [u8; 3]) -> FrameMeta {
    let layout = ImageLayout::packed(PixelFormat::Rgb24, w, h);
    let mut data = vec![0u8; layout.min_len().unwrap()];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let o = y * layout.stride as usize + x * 3;
            data[o..o + 3].copy_from_slice(&color);
        }
    }
    FrameMeta {
        source_id,
        source_name: format!("cam{source_id}"),
        frame_num,
        pts_ns: frame_num * 33_000_000,
        duration_ns: 33_000_000,
        width: w,
        height: h,
        payload: PayloadRef::Inline {
            layout,
            data: data.into(),
        },
        ..Default::default()
    }
}

fn batch(frames: Vec<FrameMeta>) -> Batch {
    Batch {
        frames,
        ..Default::default()
    }
}

fn pixel(f: &FrameMeta, x: u32, y: u32) -> [u8; 3] {
    let (layout, data) = f.payload.inline_image().unwrap();
    let o = (y * layout.stride + x * 3) as usize;
    [data[o], data[o + 1], data[o + 2]]
}

struct Sink {
    _rt: tokio::runtime::Runtime,
    rx: LinkReceiver,
    out: Outputs,
}

impl Sink {
    fn new() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (tx, rx) = in_process_link("tile->x", 64, rt.handle().clone());
        Self {
            _rt: rt,
            rx,
            out: Outputs::new(vec![tx]),
        }
    }

    fn drain(&mut self) -> Vec<DataMessage> {
        let mut v = Vec::new();
        while let Received::Message(m) = self.rx.recv_blocking(Some(Instant::now())) {
            v.push(m);
        }
        v
    }

    fn frames(&mut self) -> Vec<FrameMeta> {
        self.drain()
            .into_iter()
            .flat_map(|m| match m {
                DataMessage::Batch(b) => b.frames,
                DataMessage::EndOfStream(e) => panic!("unexpected end {e:?}"),
            })
            .collect()
    }
}

const RED: [u8; 3] = [250, 0, 0];
const GREEN: [u8; 3] = [0, 250, 0];
const BLUE: [u8; 3] = [0, 0, 250];

#[test]
fn default_grids_are_the_smallest_square_that_fits() {
    for (n, rows, columns) in [
        (1, 1, 1),
        (2, 1, 2),
        (3, 2, 2),
        (4, 2, 2),
        (5, 2, 3),
        (9, 3, 3),
        (10, 3, 4),
    ] {
        let g = grid(n, "").unwrap();
        assert_eq!((g.rows, g.columns), (rows, columns), "{n} sources");
    }
    let g = grid(6, "columns = 1").unwrap();
    assert_eq!((g.rows, g.columns), (6, 1));
    let g = grid(6, "rows = 2").unwrap();
    assert_eq!((g.rows, g.columns), (2, 3));
    for (text, needle) in [
        ("rows = 0", "rows"),
        ("width = 641", "even"),
        ("height = 8", "height"),
        ("rows = 1000\ncolumns = 1000", "cells"),
        ("name = \"\"", "name"),
        ("background = \"#12\"", "background"),
        ("colums = 2", "colums"),
    ] {
        let err = grid(4, text).err().unwrap().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn frames_are_letterboxed_into_their_cells_and_cells_keep_their_last_frame() {
    let mut t = tiler(2, "width = 200\nheight = 100");
    let mut sink = Sink::new();
    // Source 0 is twice as wide as high: 100x50 in its 100x100 cell, bars above and below.
    t.on_batch(batch(vec![frame(0, 0, 40, 20, RED)]), &mut sink.out)
        .unwrap();
    let f = sink.frames().remove(0);
    assert_eq!(
        (f.source_id, f.source_name.as_str(), f.frame_num),
        (0, "tiled", 0)
    );
    assert_eq!((f.width, f.height), (200, 100));
    assert_eq!(pixel(&f, 50, 50), RED);
    assert_eq!(pixel(&f, 50, 26), RED);
    assert_eq!(pixel(&f, 50, 10), [0, 0, 0], "letterbox bar");
    assert_eq!(pixel(&f, 150, 50), [0, 0, 0], "cell 1 has no frame yet");
    // Source 1 (tall) alone in the next batch: source 0's cell keeps its picture.
    t.on_batch(batch(vec![frame(1, 0, 10, 20, GREEN)]), &mut sink.out)
        .unwrap();
    let f = sink.frames().remove(0);
    assert_eq!(f.frame_num, 1);
    assert_eq!(pixel(&f, 50, 50), RED);
    assert_eq!(pixel(&f, 150, 50), GREEN);
    assert_eq!(
        pixel(&f, 110, 50),
        [0, 0, 0],
        "50x100 image centred in the cell"
    );
    assert_eq!(pixel(&f, 126, 50), GREEN);
}

#[test]
fn objects_and_display_meta_are_mapped_into_the_picture() {
    let mut t = tiler(4, "width = 400\nheight = 200");
    let mut sink = Sink::new();
    // Cell 3 is the bottom right 200x100 at (200, 100); a 100x50 frame doubles into it.
    let mut f = frame(3, 0, 100, 50, BLUE);
    f.objects = vec![
        ObjectMeta {
            label: "person".into(),
            bbox: BBox::from_corners(10.0, 5.0, 30.0, 45.0),
            track_id: Some(7),
            ..Default::default()
        },
        ObjectMeta {
            label: "face".into(),
            bbox: BBox::from_corners(90.0, 40.0, 120.0, 60.0),
            parent: Some(0),
            mask: Some(Mask {
                width: 3,
                height: 2,
                threshold: 0.5,
                data: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            }),
            ..Default::default()
        },
        ObjectMeta {
            label: "outside".into(),
            bbox: BBox::from_corners(150.0, 10.0, 160.0, 20.0),
            ..Default::default()
        },
    ];
    f.display.lines.push(DisplayLine {
        x1: 0.0,
        y1: 25.0,
        x2: 100.0,
        y2: 25.0,
        width: 2,
        color: Rgba::new(255, 255, 255, 255),
    });
    let mut first = frame(0, 0, 100, 50, RED);
    first.objects = vec![ObjectMeta {
        label: "car".into(),
        bbox: BBox::from_corners(0.0, 0.0, 50.0, 25.0),
        ..Default::default()
    }];
    t.on_batch(batch(vec![first, f]), &mut sink.out).unwrap();
    let out = sink.frames().remove(0);
    let boxes: Vec<(&str, BBox)> = out
        .objects
        .iter()
        .map(|o| (o.label.as_str(), o.bbox))
        .collect();
    assert_eq!(
        boxes,
        vec![
            ("car", BBox::from_corners(0.0, 0.0, 100.0, 50.0)),
            ("person", BBox::from_corners(220.0, 110.0, 260.0, 190.0)),
            // Clipped to its frame (90..100, 40..50) before mapping.
            ("face", BBox::from_corners(380.0, 180.0, 400.0, 200.0)),
        ],
        "the object outside its frame is dropped"
    );
    assert_eq!(
        out.objects[2].parent,
        Some(1),
        "parent index follows the cell's offset"
    );
    assert_eq!(out.objects[1].track_id, Some(7));
    // The face's box kept its left third (of 3 columns) and top half: the mask is cropped.
    let mask = out.objects[2].mask.as_ref().unwrap();
    assert_eq!((mask.width, mask.height), (1, 1));
    assert_eq!(mask.data, vec![1.0]);
    let line = &out.display.lines[0];
    assert_eq!(
        (line.x1, line.y1, line.x2, line.y2),
        (200.0, 150.0, 400.0, 150.0)
    );
}

#[test]
fn a_second_frame_of_a_source_in_one_batch_starts_a_new_picture() {
    let mut t = tiler(2, "width = 200\nheight = 100");
    let mut sink = Sink::new();
    t.on_batch(
        batch(vec![
            frame(0, 0, 20, 20, RED),
            frame(1, 0, 20, 20, GREEN),
            frame(0, 1, 20, 20, BLUE),
        ]),
        &mut sink.out,
    )
    .unwrap();
    let frames = sink.frames();
    assert_eq!(frames.len(), 2);
    assert_eq!(pixel(&frames[0], 50, 50), RED);
    assert_eq!(pixel(&frames[1], 50, 50), BLUE);
    assert_eq!(pixel(&frames[1], 150, 50), GREEN, "kept");
    assert_eq!((frames[0].frame_num, frames[1].frame_num), (0, 1));
    assert!(frames[1].pts_ns > frames[0].pts_ns, "timestamps increase");
}

#[test]
fn sources_beyond_the_grid_are_left_out_and_the_stream_ends_after_the_last_source() {
    let mut t = tiler(3, "rows = 1\ncolumns = 2\nwidth = 200\nheight = 100");
    let mut sink = Sink::new();
    t.on_batch(batch(vec![frame(2, 0, 20, 20, RED)]), &mut sink.out)
        .unwrap();
    assert!(sink.drain().is_empty(), "source 2 has no cell");
    t.on_batch(batch(vec![frame(0, 0, 20, 20, RED)]), &mut sink.out)
        .unwrap();
    assert_eq!(sink.frames().len(), 1);
    for id in 0..3 {
        let end = StreamEnd {
            source_id: id,
            source_name: format!("cam{id}"),
            frames: 1,
        };
        t.on_end_of_stream(&end, &mut sink.out).unwrap();
        let got = sink.drain();
        if id < 2 {
            assert!(got.is_empty(), "no end while source {} runs", id + 1);
        } else {
            assert_eq!(
                got,
                vec![DataMessage::EndOfStream(StreamEnd {
                    source_id: 0,
                    source_name: "tiled".into(),
                    frames: 1,
                })]
            );
        }
    }
    let report = t.on_finish(&mut sink.out).unwrap();
    assert!(sink.drain().is_empty(), "the end is sent once");
    assert!(report
        .facts
        .contains(&("frames outside the grid".into(), "1".into())));
}

#[test]
fn frames_without_pixels_are_refused_with_the_source_named() {
    let mut t = tiler(1, "");
    let mut f = frame(0, 4, 20, 20, RED);
    f.payload = PayloadRef::None;
    let err = t
        .on_batch(batch(vec![f]), &mut Sink::new().out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("frame 4 of `cam0`"), "{err}");
}
