//! The parameters of the source kinds that are not a plain URL: synthetic streams, RTP over
//! UDP, V4L2 cameras and image sequences, each parsed from its URI with checked values.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::stage::{BuildContext, StageError};

/// `KEY=VALUE&…` pairs of a URI query, each checked by the kind that owns it.
struct Query<'a> {
    uri: &'a str,
}

impl<'a> Query<'a> {
    fn bad(&self, why: String) -> StageError {
        StageError::Settings(format!("`{}`: {why}", self.uri))
    }

    /// The pairs of `query`, in order; a key without `=` has an empty value.
    fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }

    fn number(&self, key: &str, value: &str, lo: u32, hi: u32) -> Result<u32, StageError> {
        value
            .parse::<u32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| {
                self.bad(format!(
                    "`{key}` must be a whole number in {lo}..={hi}, got `{value}`"
                ))
            })
    }

    fn unknown(&self, key: &str, known: &str) -> StageError {
        self.bad(format!("unknown parameter `{key}` ({known})"))
    }
}

/// A synthetic stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPattern {
    /// A videotestsrc pattern nick, e.g. `smpte`, `ball`, `snow`.
    pub pattern: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames before the stream ends; `None`: until the pipeline stops.
    pub frames: Option<u32>,
    /// Paced in real time like a camera (`true`) or as fast as the pipeline takes them.
    pub live: bool,
}

/// videotestsrc's pattern nicks (GStreamer 1.22).
pub const TEST_PATTERNS: &[&str] = &[
    "smpte",
    "snow",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "checkers-1",
    "checkers-2",
    "checkers-4",
    "checkers-8",
    "circular",
    "blink",
    "smpte75",
    "zone-plate",
    "gamut",
    "chroma-zone-plate",
    "solid-color",
    "ball",
    "smpte100",
    "bar",
    "pinwheel",
    "spokes",
    "gradient",
    "colors",
    "smpte-rp-219",
];

impl TestPattern {
    pub(super) fn parse(rest: &str, uri: &str) -> Result<Self, StageError> {
        let q = Query { uri };
        let (pattern, query) = rest.split_once('?').unwrap_or((rest, ""));
        let pattern = match pattern.trim_end_matches('/') {
            "" => "smpte",
            p => p,
        };
        if !TEST_PATTERNS.contains(&pattern) {
            return Err(q.bad(format!(
                "unknown pattern `{pattern}` (one of: {})",
                TEST_PATTERNS.join(", ")
            )));
        }
        let mut t = TestPattern {
            pattern: pattern.to_string(),
            width: 1280,
            height: 720,
            fps: 30,
            frames: None,
            live: false,
        };
        for (key, value) in Query::pairs(query) {
            match key {
                "width" => t.width = q.number(key, value, 16, 8192)?,
                "height" => t.height = q.number(key, value, 16, 8192)?,
                "fps" => t.fps = q.number(key, value, 1, 240)?,
                "frames" => t.frames = Some(q.number(key, value, 1, i32::MAX as u32)?),
                "live" => {
                    t.live = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(q.bad(format!("`live` is true or false, got `{value}`"))),
                    }
                }
                other => return Err(q.unknown(other, "width, height, fps, frames, live")),
            }
        }
        Ok(t)
    }
}

impl std::fmt::Display for TestPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "testsrc://{}?width={}&height={}&fps={}",
            self.pattern, self.width, self.height, self.fps
        )?;
        if let Some(n) = self.frames {
            write!(f, "&frames={n}")?;
        }
        if self.live {
            write!(f, "&live=true")?;
        }
        Ok(())
    }
}

/// The video codec carried in RTP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpEncoding {
    H264,
    H265,
}

impl RtpEncoding {
    /// The names accepted in `?encoding=` and the `encoding` key, as RTP's `encoding-name`.
    pub const NAMES: &'static str = "H264, H265";

    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "H264" | "AVC" => Some(Self::H264),
            "H265" | "HEVC" => Some(Self::H265),
            _ => None,
        }
    }

    /// RTP's `encoding-name` (RFC 6184 / RFC 7798).
    pub fn name(self) -> &'static str {
        match self {
            Self::H264 => "H264",
            Self::H265 => "H265",
        }
    }
}

