//! `[sinkN] type=6` (nvmsgconv + nvmsgbroker), `[message-converter]`, the msgconv config and
//! the broker's protocol config: the `broker` stage, and the msgconv config converted to the
//! TOML form the broker reads (docs/TOPOLOGY.md, `broker`).

use std::path::{Path, PathBuf};

use super::ini::{ConfigError, GroupReader, KeyFile};
use super::render::Table;
use super::sinks::SinkContext;
use super::{file_name, resolve, short, Notes};

/// A converted type=6 sink.
#[derive(Debug)]
pub struct BrokerOut {
    /// Where it came from, for the comment.
    pub from: String,
    pub table: Table,
    /// The msgconv config as TOML, and where the topology expects it.
    pub msgconv_file: Option<(PathBuf, String)>,
}

/// Protocol adapters deepstream ships, by library name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Kafka,
    Mqtt,
    Amqp,
    Redis,
    Azure,
}

fn protocol(lib: &str) -> Option<Protocol> {
    let name = file_name(Path::new(lib)).to_ascii_lowercase();
    if name.contains("azure_edge") {
        None
    } else if name.contains("kafka") {
        Some(Protocol::Kafka)
    } else if name.contains("mqtt") {
        Some(Protocol::Mqtt)
    } else if name.contains("amqp") {
        Some(Protocol::Amqp)
    } else if name.contains("redis") {
        Some(Protocol::Redis)
    } else if name.contains("azure") {
        Some(Protocol::Azure)
    } else {
        None
    }
}

