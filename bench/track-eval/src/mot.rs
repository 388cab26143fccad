//! Detections in, tracks out.
//!
//! Input, one of:
//! * MOTChallenge `det.txt`: `frame,id,left,top,width,height,score[,x,y,z[,f1,f2,...]]`,
//!   frames 1-based, `id` ignored (-1 in detection files); every detection gets class 0.
//!   Columns after the tenth, if any, are the detection's appearance embedding (as DeepSORT's
//!   detection files append them); it is attached as object user meta of kind
//!   [`InputOptions::embedding_kind`], little-endian f32s, where the appearance tracker
//!   looks for it.
//! * JSON lines, one frame per line, as vidmesh's `native` broker schema writes them:
//!   `{"frame_num": 0, "width": 1920, "height": 1080, "objects": [{"class_id": 0,
//!   "confidence": 0.9, "bbox": {"left": 1, "top": 2, "width": 3, "height": 4}}]}` —
//!   `frame_num` 0-based, other keys ignored. An object may carry `"embedding": [f32...]`
//!   (attached like a det.txt embedding) and `"user"` meta, which is kept.
//!
//! Output: MOTChallenge results, `frame,id,left,top,width,height,score,-1,-1,-1`, 1-based
//! frames, one line per object the tracker gave an id.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde::Deserialize;
use vidmesh_protocol::{BBox, FrameMeta, ObjectMeta, UserMeta};

/// How the detections are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// MOTChallenge det.txt.
    Mot,
    /// One JSON frame per line.
    JsonLines,
}

impl InputFormat {
    /// JSON lines when the first non-blank character is `{`, else det.txt.
    pub fn detect(text: &str) -> Self {
        match text.trim_start().chars().next() {
            Some('{') => Self::JsonLines,
            _ => Self::Mot,
        }
    }
}

/// One video's frames, in order, numbered from 0 with no gaps (frames without detections are
/// present and empty: a tracker must see them to age its tracks).
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    pub frames: Vec<FrameMeta>,
}

impl Sequence {
    /// Detections over all frames.
    pub fn detections(&self) -> usize {
        self.frames.iter().map(|f| f.objects.len()).sum()
    }
}

/// What the input does not say itself.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// Frame size for inputs that do not carry it.
    pub width: u32,
    pub height: u32,
    /// At least this many frames (MOTChallenge's `seqLength`), even if the last ones have no
    /// detections.
    pub min_frames: u64,
    /// The user meta `kind` under which embeddings are attached to objects.
    pub embedding_kind: String,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self {
            width: 1920,
            height: 1080,
            min_frames: 0,
            embedding_kind: EMBEDDING_KIND.into(),
        }
    }
}

/// The appearance tracker's default embedding kind.
pub const EMBEDDING_KIND: &str = "vidmesh.embedding/f32";

/// An embedding as object user meta: little-endian f32s.
pub fn embedding_meta(kind: &str, values: &[f32]) -> UserMeta {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    UserMeta {
        kind: kind.to_string(),
        data: Bytes::from(data),
    }
}