/// `udp://[@][ADDRESS]:PORT?encoding=H264` (or `rtp://`): RTP packets received on a UDP port,
/// joining ADDRESS when it is a multicast group.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpStream {
    /// `udp` or `rtp`, as written.
    pub scheme: String,
    /// The address to listen on: `0.0.0.0` for any, or a multicast group to join.
    pub address: IpAddr,
    pub port: u16,
    /// `None` until the `encoding` key fills it in (`Settings::load` insists on one).
    pub encoding: Option<RtpEncoding>,
    /// The RTP payload type the sender uses; `None`: whatever arrives.
    pub payload: Option<u8>,
    /// Network interface to join a multicast group on (`iface=eth1`); `None`: the system's.
    pub multicast_iface: Option<String>,
}

impl UdpStream {
    pub(super) fn parse(scheme: &str, rest: &str, uri: &str) -> Result<Self, StageError> {
        let q = Query { uri };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        // `@` (ffmpeg/VLC style) means "receive", optionally followed by a group to join.
        let authority = authority.strip_prefix('@').unwrap_or(authority);
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
            q.bad("no port: write udp://@:PORT or udp://@GROUP:PORT (e.g. udp://@:5000)".into())
        })?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| q.bad(format!("port must be 1..=65535, got `{port}`")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = if host.is_empty() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            host.parse::<IpAddr>().map_err(|_| {
                q.bad(format!(
                    "`{host}` is not an IP address (a local address to listen on, or a multicast group such as 239.1.1.1)"
                ))
            })?
        };
        let mut s = UdpStream {
            scheme: scheme.to_string(),
            address,
            port,
            encoding: None,
            payload: None,
            multicast_iface: None,
        };
        for (key, value) in Query::pairs(query) {
            match key {
                "encoding" => {
                    s.encoding = Some(RtpEncoding::parse(value).ok_or_else(|| {
                        q.bad(format!(
                            "unsupported encoding `{value}` (one of: {})",
                            RtpEncoding::NAMES
                        ))
                    })?)
                }
                "payload" => s.payload = Some(q.number(key, value, 0, 127)? as u8),
                "iface" if value.is_empty() => {
                    return Err(q.bad("`iface` needs an interface name (iface=eth0)".into()))
                }
                "iface" => s.multicast_iface = Some(value.to_string()),
                other => return Err(q.unknown(other, "encoding, payload, iface")),
            }
        }
        if s.multicast_iface.is_some() && !s.address.is_multicast() {
            return Err(q.bad(format!(
                "`iface` applies to multicast groups only, and {} is not one",
                s.address
            )));
        }
        Ok(s)
    }
}

impl std::fmt::Display for UdpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.address {
            IpAddr::V4(a) if a.is_unspecified() => String::new(),
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        write!(f, "{}://@{host}:{}", self.scheme, self.port)?;
        let mut sep = '?';
        if let Some(e) = self.encoding {
            write!(f, "{sep}encoding={}", e.name())?;
            sep = '&';
        }
        if let Some(p) = self.payload {
            write!(f, "{sep}payload={p}")?;
            sep = '&';
        }
        if let Some(i) = &self.multicast_iface {
            write!(f, "{sep}iface={i}")?;
        }
        Ok(())
    }
}

/// `v4l2:///dev/videoN?width=&height=&fps=`: a local camera. Without caps the camera's own
/// default mode is taken.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Device {
    pub device: PathBuf,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

impl V4l2Device {
    pub(super) fn parse(rest: &str, uri: &str) -> Result<Self, StageError> {
        let q = Query { uri };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(q.bad(
                "the device must be an absolute path, e.g. v4l2:///dev/video0 (three slashes)"
                    .into(),
            ));
        }
        let mut d = V4l2Device {
            device: PathBuf::from(path),
            width: None,
            height: None,
            fps: None,
        };
        for (key, value) in Query::pairs(query) {
            match key {
                "width" => d.width = Some(q.number(key, value, 16, 8192)?),
                "height" => d.height = Some(q.number(key, value, 16, 8192)?),
                "fps" => d.fps = Some(q.number(key, value, 1, 240)?),
                other => return Err(q.unknown(other, "width, height, fps")),
            }
        }
        Ok(d)
    }

    /// Why the device cannot be opened, checked before GStreamer tries (its own message does
    /// not say whether the node is missing or is not a camera).
    pub fn check(&self) -> Result<(), String> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(&self.device) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "V4L2 device {} does not exist (no camera is attached there)",
                self.device.display()
            )),
            Err(e) => Err(format!(
                "cannot open V4L2 device {}: {e}",
                self.device.display()
            )),
            Ok(m) if !m.file_type().is_char_device() => Err(format!(
                "{} is not a V4L2 device (not a character device)",
                self.device.display()
            )),
            Ok(_) => Ok(()),
        }
    }
}

