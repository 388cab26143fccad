//! Turning a stage's TOML table into its typed `Settings`.

use serde::de::DeserializeOwned;

use crate::stage::StageError;

/// Deserialises a stage's settings; `kind` is removed first since every stage has it.
/// Errors name the offending key and what was expected (serde + `deny_unknown_fields`).
pub fn parse<T: DeserializeOwned>(table: &toml::Table) -> Result<T, StageError> {
    let mut table = table.clone();
    table.remove("kind");
    // The error text ends with "in `key`" when a key is at fault; keep it on one line.
    T::deserialize(toml::Value::Table(table)).map_err(|e| {
        StageError::Settings(
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    })
}

/// A `file://` URI or plain path from a topology, as a path string.
pub fn file_uri_path(uri: &str) -> Result<String, StageError> {
    match uri.split_once("://") {
        Some(("file", rest)) if !rest.is_empty() => Ok(rest.to_string()),
        Some(("file", _)) => Err(StageError::Settings(format!(
            "`{uri}` has no path after file://"
        ))),
        Some((scheme, _)) => Err(StageError::Settings(format!(
            "unsupported URI scheme `{scheme}` in `{uri}`; expected file://PATH"
        ))),
        None if !uri.is_empty() => Ok(uri.to_string()),
        None => Err(StageError::Settings("empty URI".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct S {
        #[allow(dead_code)]
        size: u32,
    }

    #[test]
    fn unknown_keys_are_named() {
        let t: toml::Table = toml::from_str("kind = 'x'\nsize = 1\nsise = 2").unwrap();
        let err = parse::<S>(&t).unwrap_err().to_string();
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    fn file_uris() {
        assert_eq!(file_uri_path("file://out/a.mp4").unwrap(), "out/a.mp4");
        assert_eq!(file_uri_path("file:///abs/a.mp4").unwrap(), "/abs/a.mp4");
        assert!(file_uri_path("rtsp://x").is_err());
    }
}
