//! The `sink` stage's outputs as users configure them: H.265 in Matroska and H.264 in MPEG-TS
//! files, DVR-style rotation into independently playable pieces, an RTSP server that players
//! join and leave, RTP over UDP, a full disk that stops only its own output, and clear errors
//! for a busy RTSP port and a missing display. Everything written is decoded again with
//! GStreamer and checked for frame count and resolution.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstreamer as gst;
use vidmesh_tests::{free_port, repo_root};

/// Writes `dir/t.toml`: the given sources (each a `[[source]]` body), batched one frame at a
/// time into the sink stage `out` (and any extra stages, all fed by the mux).
fn topology(dir: &Path, sources: &[String], sinks: &[(&str, &str)]) -> PathBuf {
    let mut links = vec![r#"["sources", "mux"]"#.to_string()];
    let mut stages = String::from("mux = { kind = \"mux\", batch_size = 1 }\n");
    for (name, body) in sinks {
        links.push(format!(r#"["mux", "{name}"]"#));
        stages.push_str(&format!("{name} = {{ kind = \"sink\", {body} }}\n"));
    }
    let mut text = format!(
        "[pipeline]\nname = \"sinks\"\nlinks = [{}]\n\n",
        links.join(", ")
    );
    for s in sources {
        text.push_str(&format!("[[source]]\n{s}\n\n"));
    }
    text.push_str(&format!("[stage]\n{stages}"));
    let path = dir.join("t.toml");
    std::fs::write(&path, text).expect("scratch dir is writable");
    path
}

fn testsrc(id: &str, query: &str) -> String {
    format!("id = \"{id}\"\nuri = \"testsrc://ball?{query}\"")
}

/// Frames decoded by `pipeline` (which must have a `fakesink name=sink`), and the last
/// resolution seen there.
#[derive(Default)]
struct Decoded {
    frames: AtomicUsize,
    size: Mutex<Option<(i32, i32)>>,
}

fn watch(pipeline: &gst::Element) -> Arc<Decoded> {
    let decoded = Arc::new(Decoded::default());
    let pipeline = pipeline.clone().downcast::<gst::Bin>().expect("a bin");
    let sink = pipeline.by_name("sink").expect("a fakesink named sink");
    let d = decoded.clone();
    sink.static_pad("sink").expect("sink pad").add_probe(
        gst::PadProbeType::BUFFER,
        move |pad, _| {
            if let Some(caps) = pad.current_caps() {
                let s = caps.structure(0).expect("caps have a structure");
                if let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) {
                    *d.size.lock().unwrap() = Some((w, h));
                }
            }
            d.frames.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        },
    );
    decoded
}

/// Decodes a file to its end: (frames, width, height).
fn decode_file(path: &Path) -> (usize, i32, i32) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! fakesink name=sink sync=false",
        path.display()
    ))
    .expect("a decode pipeline");
    let decoded = watch(&pipeline);
    pipeline.set_state(gst::State::Playing).expect("plays");
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => {}
        other => panic!("cannot decode {}: {other:?}", path.display()),
    }
    let (w, h) = decoded
        .size
        .lock()
        .unwrap()
        .expect("decoded frames have a size");
    (decoded.frames.load(Ordering::Relaxed), w, h)
}

fn container_of(path: &Path) -> String {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! typefind name=find ! fakesink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Bin>()
    .unwrap();
    let found = Arc::new(Mutex::new(String::new()));
    let f = found.clone();
    pipeline
        .by_name("find")
        .unwrap()
        .connect("have-type", false, move |args| {
            let caps = args[2].get::<gst::Caps>().unwrap();
            *f.lock().unwrap() = caps.structure(0).unwrap().name().to_string();
            None
        });
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    let _ = pipeline.set_state(gst::State::Null);
    let name = found.lock().unwrap().clone();
    name
}

fn video_codec_of(path: &Path) -> String {
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! parsebin ! fakesink name=sink",
        path.display()
    ))
    .unwrap();
    let sink = pipeline
        .clone()
        .downcast::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    let caps = sink.static_pad("sink").unwrap().current_caps();
    let _ = pipeline.set_state(gst::State::Null);
    caps.map(|c| c.structure(0).unwrap().name().to_string())
        .unwrap_or_default()
}

