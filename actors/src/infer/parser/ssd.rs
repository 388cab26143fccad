//! SSD-style outputs: `boxes` [N, A, 4] and per-class `scores` [N, A, C], either already
//! decoded against the anchors (post-sigmoid or softmax scores and corner boxes, as the
//! TensorFlow Object Detection API and most ONNX exports with built-in decoding produce them),
//! or raw: box encodings (ty, tx, th, tw) decoded here against anchors that a model output
//! holds or that the `anchors` table generates, and score logits put through a sigmoid or
//! softmax here.

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::decode::{sigmoid, softmax_into};
use super::{check_shape, options, passes, Detection, OutputParser, ParseInput, Parsed};
use crate::infer::backend::ModelIo;
use crate::stage::StageError;

/// Corner order of a boxes tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// ymin, xmin, ymax, xmax (TensorFlow Object Detection API).
    #[default]
    Yxyx,
    /// xmin, ymin, xmax, ymax.
    Xyxy,
}

impl BoxFormat {
    /// (x0, y0, x1, y1) of a box in this format.
    pub fn corners(self, b: &[f32]) -> (f32, f32, f32, f32) {
        match self {
            BoxFormat::Yxyx => (b[1], b[0], b[3], b[2]),
            BoxFormat::Xyxy => (b[0], b[1], b[2], b[3]),
        }
    }
}

/// What turns score values into probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScoreActivation {
    /// The model already did (default).
    #[default]
    None,
    /// An independent sigmoid per class.
    Sigmoid,
    /// Softmax over each anchor's classes (background included).
    Softmax,
}

/// How the anchors of an `anchors` output are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnchorFormat {
    /// ycenter, xcenter, height, width (TensorFlow's decoder input).
    #[default]
    Yxhw,
    /// ymin, xmin, ymax, xmax.
    Yxyx,
}

/// Where the anchors of raw box encodings come from: a model output, or generated like the
/// TensorFlow Object Detection API's SSD anchor generator.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AnchorSettings {
    /// Name of a model output holding the anchors, [A, 4] (or [N, A, 4]).
    #[serde(default)]
    output: Option<String>,
    /// Layout of that output's anchors. Default "yxhw".
    #[serde(default)]
    format: AnchorFormat,
    /// Feature map sizes [height, width], finest first, to generate anchors for.
    #[serde(default)]
    feature_maps: Vec<[usize; 2]>,
    /// Aspect ratios (width / height) of the anchors of every cell.
    #[serde(default)]
    aspect_ratios: Vec<f32>,
    /// Anchor scale of the first and last feature map, in 0..1 of the input.
    #[serde(default)]
    min_scale: Option<f32>,
    #[serde(default)]
    max_scale: Option<f32>,
    /// Add per cell one square anchor of the scale between this map's and the next's.
    /// Default true.
    #[serde(default = "yes")]
    interpolated_scale: bool,
}

/// Most anchors a generated set may hold: far more than any SSD has, few enough that a
/// mistyped feature map size cannot exhaust memory.
const MAX_ANCHORS: usize = 4_000_000;

impl AnchorSettings {
    fn generates(&self) -> bool {
        !self.feature_maps.is_empty()
            || !self.aspect_ratios.is_empty()
            || self.min_scale.is_some()
            || self.max_scale.is_some()
    }

