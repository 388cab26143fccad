//! `vidmesh inspect`: what a video source is, before a topology uses it.
//!
//! [`Target::parse`] turns what the user typed (a path, `file://`, `rtsp://`, `http(s)://`) into
//! the URI GStreamer opens; [`inspect`] runs GStreamer's Discoverer on it and condenses the
//! answer into a [`MediaInfo`]; [`format_text`] prints it for humans (`--json` serialises the
//! same struct). Only [`inspect`] needs GStreamer, so the rest is tested without media.
//! Credentials in URIs never reach the output or the errors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gstreamer_pbutils as pbutils;
use pbutils::prelude::*;
use pbutils::{glib, gst};
use serde::Serialize;
use thiserror::Error;
use vidmesh_actors::source::redact;

/// The Discoverer's `timeout` property only takes 1 s ..= 1 h.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What `vidmesh inspect` found out about a source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MediaInfo {
    /// The source as a topology's `uri` would name it (files: `file://` + absolute path),
    /// with any password replaced by `***`.
    pub uri: String,
    /// Container format as GStreamer describes it, e.g. "Audio Video Interleave (AVI)" or
    /// "Quicktime" (MP4); `None` for an elementary stream or a network session that delivers
    /// streams without one (RTSP).
    pub container: Option<String>,
    /// `None` when unknown (live sources).
    pub duration_s: Option<f64>,
    /// Bits per second of the whole source: file size over duration for files; otherwise the
    /// sum of the streams' bitrates, or the source's bitrate tag, when declared.
    pub bitrate_bps: Option<u64>,
    pub seekable: bool,
    pub live: bool,
    pub video: Vec<VideoStream>,
    pub audio: Vec<AudioStream>,
    pub subtitles: usize,
}

/// One video stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoStream {
    /// GStreamer's description of the codec, e.g. "H.264 (High Profile)".
    pub codec: String,
    /// The media type, e.g. "video/x-h264".
    pub media_type: String,
    pub profile: Option<String>,
    pub level: Option<String>,
    /// H.265 tier.
    pub tier: Option<String>,
    pub width: u32,
    pub height: u32,
    /// "num/den"; `None` when the stream does not declare a constant rate.
    pub frame_rate: Option<String>,
    pub fps: Option<f64>,
    /// Duration × frame rate: what a `[[source]]` of it will deliver, give or take a frame.
    pub frames: Option<u64>,
    pub bitrate_bps: Option<u64>,
    pub interlaced: bool,
    /// A single picture (JPEG, PNG) rather than a video.
    pub still_image: bool,
}

/// One audio stream (vidmesh ignores audio; shown so the user knows it is there).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioStream {
    pub codec: String,
    pub media_type: String,
    pub channels: u32,
    pub sample_rate: u32,
    pub bitrate_bps: Option<u64>,
    pub language: Option<String>,
}

/// Why a source could not be inspected. Every message is one line that names the source
/// (passwords masked).
#[derive(Debug, Error, PartialEq)]
pub enum InspectError {
    #[error("{0}: no such file")]
    NotFound(String),
    #[error("{0}: is a directory, not a video file")]
    Directory(String),
    #[error("{what}: cannot open: {message}")]
    CannotOpen { what: String, message: String },
    #[error("{what}: no answer within {timeout} (is the address right and the server up? `--timeout` waits longer)")]
    Timeout { what: String, timeout: String },
    #[error("{what}: not a playable video: GStreamer says: {message}")]
    NotMedia { what: String, message: String },
    #[error("{what}: this GStreamer installation cannot decode it: missing {missing} (install gstreamer1.0-plugins-good, -bad, -ugly and gstreamer1.0-libav)")]
    MissingPlugins { what: String, missing: String },
    #[error("{what}: has no video stream ({found})")]
    NoVideo { what: String, found: String },
    #[error("`{0}` is not a URI GStreamer can open (expected a path, file://, rtsp://, http:// or https://)")]
    BadUri(String),
    #[error(
        "{what}: no GStreamer source handles `{scheme}://` URIs (file, rtsp, http and https do)"
    )]
    UnsupportedScheme { what: String, scheme: String },
    #[error("--timeout must be between 1s and 1h, got {0}")]
    BadTimeout(String),
    #[error("GStreamer does not start: {0}")]
    Init(String),
}

/// What the user asked to inspect. (Its `Debug` masks passwords too.)
#[derive(Clone, PartialEq)]
pub enum Target {
    /// A local file; `shown` is how the user wrote it, for messages.
    File { path: PathBuf, shown: String },
    /// Anything GStreamer opens by URI (RTSP, HTTP, ...); credentials kept for GStreamer.
    Network { uri: String },
}

