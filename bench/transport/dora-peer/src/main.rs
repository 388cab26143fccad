//! `dora-peer`: the dora-rs peer of `transport-bench`. One binary, three roles:
//!
//! * `cell` (started by the parent, `transport-bench run`): writes a dataflow of two nodes,
//!   both this binary, into a fresh temporary directory, runs it with the dora CLI
//!   (`dora run`, which starts dora's daemon in-process; the CLI is `$DORA_CLI`), and
//!   prints the consumer node's `RESULT` line on its own stdout, where the parent reads it.
//! * `produce` (a dora node): sends the messages on its output `frames` with
//!   `send_output_raw`, which hands the closure a sample dora allocated in its zenoh
//!   shared-memory pool for messages of 4 KiB and more (a heap buffer below that) and moves
//!   it into zenoh's `put` without a further copy: the frame is written straight into the
//!   memory the consumer maps. `--variant copy` copies a whole source frame into every
//!   sample, `--variant prefilled` writes only the 16-byte header (the frame is taken to be
//!   in the sample already, as a capture writing into it would leave it).
//! * `consume` (a dora node): receives on its input `frames`, measures with the benchmark's
//!   `Recorder`, prints `RESULT`, then tells the producer on its output `done` that it may
//!   exit (the producer keeps its pool alive until then, as the other producers do until
//!   their stdin closes).
//!
//! A separate build: dora brings its own zenoh (with shared memory), arrow and tokio; none of
//! it may reach vidmesh's build. Options are those of `transport-bench`'s roles.

#[path = "../../src/common.rs"]
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    now_ns, read_header, source_byte, source_frame, write_header, Recorder, RoleArgs, Schedule,
    HEADER_BYTES,
};
use dora_node_api::dora_core::config::DataId;
use dora_node_api::serde_json::{self, Value};
use dora_node_api::{DoraNode, Event, MetadataParameters};

/// The producer's output and the consumer's input.
const FRAMES: &str = "frames";
/// The consumer's output (and the producer's input): "finished, you may exit".
const DONE: &str = "done";
/// A send that took longer than this is counted as slow.
const SLOW_SEND: Duration = Duration::from_millis(20);
/// A `tracing` filter (`warn`, `dora_node_api=debug`): the nodes then print dora's logs.
const LOG_VAR: &str = "DORA_PEER_LOG";
/// Once measured messages have started to arrive, the consumer stops after this long without
/// one (a message dora dropped would otherwise hold it until `--timeout-s`).
const IDLE: Duration = Duration::from_secs(3);

/// The dataflow of one cell. The producer's pool holds `--slots` messages (as vidmesh's slot
/// pool and the bare-zenoh pool do); the consumer's queue holds every message of the cell, so
/// that it never drops one (dora's default is 10, dropping the oldest).
fn dataflow_yaml(exe: &Path, args: &RoleArgs) -> String {
    // `send_output_raw` frames the bytes as an Arrow IPC stream of one `UInt8` array: a
    // validity bitmap (one bit a byte, all set) before them, and a few hundred bytes of
    // headers; rounded up to a page, plus slack.
    let len = args.payload.bytes();
    let sample_bytes = (len + len.div_ceil(8)).next_multiple_of(4096) + 64 * 1024;
    let pool_bytes = args.slots as usize * sample_bytes + (1 << 20);
    let role_args = args.to_args().join(" ");
    let exe = exe.display();
    format!(
        "nodes:
  - id: producer
    path: {exe}
    args: produce {role_args}
    shared_memory_pool_size: {pool_bytes}
    outputs:
      - {FRAMES}
    inputs:
      {DONE}: consumer/{DONE}
  - id: consumer
    path: {exe}
    args: consume {role_args}
    inputs:
      {FRAMES}:
        source: producer/{FRAMES}
        queue_size: {queue}
    outputs:
      - {DONE}
",
        queue = args.total().max(10),
    )
}

