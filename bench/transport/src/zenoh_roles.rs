//! Bare zenoh producer and consumer, as a competent user would write them without vidmesh:
//! one publisher, one subscriber (zenoh's default FIFO channel), reliable, blocking congestion
//! control. The payload starts with a 16-byte header (frame number, send time).
//!
//! Shared by the TCP build (`transport-bench`) and the shared-memory build (`zenoh-shm-peer`);
//! only how a payload is made differs, so the producer takes that as a closure.

use std::io::Read;
use std::time::{Duration, Instant};

use zenoh::bytes::ZBytes;
use zenoh::qos::CongestionControl;
use zenoh::Wait;

use crate::common::{
    now_ns, read_header, source_byte, wait_for_stdin_eof, Recorder, RoleArgs, Schedule,
};

/// The one key expression of the benchmark.
pub const KEY: &str = "bench/transport/frames";

/// Peer mode, as vidmesh configures its sessions: the consumer listens on `endpoint`, the
/// producer connects to it; multicast scouting off.
pub fn config(listen: Option<&str>, connect: Option<&str>) -> Result<zenoh::Config, String> {
    let mut c = zenoh::Config::default();
    let list = |e: Option<&str>| match e {
        Some(e) => format!("[{e:?}]"),
        None => "[]".to_string(),
    };
    let listen = list(Some(listen.unwrap_or("tcp/127.0.0.1:0")));
    for (key, value) in [
        ("mode", "\"peer\"".to_string()),
        ("listen/endpoints", listen),
        ("connect/endpoints", list(connect)),
        ("scouting/multicast/enabled", "false".to_string()),
    ] {
        c.insert_json5(key, &value)
            .map_err(|e| format!("zenoh config {key} = {value}: {e}"))?;
    }
    Ok(c)
}

/// Receives until every measured message has come (or the timeout), then prints the result.
pub fn consume(args: &RoleArgs, config: zenoh::Config) -> Result<(), String> {
    let session = zenoh::open(config).wait().map_err(|e| e.to_string())?;
    let subscriber = session
        .declare_subscriber(KEY)
        .wait()
        .map_err(|e| e.to_string())?;
    println!("READY");
    let expected_len = args.payload.bytes();
    let mut recorder = Recorder::new(args);
    let deadline = Instant::now() + args.timeout;
    while !recorder.done() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(sample) = subscriber.recv_timeout(left).map_err(|e| e.to_string())? else {
            eprintln!("zenoh consumer: timed out");
            break;
        };
        let payload = sample.payload();
        let mut header = [0u8; crate::common::HEADER_BYTES];
        let copied = args.payload.is_frame() && args.variant == "copy";
        if payload.len() != expected_len
            || payload.reader().read_exact(&mut header).is_err()
            || (copied
                && [expected_len / 2, expected_len - 1]
                    .iter()
                    .any(|&i| byte_at(payload, i) != Some(source_byte(i))))
        {
            recorder.bad += 1;
            continue;
        }
        let (frame, sent) = read_header(&header).ok_or("short header")?;
        recorder.record(frame, sent);
        // Dropping the sample frees a shared-memory buffer for the producer.
        drop(sample);
    }
    recorder.report(expected_len);
    Ok(())
}

/// The byte at `index` of a payload that may be in several pieces, without gathering them.
fn byte_at(payload: &ZBytes, mut index: usize) -> Option<u8> {
    for slice in payload.slices() {
        if index < slice.len() {
            return Some(slice[index]);
        }
        index -= slice.len();
    }
    None
}

/// Sends `args.total()` messages made by `make(frame, send_ns)`, once the subscriber is known.
pub fn produce(
    args: &RoleArgs,
    config: zenoh::Config,
    mut make: impl FnMut(u64, u64) -> Result<ZBytes, String>,
) -> Result<(), String> {
    let session = zenoh::open(config).wait().map_err(|e| e.to_string())?;
    let publisher = session
        .declare_publisher(KEY)
        .congestion_control(CongestionControl::Block)
        .wait()
        .map_err(|e| e.to_string())?;
    let waited = Instant::now();
    while !publisher
        .matching_status()
        .wait()
        .map_err(|e| e.to_string())?
        .matching()
    {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err("no subscriber after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut schedule = Schedule::new(args);
    while let Some(frame) = schedule.next(|| {}) {
        let sent = now_ns();
        let payload = make(frame, sent)?;
        publisher.put(payload).wait().map_err(|e| e.to_string())?;
    }
    wait_for_stdin_eof();
    Ok(())
}