impl Target {
    /// A plain path or `file://PATH` (relative to `cwd`, as in topology files) becomes a
    /// file; the file must exist. Any other `scheme://` is left for GStreamer.
    pub fn parse(arg: &str, cwd: &Path) -> Result<Self, InspectError> {
        let path = match arg.split_once("://") {
            Some(("file", rest)) => rest,
            Some((scheme, rest)) => {
                let valid_scheme = !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                if !valid_scheme || rest.is_empty() {
                    return Err(InspectError::BadUri(redact(arg)));
                }
                return Ok(Target::Network {
                    uri: arg.to_string(),
                });
            }
            None => arg,
        };
        if path.is_empty() {
            return Err(InspectError::BadUri(arg.to_string()));
        }
        let full = cwd.join(path);
        if full.is_dir() {
            return Err(InspectError::Directory(path.to_string()));
        }
        if !full.exists() {
            return Err(InspectError::NotFound(path.to_string()));
        }
        Ok(Target::File {
            path: full,
            shown: path.to_string(),
        })
    }

    /// How messages name the source: the path as typed, or the URI without its password.
    pub fn shown(&self) -> String {
        match self {
            Target::File { shown, .. } => shown.clone(),
            Target::Network { uri } => redact(uri),
        }
    }

    /// The URI a topology's `[[source]]` would use (password masked).
    pub fn topology_uri(&self) -> String {
        match self {
            Target::File { path, .. } => format!("file://{}", path.display()),
            Target::Network { uri } => redact(uri),
        }
    }

    /// The URI GStreamer gets: percent-encoded for files, credentials kept for the network.
    fn gst_uri(&self) -> Result<String, InspectError> {
        match self {
            Target::File { path, shown } => glib::filename_to_uri(path, None)
                .map(|u| u.to_string())
                .map_err(|e| InspectError::CannotOpen {
                    what: shown.clone(),
                    message: e.message().to_string(),
                }),
            Target::Network { uri } => Ok(uri.clone()),
        }
    }

    /// Masks this target's password wherever GStreamer's own messages might repeat it.
    fn scrub(&self, message: &str) -> String {
        match self {
            Target::Network { uri } => match password_of(uri) {
                Some(p) if !p.is_empty() => message.replace(p, "***"),
                _ => message.to_string(),
            },
            Target::File { .. } => message.to_string(),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File { path, .. } => f.debug_tuple("File").field(path).finish(),
            Target::Network { uri } => f.debug_tuple("Network").field(&redact(uri)).finish(),
        }
    }
}

/// The password in `scheme://user:password@host/...`, if any.
fn password_of(uri: &str) -> Option<&str> {
    let (_, rest) = uri.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Discovers `arg` (a path or URI), waiting at most `timeout` for it to answer.
pub fn inspect(arg: &str, timeout: Duration) -> Result<MediaInfo, InspectError> {
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(InspectError::BadTimeout(
            humantime::format_duration(timeout).to_string(),
        ));
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let target = Target::parse(arg, &cwd)?;
    if let Target::File { path, shown } = &target {
        // Refuse unreadable files here: GStreamer would only say "could not open resource".
        std::fs::File::open(path).map_err(|e| InspectError::CannotOpen {
            what: shown.clone(),
            message: e.to_string(),
        })?;
    }
    gst::init().map_err(|e| InspectError::Init(e.to_string()))?;
    let discoverer =
        pbutils::Discoverer::new(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64))
            .map_err(|e| InspectError::Init(e.to_string()))?;
    let what = target.shown();
    if let Target::Network { uri } = &target {
        // Asked first, so that an unknown scheme is not reported as a missing decoder.
        if let Err(e) = gst::Element::make_from_uri(gst::URIType::Src, uri, None) {
            return Err(match e.kind::<gst::URIError>() {
                Some(gst::URIError::UnsupportedProtocol) => InspectError::UnsupportedScheme {
                    what,
                    scheme: uri.split("://").next().unwrap_or_default().to_string(),
                },
                _ => InspectError::BadUri(what),
            });
        }
    }
    let info = discoverer
        .discover_uri(&target.gst_uri()?)
        .map_err(|e| classify_error(&target, &e, timeout))?;
    match info.result() {
        pbutils::DiscovererResult::Ok => {}
        pbutils::DiscovererResult::Timeout => {
            return Err(InspectError::Timeout {
                what,
                timeout: humantime::format_duration(timeout).to_string(),
            })
        }
        pbutils::DiscovererResult::MissingPlugins => {
            return Err(InspectError::MissingPlugins {
                what,
                missing: missing_plugins(&info.missing_elements_installer_details()),
            })
        }
        pbutils::DiscovererResult::UriInvalid => {
            return Err(InspectError::BadUri(what));
        }
        other => {
            return Err(InspectError::NotMedia {
                what,
                message: format!("discovery ended with {other:?}"),
            })
        }
    }
    let file_size = match &target {
        Target::File { path, .. } => std::fs::metadata(path).ok().map(|m| m.len()),
        Target::Network { .. } => None,
    };
    let media = media_info(&target, &info, file_size);
    if media.video.is_empty() {
        let found = if media.audio.is_empty() {
            "no audio either".to_string()
        } else {
            format!("{} audio", media.audio.len())
        };
        return Err(InspectError::NoVideo { what, found });
    }
    Ok(media)
}

