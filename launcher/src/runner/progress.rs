//! Progress on stderr while a pipeline runs: frames, fps, ETA, and per-stage latency and
//! queue depth. Three displays, picked once at the start:
//!
//! * stderr is not a terminal: one line per interval,
//!   `[   1.0s] frames 45/796 (6%) 44.6 fps ETA 17s | mux 0.0ms q4 | ...` — logs and scripts
//!   read this, so its format stays as it is;
//! * a terminal, every source a file: a bar redrawn in place with `\r`, ended by a newline;
//! * a terminal with a live source (no end to count down to): a table, one row per source
//!   (frames, fps, running / stalled / ended), redrawn in place every interval.
//!
//! [`ProgressReporter::sample`] reads the counters; [`format_line`], [`format_bar`] and
//! [`format_table`] are pure, so each display is tested with plain numbers.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidmesh_actors::source::SourceProgress;
use vidmesh_transport::{LinkReceiver, LinkStats};

use super::metrics::{MetricsSnapshot, StageMetrics};

/// Columns assumed when neither `COLUMNS` nor the terminal says.
const DEFAULT_WIDTH: usize = 100;
/// Cells of the bar itself, on terminals wide enough.
const BAR_CELLS: usize = 20;
/// A running source that delivered nothing for this many intervals is "stalled".
const STALL_INTERVALS: u32 = 2;

/// What the reporter watches.
pub struct Watched {
    pub sources: Vec<WatchedSource>,
    pub stages: Vec<WatchedStage>,
    /// Sources added while the pipeline runs: given how many are watched, returns the newer
    /// ones. `None` when the sources are fixed.
    pub discover: Option<Discover>,
}

/// See [`Watched::discover`].
pub type Discover = Box<dyn Fn(usize) -> Vec<WatchedSource> + Send>;

/// One source: its counters, and whether its thread is done.
pub struct WatchedSource {
    pub name: String,
    /// Live sources (RTSP, cameras) have no end, so no bar can count down to it.
    pub live: bool,
    pub progress: Arc<SourceProgress>,
    /// Set by the source's thread when it returns.
    pub ended: Arc<AtomicBool>,
}

/// One stage: its counters and its inbox's depth.
pub struct WatchedStage {
    pub name: String,
    pub metrics: Arc<StageMetrics>,
    pub inbox: DepthProbe,
}

/// Reads an inbox's queue depth from another thread.
#[derive(Clone)]
pub struct DepthProbe {
    stats: Arc<LinkStats>,
    capacity: usize,
}

impl DepthProbe {
    pub fn new(inbox: &LinkReceiver) -> Self {
        Self {
            stats: inbox.stats().clone(),
            capacity: inbox.capacity(),
        }
    }

    pub fn depth(&self) -> usize {
        let sent = self.stats.sent.load(Ordering::Relaxed);
        let received = self.stats.received.load(Ordering::Relaxed);
        (sent.saturating_sub(received) as usize).min(self.capacity)
    }
}

/// Everything one report shows, measured over the time since the previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub elapsed: Duration,
    pub frames: u64,
    /// Expected frames of all sources, when every source knows its duration.
    pub total: Option<u64>,
    pub fps: f64,
    pub eta: Option<Duration>,
    pub stages: Vec<StageTick>,
    pub sources: Vec<SourceTick>,
    /// The last report: fps are averages over the whole run.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageTick {
    pub name: String,
    pub ms_per_batch: f64,
    pub queue: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceTick {
    pub name: String,
    pub frames: u64,
    pub total: Option<u64>,
    pub fps: f64,
    pub status: SourceStatus,
}

/// A source's state in the live table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    Running,
    /// No frame for more than [`STALL_INTERVALS`] intervals; how long.
    Stalled(Duration),
    Ended,
}

impl SourceStatus {
    /// `idle`: time since the source's last new frame (or since the start).
    pub fn of(ended: bool, idle: Duration, interval: Duration) -> Self {
        if ended {
            SourceStatus::Ended
        } else if idle > interval * STALL_INTERVALS {
            SourceStatus::Stalled(idle)
        } else {
            SourceStatus::Running
        }
    }
}

/// How the reporter draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Display {
    Lines,
    Bar,
    Table,
}

struct SourceState {
    last_frames: u64,
    last_change: Instant,
}

pub struct ProgressReporter {
    watched: Watched,
    started: Instant,
    last: Instant,
    last_frames: u64,
    last_stage: Vec<MetricsSnapshot>,
    last_source: Vec<SourceState>,
    /// Lines the last table took, to draw the next one over it.
    table_lines: usize,
}

