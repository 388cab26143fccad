//! What the user configures for a `sink`, and where its URI says the frames go.

use std::time::Duration;

use serde::Deserialize;

use crate::settings;
use crate::stage::{BuildContext, StageError};

/// Largest bitrate x265enc accepts (kbit/s).
const X265_MAX_BITRATE: u32 = 102_400;

/// What the user configures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the frames go: `file://PATH.{mp4,mkv,ts}`, `rtsp://HOST:PORT/PATH`,
    /// `udp://HOST:PORT` or `display://`. Required.
    pub uri: String,
    /// "h264" or "h265". Default "h264".
    #[serde(default)]
    pub codec: Codec,
    /// "auto" (NVENC when the nvcodec plugin has it, else software), "x264"/"x265"/"software",
    /// or "nvenc". Default "auto".
    #[serde(default)]
    pub encoder: EncoderChoice,
    /// Target bitrate in kbit/s. Default 4000.
    #[serde(default = "bitrate_default")]
    pub bitrate_kbps: u32,
    /// x264/x265 speed preset (ultrafast … veryslow). Default "veryfast".
    #[serde(default = "preset_default")]
    pub speed_preset: String,
    /// Longest distance between keyframes, in frames. Default 60.
    #[serde(default = "key_int_default")]
    pub key_int_max: u32,
    /// Write frames at the stream's own pace, like a GStreamer/DeepStream sink with `sync=1`.
    /// Default: false for files, true for network and display outputs (a player expects real
    /// time).
    #[serde(default)]
    pub sync: Option<bool>,
    /// Files only: start a new file after this much stream time (e.g. "60s").
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Files only: start a new file once a piece reaches this many MiB.
    #[serde(default)]
    pub max_size_mb: Option<u64>,
    /// Files with rotation only: keep at most this many pieces per source, deleting the
    /// oldest (a DVR ring). Default: keep all.
    #[serde(default)]
    pub max_files: Option<u32>,
    /// RTSP only: frames queued per connected media before new ones are dropped. Default 30.
    #[serde(default = "rtsp_queue_default")]
    pub rtsp_queue_frames: u32,
}

fn bitrate_default() -> u32 {
    4000
}
fn preset_default() -> String {
    "veryfast".into()
}
fn key_int_default() -> u32 {
    60
}
fn rtsp_queue_default() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    H264,
    H265,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    #[default]
    Auto,
    Software,
    X264,
    X265,
    Nvenc,
}

/// The container a file gets, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Matroska,
    MpegTs,
}

impl Container {
    fn from_path(path: &str) -> Option<Self> {
        let ext = std::path::Path::new(path)
            .extension()?
            .to_str()?
            .to_ascii_lowercase();
        match ext.as_str() {
            "mp4" | "m4v" | "mov" => Some(Container::Mp4),
            "mkv" => Some(Container::Matroska),
            "ts" | "m2ts" => Some(Container::MpegTs),
            _ => None,
        }
    }

    pub fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4mux",
            Container::Matroska => "matroskamux",
            Container::MpegTs => "mpegtsmux",
        }
    }
}

/// Where the frames go, from `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One file (or series of pieces) per source; `{source}` and `{index}` still in the path.
    File { path: String, container: Container },
    /// An RTSP server on `host:port`, each source at `path` or `path/{source}`.
    Rtsp {
        host: String,
        port: u16,
        path: String,
    },
    /// RTP over UDP to `host:port` (source i: `port + i`).
    Udp { host: String, port: u16 },
    /// A window on the local display.
    Display,
}

impl Target {
    pub fn parse(uri: &str) -> Result<Self, StageError> {
        let bad = |why: &str| StageError::Settings(format!("sink uri `{uri}`: {why}"));
        match uri.split_once("://") {
            Some(("rtsp", _)) => {
                let url = url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
                let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                    bad("expected rtsp://HOST:PORT/PATH (e.g. rtsp://0.0.0.0:8554/live)")
                })?;
                let path = url.path().trim_end_matches('/');
                if path.is_empty() {
                    return Err(bad("needs a mount path, e.g. rtsp://0.0.0.0:8554/live"));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(bad("an RTSP output takes no query or fragment"));
                }
                Ok(Target::Rtsp {
                    host: host.trim_matches(['[', ']']).to_string(),
                    port: url.port().unwrap_or(8554),
                    path: path.to_string(),
                })
            }
            Some(("udp", rest)) => {
                let (host, port) = rest
                    .trim_end_matches('/')
                    .rsplit_once(':')
                    .ok_or_else(|| bad("expected udp://HOST:PORT"))?;
                let host = host.trim_matches(['[', ']']);
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(&format!("`{port}` is not a UDP port (1-65535)")))?;
                if host.is_empty() {
                    return Err(bad("expected udp://HOST:PORT"));
                }
                Ok(Target::Udp {
                    host: host.to_string(),
                    port,
                })
            }
            Some(("display", rest)) => {
                if !rest.is_empty() {
                    return Err(bad("display:// takes nothing after the scheme"));
                }
                Ok(Target::Display)
            }
            Some(("file", _)) | None => {
                let path = settings::file_uri_path(uri)?;
                let container = Container::from_path(&path).ok_or_else(|| {
                    bad("the file extension chooses the container: use .mp4, .mkv or .ts")
                })?;
                Ok(Target::File { path, container })
            }
            Some((scheme, _)) => Err(bad(&format!(
                "unsupported scheme `{scheme}`; expected file://, rtsp://, udp:// or display://"
            ))),
        }
    }
}

