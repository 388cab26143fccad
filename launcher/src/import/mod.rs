//! `vidmesh import-deepstream CONFIG.txt`: a deepstream-app configuration (GLib key file) and
//! the nvinfer, tracker, nvdsanalytics, msgconv and broker files it points at, converted into
//! a topology. What vidmesh cannot do exactly comes back as [`Note`]s, one per group or key,
//! instead of failing: only an unreadable or malformed file, or a missing file that
//! deepstream-app itself would refuse to start without, is an error. docs/IMPORT.md has the
//! mapping table.
//!
//! Paths in the configs are relative to the file that names them, as in deepstream-app; the
//! topology gets them absolute because topology paths start at the working directory. Output
//! files (`output-file`) stay relative, which in both programs means the working directory.

mod analytics;
mod broker;
pub mod ini;
mod nvinfer;
mod nvinferserver;
mod onnx;
mod prototxt;
mod render;
mod sinks;
mod sources;
mod tracker;

use std::fmt;
use std::path::{Component, Path, PathBuf};

use ini::GroupReader;
pub use ini::{ConfigError, KeyFile};
use render::{Table, TopologyDoc};

use crate::Topology;

/// How far a part of the config is from what the topology does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Converted, but vidmesh behaves somewhat differently (the note says how).
    Approximate,
    /// Left out: vidmesh has no equivalent.
    NotMapped,
    /// Left out because it only tunes NVIDIA hardware (GPU ids, memory types, DLA).
    Ignored,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Approximate => "approximate",
            Verdict::NotMapped => "not mapped",
            Verdict::Ignored => "ignored",
        })
    }
}

/// One report line: `[sink1] type=4 (RTSP streaming output): not mapped — why`.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The group and key (and file, for files other than the main config).
    pub place: String,
    pub verdict: Verdict,
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} — {}", self.place, self.verdict, self.why)
    }
}

/// The report being written.
#[derive(Debug, Default)]
pub struct Notes(pub Vec<Note>);

impl Notes {
    fn add(&mut self, verdict: Verdict, place: impl Into<String>, why: impl Into<String>) {
        self.0.push(Note {
            place: place.into(),
            verdict,
            why: why.into(),
        });
    }

    pub fn approximate(&mut self, place: impl Into<String>, why: impl Into<String>) {
        self.add(Verdict::Approximate, place, why);
    }

    pub fn not_mapped(&mut self, place: impl Into<String>, why: impl Into<String>) {
        self.add(Verdict::NotMapped, place, why);
    }

    /// Whether group `[group]` of config `file`, about stream `index`, names one of the
    /// `sources` streams; notes it as not mapped when it does not.
    pub fn stream_exists(&mut self, file: &str, group: &str, index: usize, sources: usize) -> bool {
        if index < sources {
            return true;
        }
        self.not_mapped(
            format!("{file} [{group}]"),
            format!("stream {index} does not exist (the config has {sources} sources)"),
        );
        false
    }

    pub fn ignored(&mut self, place: impl Into<String>, why: impl Into<String>) {
        self.add(Verdict::Ignored, place, why);
    }

    /// Reports the keys of `r`'s group that no mapping read: hardware tuning as one
    /// "ignored" line, everything else one "not mapped" line per key. `file` prefixes the
    /// place for files other than the deepstream-app config.
    pub fn unused(&mut self, r: &GroupReader<'_>, file: Option<&str>) {
        let prefix = file.map(|f| format!("{f} ")).unwrap_or_default();
        let unused = r.unused();
        let hardware: Vec<&str> = unused
            .iter()
            .filter(|e| HARDWARE_KEYS.contains(&e.key.as_str()))
            .map(|e| e.key.as_str())
            .collect();
        if !hardware.is_empty() {
            self.ignored(
                format!("{prefix}[{}] {}", r.name(), hardware.join(", ")),
                "NVIDIA GPU/DLA/memory settings; vidmesh runs on the CPU",
            );
        }
        for e in unused
            .iter()
            .filter(|e| !HARDWARE_KEYS.contains(&e.key.as_str()))
        {
            self.not_mapped(
                format!("{prefix}[{}] {}={}", r.name(), e.key, short(&e.raw)),
                "vidmesh has no equivalent setting",
            );
        }
    }
}