impl ProgressReporter {
    pub fn new(watched: Watched) -> Self {
        let n = watched.stages.len();
        let now = Instant::now();
        let last_source = watched
            .sources
            .iter()
            .map(|_| SourceState {
                last_frames: 0,
                last_change: now,
            })
            .collect();
        Self {
            watched,
            started: now,
            last: now,
            last_frames: 0,
            last_stage: vec![MetricsSnapshot::default(); n],
            last_source,
            table_lines: 0,
        }
    }

    /// Reports every `interval` on stderr until `finished` is set, then draws the final
    /// state (terminal displays only: the plain lines stop as they always did).
    pub fn run(mut self, interval: Duration, finished: &AtomicBool) {
        let display = if !std::io::stderr().is_terminal() {
            Display::Lines
        } else if self.watched.discover.is_some() || self.watched.sources.iter().any(|s| s.live) {
            Display::Table
        } else {
            Display::Bar
        };
        let mut next = Instant::now() + interval;
        loop {
            let done = finished.load(Ordering::Relaxed);
            if done && display == Display::Lines {
                return;
            }
            if done || Instant::now() >= next {
                let tick = self.sample(interval, done);
                let text = match display {
                    Display::Lines => format!("{}\n", format_line(&tick)),
                    Display::Bar => {
                        let mut s = format!("\r{}\x1b[K", format_bar(&tick, terminal_width()));
                        if done {
                            s.push('\n');
                        }
                        s
                    }
                    Display::Table => self.redraw_table(&tick),
                };
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(text.as_bytes()).and_then(|_| err.flush());
                next += interval;
            }
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The table, drawn over the previous one.
    fn redraw_table(&mut self, tick: &Tick) -> String {
        let mut s = String::new();
        if self.table_lines > 0 {
            // To the start of the previous table, then clear to the end of the screen.
            s.push_str(&format!("\r\x1b[{}A\x1b[J", self.table_lines));
        }
        let lines = format_table(tick, terminal_width());
        self.table_lines = lines.len();
        for line in lines {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    /// Frames decoded by one source and, when it knows its duration, its expected total.
    fn source_frames(progress: &SourceProgress) -> (u64, Option<u64>) {
        let frames = progress.frames.load(Ordering::Relaxed);
        let (pos, dur) = (
            progress.position_ns.load(Ordering::Relaxed),
            progress.duration_ns.load(Ordering::Relaxed),
        );
        let total = (dur > 0 && pos > 0)
            .then(|| ((frames as f64) * dur as f64 / pos as f64).round() as u64);
        (frames, total.map(|t| t.max(frames)))
    }

    /// Reads every counter; rates cover the time since the previous call (or the whole run
    /// when `done`).
    pub fn sample(&mut self, interval: Duration, done: bool) -> Tick {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        let dt = if done {
            elapsed
        } else {
            now.duration_since(self.last)
        }
        .as_secs_f64()
        .max(1e-3);
        if let Some(discover) = &self.watched.discover {
            for added in discover(self.watched.sources.len()) {
                self.watched.sources.push(added);
                self.last_source.push(SourceState {
                    last_frames: 0,
                    last_change: now,
                });
            }
        }
        let mut sources = Vec::with_capacity(self.watched.sources.len());
        let mut total = Some(0u64);
        for (s, last) in self.watched.sources.iter().zip(&mut self.last_source) {
            let (frames, mut source_total) = Self::source_frames(&s.progress);
            let ended = s.ended.load(Ordering::Relaxed);
            if ended && source_total.is_some_and(|t| t - frames <= (t / 100).max(2)) {
                // The estimate from timestamps can be a frame off: a source that ended at its
                // end delivered its total. (One stopped early keeps the estimate.)
                source_total = Some(frames);
            }
            total = total.zip(source_total).map(|(a, b)| a + b);
            let since = if done {
                0
            } else {
                last.last_frames.min(frames)
            };
            if frames > last.last_frames {
                last.last_change = now;
            }
            last.last_frames = frames;
            sources.push(SourceTick {
                name: s.name.clone(),
                frames,
                total: source_total,
                fps: (frames - since) as f64 / dt,
                status: SourceStatus::of(ended, now.duration_since(last.last_change), interval),
            });
        }
        let frames: u64 = sources.iter().map(|s| s.frames).sum();
        let since = if done {
            0
        } else {
            self.last_frames.min(frames)
        };
        let fps = (frames - since) as f64 / dt;
        let eta = match total {
            Some(total) if fps > 0.0 && total > frames && !done => Some(Duration::from_secs(
                ((total - frames) as f64 / fps).ceil() as u64,
            )),
            _ => None,
        };
        let mut stages = Vec::with_capacity(self.watched.stages.len());
        for (stage, last) in self.watched.stages.iter().zip(&mut self.last_stage) {
            let snap = stage.metrics.snapshot();
            stages.push(StageTick {
                name: stage.name.clone(),
                ms_per_batch: snap.ms_per_batch_since(last),
                queue: stage.inbox.depth(),
            });
            *last = snap;
        }
        self.last = now;
        self.last_frames = frames;
        Tick {
            elapsed,
            frames,
            total,
            fps,
            eta,
            stages,
            sources,
            done,
        }
    }
}

/// The plain line, unchanged since the first release:
/// `[   1.0s] frames 45/796 (6%) 44.6 fps ETA 17s | mux 0.0ms q4 | ...`.
pub fn format_line(t: &Tick) -> String {
    let mut line = format!("[{:>6.1}s] frames {}", t.elapsed.as_secs_f64(), t.frames);
    if let Some(total) = t.total.filter(|t| *t > 0) {
        line.push_str(&format!(
            "/{total} ({:.0}%)",
            100.0 * t.frames as f64 / total as f64
        ));
    }
    line.push_str(&format!(" {:.1} fps", t.fps));
    if let Some(eta) = t.eta {
        line.push_str(&format!(" ETA {}", humantime::format_duration(eta)));
    }
    line.push_str(&stage_details(&t.stages));
    line
}

/// ` | mux 0.0ms q4 | detect 88.5ms q2`.
fn stage_details(stages: &[StageTick]) -> String {
    stages
        .iter()
        .map(|s| format!(" | {} {:.1}ms q{}", s.name, s.ms_per_batch, s.queue))
        .collect()
}

/// `[#####---------------] 45/796 (6%) 44.6 fps ETA 17s | mux 0.0ms q4 | ...`, at most
/// `width - 1` columns (a full last column makes some terminals wrap).
pub fn format_bar(t: &Tick, width: usize) -> String {
    let cells = if width >= 60 {
        BAR_CELLS
    } else {
        (width / 4).max(5)
    };
    let fraction = match t.total {
        Some(total) if total > 0 => (t.frames as f64 / total as f64).min(1.0),
        _ => 0.0,
    };
    let filled = ((fraction * cells as f64).floor() as usize).min(cells);
    let mut line = format!("[{}{}] ", "#".repeat(filled), "-".repeat(cells - filled));
    match t.total.filter(|t| *t > 0) {
        Some(total) => line.push_str(&format!("{}/{total} ({:.0}%)", t.frames, 100.0 * fraction)),
        None => line.push_str(&format!("{} frames", t.frames)),
    }
    line.push_str(&format!(" {:.1} fps", t.fps));
    if t.done {
        line.push_str(&format!(" in {:.1}s", t.elapsed.as_secs_f64()));
    } else if let Some(eta) = t.eta {
        line.push_str(&format!(" ETA {}", humantime::format_duration(eta)));
    }
    line.push_str(&stage_details(&t.stages));
    fit(&line, width)
}

/// One row per source, then the stages on one line:
///
/// ```text
/// [  12.0s] source frames     fps  status
///           cam1      360    30.0  running
///           cam2      200     0.0  stalled (5s without a frame)
///           stages: mux 0.0ms q4 | detect 88.5ms q2
/// ```
pub fn format_table(t: &Tick, width: usize) -> Vec<String> {
    let name_width = t
        .sources
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 24);
    let counts: Vec<String> = t
        .sources
        .iter()
        .map(|s| match s.total {
            Some(total) => format!("{}/{total}", s.frames),
            None => s.frames.to_string(),
        })
        .collect();
    let count_width = counts.iter().map(String::len).max().unwrap_or(0).max(6);
    let prefix = format!("[{:>6.1}s] ", t.elapsed.as_secs_f64());
    let indent = " ".repeat(prefix.len());
    let mut lines = vec![format!(
        "{prefix}{:<name_width$} {:>count_width$} {:>7}  status",
        "source", "frames", "fps"
    )];
    for (s, count) in t.sources.iter().zip(&counts) {
        let name: String = s.name.chars().take(name_width).collect();
        let status = match s.status {
            SourceStatus::Running => "running".to_string(),
            SourceStatus::Stalled(idle) => format!(
                "stalled ({} without a frame)",
                humantime::format_duration(Duration::from_secs(idle.as_secs()))
            ),
            SourceStatus::Ended => "ended".to_string(),
        };
        lines.push(format!(
            "{indent}{name:<name_width$} {count:>count_width$} {:>7.1}  {status}",
            s.fps
        ));
    }
    if !t.stages.is_empty() {
        let stages = stage_details(&t.stages);
        lines.push(format!(
            "{indent}stages:{}",
            stages.strip_prefix(" |").unwrap_or(&stages)
        ));
    }
    lines.iter().map(|l| fit(l, width)).collect()
}

/// `line` cut to `width - 1` characters, an ellipsis marking the cut.
fn fit(line: &str, width: usize) -> String {
    let room = width.saturating_sub(1).max(1);
    if line.chars().count() <= room {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

/// Columns of the terminal: `COLUMNS` when set, else what the terminal on stderr says, else
/// [`DEFAULT_WIDTH`].
fn terminal_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return columns;
    }
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct we pass, which lives here.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        size.ws_col as usize
    } else {
        DEFAULT_WIDTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<StageTick> {
        [
            ("mux", 0.0, 4),
            ("preprocess", 8.94, 4),
            ("detect", 88.51, 3),
        ]
        .into_iter()
        .map(|(name, ms, queue)| StageTick {
            name: name.into(),
            ms_per_batch: ms,
            queue,
        })
        .collect()
    }

    fn readme_tick() -> Tick {
        Tick {
            elapsed: Duration::from_millis(1004),
            frames: 45,
            total: Some(796),
            fps: 44.6,
            eta: Some(Duration::from_secs(17)),
            stages: stages(),
            sources: vec![],
            done: false,
        }
    }

    #[test]
    fn plain_line_keeps_its_format() {
        assert_eq!(
            format_line(&readme_tick()),
            "[   1.0s] frames 45/796 (6%) 44.6 fps ETA 17s | mux 0.0ms q4 | preprocess 8.9ms q4 | detect 88.5ms q3"
        );
        let live = Tick {
            total: None,
            eta: None,
            stages: vec![],
            ..readme_tick()
        };
        assert_eq!(format_line(&live), "[   1.0s] frames 45 44.6 fps");
    }

    #[test]
    fn bar_fills_with_progress_and_fits_the_terminal() {
        let wide = format_bar(&readme_tick(), 200);
        assert_eq!(
            wide,
            "[#-------------------] 45/796 (6%) 44.6 fps ETA 17s | mux 0.0ms q4 | preprocess 8.9ms q4 | detect 88.5ms q3"
        );
        let half = Tick {
            frames: 398,
            ..readme_tick()
        };
        assert!(format_bar(&half, 200).starts_with("[##########----------] 398/796 (50%)"));
        let narrow = format_bar(&readme_tick(), 60);
        assert_eq!(narrow.chars().count(), 59, "{narrow}");
        assert!(narrow.ends_with('…'), "{narrow}");
        assert!(narrow.starts_with("[#-------------------] 45/796 (6%) 44.6 fps ETA 17s"));
        let tiny = format_bar(&readme_tick(), 30);
        assert!(tiny.chars().count() <= 29, "{tiny}");
        assert!(tiny.starts_with("[-------] 45/796"), "{tiny}");
    }

    #[test]
    fn finished_bar_is_full_and_says_how_long_it_took() {
        let done = Tick {
            elapsed: Duration::from_millis(19_300),
            frames: 795,
            total: Some(795),
            fps: 41.2,
            eta: None,
            done: true,
            ..readme_tick()
        };
        assert!(format_bar(&done, 100)
            .starts_with("[####################] 795/795 (100%) 41.2 fps in 19.3s | mux"));
        let unknown = Tick {
            total: None,
            eta: None,
            ..readme_tick()
        };
        assert!(
            format_bar(&unknown, 100).starts_with("[--------------------] 45 frames 44.6 fps |")
        );
    }

    #[test]
    fn live_table_has_a_row_per_source_with_its_status() {
        let source = |name: &str, frames, total, fps, status| SourceTick {
            name: name.into(),
            frames,
            total,
            fps,
            status,
        };
        let t = Tick {
            elapsed: Duration::from_millis(12_040),
            frames: 560,
            total: None,
            fps: 30.0,
            eta: None,
            stages: stages(),
            sources: vec![
                source("gate-cam", 360, None, 30.04, SourceStatus::Running),
                source(
                    "yard",
                    200,
                    None,
                    0.0,
                    SourceStatus::Stalled(Duration::from_millis(5300)),
                ),
                source("clip", 150, Some(150), 0.0, SourceStatus::Ended),
            ],
            done: false,
        };
        let lines = format_table(&t, 100);
        assert_eq!(
            lines,
            vec![
                "[  12.0s] source    frames     fps  status",
                "          gate-cam     360    30.0  running",
                "          yard         200     0.0  stalled (5s without a frame)",
                "          clip     150/150     0.0  ended",
                "          stages: mux 0.0ms q4 | preprocess 8.9ms q4 | detect 88.5ms q3",
            ]
        );
        for line in format_table(&t, 40) {
            assert!(line.chars().count() <= 39, "{line}");
        }
    }

    #[test]
    fn stalled_means_no_frame_for_more_than_two_intervals() {
        let second = Duration::from_secs(1);
        assert_eq!(
            SourceStatus::of(false, Duration::from_millis(1500), second),
            SourceStatus::Running
        );
        assert_eq!(
            SourceStatus::of(false, Duration::from_millis(2000), second),
            SourceStatus::Running
        );
        assert_eq!(
            SourceStatus::of(false, Duration::from_millis(2100), second),
            SourceStatus::Stalled(Duration::from_millis(2100))
        );
        assert_eq!(
            SourceStatus::of(true, Duration::from_secs(60), second),
            SourceStatus::Ended
        );
    }

    #[test]
    fn sources_added_at_run_time_join_the_report() {
        let added = Arc::new(SourceProgress::default());
        added.frames.store(7, Ordering::Relaxed);
        let offered = added.clone();
        let mut reporter = ProgressReporter::new(Watched {
            sources: vec![],
            stages: vec![],
            discover: Some(Box::new(move |known| {
                (known == 0)
                    .then(|| WatchedSource {
                        name: "gate".into(),
                        live: true,
                        progress: offered.clone(),
                        ended: Arc::new(AtomicBool::new(false)),
                    })
                    .into_iter()
                    .collect()
            })),
        });
        let t = reporter.sample(Duration::from_secs(1), false);
        assert_eq!(t.sources.len(), 1);
        assert_eq!((t.sources[0].name.as_str(), t.frames), ("gate", 7));
        let t = reporter.sample(Duration::from_secs(1), false);
        assert_eq!(t.sources.len(), 1, "a source is discovered once");
    }

    #[test]
    fn sampling_counts_frames_and_expected_totals() {
        let progress = Arc::new(SourceProgress::default());
        let ended = Arc::new(AtomicBool::new(false));
        let mut reporter = ProgressReporter::new(Watched {
            sources: vec![WatchedSource {
                name: "street".into(),
                live: false,
                progress: progress.clone(),
                ended: ended.clone(),
            }],
            stages: vec![],
            discover: None,
        });
        // Half of a 10 s clip: 50 frames, the newest at 5 s.
        progress.frames.store(50, Ordering::Relaxed);
        progress.position_ns.store(5_000_000_000, Ordering::Relaxed);
        progress
            .duration_ns
            .store(10_000_000_000, Ordering::Relaxed);
        let t = reporter.sample(Duration::from_secs(1), false);
        assert_eq!((t.frames, t.total), (50, Some(100)));
        assert_eq!(t.sources[0].status, SourceStatus::Running);
        assert!(t.eta.is_some());
        ended.store(true, Ordering::Relaxed);
        progress.frames.store(99, Ordering::Relaxed);
        progress.position_ns.store(9_900_000_000, Ordering::Relaxed);
        let t = reporter.sample(Duration::from_secs(1), true);
        assert_eq!(t.sources[0].status, SourceStatus::Ended);
        assert_eq!(t.total, Some(99), "an ended source's count is its total");

        // Stopped (Ctrl-C) a third of the way: the total stays what the clip holds.
        let (progress, ended) = (
            Arc::new(SourceProgress::default()),
            Arc::new(AtomicBool::new(true)),
        );
        let mut reporter = ProgressReporter::new(Watched {
            sources: vec![WatchedSource {
                name: "street".into(),
                live: false,
                progress: progress.clone(),
                ended,
            }],
            stages: vec![],
            discover: None,
        });
        progress.frames.store(33, Ordering::Relaxed);
        progress.position_ns.store(3_200_000_000, Ordering::Relaxed);
        progress
            .duration_ns
            .store(10_000_000_000, Ordering::Relaxed);
        let t = reporter.sample(Duration::from_secs(1), true);
        assert_eq!((t.frames, t.total), (33, Some(103)));
        assert_eq!(t.eta, None, "no ETA once finished");
    }
}
