//! What the user configures for `osd`, and its validation into a ready-to-draw [`Style`].

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use vidmesh_protocol::Rgba;

use super::overlay::OverlayTemplate;
use crate::stage::{BuildContext, StageError};

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Box outline width in pixels. Default 3.
    pub border_width: u32,
    /// Label text height in pixels. Default 16.
    pub font_size: f32,
    /// A TrueType font. Default DejaVu Sans from Debian's fonts-dejavu-core.
    pub font: String,
    /// Write the track id into labels. Default true.
    pub show_track_id: bool,
    /// Write the confidence into labels. Default false.
    pub show_confidence: bool,
    /// Append the labels secondary classifiers gave the object ("person 3 dark backpack"),
    /// as nvinfer appends them to the object's display text. Default true.
    pub show_classifiers: bool,
    /// What picks an object's colour: its track id ("track") or its class ("class").
    /// Untracked objects always take their class colour. Default "track".
    pub color_by: ColorBy,
    /// Colours per class label (or class id written as a string): `"#rrggbb"`,
    /// `"#rrggbbaa"` or `[r, g, b]` / `[r, g, b, a]`. Classes not listed take a colour of a
    /// fixed palette by class id. Default none.
    pub colors: BTreeMap<String, ColorSpec>,
    /// Blend instance masks onto the frame (nvdsosd `display-mask`). Default true.
    pub display_mask: bool,
    /// Opacity of a mask, 0..=1. Default 0.4.
    pub mask_alpha: f32,
    /// Positions (bottom-centre of the box) of each track drawn as a trail; 0 = none.
    /// Default 0.
    pub trail_length: usize,
    /// Trail line width in pixels. Default 2.
    pub trail_width: u32,
    /// A track not seen for this many frames of its stream is forgotten. Default 30.
    pub trail_forget_after: u64,
    /// Per-frame text at the top left: `true` for the default line, or a format string with
    /// `{source}`, `{source_id}`, `{frame}`, `{fps}` (or `{fps:.N}`), `{count}`, `{counts}`.
    /// Default false.
    pub overlay: OverlaySpec,
    /// Overlay text height in pixels. Default: `font_size`.
    pub overlay_font_size: Option<f32>,
    /// Overlay text colour. Default white.
    pub overlay_color: ColorSpec,
    /// Overlay background box colour. Default black at 60% opacity.
    pub overlay_background: ColorSpec,
    /// Classes (labels, or class ids written as strings) whose boxes are blurred beyond
    /// recognition before anything is drawn: anonymisation of faces or licence plates.
    /// Default none.
    pub blur: Vec<String>,
    /// Blur radius in pixels; 0 picks a quarter of the box's smaller side (at least 4), enough
    /// to hide a face at any size. Default 0.
    pub blur_radius: u32,
    /// Also outline and label the blurred objects. Default false: an anonymised face needs
    /// no box drawn around it.
    pub draw_blurred: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            border_width: 3,
            font_size: 16.0,
            font: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            show_track_id: true,
            show_confidence: false,
            show_classifiers: true,
            color_by: ColorBy::Track,
            colors: BTreeMap::new(),
            display_mask: true,
            mask_alpha: 0.4,
            trail_length: 0,
            trail_width: 2,
            trail_forget_after: 30,
            overlay: OverlaySpec::Enabled(false),
            overlay_font_size: None,
            overlay_color: ColorSpec::Channels(vec![255, 255, 255]),
            overlay_background: ColorSpec::Channels(vec![0, 0, 0, 153]),
            blur: Vec::new(),
            blur_radius: 0,
            draw_blurred: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorBy {
    Track,
    Class,
}

/// A colour as written in a topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ColorSpec {
    Hex(String),
    Channels(Vec<i64>),
}

/// `overlay = true | false | "format"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OverlaySpec {
    Enabled(bool),
    Format(String),
}

/// The overlay line `overlay = true` draws.
pub const DEFAULT_OVERLAY: &str = "{source}  {fps:.1} fps  objects: {count}  {counts}";

/// Most positions a trail may keep: a trail is drawn every frame, and a longer one says
/// nothing more than where the track was seconds ago.
const MAX_TRAIL_LENGTH: usize = 1000;

impl ColorSpec {
    /// The colour, or an error naming `what` (the key it was given for).
    pub fn resolve(&self, what: &str) -> Result<Rgba, StageError> {
        let bad = |why: &str| {
            StageError::Settings(format!(
                "{what}: {why}; write \"#rrggbb\", \"#rrggbbaa\", [r, g, b] or [r, g, b, a]"
            ))
        };
        match self {
            ColorSpec::Hex(text) => {
                let hex = text
                    .strip_prefix('#')
                    .ok_or_else(|| bad(&format!("`{text}` does not start with #")))?;
                if !(hex.len() == 6 || hex.len() == 8) || !hex.is_ascii() {
                    return Err(bad(&format!("`{text}` needs 6 or 8 hex digits")));
                }
                let mut channels = [255u8; 4];
                for (i, c) in channels.iter_mut().enumerate().take(hex.len() / 2) {
                    *c = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                        .map_err(|_| bad(&format!("`{text}` is not hexadecimal")))?;
                }
                Ok(Rgba::new(
                    channels[0],
                    channels[1],
                    channels[2],
                    channels[3],
                ))
            }
            ColorSpec::Channels(values) => {
                if !(values.len() == 3 || values.len() == 4) {
                    return Err(bad(&format!("{} channels given", values.len())));
                }
                let mut channels = [255u8; 4];
                for (c, v) in channels.iter_mut().zip(values) {
                    *c = u8::try_from(*v)
                        .map_err(|_| bad(&format!("channel {v} is outside 0..=255")))?;
                }
                Ok(Rgba::new(
                    channels[0],
                    channels[1],
                    channels[2],
                    channels[3],
                ))
            }
        }
    }
}

