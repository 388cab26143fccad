//! What happens to a detector's candidates after parsing, like nvinfer's post-processing:
//! per-class confidence thresholds, size and region-of-interest filters, non-maximum
//! suppression (per class or across classes) and top-k. All in frame pixels.

use std::collections::BTreeMap;

use serde::Deserialize;
use vidmesh_protocol::BBox;

use super::parser::Detection;

/// How overlapping boxes are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NmsMode {
    /// Boxes only suppress boxes of their own class (nvinfer's `cluster-mode=2`).
    #[default]
    Class,
    /// Any box suppresses any other, whatever the class (one object, one label).
    Agnostic,
    /// Keep every candidate (the model did its own NMS, e.g. DETR or end-to-end YOLO exports).
    None,
}

/// Margins of the region of interest from the frame's edges, in pixels (nvinfer's
/// `roi-top-offset` / `roi-bottom-offset`, plus left and right). Objects must lie wholly
/// inside it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoiMargins {
    #[serde(default)]
    pub top: f32,
    #[serde(default)]
    pub bottom: f32,
    #[serde(default)]
    pub left: f32,
    #[serde(default)]
    pub right: f32,
}

/// Per-class overrides (nvinfer's `[class-attrs-N]` groups); unset keys use the stage's.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassAttrs {
    pub score_threshold: Option<f32>,
    pub nms_iou: Option<f32>,
    pub top_k: Option<usize>,
    pub min_size: Option<[f32; 2]>,
    pub max_size: Option<[f32; 2]>,
    pub roi: Option<RoiMargins>,
}

/// The resolved rules for one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassRules {
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub top_k: usize,
    /// Least width and height in frame pixels (0 = no limit).
    pub min_size: [f32; 2],
    /// Largest width and height in frame pixels (0 = no limit).
    pub max_size: [f32; 2],
    pub roi: RoiMargins,
}

/// Post-processing of one infer stage.
#[derive(Debug, Clone, PartialEq)]
pub struct PostProcess {
    pub defaults: ClassRules,
    pub classes: BTreeMap<i32, ClassRules>,
    pub nms: NmsMode,
    /// Most objects per frame (or per crop) over all classes.
    pub top_k: usize,
    /// Classes never reported (nvinfer's `filter-out-class-ids`).
    pub filter_out: Vec<i32>,
}

impl PostProcess {
    /// Resolves `class_attrs` (keys are class ids) over `defaults`, checking every value.
    pub fn new(
        defaults: ClassRules,
        class_attrs: &BTreeMap<String, ClassAttrs>,
        nms: NmsMode,
        top_k: usize,
        filter_out: Vec<i32>,
    ) -> Result<Self, String> {
        check_rules("", &defaults)?;
        let mut classes = BTreeMap::new();
        for (key, attrs) in class_attrs {
            let id: i32 = key
                .parse()
                .map_err(|_| format!("class_attrs key `{key}` is not a class id"))?;
            let rules = ClassRules {
                score_threshold: attrs.score_threshold.unwrap_or(defaults.score_threshold),
                nms_iou: attrs.nms_iou.unwrap_or(defaults.nms_iou),
                top_k: attrs.top_k.unwrap_or(defaults.top_k),
                min_size: attrs.min_size.unwrap_or(defaults.min_size),
                max_size: attrs.max_size.unwrap_or(defaults.max_size),
                roi: attrs.roi.unwrap_or(defaults.roi),
            };
            check_rules(&format!("class_attrs.{key}."), &rules)?;
            classes.insert(id, rules);
        }
        Ok(Self {
            defaults,
            classes,
            nms,
            top_k,
            filter_out,
        })
    }

    pub fn rules(&self, class_id: i32) -> &ClassRules {
        self.classes.get(&class_id).unwrap_or(&self.defaults)
    }

    /// The lowest threshold of any class: parsers may drop candidates below it early.
    pub fn min_score(&self) -> f32 {
        self.classes
            .values()
            .map(|r| r.score_threshold)
            .fold(self.defaults.score_threshold, f32::min)
    }

    /// Whether a class-free result (a classifier's) passes the thresholds of `class_id`.
    pub fn keeps_score(&self, class_id: i32, score: f32) -> bool {
        !self.filter_out.contains(&class_id)
            && super::parser::passes(score, self.rules(class_id).score_threshold)
    }

    /// Filters, suppresses and truncates candidates already in frame pixels (clipped to the
    /// `width` x `height` frame). Sorted by confidence, highest first.
    pub fn apply(&self, candidates: Vec<Detection>, width: f32, height: f32) -> Vec<Detection> {
        let kept: Vec<Detection> = candidates
            .into_iter()
            .filter(|d| self.keeps_score(d.class_id, d.confidence))
            .filter(|d| {
                let r = self.rules(d.class_id);
                d.bbox.area() > 0.0
                    && within_size(&d.bbox, r.min_size, r.max_size)
                    && within_roi(&d.bbox, &r.roi, width, height)
            })
            .collect();
        let mut kept = match self.nms {
            NmsMode::None => {
                let mut all = kept;
                all.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
                all
            }
            mode => non_max_suppression(kept, mode == NmsMode::Agnostic, |c| self.rules(c).nms_iou),
        };
        // Per-class top-k, then the overall one; the order (by confidence) is kept.
        let mut per_class: BTreeMap<i32, usize> = BTreeMap::new();
        kept.retain(|d| {
            let n = per_class.entry(d.class_id).or_default();
            *n += 1;
            *n <= self.rules(d.class_id).top_k
        });
        kept.truncate(self.top_k);
        kept
    }
}

