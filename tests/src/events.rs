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

/// A topology in `dir` for the adapters' tests: each `(id, uri)` source feeds a mux, and the
/// mux feeds both the broker stage under test, `events` (`events` holds its `uri`,
/// `options`...; schema minimal, spool in `dir`), and a `file://` broker stage `meta`, whose
/// output ([`meta_lines`], [`meta_frames`]) shows what the rest of the pipeline produced
/// whatever the broker's troubles. `name` names the pipeline and the file.
pub fn beside_file_topology(
    dir: &std::path::Path,
    name: &str,
    sources: &[(&str, &str)],
    events: &str,
) -> PathBuf {
    let mut text = format!(
        "[pipeline]\nname = \"{name}\"\n\
         links = [[\"sources\", \"mux\"], [\"mux\", \"events\"], [\"mux\", \"meta\"]]\n\n"
    );
    for (id, uri) in sources {
        text.push_str(&format!(
            "[[source]]\nid = \"{id}\"\nuri = \"{uri}\"\ntimeout = \"10s\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[stage]\nmux = {{ kind = \"mux\", batch_size = {} }}\n\
         meta = {{ kind = \"broker\", uri = \"file://{}/meta.jsonl\", schema = \"minimal\" }}\n\
         events = {{ kind = \"broker\", schema = \"minimal\", spool = \"{}/spool\", {events} }}\n",
        sources.len(),
        dir.display(),
        dir.display(),
    ));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("writable scratch directory");
    path
}

/// A 320x240 clip of `frames` frames at 30 fps in `dir`, as a file:// URI.
pub fn clip_uri(dir: &std::path::Path, frames: u32) -> String {
    let path = dir.join("clip.mp4");
    crate::make_clip(&path, frames, 320, 240, false);
    format!("file://{}", path.display())
}

fn meta_payloads(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("meta.jsonl"))
        .expect("the file:// broker wrote meta.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

/// How many messages the `file://` stage of [`beside_file_topology`] wrote.
pub fn meta_lines(dir: &std::path::Path) -> usize {
    meta_payloads(dir).len()
}

/// Per sensor, the frame numbers the `file://` stage of [`beside_file_topology`] wrote, in
/// order: what the pipeline produced, which the broker under test must deliver.
pub fn meta_frames(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut frames: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for payload in meta_payloads(dir) {
        let sensor = payload["sensorId"].as_str().expect("sensorId").to_string();
        let frame = payload["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("frame number in `id`");
        frames.entry(sensor).or_default().push(frame);
    }
    frames
}

/// A run of [`beside_file_topology`] whose broker refused: the rest of the pipeline wrote all
/// `frames`, and the one error is the broker stage's, saying `why` and that the events are kept
/// in the spool.
pub fn assert_refused(summary_errors: &[String], dir: &std::path::Path, frames: usize, why: &str) {
    assert_eq!(meta_lines(dir), frames, "the rest of the pipeline ran");
    assert_eq!(summary_errors.len(), 1, "{summary_errors:?}");
    let error = &summary_errors[0];
    assert!(
        error.starts_with("stage `events` (broker)") && error.contains(why),
        "{error}"
    );
    assert!(error.contains("kept in the spool"), "{error}");
}

/// One message as an independent consumer read it back, reduced to what the delivery checks
/// need.
pub struct ReadBack {
    /// The stable message id (a header, property or field, per broker).
    pub id: String,
    pub sensor: String,
    pub frame: u64,
    /// Everything a repeat must reproduce exactly (payload, topic or key...).
    pub content: String,
}

/// Per sensor, the frame numbers in the order their first copies arrived. Repeats (at-least-
/// once delivery after an outage or a restart) must have the id and content of the first copy.
/// `read` checks each message (e.g. against the payload schema) and reduces it.
pub fn first_copies<M>(
    messages: &[M],
    read: impl Fn(&M) -> ReadBack,
) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut content_of: std::collections::HashMap<String, String> = Default::default();
    let mut frames: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for m in messages {
        let ReadBack {
            id,
            sensor,
            frame,
            content,
        } = read(m);
        if let Some(first) = content_of.get(&id) {
            assert_eq!(
                first, &content,
                "a repeat of {id} differs from its first copy"
            );
            continue;
        }
        content_of.insert(id, content);
        frames.entry(sensor).or_default().push(frame);
    }
    frames
}

/// A minimal-schema payload checked against DeepStream's schema, as (sensor, frame number).
pub fn minimal_sensor_and_frame(payload: &str) -> (String, u64) {
    let v = assert_valid(Format::Minimal, payload);
    let sensor = v["sensorId"].as_str().expect("sensorId").to_string();
    let frame = v["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("frame number in `id`: {v}"));
    (sensor, frame)
}

/// Checks what an independent client read from a broker, as (sensor, message id, payload) in
/// the broker's order: `frames` distinct messages from sensor `cam7`, each a valid minimal
/// payload, first seen in frame order; a repeat has the same message id and payload.
pub fn assert_all_frames_once_in_order(entries: &[(String, String, String)], frames: usize) {
    let firsts = first_copies(entries, |(sensor, id, payload)| {
        let (in_payload, frame) = minimal_sensor_and_frame(payload);
        assert_eq!(
            &in_payload, sensor,
            "the sensorId field matches the payload"
        );
        ReadBack {
            id: id.clone(),
            sensor: sensor.clone(),
            frame,
            content: payload.clone(),
        }
    });
    assert_eq!(firsts.keys().collect::<Vec<_>>(), ["cam7"]);
    assert_eq!(firsts["cam7"], (0..frames as u64).collect::<Vec<_>>());
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
