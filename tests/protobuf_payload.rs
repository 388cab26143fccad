//! The broker's `format = "protobuf"`: the analytics pipeline on the ground-truth clip
//! publishes one `vidmesh.events.v1.Frame` per frame to a real redis-server, and an independent
//! decoder (Python's protobuf package, with code `grpc_tools.protoc` generates from
//! proto/vidmesh/events/v1/frame.proto) reads back exactly what the JSON `native` schema says
//! about the same frames, from a second broker on the same link.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use vidmesh_tests::redis::RedisServer;
use vidmesh_tests::{ensure_onnxruntime, model, read_native, repo_root, topology_in, venv_python};

/// One stream entry as the Python decoder prints it.
#[derive(Debug, Deserialize)]
struct Decoded {
    /// The Redis fields beside the payload.
    stream_sensor: String,
    stream_message_id: String,
    version: String,
    id: String,
    timestamp: [i64; 2],
    sensor_id: String,
    message_id: String,
    source_id: u32,
    frame_num: u64,
    pts_ns: u64,
    width: u32,
    height: u32,
    objects: Vec<DecodedObject>,
}

#[derive(Debug, Deserialize)]
struct DecodedObject {
    id: String,
    bbox: [f32; 4],
    r#type: String,
    confidence: f32,
    class_id: i32,
    info: BTreeMap<String, String>,
}

/// The native line's fields this test compares that `NativeFrame` leaves out.
#[derive(Deserialize)]
struct NativeExtra {
    pts_ns: u64,
    objects: Vec<NativeObjectUser>,
}

#[derive(Deserialize)]
struct NativeObjectUser {
    user: Vec<serde_json::Value>,
}

