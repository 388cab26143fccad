//! Output parsers: model outputs → candidate detections in network-input pixels.

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::ort_backend::{ModelIo, OutputTensor};
use crate::stage::StageError;

/// One candidate object, before or after mapping to frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class_id: i32,
    pub confidence: f32,
    pub bbox: BBox,
}

/// Corner order of the boxes tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// ymin, xmin, ymax, xmax (TensorFlow Object Detection API).
    #[default]
    Yxyx,
    /// xmin, ymin, xmax, ymax.
    Xyxy,
}

/// Which parser reads the model's outputs, and its options.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ParserSettings {
    /// SSD-style outputs already decoded against the anchors: `boxes` [N, A, 4] and per-class
    /// `scores` [N, A, C] (post-sigmoid or softmax).
    Ssd {
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
    },
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

fn find<'a>(outputs: &'a [OutputTensor], name: &str) -> Result<&'a OutputTensor, StageError> {
    outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| StageError::Runtime(format!("model produced no output named `{name}`")))
}

impl ParserSettings {
    /// Checks at build time that the model has the outputs this parser reads, with the ranks
    /// it expects.
    pub(super) fn check_outputs(
        &self,
        io: &ModelIo,
        model: &std::path::Path,
    ) -> Result<(), StageError> {
        match self {
            ParserSettings::Ssd {
                boxes_output,
                scores_output,
                ..
            } => {
                for (name, last) in [(boxes_output, Some(4)), (scores_output, None)] {
                    let shape = io.output_shape(name).ok_or_else(|| {
                        StageError::Settings(format!(
                            "model {} has no output `{name}` (outputs: {}); set parser.boxes_output / parser.scores_output",
                            model.display(),
                            io.output_names().join(", ")
                        ))
                    })?;
                    let rank_ok = shape.len() == 3;
                    let last_ok = last.is_none_or(|l| shape[2] < 0 || shape[2] == l);
                    if !rank_ok || !last_ok {
                        return Err(StageError::Settings(format!(
                            "model {} output `{name}` has shape {}, the ssd parser expects [N, anchors, {}]",
                            model.display(),
                            ModelIo::shape_text(shape),
                            last.map_or("classes".to_string(), |l| l.to_string())
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// Candidates of image `index` of the batch, in network pixels, with score >= `threshold`.
    pub fn parse(
        &self,
        outputs: &[OutputTensor],
        index: usize,
        net_w: f32,
        net_h: f32,
        threshold: f32,
    ) -> Result<Vec<Detection>, StageError> {
        match self {
            ParserSettings::Ssd {
                boxes_output,
                scores_output,
                box_format,
                normalized,
                background_class,
            } => {
                let boxes = find(outputs, boxes_output)?;
                let scores = find(outputs, scores_output)?;
                let (anchors, classes) = match (boxes.shape.as_slice(), scores.shape.as_slice()) {
                    ([_, a, 4], [_, a2, c]) if a == a2 => (*a, *c),
                    (b, s) => {
                        return Err(StageError::Runtime(format!(
                            "ssd parser: boxes shape {b:?} and scores shape {s:?} do not agree"
                        )))
                    }
                };
                let boxes = boxes.image(index, anchors * 4)?;
                let scores = scores.image(index, anchors * classes)?;
                let (sx, sy) = if *normalized {
                    (net_w, net_h)
                } else {
                    (1.0, 1.0)
                };
                let mut found = Vec::new();
                for a in 0..anchors {
                    for c in 0..classes {
                        if Some(c) == *background_class {
                            continue;
                        }
                        let score = scores[a * classes + c];
                        // Written so that NaN from a broken model is rejected too.
                        if score.partial_cmp(&threshold).is_none_or(|o| o.is_lt()) {
                            continue;
                        }
                        let b = &boxes[a * 4..a * 4 + 4];
                        let (x0, y0, x1, y1) = match box_format {
                            BoxFormat::Yxyx => (b[1], b[0], b[3], b[2]),
                            BoxFormat::Xyxy => (b[0], b[1], b[2], b[3]),
                        };
                        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
                            continue;
                        }
                        found.push(Detection {
                            class_id: c as i32,
                            confidence: score,
                            bbox: BBox::from_corners(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
                        });
                    }
                }
                Ok(found)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssd() -> ParserSettings {
        toml::from_str::<ParserSettings>("type = 'ssd'\nbackground_class = 0").unwrap()
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
        let d = ssd().parse(&outputs, 0, 300.0, 100.0, 0.5).unwrap();
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
        assert!(ssd().parse(&outputs, 0, 1.0, 1.0, 0.5).is_err());
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
        assert!(ssd().parse(&short, 0, 1.0, 1.0, 0.5).is_err());
    }
}