/// Turns a Discoverer error into what the user should do about it.
fn classify_error(target: &Target, e: &glib::Error, timeout: Duration) -> InspectError {
    let what = target.shown();
    let message = target.scrub(e.message());
    // Resource errors: the file or server could not be read (refused, not found, denied).
    if e.kind::<gst::ResourceError>().is_some() {
        return InspectError::CannotOpen { what, message };
    }
    if e.matches(gst::CoreError::MissingPlugin) || e.matches(gst::StreamError::CodecNotFound) {
        return InspectError::MissingPlugins {
            what,
            missing: message,
        };
    }
    if message.to_ascii_lowercase().contains("timeout") || message.contains("timed out") {
        return InspectError::Timeout {
            what,
            timeout: humantime::format_duration(timeout).to_string(),
        };
    }
    InspectError::NotMedia { what, message }
}

/// "gstreamer|1.0|app|DivX MS-MPEG-4 Version 3 decoder|decoder-video/x-divx" → the
/// descriptions, comma-separated.
fn missing_plugins(details: &[glib::GString]) -> String {
    let names: Vec<&str> = details
        .iter()
        .map(|d| d.split('|').nth(3).unwrap_or(d.as_str()))
        .collect();
    if names.is_empty() {
        "a plugin".to_string()
    } else {
        names.join(", ")
    }
}

fn media_info(
    target: &Target,
    info: &pbutils::DiscovererInfo,
    file_size: Option<u64>,
) -> MediaInfo {
    let duration_s = info
        .duration()
        .filter(|d| !d.is_zero())
        .map(|d| d.nseconds() as f64 / 1e9);
    let container = info
        .stream_info()
        .filter(|s| s.is::<pbutils::DiscovererContainerInfo>())
        .and_then(|s| s.caps())
        .map(|caps| caps_description(&caps));
    let video: Vec<VideoStream> = info
        .video_streams()
        .iter()
        .map(|v| video_stream(v, duration_s))
        .collect();
    let audio: Vec<AudioStream> = info.audio_streams().iter().map(audio_stream).collect();
    let stream_sum: u64 = video
        .iter()
        .filter_map(|v| v.bitrate_bps)
        .chain(audio.iter().filter_map(|a| a.bitrate_bps))
        .sum();
    let tagged = info.stream_info().and_then(|s| s.tags()).and_then(|tags| {
        tags.get::<gst::tags::Bitrate>()
            .or_else(|| tags.get::<gst::tags::NominalBitrate>())
            .map(|b| b.get() as u64)
            .filter(|b| *b > 0)
    });
    let bitrate_bps = match (file_size, duration_s) {
        (Some(bytes), Some(s)) if s > 0.0 => Some((bytes as f64 * 8.0 / s).round() as u64),
        _ => (stream_sum > 0).then_some(stream_sum).or(tagged),
    };
    MediaInfo {
        uri: target.topology_uri(),
        container,
        duration_s,
        bitrate_bps,
        seekable: info.is_seekable(),
        live: info.is_live(),
        video,
        audio,
        subtitles: info.subtitle_streams().len(),
    }
}

fn caps_description(caps: &gst::Caps) -> String {
    pbutils::pb_utils_get_codec_description(caps).to_string()
}

fn media_type(caps: Option<&gst::Caps>) -> String {
    caps.and_then(|c| c.structure(0))
        .map(|s| s.name().to_string())
        .unwrap_or_default()
}

