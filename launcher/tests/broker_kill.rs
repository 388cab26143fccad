//! `vidmesh launch` with events going to a real Redis server: SIGKILL of the broker stage's
//! process mid-run loses no event. What the killed process had accepted is in its spool and
//! the restarted process delivers it first; frames it had not acknowledged come again from
//! upstream, with the same message ids, so a consumer that drops repeats sees every frame once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vidmesh_tests::events::{assert_all_frames_once_in_order, broker_topology};
use vidmesh_tests::redis::RedisServer;
use vidmesh_tests::{make_clip, repo_root};

const FRAMES: usize = 150;

fn pid_of(state: &Path, instance: &str) -> i32 {
    let file = state.join(format!("{instance}-0.pid"));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sigkill_of_a_spooled_broker_stage_loses_no_event() {
    let redis = RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let clip = scratch.path().join("clip.mp4");
    make_clip(&clip, FRAMES as u32, 320, 240, false);
    let broker = format!(
        "uri = \"redis://127.0.0.1:{}/vidmesh-events\", schema = \"minimal\", timeout = \"2s\", \
         spool = \"{}\", drain_timeout = \"60s\"",
        redis.port,
        scratch.path().join("spool").display()
    );
    // Paced by a real-time sink (5 s), so the kill lands mid-stream.
    let path = broker_topology(scratch.path(), &clip, &broker, true);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"events\"", "name = \"mp-broker-kill\"");
    std::fs::write(&path, text).unwrap();

    let state = scratch.path().join("state");
    let child = Command::new(env!("CARGO_BIN_EXE_vidmesh"))
        .current_dir(repo_root())
        .args(["launch", "--progress", "0s", "--state-dir"])
        .arg(&state)
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vidmesh launch starts");
    let started = Instant::now();
    while redis.len("vidmesh-events") < 30 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no events reached Redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = pid_of(&state, "events");
    // SAFETY: signalling the broker stage's process, a child of the launcher we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("events/0 was killed by signal 9; restarting"),
        "the launcher restarts it:\n{log}"
    );
    let entries = redis.entries("vidmesh-events");
    assert!(entries.len() >= FRAMES, "{} entries", entries.len());
    assert_all_frames_once_in_order(&entries, FRAMES);
}