/// x264/x265 `speed-preset` names (the record stage checks against them too).
pub const PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

impl Settings {
    /// Parses and checks the settings; returns them with the target the URI names.
    pub fn load(t: &toml::Table, ctx: &BuildContext) -> Result<(Self, Target), StageError> {
        let s: Settings = settings::parse(t)?;
        let target = Target::parse(&s.uri)?;
        s.check(&target, ctx.sources.len())?;
        Ok((s, target))
    }

    fn check(&self, target: &Target, sources: usize) -> Result<(), StageError> {
        let err = |m: String| Err(StageError::Settings(m));
        let rotating = self.max_duration.is_some() || self.max_size_mb.is_some();
        match target {
            Target::File { path, .. } => {
                if sources > 1 && !path.contains("{source}") {
                    return err(format!(
                        "`{}` receives {sources} sources; put {{source}} in the path so each gets its own file",
                        self.uri
                    ));
                }
                if rotating && !path.contains("{index}") {
                    return err(format!(
                        "`{}`: with max_duration or max_size_mb each piece needs its own name; put {{index}} in the path (e.g. out/cam-{{index}}.mp4)",
                        self.uri
                    ));
                }
                if !rotating && path.contains("{index}") {
                    return err(format!(
                        "`{}` has {{index}} but no max_duration or max_size_mb to start new pieces",
                        self.uri
                    ));
                }
                if self.max_files.is_some() && !rotating {
                    return err("max_files needs max_duration or max_size_mb".into());
                }
            }
            Target::Udp { port, .. } if *port as usize + sources.saturating_sub(1) > 65535 => {
                return err(format!(
                    "`{}`: {sources} sources need ports {port}..={} (PORT + source index), past 65535",
                    self.uri,
                    *port as usize + sources - 1
                ));
            }
            _ if rotating || self.max_files.is_some() => {
                return err(format!(
                    "max_duration, max_size_mb and max_files rotate files; `{}` is not a file",
                    self.uri
                ));
            }
            _ => {}
        }
        if self
            .max_duration
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            return err("max_duration must be at least 100ms".into());
        }
        if self.max_size_mb == Some(0) {
            return err("max_size_mb must be at least 1".into());
        }
        if self.max_files == Some(0) {
            return err("max_files must be at least 1 (leave it out to keep every piece)".into());
        }
        match (self.encoder, self.codec) {
            (EncoderChoice::X264, Codec::H265) => {
                return err(
                    "encoder `x264` makes H.264; use `x265` (or `software`) with codec = \"h265\""
                        .into(),
                )
            }
            (EncoderChoice::X265, Codec::H264) => {
                return err(
                    "encoder `x265` makes H.265; use `x264` (or `software`) with codec = \"h264\""
                        .into(),
                )
            }
            _ => {}
        }
        if !PRESETS.contains(&self.speed_preset.as_str()) {
            return err(format!(
                "speed_preset `{}` is not one of {}",
                self.speed_preset,
                PRESETS.join(", ")
            ));
        }
        let max_bitrate = match self.codec {
            Codec::H264 => 2_000_000,
            Codec::H265 => X265_MAX_BITRATE,
        };
        if self.bitrate_kbps == 0 || self.bitrate_kbps > max_bitrate {
            return err(format!(
                "bitrate_kbps must be 1..={max_bitrate} for {}, got {}",
                self.codec.name(),
                self.bitrate_kbps
            ));
        }
        if self.key_int_max == 0 || self.key_int_max > i32::MAX as u32 {
            return err(format!(
                "key_int_max must be at least 1, got {}",
                self.key_int_max
            ));
        }
        if self.rtsp_queue_frames == 0 {
            return err("rtsp_queue_frames must be at least 1".into());
        }
        Ok(())
    }

    /// Whether frames are paced to their timestamps: the user's choice, else real time for
    /// everything a person watches live.
    pub fn sync_for(&self, target: &Target) -> bool {
        self.sync.unwrap_or(!matches!(target, Target::File { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(sources: usize) -> BuildContext {
        BuildContext {
            stage_name: "out".into(),
            replica: 0,
            base_dir: ".".into(),
            sources: (0..sources).map(|i| format!("cam{i}")).collect(),
            resume: None,
            peers: Default::default(),
        }
    }

    fn load(text: &str, sources: usize) -> Result<(Settings, Target), String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        Settings::load(&t, &ctx(sources)).map_err(|e| e.to_string())
    }

    #[test]
    fn containers_come_from_the_extension() {
        for (uri, container) in [
            ("file://o/a.mp4", Container::Mp4),
            ("file://o/a.MKV", Container::Matroska),
            ("o/a.ts", Container::MpegTs),
        ] {
            let (_, target) = load(&format!("uri = '{uri}'"), 1).unwrap();
            assert!(
                matches!(target, Target::File { container: c, .. } if c == container),
                "{uri}"
            );
        }
        let err = load("uri = 'file://o/a.avi'", 1).unwrap_err();
        assert!(err.contains("a.avi") && err.contains(".mkv"), "{err}");
    }

    #[test]
    fn codecs_and_encoders() {
        let (s, _) = load("uri = 'a.mkv'\ncodec = 'h265'\nencoder = 'x265'", 1).unwrap();
        assert_eq!((s.codec, s.encoder), (Codec::H265, EncoderChoice::X265));
        assert!(load("uri = 'a.mkv'\ncodec = 'vp9'", 1)
            .unwrap_err()
            .contains("codec"));
        assert!(load("uri = 'a.mkv'\ncodec = 'h265'\nencoder = 'x264'", 1)
            .unwrap_err()
            .contains("x265"));
        assert!(
            load("uri = 'a.mkv'\ncodec = 'h265'\nbitrate_kbps = 200000", 1)
                .unwrap_err()
                .contains("102400")
        );
        assert!(load("uri = 'a.mkv'\nencoder = 'quicksync'", 1).is_err());
    }

    #[test]
    fn rotation_needs_an_index_and_a_file() {
        let (s, _) = load(
            "uri = 'o/{source}-{index}.mp4'\nmax_duration = '60s'\nmax_size_mb = 100\nmax_files = 10",
            2,
        )
        .unwrap();
        assert_eq!(s.max_duration, Some(Duration::from_secs(60)));
        assert_eq!((s.max_size_mb, s.max_files), (Some(100), Some(10)));
        assert!(load("uri = 'o/a.mp4'\nmax_duration = '60s'", 1)
            .unwrap_err()
            .contains("{index}"));
        assert!(load("uri = 'o/a-{index}.mp4'", 1)
            .unwrap_err()
            .contains("max_duration"));
        assert!(load("uri = 'rtsp://0.0.0.0:8554/live'\nmax_size_mb = 5", 1)
            .unwrap_err()
            .contains("not a file"));
        assert!(load("uri = 'o/{index}.mp4'\nmax_size_mb = 0", 1).is_err());
        assert!(load("uri = 'o/a.mp4'\nmax_files = 3", 1).is_err());
    }

    #[test]
    fn several_sources_need_their_own_files() {
        let err = load("uri = 'o/a.mp4'", 2).unwrap_err();
        assert!(err.contains("{source}"), "{err}");
    }

    #[test]
    fn network_and_display_targets() {
        let (s, t) = load("uri = 'rtsp://0.0.0.0:8554/live'", 3).unwrap();
        assert_eq!(
            t,
            Target::Rtsp {
                host: "0.0.0.0".into(),
                port: 8554,
                path: "/live".into()
            }
        );
        assert!(s.sync_for(&t));
        assert!(load("uri = 'rtsp://0.0.0.0:8554'", 1)
            .unwrap_err()
            .contains("mount path"));
        let (_, t) = load("uri = 'udp://127.0.0.1:5000'", 1).unwrap();
        assert_eq!(
            t,
            Target::Udp {
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert!(load("uri = 'udp://127.0.0.1'", 1).is_err());
        assert!(load("uri = 'udp://127.0.0.1:70000'", 1)
            .unwrap_err()
            .contains("70000"));
        assert_eq!(load("uri = 'display://'", 1).unwrap().1, Target::Display);
        let err = load("uri = 'srt://x:1'", 1).unwrap_err();
        assert!(err.contains("srt") && err.contains("rtsp://"), "{err}");
        let (s, t) = load("uri = 'a.mp4'\nsync = true", 1).unwrap();
        assert!(s.sync_for(&t));
        let (s, t) = load("uri = 'a.mp4'", 1).unwrap();
        assert!(!s.sync_for(&t));
    }
}
