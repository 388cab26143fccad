//! DeepStream's `full` nvmsgconv schema: one message per object, with the place, sensor and
//! analytics module from the msgconv config ([`super::config`]).
//!
//! `messageid` is deterministic: a UUID (version 8 layout) made of the 128-bit FNV-1a hash of
//! the source name, the frame's ingest time, the frame number and the object's index in the
//! frame, so a frame sent twice (after a broker outage or a stage restart) yields the same ids
//! and back ends can drop the repeat, while the same clip run again gets new ids. `event.id`
//! is the same id (one event per message).

use serde::Serialize;
use vidmesh_protocol::{FrameMeta, ObjectMeta};

use super::config::{Aisle, Entrance, MsgConvConfig, ParkingSpot};
use super::{timestamp, UNTRACKED_OBJECT_ID};

/// The user meta kind whose `lines_crossed` gives entry/exit events.
pub(super) const ANALYTICS_OBJECT_KIND: &str = "vidmesh.analytics/object+json";

#[derive(Serialize)]
struct Message<'a> {
    messageid: String,
    mdsversion: &'static str,
    #[serde(rename = "@timestamp")]
    timestamp: String,
    place: Place<'a>,
    sensor: Sensor<'a>,
    #[serde(rename = "analyticsModule")]
    analytics_module: AnalyticsModule<'a>,
    object: Object,
    event: Event,
    #[serde(rename = "videoPath")]
    video_path: &'static str,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Location {
    lat: f64,
    lon: f64,
    alt: f64,
}

impl From<[f64; 3]> for Location {
    fn from([lat, lon, alt]: [f64; 3]) -> Self {
        Self { lat, lon, alt }
    }
}

#[derive(Serialize, Default, Clone, Copy)]
pub(super) struct Coordinate {
    x: f64,
    y: f64,
    z: f64,
}

impl From<[f64; 3]> for Coordinate {
    fn from([x, y, z]: [f64; 3]) -> Self {
        Self { x, y, z }
    }
}

#[derive(Serialize)]
struct Place<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    location: Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrance: Option<&'a Entrance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aisle: Option<&'a Aisle>,
    #[serde(rename = "parkingSpot", skip_serializing_if = "Option::is_none")]
    parking_spot: Option<&'a ParkingSpot>,
}

#[derive(Serialize)]
struct Sensor<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    description: &'a str,
    location: Location,
    coordinate: Coordinate,
}

#[derive(Serialize)]
struct AnalyticsModule<'a> {
    id: &'a str,
    description: &'a str,
    source: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct Object {
    id: String,
    speed: f64,
    direction: f64,
    orientation: f64,
    #[serde(flatten)]
    class: Option<ClassObject>,
    bbox: Rect,
    location: Location,
    coordinate: Coordinate,
}

/// The class-specific part of `object`, keyed by the lowercase label as DeepStream does.
/// vidmesh has no attribute classifiers wired to these fields, so they are empty (strings) or
/// 0 (numbers); `confidence` is the detector's.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum ClassObject {
    Person {
        age: u32,
        gender: &'static str,
        hair: &'static str,
        cap: &'static str,
        apparel: &'static str,
        confidence: f64,
    },
    Vehicle {
        #[serde(rename = "type")]
        kind: &'static str,
        make: &'static str,
        model: &'static str,
        color: &'static str,
        #[serde(rename = "licenseState")]
        license_state: &'static str,
        license: &'static str,
        confidence: f64,
    },
    Face {
        gender: &'static str,
        age: u32,
        hair: &'static str,
        cap: &'static str,
        glasses: &'static str,
        facialhair: &'static str,
        name: &'static str,
        eyecolor: &'static str,
        confidence: f64,
    },
    Bicycle {
        confidence: f64,
    },
    Roadsign {
        confidence: f64,
    },
}

