//! File sources in the containers and codecs cameras and recorders produce: each clip is
//! encoded by a real GStreamer encoder and muxer in the test, then read by a vidmesh source;
//! every frame must arrive, numbered in order, at the clip's size.
//!
//! AV1 needs an AV1 decoder plugin (aom's `av1dec` or `dav1ddec`), which Debian's
//! gstreamer1.0-plugins-bad ships; the test says so when it is missing rather than passing.

mod common;

use std::path::Path;
use std::process::Command;

use vidmesh_tests::{metadata_topology, read_native};

const FRAMES: u32 = 24;
const WIDTH: u32 = 176;
const HEIGHT: u32 = 144;

/// Encodes `FRAMES` frames of a moving test pattern with `encoder` (a gst-launch fragment
/// including any parser) into `muxer`, writing `path`.
fn encode(path: &Path, encoder: &str, muxer: &str) {
    let description = format!(
        "videotestsrc num-buffers={FRAMES} pattern=ball ! \
         video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=15/1 ! \
         {encoder} ! {muxer} ! filesink location={}",
        path.display()
    );
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(description.split_whitespace())
        .status()
        .expect("gst-launch-1.0 runs (install gstreamer1.0-tools: scripts/setup)");
    assert!(status.success(), "gst-launch-1.0 {description}");
}

/// Encodes a clip, runs it through a source into native metadata, and checks every frame.
fn decodes_every_frame(file: &str, encoder: &str, muxer: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join(file);
    encode(&clip, encoder, muxer);
    let path = metadata_topology(
        scratch.path(),
        "codecs",
        &format!("id = \"clip\"\nuri = \"file://{}\"", clip.display()),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.sources[0].frames, FRAMES as u64, "{file}");
    let frames = read_native(&scratch.path().join("meta.jsonl"));
    let numbers: Vec<u64> = frames.iter().map(|f| f.frame_num).collect();
    assert_eq!(numbers, (0..FRAMES as u64).collect::<Vec<_>>(), "{file}");
    assert!(
        frames
            .iter()
            .all(|f| (f.width, f.height) == (WIDTH, HEIGHT)),
        "{file}: frames of another size"
    );
}

#[test]
fn h264_in_mp4_mkv_and_ts() {
    let h264 = "x264enc speed-preset=ultrafast key-int-max=8 ! h264parse";
    decodes_every_frame("h264.mp4", h264, "mp4mux");
    decodes_every_frame("h264.mkv", h264, "matroskamux");
    decodes_every_frame("h264.ts", h264, "mpegtsmux");
}

#[test]
fn h265_in_mp4_mkv_and_ts() {
    let h265 = "x265enc speed-preset=ultrafast key-int-max=8 ! h265parse";
    decodes_every_frame("h265.mp4", h265, "mp4mux");
    decodes_every_frame("h265.mkv", h265, "matroskamux");
    decodes_every_frame("h265.ts", h265, "mpegtsmux");
}

#[test]
fn mjpeg_in_avi_and_mkv() {
    decodes_every_frame("mjpeg.avi", "jpegenc", "avimux");
    decodes_every_frame("mjpeg.mkv", "jpegenc", "matroskamux");
}

#[test]
fn vp8_and_vp9_in_webm() {
    decodes_every_frame("vp8.webm", "vp8enc deadline=1", "webmmux");
    decodes_every_frame("vp9.webm", "vp9enc deadline=1 cpu-used=8", "webmmux");
}

#[test]
fn av1_in_mkv_and_mp4() {
    let decoders = ["av1dec", "dav1ddec"];
    let present = decoders.iter().any(|d| {
        Command::new("gst-inspect-1.0")
            .arg(d)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        present,
        "no AV1 decoder plugin ({}): install gstreamer1.0-plugins-bad",
        decoders.join(", ")
    );
    let av1 = "av1enc cpu-used=8 usage-profile=realtime target-bitrate=200 ! av1parse";
    decodes_every_frame("av1.mkv", av1, "matroskamux");
    decodes_every_frame("av1.mp4", av1, "mp4mux");
}