/// `[sinkN] type=6` → the broker stage, or `None` (reported) when it cannot be mapped.
pub fn broker_sink(
    r: &GroupReader<'_>,
    ctx: &SinkContext<'_>,
    notes: &mut Notes,
) -> Result<Option<BrokerOut>, ConfigError> {
    let name = r.name().to_string();
    let place = format!("[{name}] type=6");
    let lib = r.string("msg-broker-proto-lib")?.unwrap_or_default();
    let lib_name = file_name(Path::new(&lib));
    let Some(proto) = protocol(&lib) else {
        notes.not_mapped(
            format!("{place} msg-broker-proto-lib={lib_name}"),
            "vidmesh has adapters for Kafka, MQTT, AMQP, Redis and Azure IoT Hub (device \
             client); for another protocol write an exec:// adapter (docs/BROKERS.md)",
        );
        return Ok(None);
    };
    let conn = r.string("msg-broker-conn-str")?.unwrap_or_default();
    let cfg = match r.string("msg-broker-config")? {
        Some(c) => {
            let path = resolve(ctx.dir, &c);
            let bytes = std::fs::read(&path).map_err(|e| {
                r.error(
                    "msg-broker-config",
                    format!(
                        "[{name}] msg-broker-config={c}: cannot read {}: {e}",
                        path.display()
                    ),
                )
            })?;
            Some(KeyFile::parse(&path, &bytes)?)
        }
        None => None,
    };
    let cfg_reader = cfg.as_ref().and_then(|c| c.reader("message-broker"));
    let cfg_name = cfg.as_ref().map(|c| file_name(&c.path));
    let cfg_value = |key: &str| -> Result<Option<String>, ConfigError> {
        match &cfg_reader {
            Some(c) => Ok(c
                .string(key)?
                .map(|v| v.trim().trim_matches('"').to_string())
                .filter(|v| !v.is_empty())),
            None => Ok(None),
        }
    };

    let parts: Vec<&str> = conn.split(';').map(str::trim).collect();
    let topic = match r.string("topic")? {
        Some(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => match cfg_value("topic")? {
            Some(t) => Some(t),
            None if matches!(proto, Protocol::Kafka | Protocol::Mqtt) => parts
                .get(2)
                .filter(|t| !t.is_empty())
                .map(|t| t.to_string()),
            None => None,
        },
    };
    let host_port = || -> Option<String> {
        let host = parts.first().filter(|h| !h.is_empty())?;
        Some(match parts.get(1).filter(|p| !p.is_empty()) {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        })
    };
    let conn_place = format!("{place} msg-broker-conn-str={}", short(&conn));
    let mut options = Table::default();
    let mut table = Table::default();
    // `uri` is set below; its slot comes right after `kind`.
    table.set("kind", "broker").set("uri", "");

    let uri = match proto {
        Protocol::Kafka | Protocol::Mqtt | Protocol::Redis => {
            let (Some(hp), Some(topic)) = (host_port(), topic.clone()) else {
                notes.not_mapped(
                    conn_place,
                    "needs host;port and a topic (`topic=` or host;port;topic); no broker stage",
                );
                return Ok(None);
            };
            match proto {
                Protocol::Kafka => {
                    kafka_config(
                        &cfg_reader,
                        cfg_name.as_deref(),
                        &mut table,
                        &mut options,
                        notes,
                    )?;
                    format!("kafka://{hp}/{topic}")
                }
                Protocol::Mqtt => {
                    let tls = mqtt_config(&cfg_reader, &mut options)?;
                    format!("{}://{hp}/{topic}", if tls { "mqtts" } else { "mqtt" })
                }
                _ => {
                    if let Some(c) = &cfg_reader {
                        if let Some(n) = c.int("streamsize")? {
                            if n > 0 {
                                options.set("maxlen", n);
                            }
                        }
                        if let Some(key) = c.string("payloadkey")? {
                            notes.approximate(
                                format!(
                                    "{} [message-broker] payloadkey={key}",
                                    cfg_name.clone().unwrap_or_default()
                                ),
                                "vidmesh's Redis entries keep the payload in field `payload`",
                            );
                        }
                    }
                    format!("redis://{hp}/{topic}")
                }
            }
        }
        Protocol::Amqp => {
            let Some(hp) = host_port() else {
                notes.not_mapped(conn_place, "needs host;port;username; no broker stage");
                return Ok(None);
            };
            let user = parts
                .get(2)
                .filter(|u| !u.is_empty())
                .map(|u| u.to_string());
            let password = cfg_value("password")?;
            let userinfo = match (user, password) {
                (Some(u), Some(p)) => format!("{u}:{p}@"),
                (Some(u), None) => format!("{u}@"),
                _ => String::new(),
            };
            if let Some(exchange) = cfg_value("exchange")? {
                options.set("exchange", exchange);
            }
            if let Some(t) = &topic {
                options.set("routing_key", t.clone());
            }
            let mut query = Vec::new();
            if let Some(c) = &cfg_reader {
                if let Some(n) = c.int("amqp-framesize")? {
                    query.push(format!("frame_max={n}"));
                }
                if let Some(n) = c.int("amqp-heartbeat")? {
                    query.push(format!("heartbeat={n}"));
                }
                c.touch("hostname");
                c.touch("port");
                c.touch("username");
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            format!("amqp://{userinfo}{hp}/{query}")
        }
        Protocol::Azure => {
            let connection = if conn.contains("HostName=") {
                Some(conn.clone())
            } else {
                cfg_value("connection_str")?
            };
            let Some(connection) = connection else {
                notes.not_mapped(
                    conn_place,
                    "the Azure IoT Hub device client needs a connection string \
                     (HostName=…;DeviceId=…;SharedAccessKey=…); no broker stage",
                );
                return Ok(None);
            };
            options.set("connection_string", connection);
            "azure-iot://".to_string()
        }
    };
    table.set("uri", uri);

    // Conversion: the sink's own msgconv keys, or [message-converter]'s with disable-msgconv.
    let separate = r.bool("disable-msgconv")?.unwrap_or(false);
    let conv: &GroupReader<'_> = match (separate, ctx.msgconv_group) {
        (true, Some(m)) => {
            if m.enabled(false)? {
                m
            } else {
                notes.approximate(
                    format!("{place} disable-msgconv=1"),
                    "[message-converter] is not enabled; converting with its defaults (full \
                     schema)",
                );
                r
            }
        }
        (true, None) => {
            notes.approximate(
                format!("{place} disable-msgconv=1"),
                "there is no [message-converter]; converting with the defaults (full schema)",
            );
            r
        }
        (false, _) => r,
    };
    let conv_name = conv.name().to_string();
    let payload = conv.int("msg-conv-payload-type")?.unwrap_or(0);
    let schema = match payload {
        0 => "full",
        1 => "minimal",
        2 => {
            table.set("format", "protobuf");
            notes.approximate(
                format!("[{conv_name}] msg-conv-payload-type=2 (Protobuf)"),
                "vidmesh's Protobuf payload (vidmesh.events.v1.Frame) is modelled on \
                 DeepStream's but not wire-compatible with it",
            );
            ""
        }
        other => {
            notes.not_mapped(
                format!("[{conv_name}] msg-conv-payload-type={other} (custom)"),
                "custom payloads come from a msg2p library vidmesh cannot load; the full schema \
                 is written instead",
            );
            "full"
        }
    };
    if !schema.is_empty() {
        table.set("schema", schema);
    }
    let mut msgconv_file = None;
    if let Some(c) = conv.string("msg-conv-config")? {
        let path = resolve(ctx.dir, &c);
        let bytes = std::fs::read(&path).map_err(|e| {
            conv.error(
                "msg-conv-config",
                format!(
                    "[{conv_name}] msg-conv-config={c}: cannot read {}: {e}",
                    path.display()
                ),
            )
        })?;
        let cplace = format!("[{conv_name}] msg-conv-config={c}");
        let yaml = c.ends_with(".yml") || c.ends_with(".yaml");
        if yaml {
            notes.not_mapped(
                cplace,
                "YAML msgconv configs are not converted (write it in the key-file form); \
                 sensor ids are the source ids",
            );
        } else if schema != "full" {
            notes.approximate(
                cplace,
                "only the full schema carries sensor, place and analytics details; sensor ids \
                 are the source ids",
            );
        } else {
            let file = KeyFile::parse(&path, &bytes)?;
            let text = convert_msgconv(&file, ctx.source_ids, notes)?;
            match ctx.msgconv_out {
                Some(out) => {
                    table.set("config", out.display().to_string());
                    msgconv_file = Some((out.to_path_buf(), text));
                }
                None => notes.not_mapped(
                    cplace,
                    "the converted msgconv config needs a file of its own: give -o FILE and it \
                     is written next to the topology",
                ),
            }
        }
    }
    if schema == "full" {
        notes.approximate(
            format!("[{conv_name}] msg-conv-payload-type={payload} (full schema)"),
            "vidmesh publishes one message per object of every frame; deepstream-app publishes \
             the event metadata its application attaches",
        );
    }
    if let Some(n) = conv.int("msg-conv-frame-interval")? {
        if n > 1 {
            table.set("frame_interval", n);
        }
    }
    for key in ["msg-conv-msg2p-lib", "debug-payload-dir"] {
        if let Some(v) = conv.string(key)? {
            notes.not_mapped(
                format!("[{conv_name}] {key}={}", short(&v)),
                match key {
                    "msg-conv-msg2p-lib" => "vidmesh cannot load payload libraries",
                    _ => "a broker stage with a file:// uri writes the payloads to a file",
                },
            );
        }
    }
    for (g, key) in [(conv, "msg-conv-comp-id"), (r, "msg-broker-comp-id")] {
        if let Some(id) = g.int(key)? {
            notes.not_mapped(
                format!("[{}] {key}={id}", g.name()),
                "vidmesh publishes the objects of every component",
            );
        }
    }
    for key in [
        "msg-conv-msg2p-new-api",
        "multiple-payloads",
        "msg-conv-dummy-payload",
    ] {
        conv.touch(key);
    }
    r.touch("new-api");
    r.touch("sync");
    r.touch("type");
    if !options.0.is_empty() {
        table.inline("options", options);
    }
    if let Some(c) = &cfg_reader {
        notes.unused(c, cfg_name.as_deref());
    }
    if separate {
        r.touch("disable-msgconv");
    }
    let from = format!(
        "{lib_name} ({})",
        match proto {
            Protocol::Kafka => "Kafka",
            Protocol::Mqtt => "MQTT",
            Protocol::Amqp => "AMQP",
            Protocol::Redis => "Redis Streams",
            Protocol::Azure => "Azure IoT Hub",
        }
    );
    Ok(Some(BrokerOut {
        from: format!("message converter + broker, {from}"),
        table,
        msgconv_file,
    }))
}

/// Kafka's `[message-broker]`: `proto-cfg` holds librdkafka properties.
fn kafka_config(
    c: &Option<GroupReader<'_>>,
    cfg_name: Option<&str>,
    table: &mut Table,
    options: &mut Table,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let Some(c) = c else { return Ok(()) };
    let cfg_name = cfg_name.unwrap_or_default();
    if let Some(props) = c.string("proto-cfg")? {
        for item in props.trim().trim_matches('"').split(';') {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "message.timeout.ms" | "delivery.timeout.ms" => {
                    if let Ok(ms) = v.parse::<u64>() {
                        table.set("timeout", format!("{ms}ms"));
                    }
                }
                "bootstrap.servers" | "transactional.id" | "delivery.report.only.error" => notes
                    .not_mapped(
                        format!("{cfg_name} [message-broker] proto-cfg {k}={v}"),
                        "set by vidmesh itself (docs/BROKERS.md, Kafka)",
                    ),
                _ => {
                    options.set(k, v.to_string());
                }
            }
        }
    }
    if let Some(key) = c.string("partition-key")? {
        notes.approximate(
            format!("{cfg_name} [message-broker] partition-key={key}"),
            "vidmesh keys every message by its sensor id",
        );
    }
    for key in ["consumer-group-id", "share-connection"] {
        c.touch(key);
    }
    Ok(())
}

