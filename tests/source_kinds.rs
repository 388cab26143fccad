//! The source kinds beyond files and RTSP, each against real GStreamer on both ends: RTP over
//! UDP (H.264 and H.265, unicast and multicast) with stall detection and reconnects, HTTP files
//! and HLS playlists from a real HTTP server, image sequences, and the clear errors of an absent
//! V4L2 camera, a missing or damaged image, an undecodable codec and a mistyped scheme.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use vidmesh_tests::{free_port, make_clip, metadata_topology, repo_root, ServerProcess};

/// One frame of the native metadata, with what tells sources and time apart.
#[derive(Debug, serde::Deserialize)]
struct Frame {
    source_name: String,
    frame_num: u64,
    pts_ns: u64,
    width: u32,
    height: u32,
}

fn frames_of(events: &Path, source: &str) -> Vec<Frame> {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Frame>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|f| f.source_name == source)
        .collect()
}

/// Frames numbered 0, 1, 2… with increasing timestamps: one stream, nothing lost or repeated.
fn assert_one_stream(frames: &[Frame], source: &str) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            f.frame_num, i as u64,
            "{source}: frame {i} is numbered {}",
            f.frame_num
        );
    }
    for pair in frames.windows(2) {
        assert!(
            pair[1].pts_ns > pair[0].pts_ns,
            "{source}: timestamps go back at frame {}: {} then {}",
            pair[1].frame_num,
            pair[0].pts_ns,
            pair[1].pts_ns
        );
    }
}

/// A topology running on its own thread until `stop`.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<vidmesh::RunSummary>>,
    events: PathBuf,
}

impl Running {
    fn start(path: &Path, dir: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap();
        let topology = vidmesh::Topology::parse(path, &text, &repo_root()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || vidmesh::run(&topology, &vidmesh::RunOptions::default(), stop).unwrap()
        });
        Self {
            stop,
            thread: Some(thread),
            events: dir.join("meta.jsonl"),
        }
    }

    fn frames(&self, source: &str) -> usize {
        frames_of(&self.events, source).len()
    }

    /// Waits until `source` has delivered at least `n` frames.
    fn wait_for(&self, source: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.frames(source) < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} frames of `{source}` (have {})",
                self.frames(source)
            );
            assert!(
                !self.thread.as_ref().is_some_and(|t| t.is_finished()),
                "the run ended before `{source}` delivered {n} frames"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> vidmesh::RunSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP port nothing uses right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A live RTP sender (GStreamer encoding a test pattern in real time), until dropped.
struct RtpSender(gst::Pipeline);

impl RtpSender {
    fn start(codec: &str, width: u32, height: u32, host: &str, port: u16) -> Self {
        gst::init().unwrap();
        let (encode, pay) = match codec {
            "H264" => (
                "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15",
                "rtph264pay config-interval=-1 pt=96",
            ),
            "H265" => (
                "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15",
                "rtph265pay config-interval=-1 pt=96",
            ),
            other => panic!("no sender for {other}"),
        };
        let multicast = if host.starts_with("239.") {
            " auto-multicast=true multicast-iface=lo"
        } else {
            ""
        };
        let launch = format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate=30/1 \
             ! {encode} ! {pay} ! udpsink host={host} port={port} sync=false{multicast}"
        );
        let pipeline = gst::parse::launch(&launch)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        Self(pipeline)
    }
}

