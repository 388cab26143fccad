//! Fixtures for end-to-end tests: where the repository's model and clips are, how to make
//! small clips with GStreamer, and how to point a topology at a scratch directory.
//!
//! Tests fail (they do not skip) when a prerequisite is missing, with the command that
//! provides it: `scripts/setup` (the README's test command runs it first).

use std::path::{Path, PathBuf};
pub mod amqp;
pub mod events;
pub mod kafka;
pub mod mqtt;
pub mod redis;
pub mod rtsp;

use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// A file the setup script provides, or a panic that says how to get it.
pub fn prepared(relative: &str) -> PathBuf {
    let p = repo_root().join(relative);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup first",
        p.display()
    );
    p
}

/// The demo person detector.
pub fn model() -> PathBuf {
    prepared("models/ssdlite_person.onnx")
}

/// Makes sure ONNX Runtime's library can be found by the `ort` crate (ORT_DYLIB_PATH).
pub fn ensure_onnxruntime() {
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        return;
    }
    let lib_dir = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib_dir).ok().and_then(|pythons| {
        pythons.flatten().find_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi)
                .ok()?
                .flatten()
                .map(|f| f.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so."))
                })
        })
    });
    let lib = found.unwrap_or_else(|| {
        panic!(
            "libonnxruntime.so not found under {}: run scripts/setup first",
            lib_dir.display()
        )
    });
    // Tests in one binary share the process; setting the same value twice is harmless.
    std::env::set_var("ORT_DYLIB_PATH", lib);
}

/// The Python of the runtime venv (onnxruntime, numpy, OpenCV).
pub fn venv_python() -> PathBuf {
    prepared(".venv/bin/python")
}

/// Runs a command that prints one JSON document per line (the consumer scripts) and parses its
/// output; `what` names it in failures, with its stderr.
pub fn json_lines_of<T: serde::de::DeserializeOwned>(command: &mut Command, what: &str) -> Vec<T> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed `{line}`: {e}"))
        })
        .collect()
}

/// Encodes a synthetic H.264 High 4:2:0 MP4 with GStreamer. `faststart` puts the index first,
/// which is what makes a truncated file still decodable up to the damage.
pub fn make_clip(path: &Path, frames: u32, width: u32, height: u32, faststart: bool) {
    let status = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            &format!("num-buffers={frames}"),
            "pattern=ball",
            "!",
        ])
        .arg(format!(
            "video/x-raw,format=I420,width={width},height={height},framerate=30/1"
        ))
        .args([
            "!",
            "x264enc",
            "speed-preset=ultrafast",
            "key-int-max=10",
            "!",
            "video/x-h264,profile=high",
            "!",
            "h264parse",
            "!",
            "mp4mux",
        ])
        .arg(format!("faststart={faststart}"))
        .args(["!", "filesink", &format!("location={}", path.display())])
        .status()
        .expect("gst-launch-1.0 runs (install gstreamer1.0-tools: scripts/setup)");
    assert!(
        status.success(),
        "gst-launch-1.0 could not make {}",
        path.display()
    );
}

/// The first `frames` frames of `source`, re-encoded as H.264 in an AVI at `dest` (a short
/// cut of a real clip, for tests that only need a few seconds of it).
pub fn first_frames(source: &Path, frames: u32, dest: &Path) {
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", source.display()))
        .args(["!", "decodebin", "!", "identity"])
        .arg(format!("eos-after={frames}"))
        .args([
            "!",
            "videoconvert",
            "!",
            "x264enc",
            "speed-preset=ultrafast",
        ])
        .args([
            "key-int-max=10",
            "!",
            "h264parse",
            "!",
            "avimux",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", dest.display()))
        .status()
        .expect("gst-launch-1.0 runs (install gstreamer1.0-tools: scripts/setup)");
    assert!(
        status.success(),
        "gst-launch-1.0 could not cut {}",
        source.display()
    );
}

/// Decodes a video file with GStreamer and counts its frames.
pub fn count_frames(path: &Path) -> usize {
    use gst::prelude::*;
    use gstreamer as gst;
    gst::init().expect("GStreamer initialises");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! fakesink name=sink sync=false",
        path.display()
    ))
    .expect("a decode pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline.by_name("sink").expect("fakesink");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    sink.static_pad("sink")
        .expect("sink pad")
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).expect("plays");
    let bus = pipeline.bus().expect("bus");
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let _ = pipeline.set_state(gst::State::Null);
    match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => count.load(std::sync::atomic::Ordering::Relaxed),
        other => panic!("cannot decode {}: {other:?}", path.display()),
    }
}

/// Reads a topology from `topologies/`, with every `file://out/` output redirected into `dir`,
/// and writes it there. Returns the new file's path.
pub fn topology_in(name: &str, dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo_root().join("topologies").join(name))
        .expect("topology exists");
    text = text.replace("file://out/", &format!("file://{}/", dir.display()));
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "topology {name} has no `{from}` to replace"
        );
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("scratch dir is writable");
    path
}

