//! YOLOv5 (and YOLOv7, YOLOX-style exports with objectness): one output [N, boxes, 5 + C],
//! each row cx, cy, w, h, objectness, then C class scores, all after the sigmoid; a class's
//! score is objectness × class score. Boxes are in network-input pixels (ultralytics' export)
//! unless `normalized`.

use serde::Deserialize;

use super::decode::{center_box, detection, shape_error, ClassChoice};
use super::{check_shape, options, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct YoloV5 {
    /// Name of the output. Default "output0" (ultralytics' export).
    #[serde(default = "output_name")]
    output: String,
    /// The number of classes the model must have; checked against the output's last
    /// dimension when the model is loaded.
    #[serde(default)]
    class_count: Option<usize>,
    /// Boxes are in 0..1 of the network input rather than pixels. Default false.
    #[serde(default)]
    normalized: bool,
    /// "best" (default): one detection per box, its best class; "all": every class above
    /// the threshold.
    #[serde(default)]
    classes: ClassChoice,
}

fn output_name() -> String {
    "output0".into()
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<YoloV5>(table)?;
    if parser.class_count == Some(0) {
        return Err("class_count must be at least 1".into());
    }
    Ok(Box::new(parser))
}

impl YoloV5 {
    fn row_len(&self) -> Option<i64> {
        self.class_count.and_then(|c| i64::try_from(c + 5).ok())
    }
}

impl OutputParser for YoloV5 {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let expected = match self.class_count {
            Some(c) => format!("[N, boxes, {}] (5 + class_count)", c + 5),
            None => "[N, boxes, 5 + classes]".to_string(),
        };
        check_shape(io, &self.output, &[None, None, self.row_len()], &expected)?;
        match io.output_shape(&self.output).and_then(|s| s.get(2)) {
            Some(&row) if (0..6).contains(&row) => Err(format!(
                "output `{}` rows hold {row} values, a YOLOv5 row needs 5 + at least one class",
                self.output
            )),
            _ => Ok(()),
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let row = *io.output_shape(&self.output)?.get(2)?;
        usize::try_from(row).ok()?.checked_sub(5).filter(|c| *c > 0)
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (shape, data) = input.image_of(&self.output)?;
        let (boxes, row) = match shape {
            [_, b, r] if *r > 5 && self.class_count.is_none_or(|c| c + 5 == *r) => (*b, *r),
            _ => {
                return Err(shape_error(
                    "yolov5",
                    &self.output,
                    shape,
                    "[N, boxes, 5 + classes]",
                ))
            }
        };
        let (sx, sy) = if self.normalized {
            (input.net_width, input.net_height)
        } else {
            (1.0, 1.0)
        };
        let mut detections = Vec::new();
        for v in data.chunks_exact(row).take(boxes) {
            let objectness = v[4];
            let score = |c: usize| objectness * v[5 + c];
            let Some(bbox) = center_box(v[0], v[1], v[2], v[3], sx, sy) else {
                continue;
            };
            self.classes.pick(row - 5, input.min_score, score, |c, s| {
                detections.push(detection(c, s, bbox))
            });
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

    fn parse(
        p: &dyn OutputParser,
        outputs: &[OutputTensor],
        index: usize,
    ) -> Result<Parsed, StageError> {
        p.parse(&ParseInput {
            outputs,
            index,
            net_width: 640.0,
            net_height: 320.0,
            min_score: 0.5,
        })
    }

    fn io(shape: Vec<i64>) -> ModelIo {
        ModelIo {
            input_name: "images".into(),
            input_shape: vec![1, 3, 320, 640],
            outputs: vec![("output0".into(), shape)],
        }
    }

    #[test]
    fn score_is_objectness_times_class_and_the_best_class_wins() {
        #[rustfmt::skip]
        let data = vec![
            // image 0
            100.0, 50.0, 20.0, 10.0, 0.9, 0.2, 0.8,   // 0.72 for class 1
            10.0, 10.0, 4.0, 4.0, 0.5, 0.9, 0.9,      // 0.45 < 0.5
            // image 1
            320.0, 160.0, 64.0, 32.0, 1.0, 0.6, 0.1,
            0.0, 0.0, 0.0, 0.0, f32::NAN, 1.0, 1.0,   // NaN objectness
        ];
        let outputs = output(vec![2, 2, 7], data);
        let p = parser("");
        let d = parse(p.as_ref(), &outputs, 0).unwrap().detections;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        assert!((d[0].confidence - 0.72).abs() < 1e-6);
        assert_eq!((d[0].bbox.left, d[0].bbox.top), (90.0, 45.0));
        assert_eq!((d[0].bbox.width, d[0].bbox.height), (20.0, 10.0));
        let d = parse(p.as_ref(), &outputs, 1).unwrap().detections;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].class_id, d[0].bbox.left), (0, 288.0));
        let all = parser("classes = 'all'");
        let d = parse(
            all.as_ref(),
            &output(vec![1, 1, 7], vec![0.5, 0.5, 0.2, 0.2, 1.0, 0.6, 0.7]),
            0,
        )
        .unwrap()
        .detections;
        assert_eq!(d.iter().map(|d| d.class_id).collect::<Vec<_>>(), vec![0, 1]);
        let normalized = parser("normalized = true");
        let d = parse(
            normalized.as_ref(),
            &output(vec![1, 1, 6], vec![0.5, 0.5, 0.5, 0.5, 1.0, 1.0]),
            0,
        )
        .unwrap()
        .detections;
        assert_eq!(
            (d[0].bbox.left, d[0].bbox.top, d[0].bbox.width),
            (160.0, 80.0, 320.0)
        );
    }

    #[test]
    fn odd_shapes_are_errors_not_panics() {
        let p = parser("");
        for (shape, len) in [
            (vec![1, 2, 5], 10), // no class column
            (vec![1, 2], 2),     // wrong rank
            (vec![1, 2, 7], 13), // shorter than the shape says
            (vec![1, 2, 7], 14), // fine for image 0, no image 1
        ] {
            let outputs = output(shape.clone(), vec![0.0; len]);
            assert!(parse(p.as_ref(), &outputs, 1).is_err(), "{shape:?} {len}");
        }
        let four = parser("class_count = 4");
        assert!(parse(four.as_ref(), &output(vec![1, 1, 7], vec![0.0; 7]), 0).is_err());
        assert!(build(&toml::from_str("class_count = 0").unwrap()).is_err());
        assert!(build(&toml::from_str("ouptut = 'x'").unwrap())
            .err()
            .unwrap()
            .contains("ouptut"));
    }

    #[test]
    fn check_names_the_output_and_counts_classes() {
        let p = parser("");
        assert!(p.check(&io(vec![1, 25200, 85])).is_ok());
        assert_eq!(p.class_count(&io(vec![1, 25200, 85])), Some(80));
        assert_eq!(p.class_count(&io(vec![1, 25200, -1])), None);
        let err = p.check(&io(vec![1, 85])).unwrap_err();
        assert!(
            err.contains("output0") && err.contains("[N, boxes, 5 + classes]"),
            "{err}"
        );
        assert!(p
            .check(&io(vec![1, 100, 5]))
            .unwrap_err()
            .contains("at least one class"));
        let err = parser("output = 'dets'")
            .check(&io(vec![1, 1, 85]))
            .unwrap_err();
        assert!(
            err.contains("no output `dets`") && err.contains("output0"),
            "{err}"
        );
        let err = parser("class_count = 3")
            .check(&io(vec![1, 10, 85]))
            .unwrap_err();
        assert!(err.contains("[N, boxes, 8]"), "{err}");
    }
}
