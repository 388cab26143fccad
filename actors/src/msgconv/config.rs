//! The msgconv config file for the `full` schema: what DeepStream's msgconv config holds in
//! `[sensorN]`, `[placeN]` and `[analyticsN]` groups, as TOML arrays of tables keyed by the
//! source index (`index`, matched against a frame's `source_id`):
//!
//! ```toml
//! [[sensor]]
//! index = 0
//! id = "CAM-0"
//! type = "Camera"
//! description = "Main street, facing north"
//! location = [50.88, 4.70, 30.0]   # lat, lon, alt
//! coordinate = [12.0, 4.5, 3.0]      # x, y, z
//!
//! [[place]]
//! index = 0
//! id = "1"
//! name = "main-street"
//! type = "street"
//! location = [50.88, 4.70, 30.0]
//! [place.entrance]                    # or [place.aisle] / [place.parkingSpot]
//! name = "north"
//! lane = "1"
//! level = "0"
//! coordinate = [1.0, 2.0, 3.0]
//!
//! [[analytics]]
//! index = 0
//! id = "XYZ"
//! description = "Person detection"
//! source = "vidmesh"
//! version = "1.0"
//! ```
//!
//! Every key but `index` is optional (empty strings and zeros when left out).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stage::StageError;

/// A parsed msgconv config, each section by source index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsgConvConfig {
    pub sensors: BTreeMap<u32, SensorConfig>,
    pub places: BTreeMap<u32, PlaceConfig>,
    pub analytics: BTreeMap<u32, AnalyticsConfig>,
}

/// `[[sensor]]`: the camera a source is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub index: u32,
    #[serde(default)]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    /// `[lat, lon, alt]`.
    #[serde(default)]
    pub location: [f64; 3],
    /// `[x, y, z]`.
    #[serde(default)]
    pub coordinate: [f64; 3],
}

/// `[[place]]`: where a source looks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceConfig {
    pub index: u32,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// `[lat, lon, alt]`.
    #[serde(default)]
    pub location: [f64; 3],
    #[serde(default)]
    pub entrance: Option<Entrance>,
    #[serde(default)]
    pub aisle: Option<Aisle>,
    #[serde(default, rename = "parkingSpot")]
    pub parking_spot: Option<ParkingSpot>,
}

/// `[place.entrance]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entrance {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub lane: String,
    #[serde(default)]
    pub level: String,
    #[serde(default, with = "xyz")]
    pub coordinate: [f64; 3],
}

/// `[place.aisle]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Aisle {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub level: String,
    #[serde(default, with = "xyz")]
    pub coordinate: [f64; 3],
}

/// `[place.parkingSpot]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParkingSpot {
    #[serde(default)]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub level: String,
    #[serde(default, with = "xyz")]
    pub coordinate: [f64; 3],
}

/// `[[analytics]]`: the analytics module that produced a source's events.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    pub index: u32,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub version: String,
}

/// Coordinates read as `[x, y, z]` and written as `{"x":..,"y":..,"z":..}`.
mod xyz {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 3], D::Error> {
        <[f64; 3]>::deserialize(d)
    }

    pub fn serialize<S: Serializer>(c: &[f64; 3], s: S) -> Result<S::Ok, S::Error> {
        super::super::full::Coordinate::from(*c).serialize(s)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    sensor: Vec<SensorConfig>,
    #[serde(default)]
    place: Vec<PlaceConfig>,
    #[serde(default)]
    analytics: Vec<AnalyticsConfig>,
}

fn by_index<T>(
    path: &Path,
    group: &str,
    items: Vec<T>,
    index: impl Fn(&T) -> u32,
) -> Result<BTreeMap<u32, T>, StageError> {
    let mut map = BTreeMap::new();
    for item in items {
        let i = index(&item);
        if map.insert(i, item).is_some() {
            return Err(StageError::Settings(format!(
                "{}: `[[{group}]]` index {i} appears more than once",
                path.display()
            )));
        }
    }
    Ok(map)
}