/// Parses detections; `source`, when given, keeps one `source_id` of a JSON lines input.
pub fn parse(
    text: &str,
    format: InputFormat,
    options: &InputOptions,
    source: Option<u32>,
) -> Result<Sequence> {
    let mut by_frame: BTreeMap<u64, Vec<ObjectMeta>> = BTreeMap::new();
    let mut sizes: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    match format {
        InputFormat::Mot => parse_mot(text, options, &mut by_frame)?,
        InputFormat::JsonLines => {
            parse_json_lines(text, options, source, &mut by_frame, &mut sizes)?
        }
    }
    let last = by_frame.keys().next_back().map_or(0, |k| k + 1);
    let len = last.max(options.min_frames);
    let frames = (0..len)
        .map(|n| {
            let (width, height) = sizes
                .get(&n)
                .copied()
                .unwrap_or((options.width, options.height));
            FrameMeta {
                source_id: source.unwrap_or(0),
                frame_num: n,
                width,
                height,
                objects: by_frame.remove(&n).unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect();
    Ok(Sequence { frames })
}

fn parse_mot(
    text: &str,
    options: &InputOptions,
    by_frame: &mut BTreeMap<u64, Vec<ObjectMeta>>,
) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("line {}: `{line}`", i + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 7 {
            bail!("{}: expected at least 7 comma-separated fields", at());
        }
        let num = |k: usize| -> Result<f64> {
            fields[k]
                .parse::<f64>()
                .with_context(|| format!("{}: field {} is not a number", at(), k + 1))
        };
        let frame = num(0)?;
        if frame < 1.0 || frame.fract() != 0.0 {
            bail!("{}: frame numbers are whole numbers from 1", at());
        }
        let mut user = Vec::new();
        if fields.len() > 10 {
            let embedding = (10..fields.len())
                .map(|k| num(k).map(|v| v as f32))
                .collect::<Result<Vec<f32>>>()?;
            user.push(embedding_meta(&options.embedding_kind, &embedding));
        }
        let object = ObjectMeta {
            class_id: 0,
            confidence: num(6)? as f32,
            bbox: BBox {
                left: num(2)? as f32,
                top: num(3)? as f32,
                width: num(4)? as f32,
                height: num(5)? as f32,
            },
            user,
            ..Default::default()
        };
        by_frame.entry(frame as u64 - 1).or_default().push(object);
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonFrame {
    #[serde(default)]
    source_id: u32,
    frame_num: u64,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
    #[serde(default)]
    objects: Vec<JsonObject>,
}

#[derive(Deserialize)]
struct JsonObject {
    #[serde(default)]
    class_id: i32,
    #[serde(default)]
    label: String,
    confidence: f32,
    bbox: BBox,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    user: Vec<UserMeta>,
}

fn parse_json_lines(
    text: &str,
    options: &InputOptions,
    source: Option<u32>,
    by_frame: &mut BTreeMap<u64, Vec<ObjectMeta>>,
    sizes: &mut BTreeMap<u64, (u32, u32)>,
) -> Result<()> {
    let mut seen_source: Option<u32> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let frame: JsonFrame =
            serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
        match source {
            Some(s) if s != frame.source_id => continue,
            Some(_) => {}
            None => match seen_source {
                Some(s) if s != frame.source_id => bail!(
                    "line {}: the input has sources {s} and {}; choose one with --source",
                    i + 1,
                    frame.source_id
                ),
                _ => seen_source = Some(frame.source_id),
            },
        }
        if frame.width > 0 && frame.height > 0 {
            sizes.insert(frame.frame_num, (frame.width, frame.height));
        }
        let objects = by_frame.entry(frame.frame_num).or_default();
        objects.extend(frame.objects.into_iter().map(|o| {
            let mut user = o.user;
            if let Some(e) = o.embedding {
                user.push(embedding_meta(&options.embedding_kind, &e));
            }
            ObjectMeta {
                class_id: o.class_id,
                label: o.label,
                confidence: o.confidence,
                bbox: o.bbox,
                user,
                ..Default::default()
            }
        }));
    }
    Ok(())
}

/// Writes the tracked objects of `frames` as MOTChallenge results.
pub fn write_results(frames: &[FrameMeta], out: &mut impl Write) -> std::io::Result<()> {
    for frame in frames {
        for o in &frame.objects {
            if let Some(id) = o.track_id {
                let b = o.bbox;
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},-1,-1,-1",
                    frame.frame_num + 1,
                    id,
                    b.left,
                    b.top,
                    b.width,
                    b.height,
                    o.confidence
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InputOptions {
        InputOptions {
            width: 640,
            height: 480,
            ..Default::default()
        }
    }

    #[test]
    fn det_txt_fills_gaps_and_is_zero_based_inside() {
        let text = "1,-1,10,20,30,40,0.9,-1,-1,-1\n\n3,-1,11,21,30,40,0.4,-1,-1,-1\n3,-1,100,200,5,6,0.2\n";
        assert_eq!(InputFormat::detect(text), InputFormat::Mot);
        let seq = parse(text, InputFormat::Mot, &opts(), None).unwrap();
        assert_eq!(seq.frames.len(), 3);
        assert_eq!(seq.frames[0].objects.len(), 1);
        assert!(seq.frames[1].objects.is_empty());
        assert_eq!(seq.frames[2].objects.len(), 2);
        assert_eq!(seq.frames[2].frame_num, 2);
        assert_eq!((seq.frames[2].width, seq.frames[2].height), (640, 480));
        let o = &seq.frames[2].objects[0];
        assert_eq!((o.bbox.left, o.bbox.top, o.confidence), (11.0, 21.0, 0.4));
        assert_eq!(seq.detections(), 3);
    }

    #[test]
    fn sequence_length_can_exceed_the_last_detection() {
        let options = InputOptions {
            min_frames: 10,
            ..opts()
        };
        let seq = parse("2,-1,0,0,1,1,1", InputFormat::Mot, &options, None).unwrap();
        assert_eq!(seq.frames.len(), 10);
    }

    #[test]
    fn bad_det_lines_are_reported_with_their_line_number() {
        let err = parse(
            "1,-1,0,0,1,1,1\n0,-1,0,0,1,1,1",
            InputFormat::Mot,
            &opts(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse("1,-1,0,0,1", InputFormat::Mot, &opts(), None).is_err());
        assert!(parse("1,-1,x,0,1,1,1", InputFormat::Mot, &opts(), None).is_err());
    }

    #[test]
    fn columns_after_the_tenth_are_an_embedding() {
        let text = "1,-1,0,0,10,10,0.9,-1,-1,-1,0.5,-0.25,1\n1,-1,5,5,10,10,0.9,-1,-1,-1\n";
        let seq = parse(text, InputFormat::Mot, &opts(), None).unwrap();
        let with = &seq.frames[0].objects[0];
        assert_eq!(with.user.len(), 1);
        assert_eq!(with.user[0].kind, EMBEDDING_KIND);
        let values: Vec<f32> = with.user[0]
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [0.5, -0.25, 1.0]);
        assert!(seq.frames[0].objects[1].user.is_empty());
        let json = r#"{"frame_num":0,"objects":[{"confidence":0.5,"bbox":{"left":0,"top":0,"width":1,"height":1},"embedding":[0.5,-0.25,1]}]}"#;
        let seq = parse(json, InputFormat::JsonLines, &opts(), None).unwrap();
        assert_eq!(seq.frames[0].objects[0].user, with.user);
    }

    #[test]
    fn json_lines_in_the_native_schema() {
        let text = concat!(
            r#"{"source_id":0,"source_name":"a","frame_num":0,"pts_ns":0,"ntp_ns":null,"width":320,"height":240,"objects":[{"class_id":2,"label":"car","confidence":0.75,"bbox":{"left":1.5,"top":2,"width":3,"height":4},"track_id":null}]}"#,
            "\n",
            r#"{"frame_num":2,"objects":[]}"#,
            "\n"
        );
        assert_eq!(InputFormat::detect(text), InputFormat::JsonLines);
        let seq = parse(text, InputFormat::JsonLines, &opts(), None).unwrap();
        assert_eq!(seq.frames.len(), 3);
        assert_eq!((seq.frames[0].width, seq.frames[0].height), (320, 240));
        assert_eq!((seq.frames[1].width, seq.frames[1].height), (640, 480));
        let o = &seq.frames[0].objects[0];
        assert_eq!((o.class_id, o.confidence, o.bbox.left), (2, 0.75, 1.5));
    }

    #[test]
    fn json_lines_with_several_sources_need_a_choice() {
        let text = "{\"source_id\":0,\"frame_num\":0,\"objects\":[]}\n{\"source_id\":1,\"frame_num\":4,\"objects\":[]}\n";
        assert!(parse(text, InputFormat::JsonLines, &opts(), None).is_err());
        let seq = parse(text, InputFormat::JsonLines, &opts(), Some(1)).unwrap();
        assert_eq!(seq.frames.len(), 5);
        assert_eq!(seq.frames[4].source_id, 1);
    }

    #[test]
    fn results_have_one_line_per_tracked_object() {
        let frames = vec![FrameMeta {
            frame_num: 4,
            objects: vec![
                ObjectMeta {
                    confidence: 0.5,
                    bbox: BBox::from_corners(1.0, 2.0, 4.0, 6.0),
                    track_id: Some(7),
                    ..Default::default()
                },
                ObjectMeta::default(),
            ],
            ..Default::default()
        }];
        let mut out = Vec::new();
        write_results(&frames, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "5,7,1,2,3,4,0.5,-1,-1,-1\n"
        );
    }
}
