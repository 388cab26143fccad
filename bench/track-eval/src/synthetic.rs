//! Deterministic synthetic detections for cost measurements: boxes moving in straight lines
//! and bouncing off the frame edges, with box noise, missed detections, low-score detections
//! and a few false positives. The scene's density is kept constant across object counts —
//! boxes get smaller as there are more of them (a crowd seen from further away) — so that a
//! tracker's cost at 1000 objects is not inflated by every box overlapping every other.
//! Every detection carries an appearance embedding (its object's unit vector plus noise; a
//! random one for false positives), which only the appearance tracker reads.

use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta};

use crate::mot::{embedding_meta, EMBEDDING_KIND};

/// A small deterministic generator (SplitMix64): the same seed gives the same scene on every
/// machine, and the crate needs no dependency for it.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// What the generated scene looks like.
#[derive(Debug, Clone, Copy)]
pub struct SceneSpec {
    /// Objects present in every frame.
    pub objects: usize,
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    /// Fraction of the frame the boxes cover together (sets the box size).
    pub coverage: f64,
    /// Probability that an object's detection is missing in a frame.
    pub miss_rate: f64,
    /// Probability that a present detection has a low score (0.1..0.5).
    pub low_score_rate: f64,
    /// False positives per frame, as a fraction of `objects`.
    pub false_positive_rate: f64,
    /// Standard deviation of the box noise, as a fraction of the box size.
    pub noise: f64,
    /// Length of each detection's embedding; 0 for none.
    pub embedding_dim: usize,
    pub seed: u64,
}

impl SceneSpec {
    /// A 1080p scene of `objects` objects over `frames` frames with moderate detector faults.
    pub fn new(objects: usize, frames: usize, seed: u64) -> Self {
        Self {
            objects,
            frames,
            width: 1920,
            height: 1080,
            coverage: 0.2,
            miss_rate: 0.05,
            low_score_rate: 0.1,
            false_positive_rate: 0.02,
            noise: 0.03,
            embedding_dim: 32,
            seed,
        }
    }
}

struct Mover {
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    w: f64,
    h: f64,
    look: Vec<f64>,
}

/// A random unit vector of `dim` values.
fn unit_vector(rng: &mut SplitMix64, dim: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
    normalised(v)
}

fn normalised(v: Vec<f64>) -> Vec<f64> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    v.into_iter().map(|x| x / norm).collect()
}

/// `look` seen through a noisy re-identification model, as embedding user meta.
fn observe(rng: &mut SplitMix64, look: &[f64]) -> Vec<vidmesh_protocol::UserMeta> {
    if look.is_empty() {
        return Vec::new();
    }
    let spread = 0.25 / (look.len() as f64).sqrt();
    let seen = normalised(look.iter().map(|x| x + spread * rng.normal()).collect());
    let values: Vec<f32> = seen.iter().map(|&x| x as f32).collect();
    vec![embedding_meta(EMBEDDING_KIND, &values)]
}

