//! The parent: runs every (payload, mode, transport) cell as fresh child processes, collects
//! their results, prints the table and the vidmesh/peer ratios, writes the JSON.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Payload, RoleArgs};
use crate::peers::{self, Transport};

/// Flat out, or paced at a fixed rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Flat,
    Paced,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Flat => "flat-out",
            Mode::Paced => "100 Hz",
        }
    }
}

/// What the parent was asked to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub transports: Vec<Transport>,
    pub payloads: Vec<Payload>,
    pub modes: Vec<Mode>,
    /// 1080p frames measured flat out.
    pub frames: u64,
    /// Messages measured when paced.
    pub paced_frames: u64,
    /// Metadata messages measured flat out.
    pub meta_messages: u64,
    pub rate_hz: f64,
    pub repeat: u32,
    pub slots: u32,
    /// Credits of the vidmesh process links.
    pub window: u32,
    pub json: Option<PathBuf>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            transports: Transport::ALL.to_vec(),
            payloads: Payload::ALL.to_vec(),
            modes: vec![Mode::Flat, Mode::Paced],
            frames: 600,
            paced_frames: 300,
            meta_messages: 30_000,
            rate_hz: 100.0,
            repeat: 1,
            slots: 8,
            window: 8,
            json: None,
        }
    }
}

impl Plan {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut plan = Plan::default();
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let value = it.next().ok_or_else(|| format!("`{key}` needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{key} {value}: {e}");
            match key.as_str() {
                "--transports" => {
                    plan.transports = value
                        .split(',')
                        .map(Transport::parse)
                        .collect::<Result<_, _>>()?
                }
                "--payloads" => {
                    plan.payloads = value
                        .split(',')
                        .map(Payload::parse)
                        .collect::<Result<_, _>>()?
                }
                "--mode" => {
                    plan.modes = match value.as_str() {
                        "flat" => vec![Mode::Flat],
                        "paced" => vec![Mode::Paced],
                        "both" => vec![Mode::Flat, Mode::Paced],
                        other => return Err(format!("--mode {other}: flat, paced or both")),
                    }
                }
                "--frames" => plan.frames = value.parse().map_err(|e| bad(&e))?,
                "--paced-frames" => plan.paced_frames = value.parse().map_err(|e| bad(&e))?,
                "--meta-messages" => plan.meta_messages = value.parse().map_err(|e| bad(&e))?,
                "--rate" => plan.rate_hz = value.parse().map_err(|e| bad(&e))?,
                "--repeat" => plan.repeat = value.parse().map_err(|e| bad(&e))?,
                "--slots" => plan.slots = value.parse().map_err(|e| bad(&e))?,
                "--window" => plan.window = value.parse().map_err(|e| bad(&e))?,
                "--json" => plan.json = Some(PathBuf::from(value)),
                other => return Err(format!("unknown option `{other}` (see --help)")),
            }
        }
        Ok(plan)
    }

    fn role_args(&self, payload: Payload, mode: Mode, transport: Transport) -> RoleArgs {
        let (count, warmup, rate_hz) = match (mode, payload) {
            (Mode::Flat, Payload::Meta) => (self.meta_messages, 1_000, 0.0),
            (Mode::Flat, _) => (self.frames, 20, 0.0),
            (Mode::Paced, _) => (self.paced_frames, 20, self.rate_hz),
        };
        RoleArgs {
            payload,
            count,
            warmup,
            rate_hz,
            endpoint: String::new(),
            variant: if transport.prefilled() {
                "prefilled".into()
            } else {
                "copy".into()
            },
            slots: self.slots,
            window: self.window,
            timeout: Duration::from_secs(120),
        }
    }
}

/// One measured cell.
struct Row {
    repeat: u32,
    payload: Payload,
    mode: Mode,
    transport: Transport,
    outcome: Result<Value, String>,
}

/// A child's stdout lines, read on a thread so that the parent can wait with a timeout.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(
    lines: &mpsc::Receiver<String>,
    prefix: &str,
    until: Instant,
) -> Result<String, String> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(line) => eprintln!("  child: {line}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no `{prefix}` line in time"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("the child exited before its `{prefix}` line"))
            }
        }
    }
}

