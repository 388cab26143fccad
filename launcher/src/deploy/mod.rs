//! `vidmesh compose`: a topology as container deployment files.
//!
//! A [`Plan`] says what runs where: one container per source and per stage replica, a zenoh
//! router per host that the host's containers connect to (routers connect to each other over
//! the `wan` network), and a container for each broker the topology names by a bare host name
//! (`kafka://kafka:9092/t` runs tansu as `kafka`). [`compose`] writes it as a docker-compose
//! file or a Docker Swarm stack, [`kubernetes`] as Kubernetes manifests.
//!
//! A host of the topology becomes a Docker network (or, on Kubernetes, a node label): the
//! containers placed on it share that network, a volume for restart state and spools, and a
//! tmpfs volume for shared-memory frames, so frames between stages of one host still travel
//! through shared memory, and frames between hosts travel through the routers.

pub mod compose;
pub mod kubernetes;
pub mod yaml;

use std::path::{Component, Path, PathBuf};

use crate::node::{is_elastic, source_instance};
use crate::topology::{Topology, SOURCES};

/// The port every router listens on, inside its container.
pub const ROUTER_PORT: u16 = 7447;
/// The port every instance serves `/metrics` and `/healthz` on, inside its container.
pub const METRICS_PORT: u16 = 9100;
/// Where the project directory is mounted and the instances run.
pub const WORKDIR: &str = "/vidmesh";
/// Restart state, inside the host's state volume.
pub const STATE_DIR: &str = "/vidmesh/.vidmesh/launch";
/// Shared-memory frames, the host's tmpfs volume.
pub const SHM_DIR: &str = "/vidmesh-shm";
/// The image every container runs, overridable when the file is used.
pub const DEFAULT_IMAGE: &str = "vidmesh:latest";
/// The host of stages the topology does not place.
pub const LOCAL_HOST: &str = "local";
/// The network the routers of all hosts (and nothing else) share.
pub const WAN: &str = "wan";

/// One source or stage replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The service (container) name.
    pub service: String,
    /// A stage name or `source.<id>`.
    pub instance: String,
    /// The replica number; `None` for a load-balanced stage, whose containers (`count` of
    /// them, scalable while it runs) each take a number of their own (`--replica auto`).
    pub replica: Option<u32>,
    pub count: u32,
    pub kind: String,
    pub host: String,
    pub gpu: Option<u32>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub max_restarts: u32,
    /// Broker services this instance talks to (their networks are joined).
    pub brokers: Vec<String>,
    /// `${env:NAME}` variables its settings read.
    pub env: Vec<String>,
}

/// Broker software the images carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Kafka,
    Mqtt,
    Redis,
}

impl BrokerKind {
    fn of_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "kafka" => Some(BrokerKind::Kafka),
            "mqtt" => Some(BrokerKind::Mqtt),
            "redis" => Some(BrokerKind::Redis),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            BrokerKind::Kafka => 9092,
            BrokerKind::Mqtt => 1883,
            BrokerKind::Redis => 6379,
        }
    }
}

/// A broker the deployment runs, on a network (a host) of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    pub service: String,
    pub kind: BrokerKind,
    pub port: u16,
    /// Kafka topics the stages write to, created when the broker starts (tansu does not
    /// create topics on first use).
    pub topics: Vec<String>,
}

