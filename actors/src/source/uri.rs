//! Source URIs: parsing, checking, and printing without credentials.

use std::path::PathBuf;

use crate::stage::{BuildContext, StageError};

pub use super::params::{
    ImageFormat, ImageSequence, RtpEncoding, TestPattern, UdpStream, V4l2Device, TEST_PATTERNS,
};

/// The schemes a source URI may have, for errors and "did you mean" hints.
pub const SCHEMES: &[&str] = &[
    "file", "rtsp", "rtsps", "rtspt", "udp", "rtp", "http", "https", "v4l2", "images", "testsrc",
];

/// A checked source location.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUri {
    File(PathBuf),
    Rtsp(url::Url),
    /// `http(s)://…`: a file (MP4, MKV, TS…) or an HLS playlist (`.m3u8`) over HTTP.
    Http(url::Url),
    /// `udp://@:PORT?encoding=H264` / `rtp://…`: RTP packets on a UDP port or multicast group.
    Udp(UdpStream),
    /// `v4l2:///dev/videoN`: a local camera.
    V4l2(V4l2Device),
    /// `images://DIR/frame_%05d.jpg?fps=10`: numbered JPEG/PNG files, one frame each.
    Images(ImageSequence),
    /// `testsrc://PATTERN?width=&height=&fps=&frames=&live=`: synthetic frames from GStreamer's
    /// videotestsrc, for trying a topology without a clip or a camera.
    Test(TestPattern),
}

/// The URI with any password replaced by `***`, for logs and errors. Works on text so that
/// even a URI too broken to parse does not leak its credentials.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => uri.to_string(),
    }
}

impl SourceUri {
    pub fn parse(uri: &str, ctx: &BuildContext) -> Result<Self, StageError> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            StageError::Settings(format!(
                "`{}` is not a URI; expected SCHEME://… with one of the schemes {} (e.g. file://PATH, rtsp://HOST/PATH)",
                redact(uri),
                SCHEMES.join(", ")
            ))
        })?;
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "file" => {
                if rest.is_empty() {
                    return Err(StageError::Settings(format!("`{uri}` has no path")));
                }
                let path = ctx.resolve(rest);
                if !path.is_file() {
                    return Err(StageError::Settings(format!(
                        "file {} does not exist",
                        path.display()
                    )));
                }
                let path = path.canonicalize().map_err(|e| {
                    StageError::runtime(format!("cannot open {}", path.display()), e)
                })?;
                Ok(SourceUri::File(path))
            }
            "rtsp" | "rtsps" | "rtspt" => network_url(uri, "RTSP").map(SourceUri::Rtsp),
            "http" | "https" => network_url(uri, "HTTP").map(SourceUri::Http),
            "udp" | "rtp" => UdpStream::parse(&scheme, rest, uri).map(SourceUri::Udp),
            "v4l2" => V4l2Device::parse(rest, uri).map(SourceUri::V4l2),
            "images" => ImageSequence::parse(rest, uri, ctx).map(SourceUri::Images),
            "testsrc" => TestPattern::parse(rest, uri).map(SourceUri::Test),
            other => {
                let hint = closest_scheme(other)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                Err(StageError::Settings(format!(
                    "unsupported source URI scheme `{other}` in `{}` (supported: {}){hint}",
                    redact(uri),
                    SCHEMES.join(", ")
                )))
            }
        }
    }

    /// The URI GStreamer gets where it takes one (absolute file URI, credentials kept).
    pub fn gst_uri(&self) -> String {
        match self {
            SourceUri::File(p) => url::Url::from_file_path(p)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| format!("file://{}", p.display())),
            SourceUri::Rtsp(u) | SourceUri::Http(u) => u.to_string(),
            SourceUri::Udp(s) => s.to_string(),
            SourceUri::V4l2(d) => d.to_string(),
            SourceUri::Images(i) => i.to_string(),
            SourceUri::Test(t) => t.to_string(),
        }
    }

    /// The URI for humans: credentials removed.
    pub fn display(&self) -> String {
        match self {
            SourceUri::File(p) => p.display().to_string(),
            SourceUri::Rtsp(u) | SourceUri::Http(u) => redact(u.as_str()),
            other => other.gst_uri(),
        }
    }

    /// Whether the stream has no end to count down to (a camera, a network feed, an endless
    /// synthetic stream).
    pub fn is_live(&self) -> bool {
        match self {
            SourceUri::File(_) | SourceUri::Http(_) | SourceUri::Images(_) => false,
            SourceUri::Rtsp(_) | SourceUri::Udp(_) | SourceUri::V4l2(_) => true,
            // A finite synthetic stream has an end to show progress towards.
            SourceUri::Test(t) => t.live || t.frames.is_none(),
        }
    }

    /// Whether data comes from a camera or a network, which may stall or drop: these sources
    /// watch `timeout` and may `reconnect_interval`.
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            SourceUri::Rtsp(_) | SourceUri::Http(_) | SourceUri::Udp(_) | SourceUri::V4l2(_)
        )
    }

    /// Whether the stream has an end to start again from (`loop`).
    pub fn is_replayable(&self) -> bool {
        matches!(
            self,
            SourceUri::File(_) | SourceUri::Http(_) | SourceUri::Images(_)
        )
    }

    /// `text` with this URI's password replaced by `***`, wherever GStreamer quoted it.
    pub fn scrub(&self, text: &str) -> String {
        let password = match self {
            SourceUri::Rtsp(u) | SourceUri::Http(u) => u.password(),
            _ => None,
        };
        match password.filter(|p| !p.is_empty()) {
            Some(p) => {
                let decoded = percent_decode(p);
                text.replace(p, "***").replace(&decoded, "***")
            }
            None => text.to_string(),
        }
    }
}

