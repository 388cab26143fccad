//! Prometheus text exposition format 0.0.4: render this process's metrics, serve them on a
//! minimal HTTP endpoint, scrape other processes' endpoints and merge what they export.
//!
//! Every `vidmesh stage` process serves its own `/metrics`; `vidmesh launch` scrapes them all,
//! prints a summary and re-exports the union on one endpoint ([`merge`]). The HTTP side is
//! [`crate::http`]: these endpoints answer whatever connects to them, and neither a stuck client
//! nor a stuck exporter may stall a pipeline.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::http::{self, GetError, HttpServer, Request, Response, ServeError};
use crate::runner::MetricsSnapshot;
use vidmesh_actors::stage::{StageValue, ValueKind};

/// Content type of what [`Exposition::render`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest response [`scrape`] reads; a bigger one is an error, not an allocation.
pub const SCRAPE_LIMIT_BYTES: usize = 16 << 20;

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    /// No `# TYPE` line: what re-exported samples of unknown families become.
    Untyped,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Untyped => "untyped",
        }
    }
}

/// A metric family vidmesh exports: the one place its name, type and help are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: MetricKind, help: &'static str) -> Family {
    Family { name, kind, help }
}

use MetricKind::{Counter, Gauge, Histogram};

/// `{stage,replica}`; the launcher reports 0 for a process it cannot scrape.
pub const UP: Family = family(
    "vidmesh_up",
    Gauge,
    "1 while the process serves its metrics.",
);
pub const FRAMES_TOTAL: Family = family(
    "vidmesh_frames_total",
    Counter,
    "Frames the stage processed.",
);
pub const BATCHES_TOTAL: Family = family(
    "vidmesh_batches_total",
    Counter,
    "Batches the stage processed.",
);
pub const STAGE_BUSY_SECONDS_TOTAL: Family = family(
    "vidmesh_stage_busy_seconds_total",
    Counter,
    "Time the stage spent processing, excluding time blocked on full downstream links.",
);
pub const STAGE_BLOCKED_SECONDS_TOTAL: Family = family(
    "vidmesh_stage_blocked_seconds_total",
    Counter,
    "Time the stage spent blocked on full downstream links (backpressure).",
);
pub const LATENCY_SECONDS: Family = family(
    "vidmesh_latency_seconds",
    Histogram,
    "End-to-end latency from ingest to leaving the stage, one observation per batch.",
);
pub const BATCH_SECONDS: Family = family(
    "vidmesh_batch_seconds",
    Histogram,
    "Processing time per batch, excluding time blocked on full downstream links.",
);
pub const FPS: Family = family(
    "vidmesh_fps",
    Gauge,
    "Frames per second the stage processed recently.",
);
/// `{stage}`: `vidmesh run` only, where every stage reads one in-process inbox (between
/// processes the `LINK_*` families say what waits on each link).
pub const INBOX_DEPTH: Family = family(
    "vidmesh_inbox_depth",
    Gauge,
    "Batches waiting in the stage's inbox.",
);
/// `{stage,replica,link}` for this and the other `LINK_*` families.
pub const LINK_QUEUE_DEPTH: Family = family(
    "vidmesh_link_queue_depth",
    Gauge,
    "Messages queued on the link and not yet taken by the consumer.",
);
pub const LINK_CREDITS: Family = family(
    "vidmesh_link_credits",
    Gauge,
    "Messages the producer may still send on the link before it must wait.",
);
pub const LINK_SENT_TOTAL: Family = family(
    "vidmesh_link_sent_total",
    Counter,
    "Messages sent on the link.",
);
pub const LINK_ACKED_TOTAL: Family = family(
    "vidmesh_link_acked_total",
    Counter,
    "Messages on the link the consumer acknowledged.",
);
pub const LINK_RESENT_TOTAL: Family = family(
    "vidmesh_link_resent_total",
    Counter,
    "Messages sent again on the link, e.g. to a restarted consumer.",
);
pub const LINK_DROPPED_TOTAL: Family = family(
    "vidmesh_link_dropped_total",
    Counter,
    "Messages the link dropped.",
);
pub const LINK_DUPLICATES_TOTAL: Family = family(
    "vidmesh_link_duplicates_total",
    Counter,
    "Duplicate messages received on the link and discarded.",
);
/// `{stage,replica}`, exported by the launcher.
pub const RESTARTS_TOTAL: Family = family(
    "vidmesh_restarts_total",
    Counter,
    "Times the launcher restarted the stage process.",
);

