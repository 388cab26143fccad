//! A constant-velocity Kalman filter over one box, shared by the SORT, ByteTrack and appearance
//! trackers.
//!
//! The state is `[cx, cy, a, h, vcx, vcy, va, vh]`: box centre, aspect ratio (width / height),
//! height, and their velocities per frame. The measurement is `[cx, cy, a, h]`. Process and
//! measurement noise are proportional to the box height, so one set of constants serves small
//! and large objects alike (the noise model DeepSORT and ByteTrack use). Aspect ratio gets a
//! fixed small noise because it barely changes for a rigid object.
//!
//! The arithmetic is in f64; the state is stored in f32 between frames so that a snapshot, which
//! goes through JSON, restores exactly the state an uninterrupted tracker holds, and restored
//! trackers make bit-identical decisions.

use serde::{Deserialize, Serialize};
use vidmesh_protocol::BBox;

/// Position noise per pixel of box height.
const STD_POSITION: f64 = 1.0 / 20.0;
/// Velocity noise per pixel of box height.
const STD_VELOCITY: f64 = 1.0 / 160.0;
/// Heights below this are treated as this for noise scaling and aspect ratios, so degenerate
/// boxes cannot make a covariance singular.
const MIN_HEIGHT: f64 = 1.0;

/// The 0.95 quantile of the chi-square distribution with 4 degrees of freedom: a measurement
/// whose squared Mahalanobis distance exceeds it is an unlikely continuation of the track.
pub const GATE_CHI2_95: f32 = 9.4877;

type Vec8 = [f64; 8];
type Mat8 = [[f64; 8]; 8];
type Vec4 = [f64; 4];
type Mat4 = [[f64; 4]; 4];

/// One box's motion estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KalmanBox {
    mean: [f32; 8],
    covariance: [[f32; 8]; 8],
}

/// A track's predicted measurement with its covariance factored once, so that checking many
/// detections against one track costs a triangular solve each.
pub struct MeasurementGate {
    mean: Vec4,
    /// Lower Cholesky factor of the innovation covariance.
    chol: Mat4,
}

impl MeasurementGate {
    /// Squared Mahalanobis distance from the prediction to `bbox`.
    pub fn distance_sq(&self, bbox: &BBox) -> f32 {
        let z = measure(bbox);
        let d = std::array::from_fn(|i| z[i] - self.mean[i]);
        let w = forward_solve(&self.chol, &d);
        w.iter().map(|x| x * x).sum::<f64>() as f32
    }
}

impl KalmanBox {
    /// A filter started at `bbox` with unknown velocity.
    pub fn new(bbox: &BBox) -> Self {
        let z = measure(bbox);
        let h = z[3].abs().max(MIN_HEIGHT);
        let mean = [z[0], z[1], z[2], z[3], 0.0, 0.0, 0.0, 0.0];
        // Velocity starts very uncertain: a new track may move any way.
        let std = [
            2.0 * STD_POSITION * h,
            2.0 * STD_POSITION * h,
            1e-2,
            2.0 * STD_POSITION * h,
            10.0 * STD_VELOCITY * h,
            10.0 * STD_VELOCITY * h,
            1e-5,
            10.0 * STD_VELOCITY * h,
        ];
        let mut covariance = [[0.0; 8]; 8];
        for i in 0..8 {
            covariance[i][i] = std[i] * std[i];
        }
        let mut filter = Self {
            mean: [0.0; 8],
            covariance: [[0.0; 8]; 8],
        };
        filter.store(&mean, &covariance);
        filter
    }

    /// Advances one frame. `freeze_size` zeroes the height velocity first: a track that is not
    /// being observed keeps moving but should not grow or shrink without evidence.
    pub fn predict(&mut self, freeze_size: bool) {
        let (mut x, p) = self.load();
        if freeze_size {
            x[7] = 0.0;
        }
        let h = x[3].abs().max(MIN_HEIGHT);
        let q = [
            STD_POSITION * h,
            STD_POSITION * h,
            1e-2,
            STD_POSITION * h,
            STD_VELOCITY * h,
            STD_VELOCITY * h,
            1e-5,
            STD_VELOCITY * h,
        ];
        for i in 0..4 {
            x[i] += x[i + 4];
        }
        // P' = F P Fᵀ + Q with F = [[I, I], [0, I]]: add the velocity rows to the position
        // rows, then the velocity columns to the position columns.
        let mut fp = p;
        for i in 0..4 {
            for j in 0..8 {
                fp[i][j] += p[i + 4][j];
            }
        }
        let mut next = fp;
        for row in next.iter_mut().zip(fp.iter()) {
            let (out, src) = row;
            for j in 0..4 {
                out[j] += src[j + 4];
            }
        }
        for i in 0..8 {
            next[i][i] += q[i] * q[i];
        }
        self.store(&x, &next);
    }

