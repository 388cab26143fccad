//! Image classifiers: one score per class, [N, C] or [N, C, 1, 1] (what a global-pool head
//! leaves), either probabilities already (a softmax or sigmoid inside the model, nvinfer's
//! assumption) or logits to put through a softmax here. The best `top_k` classes come out,
//! most probable first; the stage keeps those above `score_threshold` (nvinfer's
//! `classifier-threshold`) and attaches them to the object the crop came from.

use serde::Deserialize;

use super::{options, ClassScore, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Classifier {
    /// Output to read; empty (the default) = the model's only output.
    #[serde(default)]
    output: String,
    /// Apply a softmax over the classes first (the model outputs logits). Default false.
    #[serde(default)]
    softmax: bool,
    /// Most classes reported per image. Default 1.
    #[serde(default = "one")]
    top_k: usize,
}

fn one() -> usize {
    1
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<Classifier>(table)?;
    if parser.top_k == 0 {
        return Err("top_k must be at least 1".into());
    }
    Ok(Box::new(parser))
}

/// The class count a [N, C] or [N, C, 1, 1] shape gives, if it is one of those.
fn classes_of(shape: &[usize]) -> Option<usize> {
    match shape {
        [_, c] | [_, c, 1, 1] => Some(*c),
        _ => None,
    }
}

/// Probabilities from logits; non-finite logits get probability 0 and do not spoil the rest.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exp: Vec<f32> = logits
        .iter()
        .map(|&v| if v.is_finite() { (v - max).exp() } else { 0.0 })
        .collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

impl Classifier {
    /// The output this parser reads: the named one, or the model's only output.
    fn output_name<'a>(&'a self, names: &[&'a str]) -> Result<&'a str, String> {
        if !self.output.is_empty() {
            return Ok(&self.output);
        }
        match names {
            [only] => Ok(*only),
            _ => Err(format!(
                "the model has {} outputs ({}); set parser.output to the scores",
                names.len(),
                names.join(", ")
            )),
        }
    }
}

impl OutputParser for Classifier {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let name = self.output_name(&io.output_names())?;
        let shape = io.require_output(name)?;
        let fits = match shape {
            [_, _] => true,
            [_, _, h, w] => (*h == 1 || *h < 0) && (*w == 1 || *w < 0),
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "output `{name}` has shape {}, expected [N, classes] or [N, classes, 1, 1]",
                ModelIo::shape_text(shape)
            ))
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let name = self.output_name(&io.output_names()).ok()?;
        usize::try_from(*io.output_shape(name)?.get(1)?).ok()
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let names: Vec<&str> = input.outputs.iter().map(|o| o.name.as_str()).collect();
        let name = self.output_name(&names).map_err(StageError::Runtime)?;
        let (shape, scores) = input.image_of(name)?;
        if classes_of(shape).is_none() {
            return Err(StageError::Runtime(format!(
                "classifier parser: output `{name}` has shape {shape:?}, expected [N, classes] or [N, classes, 1, 1]"
            )));
        }
        let probabilities = if self.softmax {
            softmax(scores)
        } else {
            scores.to_vec()
        };
        let mut classes: Vec<ClassScore> = probabilities
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_finite())
            .map(|(c, &p)| ClassScore {
                class_id: c as i32,
                probability: p,
            })
            .collect();
        // Ties keep the lower class id first, so the order is deterministic.
        classes.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then(a.class_id.cmp(&b.class_id))
        });
        classes.truncate(self.top_k);
        Ok(Parsed {
            classes,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::backend::OutputTensor;

    fn run(options: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Parsed, StageError> {
        let outputs = vec![OutputTensor {
            name: "prob".into(),
            shape,
            data,
        }];
        build(&toml::from_str(options).unwrap())
            .unwrap()
            .parse(&ParseInput {
                outputs: &outputs,
                index: 1,
                net_width: 1.0,
                net_height: 1.0,
                min_score: 0.0,
            })
    }

    #[test]
    fn top_k_of_the_right_image_sorted_by_probability() {
        let data = vec![0.9, 0.05, 0.05, 0.1, 0.3, 0.6];
        let c = run("top_k = 2", vec![2, 3, 1, 1], data).unwrap().classes;
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].class_id, c[0].probability), (2, 0.6));
        assert_eq!((c[1].class_id, c[1].probability), (1, 0.3));
    }

    #[test]
    fn softmax_turns_logits_into_probabilities_and_survives_nan() {
        let data = vec![0.0, 0.0, 0.0, 0.0, 1.0, f32::NAN];
        let c = run("softmax = true\ntop_k = 3", vec![2, 3], data)
            .unwrap()
            .classes;
        let e = std::f32::consts::E;
        assert_eq!(c[0].class_id, 1);
        assert!((c[0].probability - e / (1.0 + e)).abs() < 1e-6);
        assert!((c[1].probability - 1.0 / (1.0 + e)).abs() < 1e-6);
        assert_eq!(c[2].probability, 0.0, "a NaN logit gets nothing");
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(run("", vec![2, 3, 2, 1], vec![0.0; 12]).is_err());
        assert!(run("", vec![2, 3], vec![0.0; 4]).is_err(), "short data");
        assert!(build(&toml::from_str("top_k = 0").unwrap()).is_err());
        let io = ModelIo {
            input_name: "x".into(),
            input_shape: vec![-1, 3, 8, 8],
            outputs: vec![("a".into(), vec![-1, 5]), ("b".into(), vec![-1, 5])],
        };
        let p = build(&toml::Table::new()).unwrap();
        assert!(p.check(&io).unwrap_err().contains("set parser.output"));
        let p = build(&toml::from_str("output = 'b'").unwrap()).unwrap();
        assert!(p.check(&io).is_ok());
        assert_eq!(p.class_count(&io), Some(5));
    }
}
