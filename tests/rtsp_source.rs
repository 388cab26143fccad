//! An RTSP camera (a real GStreamer RTSP server on loopback, with credentials) feeds the
//! pipeline: every frame arrives, the stream ends cleanly when the server's media ends, and the
//! password never shows up in the summary; with `reconnect_interval`, a camera that goes away
//! for 5 s and comes back is reconnected and its frames keep flowing, while a second stream
//! next to it never stops.

mod common;

use vidmesh_tests::rtsp::RtspServer;
use vidmesh_tests::{make_clip, metadata_topology, read_native};

#[test]
fn rtsp_source_delivers_every_frame() {
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("camera.mp4");
    make_clip(&clip, 60, 320, 240, false);
    let server = RtspServer::serve(&clip, Some(("viewer", "s3cret-pw")));
    let uri = server.url.replace("rtsp://", "rtsp://viewer:s3cret-pw@");
    let path = metadata_topology(
        scratch.path(),
        "rtsp",
        &format!(
            "id = \"cam\"\nuri = \"{uri}\"\nrtsp_transport = \"tcp\"\nlatency = \"100ms\"\ntimeout = \"5s\""
        ),
    );
    let summary = common::run_ok(&path);
    assert_eq!(summary.sources[0].frames, 60);
    let frames = read_native(&scratch.path().join("meta.jsonl"));
    assert_eq!(frames.len(), 60);
    assert!(frames.iter().all(|f| (f.width, f.height) == (320, 240)));
    assert!(!serde_json::to_string(&summary)
        .unwrap()
        .contains("s3cret-pw"));
}

#[test]
fn wrong_rtsp_password_is_a_clear_error_without_the_password() {
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("camera.mp4");
    make_clip(&clip, 30, 320, 240, false);
    let server = RtspServer::serve(&clip, Some(("viewer", "right-pw")));
    let uri = server.url.replace("rtsp://", "rtsp://viewer:wrong-pw@");
    let text = format!(
        "[pipeline]\nname = \"rtsp\"\nlinks = [[\"sources\", \"mux\"]]\n\n[[source]]\nid = \"cam\"\nuri = \"{uri}\"\ntimeout = \"5s\"\n\n[stage]\nmux = {{ kind = \"mux\" }}\n"
    );
    let path = scratch.path().join("rtsp.toml");
    std::fs::write(&path, &text).unwrap();
    let summary = common::run_file(&path);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let error = &summary.errors[0];
    assert!(
        error.starts_with("source `cam`") && error.contains("viewer:***@127.0.0.1"),
        "{error}"
    );
    assert!(!error.contains("wrong-pw"), "{error}");
}

#[test]
fn a_camera_that_goes_away_and_comes_back_is_reconnected() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("camera.mp4");
    // 20 s at 30 fps: the server streams in real time, so it never ends during the test.
    make_clip(&clip, 600, 320, 240, false);
    let server = RtspServer::serve(&clip, None);
    let port: u16 = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let events = scratch.path().join("meta.jsonl");
    // A second, live stream in the same pipeline that must not notice the camera's outage.
    let path = metadata_topology(
        scratch.path(),
        "rtsp-reconnect",
        &format!(
            "id = \"cam\"\nuri = \"{}\"\nrtsp_transport = \"tcp\"\nlatency = \"100ms\"\n\
             timeout = \"2s\"\nreconnect_interval = \"500ms\"\n\n[[source]]\nid = \"steady\"\n\
             uri = \"testsrc://ball?width=160&height=120&fps=30&live=true\"",
            server.url
        ),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let topology = vidmesh::Topology::parse(&path, &text, &vidmesh_tests::repo_root()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let run = std::thread::spawn({
        let stop = stop.clone();
        move || vidmesh::run(&topology, &vidmesh::RunOptions::default(), stop).unwrap()
    });
    // Frames of one source written so far.
    let lines_of = |path: &std::path::Path, source: &str| {
        let tag = format!("\"source_name\":\"{source}\"");
        std::fs::read_to_string(path)
            .map(|t| t.lines().filter(|l| l.contains(&tag)).count())
            .unwrap_or(0)
    };
    let lines = |path: &std::path::Path| lines_of(path, "cam");
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first frames", &|| lines(&events) >= 30);
    // The camera goes away (its server and every connection to it) for 5 s, then comes back.
    drop(server);
    let steady_before = lines_of(&events, "steady");
    std::thread::sleep(Duration::from_secs(5));
    let steady_during = lines_of(&events, "steady") - steady_before;
    let before = lines(&events);
    let _back = RtspServer::serve_at(&clip, None, port);
    wait_for("frames after the reconnect", &|| {
        lines(&events) >= before + 30
    });
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap();

    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let source = &summary.sources[0];
    assert!(source.reconnects >= 1, "{source:?}");
    let all = read_native(&events);
    for (name, summary) in [("cam", source), ("steady", &summary.sources[1])] {
        let frames: Vec<_> = all.iter().filter(|f| f.source_name == name).collect();
        assert_eq!(frames.len() as u64, summary.frames, "{name}");
        // One numbering (across both connections for the camera): every frame once, in order.
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.frame_num, i as u64, "{name}");
        }
    }
    // 30 fps for 5 s is 150 frames; a shared, loaded machine may deliver fewer, never none.
    assert!(
        steady_during >= 50,
        "the second stream stalled while the camera was away: {steady_during} frames in 5 s"
    );
    assert_eq!(summary.sources[1].reconnects, 0);
}