/// Settings checked and turned into what drawing needs.
pub struct Style {
    pub settings: Settings,
    /// Colours by class label.
    pub label_colors: HashMap<String, Rgba>,
    /// Colours by class id, from keys that are integers.
    pub class_id_colors: HashMap<i32, Rgba>,
    pub overlay: Option<OverlayTemplate>,
    pub overlay_font_size: f32,
    pub overlay_color: Rgba,
    pub overlay_background: Rgba,
}

impl Style {
    pub fn load(t: &toml::Table, ctx: &BuildContext) -> Result<Self, StageError> {
        let s: Settings = crate::settings::parse(t)?;
        if !ctx.resolve(&s.font).is_file() {
            return Err(StageError::Settings(format!(
                "font {} does not exist (install fonts-dejavu-core or set `font`)",
                s.font
            )));
        }
        let size_ok = |v: f32| (4.0..=256.0).contains(&v);
        if !size_ok(s.font_size) {
            return Err(StageError::Settings(format!(
                "font_size must be within 4..=256, got {}",
                s.font_size
            )));
        }
        let overlay_font_size = s.overlay_font_size.unwrap_or(s.font_size);
        if !size_ok(overlay_font_size) {
            return Err(StageError::Settings(format!(
                "overlay_font_size must be within 4..=256, got {overlay_font_size}"
            )));
        }
        if !(0.0..=1.0).contains(&s.mask_alpha) {
            return Err(StageError::Settings(format!(
                "mask_alpha must be within 0..=1, got {}",
                s.mask_alpha
            )));
        }
        if s.trail_length > MAX_TRAIL_LENGTH {
            return Err(StageError::Settings(format!(
                "trail_length must be at most {MAX_TRAIL_LENGTH}, got {}",
                s.trail_length
            )));
        }
        if s.trail_length > 0 && (s.trail_width == 0 || s.trail_width > 64) {
            return Err(StageError::Settings(format!(
                "trail_width must be 1..=64, got {}",
                s.trail_width
            )));
        }
        if s.trail_forget_after == 0 {
            return Err(StageError::Settings(
                "trail_forget_after must be at least 1 frame".into(),
            ));
        }
        if s.blur_radius > 512 {
            return Err(StageError::Settings(format!(
                "blur_radius must be at most 512 pixels, got {}",
                s.blur_radius
            )));
        }
        let mut label_colors = HashMap::new();
        let mut class_id_colors = HashMap::new();
        for (class, spec) in &s.colors {
            let color = spec.resolve(&format!("colors.{class}"))?;
            match class.parse::<i32>() {
                Ok(id) => class_id_colors.insert(id, color),
                Err(_) => label_colors.insert(class.clone(), color),
            };
        }
        let overlay = match &s.overlay {
            OverlaySpec::Enabled(false) => None,
            OverlaySpec::Enabled(true) => Some(OverlayTemplate::parse(DEFAULT_OVERLAY)?),
            OverlaySpec::Format(f) => Some(OverlayTemplate::parse(f)?),
        };
        Ok(Style {
            overlay_color: s.overlay_color.resolve("overlay_color")?,
            overlay_background: s.overlay_background.resolve("overlay_background")?,
            overlay_font_size,
            overlay,
            label_colors,
            class_id_colors,
            settings: s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            peers: Default::default(),
            stage_name: "osd".into(),
            replica: 0,
            base_dir: std::env::temp_dir(),
            sources: vec!["cam0".into()],
            resume: None,
        }
    }

    fn load(text: &str) -> Result<Style, StageError> {
        Style::load(&toml::from_str(text).unwrap(), &ctx())
    }

    #[test]
    fn colours_by_name_and_by_id_in_both_notations() {
        let s = load("colors = { person = \"#ff0000\", car = [0, 255, 0], 7 = \"#0000ff80\" }")
            .unwrap();
        assert_eq!(s.label_colors["person"], Rgba::new(255, 0, 0, 255));
        assert_eq!(s.label_colors["car"], Rgba::new(0, 255, 0, 255));
        assert_eq!(s.class_id_colors[&7], Rgba::new(0, 0, 255, 128));
    }

    #[test]
    fn bad_colours_name_the_class() {
        for (text, needle) in [
            ("colors = { person = \"red\" }", "colors.person"),
            ("colors = { person = \"#12345\" }", "6 or 8 hex digits"),
            ("colors = { car = [0, 256, 0] }", "256"),
            ("colors = { car = [0, 0] }", "2 channels"),
            ("colors = { car = \"#gg0000\" }", "hexadecimal"),
        ] {
            let err = load(text).err().unwrap().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        for (text, needle) in [
            ("mask_alpha = 1.5", "mask_alpha"),
            ("trail_length = 100000", "trail_length"),
            ("trail_length = 5\ntrail_width = 0", "trail_width"),
            ("color_by = \"colour\"", "color_by"),
            ("overlay = \"{fps} {nope}\"", "{nope}"),
            ("overlay_font_size = 1.0", "overlay_font_size"),
        ] {
            let err = load(text).err().unwrap().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