/// Every family vidmesh exports; [`merge`] types re-exported samples from this.
/// `{gpu,name}`, where NVML is present ([`crate::gpu`]); the runtime itself exports these (one
/// per host), so they are not among the [`FAMILIES`] scraped off stage processes.
pub const GPU_UTILIZATION_RATIO: Family = family(
    "vidmesh_gpu_utilization_ratio",
    Gauge,
    "Share of time the GPU was busy over NVML's last sample period (0 to 1).",
);
pub const GPU_MEMORY_USED_BYTES: Family = family(
    "vidmesh_gpu_memory_used_bytes",
    Gauge,
    "GPU memory in use, by every process on the GPU.",
);
pub const GPU_MEMORY_TOTAL_BYTES: Family = family(
    "vidmesh_gpu_memory_total_bytes",
    Gauge,
    "GPU memory installed.",
);

pub const FAMILIES: &[Family] = &[
    UP,
    FRAMES_TOTAL,
    BATCHES_TOTAL,
    STAGE_BUSY_SECONDS_TOTAL,
    STAGE_BLOCKED_SECONDS_TOTAL,
    LATENCY_SECONDS,
    BATCH_SECONDS,
    FPS,
    LINK_QUEUE_DEPTH,
    LINK_CREDITS,
    LINK_SENT_TOTAL,
    LINK_ACKED_TOTAL,
    LINK_RESENT_TOTAL,
    LINK_DROPPED_TOTAL,
    LINK_DUPLICATES_TOTAL,
    RESTARTS_TOTAL,
];

// ---------------------------------------------------------------------------------------------
// Rendering

/// Builds one exposition. Samples may be added in any order: they are grouped by family on
/// [`Exposition::render`], as the format requires.
///
/// The output is always valid: a sample with an invalid metric or label name, a histogram with
/// an `le` label or unordered bounds, a sample whose family was already added with another
/// type, or a series already present is left out and counted in [`Exposition::dropped`].
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<FamilyText>,
    by_name: HashMap<String, usize>,
    /// Every series written, by name and sorted labels.
    series: HashSet<String>,
    dropped: usize,
}