/// MQTT's `[message-broker]`; returns whether TLS is on.
fn mqtt_config(c: &Option<GroupReader<'_>>, options: &mut Table) -> Result<bool, ConfigError> {
    let Some(c) = c else { return Ok(false) };
    for (from, to) in [
        ("username", "username"),
        ("password", "password"),
        ("client-id", "client_id"),
        ("tls-cafile", "ca_file"),
        ("tls-certfile", "cert_file"),
        ("tls-keyfile", "key_file"),
    ] {
        if let Some(v) = c.string(from)? {
            let v = v.trim().trim_matches('"').to_string();
            if !v.is_empty() {
                options.set(to, v);
            }
        }
    }
    if let Some(s) = c.int("keep-alive")? {
        if s > 0 {
            options.set("keep_alive", format!("{s}s"));
        }
    }
    for key in [
        "share-connection",
        "loop-timeout",
        "set-threaded",
        "tls-capath",
    ] {
        c.touch(key);
    }
    Ok(c.bool("enable-tls")?.unwrap_or(false))
}

/// `[message-converter]` when no type=6 sink used it, or its keys nobody read.
pub fn message_converter_leftovers(
    r: &GroupReader<'_>,
    notes: &mut Notes,
) -> Result<(), ConfigError> {
    let used = r.read_any();
    if !r.enabled(false)? {
        return Ok(());
    }
    if !used {
        notes.not_mapped(
            "[message-converter]",
            "no [sinkN] type=6 with disable-msgconv=1 takes its payloads",
        );
        return Ok(());
    }
    notes.unused(r, None);
    Ok(())
}

