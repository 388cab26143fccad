//! An RTSP camera (a real GStreamer RTSP server on loopback, with credentials) feeds the
//! pipeline: every frame arrives, the stream ends cleanly when the server's media ends, and the
//! password never shows up in the summary.

mod common;

use vidmesh_tests::rtsp::RtspServer;
use vidmesh_tests::{make_clip, read_native};

#[test]
fn rtsp_source_delivers_every_frame() {
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("camera.mp4");
    make_clip(&clip, 60, 320, 240, false);
    let server = RtspServer::serve(&clip, Some(("viewer", "s3cret-pw")));
    let uri = server.url.replace("rtsp://", "rtsp://viewer:s3cret-pw@");
    let text = format!(
        r#"
[pipeline]
name = "rtsp"
links = [["sources", "mux"], ["mux", "meta"]]

[[source]]
id = "cam"
uri = "{uri}"
rtsp_transport = "tcp"
latency = "100ms"
timeout = "5s"

[stage]
mux = {{ kind = "mux", batch_size = 1 }}
meta = {{ kind = "broker", uri = "file://{}/meta.jsonl", schema = "native" }}
"#,
        scratch.path().display()
    );
    let path = scratch.path().join("rtsp.toml");
    std::fs::write(&path, &text).unwrap();
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