impl Broker {
    /// The broker's container: entrypoint, arguments, and the directory its data volume holds.
    pub fn container(&self) -> (Vec<String>, Vec<String>, &'static str) {
        let port = self.port;
        let bash = vec!["bash".to_string(), "-c".to_string()];
        match self.kind {
            BrokerKind::Kafka => {
                let create: String = self
                    .topics
                    .iter()
                    .map(|t| {
                        format!(
                            "until tansu topic create {t} --broker tcp://127.0.0.1:{port} \
                             --partitions 1 >/dev/null 2>&1; do kill -0 $broker || exit 1; \
                             sleep 0.5; done; "
                        )
                    })
                    .collect();
                let script = format!(
                    "cd /var/lib/tansu && rm -f /tmp/ready; tansu broker --listener-url \
                     tcp://0.0.0.0:{port} --advertised-listener-url tcp://{}:{port} \
                     --storage-engine sqlite://tansu.db & broker=$!; {create}\
                     touch /tmp/ready; wait $broker",
                    self.service
                );
                (bash, vec![script], "/var/lib/tansu")
            }
            // Mosquitto 2 only listens on loopback without a config; queue generously for
            // subscribers that fall behind (it drops QoS 1 messages past the limit).
            BrokerKind::Mqtt => (
                bash,
                vec![format!(
                    "printf 'listener {port}\\nallow_anonymous true\\npersistence true\\n\
                     persistence_location /var/lib/mosquitto/\\nmax_queued_messages 100000\\n' \
                     > /tmp/mosquitto.conf && touch /tmp/ready && exec mosquitto -c /tmp/mosquitto.conf"
                )],
                "/var/lib/mosquitto",
            ),
            BrokerKind::Redis => (
                bash,
                vec![format!(
                    "touch /tmp/ready && exec redis-server --port {port} --protected-mode no \
                     --appendonly yes --dir /data"
                )],
                "/data",
            ),
        }
    }

    /// A shell test that passes once the broker takes clients (and has its topics).
    pub fn ready_check(&self) -> String {
        format!(
            "test -f /tmp/ready && exec 3<>/dev/tcp/127.0.0.1/{}",
            self.port
        )
    }
}

/// Everything a deployment file needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub pipeline: String,
    /// The topology, relative to the project directory (the working directory).
    pub topology: String,
    /// Hosts in order of first use.
    pub hosts: Vec<String>,
    pub instances: Vec<Instance>,
    pub brokers: Vec<Broker>,
}