/// The msgconv config (`[sensorN]`, `[placeN]`, `[analyticsN]`) as the broker's TOML form.
pub fn convert_msgconv(
    file: &KeyFile,
    source_ids: &[String],
    notes: &mut Notes,
) -> Result<String, ConfigError> {
    let fname = file_name(&file.path);
    let mut sensors = Vec::new();
    let mut places = Vec::new();
    let mut analytics = Vec::new();
    let mut sub_fields_noted = false;
    for group in &file.groups {
        let g = GroupReader::new(file, group);
        let numbered = ["sensor", "place", "analytics"].into_iter().find_map(|p| {
            group
                .name
                .strip_prefix(p)
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| (p, n))
        });
        let Some((section, index)) = numbered else {
            notes.not_mapped(
                format!("{fname} [{}]", group.name),
                "not a msgconv group vidmesh knows ([sensorN], [placeN], [analyticsN])",
            );
            continue;
        };
        if !g.enabled(true)? {
            continue;
        }
        if !notes.stream_exists(&fname, &group.name, index, source_ids.len()) {
            continue;
        }
        let mut t = Table::default();
        t.set("index", index as i64);
        let text = |key: &str, t: &mut Table, as_key: &str| -> Result<(), ConfigError> {
            if let Some(v) = g.string(key)? {
                t.set(as_key, v);
            }
            Ok(())
        };
        let triple = |key: &str, t: &mut Table| -> Result<(), ConfigError> {
            if let Some(v) = g.float_list(key)? {
                if v.len() != 3 {
                    return Err(g.error(
                        key,
                        format!(
                            "[{}] {key}: expected 3 numbers a;b;c, got {}",
                            g.name(),
                            v.len()
                        ),
                    ));
                }
                t.set(key, v);
            }
            Ok(())
        };
        match section {
            "sensor" => {
                text("id", &mut t, "id")?;
                text("type", &mut t, "type")?;
                text("description", &mut t, "description")?;
                triple("location", &mut t)?;
                triple("coordinate", &mut t)?;
                sensors.push(t);
            }
            "place" => {
                text("id", &mut t, "id")?;
                text("name", &mut t, "name")?;
                text("type", &mut t, "type")?;
                triple("location", &mut t)?;
                let fields: Vec<Option<String>> = (1..=3)
                    .map(|i| g.string(&format!("place-sub-field{i}")))
                    .collect::<Result<_, _>>()?;
                let mut coordinate = Table::default();
                triple("coordinate", &mut coordinate)?;
                if fields.iter().any(Option::is_some) || coordinate.get("coordinate").is_some() {
                    let mut aisle = Table::default();
                    for (key, value) in ["id", "name", "level"].into_iter().zip(fields) {
                        if let Some(v) = value {
                            aisle.set(key, v);
                        }
                    }
                    if let Some(c) = coordinate.get("coordinate") {
                        aisle.set("coordinate", c.clone());
                    }
                    t.inline("aisle", aisle);
                    if !sub_fields_noted {
                        sub_fields_noted = true;
                        notes.approximate(
                            format!("{fname} [{}] place-sub-field1..3, coordinate", g.name()),
                            "DeepStream picks the place's sub-object by event type (aisle, \
                             entrance or parkingSpot); vidmesh writes one, `aisle` (id, name, \
                             level)",
                        );
                    }
                }
                places.push(t);
            }
            _ => {
                text("id", &mut t, "id")?;
                text("description", &mut t, "description")?;
                text("source", &mut t, "source")?;
                text("version", &mut t, "version")?;
                analytics.push(t);
            }
        }
        g.touch("enable");
        notes.unused(&g, Some(&fname));
    }
    let mut root = Table::default();
    if !sensors.is_empty() {
        root.tables("sensor", sensors);
    }
    if !places.is_empty() {
        root.tables("place", places);
    }
    if !analytics.is_empty() {
        root.tables("analytics", analytics);
    }
    let mut out = String::new();
    super::render::comment(
        &format!(
            "msgconv config for the broker's full schema, converted by `vidmesh import-deepstream`\n\
             from {}. `index` is the source's position (docs/TOPOLOGY.md, broker).",
            file.path.display()
        ),
        &mut out,
    );
    root.write("", &mut out);
    Ok(out)
}
