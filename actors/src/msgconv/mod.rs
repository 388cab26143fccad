//! Metadata → message payloads in DeepStream's nvmsgconv schemas, so existing DeepStream back
//! ends parse vidmesh's events unchanged.
//!
//! * `minimal`: one payload per frame with every object as
//!   `"trackingId|left|top|right|bottom|label"` (DeepStream's minimal schema); untracked
//!   objects carry DeepStream's `UNTRACKED_OBJECT_ID` (2^64-1).
//! * `native`: vidmesh's own frame metadata as JSON, with full-precision confidences and boxes,
//!   for consumers that want everything. User meta (frame and object) is included; a kind
//!   ending in `+json` is written as the JSON it holds, other kinds as an array of bytes.
//! * `full`: DeepStream's full schema, one payload per object with place, sensor and analytics
//!   module sections from a msgconv config file ([`config`], [`full`]).
//!
//! Besides these JSON schemas, [`protobuf`] writes one binary `vidmesh.events.v1.Frame` per
//! frame (`proto/vidmesh/events/v1/frame.proto`), the broker's `format = "protobuf"`.

pub mod config;
pub mod full;
pub mod protobuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use vidmesh_protocol::{BBox, ClassifierMeta, FrameMeta, Mask, ObjectMeta, UserMeta};

/// DeepStream's id for an object no tracker has claimed.
pub const UNTRACKED_OBJECT_ID: u64 = u64::MAX;

/// Payload schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    #[default]
    Minimal,
    Native,
    Full,
}

#[derive(Serialize)]
struct MinimalPayload<'a> {
    version: &'static str,
    id: String,
    #[serde(rename = "@timestamp")]
    timestamp: String,
    #[serde(rename = "sensorId")]
    sensor_id: &'a str,
    objects: Vec<String>,
}

#[derive(Serialize)]
struct NativePayload<'a> {
    source_id: u32,
    source_name: &'a str,
    frame_num: u64,
    pts_ns: u64,
    ntp_ns: Option<u64>,
    width: u32,
    height: u32,
    objects: Vec<NativeObject<'a>>,
    user: Vec<NativeUser<'a>>,
}

/// An [`ObjectMeta`] as the native schema writes it: the same fields, user meta readable.
#[derive(Serialize)]
struct NativeObject<'a> {
    component_id: u32,
    class_id: i32,
    label: &'a str,
    confidence: f32,
    bbox: BBox,
    track_id: Option<u64>,
    tracker_confidence: Option<f32>,
    parent: Option<u32>,
    classifiers: &'a [ClassifierMeta],
    mask: &'a Option<Mask>,
    user: Vec<NativeUser<'a>>,
}

impl<'a> From<&'a ObjectMeta> for NativeObject<'a> {
    fn from(o: &'a ObjectMeta) -> Self {
        // No `..`: a field added to ObjectMeta must be added here too.
        let ObjectMeta {
            component_id,
            class_id,
            label,
            confidence,
            bbox,
            track_id,
            tracker_confidence,
            parent,
            classifiers,
            mask,
            user,
        } = o;
        Self {
            component_id: *component_id,
            class_id: *class_id,
            label,
            confidence: *confidence,
            bbox: *bbox,
            track_id: *track_id,
            tracker_confidence: *tracker_confidence,
            parent: *parent,
            classifiers,
            mask,
            user: user.iter().map(NativeUser::from).collect(),
        }
    }
}

/// A [`UserMeta`] with `+json` data as JSON rather than bytes.
#[derive(Serialize)]
struct NativeUser<'a> {
    kind: &'a str,
    data: NativeUserData<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum NativeUserData<'a> {
    Json(serde_json::Value),
    Bytes(&'a [u8]),
}

impl<'a> From<&'a UserMeta> for NativeUser<'a> {
    fn from(u: &'a UserMeta) -> Self {
        let json = u
            .kind
            .ends_with("+json")
            .then(|| serde_json::from_slice(&u.data).ok())
            .flatten();
        Self {
            kind: &u.kind,
            data: json.map_or(NativeUserData::Bytes(&u.data), NativeUserData::Json),
        }
    }
}

/// ISO 8601 UTC with exactly three fraction digits, as nvmsgconv writes `@timestamp`
/// (`2023-11-14T22:13:20.120Z`; RFC 3339 formatting would drop trailing zeros).
fn timestamp(frame: &FrameMeta) -> String {
    let ns = frame.ntp_ns.unwrap_or(frame.ingest_ns) as i128;
    let t = OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn minimal_object(o: &ObjectMeta) -> String {
    let b = o.bbox;
    let mut s = format!(
        "{}|{}|{}|{}|{}|{}",
        o.track_id.unwrap_or(UNTRACKED_OBJECT_ID),
        b.left,
        b.top,
        b.right(),
        b.bottom(),
        o.label
    );
    // Secondary classifier labels follow a `#`, as in DeepStream's minimal schema.
    let labels: Vec<&str> = o
        .classifiers
        .iter()
        .flat_map(|c| c.labels.iter().map(|l| l.label.as_str()))
        .collect();
    if !labels.is_empty() {
        s.push_str("|#|");
        s.push_str(&labels.join("|"));
    }
    s
}

/// The payloads for one frame: one for `minimal` and `native`, one per object for `full`
/// (none for a frame without objects). `config` is only used by `full`.
pub fn payloads(schema: Schema, config: &config::MsgConvConfig, frame: &FrameMeta) -> Vec<String> {
    match schema {
        Schema::Minimal => vec![minimal_payload(frame)],
        Schema::Native => vec![native_payload(frame)],
        Schema::Full => full::object_payloads(config, frame),
    }
}

/// The stable id of each payload [`payloads`] returns, in the same order: `full`'s
/// `messageid` per object, and for the per-frame schemas an id made the same way from the
/// source and frame number. A frame published twice (after a restart) gets the same ids, so
/// consumers can drop the repeat.
pub fn message_ids(schema: Schema, frame: &FrameMeta) -> Vec<String> {
    match schema {
        Schema::Full => (0..frame.objects.len())
            .map(|i| full::message_id(frame, i))
            .collect(),
        // No object has this index, so the frame's id never equals one of its objects'.
        Schema::Minimal | Schema::Native => vec![full::message_id(frame, usize::MAX)],
    }
}

/// The key a frame's messages are published under: its sensor id.
pub fn publish_key<'a>(
    schema: Schema,
    config: &'a config::MsgConvConfig,
    frame: &'a FrameMeta,
) -> &'a str {
    match schema {
        Schema::Full => full::sensor_id(config, frame),
        Schema::Minimal | Schema::Native => &frame.source_name,
    }
}

