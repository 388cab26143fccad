//! The command line a user meets first: `vidmesh inspect` on real and broken sources,
//! `vidmesh graph` as DOT and SVG, and the progress display of `vidmesh run` (plain lines when
//! stderr is not a terminal, a bar when it is).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vidmesh_tests::rtsp::RtspServer;
use vidmesh_tests::{make_clip, prepared, repo_root};

fn vidmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .expect("vidmesh runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "vidmesh failed:\n{}\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// The one `error:` line of a failed run.
fn error_line(out: &Output) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure; stdout:\n{}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{err}");
    lines[0].to_string()
}

/// The value after `key` on the report line that starts with it (keys are left-aligned).
fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{report}"))
}

// The facts of data/vtest.avi as `gst-discoverer-1.0 -v` reports them: AVI, DivX
// MS-MPEG-4 Version 3 (video/x-divx, divxversion 3), 768x576, 10/1 fps, 0:01:19.5
// (795 frames), 8131690 bytes. (The report names codecs and containers by
// pb_utils_get_codec_description, which words them a little differently.)

#[test]
fn inspect_describes_the_demo_clip() {
    prepared("data/vtest.avi");
    let report = succeeded(&vidmesh(&["inspect", "data/vtest.avi"]));
    let root = repo_root().canonicalize().unwrap();
    assert_eq!(
        field(&report, "uri"),
        format!("file://{}/data/vtest.avi", root.display())
    );
    assert_eq!(field(&report, "container"), "Audio Video Interleave (AVI)");
    assert_eq!(field(&report, "duration"), "1m 19s 500ms (79.500 s)");
    // 8131690 bytes × 8 / 79.5 s
    assert_eq!(field(&report, "bitrate"), "818 kbit/s");
    assert_eq!(field(&report, "seekable"), "yes");
    assert_eq!(field(&report, "live"), "no");
    assert_eq!(field(&report, "streams"), "1 video, 0 audio");
    assert_eq!(
        field(&report, "codec"),
        "DivX MPEG-4 Version 3 [video/x-divx]"
    );
    assert_eq!(field(&report, "resolution"), "768x576");
    assert_eq!(field(&report, "frame rate"), "10 fps");
    assert_eq!(field(&report, "frames"), "795 (duration × frame rate)");
}

#[test]
fn inspect_json_has_the_same_facts() {
    prepared("data/vtest.avi");
    let out = vidmesh(&["inspect", "--json", "file://data/vtest.avi"]);
    let json: serde_json::Value = serde_json::from_str(&succeeded(&out)).expect("valid JSON");
    assert_eq!(json["container"], "Audio Video Interleave (AVI)");
    assert_eq!(json["duration_s"], 79.5);
    assert_eq!(json["live"], false);
    assert_eq!(json["seekable"], true);
    assert_eq!(json["audio"].as_array().map(Vec::len), Some(0));
    let video = &json["video"].as_array().expect("video streams")[..];
    assert_eq!(video.len(), 1);
    assert_eq!(video[0]["media_type"], "video/x-divx");
    assert_eq!(
        (video[0]["width"].as_u64(), video[0]["height"].as_u64()),
        (Some(768), Some(576))
    );
    assert_eq!(video[0]["frame_rate"], "10/1");
    assert_eq!(video[0]["fps"], 10.0);
    assert_eq!(video[0]["frames"], 795);
    let uri = json["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("file:///") && uri.ends_with("/data/vtest.avi"),
        "{uri}"
    );
}

#[test]
fn inspect_shows_h264_profile_and_level() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 45, 320, 240, false);
    let report = succeeded(&vidmesh(&["inspect", clip.to_str().unwrap()]));
    let codec = field(&report, "codec");
    assert!(
        codec.starts_with("H.264 (")
            && codec.contains("[video/x-h264, profile ")
            && codec.contains(", level "),
        "{report}"
    );
    assert_eq!(field(&report, "resolution"), "320x240");
    assert_eq!(field(&report, "frame rate"), "30 fps");
    assert_eq!(field(&report, "frames"), "45 (duration × frame rate)");
    assert_eq!(field(&report, "duration"), "1s 500ms (1.500 s)");
}