impl Plan {
    /// Plans `topology`, whose file is at `topology_path` relative to the project directory.
    pub fn new(topology: &Topology, topology_path: &str) -> Result<Self, String> {
        // The file as written: `${env:NAME}` references are resolved in `topology`.
        let raw: toml::Table = std::fs::read_to_string(&topology.path)
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default();
        let raw_text =
            |value: Option<&toml::Value>| value.map(|v| v.to_string()).unwrap_or_default();
        let deployment = &topology.deployment;
        let mut brokers: Vec<Broker> = Vec::new();
        let mut instances = Vec::new();
        let placed = |name: &str| deployment.placement.get(name).cloned().unwrap_or_default();

        let source_place = placed(SOURCES);
        for (index, s) in topology.sources.iter().enumerate() {
            let id = &s.settings.id;
            let written = raw_text(raw.get("source").and_then(|v| v.get(index)));
            instances.push(Instance {
                service: service_name(&format!("source-{id}"))?,
                instance: source_instance(id),
                replica: Some(0),
                count: 1,
                kind: "source".into(),
                host: source_place
                    .host
                    .clone()
                    .unwrap_or_else(|| LOCAL_HOST.into()),
                gpu: source_place.gpu,
                cpus: source_place.cpus,
                memory: source_place.memory.clone(),
                max_restarts: 5,
                brokers: Vec::new(),
                env: env_names(&written),
            });
        }
        for st in &topology.stages {
            let place = placed(&st.name);
            let written = raw_text(raw.get("stage").and_then(|v| v.get(&st.name)));
            let mut uses = Vec::new();
            if let Some(uri) = st.table.get("uri").and_then(|v| v.as_str()) {
                if let Some(broker) = broker_of(uri) {
                    let known = brokers
                        .iter()
                        .find(|b| b.service == broker.service)
                        .map(|b| b.kind);
                    if let Some(b) = brokers.iter_mut().find(|b| b.service == broker.service) {
                        for t in &broker.topics {
                            if !b.topics.contains(t) {
                                b.topics.push(t.clone());
                            }
                        }
                    }
                    match known {
                        Some(kind) if kind != broker.kind => {
                            return Err(format!(
                                "stage `{}` names host `{}` for a {:?} broker, which another \
                                 stage uses for a {:?} broker",
                                st.name, broker.service, broker.kind, kind
                            ));
                        }
                        Some(_) => {}
                        None => brokers.push(broker.clone()),
                    }
                    uses.push(broker.service);
                }
            }
            // Load-balanced stages are one scalable service; sharded ones a service per shard.
            let elastic = is_elastic(st.kind);
            let services: Vec<(String, Option<u32>, u32)> = if elastic {
                vec![(st.name.clone(), None, st.runtime.replicas)]
            } else if st.runtime.replicas == 1 {
                vec![(st.name.clone(), Some(0), 1)]
            } else {
                (0..st.runtime.replicas)
                    .map(|r| (format!("{}-{r}", st.name), Some(r), 1))
                    .collect()
            };
            for (service, replica, count) in services {
                instances.push(Instance {
                    service: service_name(&service)?,
                    instance: st.name.clone(),
                    replica,
                    count,
                    kind: st.kind.name.to_string(),
                    host: place.host.clone().unwrap_or_else(|| LOCAL_HOST.into()),
                    gpu: place.gpu,
                    cpus: place.cpus,
                    memory: place.memory.clone(),
                    max_restarts: st.runtime.max_restarts,
                    brokers: uses.clone(),
                    env: env_names(&written),
                });
            }
        }
        let mut hosts: Vec<String> = Vec::new();
        for i in &instances {
            if !hosts.contains(&i.host) {
                hosts.push(i.host.clone());
            }
        }
        // Services (routers, instances, brokers) share one namespace, networks (hosts, `wan`,
        // one per broker) another.
        let services = hosts
            .iter()
            .map(|h| router_service(h))
            .chain(instances.iter().map(|i| i.service.clone()))
            .chain(brokers.iter().map(|b| b.service.clone()));
        let networks = hosts
            .iter()
            .cloned()
            .chain([WAN.to_string()])
            .chain(brokers.iter().map(|b| b.service.clone()));
        for (what, names) in [
            ("container", services.collect::<Vec<_>>()),
            ("network", networks.collect()),
        ] {
            for (i, name) in names.iter().enumerate() {
                if names[..i].contains(name) {
                    return Err(format!(
                        "`{name}` would name two {what}s of the deployment (a stage, source, \
                         host, broker or router): rename one"
                    ));
                }
            }
        }
        Ok(Plan {
            pipeline: topology.name.clone(),
            topology: topology_path.to_string(),
            hosts,
            instances,
            brokers,
        })
    }

    /// The `vidmesh` arguments that run `instance`.
    pub fn stage_args(&self, instance: &Instance) -> Vec<String> {
        let replica = instance.replica.map_or("auto".into(), |r| r.to_string());
        self.stage_args_as(instance, replica)
    }

    /// The same with `replica` written as given (e.g. a variable the orchestrator expands).
    pub fn stage_args_as(&self, instance: &Instance, replica: String) -> Vec<String> {
        vec![
            "stage".into(),
            "--topology".into(),
            self.topology.clone(),
            "--stage".into(),
            instance.instance.clone(),
            "--replica".into(),
            replica,
            "--connect".into(),
            format!("tcp/{}:{ROUTER_PORT}", router_service(&instance.host)),
            "--mode".into(),
            "client".into(),
            "--state-dir".into(),
            STATE_DIR.into(),
            "--shm-dir".into(),
            SHM_DIR.into(),
            "--metrics-addr".into(),
            format!("0.0.0.0:{METRICS_PORT}"),
            "-v".into(),
        ]
    }

    /// The `vidmesh` arguments that run the router of `host`: it connects to the routers of
    /// the hosts after it, so every pair is linked once (zenoh keeps retrying a link that
    /// drops, from either side).
    pub fn router_args(&self, host: &str) -> Vec<String> {
        let mut args = vec![
            "router".into(),
            "--pipeline".into(),
            self.pipeline.clone(),
            "--listen".into(),
            format!("tcp/0.0.0.0:{ROUTER_PORT}"),
        ];
        for other in self.hosts.iter().filter(|h| h.as_str() != host) {
            args.push("--connect".into());
            args.push(format!("tcp/{}:{ROUTER_PORT}", router_service(other)));
        }
        args.push("-v".into());
        args
    }
}