#[derive(Debug)]
struct FamilyText {
    name: String,
    kind: MetricKind,
    help: String,
    samples: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        self.sample(name, MetricKind::Counter, help, name, labels, value);
        self
    }

    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        self.sample(name, MetricKind::Gauge, help, name, labels, value);
        self
    }

    /// A histogram from per-bucket (not cumulative) `counts`: `counts[i]` observations in
    /// `(bounds[i-1], bounds[i]]`, and `counts[bounds.len()]` above the last bound. `bounds`
    /// are finite and increasing; `+Inf` is added here. Missing counts are 0.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> &mut Self {
        let bounds_ok =
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]);
        if !bounds_ok
            || !valid_metric_name(name)
            || !valid_labels(labels)
            || labels.iter().any(|(k, _)| *k == "le")
        {
            self.dropped += 1;
            return self;
        }
        let mut lines = String::new();
        let mut keys = Vec::with_capacity(bounds.len() + 3);
        let bucket = format!("{name}_bucket");
        let total = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        let mut cumulative = 0u64;
        let finite = bounds.iter().enumerate().map(|(i, bound)| {
            cumulative = cumulative.saturating_add(counts.get(i).copied().unwrap_or(0));
            (format_value(*bound), cumulative)
        });
        for (le, n) in finite.chain([("+Inf".to_string(), total)]) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            keys.push(series_key(&bucket, &with_le));
            write_sample(&mut lines, &bucket, &with_le, n as f64);
        }
        let (sum_name, count_name) = (format!("{name}_sum"), format!("{name}_count"));
        keys.push(series_key(&sum_name, labels));
        keys.push(series_key(&count_name, labels));
        write_sample(&mut lines, &sum_name, labels, sum);
        write_sample(&mut lines, &count_name, labels, total as f64);

        if keys.iter().any(|k| self.series.contains(k)) {
            self.dropped += 1;
            return self;
        }
        let Some(i) = self.family_index(name, MetricKind::Histogram, help) else {
            self.dropped += 1;
            return self;
        };
        self.series.extend(keys);
        self.families[i].samples.push_str(&lines);
        self
    }

    /// The standard metrics of one stage replica (see [`render_stage`]).
    pub fn add_stage(
        &mut self,
        stage: &str,
        replica: u32,
        m: &MetricsSnapshot,
        fps: f64,
        links: &[LinkSample],
    ) -> &mut Self {
        let replica = replica.to_string();
        let l: &[(&str, &str)] = &[("stage", stage), ("replica", &replica)];
        self.family(&UP, l, 1.0);
        self.family(&FRAMES_TOTAL, l, m.frames as f64);
        self.family(&BATCHES_TOTAL, l, m.batches as f64);
        self.family(&STAGE_BUSY_SECONDS_TOTAL, l, m.busy_ns as f64 / 1e9);
        self.family(&STAGE_BLOCKED_SECONDS_TOTAL, l, m.blocked_ns as f64 / 1e9);
        for (f, h) in [
            (LATENCY_SECONDS, &m.latency),
            (BATCH_SECONDS, &m.processing),
        ] {
            self.histogram(
                f.name,
                f.help,
                l,
                h.bounds_seconds(),
                &h.counts,
                h.sum_seconds(),
            );
        }
        self.family(&FPS, l, fps);
        for s in links {
            let l: &[(&str, &str)] = &[("stage", stage), ("replica", &replica), ("link", &s.link)];
            self.family(&LINK_QUEUE_DEPTH, l, s.queue_depth as f64);
            self.family(&LINK_CREDITS, l, s.credits as f64);
            self.family(&LINK_SENT_TOTAL, l, s.sent as f64);
            self.family(&LINK_ACKED_TOTAL, l, s.acked as f64);
            self.family(&LINK_RESENT_TOTAL, l, s.resent as f64);
            self.family(&LINK_DROPPED_TOTAL, l, s.dropped as f64);
            self.family(&LINK_DUPLICATES_TOTAL, l, s.duplicates as f64);
        }
        self
    }

    /// A stage kind's own values ([`vidmesh_actors::stage::Stage::values`]) as
    /// `vidmesh_<name>{stage,replica}`.
    pub fn add_values(&mut self, stage: &str, replica: u32, values: &[StageValue]) -> &mut Self {
        let replica = replica.to_string();
        let l: &[(&str, &str)] = &[("stage", stage), ("replica", &replica)];
        for v in values {
            let name = format!("vidmesh_{}", v.name);
            match v.kind {
                ValueKind::Counter => self.counter(&name, v.help, l, v.value),
                ValueKind::Gauge => self.gauge(&name, v.help, l, v.value),
            };
        }
        self
    }

    /// One sample of a known counter or gauge family, e.g. `family(&RESTARTS_TOTAL, ..)`.
    /// A histogram family cannot take a single value and is dropped.
    pub fn family(&mut self, f: &Family, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if f.kind == MetricKind::Histogram {
            self.dropped += 1;
        } else {
            self.sample(f.name, f.kind, f.help, f.name, labels, value);
        }
        self
    }

    /// Samples scraped from `instance`, labelled `instance="..."` unless they carry that label
    /// already. Names of [`FAMILIES`] (and histogram series of them) keep their type and help;
    /// other `vidmesh_*_total` names become counters, anything else untyped.
    pub fn add_scraped(&mut self, instance: &str, samples: &[Sample]) -> &mut Self {
        for s in samples {
            let (family, kind, help) = classify(&s.name);
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if !labels.iter().any(|(k, _)| *k == "instance") {
                labels.push(("instance", instance));
            }
            self.sample(family, kind, help, &s.name, &labels, s.value);
        }
        self
    }

    /// Samples left out so far (see the type's documentation).
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            if !f.help.is_empty() {
                let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            }
            if f.kind != MetricKind::Untyped {
                let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            }
            out.push_str(&f.samples);
        }
        out
    }

    /// Adds one sample line named `sample_name` to family `family`.
    fn sample(
        &mut self,
        family: &str,
        kind: MetricKind,
        help: &str,
        sample_name: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        if !valid_metric_name(sample_name) || !valid_labels(labels) {
            self.dropped += 1;
            return;
        }
        let key = series_key(sample_name, labels);
        if self.series.contains(&key) {
            self.dropped += 1;
            return;
        }
        let Some(i) = self.family_index(family, kind, help) else {
            self.dropped += 1;
            return;
        };
        self.series.insert(key);
        write_sample(&mut self.families[i].samples, sample_name, labels, value);
    }

    /// The family named `name`, created if new; `None` if it exists with another type.
    fn family_index(&mut self, name: &str, kind: MetricKind, help: &str) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return (self.families[i].kind == kind).then_some(i);
        }
        if !valid_metric_name(name) {
            return None;
        }
        self.families.push(FamilyText {
            name: name.to_string(),
            kind,
            help: help.to_string(),
            samples: String::new(),
        });
        self.by_name
            .insert(name.to_string(), self.families.len() - 1);
        Some(self.families.len() - 1)
    }
}