#[test]
fn h265_matroska_and_h264_mpeg_ts_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=320&height=240&fps=30&frames=45")],
        &[
            (
                "mkv",
                &format!(
                    "uri = \"file://{}/{{source}}.mkv\", codec = \"h265\", speed_preset = \"ultrafast\"",
                    dir.path().display()
                ),
            ),
            (
                "ts",
                &format!(
                    "uri = \"file://{}/{{source}}.ts\", encoder = \"x264\"",
                    dir.path().display()
                ),
            ),
        ],
    );
    let summary = common::run_ok(&t);
    assert_eq!(summary.sources[0].frames, 45);
    let mkv = dir.path().join("cam.mkv");
    let ts = dir.path().join("cam.ts");
    assert_eq!(decode_file(&mkv), (45, 320, 240));
    assert_eq!(decode_file(&ts), (45, 320, 240));
    assert_eq!(container_of(&mkv), "video/x-matroska");
    assert_eq!(container_of(&ts), "video/mpegts");
    assert_eq!(video_codec_of(&mkv), "video/x-h265");
    assert_eq!(video_codec_of(&ts), "video/x-h264");
    assert!(
        summary
            .fact("mkv", "output")
            .is_some_and(|o| o.contains("cam.mkv (45 frames)")),
        "{:?}",
        summary.stages
    );
}

#[test]
fn rotation_cuts_playable_pieces_that_add_up() {
    let dir = tempfile::tempdir().unwrap();
    // 100 frames at 25 fps = 4 s of stream, cut every second.
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=320&height=240&fps=25&frames=100")],
        &[(
            "out",
            &format!(
                "uri = \"file://{}/dvr/{{source}}-{{index}}.mp4\", max_duration = \"1s\"",
                dir.path().display()
            ),
        )],
    );
    let summary = common::run_ok(&t);
    let mut pieces: Vec<PathBuf> = std::fs::read_dir(dir.path().join("dvr"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pieces.sort();
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert_eq!(
        pieces[0].file_name().unwrap().to_str().unwrap(),
        "cam-00000.mp4"
    );
    let mut total = 0;
    for piece in &pieces {
        let (frames, w, h) = decode_file(piece);
        assert!(frames > 0, "{} is empty", piece.display());
        assert_eq!((w, h), (320, 240), "{}", piece.display());
        total += frames;
    }
    assert_eq!(total, 100, "{pieces:?}");
    let fact = summary.fact("out", "output").expect("an output fact");
    assert!(
        fact.contains(&format!("{} pieces, 100 frames", pieces.len())),
        "{fact}"
    );
}

/// Plays `url` with rtspsrc until `want` frames are decoded; returns (frames, width, height).
fn play_rtsp(url: &str, want: usize) -> (usize, i32, i32) {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols=tcp latency=100 ! decodebin ! videoconvert ! fakesink name=sink sync=false"
    ))
    .unwrap();
    let decoded = watch(&pipeline);
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while decoded.frames.load(Ordering::Relaxed) < want {
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        ) {
            let _ = pipeline.set_state(gst::State::Null);
            panic!("playing {url}: {msg:?}");
        }
        assert!(
            Instant::now() < deadline,
            "only {} frames from {url}",
            decoded.frames.load(Ordering::Relaxed)
        );
    }
    // Leave as a player does: the server sees the session end.
    let _ = pipeline.set_state(gst::State::Null);
    let (w, h) = decoded.size.lock().unwrap().unwrap();
    (decoded.frames.load(Ordering::Relaxed), w, h)
}

/// Runs a topology on a thread; returns the stop flag and the join handle.
fn start(
    path: &Path,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<vidmesh::RunSummary, vidmesh::RunError>>,
) {
    let text = std::fs::read_to_string(path).unwrap();
    let topology = vidmesh::Topology::parse(path, &text, &repo_root()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle =
        std::thread::spawn(move || vidmesh::run(&topology, &vidmesh::RunOptions::default(), s));
    (stop, handle)
}

#[test]
fn rtsp_out_serves_players_that_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Live and long enough for both players; the test stops it when they are done.
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=320&height=240&fps=30&live=true")],
        &[(
            "out",
            &format!("uri = \"rtsp://127.0.0.1:{port}/live\", speed_preset = \"ultrafast\""),
        )],
    );
    let (stop, run) = start(&t);
    let url = format!("rtsp://127.0.0.1:{port}/live");
    // The server is up once the run has built its stages; wait for the port.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        assert!(!run.is_finished(), "the run ended: {:?}", run.join());
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = play_rtsp(&url, 100);
    assert!(first.0 >= 100);
    assert_eq!((first.1, first.2), (320, 240));
    // A second player after the first has left gets the stream too.
    let second = play_rtsp(&url, 30);
    assert_eq!((second.1, second.2), (320, 240));
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let fact = summary.fact("out", "rtsp").expect("an rtsp fact");
    assert!(fact.starts_with(&url), "{fact}");
    eprintln!("{fact}");
}