    /// The generated anchors as (ycenter, xcenter, height, width) in 0..1: for each feature
    /// map l of L, scale s_l = min + (max - min) * l / (L - 1) (min alone when L = 1); per cell,
    /// for each aspect ratio r an anchor of height s_l / sqrt(r) and width s_l * sqrt(r), then
    /// with `interpolated_scale` a square one of side sqrt(s_l * s_{l+1}), s_L being 1; cells
    /// are centred at ((x + 0.5) / width, (y + 0.5) / height), row by row.
    fn generate(&self) -> Result<Vec<[f32; 4]>, String> {
        let (Some(min), Some(max)) = (self.min_scale, self.max_scale) else {
            return Err("anchors: generated anchors need min_scale and max_scale".into());
        };
        if !(min.is_finite() && max.is_finite() && 0.0 < min && min <= max) {
            return Err("anchors: need 0 < min_scale <= max_scale".into());
        }
        if self.feature_maps.is_empty() || self.aspect_ratios.is_empty() {
            return Err("anchors: generated anchors need feature_maps and aspect_ratios".into());
        }
        if self
            .aspect_ratios
            .iter()
            .any(|r| !r.is_finite() || *r <= 0.0)
        {
            return Err("anchors: aspect_ratios must be positive".into());
        }
        let per_cell = self.aspect_ratios.len() + usize::from(self.interpolated_scale);
        let mut total = 0usize;
        for [h, w] in &self.feature_maps {
            if *h == 0 || *w == 0 {
                return Err("anchors: feature map sizes must be at least 1".into());
            }
            total = h
                .checked_mul(*w)
                .and_then(|c| c.checked_mul(per_cell))
                .and_then(|c| c.checked_add(total))
                .filter(|t| *t <= MAX_ANCHORS)
                .ok_or_else(|| format!("anchors: more than {MAX_ANCHORS} anchors"))?;
        }
        let layers = self.feature_maps.len();
        let scale = |l: usize| {
            if l >= layers {
                1.0
            } else if layers == 1 {
                min
            } else {
                min + (max - min) * l as f32 / (layers - 1) as f32
            }
        };
        let mut anchors = Vec::with_capacity(total);
        for (l, [h, w]) in self.feature_maps.iter().enumerate() {
            let s = scale(l);
            let mut shapes: Vec<(f32, f32)> = self
                .aspect_ratios
                .iter()
                .map(|r| (s / r.sqrt(), s * r.sqrt()))
                .collect();
            if self.interpolated_scale {
                let side = (s * scale(l + 1)).sqrt();
                shapes.push((side, side));
            }
            for y in 0..*h {
                for x in 0..*w {
                    let yc = (y as f32 + 0.5) / *h as f32;
                    let xc = (x as f32 + 0.5) / *w as f32;
                    anchors.extend(shapes.iter().map(|&(ah, aw)| [yc, xc, ah, aw]));
                }
            }
        }
        Ok(anchors)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ssd {
    /// Name of the boxes output. Default "boxes".
    #[serde(default = "boxes_name")]
    boxes_output: String,
    /// Name of the scores output. Default "scores".
    #[serde(default = "scores_name")]
    scores_output: String,
    /// Corner order of decoded boxes. Default "yxyx".
    #[serde(default)]
    box_format: Option<BoxFormat>,
    /// Boxes (or, with an anchors output, anchors) are in 0..1 of the network input rather
    /// than pixels. Default true.
    #[serde(default = "yes")]
    normalized: bool,
    /// Score column that means "no object" and is never reported.
    #[serde(default)]
    background_class: Option<usize>,
    /// The boxes are raw encodings to decode against these anchors.
    #[serde(default)]
    anchors: Option<AnchorSettings>,
    /// Divisors of the encodings ty, tx, th, tw (TensorFlow's scale factors; the inverse of
    /// Caffe SSD's variances). Default [10, 10, 5, 5].
    #[serde(default = "scale_factors")]
    scale_factors: [f32; 4],
    #[serde(default)]
    score_activation: ScoreActivation,
    /// Generated anchors, (ycenter, xcenter, height, width) in 0..1.
    #[serde(skip)]
    generated: Vec<[f32; 4]>,
}

fn boxes_name() -> String {
    "boxes".into()
}
fn scores_name() -> String {
    "scores".into()
}
fn yes() -> bool {
    true
}
fn scale_factors() -> [f32; 4] {
    [10.0, 10.0, 5.0, 5.0]
}

pub fn build(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let mut ssd = options::<Ssd>(table)?;
    if ssd
        .scale_factors
        .iter()
        .any(|f| !f.is_finite() || *f == 0.0)
    {
        return Err("scale_factors must be finite and non-zero".into());
    }
    if let Some(anchors) = &ssd.anchors {
        if ssd.box_format.is_some() {
            return Err(
                "box_format describes decoded boxes; with `anchors` the boxes are encodings (ty, tx, th, tw)".into(),
            );
        }
        match (&anchors.output, anchors.generates()) {
            (Some(_), true) => {
                return Err("anchors: give either `output` or the generator keys (feature_maps, aspect_ratios, min_scale, max_scale), not both".into())
            }
            (None, false) => {
                return Err("anchors: give `output` (a model output holding them) or feature_maps, aspect_ratios, min_scale and max_scale".into())
            }
            (None, true) => {
                if !ssd.normalized {
                    return Err("generated anchors are in 0..1 of the input: normalized cannot be false".into());
                }
                ssd.generated = anchors.generate()?;
            }
            (Some(_), false) => {}
        }
    }
    Ok(Box::new(ssd))
}

/// Anchors of one image, (ycenter, xcenter, height, width).
enum Anchors<'a> {
    Generated(&'a [[f32; 4]]),
    Output(&'a [f32], AnchorFormat),
}

impl Anchors<'_> {
    fn len(&self) -> usize {
        match self {
            Anchors::Generated(a) => a.len(),
            Anchors::Output(a, _) => a.len() / 4,
        }
    }

    /// Anchor `i` < `len()`.
    fn get(&self, i: usize) -> [f32; 4] {
        match self {
            Anchors::Generated(a) => a[i],
            Anchors::Output(a, AnchorFormat::Yxhw) => {
                [a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]
            }
            Anchors::Output(a, AnchorFormat::Yxyx) => {
                let [y0, x0, y1, x1] = [a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]];
                [(y0 + y1) / 2.0, (x0 + x1) / 2.0, y1 - y0, x1 - x0]
            }
        }
    }
}

impl Ssd {
    /// This image's anchors, when the boxes are raw encodings.
    fn anchors<'a>(&'a self, input: &'a ParseInput) -> Result<Option<Anchors<'a>>, StageError> {
        let Some(settings) = &self.anchors else {
            return Ok(None);
        };
        let Some(name) = &settings.output else {
            return Ok(Some(Anchors::Generated(&self.generated)));
        };
        let out = input.output(name)?;
        // An unbatched [A, 4] output is the same for every image; a batched one has a copy
        // per image (or a single copy that the fixed-batch runner kept from one chunk).
        let data = match out.shape.as_slice() {
            [a, 4] => out.image(0, a.saturating_mul(4))?,
            [n, _, 4] => out.image(
                if input.index < *n { input.index } else { 0 },
                out.per_image(),
            )?,
            shape => {
                return Err(StageError::Runtime(format!(
                    "ssd parser: anchors output `{name}` has shape {shape:?}, expected [anchors, 4]"
                )))
            }
        };
        Ok(Some(Anchors::Output(data, settings.format)))
    }