fn caps_field(caps: Option<&gst::Caps>, field: &str) -> Option<String> {
    let s = caps?.structure(0)?;
    s.get::<&str>(field).ok().map(str::to_string)
}

fn nonzero(bps: u32) -> Option<u64> {
    (bps > 0).then_some(bps as u64)
}

fn video_stream(v: &pbutils::DiscovererVideoInfo, duration_s: Option<f64>) -> VideoStream {
    let caps = v.caps();
    let rate = v.framerate();
    let (num, den) = (rate.numer(), rate.denom());
    let constant = num > 0 && den > 0;
    let fps = constant.then(|| num as f64 / den as f64);
    VideoStream {
        codec: caps.as_ref().map(caps_description).unwrap_or_default(),
        media_type: media_type(caps.as_ref()),
        profile: caps_field(caps.as_ref(), "profile"),
        level: caps_field(caps.as_ref(), "level"),
        tier: caps_field(caps.as_ref(), "tier"),
        width: v.width(),
        height: v.height(),
        frame_rate: constant.then(|| format!("{num}/{den}")),
        fps,
        frames: estimated_frames(duration_s, fps),
        bitrate_bps: nonzero(v.bitrate()).or(nonzero(v.max_bitrate())),
        interlaced: v.is_interlaced(),
        still_image: v.is_image(),
    }
}

fn audio_stream(a: &pbutils::DiscovererAudioInfo) -> AudioStream {
    let caps = a.caps();
    AudioStream {
        codec: caps.as_ref().map(caps_description).unwrap_or_default(),
        media_type: media_type(caps.as_ref()),
        channels: a.channels(),
        sample_rate: a.sample_rate(),
        bitrate_bps: nonzero(a.bitrate()).or(nonzero(a.max_bitrate())),
        language: a.language().map(|l| l.to_string()),
    }
}

/// Frames a stream of `duration_s` at `fps` holds, rounded: the container's timestamps put
/// the last frame at `duration - 1/fps`, so rounding rather than flooring is exact.
pub fn estimated_frames(duration_s: Option<f64>, fps: Option<f64>) -> Option<u64> {
    match (duration_s, fps) {
        (Some(d), Some(f)) if d > 0.0 && f > 0.0 => Some((d * f).round() as u64),
        _ => None,
    }
}

/// "10 fps", "29.97 fps (30000/1001)".
pub fn format_fps(fps: f64, frame_rate: &str) -> String {
    if (fps - fps.round()).abs() < 1e-9 {
        format!("{fps:.0} fps")
    } else {
        format!("{fps:.2} fps ({frame_rate})")
    }
}

/// "818 kbit/s", "12.5 Mbit/s".
pub fn format_bitrate(bps: u64) -> String {
    if bps >= 10_000_000 {
        format!("{:.1} Mbit/s", bps as f64 / 1e6)
    } else if bps >= 1_000_000 {
        format!("{:.2} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", (bps as f64 / 1e3).round() as u64)
    }
}

