//! Source URIs: parsing, checking, and printing without credentials.

use std::path::PathBuf;

use crate::stage::{BuildContext, StageError};

/// A checked source location.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUri {
    File(PathBuf),
    Rtsp(url::Url),
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
            other => Err(StageError::Settings(format!(
                "unsupported source URI scheme `{other}` in `{}` (supported: file, rtsp)",
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
        }
    }

    /// The URI for humans: credentials removed.
    pub fn display(&self) -> String {
        match self {
            SourceUri::File(p) => p.display().to_string(),
            SourceUri::Rtsp(u) => redact(u.as_str()),
        }
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