fn stop(mut child: Child, grace: Duration) {
    drop(child.stdin.take());
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, String> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Runs one cell: the consumer first (it listens), the producer once the consumer is ready.
fn run_cell(transport: Transport, mut args: RoleArgs) -> Result<Value, String> {
    args.endpoint = format!("tcp/127.0.0.1:{}", free_port()?);
    let budget = Instant::now() + args.timeout + Duration::from_secs(30);
    let roles = peers::commands(transport, &args)?;
    let mut consumer = spawn(roles.consumer, false)?;
    let lines = lines_of(&mut consumer);
    let producer = match roles.producer {
        Some(command) => {
            if let Err(e) = wait_for(&lines, "READY", Instant::now() + Duration::from_secs(30)) {
                stop(consumer, Duration::ZERO);
                return Err(e);
            }
            Some(spawn(command, true)?)
        }
        None => None,
    };
    let result = wait_for(&lines, "RESULT ", budget);
    stop(consumer, Duration::from_secs(5));
    if let Some(producer) = producer {
        stop(producer, Duration::from_secs(5));
    }
    let line = result?;
    serde_json::from_str(&line["RESULT ".len()..]).map_err(|e| format!("{e}: {line}"))
}

fn spawn(mut command: Command, stdin: bool) -> Result<Child, String> {
    command
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdin { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::inherit());
    command
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel.trim(),
    })
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Median of `key` over the repeats of one cell that succeeded.
fn cell(
    rows: &[Row],
    payload: Payload,
    mode: Mode,
    transport: Transport,
    key: &str,
) -> Option<f64> {
    median(
        rows.iter()
            .filter(|r| r.payload == payload && r.mode == mode && r.transport == transport)
            .filter_map(|r| r.outcome.as_ref().ok())
            .filter(|v| f(v, "received") == f(v, "expected"))
            .filter_map(|v| f(v, key))
            .collect(),
    )
}

fn print_table(plan: &Plan, rows: &[Row]) {
    println!();
    println!(
        "{:<5} {:<9} {:<22} {:>10} {:>9} {:>10} {:>10} {:>10}",
        "data", "mode", "transport", "msgs/s", "MB/s", "p50 µs", "p99 µs", "max µs"
    );
    for &payload in &plan.payloads {
        for &mode in &plan.modes {
            for &transport in &plan.transports {
                if !transport.runs(payload) {
                    continue;
                }
                let get = |k| cell(rows, payload, mode, transport, k);
                let failed = rows
                    .iter()
                    .filter(|r| r.payload == payload && r.mode == mode && r.transport == transport)
                    .filter_map(|r| match &r.outcome {
                        Err(e) => Some(e.clone()),
                        Ok(v) if f(v, "received") != f(v, "expected") => Some(format!(
                            "received {} of {}",
                            f(v, "received").unwrap_or(0.0),
                            f(v, "expected").unwrap_or(0.0)
                        )),
                        Ok(_) => None,
                    })
                    .collect::<Vec<_>>();
                let num = |x: Option<f64>, decimals: usize| match x {
                    Some(x) => format!("{x:.decimals$}"),
                    None => "-".into(),
                };
                println!(
                    "{:<5} {:<9} {:<22} {:>10} {:>9} {:>10} {:>10} {:>10}{}",
                    payload.name(),
                    mode.name(),
                    transport.name(),
                    num(get("msgs_per_s"), 0),
                    num(get("mb_per_s"), 0),
                    num(get("p50_us"), 0),
                    num(get("p99_us"), 0),
                    num(get("max_us"), 0),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!("  FAILED: {}", failed.join("; "))
                    }
                );
            }
        }
    }
}