fn minimal_payload(frame: &FrameMeta) -> String {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_string(&MinimalPayload {
        version: "4.0",
        id: frame.frame_num.to_string(),
        timestamp: timestamp(frame),
        sensor_id: &frame.source_name,
        objects: frame.objects.iter().map(minimal_object).collect(),
    })
    .unwrap_or_default()
}

fn native_payload(frame: &FrameMeta) -> String {
    serde_json::to_string(&NativePayload {
        source_id: frame.source_id,
        source_name: &frame.source_name,
        frame_num: frame.frame_num,
        pts_ns: frame.pts_ns,
        ntp_ns: frame.ntp_ns,
        width: frame.width,
        height: frame.height,
        objects: frame.objects.iter().map(NativeObject::from).collect(),
        user: frame.user.iter().map(NativeUser::from).collect(),
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::BBox;

    fn frame_payload(schema: Schema, frame: &FrameMeta) -> String {
        let mut p = payloads(schema, &config::MsgConvConfig::default(), frame);
        assert_eq!(p.len(), 1);
        p.remove(0)
    }

    fn frame() -> FrameMeta {
        FrameMeta {
            source_name: "cam0".into(),
            frame_num: 12,
            ingest_ns: 1_700_000_000_123_456_789,
            objects: vec![
                ObjectMeta {
                    label: "person".into(),
                    track_id: Some(5),
                    bbox: BBox::from_corners(1.5, 2.0, 11.5, 22.0),
                    ..Default::default()
                },
                ObjectMeta {
                    label: "person".into(),
                    bbox: BBox::from_corners(0.0, 0.0, 1.0, 1.0),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn minimal_schema_matches_deepstream_layout() {
        let v: serde_json::Value =
            serde_json::from_str(&frame_payload(Schema::Minimal, &frame())).unwrap();
        assert_eq!(v["version"], "4.0");
        assert_eq!(v["id"], "12");
        assert_eq!(v["sensorId"], "cam0");
        assert_eq!(v["@timestamp"], "2023-11-14T22:13:20.123Z");
        let mut round = frame();
        round.ingest_ns = 1_700_000_000_120_000_000;
        let v: serde_json::Value =
            serde_json::from_str(&frame_payload(Schema::Minimal, &round)).unwrap();
        assert_eq!(
            v["@timestamp"], "2023-11-14T22:13:20.120Z",
            "three digits, always"
        );
        assert_eq!(v["objects"][0], "5|1.5|2|11.5|22|person");
        assert_eq!(v["objects"][1], "18446744073709551615|0|0|1|1|person");
    }

    #[test]
    fn native_schema_keeps_full_precision() {
        let mut f = frame();
        f.objects[0].confidence = 0.123_456_78;
        let v: serde_json::Value =
            serde_json::from_str(&frame_payload(Schema::Native, &f)).unwrap();
        assert_eq!(v["frame_num"], 12);
        assert!((v["objects"][0]["confidence"].as_f64().unwrap() - 0.123_456_78).abs() < 1e-7);
        assert_eq!(v["objects"][0]["track_id"], 5);
        assert_eq!(v["objects"][0]["bbox"]["left"], 1.5);
    }

    #[test]
    fn native_schema_writes_json_user_meta_as_json() {
        let mut f = frame();
        f.user.push(UserMeta {
            kind: "vidmesh.analytics/frame+json".into(),
            data: br#"{"lines":{"gate":{"entries":1}}}"#.to_vec().into(),
        });
        f.objects[0].user.push(UserMeta {
            kind: "vidmesh.analytics/object+json".into(),
            data: br#"{"rois":["door"]}"#.to_vec().into(),
        });
        f.objects[1].user.push(UserMeta {
            kind: "app/binary".into(),
            data: vec![1u8, 2].into(),
        });
        let v: serde_json::Value =
            serde_json::from_str(&frame_payload(Schema::Native, &f)).unwrap();
        assert_eq!(v["user"][0]["kind"], "vidmesh.analytics/frame+json");
        assert_eq!(v["user"][0]["data"]["lines"]["gate"]["entries"], 1);
        assert_eq!(v["objects"][0]["user"][0]["data"]["rois"][0], "door");
        assert_eq!(
            v["objects"][1]["user"][0]["data"],
            serde_json::json!([1, 2])
        );
    }
}
