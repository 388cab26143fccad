//! The OSD stage on small frames, checked pixel by pixel.

use std::time::{Duration, Instant};

use vidmesh_protocol::{BBox, ImageLayout, Mask};

use super::*;

const W: u32 = 120;
const H: u32 = 80;
/// The frames' background: grey, distinct from every colour used below.
const BG: u8 = 90;

fn stage(settings: &str) -> Osd {
    let ctx = BuildContext {
        peers: Default::default(),
        stage_name: "osd".into(),
        replica: 0,
        base_dir: std::env::temp_dir(),
        sources: vec!["cam0".into()],
        resume: None,
    };
    Osd::build(&toml::from_str(settings).unwrap(), &ctx).unwrap()
}

fn frame(frame_num: u64, objects: Vec<ObjectMeta>) -> FrameMeta {
    let layout = ImageLayout::packed(PixelFormat::Rgb24, W, H);
    FrameMeta {
        source_name: "cam0".into(),
        frame_num,
        width: W,
        height: H,
        payload: PayloadRef::Inline {
            layout,
            data: vec![BG; layout.min_len().unwrap()].into(),
        },
        objects,
        ..Default::default()
    }
}

fn object(label: &str, class_id: i32, track_id: Option<u64>, bbox: BBox) -> ObjectMeta {
    ObjectMeta {
        label: label.into(),
        class_id,
        track_id,
        bbox,
        ..Default::default()
    }
}

fn pixel(f: &FrameMeta, x: u32, y: u32) -> [u8; 3] {
    let (layout, data) = f.payload.inline_image().unwrap();
    let o = (y * layout.stride + x * 3) as usize;
    [data[o], data[o + 1], data[o + 2]]
}

fn rgb(c: Rgba) -> [u8; 3] {
    [c.r, c.g, c.b]
}

#[test]
fn per_class_colours_by_name_and_palette() {
    let mut osd = stage(
        "color_by = \"class\"\nborder_width = 2\nshow_track_id = false\n\
         colors = { person = \"#ff0000\", car = [0, 255, 0] }",
    );
    let mut f = frame(
        0,
        vec![
            object(
                "person",
                1,
                Some(3),
                BBox::from_corners(5.0, 30.0, 35.0, 70.0),
            ),
            object(
                "car",
                2,
                Some(4),
                BBox::from_corners(45.0, 30.0, 75.0, 70.0),
            ),
            object(
                "bike",
                5,
                Some(6),
                BBox::from_corners(85.0, 30.0, 115.0, 70.0),
            ),
        ],
    );
    osd.draw_frame(&mut f, Instant::now()).unwrap();
    // Left edges, halfway down: inside the 2-pixel outline.
    assert_eq!(pixel(&f, 5, 50), [255, 0, 0]);
    assert_eq!(pixel(&f, 45, 50), [0, 255, 0]);
    assert_eq!(
        pixel(&f, 85, 50),
        rgb(PALETTE[5]),
        "class 5 takes palette entry 5"
    );
    // Inside the boxes nothing is drawn.
    for x in [20, 60, 100] {
        assert_eq!(pixel(&f, x, 55), [BG; 3]);
    }
}

#[test]
fn track_colours_by_default_and_class_colours_for_untracked_objects() {
    let mut osd = stage("colors = { person = \"#0000ff\" }\nborder_width = 1");
    let mut f = frame(
        0,
        vec![
            object(
                "person",
                1,
                Some(9),
                BBox::from_corners(5.0, 30.0, 35.0, 70.0),
            ),
            object(
                "person",
                1,
                None,
                BBox::from_corners(45.0, 30.0, 75.0, 70.0),
            ),
        ],
    );
    osd.draw_frame(&mut f, Instant::now()).unwrap();
    assert_eq!(pixel(&f, 5, 50), rgb(PALETTE[9 % PALETTE.len()]));
    assert_eq!(pixel(&f, 45, 50), [0, 0, 255]);
}

#[test]
fn masks_are_blended_in_the_object_colour() {
    let mut osd = stage("colors = { person = \"#ff0000\" }\ncolor_by = \"class\"\nborder_width = 1\nmask_alpha = 0.5");
    let mut o = object(
        "person",
        1,
        None,
        BBox::from_corners(10.0, 30.0, 50.0, 70.0),
    );
    // Left half of the box is the object.
    o.mask = Some(Mask {
        width: 2,
        height: 1,
        threshold: 0.5,
        data: vec![1.0, 0.0],
    });
    let mut f = frame(0, vec![o]);
    osd.draw_frame(&mut f, Instant::now()).unwrap();
    // 50% red over grey 90: (255*128 + 90*127)/255 = 172, 90*127/255 = 44.
    assert_eq!(pixel(&f, 20, 50), [172, 44, 44]);
    assert_eq!(pixel(&f, 40, 50), [BG; 3], "right half not masked");
    assert_eq!(pixel(&f, 10, 50), [255, 0, 0], "outline over the mask");

    let mut off = stage("display_mask = false");
    let mut o = object(
        "person",
        1,
        None,
        BBox::from_corners(10.0, 30.0, 50.0, 70.0),
    );
    o.mask = f.objects[0].mask.clone();
    let mut f = frame(0, vec![o]);
    off.draw_frame(&mut f, Instant::now()).unwrap();
    assert_eq!(pixel(&f, 20, 50), [BG; 3]);
}