impl Drop for RtpSender {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

fn write_topology(dir: &Path, name: &str, sources: &[String]) -> PathBuf {
    metadata_topology(dir, name, &sources.join("\n\n[[source]]\n"))
}

#[test]
fn rtp_over_udp_delivers_h264_unicast_and_h265_multicast() {
    let dir = tempfile::tempdir().unwrap();
    let (p264, p265) = (free_udp_port(), free_udp_port());
    let path = write_topology(
        dir.path(),
        "udp",
        &[
            format!("id = \"avc\"\nuri = \"udp://@:{p264}?encoding=H264\"\ntimeout = \"30s\""),
            format!(
                "id = \"hevc\"\nuri = \"rtp://@239.255.71.3:{p265}?iface=lo\"\nencoding = \"H265\"\ntimeout = \"30s\""
            ),
        ],
    );
    let run = Running::start(&path, dir.path());
    // The senders are live and endless: whatever the receivers miss while starting up, the
    // stream goes on.
    let _avc = RtpSender::start("H264", 320, 240, "127.0.0.1", p264);
    let _hevc = RtpSender::start("H265", 256, 192, "239.255.71.3", p265);
    run.wait_for("avc", 30);
    run.wait_for("hevc", 30);
    let summary = run.finish();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let events = dir.path().join("meta.jsonl");
    for (source, size) in [("avc", (320, 240)), ("hevc", (256, 192))] {
        let frames = frames_of(&events, source);
        assert!(frames.len() >= 30, "{source}: {} frames", frames.len());
        assert!(
            frames.iter().all(|f| (f.width, f.height) == size),
            "{source}"
        );
        assert_one_stream(&frames, source);
    }
}

/// A source next to the UDP camera that keeps running, live-paced: 30 of its frames take a
/// second of wall time, which is how the tests know that the camera's `timeout` has passed.
const STEADY: &str =
    "id = \"steady\"\nuri = \"testsrc://ball?width=160&height=120&fps=30&live=true\"";

#[test]
fn a_udp_stream_that_stops_is_reconnected_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let path = write_topology(
        dir.path(),
        "udp-reconnect",
        &[
            format!(
                "id = \"cam\"\nuri = \"udp://@:{port}?encoding=H264\"\ntimeout = \"1s\"\nreconnect_interval = \"300ms\""
            ),
            STEADY.to_string(),
        ],
    );
    let run = Running::start(&path, dir.path());
    let sender = RtpSender::start("H264", 320, 240, "127.0.0.1", port);
    run.wait_for("cam", 20);
    drop(sender);
    // Three seconds of the steady source: the camera's 1 s timeout passed meanwhile, and the
    // steady source went on alone.
    let steady = run.frames("steady");
    run.wait_for("steady", steady + 90);
    let before = run.frames("cam");
    let _back = RtpSender::start("H264", 320, 240, "127.0.0.1", port);
    run.wait_for("cam", before + 20);
    let summary = run.finish();

    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let cam = summary.sources.iter().find(|s| s.name == "cam").unwrap();
    assert!(cam.reconnects >= 1, "{cam:?}");
    let events = dir.path().join("meta.jsonl");
    let frames = frames_of(&events, "cam");
    assert_eq!(frames.len() as u64, cam.frames);
    assert_one_stream(&frames, "cam");
    assert_one_stream(&frames_of(&events, "steady"), "steady");
}

#[test]
fn a_udp_stream_that_stops_without_reconnect_fails_alone_with_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let path = write_topology(
        dir.path(),
        "udp-stall",
        &[
            format!("id = \"cam\"\nuri = \"udp://@:{port}?encoding=H264\"\ntimeout = \"1s\""),
            STEADY.to_string(),
        ],
    );
    let run = Running::start(&path, dir.path());
    let sender = RtpSender::start("H264", 320, 240, "127.0.0.1", port);
    run.wait_for("cam", 10);
    drop(sender);
    let steady = run.frames("steady");
    run.wait_for("steady", steady + 90);
    let summary = run.finish();

    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `cam`")
            && error.contains(&format!("udp://@:{port}"))
            && error.contains("no data for 1s"),
        "{error}"
    );
    let steady = summary.sources.iter().find(|s| s.name == "steady").unwrap();
    assert!(steady.error.is_none() && steady.frames >= 90, "{steady:?}");
}

/// `python -m http.server` (the runtime venv's Python) serving `dir` on a free port.
fn http_server(dir: &Path) -> ServerProcess {
    // This crate's own directory, not the fixtures' (which may be built from another checkout).
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup first",
        python.display()
    );
    let port = free_port();
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stderr(std::process::Stdio::null());
    ServerProcess::start(command, port)
}

