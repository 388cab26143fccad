//! Source URIs: parsing, checking, and printing without credentials.

use std::path::PathBuf;

use crate::stage::{BuildContext, StageError};

/// A checked source location.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUri {
    File(PathBuf),
    Rtsp(url::Url),
    /// `testsrc://PATTERN?width=&height=&fps=&frames=&live=`: synthetic frames from GStreamer's
    /// videotestsrc, for trying a topology without a clip or a camera.
    Test(TestPattern),
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
    fn parse(rest: &str, uri: &str) -> Result<Self, StageError> {
        let bad = |why: String| StageError::Settings(format!("`{uri}`: {why}"));
        let (pattern, query) = rest.split_once('?').unwrap_or((rest, ""));
        let pattern = match pattern.trim_end_matches('/') {
            "" => "smpte",
            p => p,
        };
        if !TEST_PATTERNS.contains(&pattern) {
            return Err(bad(format!(
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
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |lo: u32, hi: u32| -> Result<u32, StageError> {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "`{key}` must be a whole number in {lo}..={hi}, got `{value}`"
                        ))
                    })
            };
            match key {
                "width" => t.width = number(16, 8192)?,
                "height" => t.height = number(16, 8192)?,
                "fps" => t.fps = number(1, 240)?,
                "frames" => t.frames = Some(number(1, i32::MAX as u32)?),
                "live" => {
                    t.live = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(bad(format!("`live` is true or false, got `{value}`"))),
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{other}` (width, height, fps, frames, live)"
                    )))
                }
            }
        }
        Ok(t)
    }
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
                "`{}` is not a URI; expected file://PATH or rtsp://HOST/PATH",
                redact(uri)
            ))
        })?;
        match scheme {
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
            "rtsp" | "rtsps" | "rtspt" => {
                let url = url::Url::parse(uri).map_err(|e| {
                    StageError::Settings(format!("bad RTSP URI `{}`: {e}", redact(uri)))
                })?;
                if url.host_str().is_none_or(|h| h.is_empty()) {
                    return Err(StageError::Settings(format!(
                        "RTSP URI `{}` has no host",
                        redact(uri)
                    )));
                }
                Ok(SourceUri::Rtsp(url))
            }
            "testsrc" => TestPattern::parse(rest, uri).map(SourceUri::Test),
            other => Err(StageError::Settings(format!(
                "unsupported source URI scheme `{other}` in `{}` (supported: file, rtsp, testsrc)",
                redact(uri)
            ))),
        }
    }

    /// The URI GStreamer gets (absolute file URI, credentials kept).
    pub fn gst_uri(&self) -> String {
        match self {
            SourceUri::File(p) => url::Url::from_file_path(p)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| format!("file://{}", p.display())),
            SourceUri::Rtsp(u) => u.to_string(),
            SourceUri::Test(t) => t.to_string(),
        }
    }

    /// Whether the stream has no end to count down to (cameras, network streams, endless
    /// synthetic streams); progress bars and the dashboard show these without an ETA.
    pub fn is_live(&self) -> bool {
        match self {
            SourceUri::File(_) => false,
            SourceUri::Rtsp(_) => true,
            SourceUri::Test(t) => t.live || t.frames.is_none(),
        }
    }

    /// The URI for humans: credentials removed.
    pub fn display(&self) -> String {
        match self {
            SourceUri::File(p) => p.display().to_string(),
            SourceUri::Rtsp(u) => redact(u.as_str()),
            SourceUri::Test(t) => t.to_string(),
        }
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
}