/// Compiles frame.proto with grpc_tools.protoc into `dir`, then decodes every entry of
/// `stream` and prints it as one JSON line, fields spelled out so nothing depends on the
/// protobuf package's JSON mapping.
fn decode_stream(redis: &RedisServer, stream: &str, dir: &Path) -> Vec<Decoded> {
    let proto = repo_root().join("proto");
    let out = Command::new(venv_python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", dir.display()))
        .arg(proto.join("vidmesh/events/v1/frame.proto"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "protoc (grpcio-tools, scripts/setup installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = format!(
        "import json,sys,redis\n\
         sys.path.insert(0,{dir:?})\n\
         from vidmesh.events.v1 import frame_pb2\n\
         for _id,f in redis.Redis(port={port}).xrange('{stream}'):\n\
         \x20   m=frame_pb2.Frame.FromString(f[b'payload'])\n\
         \x20   print(json.dumps(dict(stream_sensor=f[b'sensorId'].decode(),\n\
         \x20       stream_message_id=f[b'messageId'].decode(),version=m.version,id=m.id,\n\
         \x20       timestamp=[m.timestamp.seconds,m.timestamp.nanos],sensor_id=m.sensor_id,\n\
         \x20       message_id=m.message_id,source_id=m.source_id,frame_num=m.frame_num,\n\
         \x20       pts_ns=m.pts_ns,width=m.width,height=m.height,\n\
         \x20       objects=[dict(id=o.id,bbox=[o.bbox.left,o.bbox.top,o.bbox.right,o.bbox.bottom],\n\
         \x20           type=o.type,confidence=o.confidence,class_id=o.class_id,info=dict(o.info))\n\
         \x20           for o in m.objects])))",
        dir = dir.display().to_string(),
        port = redis.port,
    );
    vidmesh_tests::json_lines_of(
        Command::new(venv_python()).args(["-c", &script]),
        "the protobuf decoder",
    )
}

/// What `Object.info["roi"]` should be for an object's native user meta: its analytics ROIs,
/// comma-separated, absent when none.
fn expected_rois(user: &[serde_json::Value]) -> Option<String> {
    let rois: Vec<&str> = user
        .iter()
        .filter(|u| u["kind"] == "vidmesh.analytics/object+json")
        .flat_map(|u| u["data"]["rois"].as_array().into_iter().flatten())
        .map(|r| r.as_str().expect("ROI names are strings"))
        .collect();
    (!rois.is_empty()).then(|| rois.join(","))
}

#[test]
fn protobuf_frames_say_what_the_native_schema_says() {
    ensure_onnxruntime();
    model();
    let redis = RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().display().to_string();
    // The analytics topology with the OSD and the MP4 sink swapped for a Protobuf broker on
    // the link the native broker reads, so both see the same frames.
    let pb = format!(
        "[stage.pb]\nkind = \"broker\"\nuri = \"redis://127.0.0.1:{}/vidmesh-pb\"\n\
         format = \"protobuf\"\nspool = \"{dir}/spool\"\n",
        redis.port
    );
    let topology = topology_in(
        "analytics.toml",
        scratch.path(),
        &[
            (
                r#"["analytics", "osd"], ["osd", "out"], ["analytics", "events"],"#,
                r#"["analytics", "events"], ["analytics", "pb"],"#,
            ),
            (
                &format!(
                    "[stage.osd]\nkind = \"osd\"\n\n[stage.out]\nkind = \"sink\"\n\
                     uri = \"file://{dir}/analytics/annotated.mp4\"\n"
                ),
                &pb,
            ),
        ],
    );
    let summary = common::run_ok(&topology);
    assert_eq!(summary.fact("pb", "messages"), Some("300"));
    assert_eq!(summary.fact("pb", "delivered"), Some("300"));

    let native_path = scratch.path().join("analytics/events.jsonl");
    let native = read_native(&native_path);
    let native_extra: Vec<NativeExtra> = std::fs::read_to_string(&native_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decoded = decode_stream(&redis, "vidmesh-pb", scratch.path());
    assert_eq!(native.len(), 300);
    assert_eq!(decoded.len(), 300, "one message per frame, no repeats");

    let mut ids = HashSet::new();
    let (mut objects, mut with_roi, mut with_line) = (0, 0, 0);
    for ((n, extra), d) in native.iter().zip(&native_extra).zip(&decoded) {
        let at = format!("frame {}", n.frame_num);
        assert_eq!(d.frame_num, n.frame_num, "stream order is frame order");
        assert_eq!(d.id, n.frame_num.to_string(), "{at}");
        assert_eq!(d.version, "1.0");
        assert_eq!((d.sensor_id.as_str(), d.source_id), ("people", 0), "{at}");
        assert_eq!(d.stream_sensor, "people", "the publish key is the sensor");
        assert_eq!(d.stream_message_id, d.message_id, "{at}");
        assert!(
            ids.insert(d.message_id.clone()),
            "{at}: message ids are distinct"
        );
        assert_eq!((d.width, d.height), (n.width, n.height), "{at}");
        assert_eq!(d.pts_ns, extra.pts_ns, "{at}");
        // Ingest time (the clip has no NTP time): this run, not the epoch.
        assert!(d.timestamp[0] > 1_700_000_000 && (0..1_000_000_000).contains(&d.timestamp[1]));

        assert_eq!(d.objects.len(), n.objects.len(), "{at}");
        for ((o, no), nu) in d.objects.iter().zip(&n.objects).zip(&extra.objects) {
            objects += 1;
            let track = no.track_id.unwrap_or(u64::MAX).to_string();
            assert_eq!(o.id, track, "{at}");
            // f32 both ways (JSON's shortest f32 text, Protobuf's 4 bytes): exactly equal.
            assert_eq!(o.bbox, no.bbox.corners(), "{at}, object {track}");
            assert_eq!(o.r#type, no.label);
            assert_eq!(o.confidence, no.confidence);
            assert_eq!(o.class_id, no.class_id);
            assert_eq!(o.info.get("roi").cloned(), expected_rois(&nu.user), "{at}");
            with_roi += usize::from(o.info.contains_key("roi"));
            with_line += usize::from(o.info.contains_key("line"));
        }
    }
    // The clip's people walk through both ROIs and cross both lines (analytics_counts.rs), so
    // the analytics part of `info` was exercised, not just left empty.
    assert!(objects > 300, "the detector found people: {objects}");
    assert!(
        with_roi > 0 && with_line > 0,
        "roi {with_roi}, line {with_line}"
    );
}
