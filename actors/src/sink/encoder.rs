//! The encoder chain every encoded output shares (RGB → I420 → H.264/H.265 → parser), written
//! once as data so that the same chain can be built from elements (files, UDP) or as a launch
//! description (the RTSP server's media factory).

use gst::prelude::*;
use gstreamer as gst;

use super::settings::{Codec, EncoderChoice, Settings};
use crate::gst_util;
use crate::stage::StageError;

/// One element and the properties to set on it (as strings, GStreamer deserialises them).
#[derive(Debug, Clone, PartialEq)]
pub struct ElementSpec {
    pub factory: &'static str,
    pub props: Vec<(&'static str, String)>,
}

impl ElementSpec {
    pub fn new(factory: &'static str) -> Self {
        Self {
            factory,
            props: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.props.push((key, value.to_string()));
        self
    }

    /// Makes the element; a property it lacks is an error, not a GLib panic.
    pub fn make(&self) -> Result<gst::Element, StageError> {
        gst_util::init()?;
        let element = gst_util::make(self.factory)?;
        for (key, value) in &self.props {
            if !element.has_property(key) {
                return Err(StageError::Runtime(format!(
                    "GStreamer element `{}` has no property `{key}` (unexpected plugin version)",
                    self.factory
                )));
            }
            element.set_property_from_str(key, value);
        }
        Ok(element)
    }

    /// The element in `gst-launch` syntax.
    pub fn launch(&self) -> String {
        let mut s = self.factory.to_string();
        for (key, value) in &self.props {
            s.push_str(&format!(" {key}=\"{}\"", value.replace('"', "\\\"")));
        }
        s
    }
}

/// Which encoder element a codec and choice come to.
pub fn encoder_factory(codec: Codec, choice: EncoderChoice) -> Result<&'static str, StageError> {
    let (software, nvenc) = match codec {
        Codec::H264 => ("x264enc", "nvh264enc"),
        Codec::H265 => ("x265enc", "nvh265enc"),
    };
    let available = |f: &str| gst_util::init().is_ok() && gst::ElementFactory::find(f).is_some();
    Ok(match choice {
        EncoderChoice::Auto if available(nvenc) => nvenc,
        EncoderChoice::Auto
        | EncoderChoice::Software
        | EncoderChoice::X264
        | EncoderChoice::X265 => software,
        EncoderChoice::Nvenc if available(nvenc) => nvenc,
        EncoderChoice::Nvenc => {
            return Err(StageError::Settings(format!(
                "encoder = \"nvenc\" needs GStreamer's `{nvenc}` element (the nvcodec plugin of \
                 gstreamer1.0-plugins-bad, with an NVIDIA driver); it is not available here. \
                 Use encoder = \"auto\" to fall back to {software}"
            )))
        }
    })
}

/// The elements from raw RGB to parsed H.264/H.265 access units. `low_latency` tunes the
/// encoder for live viewing (no lookahead, no frame reordering).
pub fn chain(settings: &Settings, low_latency: bool) -> Result<Vec<ElementSpec>, StageError> {
    let factory = encoder_factory(settings.codec, settings.encoder)?;
    // Without this, videoconvert picks the format closest to RGB (Y444) and the encoder makes
    // a 4:4:4 profile: slower, and not decodable by NVDEC or most players.
    let mut specs = vec![
        ElementSpec::new("videoconvert"),
        ElementSpec::new("capsfilter").with("caps", "video/x-raw,format=I420"),
    ];
    let encoder = ElementSpec::new(factory).with("bitrate", settings.bitrate_kbps);
    let encoder = match factory {
        "x264enc" | "x265enc" => {
            let e = encoder
                .with("speed-preset", &settings.speed_preset)
                .with("key-int-max", settings.key_int_max);
            if low_latency {
                e.with("tune", "zerolatency")
            } else {
                e
            }
        }
        _ => encoder.with("gop-size", settings.key_int_max),
    };
    specs.push(encoder);
    // 4:2:0 profiles every player (and NVDEC) can decode.
    specs.push(match settings.codec {
        Codec::H264 => ElementSpec::new("capsfilter").with("caps", "video/x-h264,profile=high"),
        Codec::H265 => ElementSpec::new("capsfilter").with("caps", "video/x-h265,profile=main"),
    });
    specs.push(ElementSpec::new(match settings.codec {
        Codec::H264 => "h264parse",
        Codec::H265 => "h265parse",
    }));
    Ok(specs)
}

/// The RTP payloader for a codec, repeating SPS/PPS (and VPS) before every keyframe so a
/// receiver that joins late can start at the next keyframe.
pub fn payloader(codec: Codec) -> ElementSpec {
    ElementSpec::new(match codec {
        Codec::H264 => "rtph264pay",
        Codec::H265 => "rtph265pay",
    })
    .with("config-interval", -1)
    .with("pt", 96)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        let t: toml::Table = toml::from_str(text).unwrap();
        crate::settings::parse(&t).unwrap()
    }

    #[test]
    fn software_encoders_by_codec() {
        let h265 = settings("uri = 'a.mkv'\ncodec = 'h265'\nencoder = 'software'");
        let specs = chain(&h265, true).unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.factory).collect();
        assert_eq!(
            names,
            [
                "videoconvert",
                "capsfilter",
                "x265enc",
                "capsfilter",
                "h265parse"
            ]
        );
        assert!(specs[2].launch().contains("tune=\"zerolatency\""));
        for spec in &specs {
            spec.make().unwrap();
        }
        let h264 = settings("uri = 'a.mp4'\nencoder = 'x264'");
        assert_eq!(chain(&h264, false).unwrap()[2].factory, "x264enc");
    }

    #[test]
    fn nvenc_is_a_clear_error_where_absent() {
        gst_util::init().unwrap();
        if gst::ElementFactory::find("nvh264enc").is_some() {
            assert_eq!(
                encoder_factory(Codec::H264, EncoderChoice::Nvenc).unwrap(),
                "nvh264enc"
            );
        } else {
            let err = encoder_factory(Codec::H264, EncoderChoice::Nvenc)
                .unwrap_err()
                .to_string();
            assert!(err.contains("nvh264enc") && err.contains("auto"), "{err}");
            assert_eq!(
                encoder_factory(Codec::H264, EncoderChoice::Auto).unwrap(),
                "x264enc"
            );
        }
    }

    #[test]
    fn launch_syntax_quotes_values() {
        let spec = payloader(Codec::H264);
        assert_eq!(spec.launch(), "rtph264pay config-interval=\"-1\" pt=\"96\"");
        assert!(ElementSpec::new("x264enc")
            .with("no-such-property", 1)
            .make()
            .unwrap_err()
            .to_string()
            .contains("no-such-property"));
    }
}
