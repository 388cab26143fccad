//! Small pieces the detector parsers share: box conversions that refuse non-finite values,
//! activations, and the choice of classes per candidate.

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::{passes, Detection};
use crate::stage::StageError;

/// A box from its centre and size, each coordinate multiplied by `sx`/`sy`; `None` when a
/// value is not finite (a broken model must not produce boxes at infinity).
pub fn center_box(cx: f32, cy: f32, w: f32, h: f32, sx: f32, sy: f32) -> Option<BBox> {
    corner_box(
        cx - w / 2.0,
        cy - h / 2.0,
        cx + w / 2.0,
        cy + h / 2.0,
        sx,
        sy,
    )
}

/// A box from its corners, scaled like [`center_box`]; `None` when a value is not finite.
pub fn corner_box(x0: f32, y0: f32, x1: f32, y1: f32, sx: f32, sy: f32) -> Option<BBox> {
    let (x0, y0, x1, y1) = (x0 * sx, y0 * sy, x1 * sx, y1 * sy);
    [x0, y0, x1, y1]
        .iter()
        .all(|v| v.is_finite())
        .then(|| BBox::from_corners(x0, y0, x1, y1))
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of `logits` into `out` (resized to match), stable against large logits. A row
/// with a NaN yields NaNs, which no threshold passes.
pub fn softmax_into(logits: &[f32], out: &mut Vec<f32>) {
    out.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    out.extend(logits.iter().map(|&v| (v - max).exp()));
    let sum: f32 = out.iter().sum();
    for v in out.iter_mut() {
        *v /= sum;
    }
}

/// Which classes of one candidate become detections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClassChoice {
    /// Only the best-scoring class (one box, one label: what nvinfer's YOLO parsers do).
    #[default]
    Best,
    /// Every class whose score passes the threshold (ultralytics' `multi_label`).
    All,
}

impl ClassChoice {
    /// Calls `found(class, score)` for the chosen classes of a candidate whose class scores
    /// are `score(c)` for `c` in `0..classes`, keeping only scores that pass `min_score`.
    pub fn pick(
        self,
        classes: usize,
        min_score: f32,
        score: impl Fn(usize) -> f32,
        mut found: impl FnMut(usize, f32),
    ) {
        match self {
            ClassChoice::All => {
                for c in 0..classes {
                    let s = score(c);
                    if passes(s, min_score) {
                        found(c, s);
                    }
                }
            }
            ClassChoice::Best => {
                // The first of equal scores wins, as numpy's argmax does; NaN never wins.
                let mut best: Option<(usize, f32)> = None;
                for c in 0..classes {
                    let s = score(c);
                    if s.is_nan() {
                        continue;
                    }
                    if best.is_none_or(|(_, b)| s > b) {
                        best = Some((c, s));
                    }
                }
                if let Some((c, s)) = best.filter(|(_, s)| passes(*s, min_score)) {
                    found(c, s);
                }
            }
        }
    }
}

/// A detection of class `class` (checked to fit an `i32`).
pub fn detection(class: usize, confidence: f32, bbox: BBox) -> Detection {
    Detection {
        class_id: i32::try_from(class).unwrap_or(i32::MAX),
        confidence,
        bbox,
        ..Default::default()
    }
}

/// An error for an output whose runtime shape is not what the parser reads.
pub fn shape_error(parser: &str, name: &str, shape: &[usize], expected: &str) -> StageError {
    StageError::Runtime(format!(
        "{parser} parser: output `{name}` has shape {shape:?}, expected {expected}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_class_ignores_nan_and_keeps_the_first_of_ties() {
        let scores = [0.2, f32::NAN, 0.7, 0.7];
        let mut got = Vec::new();
        ClassChoice::Best.pick(4, 0.5, |c| scores[c], |c, s| got.push((c, s)));
        assert_eq!(got, vec![(2, 0.7)]);
        got.clear();
        ClassChoice::All.pick(4, 0.5, |c| scores[c], |c, s| got.push((c, s)));
        assert_eq!(got, vec![(2, 0.7), (3, 0.7)]);
        got.clear();
        ClassChoice::Best.pick(2, 0.5, |_| f32::NAN, |c, s| got.push((c, s)));
        assert!(got.is_empty());
    }

    #[test]
    fn infinite_boxes_are_refused_and_softmax_survives_large_logits() {
        assert!(center_box(f32::INFINITY, 0.0, 1.0, 1.0, 1.0, 1.0).is_none());
        assert!(corner_box(0.0, 0.0, 1.0, f32::NAN, 1.0, 1.0).is_none());
        let b = center_box(10.0, 20.0, 4.0, 6.0, 2.0, 1.0).unwrap();
        assert_eq!((b.left, b.top, b.width, b.height), (16.0, 17.0, 8.0, 6.0));
        let mut out = Vec::new();
        softmax_into(&[1000.0, 1000.0], &mut out);
        assert_eq!(out, vec![0.5, 0.5]);
    }
}
