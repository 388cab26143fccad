//! YOLOv8 / YOLO11 (ultralytics, anchor-free, no objectness): one output holding, per box,
//! cx, cy, w, h in network-input pixels and C class scores after the sigmoid. Ultralytics
//! exports it channels-first, [N, 4 + C, boxes] ("84 x 8400"); other exports transpose it to
//! channels-last, [N, boxes, 4 + C].

use std::sync::OnceLock;

use serde::Deserialize;

use super::decode::{center_box, detection, shape_error, ClassChoice};
use super::{options, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

/// Where the per-box values lie in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// [N, 4 + C, boxes]: all cx first, then all cy, ... (ultralytics' default export).
    ChannelsFirst,
    /// [N, boxes, 4 + C]: one row per box.
    ChannelsLast,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YoloV8 {
    /// Name of the output. Default "output0" (ultralytics' export).
    #[serde(default = "output_name")]
    output: String,
    /// Default: worked out from the output's shape where that is unambiguous (see
    /// [`resolve_layout`]).
    #[serde(default)]
    layout: Option<Layout>,
    /// The number of classes the model must have; also settles the layout.
    #[serde(default)]
    class_count: Option<usize>,
    /// Boxes are in 0..1 of the network input rather than pixels. Default false.
    #[serde(default)]
    normalized: bool,
    /// "best" (default) or "all" classes above the threshold per box.
    #[serde(default)]
    classes: ClassChoice,
    /// The layout `check` settled from the model's declared shape, so that every frame is
    /// read the same way even where the runtime shape alone would be ambiguous.
    #[serde(skip)]
    resolved: OnceLock<Layout>,
}

fn output_name() -> String {
    "output0".into()
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<YoloV8>(table)?;
    if parser.class_count == Some(0) {
        return Err("class_count must be at least 1".into());
    }
    Ok(Box::new(parser))
}

/// The layout of an output whose two non-batch dimensions are `a` and `b` (negative =
/// dynamic): the one with the `4 + class_count` channels when the class count is known;
/// otherwise a fixed dimension opposite a dynamic one is the channels (the box count follows
/// the input size); otherwise the smaller one is the channels (84 channels against 8400 boxes
/// at 640 x 640). Equal or unknown sizes are ambiguous: the user must set `layout`.
pub fn resolve_layout(a: i64, b: i64, class_count: Option<usize>) -> Result<Layout, String> {
    let dim = |d: i64| {
        if d < 0 {
            "?".to_string()
        } else {
            d.to_string()
        }
    };
    let ambiguous = || {
        format!(
            "cannot tell from shape [N, {}, {}] which dimension holds the boxes: set layout = \"channels-first\" or \"channels-last\"",
            dim(a),
            dim(b)
        )
    };
    if let Some(c) = class_count {
        let channels = i64::try_from(c + 4).map_err(|_| "class_count is too large".to_string())?;
        return match (a == channels, b == channels) {
            (true, false) => Ok(Layout::ChannelsFirst),
            (false, true) => Ok(Layout::ChannelsLast),
            (true, true) => Err(ambiguous()),
            (false, false) if a < 0 && b >= 0 => Ok(Layout::ChannelsFirst),
            (false, false) if b < 0 && a >= 0 => Ok(Layout::ChannelsLast),
            (false, false) if a < 0 && b < 0 => Err(ambiguous()),
            (false, false) => Err(format!(
                "neither dimension of [N, {a}, {b}] is 4 + class_count = {channels}"
            )),
        };
    }
    match (a < 0, b < 0) {
        (false, true) => Ok(Layout::ChannelsFirst),
        (true, false) => Ok(Layout::ChannelsLast),
        (true, true) => Err(ambiguous()),
        (false, false) if a < b => Ok(Layout::ChannelsFirst),
        (false, false) if b < a => Ok(Layout::ChannelsLast),
        (false, false) => Err(ambiguous()),
    }
}

impl YoloV8 {
    fn layout_for(&self, a: i64, b: i64) -> Result<Layout, String> {
        match self.layout.or_else(|| self.resolved.get().copied()) {
            Some(l) => Ok(l),
            None => resolve_layout(a, b, self.class_count),
        }
    }
}

impl OutputParser for YoloV8 {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let shape = io.require_output(&self.output)?;
        let &[_, a, b] = shape else {
            return Err(format!(
                "output `{}` has shape {}, expected [N, 4 + classes, boxes] or [N, boxes, 4 + classes]",
                self.output,
                ModelIo::shape_text(shape)
            ));
        };
        let layout = self
            .layout_for(a, b)
            .map_err(|e| format!("output `{}`: {e}", self.output))?;
        let channels = match layout {
            Layout::ChannelsFirst => a,
            Layout::ChannelsLast => b,
        };
        if let Some(c) = self.class_count {
            if channels >= 0 && usize::try_from(channels).ok() != c.checked_add(4) {
                return Err(format!(
                    "output `{}` has {channels} values per box, class_count = {c} needs {}",
                    self.output,
                    c + 4
                ));
            }
        }
        if (0..5).contains(&channels) {
            return Err(format!(
                "output `{}` has {channels} values per box, YOLOv8 needs 4 + at least one class",
                self.output
            ));
        }
        // Keep the layout the declared shape settled (the first model checked wins).
        let _ = self.resolved.set(layout);
        Ok(())
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let &[_, a, b] = io.output_shape(&self.output)? else {
            return None;
        };
        let channels = match self.layout_for(a, b).ok()? {
            Layout::ChannelsFirst => a,
            Layout::ChannelsLast => b,
        };
        usize::try_from(channels)
            .ok()?
            .checked_sub(4)
            .filter(|c| *c > 0)
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (shape, data) = input.image_of(&self.output)?;
        let expected = "[N, 4 + classes, boxes] or [N, boxes, 4 + classes]";
        let &[_, a, b] = shape else {
            return Err(shape_error("yolov8", &self.output, shape, expected));
        };
        let dim = |d: usize| i64::try_from(d).unwrap_or(i64::MAX);
        let layout = self
            .layout_for(dim(a), dim(b))
            .map_err(|e| StageError::Runtime(format!("yolov8 parser: {e}")))?;
        let (channels, boxes) = match layout {
            Layout::ChannelsFirst => (a, b),
            Layout::ChannelsLast => (b, a),
        };
        if channels < 5 || self.class_count.is_some_and(|c| c + 4 != channels) {
            return Err(shape_error("yolov8", &self.output, shape, expected));
        }
        // Value `k` of box `i`, whichever the layout; indices stay within `data`, which holds
        // exactly channels × boxes values.
        let at = |i: usize, k: usize| match layout {
            Layout::ChannelsFirst => data[k * boxes + i],
            Layout::ChannelsLast => data[i * channels + k],
        };
        let (sx, sy) = if self.normalized {
            (input.net_width, input.net_height)
        } else {
            (1.0, 1.0)
        };
        let mut detections = Vec::new();
        for i in 0..boxes {
            let mut chosen: Vec<(usize, f32)> = Vec::new();
            self.classes.pick(
                channels - 4,
                input.min_score,
                |c| at(i, 4 + c),
                |c, s| chosen.push((c, s)),
            );
            if chosen.is_empty() {
                continue;
            }
            let Some(bbox) = center_box(at(i, 0), at(i, 1), at(i, 2), at(i, 3), sx, sy) else {
                continue;
            };
            detections.extend(chosen.into_iter().map(|(c, s)| detection(c, s, bbox)));
        }
        Ok(Parsed {
            detections,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::backend::OutputTensor;

    fn parser(options: &str) -> Box<dyn OutputParser> {
        build(&toml::from_str(options).unwrap()).unwrap()
    }

    fn output(shape: Vec<usize>, data: Vec<f32>) -> Vec<OutputTensor> {
        vec![OutputTensor {
            name: "output0".into(),
            shape,
            data,
        }]
    }

    fn parse(p: &dyn OutputParser, outputs: &[OutputTensor]) -> Result<Parsed, StageError> {
        p.parse(&ParseInput {
            outputs,
            index: 0,
            net_width: 640.0,
            net_height: 640.0,
            min_score: 0.5,
        })
    }

    fn io(shape: Vec<i64>) -> ModelIo {
        ModelIo {
            input_name: "images".into(),
            input_shape: vec![1, 3, 640, 640],
            outputs: vec![("output0".into(), shape)],
        }
    }

    /// Two boxes, two classes; box 1 scores 0.8 for class 1.
    #[rustfmt::skip]
    const ROWS: [[f32; 6]; 2] = [
        [10.0, 10.0, 4.0, 4.0, 0.3, 0.2],
        [100.0, 200.0, 20.0, 40.0, 0.6, 0.8],
    ];

    #[test]
    fn both_layouts_read_the_same_boxes() {
        let last: Vec<f32> = ROWS.iter().flatten().copied().collect();
        let first: Vec<f32> = (0..6)
            .flat_map(|k| ROWS.iter().map(move |r| r[k]))
            .collect();
        for (outputs, options) in [
            (
                output(vec![1, 2, 6], last.clone()),
                "layout = 'channels-last'",
            ),
            (
                output(vec![1, 6, 2], first.clone()),
                "layout = 'channels-first'",
            ),
            (output(vec![1, 6, 2], first), "class_count = 2"),
            (output(vec![1, 2, 6], last), "class_count = 2"),
        ] {
            let d = parse(parser(options).as_ref(), &outputs)
                .unwrap()
                .detections;
            assert_eq!(d.len(), 1, "{options}");
            assert_eq!((d[0].class_id, d[0].confidence), (1, 0.8));
            assert_eq!((d[0].bbox.left, d[0].bbox.top), (90.0, 180.0));
            assert_eq!((d[0].bbox.width, d[0].bbox.height), (20.0, 40.0));
        }
    }

    #[test]
    fn layout_is_detected_where_the_shape_settles_it() {
        use Layout::*;
        assert_eq!(resolve_layout(84, 8400, None), Ok(ChannelsFirst));
        assert_eq!(resolve_layout(8400, 84, None), Ok(ChannelsLast));
        assert_eq!(resolve_layout(84, -1, None), Ok(ChannelsFirst));
        assert_eq!(resolve_layout(-1, 84, None), Ok(ChannelsLast));
        assert_eq!(resolve_layout(21, 84, Some(80)), Ok(ChannelsLast));
        assert!(resolve_layout(84, 84, None)
            .unwrap_err()
            .contains("set layout"));
        assert!(resolve_layout(-1, -1, None)
            .unwrap_err()
            .contains("[N, ?, ?]"));
        assert!(resolve_layout(10, 20, Some(80)).unwrap_err().contains("84"));
        // The declared shape settles it once, even where a runtime shape would not.
        let p = parser("");
        p.check(&io(vec![1, 6, -1])).unwrap();
        let square: Vec<f32> = vec![0.0; 36];
        assert!(parse(p.as_ref(), &output(vec![1, 6, 6], square)).is_ok());
        assert_eq!(p.class_count(&io(vec![1, 84, 8400])), Some(80));
    }

    #[test]
    fn bad_shapes_and_values_are_errors_or_skipped_never_panics() {
        let p = parser("");
        let err = p.check(&io(vec![1, 8400])).unwrap_err();
        assert!(err.contains("output0"), "{err}");
        assert!(p
            .check(&io(vec![1, 4, 8400]))
            .unwrap_err()
            .contains("at least one class"));
        let err = parser("class_count = 3")
            .check(&io(vec![1, 84, 8400]))
            .unwrap_err();
        assert!(err.contains("7"), "{err}");
        for (shape, len) in [(vec![1, 4, 9], 36), (vec![1, 84], 84), (vec![1, 6, 3], 17)] {
            assert!(
                parse(p.as_ref(), &output(shape.clone(), vec![0.0; len])).is_err(),
                "{shape:?}"
            );
        }
        let nan = output(vec![1, 1, 6], vec![f32::NAN, 0.0, 1.0, 1.0, 0.9, f32::NAN]);
        let d = parse(parser("layout = 'channels-last'").as_ref(), &nan).unwrap();
        assert!(d.detections.is_empty());
        let inf = output(vec![1, 1, 6], vec![0.0, 0.0, f32::INFINITY, 1.0, 0.9, 0.1]);
        let d = parse(parser("layout = 'channels-last'").as_ref(), &inf).unwrap();
        assert!(d.detections.is_empty());
        assert!(build(&toml::from_str("layout = 'rows'").unwrap()).is_err());
    }
}