    /// Corrects the estimate with a measured box. A numerically broken filter (which only
    /// non-finite input produces) restarts from the measurement.
    pub fn update(&mut self, bbox: &BBox) {
        let (x, p) = self.load();
        let Some((predicted, s)) = self.innovation(&x, &p) else {
            *self = Self::new(bbox);
            return;
        };
        let Some(chol) = cholesky(&s) else {
            *self = Self::new(bbox);
            return;
        };
        // K = P Hᵀ S⁻¹; H picks the first four state entries, so P Hᵀ is P's first 4 columns.
        let mut gain = [[0.0; 4]; 8];
        for (k, row) in gain.iter_mut().zip(p.iter()) {
            let pht = [row[0], row[1], row[2], row[3]];
            *k = cholesky_solve(&chol, &pht);
        }
        let z = measure(bbox);
        let innovation: Vec4 = std::array::from_fn(|i| z[i] - predicted[i]);
        let mut x = x;
        for i in 0..8 {
            x[i] += (0..4).map(|k| gain[i][k] * innovation[k]).sum::<f64>();
        }
        // P' = P − K S Kᵀ = P − K (P Hᵀ)ᵀ, symmetrised against rounding drift.
        let mut next = p;
        for i in 0..8 {
            for j in 0..8 {
                next[i][j] -= (0..4).map(|k| gain[i][k] * p[j][k]).sum::<f64>();
            }
        }
        let next: Mat8 =
            std::array::from_fn(|i| std::array::from_fn(|j| 0.5 * (next[i][j] + next[j][i])));
        self.store(&x, &next);
    }

    /// The current estimate as a box.
    pub fn bbox(&self) -> BBox {
        let [cx, cy, a, h, ..] = self.mean;
        let w = a * h;
        BBox {
            left: cx - w / 2.0,
            top: cy - h / 2.0,
            width: w,
            height: h,
        }
    }

    /// The predicted measurement and its factored covariance, for Mahalanobis gating; `None`
    /// when the covariance is not positive definite (only after non-finite input).
    pub fn gate(&self) -> Option<MeasurementGate> {
        let (x, p) = self.load();
        let (mean, s) = self.innovation(&x, &p)?;
        Some(MeasurementGate {
            mean,
            chol: cholesky(&s)?,
        })
    }

    /// Projects the state into measurement space: `H x` and `S = H P Hᵀ + R`.
    fn innovation(&self, x: &Vec8, p: &Mat8) -> Option<(Vec4, Mat4)> {
        let h = x[3].abs().max(MIN_HEIGHT);
        let r = [STD_POSITION * h, STD_POSITION * h, 1e-1, STD_POSITION * h];
        let mut s = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                s[i][j] = p[i][j];
            }
            s[i][i] += r[i] * r[i];
        }
        x.iter()
            .all(|v| v.is_finite())
            .then_some(([x[0], x[1], x[2], x[3]], s))
    }

    fn load(&self) -> (Vec8, Mat8) {
        let x = self.mean.map(f64::from);
        let p = self.covariance.map(|row| row.map(f64::from));
        (x, p)
    }

    fn store(&mut self, x: &Vec8, p: &Mat8) {
        self.mean = x.map(|v| v as f32);
        self.covariance = p.map(|row| row.map(|v| v as f32));
    }
}

/// `[cx, cy, a, h]` of a box.
fn measure(bbox: &BBox) -> Vec4 {
    let w = f64::from(bbox.width);
    let h = f64::from(bbox.height);
    [
        f64::from(bbox.left) + w / 2.0,
        f64::from(bbox.top) + h / 2.0,
        w / h.max(MIN_HEIGHT),
        h,
    ]
}

/// Lower-triangular `L` with `L Lᵀ = s`, or `None` if `s` is not positive definite.
fn cholesky(s: &Mat4) -> Option<Mat4> {
    let mut l = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..=i {
            let sum = s[i][j] - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i][i] = sum.sqrt();
            } else {
                l[i][j] = sum / l[j][j];
            }
        }
    }
    Some(l)
}

/// Solves `L w = b` for lower-triangular `L`.
fn forward_solve(l: &Mat4, b: &Vec4) -> Vec4 {
    let mut w = [0.0; 4];
    for i in 0..4 {
        w[i] = (b[i] - (0..i).map(|k| l[i][k] * w[k]).sum::<f64>()) / l[i][i];
    }
    w
}

