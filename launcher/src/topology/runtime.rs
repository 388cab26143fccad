//! How stages are deployed: the per-stage runtime keys (`replicas`, `max_restarts`,
//! `payload`), and the `[hosts]` / `[placement]` sections. A stage kind never sees these keys;
//! they are the launcher's business.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::SOURCES;

/// How pixels travel on the links into a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// Shared-memory slots (same host); the default when producer and consumer share a host.
    Shm,
    /// Inside the message (across hosts); the default when they do not.
    Raw,
    /// JPEG-encoded inside the message at this quality (across hosts, lossy, ~10× smaller).
    Jpeg { quality: u8 },
}

/// The runtime keys of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRuntime {
    /// Processes running this stage. Stateless stages share the load by credits; stateful
    /// ones (track, analytics, sinks, brokers) take whole sources (`source_id % replicas`).
    pub replicas: u32,
    /// Restarts the launcher allows each replica before giving up on it.
    pub max_restarts: u32,
    /// Forced payload path on the links into this stage; `None` = by placement.
    pub payload: Option<Payload>,
    /// When the links into this stage are full, drop the oldest unsent delivery (counted)
    /// instead of making the producer wait.
    pub drop_oldest: bool,
}

impl Default for StageRuntime {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_restarts: 5,
            payload: None,
            drop_oldest: false,
        }
    }
}

impl StageRuntime {
    /// Takes the runtime keys out of a stage table.
    pub fn take_from(table: &mut toml::Table) -> Result<Self, String> {
        let mut rt = StageRuntime::default();
        if let Some(v) = table.remove("replicas") {
            rt.replicas = v
                .as_integer()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("`replicas` must be an integer in 1..=64, got {v}"))?
                as u32;
        }
        if let Some(v) = table.remove("max_restarts") {
            rt.max_restarts = v
                .as_integer()
                .filter(|n| (0..=1000).contains(n))
                .ok_or_else(|| format!("`max_restarts` must be an integer in 0..=1000, got {v}"))?
                as u32;
        }
        let quality = match table.remove("jpeg_quality") {
            Some(v) => v
                .as_integer()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| format!("`jpeg_quality` must be an integer in 1..=100, got {v}"))?
                as u8,
            None => 85,
        };
        if let Some(v) = table.remove("payload") {
            rt.payload = Some(match v.as_str() {
                Some("shm") => Payload::Shm,
                Some("raw") => Payload::Raw,
                Some("jpeg") => Payload::Jpeg { quality },
                _ => {
                    return Err(format!(
                        "`payload` must be \"shm\", \"raw\" or \"jpeg\", got {v}"
                    ))
                }
            });
        }
        if let Some(v) = table.remove("drop") {
            rt.drop_oldest = match v.as_str() {
                Some("oldest") => true,
                Some("never") => false,
                _ => return Err(format!("`drop` must be \"oldest\" or \"never\", got {v}")),
            };
        }
        Ok(rt)
    }
}

/// `[hosts.NAME]`: a machine stages can be placed on.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The zenoh endpoint of the router on that host, e.g. "tcp/10.0.0.7:7447". `vidmesh
    /// launch` needs it to reach the host; `vidmesh compose` runs a router per host itself.
    pub zenoh: Option<String>,
}

/// `[placement.STAGE]` (or `[placement.sources]` for every source).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlacementEntry {
    /// A name from `[hosts]`; absent = the launching host.
    pub host: Option<String>,
    /// GPU index on that host (read by GPU stages).
    pub gpu: Option<u32>,
    /// Port of this stage's Prometheus endpoint (replica K uses port + K); absent = any free port.
    pub metrics_port: Option<u16>,
    /// Deployment files only: the CPUs each replica may use, e.g. 1.5.
    pub cpus: Option<f64>,
    /// Deployment files only: the memory each replica may use, e.g. "2g" or "512m".
    pub memory: Option<String>,
}

/// A memory size as Docker and Kubernetes both read it: digits and one of b/k/m/g.
fn valid_memory(m: &str) -> bool {
    let digits = m.trim_end_matches(['b', 'k', 'm', 'g']);
    !digits.is_empty()
        && digits.len() + 1 == m.len()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits != "0"
}

/// Where everything runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployment {
    pub hosts: BTreeMap<String, HostEntry>,
    pub placement: BTreeMap<String, PlacementEntry>,
}

impl Deployment {
    /// The host a stage runs on (`None` = the launching host).
    pub fn host_of(&self, stage: &str) -> Option<&str> {
        self.placement.get(stage)?.host.as_deref()
    }

