//! What the OSD draws lands where the metadata says: the real detector → tracker → osd → MP4
//! pipeline on the ground-truth clip, the MP4 decoded again with GStreamer and the colour of
//! each box's outline compared with the pixels just inside and outside it. Then the same with
//! four sources tiled into one 2x2 picture: every box of a quadrant is a box of its source,
//! scaled and moved into the quadrant, and it is drawn there.

mod common;

use std::path::{Path, PathBuf};

use gst::prelude::*;
use gstreamer as gst;
use serde::Deserialize;
use vidmesh_tests::{ensure_onnxruntime, model, prepared, topology_in, NativeBox};

/// One line of the native metadata schema, with the fields these tests need.
#[derive(Debug, Deserialize)]
struct MetaFrame {
    source_id: u32,
    source_name: String,
    width: u32,
    height: u32,
    objects: Vec<MetaObject>,
}

#[derive(Debug, Deserialize)]
struct MetaObject {
    bbox: NativeBox,
}

fn read_meta(path: &Path) -> Vec<MetaFrame> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// A decoded RGB picture.
struct Picture<'a> {
    width: u32,
    height: u32,
    stride: usize,
    data: &'a [u8],
}

impl Picture<'_> {
    fn at(&self, x: i64, y: i64) -> [u8; 3] {
        let o = y as usize * self.stride + x as usize * 3;
        [self.data[o], self.data[o + 1], self.data[o + 2]]
    }
}

/// Decodes a video file to RGB through an appsink, showing each picture to `each`; returns
/// how many there were.
fn decode_rgb(path: &Path, mut each: impl FnMut(usize, &Picture)) -> usize {
    gst::init().expect("GStreamer initialises");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! \
         appsink name=sink sync=false",
        path.display()
    ))
    .expect("a decode pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline.by_name("sink").expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("plays");
    let bus = pipeline.bus().expect("bus");
    let mut count = 0;
    loop {
        let sample: Option<gst::Sample> =
            sink.emit_by_name("try-pull-sample", &[&gst::ClockTime::from_seconds(1)]);
        let Some(sample) = sample else {
            if sink.property::<bool>("eos") {
                break;
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
                let _ = pipeline.set_state(gst::State::Null);
                panic!("cannot decode {}: {msg:?}", path.display());
            }
            continue;
        };
        let caps = sample.caps().expect("caps");
        let s = caps.structure(0).expect("a structure");
        let width = s.get::<i32>("width").expect("width") as u32;
        let height = s.get::<i32>("height").expect("height") as u32;
        let buffer = sample.buffer().expect("a buffer");
        let map = buffer.map_readable().expect("readable");
        // GStreamer's packed RGB rows are padded to 4 bytes.
        let stride = (width as usize * 3).div_ceil(4) * 4;
        assert!(map.len() >= stride * (height as usize - 1) + width as usize * 3);
        each(
            count,
            &Picture {
                width,
                height,
                stride,
                data: map.as_slice(),
            },
        );
        count += 1;
    }
    let _ = pipeline.set_state(gst::State::Null);
    count
}

/// The outline colour the tests configure: pure red, far from anything in the clip.
fn is_outline(p: [u8; 3]) -> bool {
    p[0] > 170 && p[1] < 110 && p[2] < 110
}

/// Outline width the tests configure; wide enough that H.264's half-resolution chroma keeps
/// the colour in the middle of the line.
const BORDER: f32 = 6.0;

/// Where an object's drawing may reach: its box, its label above it and a margin.
fn zone(b: &NativeBox) -> [f32; 4] {
    [
        b.left - 12.0,
        b.top - 30.0,
        (b.left + b.width).max(b.left + 220.0) + 12.0,
        b.top + b.height + 12.0,
    ]
}