impl std::fmt::Display for V4l2Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v4l2://{}", self.device.display())?;
        let mut sep = '?';
        for (key, value) in [
            ("width", self.width),
            ("height", self.height),
            ("fps", self.fps),
        ] {
            if let Some(v) = value {
                write!(f, "{sep}{key}={v}")?;
                sep = '&';
            }
        }
        Ok(())
    }
}

/// The image formats an image sequence may hold, chosen by the pattern's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "png" => Some(Self::Png),
            _ => None,
        }
    }

    /// The caps multifilesrc announces, and the decoder that takes them.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
        }
    }

    pub fn decoder(self) -> &'static str {
        match self {
            Self::Jpeg => "jpegdec",
            Self::Png => "pngdec",
        }
    }

    /// Whether `bytes` look like one whole image: the format's signature at the start and its
    /// end marker at the end. Decoders skip or half-decode damaged files silently, so this is
    /// what turns a damaged image into an error.
    pub fn check_complete(self, bytes: &[u8]) -> Result<(), &'static str> {
        match self {
            Self::Jpeg => {
                if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
                    return Err("it does not start like a JPEG file (no SOI marker)");
                }
                // Some encoders pad after the end marker; a few bytes of slack are allowed.
                let tail = &bytes[bytes.len().saturating_sub(64)..];
                if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
                    return Err("the JPEG data is truncated (no EOI marker at the end)");
                }
            }
            Self::Png => {
                if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
                    return Err("it does not start like a PNG file (no PNG signature)");
                }
                let tail = &bytes[bytes.len().saturating_sub(64)..];
                if !tail.windows(4).any(|w| w == b"IEND") {
                    return Err("the PNG data is truncated (no IEND chunk at the end)");
                }
            }
        }
        Ok(())
    }
}

/// `images://DIR/frame_%05d.jpg?fps=10&start_index=0`: numbered JPEG or PNG files, one frame
/// each, timestamped by `fps`. The sequence ends at the first missing number.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSequence {
    /// An absolute path with one printf integer conversion (`%d`, `%05d`).
    pub pattern: PathBuf,
    pub format: ImageFormat,
    /// Frame rate as a fraction (`fps=10` or `fps=30000/1001`).
    pub fps: (u32, u32),
    pub start_index: u32,
    /// The pattern, understood.
    numbering: FileNumbering,
}

impl ImageSequence {
    pub(super) fn parse(rest: &str, uri: &str, ctx: &BuildContext) -> Result<Self, StageError> {
        let q = Query { uri };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(q.bad("no path: write images://DIR/frame_%05d.jpg".into()));
        }
        let pattern = ctx.resolve(path);
        let numbering =
            FileNumbering::parse(&pattern.to_string_lossy()).map_err(|why| q.bad(why))?;
        let format = ImageFormat::from_path(&pattern).ok_or_else(|| {
            q.bad("the files must be .jpg/.jpeg (JPEG) or .png (PNG)".to_string())
        })?;
        let mut s = ImageSequence {
            pattern,
            format,
            fps: (30, 1),
            start_index: 0,
            numbering,
        };
        for (key, value) in Query::pairs(query) {
            match key {
                "fps" => {
                    let (n, d) = value.split_once('/').unwrap_or((value, "1"));
                    s.fps = match (n.parse::<u32>(), d.parse::<u32>()) {
                        (Ok(n), Ok(d)) if n > 0 && d > 0 && n / d <= 1000 => (n, d),
                        _ => {
                            return Err(q.bad(format!(
                                "`fps` must be a positive whole number or fraction (10, 30000/1001), got `{value}`"
                            )))
                        }
                    }
                }
                "start_index" => s.start_index = q.number(key, value, 0, i32::MAX as u32)?,
                other => return Err(q.unknown(other, "fps, start_index")),
            }
        }
        Ok(s)
    }

    /// The file holding image number `index`.
    pub fn file(&self, index: u32) -> PathBuf {
        PathBuf::from(self.numbering.format(index))
    }
}

