//! Sources added and removed while the pipeline runs, through the control API on the runtime's
//! HTTP port (`POST /sources`, `DELETE /sources/{id}`, `GET /sources`), as a user drives it:
//! `vidmesh run --dashboard ADDR` in its own process, plain HTTP requests, Ctrl-C at the end.
//! The metadata shows each added source under its new source id and name, a removed source's
//! MP4 is finalised while the others go on, and bad requests get specific answers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vidmesh::http;
use vidmesh_tests::{count_frames, repo_root};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Two sources at most; one declared live test pattern; frames batched into a native-metadata
/// file and an MP4 per source.
fn topology(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[pipeline]
name = "dynamic"
links = [["sources", "mux"], ["mux", "meta"], ["mux", "out"]]
max_sources = 2

[[source]]
id = "cam0"
uri = "testsrc://ball?width=160&height=120&fps=30&live=true"

[stage]
mux = {{ kind = "mux", batch_size = 1 }}
meta = {{ kind = "broker", uri = "file://{dir}/meta.jsonl", schema = "native" }}
out = {{ kind = "sink", uri = "file://{dir}/{{source}}.mp4" }}
"#,
        dir = dir.display()
    );
    let path = dir.join("dynamic.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// The child is returned to the test, which interrupts and reaps it.
#[allow(clippy::zombie_processes)]
fn start(topology: &Path) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(["run", "--progress", "0s", "--dashboard", "127.0.0.1:0"])
        .arg(topology)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidmesh starts");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(url) = line.strip_prefix("dashboard: http://") {
            return (child, url.trim_end_matches('/').parse().unwrap(), rx);
        }
        seen.push(line);
    }
    let _ = child.kill();
    panic!("no address announced:\n{}", seen.join("\n"));
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = http::request(
        addr,
        method,
        path,
        body.map(str::as_bytes),
        TIMEOUT,
        1 << 20,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

/// Polls `GET /sources/NAME` until `done` holds for it.
fn wait_for(
    addr: SocketAddr,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, source) = call(addr, "GET", &format!("/sources/{name}"), None);
        assert_eq!(status, 200, "{source}");
        if done(&source) {
            return source;
        }
        assert!(
            Instant::now() < deadline,
            "source {name} never {what}: {source}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sources_come_and_go_while_the_pipeline_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let (mut child, addr, rest) = start(&topology(scratch.path()));

    wait_for(addr, "cam0", "delivered frames", |s| {
        s["frames"].as_u64() > Some(5)
    });

    // A finite stream added at run time gets the next source id and ends on its own.
    let (status, added) = call(
        addr,
        "POST",
        "/sources",
        Some(
            r#"{"id": "cam1", "uri": "testsrc://smpte?width=160&height=120&fps=30&frames=90&live=true"}"#,
        ),
    );
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["source_id"], 1);
    assert_eq!(added["state"], "running");

    // While two run, a third is refused, and so are duplicates and bad settings.
    let (status, full) = call(
        addr,
        "POST",
        "/sources",
        Some(r#"{"id": "cam9", "uri": "testsrc://ball"}"#),
    );
    assert_eq!(status, 409, "{full}");
    assert!(
        full["error"].as_str().unwrap().contains("max_sources"),
        "{full}"
    );
    let (status, duplicate) = call(
        addr,
        "POST",
        "/sources",
        Some(r#"{"id": "cam0", "uri": "testsrc://ball"}"#),
    );
    assert_eq!(status, 409, "{duplicate}");
    assert!(
        duplicate["error"].as_str().unwrap().contains("`cam0`"),
        "{duplicate}"
    );

    let cam1 = wait_for(addr, "cam1", "ended", |s| s["state"] == "ended");
    assert_eq!(cam1["frames"], 90);

    let (status, typo) = call(
        addr,
        "POST",
        "/sources",
        Some(r#"{"id": "cam2", "uri": "testsrc://ball", "max_fsp": 5}"#),
    );
    assert_eq!(status, 400, "{typo}");
    assert!(
        typo["error"].as_str().unwrap().contains("max_fsp"),
        "{typo}"
    );
    let (status, not_json) = call(addr, "POST", "/sources", Some("{\"id\": "));
    assert_eq!(status, 400, "{not_json}");
    assert!(
        not_json["error"].as_str().unwrap().contains("not JSON"),
        "{not_json}"
    );

    // A live source added and then removed: its stream ends, its MP4 is finalised, the first
    // camera never stops.
    let (status, added) = call(
        addr,
        "POST",
        "/sources",
        Some(r#"{"id": "cam2", "uri": "testsrc://snow?width=160&height=120&fps=30&live=true"}"#),
    );
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["source_id"], 2);
    wait_for(addr, "cam2", "delivered frames", |s| {
        s["frames"].as_u64() > Some(10)
    });
    let (status, removed) = call(addr, "DELETE", "/sources/cam2", None);
    assert_eq!(status, 200, "{removed}");
    let cam2 = wait_for(addr, "cam2", "ended", |s| s["state"] == "ended");
    let cam2_frames = cam2["frames"].as_u64().unwrap();
    let before = wait_for(addr, "cam0", "running", |s| s["state"] == "running")["frames"]
        .as_u64()
        .unwrap();
    wait_for(addr, "cam0", "went on after cam2 was removed", |s| {
        s["frames"].as_u64() > Some(before + 10)
    });
    let (status, again) = call(addr, "DELETE", "/sources/cam2", None);
    assert_eq!(status, 404, "{again}");
    let (status, all) = call(addr, "GET", "/sources", None);
    assert_eq!(status, 200);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cam0", "cam1", "cam2"]);

    // Ctrl-C: the last source stops and everything is written.
    // SAFETY: signalling a process we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vidmesh did not stop after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output: Vec<String> = rest.try_iter().collect();
    assert!(status.success(), "{}", output.join("\n"));

    let meta = std::fs::read_to_string(scratch.path().join("meta.jsonl")).unwrap();
    let frames: Vec<serde_json::Value> = meta
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: u64, name: &str| -> Vec<u64> {
        frames
            .iter()
            .filter(|f| f["source_id"] == id)
            .inspect(|f| assert_eq!(f["source_name"], name))
            .map(|f| f["frame_num"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(of(1, "cam1"), (0..90).collect::<Vec<_>>());
    assert_eq!(of(2, "cam2"), (0..cam2_frames).collect::<Vec<_>>());
    assert!(of(0, "cam0").len() as u64 > before + 10);

    for (name, frames) in [("cam1", 90), ("cam2", cam2_frames as usize)] {
        assert_eq!(
            count_frames(&scratch.path().join(format!("{name}.mp4"))),
            frames,
            "{name}.mp4"
        );
    }
}

#[test]
fn launch_refuses_sources_added_at_run_time() {
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .arg("launch")
        .arg(topology(scratch.path()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_sources") && stderr.contains("vidmesh run"),
        "{stderr}"
    );
}