#[test]
fn http_files_and_hls_playlists_deliver_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let clip = served.join("clip.mp4");
    make_clip(&clip, 60, 320, 240, false);
    // An HLS rendition of the same clip: MPEG-TS segments of about a second and a playlist.
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", clip.display()))
        .args(["!", "qtdemux", "!", "h264parse", "!", "hlssink2"])
        .arg(format!("location={}/seg_%05d.ts", served.display()))
        .arg(format!(
            "playlist-location={}/playlist.m3u8",
            served.display()
        ))
        .args(["target-duration=1", "max-files=0", "playlist-length=0"])
        .status()
        .unwrap();
    assert!(status.success(), "hlssink2 made no playlist");
    let playlist = std::fs::read_to_string(served.join("playlist.m3u8")).unwrap();
    assert!(playlist.matches(".ts").count() >= 2, "{playlist}");
    let server = http_server(&served);
    let base = format!("http://127.0.0.1:{}", server.port);
    let path = write_topology(
        dir.path(),
        "http",
        &[
            format!("id = \"mp4\"\nuri = \"{base}/clip.mp4\""),
            format!("id = \"hls\"\nuri = \"{base}/playlist.m3u8\""),
        ],
    );
    let summary = common::run_ok(&path);
    let events = dir.path().join("meta.jsonl");
    for source in ["mp4", "hls"] {
        let frames = frames_of(&events, source);
        assert_eq!(frames.len(), 60, "{source}");
        assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));
        assert_one_stream(&frames, source);
        let s = summary.sources.iter().find(|s| s.name == source).unwrap();
        assert_eq!(s.frames, 60, "{s:?}");
    }
}

#[test]
fn a_missing_http_file_names_the_redacted_url_and_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let server = http_server(&served);
    let uri = format!(
        "http://viewer:s3cret-pw@127.0.0.1:{}/missing/clip.mp4",
        server.port
    );
    let path = write_topology(
        dir.path(),
        "http-404",
        &[format!("id = \"web\"\nuri = \"{uri}\"")],
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `web`")
            && error.contains(&format!(
                "http://viewer:***@127.0.0.1:{}/missing/clip.mp4",
                server.port
            ))
            && error.contains("404"),
        "{error}"
    );
    assert!(
        !serde_json::to_string(&summary)
            .unwrap()
            .contains("s3cret-pw"),
        "the password leaked: {summary:?}"
    );
}

#[test]
fn an_absent_v4l2_camera_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A device path inside a fresh directory: absent on any machine, camera or not.
    let device = dir.path().join("video0");
    let path = write_topology(
        dir.path(),
        "v4l2",
        &[format!(
            "id = \"usb\"\nuri = \"v4l2://{}?width=640&height=480&fps=30\"",
            device.display()
        )],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let error = vidmesh::Topology::parse(&path, &text, &repo_root())
        .expect_err("an absent camera fails validation")
        .to_string();
    assert!(
        error.contains("source `usb`")
            && error.contains(&format!("V4L2 device {} does not exist", device.display())),
        "{error}"
    );

    // A camera that may be plugged in later is waited for, and named when the wait ends.
    let path = write_topology(
        dir.path(),
        "v4l2-wait",
        &[format!(
            "id = \"usb\"\nuri = \"v4l2://{}\"\nreconnect_interval = \"100ms\"\nreconnect_attempts = 1",
            device.display()
        )],
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `usb`")
            && error.contains(&format!("V4L2 device {} does not exist", device.display()))
            && error.contains("gave up after 1 reconnect attempts"),
        "{error}"
    );
}

/// Writes `count` test-pattern images with GStreamer's own encoder (`jpegenc`/`pngenc`) as
/// `dir/PATTERN`, numbered from 0.
fn make_images(dir: &Path, pattern: &str, encoder: &str, count: u32) {
    let status = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            &format!("num-buffers={count}"),
            "pattern=ball",
            "!",
        ])
        .arg("video/x-raw,width=160,height=120")
        .args(["!", "videoconvert", "!", encoder, "!", "multifilesink"])
        .arg(format!("location={}", dir.join(pattern).display()))
        .status()
        .unwrap();
    assert!(status.success(), "gst-launch-1.0 could not write {pattern}");
}