/// The detections of a generated scene, one `FrameMeta` per frame (class 0, source 0).
pub fn scene(spec: &SceneSpec) -> Vec<FrameMeta> {
    let mut rng = SplitMix64::new(spec.seed);
    let (fw, fh) = (spec.width as f64, spec.height as f64);
    // Pedestrian-like boxes, twice as tall as wide, sized so that together they cover
    // `coverage` of the frame.
    let mean_area = spec.coverage * fw * fh / spec.objects.max(1) as f64;
    let base_w = (mean_area / 2.0).sqrt();
    let mut movers: Vec<Mover> = (0..spec.objects)
        .map(|_| {
            let w = base_w * rng.uniform(0.6, 1.4);
            let h = 2.0 * w * rng.uniform(0.8, 1.2);
            let speed = w * rng.uniform(0.01, 0.15);
            let angle = rng.uniform(0.0, std::f64::consts::TAU);
            Mover {
                x: rng.uniform(0.0, (fw - w).max(1.0)),
                y: rng.uniform(0.0, (fh - h).max(1.0)),
                vx: speed * angle.cos(),
                vy: speed * angle.sin(),
                w,
                h,
                look: unit_vector(&mut rng, spec.embedding_dim),
            }
        })
        .collect();
    let false_positives = spec.false_positive_rate * spec.objects as f64;
    let mut frames = Vec::with_capacity(spec.frames);
    for n in 0..spec.frames {
        let mut objects = Vec::with_capacity(spec.objects + false_positives.ceil() as usize);
        for m in &mut movers {
            if n > 0 {
                m.x += m.vx;
                m.y += m.vy;
                if m.x < 0.0 || m.x + m.w > fw {
                    m.vx = -m.vx;
                    m.x = m.x.clamp(0.0, (fw - m.w).max(0.0));
                }
                if m.y < 0.0 || m.y + m.h > fh {
                    m.vy = -m.vy;
                    m.y = m.y.clamp(0.0, (fh - m.h).max(0.0));
                }
            }
            if rng.unit() < spec.miss_rate {
                continue;
            }
            let confidence = if rng.unit() < spec.low_score_rate {
                rng.uniform(0.1, 0.5)
            } else {
                rng.uniform(0.5, 0.98)
            };
            let jitter = |rng: &mut SplitMix64, size: f64| rng.normal() * spec.noise * size;
            let left = m.x + jitter(&mut rng, m.w);
            let top = m.y + jitter(&mut rng, m.h);
            let width = (m.w + jitter(&mut rng, m.w)).max(1.0);
            let height = (m.h + jitter(&mut rng, m.h)).max(1.0);
            let user = observe(&mut rng, &m.look);
            objects.push(ObjectMeta {
                confidence: confidence as f32,
                bbox: BBox {
                    left: left as f32,
                    top: top as f32,
                    width: width as f32,
                    height: height as f32,
                },
                user,
                ..Default::default()
            });
        }
        // Whole false positives per frame on average: the integer part always, the rest by
        // chance.
        let fp_count =
            false_positives.floor() as usize + usize::from(rng.unit() < false_positives.fract());
        for _ in 0..fp_count {
            let w = base_w * rng.uniform(0.5, 1.5);
            let h = 2.0 * w;
            let look = unit_vector(&mut rng, spec.embedding_dim);
            let user = observe(&mut rng, &look);
            objects.push(ObjectMeta {
                confidence: rng.uniform(0.1, 0.6) as f32,
                bbox: BBox {
                    left: rng.uniform(0.0, (fw - w).max(1.0)) as f32,
                    top: rng.uniform(0.0, (fh - h).max(1.0)) as f32,
                    width: w as f32,
                    height: h as f32,
                },
                user,
                ..Default::default()
            });
        }
        frames.push(FrameMeta {
            frame_num: n as u64,
            width: spec.width,
            height: spec.height,
            objects,
            ..Default::default()
        });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_uniform_enough() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| a.unit()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.unit()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let normals: Vec<f64> = (0..10_000).map(|_| a.normal()).collect();
        let m = normals.iter().sum::<f64>() / normals.len() as f64;
        let var = normals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / normals.len() as f64;
        assert!(m.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{m} {var}");
    }

    #[test]
    fn scene_has_about_the_requested_objects_inside_the_frame() {
        let spec = SceneSpec::new(100, 50, 1);
        let frames = scene(&spec);
        assert_eq!(frames.len(), 50);
        let per_frame = frames.iter().map(|f| f.objects.len()).sum::<usize>() as f64 / 50.0;
        // 5% missed, 2% false positives.
        assert!((90.0..=105.0).contains(&per_frame), "{per_frame}");
        for o in frames.iter().flat_map(|f| &f.objects) {
            assert!(o.bbox.width > 0.0 && o.bbox.height > 0.0);
            assert!(o.bbox.left > -50.0 && o.bbox.right() < 1970.0);
        }
        let again = scene(&spec);
        assert_eq!(frames, again);
        let o = &frames[0].objects[0];
        assert_eq!(o.user.len(), 1);
        assert_eq!(o.user[0].kind, EMBEDDING_KIND);
        assert_eq!(o.user[0].data.len(), 4 * spec.embedding_dim);
    }
}