/// Solves `L Lᵀ y = b`.
fn cholesky_solve(l: &Mat4, b: &Vec4) -> Vec4 {
    let w = forward_solve(l, b);
    let mut y = [0.0; 4];
    for i in (0..4).rev() {
        y[i] = (w[i] - (i + 1..4).map(|k| l[k][i] * y[k]).sum::<f64>()) / l[i][i];
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(left: f32, top: f32) -> BBox {
        BBox::from_corners(left, top, left + 20.0, top + 40.0)
    }

    fn trace(k: &KalmanBox) -> f32 {
        (0..8).map(|i| k.covariance[i][i]).sum()
    }

    fn close(a: &BBox, b: &BBox, tolerance: f32) -> bool {
        (a.left - b.left).abs() < tolerance
            && (a.top - b.top).abs() < tolerance
            && (a.width - b.width).abs() < tolerance
            && (a.height - b.height).abs() < tolerance
    }

    #[test]
    fn a_new_filter_reproduces_its_box_and_predicts_it_in_place() {
        let b = bbox(10.0, 30.0);
        let mut k = KalmanBox::new(&b);
        assert!(close(&k.bbox(), &b, 1e-4));
        let before = trace(&k);
        k.predict(false);
        assert!(close(&k.bbox(), &b, 1e-4), "no velocity yet");
        assert!(trace(&k) > before, "prediction adds uncertainty");
        let predicted = trace(&k);
        k.update(&b);
        assert!(trace(&k) < predicted, "a measurement removes uncertainty");
    }

    #[test]
    fn constant_velocity_is_learned_and_extrapolated() {
        let mut k = KalmanBox::new(&bbox(0.0, 0.0));
        for n in 1..30 {
            k.predict(false);
            k.update(&bbox(3.0 * n as f32, 1.0 * n as f32));
        }
        k.predict(false);
        assert!(close(&k.bbox(), &bbox(90.0, 30.0), 0.5), "{:?}", k.bbox());
        // Unobserved, the box keeps moving at the learned speed.
        for _ in 0..5 {
            k.predict(true);
        }
        assert!(close(&k.bbox(), &bbox(105.0, 35.0), 1.0), "{:?}", k.bbox());
    }

    #[test]
    fn a_measurement_equal_to_the_prediction_changes_only_the_uncertainty() {
        let mut k = KalmanBox::new(&bbox(0.0, 0.0));
        for n in 1..5 {
            k.predict(false);
            k.update(&bbox(2.0 * n as f32, 0.0));
        }
        k.predict(false);
        let predicted = k.bbox();
        let mean = k.mean;
        k.update(&predicted);
        for (a, b) in k.mean.iter().zip(mean.iter()) {
            assert!((a - b).abs() < 1e-3, "{:?} vs {:?}", k.mean, mean);
        }
    }

    #[test]
    fn mahalanobis_gate_accepts_the_prediction_and_rejects_a_far_box() {
        let mut k = KalmanBox::new(&bbox(0.0, 0.0));
        for n in 1..10 {
            k.predict(false);
            k.update(&bbox(2.0 * n as f32, 0.0));
        }
        k.predict(false);
        let gate = k.gate().unwrap();
        assert!(gate.distance_sq(&k.bbox()) < 1e-6);
        assert!(gate.distance_sq(&bbox(22.0, 1.0)) < GATE_CHI2_95);
        assert!(gate.distance_sq(&bbox(80.0, 0.0)) > GATE_CHI2_95);
        // Taller boxes are allowed proportionally larger jumps.
        assert!(gate.distance_sq(&bbox(24.0, 0.0)) > gate.distance_sq(&bbox(22.0, 0.0)));
    }

    #[test]
    fn degenerate_boxes_do_not_poison_the_filter() {
        let mut k = KalmanBox::new(&BBox::from_corners(5.0, 5.0, 5.0, 5.0));
        k.predict(false);
        assert!(k.gate().is_some());
        k.update(&BBox::from_corners(f32::NAN, 0.0, 1.0, 1.0));
        k.predict(false);
        k.update(&bbox(0.0, 0.0));
        k.predict(false);
        assert!(k.bbox().left.is_finite());
    }

    #[test]
    fn the_stored_state_survives_json_exactly() {
        let mut k = KalmanBox::new(&bbox(1.3, 2.7));
        for n in 1..7 {
            k.predict(false);
            k.update(&bbox(1.3 + 1.1 * n as f32, 2.7 - 0.3 * n as f32));
        }
        let back: KalmanBox = serde_json::from_value(serde_json::to_value(&k).unwrap()).unwrap();
        assert_eq!(back, k);
    }
}