impl ClassObject {
    fn of(o: &ObjectMeta) -> Option<Self> {
        let confidence = f64::from(o.confidence);
        Some(match o.label.to_lowercase().as_str() {
            "person" => Self::Person {
                age: 0,
                gender: "",
                hair: "",
                cap: "",
                apparel: "",
                confidence,
            },
            "vehicle" => Self::Vehicle {
                kind: "",
                make: "",
                model: "",
                color: "",
                license_state: "",
                license: "",
                confidence,
            },
            "face" => Self::Face {
                gender: "",
                age: 0,
                hair: "",
                cap: "",
                glasses: "",
                facialhair: "",
                name: "",
                eyecolor: "",
                confidence,
            },
            "bicycle" => Self::Bicycle { confidence },
            "roadsign" => Self::Roadsign { confidence },
            _ => return None,
        })
    }
}

/// Box corners in whole pixels (truncated, as DeepStream's integer fields).
#[derive(Serialize)]
struct Rect {
    topleftx: i64,
    toplefty: i64,
    bottomrightx: i64,
    bottomrighty: i64,
}

#[derive(Serialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// 128-bit FNV-1a.
fn fnv1a_128(parts: &[&[u8]]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    for part in parts {
        for b in *part {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
        // A separator so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The deterministic `messageid` of object `index` of `frame`.
pub fn message_id(frame: &FrameMeta, index: usize) -> String {
    let h = fnv1a_128(&[
        frame.source_name.as_bytes(),
        &frame.ingest_ns.to_le_bytes(),
        &frame.frame_num.to_le_bytes(),
        &(index as u64).to_le_bytes(),
    ]);
    // UUID version 8 (custom) with the RFC 4122 variant.
    let h = (h & !(0xf << 76)) | (0x8 << 76);
    let h = (h & !(0x3 << 62)) | (0x2 << 62);
    let s = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    )
}

/// "entry"/"exit" when the object's analytics meta has a line crossing on this frame (the
/// first one listed), else "moving" for tracked objects and "unknown" for the rest.
fn event_type(o: &ObjectMeta) -> &'static str {
    let crossing = o
        .user
        .iter()
        .filter(|u| u.kind == ANALYTICS_OBJECT_KIND)
        .filter_map(|u| serde_json::from_slice::<serde_json::Value>(&u.data).ok())
        .find_map(|v| {
            v["lines_crossed"].as_array().and_then(|crossings| {
                crossings.iter().find_map(|c| match c["crossing"].as_str() {
                    Some("entry") => Some("entry"),
                    Some("exit") => Some("exit"),
                    _ => None,
                })
            })
        });
    match (crossing, o.track_id) {
        (Some(c), _) => c,
        (None, Some(_)) => "moving",
        (None, None) => "unknown",
    }
}

/// One payload per object of `frame`, in object order.
pub fn object_payloads(config: &MsgConvConfig, frame: &FrameMeta) -> Vec<String> {
    let sensor = config.sensors.get(&frame.source_id);
    let place = config.places.get(&frame.source_id);
    let analytics = config.analytics.get(&frame.source_id);
    let ts = timestamp(frame);
    frame
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let id = message_id(frame, i);
            let b = o.bbox;
            let message = Message {
                messageid: id.clone(),
                mdsversion: "1.0",
                timestamp: ts.clone(),
                place: Place {
                    id: place.map_or("", |p| &p.id),
                    name: place.map_or("", |p| &p.name),
                    kind: place.map_or("", |p| &p.kind),
                    location: place.map_or([0.0; 3], |p| p.location).into(),
                    entrance: place.and_then(|p| p.entrance.as_ref()),
                    aisle: place.and_then(|p| p.aisle.as_ref()),
                    parking_spot: place.and_then(|p| p.parking_spot.as_ref()),
                },
                sensor: Sensor {
                    id: sensor_id(config, frame),
                    kind: sensor.map_or("", |s| &s.kind),
                    description: sensor.map_or("", |s| &s.description),
                    location: sensor.map_or([0.0; 3], |s| s.location).into(),
                    coordinate: sensor.map_or([0.0; 3], |s| s.coordinate).into(),
                },
                analytics_module: AnalyticsModule {
                    id: analytics.map_or("", |a| &a.id),
                    description: analytics.map_or("", |a| &a.description),
                    source: analytics.map_or("", |a| &a.source),
                    version: analytics.map_or("", |a| &a.version),
                },
                object: Object {
                    id: o.track_id.unwrap_or(UNTRACKED_OBJECT_ID).to_string(),
                    speed: 0.0,
                    direction: 0.0,
                    orientation: 0.0,
                    class: ClassObject::of(o),
                    bbox: Rect {
                        topleftx: b.left as i64,
                        toplefty: b.top as i64,
                        bottomrightx: b.right() as i64,
                        bottomrighty: b.bottom() as i64,
                    },
                    location: Location::default(),
                    coordinate: Coordinate::default(),
                },
                event: Event {
                    id,
                    kind: event_type(o),
                },
                video_path: "",
            };
            // Serialising plain structs of strings and numbers cannot fail.
            serde_json::to_string(&message).unwrap_or_default()
        })
        .collect()
}