/// A URL with a host, for schemes that connect to a server.
fn network_url(uri: &str, what: &str) -> Result<url::Url, StageError> {
    let url = url::Url::parse(uri)
        .map_err(|e| StageError::Settings(format!("bad {what} URI `{}`: {e}", redact(uri))))?;
    if url.host_str().is_none_or(|h| h.is_empty()) {
        return Err(StageError::Settings(format!(
            "{what} URI `{}` has no host",
            redact(uri)
        )));
    }
    Ok(url)
}

/// Percent-decoding of a URL component, for finding a password GStreamer printed decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The supported scheme a mistyped one most likely meant: within two edits (a swap of two
/// neighbouring letters counts as one), ties going to the one of the same length.
fn closest_scheme(typed: &str) -> Option<&'static str> {
    SCHEMES
        .iter()
        .map(|s| (edit_distance(typed, s), typed.len().abs_diff(s.len()), *s))
        .filter(|(d, _, _)| *d <= 2)
        .min()
        .map(|(_, _, s)| s)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and transpositions.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> BuildContext {
        BuildContext {
            replica: 0,
            stage_name: "sources".into(),
            base_dir: std::env::temp_dir(),
            sources: vec![],
            resume: None,
            peers: Default::default(),
        }
    }

    #[test]
    fn passwords_never_appear_in_display() {
        let u = SourceUri::parse("rtsp://admin:s3cret@10.0.0.5:554/stream1", &ctx()).unwrap();
        assert!(!u.display().contains("s3cret"));
        assert!(u.gst_uri().contains("s3cret"), "GStreamer still needs them");
    }

    #[test]
    fn test_patterns_parse_with_defaults_and_checked_parameters() {
        let t = match SourceUri::parse("testsrc://", &ctx()).unwrap() {
            SourceUri::Test(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (t.pattern.as_str(), t.width, t.height, t.fps),
            ("smpte", 1280, 720, 30)
        );
        assert_eq!((t.frames, t.live), (None, false));
        let u = SourceUri::parse(
            "testsrc://ball?width=320&height=240&fps=15&frames=45&live",
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            u.display(),
            "testsrc://ball?width=320&height=240&fps=15&frames=45&live=true"
        );
        for (uri, says) in [
            ("testsrc://plaid", "unknown pattern `plaid`"),
            (
                "testsrc://ball?width=9",
                "`width` must be a whole number in 16..=8192",
            ),
            ("testsrc://ball?fps=0", "`fps`"),
            ("testsrc://ball?frames=-1", "`frames`"),
            ("testsrc://ball?live=maybe", "`live` is true or false"),
            ("testsrc://ball?colour=red", "unknown parameter `colour`"),
        ] {
            let e = SourceUri::parse(uri, &ctx()).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn missing_files_and_unknown_schemes_are_named() {
        let e = SourceUri::parse("file://no/such/clip.mp4", &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clip.mp4") && e.contains("does not exist"),
            "{e}"
        );
        let e = SourceUri::parse("gopher://x/y", &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("gopher"), "{e}");
        let e = SourceUri::parse("rtsp://:pw@/x", &ctx())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw@"), "{e}");
        assert_eq!(redact("rtsp://u:p@h:554/s?x=1"), "rtsp://u:***@h:554/s?x=1");
        assert_eq!(redact("rtsp://h/s"), "rtsp://h/s");
    }

    #[test]
    fn udp_and_rtp_uris_listen_on_a_port_or_join_a_group() {
        let u = match SourceUri::parse("udp://@:5000?encoding=h264", &ctx()).unwrap() {
            SourceUri::Udp(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(u.address.to_string(), "0.0.0.0");
        assert_eq!((u.port, u.encoding), (5000, Some(RtpEncoding::H264)));
        let m = match SourceUri::parse(
            "rtp://@239.1.2.3:5004?encoding=H265&payload=97&iface=eth1",
            &ctx(),
        )
        .unwrap()
        {
            SourceUri::Udp(u) => u,
            other => panic!("{other:?}"),
        };
        assert!(m.address.is_multicast());
        assert_eq!(m.encoding, Some(RtpEncoding::H265));
        assert_eq!(
            (m.payload, m.multicast_iface.as_deref()),
            (Some(97), Some("eth1"))
        );
        assert_eq!(
            SourceUri::Udp(m).display(),
            "rtp://@239.1.2.3:5004?encoding=H265&payload=97&iface=eth1"
        );
        // Without `@`, and with an encoding given later by the `encoding` key.
        let plain = SourceUri::parse("udp://127.0.0.1:6000", &ctx()).unwrap();
        assert!(plain.is_live() && plain.is_network());
        for (uri, says) in [
            ("udp://@5000", "no port"),
            ("udp://@:0?encoding=H264", "port must be 1..=65535"),
            ("udp://@:70000?encoding=H264", "port must be 1..=65535"),
            ("udp://@camera.local:5000", "is not an IP address"),
            (
                "udp://@:5000?encoding=MJPEG",
                "unsupported encoding `MJPEG`",
            ),
            (
                "udp://@:5000?payload=200",
                "`payload` must be a whole number in 0..=127",
            ),
            ("udp://@:5000?iface=eth0", "multicast groups only"),
            ("udp://@:5000?ttl=4", "unknown parameter `ttl`"),
        ] {
            let e = SourceUri::parse(uri, &ctx()).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn http_uris_keep_credentials_away_from_humans() {
        let u =
            SourceUri::parse("https://user:p%40ss@cdn.example/live/index.m3u8", &ctx()).unwrap();
        assert!(matches!(u, SourceUri::Http(_)));
        assert_eq!(u.display(), "https://user:***@cdn.example/live/index.m3u8");
        assert!(u.gst_uri().contains("p%40ss"));
        // GStreamer may quote it raw or decoded.
        assert_eq!(u.scrub("401 for p%40ss and p@ss"), "401 for *** and ***");
        assert!(!u.is_live() && u.is_network() && u.is_replayable());
        let e = SourceUri::parse("https://:hunter2@/live.m3u8", &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad HTTP URI") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn v4l2_uris_take_a_device_and_optional_caps() {
        let d = match SourceUri::parse("v4l2:///dev/video2?width=640&height=480&fps=15", &ctx())
            .unwrap()
        {
            SourceUri::V4l2(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(d.device, PathBuf::from("/dev/video2"));
        assert_eq!((d.width, d.height, d.fps), (Some(640), Some(480), Some(15)));
        assert_eq!(
            SourceUri::V4l2(d).display(),
            "v4l2:///dev/video2?width=640&height=480&fps=15"
        );
        let e = SourceUri::parse("v4l2://dev/video0", &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute path"), "{e}");
        let absent = V4l2Device {
            device: std::env::temp_dir().join("vidmesh-no-such-video0"),
            width: None,
            height: None,
            fps: None,
        };
        let e = absent.check().unwrap_err();
        assert!(
            e.contains("vidmesh-no-such-video0") && e.contains("does not exist"),
            "{e}"
        );
        let not_a_device = V4l2Device {
            device: std::env::temp_dir(),
            ..absent
        };
        assert!(not_a_device
            .check()
            .unwrap_err()
            .contains("not a V4L2 device"));
    }

    #[test]
    fn image_sequences_need_one_frame_number_and_a_known_format() {
        let i = match SourceUri::parse(
            "images://frames/f_%05d.png?fps=30000/1001&start_index=7",
            &ctx(),
        )
        .unwrap()
        {
            SourceUri::Images(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(i.pattern, std::env::temp_dir().join("frames/f_%05d.png"));
        assert_eq!(
            (i.format, i.fps, i.start_index),
            (ImageFormat::Png, (30000, 1001), 7)
        );
        assert_eq!(i.file(7), std::env::temp_dir().join("frames/f_00007.png"));
        for (uri, says) in [
            ("images:///d/frame.jpg", "no frame number"),
            ("images:///d/%s.jpg", "unsupported % conversion"),
            ("images:///d/f_%d.bmp", ".jpg/.jpeg (JPEG) or .png"),
            ("images:///d/f_%d.jpg?fps=0", "`fps` must be a positive"),
            ("images:///d/f_%d.jpg?start_index=-1", "`start_index`"),
            ("images:///d/f_%d.jpg?loop=1", "unknown parameter `loop`"),
        ] {
            let e = SourceUri::parse(uri, &ctx()).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn a_mistyped_scheme_lists_the_supported_ones_and_suggests_the_closest() {
        for (uri, meant) in [
            ("rtps://cam/stream", "rtsp"),
            ("flie://clip.mp4", "file"),
            ("htpp://host/a.mp4", "http"),
            ("upd://@:5000", "udp"),
            ("v4l://dev/video0", "v4l2"),
            ("image:///d/%d.jpg", "images"),
        ] {
            let e = SourceUri::parse(uri, &ctx()).unwrap_err().to_string();
            assert!(
                e.contains(&format!("did you mean `{meant}`?")) && e.contains(&SCHEMES.join(", ")),
                "{uri}: {e}"
            );
        }
        let e = SourceUri::parse("gopher://x/y", &ctx())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
        // Schemes are case-insensitive, as in any URI.
        assert!(SourceUri::parse("RTSP://cam/stream", &ctx()).is_ok());
    }
}
