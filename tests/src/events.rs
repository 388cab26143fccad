//! DeepStream payload checks shared by the broker tests: every event a consumer reads back is
//! validated against a JSON Schema of DeepStream's format (tests/schemas/).

use std::path::PathBuf;

/// The DeepStream payload formats there are schemas for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// nvmsgconv minimal schema: one message per frame.
    Minimal,
    /// nvmsgconv full schema: one message per object.
    Full,
}

impl Format {
    fn schema_path(self) -> PathBuf {
        let name = match self {
            Format::Minimal => "deepstream-minimal.schema.json",
            Format::Full => "deepstream-full.schema.json",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(name)
    }
}

/// Checks `payload` against the schema of `format`; the error lists every violation with its
/// JSON pointer.
pub fn validate(format: Format, payload: &serde_json::Value) -> Result<(), String> {
    let path = format.schema_path();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Parses `text` as JSON and validates it, panicking with the payload and the violations.
pub fn assert_valid(format: Format, text: &str) -> serde_json::Value {
    let value: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    if let Err(e) = validate(format, &value) {
        panic!("payload does not follow DeepStream's {format:?} schema: {e}\n{text}");
    }
    value
}

/// A topology file in `dir`: one file source `cam7` (`clip`) → mux → `events` (a broker
/// stage with `broker`, the inline table's contents, e.g. `uri = "...", schema = "minimal"`).
/// With `paced`, an MP4 sink with `sync = true` follows the broker, so frames flow at the
/// clip's real-time rate (a 30 fps clip of 150 frames takes 5 s): long enough to take a
/// broker down mid-run.
pub fn broker_topology(
    dir: &std::path::Path,
    clip: &std::path::Path,
    broker: &str,
    paced: bool,
) -> PathBuf {
    let (links, sink) = if paced {
        (
            r#"[["sources", "mux"], ["mux", "events"], ["events", "out"]]"#,
            format!(
                "out = {{ kind = \"sink\", uri = \"file://{}\", sync = true, speed_preset = \"ultrafast\" }}\n",
                dir.join("out.mp4").display()
            ),
        )
    } else {
        (r#"[["sources", "mux"], ["mux", "events"]]"#, String::new())
    };
    let text = format!(
        "[pipeline]\nname = \"events\"\nlinks = {links}\n\n\
         [[source]]\nid = \"cam7\"\nuri = \"file://{}\"\n\n\
         [stage]\nmux = {{ kind = \"mux\", batch_size = 4 }}\n\
         events = {{ kind = \"broker\", {broker} }}\n{sink}",
        clip.display()
    );
    let path = dir.join("events.toml");
    std::fs::write(&path, text).expect("writable scratch directory");
    path
}

/// Checks what an independent client read from a broker, as (sensor, message id, payload) in
/// the broker's order: `frames` distinct messages from sensor `cam7`, each a valid minimal
/// payload, first seen in frame order; a repeat (at-least-once delivery) has the same message
/// id and the same payload.
pub fn assert_all_frames_once_in_order(entries: &[(String, String, String)], frames: usize) {
    let mut seen = std::collections::HashSet::new();
    let mut first_seen = Vec::new();
    let mut payload_of = std::collections::HashMap::new();
    for (sensor, id, payload) in entries {
        assert_eq!(sensor, "cam7");
        let v = assert_valid(Format::Minimal, payload);
        assert_eq!(v["sensorId"], "cam7");
        if let Some(earlier) = payload_of.insert(id.clone(), payload.clone()) {
            assert_eq!(
                &earlier, payload,
                "a repeated message id carries the same payload"
            );
        }
        if seen.insert(id.clone()) {
            first_seen.push(v["id"].as_str().unwrap().parse::<usize>().unwrap());
        }
    }
    assert_eq!(first_seen, (0..frames).collect::<Vec<_>>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_accept_deepstream_payloads_and_catch_mistakes() {
        let minimal = serde_json::json!({
            "version": "4.0", "id": "12", "@timestamp": "2023-11-14T22:13:20.123Z",
            "sensorId": "cam0", "objects": ["5|1.5|2|11.5|22|person", "18446744073709551615|0|0|1|1|car|#|red"]
        });
        validate(Format::Minimal, &minimal).unwrap();
        let mut wrong = minimal.clone();
        wrong["objects"][0] = "5|1.5|2|person".into();
        wrong["sensorid"] = "x".into();
        let e = validate(Format::Minimal, &wrong).unwrap_err();
        assert!(e.contains("/objects/0") && e.contains("sensorid"), "{e}");
        assert!(validate(Format::Full, &minimal).is_err());
    }
}
