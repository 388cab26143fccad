//! Greedy per-class non-maximum suppression.

use super::Detection;

/// Keeps, per class, the highest-confidence boxes and drops any box whose IoU with an already
/// kept box of its class exceeds `iou_threshold`. The result is sorted by confidence,
/// highest first; equal confidences keep their input order (the sort is stable), which makes
/// the output deterministic and reproducible by other implementations.
pub fn non_max_suppression(mut detections: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut kept: Vec<Detection> = Vec::with_capacity(detections.len().min(64));
    for d in detections {
        let suppressed = kept
            .iter()
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou_threshold);
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::BBox;

    fn det(class_id: i32, confidence: f32, l: f32) -> Detection {
        Detection {
            class_id,
            confidence,
            bbox: BBox::from_corners(l, 0.0, l + 10.0, 10.0),
        }
    }

    #[test]
    fn overlapping_boxes_of_one_class_collapse_to_the_best() {
        let kept = non_max_suppression(
            vec![det(1, 0.6, 1.0), det(1, 0.9, 0.0), det(1, 0.8, 50.0)],
            0.45,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.confidence).collect();
        assert_eq!(scores, vec![0.9, 0.8]);
    }

    #[test]
    fn different_classes_do_not_suppress_each_other() {
        let kept = non_max_suppression(vec![det(1, 0.9, 0.0), det(2, 0.8, 0.0)], 0.45);
        assert_eq!(kept.len(), 2);
    }
}