/// Keys that only choose NVIDIA hardware or memory: nothing to convert on a CPU pipeline.
const HARDWARE_KEYS: &[&str] = &[
    "gpu-id",
    "nvbuf-memory-type",
    "cudadec-memtype",
    "compute-hw",
    "scaling-compute-hw",
    "enable-dla",
    "use-dla-core",
    "workspace-size",
    "tracking-surface-type",
    "enc-type",
    "num-extra-surfaces",
    "buffer-pool-size",
    "enable-batch-process",
    "force-implicit-batch-dim",
    "int8-calib-file",
    "model-engine-file",
    "intra-decode-enable",
    "low-latency-mode",
    "udp-buffer-size",
    "user-meta-pool-size",
    "sub-batches",
    "num-surfaces-per-frame",
    "async-process",
    "nvbuf-batch-size",
    "copy-input-to-host-buffers",
    "engine-create-func-name",
    "disable-output-host-copy",
    "cudadec-gpu-id",
    "rtsp-port-gpu-id",
];

/// A value cut short for report lines.
fn short(text: &str) -> String {
    match text.char_indices().nth(48) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// The topology as TOML text.
    pub topology: String,
    /// What was approximated or left out, in config order.
    pub notes: Vec<Note>,
    /// Files the topology refers to that the import writes too (the msgconv config, converted
    /// to TOML), with their text.
    pub extra_files: Vec<(PathBuf, String)>,
}