/// The sensor id a source's messages carry (the broker's publish key).
pub fn sensor_id<'a>(config: &'a MsgConvConfig, frame: &'a FrameMeta) -> &'a str {
    config
        .sensors
        .get(&frame.source_id)
        .map(|s| s.id.as_str())
        .filter(|id| !id.is_empty())
        .unwrap_or(&frame.source_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use vidmesh_protocol::{BBox, UserMeta};

    fn frame() -> FrameMeta {
        FrameMeta {
            source_id: 0,
            source_name: "street".into(),
            frame_num: 7,
            ingest_ns: 1_700_000_000_123_456_789,
            objects: vec![
                ObjectMeta {
                    label: "person".into(),
                    confidence: 0.75,
                    track_id: Some(42),
                    bbox: BBox::from_corners(10.7, 20.2, 110.9, 220.5),
                    ..Default::default()
                },
                ObjectMeta {
                    label: "Vehicle".into(),
                    confidence: 0.5,
                    bbox: BBox::from_corners(0.0, 0.0, 5.0, 5.0),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn config() -> MsgConvConfig {
        MsgConvConfig::parse(
            Path::new("m.toml"),
            r#"
            [[sensor]]
            index = 0
            id = "CAM-0"
            type = "Camera"
            description = "north"
            location = [45.5, -75.25, 48.0]
            coordinate = [1, 2, 3]
            [[place]]
            index = 0
            id = "P"
            name = "main"
            type = "street"
            location = [1, 2, 3]
            [place.entrance]
            name = "gate"
            lane = "1"
            level = "P2"
            coordinate = [4, 5, 6]
            [[analytics]]
            index = 0
            id = "A1"
            description = "people"
            source = "vidmesh"
            version = "1.0"
            "#,
        )
        .unwrap()
    }

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn tracked_object_has_every_full_schema_field() {
        let payloads = object_payloads(&config(), &frame());
        assert_eq!(payloads.len(), 2);
        let v = parse(&payloads[0]);
        assert_eq!(v["mdsversion"], "1.0");
        assert_eq!(v["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["videoPath"], "");
        assert_eq!(v["messageid"], v["event"]["id"]);
        assert_eq!(v["place"]["id"], "P");
        assert_eq!(v["place"]["type"], "street");
        assert_eq!(v["place"]["location"]["alt"], 3.0);
        assert_eq!(v["place"]["entrance"]["level"], "P2");
        assert_eq!(v["place"]["entrance"]["coordinate"]["z"], 6.0);
        assert!(v["place"].get("aisle").is_none());
        assert_eq!(v["sensor"]["id"], "CAM-0");
        assert_eq!(v["sensor"]["type"], "Camera");
        assert_eq!(v["sensor"]["description"], "north");
        assert_eq!(v["sensor"]["location"]["lat"], 45.5);
        assert_eq!(v["sensor"]["location"]["lon"], -75.25);
        assert_eq!(v["sensor"]["coordinate"]["y"], 2.0);
        assert_eq!(v["analyticsModule"]["id"], "A1");
        assert_eq!(v["analyticsModule"]["source"], "vidmesh");
        assert_eq!(v["analyticsModule"]["version"], "1.0");
        let o = &v["object"];
        assert_eq!(o["id"], "42");
        assert_eq!(o["speed"], 0.0);
        assert_eq!(o["direction"], 0.0);
        assert_eq!(o["orientation"], 0.0);
        assert_eq!(o["person"]["confidence"], 0.75);
        assert_eq!(o["person"]["age"], 0);
        assert_eq!(o["person"]["gender"], "");
        assert_eq!(o["person"]["apparel"], "");
        assert_eq!(
            o["bbox"],
            serde_json::json!({"topleftx": 10, "toplefty": 20, "bottomrightx": 110, "bottomrighty": 220})
        );
        assert_eq!(o["location"]["lat"], 0.0);
        assert_eq!(o["coordinate"]["x"], 0.0);
        assert_eq!(v["event"]["type"], "moving");
    }

    #[test]
    fn untracked_object_uses_deepstream_untracked_id() {
        let v = parse(&object_payloads(&config(), &frame())[1]);
        assert_eq!(v["object"]["id"], "18446744073709551615");
        assert_eq!(v["object"]["vehicle"]["confidence"], 0.5);
        assert_eq!(v["object"]["vehicle"]["licenseState"], "");
        assert!(v["object"].get("person").is_none());
        assert_eq!(v["event"]["type"], "unknown");
    }

    #[test]
    fn line_crossing_meta_makes_entry_and_exit_events() {
        let mut f = frame();
        f.objects[0].user.push(UserMeta {
            kind: ANALYTICS_OBJECT_KIND.into(),
            data: br#"{"reference_point":[1,2],"rois":[],"lines_crossed":[{"line":"gate","crossing":"exit"}],"direction":null}"#
                .to_vec()
                .into(),
        });
        f.objects[1].user.push(UserMeta {
            kind: ANALYTICS_OBJECT_KIND.into(),
            data: br#"{"lines_crossed":[{"line":"gate","crossing":"entry"}]}"#
                .to_vec()
                .into(),
        });
        let p = object_payloads(&config(), &f);
        assert_eq!(parse(&p[0])["event"]["type"], "exit");
        assert_eq!(parse(&p[1])["event"]["type"], "entry");
        // No crossing on this frame: back to moving.
        f.objects[0].user[0].data = br#"{"lines_crossed":[]}"#.to_vec().into();
        assert_eq!(
            parse(&object_payloads(&config(), &f)[0])["event"]["type"],
            "moving"
        );
    }

    #[test]
    fn without_config_sensor_id_is_the_source_name() {
        let v = parse(&object_payloads(&MsgConvConfig::default(), &frame())[0]);
        assert_eq!(v["sensor"]["id"], "street");
        assert_eq!(v["sensor"]["type"], "");
        assert_eq!(v["place"]["id"], "");
        assert_eq!(v["analyticsModule"]["id"], "");
        assert_eq!(sensor_id(&MsgConvConfig::default(), &frame()), "street");
        assert_eq!(sensor_id(&config(), &frame()), "CAM-0");
    }

    #[test]
    fn other_sources_get_empty_sections() {
        let mut f = frame();
        f.source_id = 1;
        f.source_name = "back".into();
        let v = parse(&object_payloads(&config(), &f)[0]);
        assert_eq!(v["sensor"]["id"], "back");
        assert_eq!(v["place"]["name"], "");
    }

    #[test]
    fn message_ids_are_uuid_shaped_deterministic_and_distinct() {
        let f = frame();
        let a = message_id(&f, 0);
        assert_eq!(a, message_id(&f, 0));
        assert_ne!(a, message_id(&f, 1));
        let mut g = f.clone();
        g.frame_num += 1;
        assert_ne!(a, message_id(&g, 0));
        g = f.clone();
        g.source_name = "other".into();
        assert_ne!(a, message_id(&g, 0));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
    }
}