/// vidmesh against its peer, per payload and mode: throughput (higher is better for vidmesh)
/// and p99 latency (lower is better).
fn print_ratios(plan: &Plan, rows: &[Row]) {
    println!();
    println!("vidmesh / peer (msgs/s ratio, p99 ratio):");
    for &(ours, theirs) in peers::PAIRS {
        if !plan.transports.contains(&ours) || !plan.transports.contains(&theirs) {
            continue;
        }
        for &payload in &plan.payloads {
            if !ours.runs(payload) || !theirs.runs(payload) {
                continue;
            }
            for &mode in &plan.modes {
                let get = |t, k| cell(rows, payload, mode, t, k);
                let ratio = |k| match (get(ours, k), get(theirs, k)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                    _ => "-".into(),
                };
                println!(
                    "  {:<22} / {:<20} {:<5} {:<9} throughput {:>6}   p99 {:>6}",
                    ours.name(),
                    theirs.name(),
                    payload.name(),
                    mode.name(),
                    ratio("msgs_per_s"),
                    ratio("p99_us"),
                );
            }
        }
    }
}

/// The acceptance targets of issue 8, checked against this run.
fn print_targets(plan: &Plan, rows: &[Row]) -> Value {
    let get = |p, m, t, k| cell(rows, p, m, t, k);
    let mut checks = Vec::new();
    let mut check = |name: String, value: Option<f64>, target: String, pass: Option<bool>| {
        let verdict = match pass {
            Some(true) => "meets",
            Some(false) => "MISSES",
            None => "not measured",
        };
        let shown = value.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!("  {verdict:<12} {name}: {shown} (target {target})");
        checks.push(json!({"check": name, "value": value, "target": target, "verdict": verdict}));
    };
    println!();
    println!("targets:");
    let modes = &plan.modes;
    if modes.contains(&Mode::Flat) {
        for (ours, theirs) in [
            (Transport::VidmeshShm, Transport::ZenohShm),
            (Transport::VidmeshShmPrefilled, Transport::ZenohShmPrefilled),
        ] {
            for payload in [Payload::Rgb, Payload::Nv12] {
                let r = get(payload, Mode::Flat, ours, "msgs_per_s")
                    .zip(get(payload, Mode::Flat, theirs, "msgs_per_s"))
                    .map(|(a, b)| a / b);
                check(
                    format!(
                        "{} / {} {} flat-out throughput",
                        ours.name(),
                        theirs.name(),
                        payload.name()
                    ),
                    r,
                    ">= 1.00".into(),
                    r.map(|r| r >= 1.0),
                );
            }
        }
        for payload in [Payload::Rgb, Payload::Nv12] {
            let r = get(payload, Mode::Flat, Transport::VidmeshTcp, "msgs_per_s")
                .zip(get(payload, Mode::Flat, Transport::ZenohTcp, "msgs_per_s"))
                .map(|(a, b)| a / b);
            check(
                format!(
                    "vidmesh-tcp / zenoh-tcp {} flat-out throughput",
                    payload.name()
                ),
                r,
                ">= 0.90".into(),
                r.map(|r| r >= 0.9),
            );
        }
        for t in [Transport::VidmeshShm, Transport::VidmeshTcp] {
            let v = get(Payload::Meta, Mode::Flat, t, "msgs_per_s");
            check(
                format!("{} metadata-only msgs/s", t.name()),
                v,
                ">= 100000".into(),
                v.map(|v| v >= 100_000.0),
            );
        }
    }
    if modes.contains(&Mode::Paced) {
        for t in [Transport::VidmeshShm, Transport::VidmeshShmPrefilled] {
            for payload in [Payload::Rgb, Payload::Nv12] {
                let v = get(payload, Mode::Paced, t, "p99_us");
                check(
                    format!(
                        "{} {} p99 at {} Hz, µs",
                        t.name(),
                        payload.name(),
                        plan.rate_hz
                    ),
                    v,
                    "< 250".into(),
                    v.map(|v| v < 250.0),
                );
            }
        }
    }
    Value::Array(checks)
}