fn check_rules(prefix: &str, r: &ClassRules) -> Result<(), String> {
    if !(0.0..=1.0).contains(&r.score_threshold) || !(0.0..=1.0).contains(&r.nms_iou) {
        return Err(format!(
            "{prefix}score_threshold and {prefix}nms_iou must be within 0..=1"
        ));
    }
    let sizes = r.min_size.iter().chain(&r.max_size);
    let margins = [r.roi.top, r.roi.bottom, r.roi.left, r.roi.right];
    if sizes.chain(&margins).any(|v| !v.is_finite() || *v < 0.0) {
        return Err(format!(
            "{prefix}min_size, {prefix}max_size and {prefix}roi must be non-negative numbers"
        ));
    }
    for i in 0..2 {
        if r.max_size[i] > 0.0 && r.max_size[i] < r.min_size[i] {
            return Err(format!("{prefix}max_size is smaller than {prefix}min_size"));
        }
    }
    Ok(())
}

fn within_size(b: &BBox, min: [f32; 2], max: [f32; 2]) -> bool {
    b.width >= min[0]
        && b.height >= min[1]
        && (max[0] <= 0.0 || b.width <= max[0])
        && (max[1] <= 0.0 || b.height <= max[1])
}

fn within_roi(b: &BBox, roi: &RoiMargins, width: f32, height: f32) -> bool {
    b.left >= roi.left
        && b.top >= roi.top
        && b.right() <= width - roi.right
        && b.bottom() <= height - roi.bottom
}

/// Greedy non-maximum suppression: keeps the highest-confidence boxes and drops any box whose
/// IoU with an already kept box (of its class, unless `agnostic`) exceeds the kept box's
/// class threshold. The result is sorted by confidence, highest first; equal confidences keep
/// their input order (the sort is stable), which makes the output deterministic and
/// reproducible by other implementations.
pub fn non_max_suppression(
    mut detections: Vec<Detection>,
    agnostic: bool,
    iou_threshold: impl Fn(i32) -> f32,
) -> Vec<Detection> {
    detections.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len().min(64));
    for d in detections {
        let suppressed = kept.iter().any(|k| {
            (agnostic || k.class_id == d.class_id)
                && k.bbox.iou(&d.bbox) > iou_threshold(k.class_id)
        });
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: i32, confidence: f32, l: f32) -> Detection {
        Detection {
            class_id,
            confidence,
            bbox: BBox::from_corners(l, 0.0, l + 10.0, 10.0),
            ..Default::default()
        }
    }

    fn rules() -> ClassRules {
        ClassRules {
            score_threshold: 0.5,
            nms_iou: 0.45,
            top_k: 100,
            min_size: [0.0, 0.0],
            max_size: [0.0, 0.0],
            roi: RoiMargins::default(),
        }
    }

    fn post(nms: NmsMode, attrs: &str) -> PostProcess {
        let attrs: BTreeMap<String, ClassAttrs> = toml::from_str(attrs).unwrap();
        PostProcess::new(rules(), &attrs, nms, 100, vec![]).unwrap()
    }

    #[test]
    fn overlapping_boxes_of_one_class_collapse_to_the_best() {
        let kept = post(NmsMode::Class, "").apply(
            vec![det(1, 0.6, 1.0), det(1, 0.9, 0.0), det(1, 0.8, 50.0)],
            100.0,
            100.0,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.confidence).collect();
        assert_eq!(scores, vec![0.9, 0.8]);
    }

    #[test]
    fn classes_suppress_each_other_only_when_agnostic() {
        let two = || vec![det(1, 0.9, 0.0), det(2, 0.8, 0.0)];
        assert_eq!(post(NmsMode::Class, "").apply(two(), 100.0, 100.0).len(), 2);
        assert_eq!(
            post(NmsMode::Agnostic, "").apply(two(), 100.0, 100.0).len(),
            1
        );
        assert_eq!(post(NmsMode::None, "").apply(two(), 100.0, 100.0).len(), 2);
    }

    #[test]
    fn per_class_thresholds_sizes_roi_and_top_k() {
        let p = post(
            NmsMode::Class,
            "[1]\nscore_threshold = 0.85\n[2]\nmin_size = [11, 0]\n[3]\ntop_k = 1\n[4]\nroi = { left = 5 }",
        );
        let kept = p.apply(
            vec![
                det(1, 0.8, 0.0),  // below class 1's 0.85
                det(1, 0.9, 30.0), // kept
                det(2, 0.9, 0.0),  // 10 px wide, class 2 needs 11
                det(3, 0.9, 0.0),  // kept
                det(3, 0.7, 60.0), // over class 3's top_k
                det(4, 0.9, 0.0),  // starts left of the ROI
                det(0, 0.4, 0.0),  // below the default
            ],
            100.0,
            100.0,
        );
        let got: Vec<(i32, f32)> = kept.iter().map(|d| (d.class_id, d.confidence)).collect();
        assert_eq!(got, vec![(1, 0.9), (3, 0.9)]);
        assert_eq!(p.min_score(), 0.5);
    }

    #[test]
    fn bad_values_are_rejected_with_their_key() {
        let attrs: BTreeMap<String, ClassAttrs> =
            toml::from_str("[7]\nscore_threshold = 1.5").unwrap();
        let err = PostProcess::new(rules(), &attrs, NmsMode::Class, 10, vec![]).unwrap_err();
        assert!(err.contains("class_attrs.7.score_threshold"), "{err}");
        let attrs: BTreeMap<String, ClassAttrs> = toml::from_str("[person]\ntop_k = 1").unwrap();
        let err = PostProcess::new(rules(), &attrs, NmsMode::Class, 10, vec![]).unwrap_err();
        assert!(err.contains("`person`"), "{err}");
    }
}
