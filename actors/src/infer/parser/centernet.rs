//! Detections the model already decoded: one output [N, K, 6], each row x0, y0, x1, y1,
//! score, class — what exported CenterNet graphs and end-to-end detectors (YOLOv10, YOLO26,
//! models with NMS built in) produce. Rows with a class that is not a whole non-negative
//! number (padding rows often carry -1) are skipped.

use serde::Deserialize;

use super::decode::{corner_box, shape_error};
use super::{check_shape, options, passes, Detection, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CenterNet {
    /// Name of the output. Default "output0".
    #[serde(default = "output_name")]
    output: String,
    /// Boxes are in 0..1 of the network input rather than pixels. Default false.
    #[serde(default)]
    normalized: bool,
}

fn output_name() -> String {
    "output0".into()
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    Ok(Box::new(options::<CenterNet>(table)?))
}

/// The class id a float column holds, if it is a whole number an `i32` can hold.
fn class_id(v: f32) -> Option<i32> {
    // Exported graphs cast the class to float; anything else is padding or garbage.
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= i32::MAX as f32).then_some(v as i32)
}

impl OutputParser for CenterNet {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        check_shape(
            io,
            &self.output,
            &[None, None, Some(6)],
            "[N, detections, 6] (x0, y0, x1, y1, score, class)",
        )
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (shape, data) = input.image_of(&self.output)?;
        if !matches!(shape, [_, _, 6]) {
            return Err(shape_error(
                "centernet",
                &self.output,
                shape,
                "[N, detections, 6]",
            ));
        }
        let (sx, sy) = if self.normalized {
            (input.net_width, input.net_height)
        } else {
            (1.0, 1.0)
        };
        let detections = data
            .chunks_exact(6)
            .filter(|r| passes(r[4], input.min_score))
            .filter_map(|r| {
                Some(Detection {
                    class_id: class_id(r[5])?,
                    confidence: r[4],
                    bbox: corner_box(r[0], r[1], r[2], r[3], sx, sy)?,
                    ..Default::default()
                })
            })
            .collect();
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

    fn parse(options: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Parsed, StageError> {
        let outputs = vec![OutputTensor {
            name: "output0".into(),
            shape,
            data,
        }];
        build(&toml::from_str(options).unwrap())
            .unwrap()
            .parse(&ParseInput {
                outputs: &outputs,
                index: 0,
                net_width: 200.0,
                net_height: 100.0,
                min_score: 0.5,
            })
    }

    #[test]
    fn rows_become_detections_and_padding_is_skipped() {
        #[rustfmt::skip]
        let data = vec![
            10.0, 20.0, 30.0, 60.0, 0.9, 2.0,
            0.0, 0.0, 1.0, 1.0, 0.4, 1.0,          // below the threshold
            0.0, 0.0, 1.0, 1.0, 0.9, -1.0,         // padding
            0.0, 0.0, 1.0, 1.0, 0.9, 1.5,          // not a class id
            0.0, 0.0, f32::NAN, 1.0, 0.9, 1.0,     // broken box
            0.0, 0.0, 1.0, 1.0, f32::NAN, 1.0,     // broken score
        ];
        let d = parse("", vec![1, 6, 6], data).unwrap().detections;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].class_id, d[0].confidence), (2, 0.9));
        assert_eq!((d[0].bbox.left, d[0].bbox.top), (10.0, 20.0));
        assert_eq!((d[0].bbox.width, d[0].bbox.height), (20.0, 40.0));
        let d = parse(
            "normalized = true",
            vec![1, 1, 6],
            vec![0.1, 0.2, 0.5, 0.6, 0.7, 0.0],
        )
        .unwrap()
        .detections;
        let b = d[0].bbox;
        assert!((b.left - 20.0).abs() < 1e-4 && (b.top - 20.0).abs() < 1e-4);
        assert!((b.right() - 100.0).abs() < 1e-4 && (b.bottom() - 60.0).abs() < 1e-4);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(parse("", vec![1, 2, 5], vec![0.0; 10]).is_err());
        assert!(parse("", vec![1, 2, 6], vec![0.0; 11]).is_err());
        assert!(parse("", vec![12], vec![0.0; 12]).is_err());
        let io = |shape| ModelIo {
            input_name: "x".into(),
            input_shape: vec![1, 3, 64, 64],
            outputs: vec![("output0".into(), shape)],
        };
        let p = build(&toml::Table::new()).unwrap();
        assert!(p.check(&io(vec![1, 100, 6])).is_ok());
        let err = p.check(&io(vec![1, 100, 7])).unwrap_err();
        assert!(
            err.contains("output0") && err.contains("[N, detections, 6]"),
            "{err}"
        );
        assert!(build(&toml::from_str("normalised = true").unwrap()).is_err());
    }
}
