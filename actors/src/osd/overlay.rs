//! The per-frame text overlay: a format string checked at load time, and the per-stream frame
//! rate it can show (like deepstream-app's performance line, but drawn into the picture).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use vidmesh_protocol::FrameMeta;

use crate::stage::StageError;

/// One piece of a parsed format string.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Source,
    SourceId,
    Frame,
    /// Frames per second with this many decimals.
    Fps(usize),
    Count,
    Counts,
}

const FIELDS: &str = "{source}, {source_id}, {frame}, {fps} or {fps:.N}, {count}, {counts}";

/// A checked overlay format string.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlayTemplate {
    pieces: Vec<Piece>,
}

impl OverlayTemplate {
    /// Parses `{field}` placeholders; `{{` and `}}` are literal braces. Unknown fields are an
    /// error that lists the known ones.
    pub fn parse(format: &str) -> Result<Self, StageError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(StageError::Settings(format!(
                                    "overlay `{format}`: `{{{name}` is not closed with }}"
                                )))
                            }
                        }
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Self::field(&name).ok_or_else(|| {
                        StageError::Settings(format!(
                            "overlay `{format}`: unknown field `{{{name}}}`; known: {FIELDS}"
                        ))
                    })?);
                }
                '}' => {
                    return Err(StageError::Settings(format!(
                        "overlay `{format}`: a lone }} (write }}}} for a brace)"
                    )))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    fn field(name: &str) -> Option<Piece> {
        Some(match name {
            "source" => Piece::Source,
            "source_id" => Piece::SourceId,
            "frame" => Piece::Frame,
            "fps" => Piece::Fps(1),
            "count" => Piece::Count,
            "counts" => Piece::Counts,
            _ => {
                let decimals = name.strip_prefix("fps:.")?.parse::<usize>().ok()?;
                Piece::Fps(decimals.min(6))
            }
        })
    }

    /// The overlay text of `frame` at `fps` frames per second.
    pub fn render(&self, frame: &FrameMeta, fps: f64) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            // Writing into a String cannot fail.
            let _ = match piece {
                Piece::Literal(s) => write!(out, "{s}"),
                Piece::Source => write!(out, "{}", frame.source_name),
                Piece::SourceId => write!(out, "{}", frame.source_id),
                Piece::Frame => write!(out, "{}", frame.frame_num),
                Piece::Fps(d) => write!(out, "{fps:.d$}", d = *d),
                Piece::Count => write!(out, "{}", frame.objects.len()),
                Piece::Counts => write!(out, "{}", class_counts(frame)),
            };
        }
        out
    }
}

/// `person: 3  car: 1`, labels in alphabetical order; objects without a label count under
/// their class id.
fn class_counts(frame: &FrameMeta) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in &frame.objects {
        let key = if o.label.is_empty() {
            format!("class {}", o.class_id)
        } else {
            o.label.clone()
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// How fast a stream's frames reach the OSD, over the last couple of seconds of wall-clock
/// time (what a user watching the output wants to know: is this stream keeping up).
#[derive(Debug, Default)]
pub struct FpsMeter {
    arrivals: VecDeque<Instant>,
}

const FPS_WINDOW: Duration = Duration::from_secs(2);
/// Bounds the window's memory whatever the frame rate.
const FPS_MAX_SAMPLES: usize = 1024;

impl FpsMeter {
    /// Records a frame arriving at `now` and returns the current rate (0 until two arrivals
    /// are apart in time).
    pub fn tick(&mut self, now: Instant) -> f64 {
        self.arrivals.push_back(now);
        while self.arrivals.len() > FPS_MAX_SAMPLES
            || self
                .arrivals
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > FPS_WINDOW)
        {
            self.arrivals.pop_front();
        }
        let (Some(first), Some(last)) = (self.arrivals.front(), self.arrivals.back()) else {
            return 0.0;
        };
        let span = last.saturating_duration_since(*first).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        (self.arrivals.len() - 1) as f64 / span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::ObjectMeta;

    fn object(label: &str) -> ObjectMeta {
        ObjectMeta {
            label: label.into(),
            ..Default::default()
        }
    }

    #[test]
    fn template_fills_every_field() {
        let t = OverlayTemplate::parse(
            "{{{source}}} #{source_id} f{frame} {fps:.2} fps {fps} n={count} [{counts}]",
        )
        .unwrap();
        let frame = FrameMeta {
            source_id: 3,
            source_name: "cam3".into(),
            frame_num: 42,
            objects: vec![object("person"), object("car"), object("person")],
            ..Default::default()
        };
        assert_eq!(
            t.render(&frame, 29.97),
            "{cam3} #3 f42 29.97 fps 30.0 n=3 [car: 1  person: 2]"
        );
    }

    #[test]
    fn malformed_templates_are_refused_with_the_reason() {
        for (f, needle) in [
            ("{fps", "not closed"),
            ("fps}", "lone"),
            ("{speed}", "unknown field `{speed}`"),
            ("{fps:2}", "unknown field"),
        ] {
            let err = OverlayTemplate::parse(f).unwrap_err().to_string();
            assert!(err.contains(needle), "{f}: {err}");
        }
    }

    #[test]
    fn fps_counts_frames_over_the_window() {
        let mut m = FpsMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.tick(t0), 0.0);
        let mut fps = 0.0;
        for i in 1..=10 {
            fps = m.tick(t0 + Duration::from_millis(100 * i));
        }
        assert!((fps - 10.0).abs() < 1e-9, "{fps}");
        // Much later: the old arrivals have left the window.
        let later = t0 + Duration::from_secs(60);
        m.tick(later);
        let fps = m.tick(later + Duration::from_millis(50));
        assert!((fps - 20.0).abs() < 1e-9, "{fps}");
    }
}