fn overlap(a: [f32; 4], b: [f32; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

#[derive(Debug, Default)]
struct EdgeCheck {
    edges: usize,
    on_edge: usize,
    inside_clear: usize,
    outside_clear: usize,
}

impl EdgeCheck {
    /// Checks the left and right outline of every box that stands apart from the others (so
    /// no other drawing can be under the sample points), within `area` of the picture.
    fn frame(&mut self, pic: &Picture, boxes: &[NativeBox], area: [f32; 4]) {
        for (i, b) in boxes.iter().enumerate() {
            let z = zone(b);
            let alone = boxes
                .iter()
                .enumerate()
                .all(|(j, other)| j == i || !overlap(z, zone(other)));
            let [l, t, r, btm] = b.corners();
            // Clear of the picture's edges, the overlay line at the top left, and big enough
            // to have an inside.
            let placed = l - 14.0 > area[0]
                && r + 14.0 < area[2]
                && t - 40.0 > area[1]
                && btm + 4.0 < area[3]
                && r - l > 4.0 * BORDER
                && btm - t > 4.0 * BORDER;
            if !alone || !placed {
                continue;
            }
            let y = ((t + btm) / 2.0).round() as i64;
            let (lx, rx) = (l.round() as i64, r.round() as i64);
            let half = (BORDER / 2.0) as i64;
            for (edge, inside, outside) in [
                (lx + half, lx + 2 * BORDER as i64, lx - 8),
                (rx - half - 1, rx - 2 * BORDER as i64, rx + 8),
            ] {
                self.edges += 1;
                self.on_edge += is_outline(pic.at(edge, y)) as usize;
                self.inside_clear += !is_outline(pic.at(inside, y)) as usize;
                self.outside_clear += !is_outline(pic.at(outside, y)) as usize;
            }
        }
    }

    fn assert_drawn(&self, what: &str) {
        eprintln!("{what}: {self:?}");
        assert!(
            self.edges >= 20,
            "{what}: only {} edges to check",
            self.edges
        );
        let share = |n: usize| n as f64 / self.edges as f64;
        assert!(
            share(self.on_edge) >= 0.95,
            "{what}: outlines where the metadata says: {self:?}"
        );
        assert!(
            share(self.inside_clear) >= 0.9,
            "{what}: inside the boxes: {self:?}"
        );
        assert!(
            share(self.outside_clear) >= 0.9,
            "{what}: outside the boxes: {self:?}"
        );
    }
}

const OSD: &str = "[stage.osd]\nkind = \"osd\"\nborder_width = 6\ncolor_by = \"class\"\n\
                   colors = { person = \"#ff0000\" }\ntrail_length = 8\noverlay = true";

#[test]
fn boxes_are_drawn_where_the_metadata_says() {
    ensure_onnxruntime();
    model();
    prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    // Five frames a second of the clip: 50 frames, enough people, a quick run.
    let path = topology_in(
        "ground-truth.toml",
        scratch.path(),
        &[
            (
                "uri = \"file://data/gt/people.mp4\"",
                "uri = \"file://data/gt/people.mp4\"\nmax_fps = 5",
            ),
            ("[stage.osd]\nkind = \"osd\"", OSD),
        ],
    );
    common::run_ok(&path);
    let meta = read_meta(&scratch.path().join("gt/detections.jsonl"));
    assert_eq!(meta.len(), 50);
    let (w, h) = (meta[0].width, meta[0].height);
    let mut check = EdgeCheck::default();
    let frames = decode_rgb(&scratch.path().join("gt/annotated.mp4"), |i, pic| {
        assert_eq!((pic.width, pic.height), (w, h), "frame {i} keeps the size");
        let boxes: Vec<NativeBox> = meta[i].objects.iter().map(|o| o.bbox).collect();
        check.frame(pic, &boxes, [0.0, 0.0, w as f32, h as f32]);
        if i == 0 {
            // The overlay's background box (black, 60%) darkens the top-left corner.
            let p = pic.at(2, 2);
            assert!(
                p.iter().all(|&c| c < 110),
                "overlay background at the corner: {p:?}"
            );
        }
    });
    assert_eq!(frames, 50, "every frame is in the MP4");
    check.assert_drawn("single stream");
}

/// `[l, t, r, b]` of a source box clipped to its frame and moved into cell `cell` of a 2x2
/// grid of `w`x`h` cells, scaled by `s` (what the tiler does), or `None` if outside.
fn mapped(b: &NativeBox, fw: f32, fh: f32, cell: u32, w: f32, h: f32, s: f32) -> Option<[f32; 4]> {
    let [l, t, r, btm] = b.corners();
    let (l, t, r, btm) = (
        l.clamp(0.0, fw),
        t.clamp(0.0, fh),
        r.clamp(0.0, fw),
        btm.clamp(0.0, fh),
    );
    if r <= l || btm <= t {
        return None;
    }
    let (ox, oy) = ((cell % 2) as f32 * w, (cell / 2) as f32 * h);
    let (left, top) = (ox + l * s, oy + t * s);
    Some([left, top, left + (r - l) * s, top + (btm - t) * s])
}

#[test]
fn four_sources_tile_into_quadrants_with_their_boxes_mapped_and_drawn() {
    ensure_onnxruntime();
    model();
    prepared("data/gt/people.mp4");
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display();
    // The same clip at different rates, so each quadrant shows other moments of it.
    let sources: String = [4, 6, 4, 6]
        .iter()
        .enumerate()
        .map(|(i, fps)| {
            format!("[[source]]\nid = \"cam{i}\"\nuri = \"file://data/gt/people.mp4\"\nmax_fps = {fps}\n\n")
        })
        .collect();
    let text = format!(
        r#"
[pipeline]
name = "tiled"
links = [
  ["sources", "mux"], ["mux", "preprocess"], ["preprocess", "detect"], ["detect", "track"],
  ["track", "per_source"], ["track", "tile"], ["tile", "osd"], ["osd", "out"], ["osd", "tiled_meta"],
]

{sources}
[stage.mux]
kind = "mux"
batch_size = 4
batch_timeout = "40ms"

[stage.preprocess]
kind = "preprocess"
width = 300
height = 300
layout = "nhwc"
color_order = "rgb"
interpolation = "bilinear-tf1"
net_scale_factor = 0.00784313725490196
offsets = [127.5, 127.5, 127.5]

[stage.detect]
kind = "infer"
model = "models/ssdlite_person.onnx"
labels = ["background", "person"]
score_threshold = 0.5
nms_iou = 0.45
parser = {{ type = "ssd", boxes_output = "boxes", scores_output = "scores", box_format = "yxyx", background_class = 0 }}

[stage.track]
kind = "track"
algorithm = "iou"
min_hits = 1

[stage.tile]
kind = "tile"
rows = 2
columns = 2
width = 1280
height = 720

{OSD}

[stage.out]
kind = "sink"
uri = "file://{dir}/tiled-{{source}}.mp4"

[stage.per_source]
kind = "broker"
uri = "file://{dir}/per_source.jsonl"
schema = "native"

[stage.tiled_meta]
kind = "broker"
uri = "file://{dir}/tiled.jsonl"
schema = "native"
"#
    );
    let path = scratch.path().join("tiled.toml");
    std::fs::write(&path, text).unwrap();
    let summary = common::run_ok(&path);
    assert_eq!(summary.sources.iter().map(|s| s.frames).sum::<u64>(), 200);

    let per_source = read_meta(&scratch.path().join("per_source.jsonl"));
    let tiled = read_meta(&scratch.path().join("tiled.jsonl"));
    assert_eq!(per_source.len(), 200);
    assert!(
        !tiled.is_empty() && tiled.len() <= 200,
        "{} tiled frames",
        tiled.len()
    );
    assert!(tiled
        .iter()
        .all(|f| f.source_id == 0 && f.source_name == "tiled"));
    assert!(tiled.iter().all(|f| (f.width, f.height) == (1280, 720)));

    // The clip is 1280x720: each 640x360 cell holds it at half size, without bars.
    let (fw, fh) = (per_source[0].width as f32, per_source[0].height as f32);
    let s = (640.0 / fw).min(360.0 / fh);
    let expected: Vec<Vec<[f32; 4]>> = (0..4)
        .map(|cell| {
            per_source
                .iter()
                .filter(|f| f.source_id == cell)
                .flat_map(|f| {
                    f.objects
                        .iter()
                        .filter_map(move |o| mapped(&o.bbox, fw, fh, cell, 640.0, 360.0, s))
                })
                .collect()
        })
        .collect();
    let close = |a: [f32; 4], b: [f32; 4]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.01);
    let mut per_quadrant = [0usize; 4];
    for f in &tiled {
        for o in &f.objects {
            let b = o.bbox.corners();
            let cell = (b[0] >= 640.0) as usize + 2 * (b[1] >= 360.0) as usize;
            assert!(
                expected[cell].iter().any(|e| close(*e, b)),
                "tiled box {b:?} is no box of cam{cell} moved into its quadrant"
            );
            per_quadrant[cell] += 1;
        }
    }
    assert!(
        per_quadrant.iter().all(|&n| n > 0),
        "boxes in every quadrant: {per_quadrant:?}"
    );
    // Every source box is shown in some tiled frame.
    for (cell, boxes) in expected.iter().enumerate() {
        for e in boxes {
            assert!(
                tiled
                    .iter()
                    .flat_map(|f| &f.objects)
                    .any(|o| close(*e, o.bbox.corners())),
                "box {e:?} of cam{cell} never shown"
            );
        }
    }

    // The sink names the tiled stream's file after the stream: one file.
    let files: Vec<PathBuf> = std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut check = EdgeCheck::default();
    let frames = decode_rgb(&files[0], |i, pic| {
        assert_eq!((pic.width, pic.height), (1280, 720));
        let boxes: Vec<NativeBox> = tiled[i].objects.iter().map(|o| o.bbox).collect();
        // Check each box within its own quadrant only.
        for (qx, qy) in [(0.0, 0.0), (640.0, 0.0), (0.0, 360.0), (640.0, 360.0)] {
            let area = [qx, qy, qx + 640.0, qy + 360.0];
            let inside: Vec<NativeBox> = boxes
                .iter()
                .filter(|b| {
                    b.left >= qx && b.left < qx + 640.0 && b.top >= qy && b.top < qy + 360.0
                })
                .copied()
                .collect();
            check.frame(pic, &inside, area);
        }
    });
    assert_eq!(frames, tiled.len(), "one picture per tiled frame");
    check.assert_drawn("tiled");
}