impl MsgConvConfig {
    /// Reads and checks a config file; errors name the file and the key at fault.
    pub fn load(path: &Path) -> Result<Self, StageError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StageError::Settings(format!(
                "cannot read msgconv config {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, StageError> {
        let one_line = |e: String| e.split_whitespace().collect::<Vec<_>>().join(" ");
        let err = |e: String| StageError::Settings(format!("{}: {}", path.display(), one_line(e)));
        let table: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        // Deserialising from a value (not text) makes the error end with "in `key`".
        let file = File::deserialize(toml::Value::Table(table)).map_err(|e| err(e.to_string()))?;
        for place in &file.place {
            let subs = [
                place.entrance.is_some(),
                place.aisle.is_some(),
                place.parking_spot.is_some(),
            ];
            if subs.iter().filter(|s| **s).count() > 1 {
                return Err(err(format!(
                    "`[[place]]` index {}: give at most one of `entrance`, `aisle`, `parkingSpot`",
                    place.index
                )));
            }
        }
        Ok(Self {
            sensors: by_index(path, "sensor", file.sensor, |s| s.index)?,
            places: by_index(path, "place", file.place, |p| p.index)?,
            analytics: by_index(path, "analytics", file.analytics, |a| a.index)?,
        })
    }

    /// Checks that every index names a source of the topology.
    pub fn check_sources(&self, path: &Path, sources: usize) -> Result<(), StageError> {
        let groups = [
            ("sensor", self.sensors.keys().collect::<Vec<_>>()),
            ("place", self.places.keys().collect()),
            ("analytics", self.analytics.keys().collect()),
        ];
        for (group, indices) in groups {
            if let Some(i) = indices.into_iter().find(|i| **i as usize >= sources) {
                return Err(StageError::Settings(format!(
                    "{}: `[[{group}]]` index {i} is not a source index (the topology has {sources} source(s), indices from 0)",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MsgConvConfig, String> {
        MsgConvConfig::parse(Path::new("msgconv.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_all_groups() {
        let c = parse(
            r#"
            [[sensor]]
            index = 0
            id = "CAM-0"
            type = "Camera"
            description = "north"
            location = [45.0, -75.5, 48]
            coordinate = [1, 2, 3]

            [[place]]
            index = 0
            id = "P1"
            name = "street"
            type = "road"
            [place.entrance]
            name = "gate"
            lane = "1"
            level = "P2"
            coordinate = [1, 2, 3]

            [[analytics]]
            index = 0
            id = "A"
            source = "vidmesh"
            version = "1.0"
            "#,
        )
        .unwrap();
        let s = &c.sensors[&0];
        assert_eq!((s.id.as_str(), s.kind.as_str()), ("CAM-0", "Camera"));
        assert_eq!(s.location, [45.0, -75.5, 48.0]);
        assert_eq!(s.coordinate, [1.0, 2.0, 3.0]);
        assert_eq!(c.places[&0].entrance.as_ref().unwrap().level, "P2");
        assert_eq!(c.analytics[&0].version, "1.0");
    }

    #[test]
    fn empty_file_is_empty_config() {
        assert_eq!(parse("").unwrap(), MsgConvConfig::default());
    }

    #[test]
    fn duplicate_index_names_file_and_group() {
        let e = parse("[[sensor]]\nindex = 1\n[[sensor]]\nindex = 1\n").unwrap_err();
        assert!(e.contains("msgconv.toml"), "{e}");
        assert!(
            e.contains("`[[sensor]]` index 1 appears more than once"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = parse("[[sensor]]\nindex = 0\nlocation = \"north\"\n").unwrap_err();
        assert!(e.starts_with("msgconv.toml: "), "{e}");
        assert!(e.contains("location"), "{e}");
        let e = parse("[[sensor]]\nindex = 0\ncoordinate = [1, 2]\n").unwrap_err();
        assert!(e.contains("coordinate"), "{e}");
        let e = parse("[[analytics]]\nindex = \"0\"\n").unwrap_err();
        assert!(e.contains("index"), "{e}");
        let e = parse("[[sensor]]\nindex = 0\nname = \"x\"\n").unwrap_err();
        assert!(e.contains("name"), "{e}");
        let e = parse("[[sensor]]\nid = \"x\"\n").unwrap_err();
        assert!(e.contains("index"), "{e}");
    }

    #[test]
    fn at_most_one_place_sub_object() {
        let e = parse("[[place]]\nindex = 0\n[place.entrance]\n[place.aisle]\n").unwrap_err();
        assert!(e.contains("at most one"), "{e}");
    }

    #[test]
    fn missing_file_names_it() {
        let e = MsgConvConfig::load(Path::new("/nonexistent/msgconv.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/msgconv.toml"), "{e}");
    }

    #[test]
    fn indices_must_be_sources() {
        let c = parse("[[place]]\nindex = 2\n").unwrap();
        assert!(c.check_sources(Path::new("m.toml"), 3).is_ok());
        let e = c
            .check_sources(Path::new("m.toml"), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`[[place]]` index 2"), "{e}");
    }
}