/// "1m 19s 500ms (79.500 s)".
pub fn format_duration(seconds: f64) -> String {
    let whole = Duration::from_millis((seconds * 1e3).round() as u64);
    format!("{} ({seconds:.3} s)", humantime::format_duration(whole))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The human-readable report: one `key  value` per line, one block per stream.
pub fn format_text(m: &MediaInfo) -> String {
    let mut s = String::new();
    let mut row = |indent: &str, key: &str, value: &str| {
        let _ = if value.is_empty() {
            writeln!(s, "{indent}{key}")
        } else {
            writeln!(
                s,
                "{indent}{key:<width$} {value}",
                width = 12 - indent.len()
            )
        };
    };
    row("", "uri", &m.uri);
    row(
        "",
        "container",
        m.container
            .as_deref()
            .unwrap_or("none (elementary streams)"),
    );
    let duration = match m.duration_s {
        Some(d) => format_duration(d),
        None if m.live => "unknown (live)".to_string(),
        None => "unknown".to_string(),
    };
    row("", "duration", &duration);
    row(
        "",
        "bitrate",
        &m.bitrate_bps
            .map_or_else(|| "unknown".to_string(), format_bitrate),
    );
    row("", "seekable", yes_no(m.seekable));
    row("", "live", yes_no(m.live));
    let mut streams = format!("{} video, {} audio", m.video.len(), m.audio.len());
    if m.subtitles > 0 {
        streams.push_str(&format!(", {} subtitle", m.subtitles));
    }
    row("", "streams", &streams);
    for (i, v) in m.video.iter().enumerate() {
        row("", &format!("video #{i}"), "");
        let mut codec = v.codec.clone();
        let details: Vec<String> = [
            Some(v.media_type.clone()).filter(|t| !t.is_empty()),
            v.profile.as_ref().map(|p| format!("profile {p}")),
            v.level.as_ref().map(|l| format!("level {l}")),
            v.tier.as_ref().map(|t| format!("{t} tier")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !details.is_empty() {
            codec.push_str(&format!(" [{}]", details.join(", ")));
        }
        row("  ", "codec", &codec);
        let mut size = format!("{}x{}", v.width, v.height);
        if v.interlaced {
            size.push_str(" interlaced");
        }
        if v.still_image {
            size.push_str(" (still image)");
        }
        row("  ", "resolution", &size);
        let rate = match (v.fps, &v.frame_rate) {
            (Some(fps), Some(r)) => format_fps(fps, r),
            _ => "variable or unknown".to_string(),
        };
        row("  ", "frame rate", &rate);
        if let Some(frames) = v.frames {
            row("  ", "frames", &format!("{frames} (duration × frame rate)"));
        }
        if let Some(b) = v.bitrate_bps {
            row("  ", "bitrate", &format_bitrate(b));
        }
    }
    for (i, a) in m.audio.iter().enumerate() {
        let mut line = format!(
            "{} [{}], {} channel{}, {} Hz",
            a.codec,
            a.media_type,
            a.channels,
            if a.channels == 1 { "" } else { "s" },
            a.sample_rate
        );
        if let Some(b) = a.bitrate_bps {
            line.push_str(&format!(", {}", format_bitrate(b)));
        }
        if let Some(l) = &a.language {
            line.push_str(&format!(", {l}"));
        }
        row("", &format!("audio #{i}"), &line);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtest_like() -> MediaInfo {
        MediaInfo {
            uri: "file:///clips/vtest.avi".into(),
            container: Some("AVI".into()),
            duration_s: Some(79.5),
            bitrate_bps: Some(818_283),
            seekable: true,
            live: false,
            video: vec![VideoStream {
                codec: "DivX MS-MPEG-4 Version 3".into(),
                media_type: "video/x-divx".into(),
                profile: None,
                level: None,
                tier: None,
                width: 768,
                height: 576,
                frame_rate: Some("10/1".into()),
                fps: Some(10.0),
                frames: estimated_frames(Some(79.5), Some(10.0)),
                bitrate_bps: Some(815_910),
                interlaced: false,
                still_image: false,
            }],
            audio: vec![],
            subtitles: 0,
        }
    }

    #[test]
    fn text_report_has_every_fact_on_its_own_line() {
        let text = format_text(&vtest_like());
        let expected = "\
uri          file:///clips/vtest.avi
container    AVI
duration     1m 19s 500ms (79.500 s)
bitrate      818 kbit/s
seekable     yes
live         no
streams      1 video, 0 audio
video #0
  codec      DivX MS-MPEG-4 Version 3 [video/x-divx]
  resolution 768x576
  frame rate 10 fps
  frames     795 (duration × frame rate)
  bitrate    816 kbit/s
";
        assert_eq!(text, expected);
    }

    #[test]
    fn live_h264_with_audio_shows_profile_level_and_unknown_duration() {
        let mut m = vtest_like();
        m.uri = "rtsp://admin:***@cam/stream".into();
        m.container = None;
        m.duration_s = None;
        m.bitrate_bps = None;
        m.live = true;
        m.seekable = false;
        let v = &mut m.video[0];
        v.codec = "H.264 (High Profile)".into();
        v.media_type = "video/x-h264".into();
        v.profile = Some("high".into());
        v.level = Some("3.1".into());
        v.frame_rate = Some("30000/1001".into());
        v.fps = Some(30000.0 / 1001.0);
        v.frames = None;
        v.bitrate_bps = None;
        m.audio.push(AudioStream {
            codec: "MPEG-4 AAC".into(),
            media_type: "audio/mpeg".into(),
            channels: 2,
            sample_rate: 48000,
            bitrate_bps: Some(128_000),
            language: None,
        });
        let text = format_text(&m);
        for line in [
            "container    none (elementary streams)",
            "duration     unknown (live)",
            "bitrate      unknown",
            "live         yes",
            "streams      1 video, 1 audio",
            "  codec      H.264 (High Profile) [video/x-h264, profile high, level 3.1]",
            "  frame rate 29.97 fps (30000/1001)",
            "audio #0     MPEG-4 AAC [audio/mpeg], 2 channels, 48000 Hz, 128 kbit/s",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("frames "),
            "no frame count when live:\n{text}"
        );
    }

    #[test]
    fn json_has_the_same_facts() {
        let v = serde_json::to_value(vtest_like()).unwrap();
        assert_eq!(v["container"], "AVI");
        assert_eq!(v["duration_s"], 79.5);
        assert_eq!(v["video"][0]["width"], 768);
        assert_eq!(v["video"][0]["frame_rate"], "10/1");
        assert_eq!(v["video"][0]["frames"], 795);
        assert_eq!(v["video"][0]["profile"], serde_json::Value::Null);
        assert_eq!(v["audio"].as_array().unwrap().len(), 0);
        assert_eq!(v["live"], false);
    }

    #[test]
    fn numbers_read_naturally() {
        assert_eq!(format_bitrate(818_283), "818 kbit/s");
        assert_eq!(format_bitrate(4_000_000), "4.00 Mbit/s");
        assert_eq!(format_bitrate(25_000_000), "25.0 Mbit/s");
        assert_eq!(format_fps(25.0, "25/1"), "25 fps");
        assert_eq!(
            format_fps(59.94005994, "60000/1001"),
            "59.94 fps (60000/1001)"
        );
        assert_eq!(format_duration(2.0), "2s (2.000 s)");
        assert_eq!(estimated_frames(Some(79.5), Some(10.0)), Some(795));
        assert_eq!(estimated_frames(None, Some(10.0)), None);
        assert_eq!(estimated_frames(Some(1.0), None), None);
    }

    #[test]
    fn paths_and_file_uris_become_files_relative_to_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("clips")).unwrap();
        std::fs::write(dir.path().join("clips/a b.mp4"), b"x").unwrap();
        let expected = Target::File {
            path: dir.path().join("clips/a b.mp4"),
            shown: "clips/a b.mp4".into(),
        };
        assert_eq!(
            Target::parse("clips/a b.mp4", dir.path()).unwrap(),
            expected
        );
        assert_eq!(
            Target::parse("file://clips/a b.mp4", dir.path()).unwrap(),
            expected
        );
        let abs = dir.path().join("clips/a b.mp4");
        let t = Target::parse(&format!("file://{}", abs.display()), Path::new("/")).unwrap();
        assert_eq!(t.topology_uri(), format!("file://{}", abs.display()));
        let gst = t.gst_uri().unwrap();
        assert!(
            gst.starts_with("file:///") && gst.ends_with("a%20b.mp4"),
            "{gst}"
        );
    }

    #[test]
    fn missing_files_and_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Target::parse("no/such.mp4", dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "no/such.mp4: no such file");
        let e = Target::parse("file://no/such.mp4", dir.path()).unwrap_err();
        assert_eq!(e, InspectError::NotFound("no/such.mp4".into()));
        let e = Target::parse(".", dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(matches!(
            Target::parse("file://", dir.path()),
            Err(InspectError::BadUri(_))
        ));
    }

    #[test]
    fn network_uris_keep_credentials_for_gstreamer_only() {
        let uri = "rtsp://admin:s3cret@10.0.0.5:554/stream1";
        let t = Target::parse(uri, Path::new("/")).unwrap();
        assert_eq!(t.gst_uri().unwrap(), uri);
        assert_eq!(t.shown(), "rtsp://admin:***@10.0.0.5:554/stream1");
        assert_eq!(t.topology_uri(), t.shown());
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(
            t.scrub("cannot log in as admin:s3cret"),
            "cannot log in as admin:***"
        );
        let e = InspectError::Timeout {
            what: t.shown(),
            timeout: "10s".into(),
        };
        assert!(!e.to_string().contains("s3cret"));
        assert!(e.to_string().contains("within 10s"), "{e}");
        assert_eq!(password_of("https://u@h/x"), None);
        assert_eq!(password_of("http://h/x?a=b:c@d"), None);
        let e = Target::parse("://x:pw@h", Path::new("/")).unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(matches!(
            Target::parse("https://example.com/v.mp4", Path::new("/")),
            Ok(Target::Network { .. })
        ));
    }

    #[test]
    fn missing_plugin_details_become_names() {
        let details = [glib::GString::from(
            "gstreamer|1.0|vidmesh|DivX MS-MPEG-4 Version 3 decoder|decoder-video/x-divx",
        )];
        assert_eq!(
            missing_plugins(&details),
            "DivX MS-MPEG-4 Version 3 decoder"
        );
        assert_eq!(missing_plugins(&[]), "a plugin");
    }
}
