//! A password planted in the environment, used through `${env:NAME}` by a camera URI and a
//! broker URI, reaches the camera (frames arrive) and appears nowhere vidmesh writes: not in
//! its debug logs, its summary, its errors (a camera refusing a wrong password, a broker that
//! cannot be reached), its Prometheus metrics, the dashboard's state or the sources API.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vidmesh::http;
use vidmesh_tests::rtsp::RtspServer;
use vidmesh_tests::{make_clip, read_native};

const SECRET: &str = "Planted-S3cret-7f3a";

#[test]
fn a_planted_secret_is_used_but_never_printed() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let clip = dir.join("camera.mp4");
    // 5 s in real time: long enough to read the HTTP endpoints while it runs.
    make_clip(&clip, 150, 320, 240, false);
    let server = RtspServer::serve(&clip, Some(("viewer", SECRET)));
    let with_password = |suffix: &str| {
        server.url.replace(
            "rtsp://",
            &format!("rtsp://viewer:${{env:CAM_PASSWORD}}{suffix}@"),
        )
    };
    let topology = dir.join("secrets.toml");
    std::fs::write(
        &topology,
        format!(
            r#"
[pipeline]
name = "secrets"
links = [["sources", "mux"], ["mux", "meta"], ["mux", "events"]]

[[source]]
id = "cam"
uri = "{good}"
rtsp_transport = "tcp"
timeout = "5s"

[[source]]
id = "wrong"
uri = "{wrong}"
rtsp_transport = "tcp"
timeout = "5s"

[stage]
mux = {{ kind = "mux", batch_size = 1, batch_timeout = "40ms" }}
meta = {{ kind = "broker", uri = "file://{dir}/meta.jsonl", schema = "native" }}
events = {{ kind = "broker", uri = "redis://:${{env:CAM_PASSWORD}}@127.0.0.1:1/events", timeout = "1s", drain_timeout = "1s", spool = "{dir}/spool" }}
"#,
            good = with_password(""),
            wrong = with_password("-wrong"),
            dir = dir.display()
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(dir)
        .env("CAM_PASSWORD", SECRET)
        .env("RUST_LOG", "debug")
        .env_remove("VIDMESH_API_TOKEN")
        .args(["run", "--progress", "1s", "--dashboard", "127.0.0.1:0"])
        .arg(&topology)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidmesh starts");
    // Both pipes are drained on threads so that a chatty debug log never blocks the child;
    // stderr's lines also come here as they are written, for the dashboard's address.
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = String::new();
    let mut addr: Option<SocketAddr> = None;
    let meta = dir.join("meta.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the dashboard is up and the camera's first frames are written.
    while addr.is_none() || std::fs::metadata(&meta).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "no dashboard or no frames:\n{stderr}"
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            if let Some(url) = line.strip_prefix("dashboard: http://") {
                addr = Some(url.trim_end_matches('/').parse().unwrap());
            }
            stderr.push_str(&line);
            stderr.push('\n');
        }
    }
    let addr = addr.unwrap();
    let mut served = String::new();
    for path in ["/metrics", "/api/state", "/sources"] {
        let (status, body) =
            http::request(addr, "GET", path, None, Duration::from_secs(10), 4 << 20)
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(status < 500, "GET {path}: {status}");
        served.push_str(&String::from_utf8_lossy(&body));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        while let Ok(line) = lines.try_recv() {
            stderr.push_str(&line);
            stderr.push('\n');
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            panic!(
                "vidmesh did not finish within 60 s; last lines:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap();
    for line in lines.iter() {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    // The camera was reached with the expanded password: every frame of the clip came.
    let frames = read_native(&meta);
    assert_eq!(
        frames.iter().filter(|f| f.source_name == "cam").count(),
        150
    );
    // The wrong password and the unreachable broker are errors, each named…
    assert!(!status.success());
    assert!(
        stderr.contains("source `wrong`") || stdout.contains("source `wrong`"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("events") || stderr.contains("events"));
    // …and the log is the debug one, the most there is to leak into.
    assert!(stderr.contains("DEBUG"), "{stderr}");
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr), ("HTTP", &served)] {
        assert!(
            !text.contains(SECRET),
            "the secret appears in {what}:\n{}",
            text.lines()
                .filter(|l| l.contains(SECRET))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
