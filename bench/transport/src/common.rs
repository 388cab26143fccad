//! What every role of the benchmark shares, whichever transport it drives: payload sizes,
//! the child command line, pacing, and the consumer's measurement.
//!
//! Std only: the bare-zenoh shared-memory peer (`zenoh-shm-peer/`, a separate build) includes
//! this file too, so that both builds measure and report the same way.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// 1920 x 1080 packed RGB.
pub const RGB_1080P_BYTES: usize = 1920 * 1080 * 3;
/// 1920 x 1080 NV12 (Y plane, then interleaved UV at half resolution).
pub const NV12_1080P_BYTES: usize = 1920 * 1080 * 3 / 2;
/// A metadata-only message.
pub const META_BYTES: usize = 256;
/// Bytes at the start of a bare payload: frame number, then send time (ns), little endian.
pub const HEADER_BYTES: usize = 16;

/// What one message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Rgb,
    Nv12,
    Meta,
}

impl Payload {
    pub const ALL: [Payload; 3] = [Payload::Rgb, Payload::Nv12, Payload::Meta];

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "rgb" => Ok(Payload::Rgb),
            "nv12" => Ok(Payload::Nv12),
            "meta" => Ok(Payload::Meta),
            other => Err(format!("unknown payload `{other}` (rgb, nv12, meta)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Payload::Rgb => "rgb",
            Payload::Nv12 => "nv12",
            Payload::Meta => "meta",
        }
    }

    /// Bytes of one message: the frame's pixels, or the whole metadata message.
    pub fn bytes(self) -> usize {
        match self {
            Payload::Rgb => RGB_1080P_BYTES,
            Payload::Nv12 => NV12_1080P_BYTES,
            Payload::Meta => META_BYTES,
        }
    }

    pub fn is_frame(self) -> bool {
        self != Payload::Meta
    }
}

/// The command line of a producer or consumer child (`--key value` pairs).
#[derive(Debug, Clone)]
pub struct RoleArgs {
    pub payload: Payload,
    /// Measured messages (after the warm-up).
    pub count: u64,
    /// Messages sent first and not measured: they let the links settle and fill.
    pub warmup: u64,
    /// Messages per second; 0 = flat out.
    pub rate_hz: f64,
    /// The consumer listens here, the producer connects (`tcp/127.0.0.1:PORT`).
    pub endpoint: String,
    /// `copy`: the producer copies a frame into the transport's buffer each time;
    /// `prefilled`: the frame is already in shared memory (only a header is written).
    pub variant: String,
    /// Frames the shared-memory pool of a bare-zenoh producer holds.
    pub slots: u32,
    /// Credits of a vidmesh link (deliveries outstanding per consumer).
    pub window: u32,
    /// The consumer gives up after this long.
    pub timeout: Duration,
}