/// The producer node.
fn produce(args: &RoleArgs) -> Result<(), String> {
    let (mut node, mut events) =
        DoraNode::init_from_env().map_err(|e| format!("dora node init: {e}"))?;
    let output = DataId::from(FRAMES.to_string());
    let len = args.payload.bytes();
    // Metadata messages are copied whole, as the other producers send theirs; frames are
    // copied unless prefilled.
    let copy = !args.payload.is_frame() || args.variant == "copy";
    let source = source_frame(len);
    let mut schedule = Schedule::new(args);
    // How long the sends took (`send_output_raw` returns once the message is handed to zenoh
    // or to dora's daemon), reported on stderr.
    let (mut sends, mut slow, mut slowest) = (0u64, 0u64, Duration::ZERO);
    // The drain before the measured messages: dora's data plane does not tell when what was
    // sent has been consumed (as bare zenoh's does not); the schedule's pause lets it drain.
    while let Some(frame) = schedule.next(|| {}) {
        let sent = now_ns();
        let started = Instant::now();
        node.send_output_raw(
            output.clone(),
            MetadataParameters::default(),
            len,
            |sample| {
                if copy {
                    sample.copy_from_slice(&source);
                }
                write_header(&mut sample[..HEADER_BYTES], frame, sent);
            },
        )
        .map_err(|e| format!("send_output_raw of message {frame}: {e}"))?;
        let took = started.elapsed();
        sends += 1;
        slow += u64::from(took > SLOW_SEND);
        slowest = slowest.max(took);
    }
    eprintln!(
        "dora producer: {sends} sends, {slow} of them over {SLOW_SEND:?}, the slowest {slowest:?}"
    );
    // Stay up (with the pool the consumer may still be reading) until the consumer is done.
    while let Some(event) = events.recv() {
        match event {
            Event::Input { id, .. } if id.as_str() == DONE => break,
            Event::InputClosed { .. } | Event::Stop(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// The consumer node.
fn consume(args: &RoleArgs) -> Result<(), String> {
    let (mut node, mut events) =
        DoraNode::init_from_env().map_err(|e| format!("dora node init: {e}"))?;
    let expected_len = args.payload.bytes();
    let copied = args.payload.is_frame() && args.variant == "copy";
    let mut recorder = Recorder::new(args);
    let deadline = Instant::now() + args.timeout;
    let mut last_arrival: Option<Instant> = None;
    let mut other_events = 0u64;
    while !recorder.done() {
        let now = Instant::now();
        let until = match last_arrival {
            Some(t) => (t + IDLE).min(deadline),
            None => deadline,
        };
        if now >= until {
            eprintln!(
                "dora consumer: no message for {:?} (or past the timeout); stopping",
                now - last_arrival.unwrap_or(now)
            );
            break;
        }
        let Some(event) = events.recv_timeout(until - now) else {
            break;
        };
        match event {
            Event::Input { id, data, .. } if id.as_str() == FRAMES => {
                last_arrival = Some(Instant::now());
                let bytes: &[u8] = match (&data).try_into() {
                    Ok(b) => b,
                    Err(_) => {
                        recorder.bad += 1;
                        continue;
                    }
                };
                if bytes.len() != expected_len
                    || (copied
                        && [expected_len / 2, expected_len - 1]
                            .iter()
                            .any(|&i| bytes[i] != source_byte(i)))
                {
                    recorder.bad += 1;
                    continue;
                }
                let (frame, sent) = read_header(bytes).ok_or("short header")?;
                recorder.record(frame, sent);
                // Dropping the sample releases the producer's shared-memory buffer.
                drop(data);
            }
            // A timeout of `recv_timeout` (checked at the top of the loop), or an error.
            Event::Error(e) => {
                if Instant::now() < until {
                    eprintln!("dora consumer: event error: {e}");
                }
            }
            Event::Stop(_) => break,
            _ => other_events += 1,
        }
    }
    let dropped: u64 = events.drain_drop_counts().values().sum();
    if dropped > 0 || other_events > 0 {
        eprintln!("dora consumer: dora dropped {dropped} messages; {other_events} other events");
    }
    recorder.report(expected_len);
    let _ = std::io::stdout().flush();
    node.send_output(
        DataId::from(DONE.to_string()),
        MetadataParameters::default(),
        1u8,
    )
    .map_err(|e| format!("send `{DONE}`: {e}"))?;
    Ok(())
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!(
            "vidmesh-dora-cell-{}-{}",
            std::process::id(),
            now_ns()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` to exit for up to `grace`; true if it did.
fn exited_within(child: &mut Child, grace: Duration) -> bool {
    let until = Instant::now() + grace;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends `dora run` as Ctrl-C would (it stops the dataflow's nodes), then for good.
fn stop_dora(child: &mut Child, grace: Duration) {
    if exited_within(child, grace) {
        return;
    }
    eprintln!("dora-peer cell: `dora run` still running; interrupting it");
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the id of a child this process started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
    if !exited_within(child, Duration::from_millis(1500)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether a log line or level is below a warning.
fn chatter(text: &str) -> bool {
    ["INFO", "DEBUG", "TRACE"].iter().any(|l| text.contains(l))
}

/// `text` without its terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... letter`
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of `dora run --log-format json`: the consumer's `RESULT` line goes to stdout,
/// warnings, errors and the nodes' own output to stderr, dora's info and debug logs nowhere.
fn relay(line: &str) -> Option<String> {
    let Ok(log) = serde_json::from_str::<Value>(line) else {
        // dora's own log, not in JSON.
        let line = plain(line);
        if !line.trim().is_empty() && !chatter(&line) {
            eprintln!("  dora: {line}");
        }
        return None;
    };
    let message = log.get("message").and_then(Value::as_str).unwrap_or("");
    if let Some(at) = message.find("RESULT {") {
        return Some(message[at..].trim_end().to_string());
    }
    let level = log.get("level").map(Value::to_string).unwrap_or_default();
    if chatter(&level.to_ascii_uppercase()) {
        return None;
    }
    let node = log.get("node_id").and_then(Value::as_str).unwrap_or("dora");
    eprintln!("  dora {node}: {}", message.trim_end());
    None
}

/// Runs one cell: the dataflow with `dora run`, relaying the consumer's result.
fn cell(args: &RoleArgs) -> Result<(), String> {
    let cli = std::env::var_os("DORA_CLI")
        .map(PathBuf::from)
        .ok_or("DORA_CLI (the dora command line) is not set")?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = TempDir::new()?;
    let dataflow = dir.0.join("dataflow.yml");
    std::fs::write(&dataflow, dataflow_yaml(&exe, args))
        .map_err(|e| format!("{}: {e}", dataflow.display()))?;
    let mut dora = Command::new(&cli)
        .arg("run")
        .arg(&dataflow)
        .args(["--log-format", "json"])
        // dora's own stop, should the nodes not finish; the parent gives up 30 s after it.
        .arg("--stop-after")
        .arg(format!("{}s", args.timeout.as_secs() + 15))
        .current_dir(&dir.0)
        // dora's daemon (in `dora run`) logs info by default.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cli.display()))?;
    let stdout = dora.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(result) = relay(&line) {
                let _ = tx.send(result);
            }
        }
    });
    let budget = args.timeout + Duration::from_secs(20);
    let outcome = match rx.recv_timeout(budget) {
        Ok(result) => {
            println!("{result}");
            let _ = std::io::stdout().flush();
            Ok(())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no RESULT within {budget:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = dora.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!("`dora run` ended ({status}) without a RESULT"))
        }
    };
    // The parent waits 5 s for this process after the result.
    stop_dora(&mut dora, Duration::from_secs(3));
    outcome
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let role = argv.get(1).cloned().unwrap_or_default();
    // dora's node library logs through `tracing`; without a subscriber (the default) nothing.
    if std::env::var_os(LOG_VAR).is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env(LOG_VAR))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let outcome =
        RoleArgs::parse(argv.get(2..).unwrap_or_default()).and_then(|args| match role.as_str() {
            "cell" => cell(&args),
            "produce" => produce(&args),
            "consume" => consume(&args),
            other => Err(format!("unknown role `{other}` (cell, produce, consume)")),
        });
    if let Err(e) = outcome {
        eprintln!("dora-peer {role}: {e}");
        std::process::exit(1);
    }
}