#[test]
fn image_sequences_deliver_every_image_timed_by_fps() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    make_images(&images, "frame_%05d.jpg", "jpegenc", 12);
    make_images(&images, "still_%03d.png", "pngenc", 6);
    let path = write_topology(
        dir.path(),
        "images",
        &[
            format!(
                "id = \"jpeg\"\nuri = \"images://{}/frame_%05d.jpg?fps=10\"",
                images.display()
            ),
            format!(
                "id = \"png\"\nuri = \"images://{}/still_%03d.png?fps=5&start_index=2\"",
                images.display()
            ),
        ],
    );
    common::run_ok(&path);
    let events = dir.path().join("meta.jsonl");
    let jpeg = frames_of(&events, "jpeg");
    assert_eq!(jpeg.len(), 12);
    let png = frames_of(&events, "png");
    assert_eq!(png.len(), 4, "images 2 to 5");
    for (frames, step_ns) in [(&jpeg, 100_000_000u64), (&png, 200_000_000)] {
        for (i, f) in frames.iter().enumerate() {
            assert_eq!((f.frame_num, f.pts_ns), (i as u64, i as u64 * step_ns));
            assert_eq!((f.width, f.height), (160, 120));
        }
    }
}

#[test]
fn a_missing_first_image_or_a_damaged_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    make_images(&images, "frame_%05d.jpg", "jpegenc", 6);

    let path = write_topology(
        dir.path(),
        "images-missing",
        &[format!(
            "id = \"seq\"\nuri = \"images://{}/frame_%05d.jpg?start_index=40\"",
            images.display()
        )],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let error = vidmesh::Topology::parse(&path, &text, &repo_root())
        .expect_err("a missing first image fails validation")
        .to_string();
    assert!(
        error.contains("source `seq`")
            && error.contains(&format!("{}/frame_00040.jpg", images.display()))
            && error.contains("does not exist"),
        "{error}"
    );

    // Image 3 loses its second half, as a copy interrupted mid-file would leave it.
    let damaged = images.join("frame_00003.jpg");
    let bytes = std::fs::read(&damaged).unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let path = write_topology(
        dir.path(),
        "images-damaged",
        &[format!(
            "id = \"seq\"\nuri = \"images://{}/frame_%05d.jpg\"",
            images.display()
        )],
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `seq`") && error.contains(&damaged.display().to_string()),
        "{error}"
    );
    // The images before the damage were delivered.
    assert_eq!(frames_of(&dir.path().join("meta.jsonl"), "seq").len(), 3);
}

#[test]
fn a_codec_no_plugin_decodes_names_the_source_and_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("odd.mp4");
    make_clip(&clip, 10, 160, 120, false);
    // Rename the H.264 sample entry to a codec nobody registered: qtdemux still demuxes the
    // track (as video/x-gst-fourcc-zzzz) but no decoder accepts it.
    let mut bytes = std::fs::read(&clip).unwrap();
    let find = |needle: &[u8], from: usize| {
        bytes[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let stsd = find(b"stsd", 0).expect("an stsd box");
    let entry = find(b"avc1", stsd).expect("an avc1 sample entry");
    bytes[entry..entry + 4].copy_from_slice(b"zzzz");
    std::fs::write(&clip, &bytes).unwrap();

    let path = write_topology(
        dir.path(),
        "codec",
        &[format!("id = \"odd\"\nuri = \"file://{}\"", clip.display())],
    );
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `odd`")
            && error.contains("odd.mp4")
            && error.contains("no installed GStreamer plugin decodes")
            && error.contains("video/x-gst-fourcc-zzzz"),
        "{error}"
    );
}

#[test]
fn a_mistyped_scheme_suggests_the_closest_supported_one() {
    let dir = tempfile::tempdir().unwrap();
    for (uri, meant) in [
        ("rtps://127.0.0.1/cam", "rtsp"),
        ("flie://clip.mp4", "file"),
    ] {
        let path = write_topology(
            dir.path(),
            "typo",
            &[format!("id = \"cam\"\nuri = \"{uri}\"")],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let error = vidmesh::Topology::parse(&path, &text, &repo_root())
            .expect_err("a mistyped scheme fails validation")
            .to_string();
        assert!(
            error.contains("t.toml:")
                && error.contains("supported: file, rtsp")
                && error.contains(&format!("did you mean `{meant}`?")),
            "{error}"
        );
    }
}