#[test]
fn inspect_of_a_missing_file_names_it() {
    let line = error_line(&vidmesh(&["inspect", "no/such/clip.mp4"]));
    assert_eq!(line, "error: no/such/clip.mp4: no such file");
    let line = error_line(&vidmesh(&["inspect", "--json", "file:///no/such/clip.mp4"]));
    assert_eq!(line, "error: /no/such/clip.mp4: no such file");
}

#[test]
fn inspect_of_a_corrupt_file_names_it_and_what_gstreamer_said() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.mp4");
    // Deterministic noise (an LCG): no container or codec signature anywhere.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    std::fs::File::create(&garbage)
        .and_then(|mut f| f.write_all(&bytes))
        .unwrap();
    let line = error_line(&vidmesh(&["inspect", garbage.to_str().unwrap()]));
    let prefix = format!(
        "error: {}: not a playable video: GStreamer says: ",
        garbage.display()
    );
    assert!(
        line.starts_with(&prefix) && line.len() > prefix.len() + 5,
        "{line}"
    );
}

#[test]
fn inspect_of_an_rtsp_server_that_never_answers_times_out_without_the_password() {
    // Accepts the connection (the kernel does) and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let uri = format!("rtsp://admin:s3cret@127.0.0.1:{port}/stream1");
    let started = Instant::now();
    let out = vidmesh(&["inspect", "--timeout", "2s", &uri]);
    let took = started.elapsed();
    let line = error_line(&out);
    assert_eq!(
        line,
        format!(
            "error: rtsp://admin:***@127.0.0.1:{port}/stream1: no answer within 2s (is the address right and the server up? `--timeout` waits longer)"
        )
    );
    assert!(!stdout(&out).contains("s3cret") && !stderr(&out).contains("s3cret"));
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} for a 2 s timeout"
    );
    drop(listener);
}

#[test]
fn inspect_of_a_refused_rtsp_connection_says_so_without_the_password() {
    // A port nobody listens on: bind, read the number, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("rtsp://admin:s3cret@127.0.0.1:{port}/stream1");
    let out = vidmesh(&["inspect", "--timeout", "5s", &uri]);
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!(
            "error: rtsp://admin:***@127.0.0.1:{port}/stream1: cannot open: "
        )),
        "{line}"
    );
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
}

#[test]
fn inspect_of_a_live_rtsp_camera_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 300, 320, 240, false);
    let server = RtspServer::serve(&clip, Some(("viewer", "s3cret")));
    let uri = server.url.replacen("rtsp://", "rtsp://viewer:s3cret@", 1);
    let out = vidmesh(&["inspect", "--json", &uri]);
    let text = succeeded(&out);
    assert!(!text.contains("s3cret"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["uri"],
        server.url.replacen("rtsp://", "rtsp://viewer:***@", 1)
    );
    assert_eq!(json["live"], true, "{text}");
    assert_eq!(json["video"][0]["media_type"], "video/x-h264", "{text}");
    assert_eq!(json["video"][0]["width"], 320, "{text}");
    assert_eq!(json["video"][0]["height"], 240, "{text}");

    let wrong = server.url.replacen("rtsp://", "rtsp://viewer:guess3d@", 1);
    let out = vidmesh(&["inspect", "--timeout", "5s", &wrong]);
    let line = error_line(&out);
    assert!(line.contains("rtsp://viewer:***@127.0.0.1"), "{line}");
    assert!(!stderr(&out).contains("guess3d"), "{}", stderr(&out));
}