/// The metrics of one link of a stage replica, for [`render_stage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSample {
    pub link: String,
    pub queue_depth: u64,
    pub credits: u64,
    pub sent: u64,
    pub acked: u64,
    pub resent: u64,
    pub dropped: u64,
    pub duplicates: u64,
}

/// The whole exposition of one stage replica: `vidmesh_up`, frames, batches, busy and blocked
/// time, the latency and batch-time histograms, fps, and the `vidmesh_link_*` families.
pub fn render_stage(
    stage: &str,
    replica: u32,
    m: &MetricsSnapshot,
    fps: f64,
    links: &[LinkSample],
) -> String {
    Exposition::new()
        .add_stage(stage, replica, m, fps, links)
        .render()
}

/// Re-exports the samples of many processes as one exposition (the launcher's aggregated
/// endpoint); see [`Exposition::add_scraped`]. A series seen twice keeps its first value.
pub fn merge(sources: &[(String, Vec<Sample>)]) -> String {
    let mut e = Exposition::new();
    for (instance, samples) in sources {
        e.add_scraped(instance, samples);
    }
    e.render()
}

/// The family, type and help a scraped sample name belongs to.
fn classify(name: &str) -> (&str, MetricKind, &'static str) {
    for f in FAMILIES {
        if f.kind == MetricKind::Histogram {
            let histogram_series = name
                .strip_prefix(f.name)
                .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"));
            if histogram_series {
                return (f.name, f.kind, f.help);
            }
        } else if name == f.name {
            return (f.name, f.kind, f.help);
        }
    }
    if name.starts_with("vidmesh_") && name.ends_with("_total") {
        return (name, MetricKind::Counter, "");
    }
    (name, MetricKind::Untyped, "")
}

fn valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Valid names, each at most once.
fn valid_labels(labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(k, _)| valid_label_name(k)) && !has_duplicates(labels.iter().map(|l| l.0))
}

/// By sorting, so that a line with very many labels costs no quadratic time.
fn has_duplicates<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut sorted = labels.to_vec();
    sorted.sort_unstable();
    let mut key = name.to_string();
    for (k, v) in sorted {
        // NUL cannot occur in names, so it separates unambiguously.
        let _ = write!(key, "\0{k}\0{}", v.len());
        key.push_str(v);
    }
    key
}

fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(value));
    out.push('\n');
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go-compatible float text: integers without a fraction (`le="1"`, like the Go client),
/// `+Inf`/`-Inf`/`NaN`, otherwise the shortest representation that reads back exactly.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line of an exposition that is not a comment, blank, or a valid sample.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

/// Parses the text format: every sample, in order. Comments (`# HELP`, `# TYPE`, others) and
/// blank lines are skipped; timestamps are accepted and dropped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|reason| ParseError {
            line: i + 1,
            reason,
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_len = line
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
        .unwrap_or(line.len());
    // The name ends at an ASCII byte or at the start of a multi-byte character: a boundary.
    let (name, mut rest) = line.split_at(name_len);
    if !valid_metric_name(name) {
        return Err(format!("expected a metric name at {:?}", preview(line)));
    }
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    } else if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err(format!("expected a space after {name}"));
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields
        .next()
        .ok_or_else(|| format!("metric {name} has no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {:?}", preview(value)))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {:?}", preview(ts)))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {:?} after the value", preview(extra)));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `name="value",...}` (after the `{`) into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, String> {
    let after = loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            break rest;
        }
        let name_len = s
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or(s.len());
        let (name, rest) = s.split_at(name_len);
        if !valid_label_name(name) {
            return Err(format!("expected a label name at {:?}", preview(s)));
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        let rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected `=` after label {name}"))?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected `\"` to open the value of label {name}"))?;
        let (value, rest) =
            parse_label_value(rest).ok_or_else(|| format!("unterminated value of label {name}"))?;
        labels.push((name.to_string(), value));
        s = rest.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label {name}"));
        }
    };
    if has_duplicates(labels.iter().map(|(k, _)| k.as_str())) {
        return Err("a label appears twice".into());
    }
    Ok(after)
}

