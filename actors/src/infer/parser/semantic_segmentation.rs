//! Semantic segmentation: a class per pixel of the model's output map, either from per-class
//! scores [N, C, H, W] (argmax over C, optionally only where the best score reaches
//! `threshold`) or from class ids the model already chose, [N, H, W] (an ArgMax inside the
//! model; integer outputs arrive as float). The map may be smaller than the network input
//! (most models output 1/4 or 1/8 of it); the stage records how it maps to the frame.

use serde::Deserialize;

use super::{check_shape, options, OutputParser, ParseInput, Parsed, Segmentation};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SemanticSegmentation {
    /// Output to read. Default "output".
    #[serde(default = "output_name")]
    output: String,
    /// Pixels whose best class scores below this get no class. Default: none (every pixel
    /// gets its best class). Compared after `softmax` when that is on.
    #[serde(default)]
    threshold: Option<f32>,
    /// The scores are logits: compare `threshold` with the softmax probability of the best
    /// class. Default false (the argmax is the same either way).
    #[serde(default)]
    softmax: bool,
}

fn output_name() -> String {
    "output".into()
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<SemanticSegmentation>(table)?;
    if parser.threshold.is_some_and(|t| !t.is_finite()) {
        return Err("threshold must be a number".into());
    }
    Ok(Box::new(parser))
}

/// A class id the model wrote as a float: a non-negative integer, else none (-1).
fn class_id(v: f32) -> i32 {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= i32::MAX as f32 {
        v as i32
    } else {
        -1
    }
}

impl SemanticSegmentation {
    fn scores_map(&self, scores: &[f32], classes: usize, h: usize, w: usize) -> Vec<i32> {
        let plane = h * w;
        (0..plane)
            .map(|p| {
                let mut best: Option<(usize, f32)> = None;
                for c in 0..classes {
                    let v = scores[c * plane + p];
                    // NaN never wins; ties keep the lower class, as numpy's argmax does.
                    if v.is_nan() {
                        continue;
                    }
                    if best.is_none_or(|(_, b)| v > b) {
                        best = Some((c, v));
                    }
                }
                let Some((c, v)) = best else { return -1 };
                let Some(threshold) = self.threshold else {
                    return c as i32;
                };
                let score = if self.softmax {
                    // exp(v - v) = 1 over the sum of exp(others - v): finite as v is the max.
                    let sum: f32 = (0..classes)
                        .map(|k| scores[k * plane + p])
                        .filter(|s| !s.is_nan())
                        .map(|s| (s - v).exp())
                        .sum();
                    1.0 / sum
                } else {
                    v
                };
                if super::passes(score, threshold) {
                    c as i32
                } else {
                    -1
                }
            })
            .collect()
    }
}

impl OutputParser for SemanticSegmentation {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let shape = io.require_output(&self.output)?;
        match shape.len() {
            3 => Ok(()),
            _ => check_shape(
                io,
                &self.output,
                &[None, None, None, None],
                "[N, classes, H, W] scores or [N, H, W] class ids",
            ),
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        match io.output_shape(&self.output)? {
            [_, c, _, _] => usize::try_from(*c).ok(),
            _ => None,
        }
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (shape, values) = input.image_of(&self.output)?;
        let (height, width, class_map) = match *shape {
            [_, h, w] => (h, w, values.iter().map(|&v| class_id(v)).collect::<Vec<i32>>()),
            [_, c, h, w] if c > 0 => (h, w, self.scores_map(values, c, h, w)),
            _ => {
                return Err(StageError::Runtime(format!(
                    "semantic-segmentation parser: output `{}` has shape {shape:?}, expected [N, classes, H, W] or [N, H, W]",
                    self.output
                )))
            }
        };
        Ok(Parsed {
            segmentation: Some(Segmentation {
                width,
                height,
                class_map,
            }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::backend::OutputTensor;

    fn run(options: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Segmentation, StageError> {
        let outputs = vec![OutputTensor {
            name: "output".into(),
            shape,
            data,
        }];
        let parsed = build(&toml::from_str(options).unwrap())
            .unwrap()
            .parse(&ParseInput {
                outputs: &outputs,
                index: 0,
                net_width: 4.0,
                net_height: 2.0,
                min_score: 0.5,
            })?;
        Ok(parsed.segmentation.expect("a map"))
    }

    #[test]
    fn argmax_with_threshold_and_nan() {
        // 2 classes, 1x3 map.
        let data = vec![0.9, 0.2, f32::NAN, 0.1, 0.3, f32::NAN];
        let s = run("", vec![1, 2, 1, 3], data.clone()).unwrap();
        assert_eq!((s.width, s.height), (3, 1));
        assert_eq!(s.class_map, vec![0, 1, -1]);
        let s = run("threshold = 0.5", vec![1, 2, 1, 3], data).unwrap();
        assert_eq!(s.class_map, vec![0, -1, -1]);
    }

    #[test]
    fn softmax_threshold_uses_probabilities() {
        // Logits (2, 0) → p = 0.88; (0.1, 0) → p = 0.52.
        let data = vec![2.0, 0.1, 0.0, 0.0];
        let s = run("softmax = true\nthreshold = 0.6", vec![1, 2, 1, 2], data).unwrap();
        assert_eq!(s.class_map, vec![0, -1]);
    }

    #[test]
    fn class_ids_are_read_and_odd_values_are_no_class() {
        let data = vec![0.0, 3.0, -1.0, 2.5, f32::INFINITY, 7.0];
        let s = run("", vec![1, 2, 3], data).unwrap();
        assert_eq!((s.width, s.height), (3, 2));
        assert_eq!(s.class_map, vec![0, 3, -1, -1, -1, 7]);
    }

    #[test]
    fn wrong_ranks_and_short_outputs_are_errors() {
        assert!(run("", vec![1, 6], vec![0.0; 6]).is_err());
        assert!(run("", vec![1, 2, 2, 2], vec![0.0; 7]).is_err());
        assert!(run("", vec![1, 0, 2, 2], vec![]).is_err());
    }
}