/// A topology on data/vtest.avi; no model needed.
fn write_topology(dir: &Path, links: &str, stages: &str) -> PathBuf {
    let clip = prepared("data/vtest.avi");
    let text = format!(
        r#"
[pipeline]
name = "cli-test"
links = {links}

[[source]]
id = "street"
uri = "file://{clip}"

[stage]
{stages}
"#,
        clip = clip.display()
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn graph_draws_svg_with_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let topology = write_topology(
        dir.path(),
        r#"[["sources", "mux"], ["mux", "tracker"], ["tracker", "overlay"], ["overlay", "video_out"], ["tracker", "events"]]"#,
        &format!(
            r#"mux = {{ kind = "mux", batch_size = 2 }}
tracker = {{ kind = "track", replicas = 2, drop = "oldest" }}
overlay = {{ kind = "osd" }}
video_out = {{ kind = "sink", uri = "file://{d}/out.mp4" }}
events = {{ kind = "broker", uri = "file://{d}/events.jsonl" }}"#,
            d = dir.path().display()
        ),
    );
    let topology = topology.to_str().unwrap();

    let dot = succeeded(&vidmesh(&["graph", topology]));
    assert!(dot.starts_with("digraph \"cli-test\" {"), "{dot}");
    assert!(
        dot.contains("\"stage:mux\" -> \"stage:tracker\" [label=\"drop oldest\"];"),
        "{dot}"
    );

    if Command::new("dot").arg("-V").output().is_err() {
        eprintln!(
            "skipped the SVG half: Graphviz's `dot` is not installed (apt-get install graphviz)"
        );
        return;
    }
    let svg_path = dir.path().join("graph.svg");
    let out = vidmesh(&[
        "graph",
        "--format",
        "svg",
        "-o",
        svg_path.to_str().unwrap(),
        topology,
    ]);
    assert_eq!(succeeded(&out), "", "-o writes the file, not stdout");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    for name in [
        "street",
        "mux",
        "tracker",
        "overlay",
        "video_out",
        "events",
        "×2 replicas",
    ] {
        assert!(
            svg.contains(&format!(">{name}<")),
            "no {name} in the SVG:\n{svg}"
        );
    }

    // Without Graphviz on PATH: one line that says what to install.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .args(["graph", "--format", "svg", topology])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("`dot` is not installed") && line.contains("install graphviz"),
        "{line}"
    );
}

/// source → mux only: decoding is all the work, so the run takes a few seconds.
fn decode_only_topology(dir: &Path) -> PathBuf {
    write_topology(
        dir,
        r#"[["sources", "mux"]]"#,
        r#"mux = { kind = "mux", batch_size = 4 }"#,
    )
}

/// `[   0.2s] frames 45/795 (6%) 44.6 fps ETA 17s | mux 0.0ms q4`, taken apart.
fn parse_progress_line(line: &str) -> Option<(f64, u64, Option<u64>, f64)> {
    let rest = line.strip_prefix('[')?;
    let (elapsed, rest) = rest.split_once("s] frames ")?;
    let elapsed: f64 = elapsed.trim().parse().ok()?;
    let (head, stages) = rest.split_once(" | ")?;
    if !stages.starts_with("mux ") || !stages.contains("ms q") {
        return None;
    }
    let mut words = head.split(' ');
    let counts = words.next()?;
    let (frames, total) = match counts.split_once('/') {
        Some((f, t)) => (f.parse().ok()?, Some(t.parse().ok()?)),
        None => (counts.parse().ok()?, None),
    };
    let mut word = words.next()?;
    if total.is_some() {
        if !(word.starts_with('(') && word.ends_with("%)")) {
            return None;
        }
        word = words.next()?;
    }
    let fps: f64 = word.parse().ok()?;
    if words.next()? != "fps" {
        return None;
    }
    match words.next() {
        None => {}
        Some("ETA") => {
            humantime::parse_duration(&words.collect::<Vec<_>>().join(" ")).ok()?;
        }
        Some(_) => return None,
    }
    Some((elapsed, frames, total, fps))
}