impl std::fmt::Display for ImageSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "images://{}?fps={}", self.pattern.display(), self.fps.0)?;
        if self.fps.1 != 1 {
            write!(f, "/{}", self.fps.1)?;
        }
        if self.start_index != 0 {
            write!(f, "&start_index={}", self.start_index)?;
        }
        Ok(())
    }
}

/// A file name pattern with exactly one printf integer conversion, as multifilesrc takes it.
/// Checked here because multifilesrc hands the pattern to C's sprintf: anything but one
/// integer conversion would be undefined behaviour there.
#[derive(Debug, Clone, PartialEq)]
struct FileNumbering {
    before: String,
    zero_pad: bool,
    width: usize,
    /// After the conversion, `%%` already turned into `%`.
    after: String,
}

impl FileNumbering {
    fn parse(pattern: &str) -> Result<Self, String> {
        let mut before = String::new();
        let mut rest = pattern;
        loop {
            let Some(at) = rest.find('%') else {
                return Err(format!(
                    "the path `{pattern}` has no frame number: put %d or %05d where it goes (frame_%05d.jpg)"
                ));
            };
            before.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(tail) = rest.strip_prefix('%') {
                before.push('%');
                rest = tail;
                continue;
            }
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let spec = &rest[..digits];
            if rest[digits..].starts_with('d') {
                let after = &rest[digits + 1..];
                if after.replace("%%", "").contains('%') {
                    return Err(format!(
                        "the path `{pattern}` has more than one % conversion; only one frame number (%d) is allowed (write %% for a literal %)"
                    ));
                }
                let width = spec.parse::<usize>().unwrap_or(0);
                if width > 32 {
                    return Err(format!(
                        "the frame number width in `{pattern}` is too large"
                    ));
                }
                return Ok(Self {
                    before,
                    zero_pad: spec.starts_with('0'),
                    width,
                    after: after.replace("%%", "%"),
                });
            }
            return Err(format!(
                "the path `{pattern}` has an unsupported % conversion: only %d, %Nd and %0Nd are allowed (write %% for a literal %)"
            ));
        }
    }

    fn format(&self, index: u32) -> String {
        let number = if self.zero_pad {
            format!("{index:0width$}", width = self.width)
        } else {
            format!("{index:width$}", width = self.width)
        };
        format!("{}{number}{}", self.before, self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_numbering_is_printf_like_and_checked() {
        let n = FileNumbering::parse("/d/frame_%05d.jpg").unwrap();
        assert_eq!(n.format(42), "/d/frame_00042.jpg");
        assert_eq!(
            FileNumbering::parse("/d/%d.png").unwrap().format(7),
            "/d/7.png"
        );
        assert_eq!(
            FileNumbering::parse("/d/100%%_%3d.png").unwrap().format(7),
            "/d/100%_  7.png"
        );
        for bad in [
            "/d/frame.jpg",
            "/d/%s.jpg",
            "/d/%d_%d.jpg",
            "/d/%x.jpg",
            "/d/%99d.jpg",
        ] {
            assert!(FileNumbering::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_signatures_catch_truncated_and_foreign_files() {
        let jpeg = [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[0u8; 100], &[0xFF, 0xD9]].concat();
        assert!(ImageFormat::Jpeg.check_complete(&jpeg).is_ok());
        assert!(ImageFormat::Jpeg.check_complete(&jpeg[..80]).is_err());
        assert!(ImageFormat::Jpeg.check_complete(b"GIF89a....").is_err());
        assert!(ImageFormat::Jpeg.check_complete(&[]).is_err());
        let png = [
            &b"\x89PNG\r\n\x1a\n"[..],
            &[0u8; 40],
            b"IEND\xAE\x42\x60\x82",
        ]
        .concat();
        assert!(ImageFormat::Png.check_complete(&png).is_ok());
        assert!(ImageFormat::Png.check_complete(&png[..30]).is_err());
    }
}