    /// Checks placement against the stages and hosts; `replicas_of` gives each stage's count.
    pub fn check(&self, replicas_of: &dyn Fn(&str) -> Option<u32>) -> Result<(), String> {
        let mut ports: BTreeMap<u16, (String, u32)> = BTreeMap::new();
        for (stage, p) in &self.placement {
            let Some(replicas) = replicas_of(stage).or((stage == SOURCES).then_some(1)) else {
                return Err(format!(
                    "[placement.{stage}]: there is no stage `{stage}` (`sources` places every source)"
                ));
            };
            if let Some(cpus) = p.cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(format!(
                    "[placement.{stage}]: `cpus` must be above 0, got {cpus}"
                ));
            }
            if let Some(memory) = p.memory.as_deref().filter(|m| !valid_memory(m)) {
                return Err(format!(
                    "[placement.{stage}]: `memory` must be a number with b, k, m or g, like \"2g\", got {memory:?}"
                ));
            }
            if let Some(host) = &p.host {
                if !self.hosts.contains_key(host) {
                    let declared: Vec<&str> = self.hosts.keys().map(|s| s.as_str()).collect();
                    return Err(format!(
                        "[placement.{stage}] names host `{host}`, which [hosts] does not declare (declared: {})",
                        if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                    ));
                }
            }
            if let Some(base) = p.metrics_port {
                for k in 0..replicas {
                    let port = base as u32 + k;
                    let port = u16::try_from(port).map_err(|_| {
                        format!(
                            "[placement.{stage}]: metrics_port {base} + replica {k} exceeds 65535"
                        )
                    })?;
                    let same_host = |other: &str| self.host_of(other) == p.host.as_deref();
                    if let Some((other, other_k)) = ports.get(&port).filter(|(o, _)| same_host(o)) {
                        return Err(format!(
                            "stages `{other}` (replica {other_k}) and `{stage}` (replica {k}) both bind metrics port {port} on the same host"
                        ));
                    }
                    ports.insert(port, (stage.clone(), k));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_keys_are_taken_out_and_checked() {
        let mut t: toml::Table =
            toml::from_str("kind = \"infer\"\nreplicas = 2\npayload = \"raw\"").unwrap();
        let rt = StageRuntime::take_from(&mut t).unwrap();
        assert_eq!(
            (rt.replicas, rt.payload, rt.max_restarts),
            (2, Some(Payload::Raw), 5)
        );
        assert!(!t.contains_key("replicas"));
        let mut bad: toml::Table = toml::from_str("replicas = 0").unwrap();
        assert!(StageRuntime::take_from(&mut bad)
            .unwrap_err()
            .contains("1..=64"));
        let mut bad: toml::Table = toml::from_str("payload = \"png\"").unwrap();
        assert!(StageRuntime::take_from(&mut bad)
            .unwrap_err()
            .contains("\"raw\" or \"jpeg\""));
        let mut t: toml::Table =
            toml::from_str("payload = \"jpeg\"\njpeg_quality = 70\ndrop = \"oldest\"").unwrap();
        let rt = StageRuntime::take_from(&mut t).unwrap();
        assert_eq!(
            (rt.payload, rt.drop_oldest),
            (Some(Payload::Jpeg { quality: 70 }), true)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_hosts_and_shared_ports_are_refused_naming_both_sides() {
        let mut d = Deployment::default();
        d.hosts.insert(
            "gpu-a".into(),
            HostEntry {
                zenoh: Some("tcp/10.0.0.2:7447".into()),
            },
        );
        d.placement.insert(
            "detect".into(),
            PlacementEntry {
                host: Some("gpu-b".into()),
                ..Default::default()
            },
        );
        let e = d.check(&|_| Some(1)).unwrap_err();
        assert!(e.contains("gpu-b") && e.contains("gpu-a"), "{e}");

        let mut d = Deployment::default();
        d.placement.insert(
            "detect".into(),
            PlacementEntry {
                metrics_port: Some(9100),
                ..Default::default()
            },
        );
        d.placement.insert(
            "track".into(),
            PlacementEntry {
                metrics_port: Some(9101),
                ..Default::default()
            },
        );
        let e = d
            .check(&|s| Some(if s == "detect" { 2 } else { 1 }))
            .unwrap_err();
        assert!(
            e.contains("`detect` (replica 1)")
                && e.contains("`track` (replica 0)")
                && e.contains("9101"),
            "{e}"
        );
    }
}