#[test]
fn a_malformed_mask_is_skipped_and_counted() {
    let mut osd = stage("");
    let mut o = object(
        "person",
        1,
        None,
        BBox::from_corners(10.0, 30.0, 50.0, 70.0),
    );
    o.mask = Some(Mask {
        width: 100,
        height: 100,
        threshold: 0.5,
        data: vec![1.0; 3],
    });
    let mut f = frame(0, vec![o]);
    osd.draw_frame(&mut f, Instant::now()).unwrap();
    assert_eq!(osd.stats.masks_malformed, 1);
    assert_eq!(pixel(&f, 20, 50), [BG; 3]);
}

#[test]
fn trails_follow_the_bottom_centre_of_each_track() {
    let mut osd =
        stage("trail_length = 10\ntrail_width = 1\nborder_width = 1\nshow_track_id = false");
    let color = rgb(PALETTE[2]);
    let mut last = None;
    // The box moves right 10 px a frame; its bottom centre goes (20,60) → (60,60).
    for n in 0..5u64 {
        let x = 10.0 + 10.0 * n as f32;
        let mut f = frame(
            n,
            vec![object(
                "person",
                1,
                Some(2),
                BBox::from_corners(x, 20.0, x + 20.0, 60.0),
            )],
        );
        osd.draw_frame(&mut f, Instant::now()).unwrap();
        last = Some(f);
    }
    let f = last.unwrap();
    for x in [20, 35, 45, 59] {
        assert_eq!(pixel(&f, x, 60), color, "({x},60) on the trail");
    }
    assert_eq!(pixel(&f, 15, 60), [BG; 3], "before the first position");
    assert_eq!(pixel(&f, 35, 62), [BG; 3], "below the trail");
    let snapshot = osd.snapshot().expect("trails are state");
    assert!(String::from_utf8(snapshot).unwrap().contains("\"id\":2"));
}

#[test]
fn overlay_text_sits_top_left_on_its_background() {
    let mut osd = stage(
        "overlay = \"{source} {count}\"\noverlay_background = \"#0000ff\"\n\
         overlay_color = [255, 255, 0]\noverlay_font_size = 14",
    );
    let mut f = frame(0, Vec::new());
    osd.draw_frame(&mut f, Instant::now()).unwrap();
    // The background box starts at the corner and is as tall as the text plus padding.
    assert_eq!(pixel(&f, 0, 0), [0, 0, 255]);
    assert_eq!(pixel(&f, 1, 16), [0, 0, 255]);
    assert_eq!(pixel(&f, 1, 19), [BG; 3], "below the box");
    // Glyphs are anti-aliased: count pixels pulled from the blue towards yellow.
    let glyph_pixels = (0..18)
        .flat_map(|y| (0..60).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let [r, g, b] = pixel(&f, x, y);
            r > 100 && r == g && b < 200
        })
        .count();
    assert!(glyph_pixels > 30, "glyph pixels: {glyph_pixels}");
    let box_right = (0..W)
        .rev()
        .find(|&x| pixel(&f, x, 2) == [0, 0, 255])
        .unwrap();
    assert!(
        box_right < 80,
        "the box fits \"cam0 0\": ends at {box_right}"
    );
}

#[test]
fn overlay_fps_counts_frames_per_stream() {
    let mut osd = stage("overlay = \"{fps:.0}\"");
    let t0 = Instant::now();
    for n in 0..=10u64 {
        let mut f = frame(n, Vec::new());
        osd.draw_frame(&mut f, t0 + Duration::from_millis(50 * n))
            .unwrap();
    }
    let template = osd.style.overlay.clone().unwrap();
    let fps = osd
        .fps
        .get_mut(&0)
        .unwrap()
        .tick(t0 + Duration::from_millis(550));
    assert_eq!(template.render(&frame(11, Vec::new()), fps), "20");
}

#[test]
fn frames_without_pixels_are_refused_with_the_source_named() {
    let mut osd = stage("");
    let mut f = frame(
        3,
        vec![object(
            "person",
            1,
            None,
            BBox::from_corners(1.0, 1.0, 9.0, 9.0),
        )],
    );
    f.payload = PayloadRef::None;
    let err = osd
        .draw_frame(&mut f, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("frame 3 of `cam0`"), "{err}");
}

#[test]
fn adopt_takes_the_trails_of_the_named_streams() {
    let mut a = stage("trail_length = 4");
    for n in 0..3u64 {
        let mut f = frame(
            n,
            vec![object(
                "p",
                0,
                Some(1),
                BBox::from_corners(1.0, 1.0, 9.0, 9.0),
            )],
        );
        a.draw_frame(&mut f, Instant::now()).unwrap();
    }
    let mut b = stage("trail_length = 4");
    b.adopt(&a.snapshot().unwrap(), &[0]).unwrap();
    assert_eq!(b.trails.tracks(), 1);
    assert!(b.adopt(b"not json", &[0]).is_err());
}

#[test]
fn labels_carry_the_track_id_and_the_classifiers_labels() {
    let mut o = object(
        "person",
        1,
        Some(3),
        BBox::from_corners(10.0, 40.0, 50.0, 120.0),
    );
    for (component_id, label) in [(2, "backpack"), (3, "dark")] {
        o.classifiers.push(vidmesh_protocol::ClassifierMeta {
            component_id,
            labels: vec![vidmesh_protocol::LabelInfo {
                class_id: 0,
                label: label.into(),
                probability: 0.9,
            }],
        });
    }
    let osd = stage("");
    let (_, text) = osd.object_overlay(&o, Rgba::default());
    assert_eq!(text.text, "person 3 backpack dark");
    let osd = stage("show_classifiers = false");
    assert_eq!(osd.object_overlay(&o, Rgba::default()).1.text, "person 3");
}