/// Converts deepstream-app config `config` into a topology. `output` is where the topology
/// will be written (files it refers to are written next to it); `None` for standard output.
pub fn import_deepstream(config: &Path, output: Option<&Path>) -> Result<Imported, ConfigError> {
    let app = KeyFile::read(config)?;
    let config_abs = absolute(config);
    let dir = config_abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let output_abs = output.map(absolute);
    let mut notes = Notes::default();
    let mut handled: Vec<&str> = Vec::new();

    if let Some(r) = app.reader("application") {
        handled.push("application");
        application(&r, &mut notes)?;
    }

    let mut sources = sources::sources(&app, &dir, &mut notes)?;
    handled.extend(["source-list", "source-attr-all"]);
    let source_ids: Vec<String> = sources.iter().map(|s| s.id.clone()).collect();
    if source_ids.is_empty() {
        notes.not_mapped(
            "[sourceN]",
            "no enabled source vidmesh can read (file://, rtsp://); the topology has none and \
             will not validate",
        );
    }

    handled.push("streammux");
    let mux = sources::streammux(app.reader("streammux").as_ref(), sources.len(), &mut notes)?;

    let mut stages: Vec<(String, String, Table)> = vec![(
        "mux".to_string(),
        "[streammux]: batching (nvstreammux)".to_string(),
        mux,
    )];
    let mut chain: Vec<String> = vec!["mux".into()];

    handled.push("primary-gie");
    let mut gies: Vec<nvinfer::Upstream> = Vec::new();
    if let Some(r) = app.reader("primary-gie") {
        if r.enabled(false)? {
            if let Some(detector) = nvinfer::primary(&r, &dir, &mut notes)? {
                if let Some(pre) = detector.preprocess {
                    stages.push((
                        "preprocess".into(),
                        format!(
                            "[primary-gie] {}: nvinfer's preprocessing (scaling, normalisation)",
                            detector.config_name
                        ),
                        pre,
                    ));
                    chain.push("preprocess".into());
                }
                stages.push((
                    "detect".into(),
                    format!(
                        "[primary-gie] {}: the {} and its output parser",
                        detector.config_name,
                        if detector.detector {
                            "detector"
                        } else {
                            "classifier (on whole frames)"
                        }
                    ),
                    detector.infer,
                ));
                chain.push("detect".into());
                gies.push(nvinfer::Upstream {
                    stage: "detect".into(),
                    unique_id: detector.unique_id,
                    detector: detector.detector,
                });
            }
        }
    }

    // deepstream-app runs the secondary gies after the tracker, in group order.
    let mut secondaries: Vec<(String, String, Table)> = Vec::new();
    let mut numbered: Vec<(u64, &ini::Group)> = app
        .groups
        .iter()
        .filter(|g| is_numbered(&g.name, "secondary-gie"))
        .map(|g| {
            (
                g.name["secondary-gie".len()..].parse().unwrap_or(u64::MAX),
                g,
            )
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    for (n, group) in numbered {
        handled.push(&group.name);
        let r = GroupReader::new(&app, group);
        if !r.enabled(false)? {
            continue;
        }
        if let Some(gie) = nvinfer::secondary(&r, &dir, &gies, &mut notes)? {
            let name = format!("sgie{n}");
            let on = gie
                .infer
                .get("operate_on")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            secondaries.push((
                name.clone(),
                format!(
                    "[{}] {}: secondary {} on the objects of `{on}` (crops scaled by its own \
                     preprocess table)",
                    group.name,
                    gie.config_name,
                    if gie.detector {
                        "detector"
                    } else {
                        "classifier"
                    },
                ),
                gie.infer,
            ));
            gies.push(nvinfer::Upstream {
                stage: name,
                unique_id: gie.unique_id,
                detector: gie.detector,
            });
        }
    }
    for group in app
        .groups
        .iter()
        .filter(|g| is_numbered(&g.name, "secondary-preprocess") || g.name == "pre-process")
    {
        handled.push(&group.name);
        let r = GroupReader::new(&app, group);
        if r.enabled(false)? {
            notes.not_mapped(
                format!("[{}]", group.name),
                "vidmesh has no nvdspreprocess (ROI/tensor preparation plugin); the detector's \
                 own nvinfer preprocessing is used",
            );
        }
    }

    let mut show_track_id = true;
    handled.push("tracker");
    if let Some(r) = app.reader("tracker") {
        if r.enabled(false)? {
            let t = tracker::tracker(&r, &dir, &mut notes)?;
            show_track_id = t.show_track_id;
            stages.push((
                "track".into(),
                format!("[tracker] {}: multi-object tracking (nvtracker)", t.from),
                t.table,
            ));
            chain.push("track".into());
        }
    }

    for (name, note, table) in secondaries {
        chain.push(name.clone());
        stages.push((name, note, table));
    }
    if let Some((_, _, detect)) = stages.iter().find(|(name, _, _)| name == "detect") {
        let interval = detect.get("interval").and_then(|v| v.as_integer());
        if let Some(n) = interval.filter(|_| !chain.iter().any(|s| s == "track")) {
            notes.approximate(
                format!("[primary-gie] interval={n}"),
                "there is no [tracker]: objects appear on the inferred frames only",
            );
        }
    }

    handled.push("nvds-analytics");
    if let Some(r) = app.reader("nvds-analytics") {
        if r.enabled(false)? {
            if let Some((from, table)) = analytics::analytics(&r, &dir, &source_ids, &mut notes)? {
                if !chain.iter().any(|s| s == "track") {
                    notes.approximate(
                        "[nvds-analytics]",
                        "there is no [tracker]: line crossing and direction need track ids, \
                         only ROI counts and overcrowding will work",
                    );
                }
                stages.push((
                    "analytics".into(),
                    format!("[nvds-analytics] {from}: ROIs, lines, overcrowding, directions"),
                    table,
                ));
                chain.push("analytics".into());
            }
        }
    }

    handled.push("tiled-display");
    let tile = match app.reader("tiled-display") {
        Some(r) => sinks::tiled_display(&r, source_ids.len(), &mut notes)?,
        None => None,
    };

    handled.push("osd");
    let mut osd = None;
    if let Some(r) = app.reader("osd") {
        if r.enabled(false)? {
            osd = Some(sinks::osd(&r, show_track_id, &mut notes)?);
        }
    }

    let msgconv_group = app.reader("message-converter");
    handled.push("message-converter");
    let extra_path = output_abs.as_ref().map(|o| msgconv_path(o));
    let mut extra_files = Vec::new();
    let mut sink_stages = Vec::new();
    let mut broker_stages = Vec::new();
    for group in app.groups.iter().filter(|g| is_numbered(&g.name, "sink")) {
        handled.push(&group.name);
        let r = GroupReader::new(&app, group);
        let target = sinks::SinkContext {
            dir: &dir,
            source_ids: &source_ids,
            msgconv_group: msgconv_group.as_ref(),
            msgconv_out: extra_path.as_deref(),
            tiled: tile.is_some(),
        };
        match sinks::sink(&r, &target, &mut notes)? {
            Some(sinks::SinkOut::File(table)) => sink_stages.push((
                group.name.clone(),
                format!("[{}]: file output", group.name),
                table,
            )),
            Some(sinks::SinkOut::Broker(b)) => {
                if let Some((path, text)) = b.msgconv_file {
                    extra_files.push((path, text));
                }
                broker_stages.push((
                    group.name.clone(),
                    format!("[{}]: {}", group.name, b.from),
                    b.table,
                ));
            }
            None => {}
        }
    }
    if let Some(r) = &msgconv_group {
        broker::message_converter_leftovers(r, &mut notes)?;
    }
    for group in app
        .groups
        .iter()
        .filter(|g| is_numbered(&g.name, "message-consumer"))
    {
        handled.push(&group.name);
        let r = GroupReader::new(&app, group);
        if r.enabled(false)? {
            notes.not_mapped(
                format!("[{}]", group.name),
                "vidmesh does not receive cloud-to-device messages (no message consumer)",
            );
        }
    }

    handled.push("tests");
    if let Some(r) = app.reader("tests") {
        if r.int("file-loop")?.unwrap_or(0) != 0 {
            // deepstream-app loops its file sources; vidmesh's `loop` is per source.
            for s in sources.iter_mut().filter(|s| {
                s.table
                    .get("uri")
                    .and_then(|u| u.as_str())
                    .is_some_and(|u| u.starts_with("file:"))
            }) {
                s.table.set("loop", true);
            }
        }
        notes.unused(&r, None);
    }

    for group in &app.groups {
        let known = handled.contains(&group.name.as_str())
            || is_numbered(&group.name, "source")
            || is_numbered(&group.name, "sink");
        if !known {
            let enabled = GroupReader::new(&app, group).enabled(true)?;
            if enabled {
                notes.not_mapped(
                    format!("[{}]", group.name),
                    "a group vidmesh does not know (custom plugins such as [ds-example] or \
                     [img-save] have no vidmesh stage)",
                );
            }
        }
    }

    // Links: the DeepStream graph, sources → mux → detector → tracker → analytics → OSD →
    // sinks; brokers take metadata after tracking and analytics, without pixels drawn.
    let mut links = vec![(crate::topology::SOURCES.to_string(), "mux".to_string())];
    for pair in chain.windows(2) {
        links.push((pair[0].clone(), pair[1].clone()));
    }
    let last = chain.last().cloned().unwrap_or_else(|| "mux".into());
    let mut video_from = last.clone();
    if let Some(table) = tile {
        if sink_stages.is_empty() {
            notes.approximate(
                "[tiled-display]",
                "no sink shows or writes the tiled frames, so the tile stage is left out",
            );
        } else {
            stages.push((
                "tile".into(),
                "[tiled-display]: all sources in one grid (nvmultistreamtiler)".into(),
                table,
            ));
            links.push((video_from.clone(), "tile".into()));
            video_from = "tile".into();
        }
    }
    if let Some(table) = osd {
        if sink_stages.is_empty() {
            notes.approximate(
                "[osd]",
                "no sink shows or writes the drawn frames, so the OSD stage is left out",
            );
        } else {
            stages.push(("osd".into(), "[osd]: drawing (nvdsosd)".into(), table));
            links.push((video_from.clone(), "osd".into()));
            video_from = "osd".into();
        }
    }
    for (name, _, _) in &sink_stages {
        links.push((video_from.clone(), name.clone()));
    }
    for (name, _, _) in &broker_stages {
        links.push((last.clone(), name.clone()));
    }
    stages.extend(sink_stages);
    stages.extend(broker_stages);

    let name = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "deepstream".into());
    let doc = TopologyDoc {
        header: header(&config_abs, &notes.0),
        name,
        links,
        sources: sources.into_iter().map(|s| (s.comment, s.table)).collect(),
        stages,
    };
    Ok(Imported {
        topology: doc.render(),
        notes: notes.0,
        extra_files,
    })
}

fn header(config: &Path, notes: &[Note]) -> String {
    let mut text = format!(
        "Converted by `vidmesh import-deepstream` from the deepstream-app config\n  {}\n\
         Paths read from the configs are absolute; output files keep their relative paths, \
         which\n(as with deepstream-app) start at the directory `vidmesh run` is started in.",
        config.display()
    );
    if !notes.is_empty() {
        text.push_str("\n\nWhat differs from DeepStream (docs/IMPORT.md):");
        for n in notes {
            text.push_str(&format!("\n  {n}"));
        }
    }
    text
}

/// `[application]`: only performance printing has a counterpart.
fn application(r: &GroupReader<'_>, notes: &mut Notes) -> Result<(), ConfigError> {
    if r.int("enable-perf-measurement")?.unwrap_or(0) != 0 {
        let every = r.int("perf-measurement-interval-sec")?.unwrap_or(5);
        notes.approximate(
            "[application] enable-perf-measurement=1",
            format!(
                "`vidmesh run` prints fps per stage on its progress line; run it with \
                 `--progress {every}s` for the same interval"
            ),
        );
    } else {
        r.touch("perf-measurement-interval-sec");
    }
    for key in [
        "gie-kitti-output-dir",
        "kitti-track-output-dir",
        "reid-track-output-dir",
        "terminated-track-output-dir",
        "shadow-track-output-dir",
    ] {
        if let Some(dir) = r.string(key)? {
            notes.not_mapped(
                format!("[application] {key}={}", short(&dir)),
                "vidmesh writes no KITTI files; a broker stage with `schema = \"native\"` and \
                 a file:// uri writes every object of every frame as JSON lines",
            );
        }
    }
    notes.unused(r, None);
    Ok(())
}

/// `prefix` followed by digits only: `sink0`, `secondary-gie12`.
pub(crate) fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Where the msgconv config converted for the topology at `output` goes.
fn msgconv_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "topology".into());
    output.with_file_name(format!("{stem}.msgconv.toml"))
}