/// One frame of a native-schema metadata line.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NativeFrame {
    #[serde(default)]
    pub source_name: String,
    pub frame_num: u64,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<NativeObject>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NativeObject {
    pub class_id: i32,
    pub label: String,
    pub confidence: f32,
    pub bbox: NativeBox,
    pub track_id: Option<u64>,
    #[serde(default)]
    pub classifiers: Vec<NativeClassifier>,
}

/// What one classifier said of an object.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NativeClassifier {
    pub component_id: u32,
    pub labels: Vec<NativeLabel>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct NativeLabel {
    pub class_id: i32,
    pub label: String,
    pub probability: f32,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct NativeBox {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

impl NativeBox {
    pub fn corners(&self) -> [f32; 4] {
        [
            self.left,
            self.top,
            self.left + self.width,
            self.top + self.height,
        ]
    }
}

/// Reads a JSON-lines file of native-schema frames.
pub fn read_native(path: &Path) -> Vec<NativeFrame> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("bad line in {}: {e}: {l}", path.display()))
        })
        .collect()
}

/// IoU of two [left, top, right, bottom] boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = a[2].min(b[2]) - a[0].max(b[0]);
    let h = a[3].min(b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// The ground-truth clip's truth file (docs/DATA.md): every person's box per frame.
#[derive(Debug, serde::Deserialize)]
pub struct Truth {
    pub objects: Vec<TruthObject>,
}

#[derive(Debug, serde::Deserialize)]
pub struct TruthObject {
    pub id: u32,
    pub track: Vec<TruthBox>,
}

#[derive(Debug, serde::Deserialize)]
pub struct TruthBox {
    pub frame: u64,
    /// left, top, right, bottom in frame pixels.
    pub bbox: [f32; 4],
    /// Fraction of the person that is visible.
    pub visible: f32,
}

/// A person must be found when at least this much of them is visible.
pub const REQUIRED_VISIBILITY: f32 = 0.5;

/// Reads data/gt/people.truth.json.
pub fn ground_truth() -> Truth {
    let path = prepared("data/gt/people.truth.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("readable truth file"))
        .expect("a valid truth file")
}

/// A loopback TCP port nothing listens on right now, picked at random below the kernel's
/// ephemeral range. Not `bind(0)`: the kernel hands a just-released port to the next
/// `bind(0)`, so two test processes asking at once would get the same one, and one server
/// would answer the other test's client.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000 after 1000 tries");
}

/// A server process started by a test, killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts `command` and waits until it accepts connections on `port`.
    pub fn start(mut command: Command, port: u16) -> Self {
        let program = format!("{:?}", command.get_program());
        let child = command
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs (scripts/setup installs it): {e}"));
        let server = Self { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not start listening on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }

    /// Stops the server as an operator would (SIGTERM, letting it finish writing its data)
    /// and waits for it to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `dir/t.toml`: one source whose `[[source]]` table is `source` (id, uri and any other
/// keys), batched one frame at a time into a broker that records every frame as native
/// metadata in `dir/meta.jsonl`. Returns the topology's path.
pub fn metadata_topology(dir: &Path, name: &str, source: &str) -> PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "{name}"
links = [["sources", "mux"], ["mux", "meta"]]

[[source]]
{source}

[stage]
mux = {{ kind = "mux", batch_size = 1 }}
meta = {{ kind = "broker", uri = "file://{}/meta.jsonl", schema = "native" }}
"#,
        dir.display()
    );
    let path = dir.join("t.toml");
    std::fs::write(&path, text).expect("scratch dir is writable");
    path
}

/// How to run Docker Compose here: `docker compose` (Compose 2) where installed, else
/// `docker-compose` (Compose 1, Debian 12's package). Program and its first arguments.
pub fn compose_cli() -> (&'static str, &'static [&'static str]) {
    static V2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let v2 = *V2.get_or_init(|| {
        Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if v2 {
        ("docker", &["compose"])
    } else {
        ("docker-compose", &[])
    }
}

/// The standard output of a command that must have succeeded; `what` names it, with both
/// outputs, when it did not.
pub fn stdout_of(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts two frames of native metadata hold the same objects: count, track ids, and boxes
/// within 1e-3 pixel; `what` names the comparison in a failure.
pub fn same_objects(a: &NativeFrame, b: &NativeFrame, what: &str) {
    assert_eq!(
        a.objects.len(),
        b.objects.len(),
        "frame {}: {what} has another number of objects",
        a.frame_num
    );
    for (x, y) in a.objects.iter().zip(&b.objects) {
        assert_eq!(x.track_id, y.track_id, "frame {}: {what}", a.frame_num);
        for (p, q) in x.bbox.corners().iter().zip(y.bbox.corners()) {
            assert!(
                (p - q).abs() < 1e-3,
                "frame {}: {what}: box {p} vs {q}",
                a.frame_num
            );
        }
    }
}