#[test]
fn rtsp_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=160&height=120&frames=5")],
        &[("out", &format!("uri = \"rtsp://127.0.0.1:{port}/live\""))],
    );
    let text = std::fs::read_to_string(&t).unwrap();
    let topology = vidmesh::Topology::parse(&t, &text, &repo_root()).unwrap();
    let err = vidmesh::run(
        &topology,
        &vidmesh::RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`out`") && err.contains(&port.to_string()) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn udp_out_reaches_an_rtp_receiver() {
    gst::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    // The receiver a user would run (docs/TOPOLOGY.md gives the caps).
    let receiver = gst::parse::launch(&format!(
        "udpsrc address=127.0.0.1 port={port} buffer-size=4194304 \
         caps=\"application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96\" \
         ! rtph264depay ! h264parse name=parse ! avdec_h264 ! videoconvert ! fakesink name=sink sync=false"
    ))
    .unwrap();
    let decoded = watch(&receiver);
    let units = Arc::new(AtomicUsize::new(0));
    let u = units.clone();
    receiver
        .clone()
        .downcast::<gst::Bin>()
        .unwrap()
        .by_name("parse")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            u.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    receiver.set_state(gst::State::Playing).unwrap();
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=320&height=240&fps=30&frames=60")],
        &[("out", &format!("uri = \"udp://127.0.0.1:{port}\""))],
    );
    let summary = common::run_ok(&t);
    assert_eq!(
        summary.fact("out", "output"),
        Some(format!("udp://127.0.0.1:{port} (60 frames)").as_str())
    );
    // Every access unit arrived; then end the receiver so the decoder drains.
    let deadline = Instant::now() + Duration::from_secs(30);
    while units.load(Ordering::Relaxed) < 60 {
        assert!(
            Instant::now() < deadline,
            "{} of 60 frames received",
            units.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.send_event(gst::event::Eos::new());
    let msg = receiver.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = receiver.set_state(gst::State::Null);
    assert!(
        matches!(
            msg.as_ref().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{msg:?}"
    );
    assert_eq!(decoded.frames.load(Ordering::Relaxed), 60);
    assert_eq!(*decoded.size.lock().unwrap(), Some((320, 240)));
}

#[test]
fn a_full_disk_stops_only_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    // Writing to /dev/full fails with ENOSPC, as a full disk does.
    std::os::unix::fs::symlink("/dev/full", dir.path().join("full.mp4")).unwrap();
    let t = topology(
        dir.path(),
        &[
            // Snow does not compress: the file sink's 64 KiB buffer overflows, and the write
            // fails, after a few frames rather than only when the file is closed.
            "id = \"full\"\nuri = \"testsrc://snow?width=320&height=240&fps=30&frames=90\""
                .to_string(),
            testsrc("good", "width=320&height=240&fps=30&frames=90"),
        ],
        &[(
            "out",
            &format!("uri = \"file://{}/{{source}}.mp4\"", dir.path().display()),
        )],
    );
    let summary = common::run_file(&t);
    // Both sources ran to their end: the failure did not stop the pipeline.
    assert_eq!(summary.sources[0].frames, 90);
    assert_eq!(summary.sources[1].frames, 90);
    assert_eq!(decode_file(&dir.path().join("good.mp4")), (90, 320, 240));
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let err = &summary.errors[0];
    let full = dir.path().join("full.mp4");
    assert!(
        err.contains("stage `out` (sink)")
            && err.contains(&full.display().to_string())
            && err.contains("No space left")
            && err.contains("source `full`")
            && err.contains("later frames dropped"),
        "{err}"
    );
    assert!(!err.contains("good.mp4"), "{err}");
    // The failure surfaced while frames were still coming, and the rest were counted.
    let dropped: u64 = err
        .split(" later frames dropped")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {err}"));
    assert!(dropped > 0 && dropped < 90, "{err}");
    eprintln!("{err}");
}

#[test]
fn display_without_a_graphical_session_is_a_clear_error() {
    // Each test runs in its own process (nextest), so changing the environment is contained.
    std::env::remove_var("DISPLAY");
    std::env::remove_var("WAYLAND_DISPLAY");
    let dir = tempfile::tempdir().unwrap();
    let t = topology(
        dir.path(),
        &[testsrc("cam", "width=160&height=120&frames=5")],
        &[("screen", "uri = \"display://\"")],
    );
    let text = std::fs::read_to_string(&t).unwrap();
    let topology = vidmesh::Topology::parse(&t, &text, &repo_root()).unwrap();
    let err = vidmesh::run(
        &topology,
        &vidmesh::RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`screen`") && err.contains("DISPLAY") && err.contains("WAYLAND_DISPLAY"),
        "{err}"
    );
}