#[test]
fn run_on_a_non_terminal_prints_plain_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let topology = decode_only_topology(dir.path());
    let out = vidmesh(&["run", "--progress", "100ms", topology.to_str().unwrap()]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        !err.contains('\r') && !err.contains("[#") && !err.contains("\x1b["),
        "{err:?}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert!(!lines.is_empty(), "no progress lines:\n{err}");
    let mut previous = 0;
    for line in &lines {
        let (_, frames, total, _) =
            parse_progress_line(line).unwrap_or_else(|| panic!("not a progress line: `{line}`"));
        assert!(frames >= previous, "{err}");
        assert!(total.is_none_or(|t| t >= frames), "{line}");
        previous = frames;
    }
    assert!(
        lines
            .iter()
            .any(|l| parse_progress_line(l).unwrap().2.is_some()),
        "a file source knows its total:\n{err}"
    );
    assert!(
        stdout(&out).contains("795 frames"),
        "the summary counts every frame:\n{}",
        stdout(&out)
    );
}

#[test]
fn run_on_a_terminal_draws_a_bar_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let topology = decode_only_topology(dir.path());
    // `script` gives the command a pseudo-terminal and copies what it writes.
    let command = format!(
        "{} run --progress 100ms {}",
        env!("CARGO_BIN_EXE_vidmesh"),
        topology.display()
    );
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .current_dir(repo_root())
        .env("COLUMNS", "72")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: util-linux `script` does not run ({e})");
            return;
        }
    };
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let draws: Vec<&str> = text
        .split('\r')
        .filter(|d| d.starts_with('[') && d.contains("fps"))
        .collect();
    assert!(draws.len() >= 2, "the bar is redrawn in place:\n{text:?}");
    for draw in &draws {
        let bar = draw.split("\x1b[K").next().unwrap();
        assert!(bar.chars().count() <= 71, "wider than COLUMNS - 1: {bar:?}");
        assert!(
            bar.starts_with('[') && bar.chars().nth(21) == Some(']'),
            "a 20-cell bar: {bar:?}"
        );
    }
    let last = draws.last().unwrap();
    assert!(
        last.starts_with("[####################] 795/795 (100%)") && last.contains(" fps in "),
        "the final bar is full: {last:?}"
    );
    assert!(
        text.contains("\x1b[K\r\n") || text.contains("\x1b[K\n"),
        "a newline ends the bar: {text:?}"
    );
    assert!(
        !text.contains("] frames "),
        "no plain lines on a terminal: {text:?}"
    );
}

#[test]
fn run_with_a_live_source_on_a_terminal_draws_a_source_table() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    make_clip(&clip, 90, 320, 240, false);
    let server = RtspServer::serve(&clip, None);
    let topology = dir.path().join("live.toml");
    std::fs::write(
        &topology,
        format!(
            r#"
[pipeline]
name = "live"
links = [["sources", "mux"]]

[[source]]
id = "gate-cam"
uri = "{}"
rtsp_transport = "tcp"

[stage]
mux = {{ kind = "mux" }}
"#,
            server.url
        ),
    )
    .unwrap();
    let command = format!(
        "{} run --progress 200ms {}",
        env!("CARGO_BIN_EXE_vidmesh"),
        topology.display()
    );
    let out = match Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("COLUMNS", "90")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: util-linux `script` does not run ({e})");
            return;
        }
    };
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let tables = text
        .lines()
        .filter(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.len() == 6 && cells[2..] == ["source", "frames", "fps", "status"]
        })
        .count();
    assert!(tables >= 2, "a table per interval:\n{text}");
    // Every table after the first is drawn over the one before (cursor up 3 lines, clear).
    assert_eq!(
        text.matches("\x1b[3A\x1b[J").count(),
        tables - 1,
        "{text:?}"
    );
    let row = |status: &str| {
        text.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&"gate-cam") && cells.last() == Some(&status)
        })
    };
    assert!(row("running"), "a running row:\n{text}");
    assert!(
        row("ended"),
        "the last table says the source ended:\n{text}"
    );
    assert!(text.contains("stages: mux "), "{text}");
    assert!(
        !text.contains("] frames "),
        "no plain lines on a terminal:\n{text}"
    );
}
