//! A tracker from an algorithm name and `key=value` overrides.
//!
//! The settings go through a TOML table and the `track` stage's own check and
//! deserialisation, exactly as a `[[stage]] kind = "track"` table of a topology would. Nothing
//! here names an algorithm, so algorithms added to `Algorithm` work without a change here.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use vidmesh_actors::track::{Settings, Track, KIND};
use vidmesh_actors::{settings, BuildContext};

/// Splits `key=value` and reads the value as a TOML value (`0.5`, `30`, `true`, `"x"`); a
/// value that is not valid TOML is taken as a bare string, so `--set algorithm=sort` works.
pub fn parse_set(arg: &str) -> Result<(String, toml::Value)> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("`{arg}` is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("`{arg}` has an empty key");
    }
    let value = value.trim();
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), parsed))
}

/// The settings table for `algorithm` with `sets` applied on top (later sets win).
pub fn settings_table(algorithm: &str, sets: &[(String, toml::Value)]) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert(
        "algorithm".into(),
        toml::Value::String(algorithm.to_string()),
    );
    for (key, value) in sets {
        table.insert(key.clone(), value.clone());
    }
    table
}

/// Checks a settings table the way a topology's `track` stage is checked and returns the
/// settings; the error is the stage's own message (unknown algorithm, unknown key, bad range).
pub fn settings_from_table(table: &toml::Table) -> Result<Settings> {
    let ctx = BuildContext {
        replica: 0,
        stage_name: "track".into(),
        base_dir: PathBuf::from("."),
        sources: Vec::new(),
        resume: None,
        peers: Default::default(),
    };
    (KIND.check)(table, &ctx).with_context(|| {
        let shown: Vec<String> = table.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("tracker settings {{ {} }}", shown.join(", "))
    })?;
    Ok(settings::parse::<Settings>(table)?)
}

/// Settings for `algorithm` with `sets` applied.
pub fn settings_for(algorithm: &str, sets: &[(String, toml::Value)]) -> Result<Settings> {
    settings_from_table(&settings_table(algorithm, sets))
}

/// A fresh tracker (no tracks, ids from 1).
pub fn new_track(settings: &Settings) -> Track {
    Track::new(settings.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_toml_or_bare_strings() {
        assert_eq!(
            parse_set("iou_threshold=0.4").unwrap(),
            ("iou_threshold".into(), toml::Value::Float(0.4))
        );
        assert_eq!(
            parse_set("max_age = 30").unwrap(),
            ("max_age".into(), toml::Value::Integer(30))
        );
        assert_eq!(
            parse_set("algorithm=iou").unwrap(),
            ("algorithm".into(), toml::Value::String("iou".into()))
        );
        assert!(parse_set("nokey").is_err());
        assert!(parse_set("=3").is_err());
    }

    #[test]
    fn iou_is_accepted_and_unknown_names_and_keys_are_refused() {
        let s = settings_for("iou", &[parse_set("min_hits=3").unwrap()]).unwrap();
        assert_eq!(s.min_hits, 3);
        assert!(settings_for("no-such-tracker", &[]).is_err());
        assert!(settings_for("iou", &[parse_set("no_such_key=1").unwrap()]).is_err());
        assert!(settings_for("iou", &[parse_set("min_hits=0").unwrap()]).is_err());
    }
}
