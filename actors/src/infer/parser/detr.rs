//! DETR-style set prediction: class `logits` [N, Q, C + 1] per query, softmaxed, the last
//! column meaning "no object", and `boxes` [N, Q, 4] as cx, cy, w, h in 0..1 of the network
//! input. Each query gives at most one detection, its best real class. With
//! `activation = "sigmoid"` the logits have no "no object" column and each class is a
//! sigmoid (Deformable DETR, RT-DETR). The model did its own de-duplication: pair it with
//! `nms = "none"` on the stage.

use serde::Deserialize;

use super::decode::{center_box, detection, shape_error, sigmoid, softmax_into, ClassChoice};
use super::{check_shape, options, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Activation {
    /// Softmax over C + 1 columns, the last one "no object" (DETR).
    #[default]
    Softmax,
    /// An independent sigmoid per class, no "no object" column.
    Sigmoid,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Detr {
    /// Name of the class logits output. Default "logits".
    #[serde(default = "logits_name")]
    logits_output: String,
    /// Name of the boxes output. Default "pred_boxes" (the Hugging Face export's name).
    #[serde(default = "boxes_name")]
    boxes_output: String,
    #[serde(default)]
    activation: Activation,
}

fn logits_name() -> String {
    "logits".into()
}
fn boxes_name() -> String {
    "pred_boxes".into()
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    Ok(Box::new(options::<Detr>(table)?))
}

impl Detr {
    /// Real classes among `columns` logits.
    fn classes(&self, columns: usize) -> usize {
        match self.activation {
            Activation::Softmax => columns.saturating_sub(1),
            Activation::Sigmoid => columns,
        }
    }
}

impl OutputParser for Detr {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let logits = match self.activation {
            Activation::Softmax => "[N, queries, classes + 1]",
            Activation::Sigmoid => "[N, queries, classes]",
        };
        check_shape(io, &self.logits_output, &[None, None, None], logits)?;
        check_shape(
            io,
            &self.boxes_output,
            &[None, None, Some(4)],
            "[N, queries, 4]",
        )?;
        if self.class_count(io) == Some(0) {
            return Err(format!(
                "output `{}` has no class columns, expected {logits}",
                self.logits_output
            ));
        }
        let queries = |name: &str| io.output_shape(name).and_then(|s| s.get(1).copied());
        match (queries(&self.logits_output), queries(&self.boxes_output)) {
            (Some(a), Some(b)) if a >= 0 && b >= 0 && a != b => Err(format!(
                "outputs `{}` and `{}` disagree on the number of queries ({a} and {b})",
                self.logits_output, self.boxes_output
            )),
            _ => Ok(()),
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let columns = *io.output_shape(&self.logits_output)?.get(2)?;
        Some(self.classes(usize::try_from(columns).ok()?))
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (logit_shape, logits) = input.image_of(&self.logits_output)?;
        let (box_shape, boxes) = input.image_of(&self.boxes_output)?;
        let (queries, columns) = match (logit_shape, box_shape) {
            ([_, q, c], [_, q2, 4]) if q == q2 && self.classes(*c) > 0 => (*q, *c),
            _ => {
                return Err(shape_error(
                    "detr",
                    &self.logits_output,
                    logit_shape,
                    &format!("[N, queries, classes + 1] beside boxes {box_shape:?}"),
                ))
            }
        };
        let classes = self.classes(columns);
        let mut probabilities = Vec::with_capacity(columns);
        let mut detections = Vec::new();
        for q in 0..queries {
            let row = &logits[q * columns..(q + 1) * columns];
            match self.activation {
                Activation::Softmax => softmax_into(row, &mut probabilities),
                Activation::Sigmoid => {
                    probabilities.clear();
                    probabilities.extend(row.iter().map(|&v| sigmoid(v)));
                }
            }
            let b = &boxes[q * 4..q * 4 + 4];
            let Some(bbox) = center_box(b[0], b[1], b[2], b[3], input.net_width, input.net_height)
            else {
                continue;
            };
            ClassChoice::Best.pick(
                classes,
                input.min_score,
                |c| probabilities[c],
                |c, s| detections.push(detection(c, s, bbox)),
            );
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

    fn outputs(queries: usize, logits: Vec<f32>, boxes: Vec<f32>) -> Vec<OutputTensor> {
        let columns = logits.len() / queries.max(1);
        vec![
            OutputTensor {
                name: "logits".into(),
                shape: vec![1, queries, columns],
                data: logits,
            },
            OutputTensor {
                name: "pred_boxes".into(),
                shape: vec![1, queries, 4],
                data: boxes,
            },
        ]
    }

    fn parse(options: &str, outputs: &[OutputTensor]) -> Result<Parsed, StageError> {
        build(&toml::from_str(options).unwrap())
            .unwrap()
            .parse(&ParseInput {
                outputs,
                index: 0,
                net_width: 400.0,
                net_height: 200.0,
                min_score: 0.5,
            })
    }

    #[test]
    fn softmax_skips_no_object_and_boxes_scale_to_the_input() {
        let ln3 = 3f32.ln();
        // Query 0: class 1 has 3/5 of the mass; query 1: "no object" wins.
        let logits = vec![0.0, ln3, 0.0, 0.0, 0.0, 5.0];
        let boxes = vec![0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1];
        let d = parse("", &outputs(2, logits, boxes)).unwrap().detections;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        assert!((d[0].confidence - 0.6).abs() < 1e-6);
        assert_eq!((d[0].bbox.left, d[0].bbox.top), (100.0, 50.0));
        assert_eq!((d[0].bbox.width, d[0].bbox.height), (200.0, 100.0));
        // Sigmoid: every column is a class.
        let d = parse(
            "activation = 'sigmoid'",
            &outputs(1, vec![-3.0, 2.0], vec![0.5; 4]),
        )
        .unwrap()
        .detections;
        assert_eq!(d[0].class_id, 1);
        assert!((d[0].confidence - sigmoid(2.0)).abs() < 1e-6);
    }

    #[test]
    fn disagreeing_or_odd_shapes_are_errors_and_nan_is_skipped() {
        assert!(parse("", &outputs(2, vec![0.0; 6], vec![0.0; 4])).is_err());
        assert!(parse("", &outputs(2, vec![0.0; 2], vec![0.0; 8])).is_err());
        let nan = parse("", &outputs(1, vec![f32::NAN, 1.0, 0.0], vec![0.5; 4])).unwrap();
        assert!(nan.detections.is_empty());
        let inf = parse(
            "",
            &outputs(1, vec![9.0, 0.0, 0.0], vec![0.5, f32::INFINITY, 0.1, 0.1]),
        );
        assert!(inf.unwrap().detections.is_empty());
        let io = |logits, boxes| ModelIo {
            input_name: "pixel_values".into(),
            input_shape: vec![1, 3, 800, 800],
            outputs: vec![("logits".into(), logits), ("pred_boxes".into(), boxes)],
        };
        let p = build(&toml::Table::new()).unwrap();
        assert!(p.check(&io(vec![1, 100, 92], vec![1, 100, 4])).is_ok());
        assert_eq!(
            p.class_count(&io(vec![1, 100, 92], vec![1, 100, 4])),
            Some(91)
        );
        let err = p.check(&io(vec![1, 100, 92], vec![1, 50, 4])).unwrap_err();
        assert!(err.contains("100 and 50"), "{err}");
        let err = p.check(&io(vec![1, 100, 1], vec![1, 100, 4])).unwrap_err();
        assert!(err.contains("no class columns"), "{err}");
        let err = build(&toml::from_str("boxes_output = 'boxes'").unwrap())
            .unwrap()
            .check(&io(vec![1, 100, 92], vec![1, 100, 4]))
            .unwrap_err();
        assert!(err.contains("no output `boxes`"), "{err}");
    }
}