    /// The corners (x0, y0, x1, y1), in 0..1 or pixels like the input, of encoding `t` against
    /// `anchor`.
    fn decode(&self, t: &[f32], anchor: [f32; 4]) -> (f32, f32, f32, f32) {
        let [ya, xa, ha, wa] = anchor;
        let f = self.scale_factors;
        let yc = t[0] / f[0] * ha + ya;
        let xc = t[1] / f[1] * wa + xa;
        let h = (t[2] / f[2]).exp() * ha;
        let w = (t[3] / f[3]).exp() * wa;
        (xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0)
    }
}

impl OutputParser for Ssd {
    fn check(&self, io: &ModelIo) -> Result<(), String> {
        let boxes_expected = if self.anchors.is_some() {
            "[N, anchors, 4] (ty, tx, th, tw)"
        } else {
            "[N, anchors, 4]"
        };
        check_shape(
            io,
            &self.boxes_output,
            &[None, None, Some(4)],
            boxes_expected,
        )?;
        check_shape(
            io,
            &self.scores_output,
            &[None, None, None],
            "[N, anchors, classes]",
        )?;
        let count = |name: &str| {
            io.output_shape(name)
                .and_then(|s| s.get(1).copied())
                .filter(|a| *a >= 0)
        };
        let boxes = count(&self.boxes_output);
        if let (Some(b), Some(s)) = (boxes, count(&self.scores_output)) {
            if b != s {
                return Err(format!(
                    "outputs `{}` and `{}` disagree on the number of anchors ({b} and {s})",
                    self.boxes_output, self.scores_output
                ));
            }
        }
        let Some(settings) = &self.anchors else {
            return Ok(());
        };
        let anchors = match &settings.output {
            Some(name) => {
                let shape = io.require_output(name)?;
                let ok = matches!(shape, [_, 4] | [_, _, 4] | [_, -1] | [_, _, -1]);
                if !ok {
                    return Err(format!(
                        "anchors output `{name}` has shape {}, expected [anchors, 4]",
                        ModelIo::shape_text(shape)
                    ));
                }
                shape.get(shape.len() - 2).copied().filter(|a| *a >= 0)
            }
            None => i64::try_from(self.generated.len()).ok(),
        };
        match (boxes, anchors) {
            (Some(b), Some(a)) if a != b => Err(format!(
                "output `{}` has {b} box encodings but there are {a} anchors",
                self.boxes_output
            )),
            _ => Ok(()),
        }
    }

    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let classes = *io.output_shape(&self.scores_output)?.get(2)?;
        usize::try_from(classes).ok()
    }

    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError> {
        let (box_shape, boxes) = input.image_of(&self.boxes_output)?;
        let (score_shape, scores) = input.image_of(&self.scores_output)?;
        let (count, classes) = match (box_shape, score_shape) {
            ([_, a, 4], [_, a2, c]) if a == a2 => (*a, *c),
            (b, s) => {
                return Err(StageError::Runtime(format!(
                    "ssd parser: boxes shape {b:?} and scores shape {s:?} do not agree"
                )))
            }
        };
        let anchors = self.anchors(input)?;
        if let Some(anchors) = &anchors {
            if anchors.len() != count {
                return Err(StageError::Runtime(format!(
                    "ssd parser: {count} box encodings but {} anchors",
                    anchors.len()
                )));
            }
        }
        let (sx, sy) = if self.normalized {
            (input.net_width, input.net_height)
        } else {
            (1.0, 1.0)
        };
        let format = self.box_format.unwrap_or_default();
        let mut probabilities = Vec::with_capacity(classes);
        let mut found = Vec::new();
        for a in 0..count {
            let row = &scores[a * classes..(a + 1) * classes];
            let row: &[f32] = match self.score_activation {
                ScoreActivation::None => row,
                ScoreActivation::Sigmoid => {
                    probabilities.clear();
                    probabilities.extend(row.iter().map(|&v| sigmoid(v)));
                    &probabilities
                }
                ScoreActivation::Softmax => {
                    softmax_into(row, &mut probabilities);
                    &probabilities
                }
            };
            let mut corners = None;
            for (c, &score) in row.iter().enumerate() {
                if Some(c) == self.background_class || !passes(score, input.min_score) {
                    continue;
                }
                let b = &boxes[a * 4..a * 4 + 4];
                let (x0, y0, x1, y1) = *corners.get_or_insert_with(|| match &anchors {
                    Some(anchors) => self.decode(b, anchors.get(a)),
                    None => format.corners(b),
                });
                if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
                    continue;
                }
                found.push(Detection {
                    class_id: c as i32,
                    confidence: score,
                    bbox: BBox::from_corners(x0 * sx, y0 * sy, x1 * sx, y1 * sy),
                    ..Default::default()
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

    fn ssd() -> Box<dyn OutputParser> {
        build(&toml::from_str("background_class = 0").unwrap()).unwrap()
    }

    fn input(outputs: &[OutputTensor], w: f32, h: f32) -> ParseInput<'_> {
        ParseInput {
            outputs,
            index: 0,
            net_width: w,
            net_height: h,
            min_score: 0.5,
        }
    }

    #[test]
    fn ssd_reads_yxyx_normalised_boxes_and_skips_background() {
        let outputs = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 2, 4],
                data: vec![0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.0],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.99, 0.8, 0.9, 0.1],
            },
        ];
        let d = ssd()
            .parse(&input(&outputs, 300.0, 100.0))
            .unwrap()
            .detections;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        let b = d[0].bbox;
        assert!((b.left - 60.0).abs() < 1e-4 && (b.top - 10.0).abs() < 1e-4);
        assert!((b.right() - 180.0).abs() < 1e-4 && (b.bottom() - 50.0).abs() < 1e-4);
    }

    #[test]
    fn mismatched_output_shapes_are_an_error_not_a_panic() {
        let outputs = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 3, 4],
                data: vec![0.0; 12],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.0; 4],
            },
        ];
        assert!(ssd().parse(&input(&outputs, 1.0, 1.0)).is_err());
        let short = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, 2, 4],
                data: vec![0.0; 3],
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, 2, 2],
                data: vec![0.0; 4],
            },
        ];
        assert!(ssd().parse(&input(&short, 1.0, 1.0)).is_err());
    }

    #[test]
    fn unknown_options_are_named() {
        let err = build(&toml::from_str("box_fromat = 'xyxy'").unwrap())
            .err()
            .unwrap();
        assert!(err.contains("box_fromat"), "{err}");
    }

    fn raw(
        options: &str,
        boxes: Vec<f32>,
        scores: Vec<f32>,
        extra: Vec<OutputTensor>,
    ) -> Result<Parsed, String> {
        let anchors = boxes.len() / 4;
        let mut outputs = vec![
            OutputTensor {
                name: "boxes".into(),
                shape: vec![1, anchors, 4],
                data: boxes,
            },
            OutputTensor {
                name: "scores".into(),
                shape: vec![1, anchors, scores.len() / anchors.max(1)],
                data: scores,
            },
        ];
        outputs.extend(extra);
        let parser = build(&toml::from_str(options).unwrap())?;
        parser
            .parse(&input(&outputs, 200.0, 100.0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn generated_anchors_follow_the_documented_layout() {
        let settings: AnchorSettings = toml::from_str(
            "feature_maps = [[2, 3], [1, 1]]\naspect_ratios = [1.0, 4.0]\nmin_scale = 0.2\nmax_scale = 0.8",
        )
        .unwrap();
        let a = settings.generate().unwrap();
        assert_eq!(a.len(), 2 * 3 * 3 + 3);
        // First cell of the first map: centre (0.25, 1/6); ratio 1, ratio 4, interpolated.
        let close = |x: [f32; 4], y: [f32; 4]| x.iter().zip(y).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close(a[0], [0.25, 1.0 / 6.0, 0.2, 0.2]), "{:?}", a[0]);
        assert!(close(a[1], [0.25, 1.0 / 6.0, 0.1, 0.4]), "{:?}", a[1]);
        assert!(close(a[2], [0.25, 1.0 / 6.0, 0.4, 0.4]), "{:?}", a[2]);
        // The second cell moves right; the last map's square is sqrt(0.8 * 1).
        assert!(close(a[3], [0.25, 0.5, 0.2, 0.2]), "{:?}", a[3]);
        let s = 0.8f32.sqrt();
        assert!(close(a[20], [0.5, 0.5, s, s]), "{:?}", a[20]);
        for bad in [
            "feature_maps = [[0, 3]]\naspect_ratios = [1.0]\nmin_scale = 0.2\nmax_scale = 0.8",
            "feature_maps = [[3, 3]]\naspect_ratios = [-1.0]\nmin_scale = 0.2\nmax_scale = 0.8",
            "feature_maps = [[3, 3]]\naspect_ratios = [1.0]\nmin_scale = 0.9\nmax_scale = 0.8",
            "feature_maps = [[100000, 100000]]\naspect_ratios = [1.0]\nmin_scale = 0.2\nmax_scale = 0.8",
            "feature_maps = [[3, 3]]\naspect_ratios = [1.0]",
        ] {
            let settings: AnchorSettings = toml::from_str(bad).unwrap();
            assert!(settings.generate().is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_encodings_decode_against_an_anchors_output_with_sigmoid_scores() {
        let anchors = OutputTensor {
            name: "anchors".into(),
            shape: vec![2, 4],
            data: vec![0.5, 0.5, 0.2, 0.4, 0.1, 0.1, 0.1, 0.1],
        };
        // Anchor 0: shifted by 0.1 * height down and scaled e^(0.5) wide; class 1 logit 2.
        let boxes = vec![1.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0];
        let scores = vec![5.0, 2.0, 5.0, -4.0];
        let options =
            "background_class = 0\nscore_activation = 'sigmoid'\nanchors = { output = 'anchors' }";
        let d = raw(
            options,
            boxes.clone(),
            scores.clone(),
            vec![anchors.clone()],
        )
        .unwrap()
        .detections;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 1);
        assert!((d[0].confidence - sigmoid(2.0)).abs() < 1e-6);
        let (yc, xc, h, w) = (0.52f32, 0.5f32, 0.2f32, 0.4 * 0.5f32.exp());
        let b = d[0].bbox;
        assert!((b.left - (xc - w / 2.0) * 200.0).abs() < 1e-3, "{b:?}");
        assert!((b.top - (yc - h / 2.0) * 100.0).abs() < 1e-3, "{b:?}");
        assert!((b.width - w * 200.0).abs() < 1e-3 && (b.height - h * 100.0).abs() < 1e-3);
        // Softmax over [5, 2]: background takes most; class 1 gets 1 / (1 + e^3).
        let softmax = options.replace("sigmoid", "softmax");
        let d = raw(
            &softmax,
            boxes.clone(),
            vec![-5.0, 2.0, 5.0, -4.0],
            vec![anchors.clone()],
        )
        .unwrap()
        .detections;
        assert_eq!(d.len(), 1);
        assert!((d[0].confidence - 1.0 / (1.0 + (-7.0f32).exp())).abs() < 1e-6);
        // Three anchors for two encodings, a missing anchors output, a huge th: errors or skipped.
        let three = OutputTensor {
            shape: vec![3, 4],
            data: vec![0.1; 12],
            ..anchors.clone()
        };
        assert!(raw(options, boxes.clone(), scores.clone(), vec![three]).is_err());
        assert!(raw(options, boxes.clone(), scores.clone(), vec![]).is_err());
        let huge = vec![0.0, 0.0, 1e9, 0.0, 0.0, 0.0, 0.0, 0.0];
        let d = raw(options, huge, scores, vec![anchors]).unwrap();
        assert!(d.detections.is_empty());
    }

    #[test]
    fn anchor_settings_are_checked_when_built_and_against_the_model() {
        for (bad, says) in [
            ("anchors = {}", "give `output`"),
            ("anchors = { output = 'a', min_scale = 0.1 }", "not both"),
            ("box_format = 'xyxy'\nanchors = { output = 'a' }", "encodings"),
            ("scale_factors = [10, 0, 5, 5]", "scale_factors"),
            ("normalized = false\nanchors = { feature_maps = [[1, 1]], aspect_ratios = [1.0], min_scale = 0.2, max_scale = 0.9 }", "normalized"),
        ] {
            let err = build(&toml::from_str(bad).unwrap()).err().unwrap();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let p = build(
            &toml::from_str("anchors = { feature_maps = [[2, 2]], aspect_ratios = [1.0], min_scale = 0.2, max_scale = 0.9 }")
                .unwrap(),
        )
        .unwrap();
        let io = |a: i64| ModelIo {
            input_name: "x".into(),
            input_shape: vec![1, 3, 64, 64],
            outputs: vec![
                ("boxes".into(), vec![1, a, 4]),
                ("scores".into(), vec![1, a, 2]),
            ],
        };
        assert!(p.check(&io(8)).is_ok());
        let err = p.check(&io(9)).unwrap_err();
        assert!(
            err.contains("9 box encodings but there are 8 anchors"),
            "{err}"
        );
        let p = build(&toml::from_str("anchors = { output = 'priors' }").unwrap()).unwrap();
        assert!(p.check(&io(8)).unwrap_err().contains("no output `priors`"));
    }
}