impl RoleArgs {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut a = RoleArgs {
            payload: Payload::Rgb,
            count: 600,
            warmup: 20,
            rate_hz: 0.0,
            endpoint: String::new(),
            variant: "copy".into(),
            slots: 8,
            window: 8,
            timeout: Duration::from_secs(120),
        };
        let mut it = args.iter();
        while let Some(key) = it.next() {
            let value = it.next().ok_or_else(|| format!("`{key}` needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{key} {value}: {e}");
            match key.as_str() {
                "--payload" => a.payload = Payload::parse(value)?,
                "--count" => a.count = value.parse().map_err(|e| bad(&e))?,
                "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
                "--rate" => a.rate_hz = value.parse().map_err(|e| bad(&e))?,
                "--endpoint" => a.endpoint = value.clone(),
                "--variant" => a.variant = value.clone(),
                "--slots" => a.slots = value.parse().map_err(|e| bad(&e))?,
                "--window" => a.window = value.parse().map_err(|e| bad(&e))?,
                "--timeout-s" => {
                    a.timeout = Duration::from_secs(value.parse().map_err(|e| bad(&e))?)
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        if a.count < 2 {
            return Err("--count must be at least 2".into());
        }
        Ok(a)
    }

    /// The arguments that reproduce `self` (for the parent to pass on).
    pub fn to_args(&self) -> Vec<String> {
        [
            ("--payload", self.payload.name().to_string()),
            ("--count", self.count.to_string()),
            ("--warmup", self.warmup.to_string()),
            ("--rate", self.rate_hz.to_string()),
            ("--endpoint", self.endpoint.clone()),
            ("--variant", self.variant.clone()),
            ("--slots", self.slots.to_string()),
            ("--window", self.window.to_string()),
            ("--timeout-s", self.timeout.as_secs().to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }

    /// Warm-up plus measured messages.
    pub fn total(&self) -> u64 {
        self.warmup + self.count
    }
}

/// Wall-clock time, ns since the Unix epoch: both processes read the same host clock.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Waits until each message's turn at a fixed rate (or not at all, flat out). A late message
/// goes at once; the schedule does not slip.
struct Pacer {
    start: Instant,
    period: Option<Duration>,
    next: u32,
}

impl Pacer {
    fn new(rate_hz: f64) -> Self {
        Self {
            start: Instant::now(),
            period: (rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / rate_hz)),
            next: 0,
        }
    }

    fn wait(&mut self) {
        if let Some(period) = self.period {
            let due = self.start + period * self.next;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.next += 1;
    }
}

/// Pause between the warm-up and the measured messages, after the producer's own drain.
const SETTLE: Duration = Duration::from_millis(200);

/// The producer's message numbers, when each is due: the warm-up, a pause in which the
/// links drain (so that no measured message waits behind warm-up ones), the measured ones.
pub struct Schedule {
    rate_hz: f64,
    warmup: u64,
    total: u64,
    next: u64,
    pacer: Pacer,
}

impl Schedule {
    pub fn new(args: &RoleArgs) -> Self {
        Self {
            rate_hz: args.rate_hz,
            warmup: args.warmup,
            total: args.total(),
            next: 0,
            pacer: Pacer::new(args.rate_hz),
        }
    }

    /// The next message number once it is due, `None` after the last. Before the first
    /// measured message, runs `drain` (which waits until what was sent is consumed, where
    /// the transport can tell), pauses, and restarts the pacing.
    pub fn next(&mut self, drain: impl FnOnce()) -> Option<u64> {
        if self.next >= self.total {
            return None;
        }
        if self.next == self.warmup && self.warmup > 0 {
            drain();
            std::thread::sleep(SETTLE);
            self.pacer = Pacer::new(self.rate_hz);
        }
        self.pacer.wait();
        self.next += 1;
        Some(self.next - 1)
    }
}

/// A frame-sized buffer whose bytes are not all the same (so nothing can cheat by pattern).
pub fn source_frame(len: usize) -> Vec<u8> {
    (0..len).map(source_byte).collect()
}

/// Byte `i` of [`source_frame`], for consumers to check what arrived.
pub fn source_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) >> 3) as u8
}

/// Writes the bare-payload header.
pub fn write_header(buf: &mut [u8], frame: u64, send_ns: u64) {
    buf[0..8].copy_from_slice(&frame.to_le_bytes());
    buf[8..16].copy_from_slice(&send_ns.to_le_bytes());
}

/// Reads the bare-payload header: (frame number, send time ns).
pub fn read_header(buf: &[u8]) -> Option<(u64, u64)> {
    let frame = u64::from_le_bytes(buf.get(0..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((frame, sent))
}

/// The consumer's side of a measurement: one-way latency of every measured message and the
/// span over which they arrived.
pub struct Recorder {
    warmup: u64,
    expected: u64,
    latencies_ns: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Messages of the wrong size or with an unreadable header.
    pub bad: u64,
    /// Warm-up messages seen.
    pub warm: u64,
}

impl Recorder {
    pub fn new(args: &RoleArgs) -> Self {
        Self {
            warmup: args.warmup,
            expected: args.count,
            latencies_ns: Vec::with_capacity(args.count as usize),
            first: None,
            last: None,
            bad: 0,
            warm: 0,
        }
    }

    /// Records a message sent at `sent_ns`; true once every measured message has come.
    pub fn record(&mut self, frame: u64, sent_ns: u64) -> bool {
        let now_ns = now_ns();
        let now = Instant::now();
        if frame < self.warmup {
            self.warm += 1;
            return false;
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.latencies_ns.push(now_ns.saturating_sub(sent_ns));
        self.done()
    }

    pub fn done(&self) -> bool {
        self.latencies_ns.len() as u64 >= self.expected
    }

    /// The result as one JSON line on stdout, `RESULT {...}`, which the parent reads.
    pub fn report(mut self, bytes_per_message: usize) {
        let received = self.latencies_ns.len();
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        // Messages after the first, over the time from the first to the last arrival.
        let rate = if received > 1 && span > 0.0 {
            (received - 1) as f64 / span
        } else {
            0.0
        };
        self.latencies_ns.sort_unstable();
        let pct = |p: f64| -> f64 {
            if received == 0 {
                return 0.0;
            }
            let i = ((received as f64 - 1.0) * p).round() as usize;
            self.latencies_ns[i] as f64 / 1e3
        };
        println!(
            "RESULT {{\"received\":{received},\"expected\":{},\"bad\":{},\"span_s\":{span:.6},\
             \"msgs_per_s\":{rate:.3},\"mb_per_s\":{:.3},\"p50_us\":{:.1},\"p99_us\":{:.1},\
             \"max_us\":{:.1},\"bytes_per_msg\":{bytes_per_message}}}",
            self.expected,
            self.bad,
            rate * bytes_per_message as f64 / 1e6,
            pct(0.5),
            pct(0.99),
            pct(1.0),
        );
    }
}

/// Producers stay up (their memory and their links must outlive the consumer's reading) until
/// the parent closes their stdin.
pub fn wait_for_stdin_eof() {
    use std::io::Read;
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}
