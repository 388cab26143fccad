//! SSD-style outputs already decoded against the anchors: `boxes` [N, A, 4] and per-class
//! `scores` [N, A, C] (post-sigmoid or softmax), as the TensorFlow Object Detection API and
//! most ONNX exports with built-in decoding produce them.

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::{check_shape, options, passes, Detection, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

/// Corner order of a boxes tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// ymin, xmin, ymax, xmax (TensorFlow Object Detection API).
    #[default]
    Yxyx,
    /// xmin, ymin, xmax, ymax.
    Xyxy,
}

impl BoxFormat {
    /// (x0, y0, x1, y1) of a box in this format.
    pub fn corners(self, b: &[f32]) -> (f32, f32, f32, f32) {
        match self {
            BoxFormat::Yxyx => (b[1], b[0], b[3], b[2]),
            BoxFormat::Xyxy => (b[0], b[1], b[2], b[3]),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ssd {
    /// Name of the boxes output. Default "boxes".
    #[serde(default = "boxes_name")]
    boxes_output: String,
    /// Name of the scores output. Default "scores".
    #[serde(default = "scores_name")]
    scores_output: String,
    #[serde(default)]
    box_format: BoxFormat,
    /// Boxes are in 0..1 of the network input rather than pixels. Default true.
    #[serde(default = "yes")]
    normalized: bool,
    /// Score column that means "no object" and is never reported.
    #[serde(default)]
    background_class: Option<usize>,
}

fn boxes_name() -> String {
    "boxes".into()
}
fn scores_name() -> String {
    "scores".into()
}
fn yes() -> bool {
    true
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    Ok(Box::new(options::<Ssd>(table)?))
}

impl OutputParser for Ssd {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        check_shape(
            io,
            &self.boxes_output,
            &[None, None, Some(4)],
            "[N, anchors, 4]",
        )?;
        check_shape(
            io,
            &self.scores_output,
            &[None, None, None],
            "[N, anchors, classes]",
        )
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let classes = *io.output_shape(&self.scores_output)?.get(2)?;
        usize::try_from(classes).ok()
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (box_shape, boxes) = input.image_of(&self.boxes_output)?;
        let (score_shape, scores) = input.image_of(&self.scores_output)?;
        let (anchors, classes) = match (box_shape, score_shape) {
            ([_, a, 4], [_, a2, c]) if a == a2 => (*a, *c),
            (b, s) => {
                return Err(StageError::Runtime(format!(
                    "ssd parser: boxes shape {b:?} and scores shape {s:?} do not agree"
                )))
            }
        };
        let (sx, sy) = if self.normalized {
            (input.net_width, input.net_height)
        } else {
            (1.0, 1.0)
        };
        let mut found = Vec::new();
        for a in 0..anchors {
            for c in 0..classes {
                if Some(c) == self.background_class {
                    continue;
                }
                let score = scores[a * classes + c];
                if !passes(score, input.min_score) {
                    continue;
                }
                let (x0, y0, x1, y1) = self.box_format.corners(&boxes[a * 4..a * 4 + 4]);
                if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
                    continue;
                }
                found.push(Detection {
                    class_id: c as i32,
                    confidence: score,
                    bbox: BBox::from_corners(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
                    ..Default::default()
                });
            }
        }
        Ok(Parsed {
            detections: found,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::backend::OutputTensor;

    fn ssd() -> Box<dyn OutputParser> {
        build(&toml::from_str("background_class = 0").unwrap()).unwrap()
    }

    fn input(outputs: &[OutputTensor], w: f32, h: f32) -> ParseInput<'_> {
        ParseInput {
            outputs,
            index: 0,
            net_width: w,
            net_height: h,
            min_score: 0.5,
        }
    }

    #[test]
    fn ssd_reads_yxyx_normalised_boxes_and_skips_background() {
        let outputs = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 2, 4],
                data: vec![0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.0],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.99, 0.8, 0.9, 0.1],
            },
        ];
        let d = ssd()
            .parse(&input(&outputs, 300.0, 100.0))
            .unwrap()
            .detections;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        let b = d[0].bbox;
        assert!((b.left - 60.0).abs() < 1e-4 && (b.top - 10.0).abs() < 1e-4);
        assert!((b.right() - 180.0).abs() < 1e-4 && (b.bottom() - 50.0).abs() < 1e-4);
    }

    #[test]
    fn mismatched_output_shapes_are_an_error_not_a_panic() {
        let outputs = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 3, 4],
                data: vec![0.0; 12],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.0; 4],
            },
        ];
        assert!(ssd().parse(&input(&outputs, 1.0, 1.0)).is_err());
        let short = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 2, 4],
                data: vec![0.0; 3],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.0; 4],
            },
        ];
        assert!(ssd().parse(&input(&short, 1.0, 1.0)).is_err());
    }

    #[test]
    fn unknown_options_are_named() {
        let err = build(&toml::from_str("box_fromat = 'xyxy'").unwrap())
            .err()
            .unwrap();
        assert!(err.contains("box_fromat"), "{err}");
    }
}