/// `path` made absolute against the working directory, `.` and `..` removed.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    normalize(&joined)
}

/// A path from a config, relative to `base` (the directory of the file naming it) unless
/// absolute, without `.` and `..` components.
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        normalize(p)
    } else {
        normalize(&base.join(p))
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The file name of `path`, for comments and report lines.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A duration in whole milliseconds (or microseconds) for a topology.
pub(crate) fn micros_text(us: i64) -> String {
    if us % 1000 == 0 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// `vidmesh import-deepstream`: converts `config`, writes the topology to `output` (standard
/// output when `None`) and the files it refers to, prints the report on standard error, then
/// validates the result. Err carries the message for the error exit.
pub fn import_command(config: &Path, output: Option<&Path>) -> Result<(), String> {
    let imported = import_deepstream(config, output).map_err(|e| e.to_string())?;
    for (path, text) in &imported.extra_files {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match output {
        Some(path) => std::fs::write(path, &imported.topology)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{}", imported.topology),
    }
    for note in &imported.notes {
        eprintln!("{note}");
    }
    let (shown, checked) = match output {
        Some(path) => (path.display().to_string(), Topology::load(path)),
        None => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            (
                "<stdout>".to_string(),
                Topology::parse(Path::new("<stdout>"), &imported.topology, &cwd),
            )
        }
    };
    let summary = format!(
        "{} notes ({} approximate, {} not mapped, {} ignored)",
        imported.notes.len(),
        count(&imported.notes, Verdict::Approximate),
        count(&imported.notes, Verdict::NotMapped),
        count(&imported.notes, Verdict::Ignored)
    );
    match checked {
        Ok(t) => {
            eprintln!(
                "import-deepstream: {} -> {shown}: valid ({} sources, {} stages, {} links); {summary}",
                config.display(),
                t.sources.len(),
                t.stages.len(),
                t.links.len()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "the topology converted from {} does not validate: {e}",
            config.display()
        )),
    }
}

fn count(notes: &[Note], verdict: Verdict) -> usize {
    notes.iter().filter(|n| n.verdict == verdict).count()
}

#[cfg(test)]
mod tests;