/// The router service of `host`.
pub fn router_service(host: &str) -> String {
    format!("zenoh-{host}")
}

/// Compose and Kubernetes both want lowercase DNS-like names.
fn service_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase().replace('_', "-");
    let ok = !lower.is_empty()
        && lower.len() <= 63
        && lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !lower.starts_with('-')
        && !lower.ends_with('-');
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "`{name}` cannot name a container: use up to 63 letters, digits, `-` and `_`"
        ))
    }
}

/// A broker this deployment runs: a `kafka://`, `mqtt://` or `redis://` URI whose host is a
/// bare name (no dots, not an address), like a compose service.
fn broker_of(uri: &str) -> Option<Broker> {
    let (scheme, rest) = uri.split_once("://")?;
    let kind = BrokerKind::of_scheme(scheme)?;
    let authority = rest.split(['/', '?', ',']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (host_port, kind.default_port()),
    };
    let bare = !host.is_empty()
        && host != "localhost"
        && !host.contains('.')
        && !host.starts_with(|c: char| c.is_ascii_digit())
        && !host.contains('$');
    let topics = match kind {
        BrokerKind::Kafka => rest
            .split_once('/')
            .map(|(_, t)| t.split('?').next().unwrap_or_default())
            .filter(|t| !t.is_empty() && !t.contains(['{', '$', '/']))
            .map(|t| vec![t.to_string()])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    bare.then(|| Broker {
        service: host.to_string(),
        kind,
        port,
        topics,
    })
}

/// `${env:NAME}` variables in `text`.
fn env_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${env:") {
        rest = &rest[at + 6..];
        if let Some(end) = rest.find('}') {
            let name = &rest[..end];
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            rest = &rest[end..];
        }
    }
    names
}

/// `to` relative to `from` (both absolute), for bind mounts relative to the compose file.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c.as_os_str());
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_named_by_bare_host_names_are_run_and_addresses_are_not() {
        let kafka = broker_of("kafka://kafka:9092/people").unwrap();
        assert_eq!((kafka.service.as_str(), kafka.port), ("kafka", 9092));
        assert_eq!(kafka.kind, BrokerKind::Kafka);
        assert_eq!(kafka.topics, vec!["people"]);
        assert!(broker_of("kafka://k/{source}").unwrap().topics.is_empty());
        let mqtt = broker_of("mqtt://user:pw@mqtt/topic?qos=1").unwrap();
        assert_eq!((mqtt.service.as_str(), mqtt.port), ("mqtt", 1883));
        assert_eq!(broker_of("redis://cache:7000/k").unwrap().port, 7000);
        assert_eq!(broker_of("kafka://10.0.0.5:9092/t"), None);
        assert_eq!(broker_of("kafka://broker.example.com/t"), None);
        assert_eq!(broker_of("kafka://localhost:9092/t"), None);
        assert_eq!(
            broker_of("amqp://rabbit/x"),
            None,
            "no AMQP broker in the image"
        );
        assert_eq!(broker_of("file://out/e.jsonl"), None);
    }

    #[test]
    fn env_variables_are_found_once_each() {
        assert_eq!(
            env_names("a = \"${env:USER}:${env:PASS}@x\"\nb = \"${env:USER}\" $${env:NOT"),
            vec!["USER", "PASS"]
        );
    }

    #[test]
    fn names_become_lowercase_dns_labels_or_an_error() {
        assert_eq!(service_name("Detect_1").unwrap(), "detect-1");
        assert!(service_name("a.b")
            .unwrap_err()
            .contains("cannot name a container"));
    }

    #[test]
    fn relative_paths_climb_out_of_the_output_directory() {
        assert_eq!(
            relative_path(Path::new("/p/deploy"), Path::new("/p")),
            PathBuf::from("..")
        );
        assert_eq!(
            relative_path(Path::new("/p"), Path::new("/p")),
            PathBuf::from(".")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/c/d")),
            PathBuf::from("../c/d")
        );
    }
}
