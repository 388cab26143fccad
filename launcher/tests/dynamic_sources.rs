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

fn start(topology: &Path) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    start_on(topology, "127.0.0.1:0", None)
}

// The child is returned to the test, which interrupts and reaps it.
#[allow(clippy::zombie_processes)]
fn start_on(
    topology: &Path,
    addr: &str,
    token: Option<&str>,
) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vidmesh"));
    command.env_remove("VIDMESH_API_TOKEN");
    if let Some(token) = token {
        command.env("VIDMESH_API_TOKEN", token);
    }
    let mut child = command
        .current_dir(repo_root())
        .args(["run", "--progress", "0s", "--dashboard", addr])
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

/// Sends one raw HTTP/1.0 request and returns the status code.
fn status_of(addr: SocketAddr, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[test]
fn the_api_on_a_public_address_wants_a_token() {
    let scratch = tempfile::tempdir().unwrap();
    let topology = topology(scratch.path());
    let refused = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .env_remove("VIDMESH_API_TOKEN")
        .current_dir(repo_root())
        .args(["run", "--dashboard", "0.0.0.0:0"])
        .arg(&topology)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("VIDMESH_API_TOKEN") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );

    let token = "s3cret-token-for-the-test";
    let (mut child, addr, _rest) = start_on(&topology, "0.0.0.0:0", Some(token));
    let addr = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let add = r#"{"id": "cam1", "uri": "testsrc://ball?frames=5"}"#;
    let post = |auth: &str| {
        format!(
            "POST /sources HTTP/1.0\r\n{auth}Content-Length: {}\r\n\r\n{add}",
            add.len()
        )
    };
    assert_eq!(status_of(addr, "GET /sources HTTP/1.0\r\n\r\n"), 401);
    assert_eq!(status_of(addr, &post("")), 401);
    assert_eq!(
        status_of(addr, &post("Authorization: Bearer wrong-token\r\n")),
        401
    );
    assert_eq!(status_of(addr, "GET /healthz HTTP/1.0\r\n\r\n"), 200);
    assert_eq!(
        status_of(
            addr,
            &format!("GET /api/state?token={token} HTTP/1.0\r\n\r\n")
        ),
        200
    );
    assert_eq!(
        status_of(addr, &post(&format!("Authorization: Bearer {token}\r\n"))),
        201
    );
    let _ = child.kill();
    let _ = child.wait();
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
