//! Instance segmentation in the YOLOv8-seg (and YOLO11-seg) layout: `detections`
//! [N, 4 + C + M, boxes] — per box cx, cy, w, h in network pixels, C class scores, M mask
//! coefficients — and `protos` [N, M, Hm, Wm], prototype masks at a fraction (1/4) of the
//! network input. A box's mask is sigmoid(coefficients · prototypes), sampled over the box.
//!
//! Masks are made only for boxes whose best class passes the stage's lowest threshold (they
//! cost M multiply-adds per mask pixel); the stage's NMS then drops overlapping ones.

use serde::Deserialize;
use vidmesh_protocol::{BBox, Mask};

use super::{check_shape, options, passes, Detection, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceSegmentation {
    /// The boxes/scores/coefficients output. Default "output0" (ultralytics' export).
    #[serde(default = "detections_name")]
    detections_output: String,
    /// The prototype masks output. Default "output1".
    #[serde(default = "protos_name")]
    protos_output: String,
    /// Mask values above this are inside the object (written into each `Mask`). Default 0.5.
    #[serde(default = "half")]
    mask_threshold: f32,
}

fn detections_name() -> String {
    "output0".into()
}
fn protos_name() -> String {
    "output1".into()
}
fn half() -> f32 {
    0.5
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<InstanceSegmentation>(table)?;
    if !parser.mask_threshold.is_finite() {
        return Err("mask_threshold must be a number".into());
    }
    Ok(Box::new(parser))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The prototype masks of one image, and how network pixels map onto them.
struct Prototypes<'a> {
    values: &'a [f32],
    count: usize,
    width: usize,
    height: usize,
    /// Prototype pixels per network pixel.
    scale_x: f32,
    scale_y: f32,
}

impl Prototypes<'_> {
    /// The linear response (before the sigmoid) at prototype position (`x`, `y`), bilinear
    /// between the four nearest prototype pixels (positions are pixel centres at +0.5, and
    /// clamp to the edge, as a half-pixel-centre resize does).
    fn response(&self, coeffs: &[f32], x: f32, y: f32) -> f32 {
        let clamp = |v: f32, n: usize| v.clamp(0.0, (n - 1) as f32);
        let (x, y) = (clamp(x - 0.5, self.width), clamp(y - 0.5, self.height));
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let plane = self.width * self.height;
        let at = |px: usize, py: usize| -> f32 {
            coeffs
                .iter()
                .enumerate()
                .map(|(m, c)| c * self.values[m * plane + py * self.width + px])
                .sum()
        };
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// The mask over `bbox` (network pixels), one value per prototype pixel the box covers
    /// (at least 1 x 1), each sampled at that mask pixel's centre.
    fn mask(&self, coeffs: &[f32], bbox: &BBox, threshold: f32) -> Mask {
        let (px, py) = (bbox.left * self.scale_x, bbox.top * self.scale_y);
        let (pw, ph) = (bbox.width * self.scale_x, bbox.height * self.scale_y);
        // Bounded by the prototype size since the box lies inside the network input.
        let mw = (pw.round() as usize).clamp(1, self.width);
        let mh = (ph.round() as usize).clamp(1, self.height);
        let mut data = Vec::with_capacity(mw * mh);
        for j in 0..mh {
            let y = py + (j as f32 + 0.5) * ph / mh as f32;
            for i in 0..mw {
                let x = px + (i as f32 + 0.5) * pw / mw as f32;
                data.push(sigmoid(self.response(coeffs, x, y)));
            }
        }
        Mask {
            width: mw as u32,
            height: mh as u32,
            threshold,
            data,
        }
    }
}

impl OutputParser for InstanceSegmentation {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        check_shape(
            io,
            &self.detections_output,
            &[None, None, None],
            "[N, 4 + classes + mask coefficients, boxes]",
        )?;
        check_shape(
            io,
            &self.protos_output,
            &[None, None, None, None],
            "[N, mask coefficients, H/4, W/4]",
        )?;
        let rows = io.output_shape(&self.detections_output).map(|s| s[1]);
        let masks = io.output_shape(&self.protos_output).map(|s| s[1]);
        match (rows, masks) {
            (Some(r), Some(m)) if r > 0 && m > 0 && r <= 4 + m => Err(format!(
                "output `{}` has {r} rows per box: not enough for 4 box values, at least one class and the {m} mask coefficients `{}` needs",
                self.detections_output, self.protos_output
            )),
            _ => Ok(()),
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let rows = *io.output_shape(&self.detections_output)?.get(1)?;
        let masks = *io.output_shape(&self.protos_output)?.get(1)?;
        usize::try_from(rows - 4 - masks).ok().filter(|&c| c > 0)
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (det_shape, dets) = input.image_of(&self.detections_output)?;
        let (proto_shape, protos) = input.image_of(&self.protos_output)?;
        let (rows, boxes, masks, ph, pw) = match (det_shape, proto_shape) {
            ([_, r, b], [_, m, h, w]) if *m > 0 && *h > 0 && *w > 0 && *r > 4 + *m => {
                (*r, *b, *m, *h, *w)
            }
            (d, p) => {
                return Err(StageError::Runtime(format!(
                    "instance-segmentation parser: detections shape {d:?} and prototypes shape {p:?} do not fit [N, 4 + classes + M, boxes] and [N, M, h, w]"
                )))
            }
        };
        let classes = rows - 4 - masks;
        let protos = Prototypes {
            values: protos,
            count: masks,
            width: pw,
            height: ph,
            scale_x: pw as f32 / input.net_width,
            scale_y: ph as f32 / input.net_height,
        };
        // Channels-first: value r of box b is at r * boxes + b.
        let value = |r: usize, b: usize| dets[r * boxes + b];
        let mut found = Vec::new();
        let mut coeffs = vec![0.0; protos.count];
        for b in 0..boxes {
            // The best class (ties: the lower id); NaN scores never win.
            let mut best: Option<(usize, f32)> = None;
            for c in 0..classes {
                let s = value(4 + c, b);
                if !s.is_nan() && best.is_none_or(|(_, v)| s > v) {
                    best = Some((c, s));
                }
            }
            let Some((class, score)) = best.filter(|(_, s)| passes(*s, input.min_score)) else {
                continue;
            };
            let (cx, cy, w, h) = (value(0, b), value(1, b), value(2, b), value(3, b));
            // Checked before clipping, which would turn an infinite box into a full one.
            if ![cx, cy, w, h].iter().all(|v| v.is_finite()) {
                continue;
            }
            // The mask must cover the box the stage keeps, so clip to the input first.
            let bbox = BBox::from_corners(
                (cx - w / 2.0).clamp(0.0, input.net_width),
                (cy - h / 2.0).clamp(0.0, input.net_height),
                (cx + w / 2.0).clamp(0.0, input.net_width),
                (cy + h / 2.0).clamp(0.0, input.net_height),
            );
            if bbox.width <= 0.0 || bbox.height <= 0.0 {
                continue;
            }
            for (m, c) in coeffs.iter_mut().enumerate() {
                *c = value(4 + classes + m, b);
            }
            found.push(Detection {
                class_id: class as i32,
                confidence: score,
                bbox,
                mask: Some(protos.mask(&coeffs, &bbox, self.mask_threshold)),
                landmarks: Vec::new(),
            });
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

    /// Two boxes, one class, one mask coefficient; 8x8 input, 2x2 prototypes.
    fn outputs() -> Vec<OutputTensor> {
        // Rows: cx, cy, w, h, score, coefficient; columns: boxes.
        let dets = vec![
            2.0, 6.0, // cx
            2.0, 6.0, // cy
            4.0, 4.0, // w
            4.0, 4.0, // h
            0.9, 0.1, // score
            1.0, 1.0, // coefficient
        ];
        vec![
            OutputTensor {
                name: "output0".into(),
                shape: vec![1, 6, 2],
                data: dets,
            },
            OutputTensor {
                name: "output1".into(),
                shape: vec![1, 1, 2, 2],
                data: vec![3.0, -3.0, -3.0, 3.0],
            },
        ]
    }

    fn parse(outputs: &[OutputTensor]) -> Result<Parsed, StageError> {
        build(&toml::Table::new()).unwrap().parse(&ParseInput {
            outputs,
            index: 0,
            net_width: 8.0,
            net_height: 8.0,
            min_score: 0.5,
        })
    }

    #[test]
    fn a_box_gets_the_prototype_pixels_it_covers() {
        let d = parse(&outputs()).unwrap().detections;
        assert_eq!(d.len(), 1, "the 0.1 box is below min_score");
        assert_eq!(d[0].bbox, BBox::from_corners(0.0, 0.0, 4.0, 4.0));
        let m = d[0].mask.as_ref().unwrap();
        // The box covers prototype pixel (0, 0) exactly: one value, sigmoid(3).
        assert_eq!((m.width, m.height), (1, 1));
        assert!((m.data[0] - sigmoid(3.0)).abs() < 1e-6);
        assert_eq!(m.threshold, 0.5);
    }

    #[test]
    fn odd_shapes_and_values_are_errors_or_skipped() {
        let mut o = outputs();
        o[1].shape = vec![1, 3, 2, 2]; // 3 coefficients leave no class
        o[1].data = vec![0.0; 12];
        assert!(parse(&o).is_err());
        let mut o = outputs();
        o[0].data.truncate(5);
        assert!(parse(&o).is_err());
        let mut o = outputs();
        o[0].data[8] = f32::NAN; // score of box 0
        o[0].data[5] = f32::INFINITY; // w of box 1
        o[0].data[9] = 0.9; // score of box 1
        assert!(parse(&o).unwrap().detections.is_empty());
    }

    #[test]
    fn check_names_outputs_and_counts_classes() {
        let io = ModelIo {
            input_name: "images".into(),
            input_shape: vec![1, 3, 640, 640],
            outputs: vec![
                ("output0".into(), vec![1, 116, 8400]),
                ("output1".into(), vec![1, 32, 160, 160]),
            ],
        };
        let p = build(&toml::Table::new()).unwrap();
        assert!(p.check(&io).is_ok());
        assert_eq!(p.class_count(&io), Some(80));
        let p = build(&toml::from_str("protos_output = 'protos'").unwrap()).unwrap();
        assert!(p.check(&io).unwrap_err().contains("protos"));
    }
}
