//! Output parsers: a model's raw outputs → detections, classifier labels or a segmentation
//! map, in network-input pixels (the part nvinfer calls `parse-bbox-func-name` /
//! `parse-classifier-func-name`). The stage maps the results to frame pixels and filters them.
//!
//! A parser is chosen by the `type` key of the infer stage's `parser` table; its other keys are
//! the parser's own options. Built-in parsers are listed in [`BUILT_IN`]; an application that
//! embeds vidmesh adds its own with [`register_parser`] before loading a topology.

mod centerface;
mod centernet;
mod classifier;
mod decode;
mod detr;
mod instance_segmentation;
mod semantic_segmentation;
mod ssd;
mod yolov5;
mod yolov8;

use std::sync::RwLock;

use vidmesh_protocol::{BBox, Mask};

use super::backend::{ModelIo, OutputTensor};
use crate::stage::StageError;

/// One candidate object, in network-input pixels until the stage maps it to the frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detection {
    pub class_id: i32,
    pub confidence: f32,
    pub bbox: BBox,
    /// Instance mask over `bbox` (instance segmentation models).
    pub mask: Option<Mask>,
    /// Keypoints such as facial landmarks, `(x, y)` in the same pixels as `bbox`.
    pub landmarks: Vec<(f32, f32)>,
}

/// One class a classifier found, before the stage attaches the label text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScore {
    pub class_id: i32,
    pub probability: f32,
}

/// A per-pixel class map of the network input (semantic segmentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub width: usize,
    pub height: usize,
    /// Row-major class ids; negative = no class.
    pub class_map: Vec<i32>,
}

/// Everything a parser read from one image of the batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub detections: Vec<Detection>,
    /// Classifier results for the whole input image, most probable first.
    pub classes: Vec<ClassScore>,
    pub segmentation: Option<Segmentation>,
}

/// What a parser gets for one image.
#[derive(Debug, Clone, Copy)]
pub struct ParseInput<'a> {
    pub outputs: &'a [OutputTensor],
    /// Which image of the batch.
    pub index: usize,
    /// Network input size in pixels.
    pub net_width: f32,
    pub net_height: f32,
    /// The lowest score any class keeps; a parser may drop candidates below it early.
    pub min_score: f32,
}

impl ParseInput<'_> {
    /// The output named `name`, or an error naming it.
    pub fn output(&self, name: &str) -> Result<&OutputTensor, StageError> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| StageError::Runtime(format!("model produced no output named `{name}`")))
    }

    /// This image's values of output `name`, with the output's shape.
    pub fn image_of(&self, name: &str) -> Result<(&[usize], &[f32]), StageError> {
        let out = self.output(name)?;
        Ok((&out.shape, out.image(self.index, out.per_image())?))
    }
}

/// Reads a model's outputs. Implementations must not panic on any output values or shapes:
/// a model is untrusted input.
pub trait OutputParser: Send + Sync {
    /// Called once when the stage is built: does the model have the outputs this parser reads,
    /// with shapes it understands? The error names the output and the expected shape.
    fn check(&self, io: &ModelIo) -> Result<(), String>;

    /// How many classes the model's outputs distinguish, where they say so; a labels list of
    /// another length is then rejected before any frame is processed.
    fn class_count(&self, io: &ModelIo) -> Option<usize> {
        let _ = io;
        None
    }

    /// Parses image `input.index` of the batch.
    fn parse(&self, input: &ParseInput) -> Result<Parsed, StageError>;
}

/// Makes a parser from its settings table (the `parser` table without `type`).
pub type ParserFactory = fn(&toml::Table) -> Result<Box<dyn OutputParser>, String>;

/// The parsers vidmesh ships, by `type` name.
pub const BUILT_IN: &[(&str, ParserFactory)] = &[
    ("ssd", ssd::build),
    ("centerface", centerface::build),
    ("classifier", classifier::build),
    ("semantic-segmentation", semantic_segmentation::build),
    ("instance-segmentation", instance_segmentation::build),
    ("yolov5", yolov5::build),
    ("yolov8", yolov8::build),
    ("centernet", centernet::build),
    ("detr", detr::build),
];

static CUSTOM: RwLock<Vec<(String, ParserFactory)>> = RwLock::new(Vec::new());

/// Adds a parser under `name`, for topologies to select with `parser = { type = "name" }`.
/// Fails when the name is taken.
pub fn register_parser(name: &str, factory: ParserFactory) -> Result<(), String> {
    let mut custom = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    if BUILT_IN.iter().any(|(n, _)| *n == name) || custom.iter().any(|(n, _)| n == name) {
        return Err(format!("a parser named `{name}` is already registered"));
    }
    custom.push((name.to_string(), factory));
    Ok(())
}

/// All parser names, built-in first.
pub fn parser_names() -> Vec<String> {
    let custom = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
    BUILT_IN
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(custom.iter().map(|(n, _)| n.clone()))
        .collect()
}

/// Builds the parser a `parser` table selects.
pub fn build_parser(table: &toml::Table) -> Result<Box<dyn OutputParser>, String> {
    let name = match table.get("type") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => return Err("parser.type must be a string".into()),
        None => {
            return Err(format!(
                "parser needs a `type` (one of: {})",
                parser_names().join(", ")
            ))
        }
    };
    let mut options = table.clone();
    options.remove("type");
    let factory = BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .or_else(|| {
            let custom = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
            custom.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
        })
        .ok_or_else(|| {
            format!(
                "unknown parser type `{name}` (known: {})",
                parser_names().join(", ")
            )
        })?;
    factory(&options).map_err(|e| format!("parser `{name}`: {e}"))
}

/// Deserialises a parser's options, naming unknown or mistyped keys.
pub fn options<T: serde::de::DeserializeOwned>(table: &toml::Table) -> Result<T, String> {
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| e.message().to_string())
}

/// True when `score` passes `threshold`; NaN from a broken model never does.
pub fn passes(score: f32, threshold: f32) -> bool {
    score.partial_cmp(&threshold).is_some_and(|o| o.is_ge())
}

/// Checks that a declared output shape has `rank` dimensions and, where `dims` gives a value,
/// that size (dynamic dimensions, -1, always match).
pub fn check_shape(
    io: &ModelIo,
    name: &str,
    dims: &[Option<i64>],
    expected: &str,
) -> Result<(), String> {
    let shape = io.require_output(name)?;
    let ok = shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .all(|(&got, want)| got < 0 || want.is_none_or(|w| w == got));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "output `{name}` has shape {}, expected {expected}",
            ModelIo::shape_text(shape)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl OutputParser for Nothing {
        fn check(&self, _: &ModelIo) -> Result<(), String> {
            Ok(())
        }
        fn parse(&self, _: &ParseInput) -> Result<Parsed, StageError> {
            Ok(Parsed::default())
        }
    }

    #[test]
    fn unknown_parser_names_the_known_ones_and_custom_ones_register_once() {
        let err = build_parser(&toml::from_str("type = 'yolov99'").unwrap())
            .err()
            .unwrap();
        assert!(
            err.contains("unknown parser type `yolov99`") && err.contains("ssd"),
            "{err}"
        );
        register_parser("test-nothing", |_| Ok(Box::new(Nothing))).unwrap();
        assert!(build_parser(&toml::from_str("type = 'test-nothing'").unwrap()).is_ok());
        assert!(register_parser("test-nothing", |_| Ok(Box::new(Nothing))).is_err());
        assert!(register_parser("ssd", |_| Ok(Box::new(Nothing))).is_err());
    }
}