/// Unescapes a label value up to its closing quote; returns it and what follows the quote.
fn parse_label_value(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                // Unknown escapes are kept verbatim, as Prometheus itself does.
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        // Rust also reads "infinity" and friends; the format does not have them.
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// At most 40 characters of `s`, for error messages about arbitrary input.
fn preview(s: &str) -> String {
    s.chars().take(40).collect()
}

// ---------------------------------------------------------------------------------------------
// Serving and scraping

/// What the metrics endpoint answers `GET /metrics` with; called once per scrape.
pub type RenderFn = Arc<dyn Fn() -> String + Send + Sync>;

/// The answer to `GET /metrics`.
pub fn metrics_response(render: &RenderFn) -> Response {
    Response::bytes(200, CONTENT_TYPE, render().into_bytes())
}

/// Serves `GET /metrics` (`render()`, as [`CONTENT_TYPE`]) and `GET /healthz` (`ok`) on
/// `addr` (see [`http::serve`] for its limits); every other path is 404.
pub fn serve(addr: SocketAddr, render: RenderFn) -> Result<HttpServer, ServeError> {
    http::serve(
        "metrics",
        addr,
        Arc::new(move |request: &Request| match request.path.as_str() {
            "/metrics" => metrics_response(&render),
            "/healthz" => Response::text(200, "ok"),
            _ => Response::not_found(),
        }),
    )
}

/// Why [`scrape`] got no samples.
#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("metrics endpoint: {0}")]
    Get(#[from] GetError),
    #[error("the metrics endpoint {addr} answered HTTP {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("the metrics from {addr} are not UTF-8")]
    NotText { addr: SocketAddr },
    #[error("malformed metrics from {addr}, {source}")]
    Parse {
        addr: SocketAddr,
        #[source]
        source: ParseError,
    },
}

/// Fetches `http://addr/metrics` and parses it, all within `timeout`, reading at most
/// [`SCRAPE_LIMIT_BYTES`].
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Result<Vec<Sample>, ScrapeError> {
    let (status, body) = http::get(addr, "/metrics", timeout, SCRAPE_LIMIT_BYTES)?;
    if status != 200 {
        return Err(ScrapeError::Status { addr, status });
    }
    let text = std::str::from_utf8(&body).map_err(|_| ScrapeError::NotText { addr })?;
    parse(text).map_err(|source| ScrapeError::Parse { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::StageMetrics;
    use crate::test_rng::XorShift;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn stage_snapshot() -> MetricsSnapshot {
        let m = StageMetrics::default();
        m.record(
            4,
            Duration::from_millis(3),
            Duration::from_millis(1),
            Some(20_000_000),
        );
        m.record(
            4,
            Duration::from_millis(7),
            Duration::ZERO,
            Some(30_000_000_000),
        );
        m.snapshot()
    }

    fn links() -> Vec<LinkSample> {
        vec![
            LinkSample {
                link: "det->track".into(),
                queue_depth: 3,
                credits: 5,
                sent: 100,
                acked: 97,
                resent: 2,
                dropped: 1,
                duplicates: 4,
            },
            LinkSample {
                link: "det->sink".into(),
                ..LinkSample::default()
            },
        ]
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let mut e = Exposition::new();
        e.histogram(
            "t_seconds",
            "Test.",
            &[("stage", "a")],
            &[0.1, 1.0],
            &[2, 3, 1],
            4.5,
        );
        assert_eq!(
            e.render(),
            "# HELP t_seconds Test.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{stage=\"a\",le=\"0.1\"} 2\n\
             t_seconds_bucket{stage=\"a\",le=\"1\"} 5\n\
             t_seconds_bucket{stage=\"a\",le=\"+Inf\"} 6\n\
             t_seconds_sum{stage=\"a\"} 4.5\n\
             t_seconds_count{stage=\"a\"} 6\n"
        );
        assert_eq!(e.dropped(), 0);
    }

    #[test]
    fn counters_and_gauges_render_golden() {
        let mut e = Exposition::new();
        e.counter("c_total", "A counter.", &[], 3.0)
            .gauge("g", "", &[("a", "x")], 0.25)
            .counter("c_total", "ignored: first help wins", &[("a", "y")], 1.0);
        assert_eq!(
            e.render(),
            "# HELP c_total A counter.\n\
             # TYPE c_total counter\n\
             c_total 3\n\
             c_total{a=\"y\"} 1\n\
             # TYPE g gauge\n\
             g{a=\"x\"} 0.25\n"
        );
    }

    #[test]
    fn values_render_like_go() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(-0.0), "0");
        assert_eq!(format_value(0.0025), "0.0025");
        assert_eq!(format_value(1e20), "1e20");
        assert_eq!(format_value(1e-7), "1e-7");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn stage_values_render_with_their_kind_and_labels() {
        let values = [
            StageValue {
                name: "broker_spool_messages",
                help: "Messages in the spool.",
                kind: ValueKind::Gauge,
                value: 12.0,
            },
            StageValue {
                name: "broker_delivered_total",
                help: "Messages confirmed.",
                kind: ValueKind::Counter,
                value: 300.0,
            },
        ];
        let text = Exposition::new().add_values("events", 1, &values).render();
        assert!(text.contains("# TYPE vidmesh_broker_spool_messages gauge\n"));
        assert!(text.contains("vidmesh_broker_spool_messages{stage=\"events\",replica=\"1\"} 12\n"));
        assert!(text.contains("# TYPE vidmesh_broker_delivered_total counter\n"));
        assert_eq!(parse(&text).unwrap().len(), 2);
    }

    #[test]
    fn render_stage_groups_each_family_once() {
        let text = render_stage("det", 0, &stage_snapshot(), 12.5, &links());
        for f in FAMILIES.iter().filter(|f| f.name != RESTARTS_TOTAL.name) {
            let type_line = format!("# TYPE {} {}\n", f.name, f.kind.as_str());
            assert_eq!(text.matches(&type_line).count(), 1, "{type_line}");
            assert_eq!(text.matches(&format!("# HELP {} ", f.name)).count(), 1);
        }
        assert!(text.contains("vidmesh_frames_total{stage=\"det\",replica=\"0\"} 8\n"));
        assert!(text
            .contains("vidmesh_stage_blocked_seconds_total{stage=\"det\",replica=\"0\"} 0.001\n"));
        // 20 ms and 30 s: one in (10 ms, 25 ms], one above 10 s.
        assert!(text.contains(
            "vidmesh_latency_seconds_bucket{stage=\"det\",replica=\"0\",le=\"0.01\"} 0\n\
             vidmesh_latency_seconds_bucket{stage=\"det\",replica=\"0\",le=\"0.025\"} 1\n"
        ));
        assert!(text.contains(
            "vidmesh_latency_seconds_bucket{stage=\"det\",replica=\"0\",le=\"10\"} 1\n\
             vidmesh_latency_seconds_bucket{stage=\"det\",replica=\"0\",le=\"+Inf\"} 2\n\
             vidmesh_latency_seconds_sum{stage=\"det\",replica=\"0\"} 30.02\n\
             vidmesh_latency_seconds_count{stage=\"det\",replica=\"0\"} 2\n"
        ));
        assert!(text.contains(
            "vidmesh_link_resent_total{stage=\"det\",replica=\"0\",link=\"det->track\"} 2\n"
        ));
    }

    #[test]
    fn parse_reads_back_what_render_writes() {
        let text = render_stage("det", 3, &stage_snapshot(), 12.5, &links());
        let samples = parse(&text).unwrap();
        // 6 single samples, 2 histograms of 14 buckets + sum + count, 7 per link.
        assert_eq!(samples.len(), 6 + 2 * 16 + 2 * 7);
        let l = [("stage", "det"), ("replica", "3")];
        assert_eq!(
            find(&samples, "vidmesh_batches_total", &l).unwrap().value,
            2.0
        );
        assert_eq!(find(&samples, "vidmesh_fps", &l).unwrap().value, 12.5);
        let bucket = find(&samples, "vidmesh_batch_seconds_bucket", &[("le", "0.005")]).unwrap();
        assert_eq!(bucket.value, 1.0);
        let link = [("link", "det->track")];
        assert_eq!(
            find(&samples, "vidmesh_link_credits", &link).unwrap().value,
            5.0
        );

        let mut e = Exposition::new();
        let values = [
            0.1,
            1e-7,
            1e20,
            -0.5,
            u64::MAX as f64,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for (i, v) in values.iter().enumerate() {
            e.gauge("v", "", &[("i", &i.to_string())], *v);
        }
        e.gauge("nan", "", &[], f64::NAN);
        let samples = parse(&e.render()).unwrap();
        for (s, v) in samples.iter().zip(values) {
            assert_eq!(s.value, v);
        }
        assert!(samples.last().unwrap().value.is_nan());
    }

    #[test]
    fn label_values_are_escaped_and_unescaped() {
        let tricky = "a\"b\\c\nd é{},=";
        let mut e = Exposition::new();
        e.counter(
            "x_total",
            "Help with \\ and\nnewline.",
            &[("v", tricky)],
            1.0,
        );
        let text = e.render();
        assert!(
            text.contains(r#"x_total{v="a\"b\\c\nd é{},="} 1"#),
            "{text}"
        );
        assert!(text.contains("# HELP x_total Help with \\\\ and\\nnewline.\n"));
        assert_eq!(text.lines().count(), 3);
        let samples = parse(&text).unwrap();
        assert_eq!(samples[0].label("v"), Some(tricky));
        // Unknown escapes are kept verbatim; spacing, a trailing comma, CRLF and timestamps
        // are accepted.
        let samples = parse("y{ a = \"\\t\" , b=\"2\", } 7 1700000000000\r\n").unwrap();
        assert_eq!(samples[0].label("a"), Some("\\t"));
        assert_eq!((samples[0].label("b"), samples[0].value), (Some("2"), 7.0));
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let cases = [
            ("ok 1\nbad{x=\"1\" 2", 2),
            ("# HELP a\n\nok 1\na{x=1} 1", 4),
            ("1abc 2", 1),
            ("a", 1),
            ("a1", 1),
            ("a 1 2 3", 1),
            ("a 1 notatimestamp", 1),
            ("a{x=\"1\",x=\"2\"} 1", 1),
            ("a{=\"1\"} 1", 1),
            ("a{x=\"1\"", 1),
            ("a{x=\"unterminated\\", 1),
            ("a xyz", 1),
            ("a infinity", 1),
            ("a{x=\"1\" y=\"2\"} 1", 1),
            ("a-b 1", 1),
            ("é 1", 1),
        ];
        for (text, line) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }

    #[test]
    fn a_line_with_very_many_labels_parses_in_reasonable_time() {
        let labels: Vec<String> = (0..200_000).map(|i| format!("l{i}=\"v\"")).collect();
        let line = format!("m{{{}}} 1", labels.join(","));
        assert_eq!(parse(&line).unwrap()[0].labels.len(), 200_000);
        let duplicated = format!("m{{{},l7=\"w\"}} 1", labels.join(","));
        assert_eq!(parse(&duplicated).unwrap_err().line, 1);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let alphabet = b"ab_:{}\"=,\\ \t\n\r#01.e+-InfNaN\xc3\xa9";
        let valid = render_stage("det", 0, &stage_snapshot(), 1.0, &links()).into_bytes();
        for round in 0..8_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(96);
                (0..len)
                    .map(|_| match rng.below(4) {
                        0 => rng.next() as u8,
                        _ => alphabet[rng.below(alphabet.len())],
                    })
                    .collect()
            } else {
                // A valid exposition with a few bytes replaced, inserted or removed.
                let mut b = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len());
                    match rng.below(3) {
                        0 => b[at] = alphabet[rng.below(alphabet.len())],
                        1 => b.insert(at, rng.next() as u8),
                        _ => {
                            b.remove(at);
                        }
                    }
                }
                b
            };
            let _ = parse(&String::from_utf8_lossy(&bytes));
            let _ = http::parse_response(&bytes);
        }
    }

    #[test]
    fn invalid_samples_are_dropped_not_rendered() {
        let mut e = Exposition::new();
        e.counter("bad-name", "", &[], 1.0)
            .counter("ok_total", "", &[("bad-label", "v")], 1.0)
            .counter("ok_total", "", &[("a", "1"), ("a", "2")], 1.0)
            .histogram("h", "", &[("le", "1")], &[1.0], &[1], 1.0)
            .histogram("h", "", &[], &[2.0, 1.0], &[1], 1.0)
            .histogram("h", "", &[], &[f64::INFINITY], &[1], 1.0)
            .counter("same_total", "", &[("a", "1"), ("b", "2")], 1.0)
            .counter("same_total", "", &[("b", "2"), ("a", "1")], 2.0)
            .gauge("same_total", "", &[("a", "3")], 1.0)
            .family(&LATENCY_SECONDS, &[], 1.0);
        assert_eq!(e.dropped(), 9);
        let samples = parse(&e.render()).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].value, 1.0);
    }

    #[test]
    fn merge_keeps_labels_types_and_adds_instance() {
        let a = parse(&render_stage("det", 0, &stage_snapshot(), 1.0, &links())).unwrap();
        let b = parse(&render_stage(
            "track",
            1,
            &MetricsSnapshot::default(),
            2.0,
            &[],
        ))
        .unwrap();
        let other = parse("go_goroutines 7\nthing_total{instance=\"own\"} 1\n").unwrap();
        let sources = vec![
            ("127.0.0.1:9101".to_string(), a.clone()),
            ("127.0.0.1:9102".to_string(), b.clone()),
            ("127.0.0.1:9103".to_string(), other),
            // A series seen twice keeps its first value; the output stays valid.
            ("127.0.0.1:9101".to_string(), a.clone()),
        ];
        let text = merge(&sources);
        assert_eq!(
            text.matches("# TYPE vidmesh_frames_total counter\n")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE vidmesh_latency_seconds histogram\n")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE vidmesh_link_queue_depth gauge\n")
                .count(),
            1
        );
        assert!(!text.contains("# TYPE go_goroutines"));
        assert!(!text.contains("# TYPE thing_total"));
        let merged = parse(&text).unwrap();
        assert_eq!(merged.len(), a.len() + b.len() + 2);
        let fps = find(
            &merged,
            "vidmesh_fps",
            &[("stage", "track"), ("instance", "127.0.0.1:9102")],
        );
        assert_eq!(fps.unwrap().value, 2.0);
        let own = find(&merged, "thing_total", &[]).unwrap();
        assert_eq!(own.label("instance"), Some("own"));
        for s in &a {
            let mut labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            labels.push(("instance", "127.0.0.1:9101"));
            assert_eq!(find(&merged, &s.name, &labels).unwrap().value, s.value);
        }
    }

    fn stage_server() -> HttpServer {
        let snapshot = stage_snapshot();
        let render: RenderFn = Arc::new(move || render_stage("det", 0, &snapshot, 12.5, &links()));
        serve("127.0.0.1:0".parse().unwrap(), render).unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(3);

    #[test]
    fn serve_then_scrape_returns_the_samples() {
        let server = stage_server();
        assert_ne!(server.local_addr().port(), 0);
        let samples = scrape(server.local_addr(), TIMEOUT).unwrap();
        let frames = find(&samples, "vidmesh_frames_total", &[("stage", "det")]).unwrap();
        assert_eq!(frames.value, 8.0);
        // And again: one connection per scrape.
        assert_eq!(scrape(server.local_addr(), TIMEOUT).unwrap(), samples);
    }

    #[test]
    fn healthz_unknown_paths_and_methods() {
        let server = stage_server();
        let addr = server.local_addr();
        assert_eq!(
            http::get(addr, "/healthz", TIMEOUT, 1024).unwrap(),
            (200, b"ok".to_vec())
        );
        assert_eq!(http::get(addr, "/nope", TIMEOUT, 1024).unwrap().0, 404);
        assert_eq!(
            http::get(addr, "/metrics?x=1", TIMEOUT, 1 << 20).unwrap().0,
            200
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(matches!(
            http::get(addr, "/metrics", TIMEOUT, 100),
            Err(GetError::TooLarge { limit: 100, .. })
        ));
    }

    #[test]
    fn second_serve_on_the_same_port_is_port_in_use() {
        let server = stage_server();
        let addr = server.local_addr();
        let err = serve(addr, Arc::new(String::new)).unwrap_err();
        assert!(
            matches!(err, ServeError::PortInUse { addr: a, .. } if a == addr),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains(&addr.to_string()) && message.contains("already in use"));
        assert!(message.contains("another stage"), "{message}");
    }

    #[test]
    fn an_idle_client_does_not_block_the_next_scrape() {
        let server = stage_server();
        let addr = server.local_addr();
        let _silent = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metr").unwrap();
        assert!(scrape(addr, TIMEOUT).is_ok());
    }

    #[test]
    fn oversized_and_garbage_requests_do_not_hurt_the_server() {
        let server = stage_server();
        let addr = server.local_addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        // Writing may fail once the server gave up on us; either way it must answer or close.
        let _ = s.write_all(&[b'A'; 20 << 10]);
        let mut answer = Vec::new();
        if s.read_to_end(&mut answer).is_ok() && !answer.is_empty() {
            assert!(answer.starts_with(b"HTTP/1.1 431 "));
        }
        let mut rng = XorShift(42);
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let garbage: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            let _ = s
                .write_all(&garbage)
                .and_then(|()| s.write_all(b"\r\n\r\n"));
            let _ = s.read_to_end(&mut Vec::new());
        }
        assert!(scrape(addr, TIMEOUT).is_ok());
    }

    #[test]
    fn too_many_connections_get_503_until_they_go() {
        let server = stage_server();
        let addr = server.local_addr();
        let idle: Vec<TcpStream> = (0..http::MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        assert!(matches!(
            scrape(addr, TIMEOUT),
            Err(ScrapeError::Status { status: 503, .. })
        ));
        drop(idle);
        // Their threads see the close and free their slots; no timing asserted, just recovery.
        let recovered = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            scrape(addr, TIMEOUT).is_ok()
        });
        assert!(recovered);
    }

    #[test]
    fn drop_stops_the_server() {
        let server = stage_server();
        let addr = server.local_addr();
        drop(server);
        assert!(matches!(
            scrape(addr, TIMEOUT),
            Err(ScrapeError::Get(GetError::Connect { .. }))
        ));
    }

    #[test]
    fn a_silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepted by the kernel backlog, never answered.
        let err = scrape(addr, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(err, ScrapeError::Get(GetError::Timeout { .. })),
            "{err}"
        );
    }
}