/// Runs the whole plan; returns whether every cell succeeded.
pub fn run(plan: &Plan, command_line: &str) -> Result<bool, String> {
    // Transports whose peer is not built here (dora) are skipped, with the reason.
    let mut skipped = Vec::new();
    let mut plan = plan.clone();
    plan.transports.retain(|&t| match peers::unavailable(t) {
        Some(why) => {
            println!("skipping {}: {why}", t.name());
            skipped.push(json!({"transport": t.name(), "reason": why}));
            false
        }
        None => true,
    });
    let plan = &plan;
    let started = crate::common::now_ns();
    let load_before = load_average();
    let copy_cost: Vec<Value> = [Payload::Rgb, Payload::Nv12]
        .into_iter()
        .filter(|p| plan.payloads.contains(p))
        .map(|p| {
            let us = crate::vidmesh_roles::slot_copy_cost(p, 100);
            json!({"payload": p.name(), "us_per_frame": us.as_ref().ok(),
                   "gb_per_s": us.as_ref().ok().map(|us| p.bytes() as f64 / us / 1e3)})
        })
        .collect();
    println!(
        "transport-bench: {} cpus, load {load_before}; copying a frame into a vidmesh shm slot: {}",
        machine()["cpus"],
        copy_cost
            .iter()
            .map(|c| format!(
                "{} {:.0} µs ({:.1} GB/s)",
                c["payload"].as_str().unwrap_or("?"),
                c["us_per_frame"].as_f64().unwrap_or(0.0),
                c["gb_per_s"].as_f64().unwrap_or(0.0)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rows = Vec::new();
    for repeat in 0..plan.repeat {
        for &payload in &plan.payloads {
            for &mode in &plan.modes {
                // Alternate the order on every repeat so a change in the machine's load hits
                // every transport alike.
                let mut order: Vec<Transport> = plan
                    .transports
                    .iter()
                    .copied()
                    .filter(|t| t.runs(payload))
                    .collect();
                if repeat % 2 == 1 {
                    order.reverse();
                }
                for transport in order {
                    let args = plan.role_args(payload, mode, transport);
                    eprint!(
                        "[{}/{}] {:<5} {:<9} {:<22} ",
                        repeat + 1,
                        plan.repeat,
                        payload.name(),
                        mode.name(),
                        transport.name()
                    );
                    let _ = std::io::stderr().flush();
                    let outcome = run_cell(transport, args);
                    match &outcome {
                        Ok(v) => eprintln!(
                            "{:>9.0} msgs/s  p50 {:>7.0} µs  p99 {:>7.0} µs  ({} of {})",
                            f(v, "msgs_per_s").unwrap_or(0.0),
                            f(v, "p50_us").unwrap_or(0.0),
                            f(v, "p99_us").unwrap_or(0.0),
                            f(v, "received").unwrap_or(0.0),
                            f(v, "expected").unwrap_or(0.0),
                        ),
                        Err(e) => eprintln!("FAILED: {e}"),
                    }
                    rows.push(Row {
                        repeat,
                        payload,
                        mode,
                        transport,
                        outcome,
                    });
                }
            }
        }
    }
    let load_after = load_average();
    print_table(plan, &rows);
    print_ratios(plan, &rows);
    let targets = print_targets(plan, &rows);
    println!();
    println!(
        "load average before {load_before}, after {load_after}; MB = 10^6 bytes; latency is \
         one way, send to receive, on the host clock"
    );
    let all_ok = rows.iter().all(|r| {
        r.outcome
            .as_ref()
            .is_ok_and(|v| f(v, "received") == f(v, "expected") && f(v, "bad") == Some(0.0))
    });
    if let Some(path) = &plan.json {
        let results: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "repeat": r.repeat,
                    "payload": r.payload.name(),
                    "mode": r.mode.name(),
                    "transport": r.transport.name(),
                    "result": r.outcome.as_ref().ok(),
                    "error": r.outcome.as_ref().err(),
                })
            })
            .collect();
        let doc = json!({
            "command": command_line,
            "started_unix_ns": started,
            "machine": machine(),
            "load_before": load_before,
            "load_after": load_after,
            "copy_into_slot": copy_cost,
            "results": results,
            "targets": targets,
            "skipped": skipped,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(all_ok)
}
