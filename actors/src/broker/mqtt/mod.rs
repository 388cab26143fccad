//! The `mqtt://` and `mqtts://` adapter: MQTT 3.1.1 or 5 through `rumqttc`, QoS 1 by default.
//!
//! `mqtt://[user:pass@]HOST[:PORT]/TOPIC`, where `{sensor}` in TOPIC stands for each message's
//! sensor id (`mqtt://broker/vidmesh/{sensor}/events`); `mqtts://` speaks TLS (port 8883 by
//! default) and checks the broker's certificate against the system's roots and `ca_file`.
//!
//! Options: `qos` (0, 1 or 2; default 1), `protocol` ("3.1.1", default, or "5"), `client_id`
//! (default `vidmesh-` and a hash of the URI), `keep_alive` (default "60s"), `retain` (default
//! false), `username` and `password` (instead of the URI's), `max_inflight` (unconfirmed
//! publishes on the wire, default 100, 20 with QoS 2), `max_packet_size` (bytes; the broker's limit for
//! MQTT 3.1.1, which cannot announce it), and for `mqtts://` `ca_file`, `cert_file`, `key_file`
//! (PEM; the key in PKCS#8).
//!
//! Guarantees: with QoS 1 or 2 a run counts as confirmed only message by message as PUBACKs
//! (PUBCOMPs) arrive, so a broker outage loses nothing and at worst repeats messages; MQTT 5
//! carries [`Message::id`] as the user property `message-id` so subscribers can drop repeats.
//! QoS 0 counts a message as confirmed once it is written to the socket (at most once).
//! Sessions are clean: what the broker did not acknowledge is sent again by the delivery
//! thread, not resumed from a stored session, which keeps packet ids from ever aliasing.
//!
//! rumqttc only makes progress while its event loop is polled, and its request channel blocks
//! when full. So [`MqttPublisher::publish`] drives the event loop itself, on a private
//! single-threaded runtime, and never hands rumqttc more requests than the channel holds.
//! Between runs nothing polls the connection, so it is replaced when it has been idle for
//! longer than the keep-alive (the broker may have dropped it) or its credentials are due for
//! renewal (Azure IoT Hub's SAS tokens, [`super::azure_iot`]).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

mod link;

use self::link::{publish_packet_size, Link, Outbound, Step, REQUESTS_AHEAD};
use super::adapter::{parse_options, Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::source::redact;
use crate::stage::StageError;

/// The largest packet MQTT can frame: a 268,435,455-byte remaining length and its header.
pub(super) const MQTT_MAX_PACKET: usize = 1 + 4 + 268_435_455;

/// MQTT 5 user property that carries [`Message::id`].
pub(super) const MESSAGE_ID_PROPERTY: &str = "message-id";

/// The MQTT version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

impl TryFrom<toml::Value> for Protocol {
    type Error = String;

    /// Accepts "3.1.1" and "5" (also "5.0" or the number 5, as people write it).
    fn try_from(value: toml::Value) -> Result<Self, String> {
        match &value {
            toml::Value::String(s) if s == "3.1.1" => Ok(Protocol::V311),
            toml::Value::String(s) if s == "5" || s == "5.0" => Ok(Protocol::V5),
            toml::Value::Integer(5) => Ok(Protocol::V5),
            toml::Value::Float(f) if *f == 5.0 => Ok(Protocol::V5),
            other => Err(format!("protocol must be \"3.1.1\" or \"5\", not {other}")),
        }
    }
}

/// Where an `mqtt://` or `mqtts://` URI points.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The topic, possibly with `{sensor}` in it.
    pub topic: String,
    /// The URI with its password masked, for messages.
    pub display: String,
}

impl MqttTarget {
    pub fn parse(uri: &str) -> Result<Self, StageError> {
        let display = redact(uri);
        let bad = |why: String| StageError::Settings(format!("bad MQTT URI `{display}`: {why}"));
        let url = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            other => return Err(bad(format!("scheme `{other}` is neither mqtt nor mqtts"))),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .to_string();
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "settings go in the stage's `options`, not in the URI's query".into(),
            ));
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|e| bad(format!("not UTF-8 once decoded: {e}")))
        };
        let topic = decode(url.path().strip_prefix('/').unwrap_or(url.path()))?;
        check_topic(&topic).map_err(|why| {
            bad(format!(
                "{why}; expected mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC"
            ))
        })?;
        let username = match url.username() {
            "" => None,
            user => Some(decode(user)?),
        };
        let password = url.password().map(decode).transpose()?;
        Ok(Self {
            host,
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            tls,
            username,
            password,
            topic,
            display,
        })
    }

    /// The topic for messages of sensor `key`.
    pub fn topic_for(&self, key: &str) -> Result<String, String> {
        let topic = self.topic.replace("{sensor}", key);
        check_topic(&topic).map_err(|why| format!("topic for sensor `{key}`: {why}"))?;
        Ok(topic)
    }
}

/// Why `topic` cannot be published to, if it cannot.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        Err("no topic".into())
    } else if topic.contains(['+', '#']) {
        Err(format!(
            "`{topic}` contains a wildcard (+ or #), which only subscriptions may use"
        ))
    } else if topic.contains('\0') {
        Err(format!(
            "`{}` contains a NUL character",
            topic.escape_debug()
        ))
    } else if topic.len() > usize::from(u16::MAX) {
        Err(format!(
            "a topic is at most 65535 bytes, not {}",
            topic.len()
        ))
    } else {
        Ok(())
    }
}

/// The `mqtt://` adapter's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttOptions {
    #[serde(default = "qos_default")]
    qos: u8,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default = "keep_alive_default", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    max_inflight: Option<u16>,
    #[serde(default)]
    max_packet_size: Option<u32>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn qos_default() -> u8 {
    1
}
pub(super) fn keep_alive_default() -> Duration {
    Duration::from_secs(60)
}
/// Unconfirmed publishes on the wire by default. QoS 2 keeps to Mosquitto's default
/// `max_inflight_messages` (20): beyond it Mosquitto drops QoS 2 messages, and an MQTT 3.1.1
/// client is not told (MQTT 5 brokers announce their limit, which rumqttc then keeps to).
fn max_inflight_default(qos: u8) -> u16 {
    if qos == 2 {
        20
    } else {
        100
    }
}

/// Builds the `mqtt://` / `mqtts://` adapter from the stage's settings, without connecting.
pub fn open(config: &AdapterConfig) -> Result<MqttPublisher<TopicTemplate>, StageError> {
    let target = MqttTarget::parse(config.uri)?;
    let options: MqttOptions = parse_options(config, "mqtt")?;
    let settings_error = |why: String| StageError::Settings(format!("mqtt options: {why}"));
    // Credentials come from the URI or from the options (a password with characters a URI
    // would need escaped, or kept out of the URI), not from both.
    if (target.username.is_some() || target.password.is_some())
        && (options.username.is_some() || options.password.is_some())
    {
        return Err(settings_error(
            "credentials are given both in the URI and in `username`/`password`; keep one".into(),
        ));
    }
    let login = match (
        target.username.clone().or(options.username),
        target.password.clone().or(options.password),
    ) {
        (Some(username), password) => Some(Login {
            username,
            password: password.unwrap_or_default(),
            renew_after: None,
        }),
        (None, Some(_)) => return Err(settings_error("a password needs a user name".into())),
        (None, None) => None,
    };
    let tls = if target.tls {
        Some(tls_connector(
            options.ca_file.as_ref(),
            options.cert_file.as_ref(),
            options.key_file.as_ref(),
        )?)
    } else if options.ca_file.is_some() || options.cert_file.is_some() || options.key_file.is_some()
    {
        return Err(settings_error(
            "`ca_file`, `cert_file` and `key_file` need TLS: use an mqtts:// URI".into(),
        ));
    } else {
        None
    };
    let client_id = match options.client_id {
        Some(id) if id.is_empty() => {
            return Err(settings_error(
                "`client_id` is empty; leave it out for a default".into(),
            ))
        }
        Some(id) => id,
        None => default_client_id(&target.display, config.replica),
    };
    let client = ClientSettings {
        host: target.host.clone(),
        port: target.port,
        tls,
        client_id,
        protocol: options.protocol,
        qos: options.qos,
        retain: options.retain,
        keep_alive: options.keep_alive,
        max_inflight: options
            .max_inflight
            .unwrap_or(max_inflight_default(options.qos)),
        max_packet_size: options.max_packet_size.map(|n| n as usize),
        timeout: config.timeout,
        display: target.display.clone(),
    };
    client.check().map_err(settings_error)?;
    Ok(MqttPublisher::new(TopicTemplate { target, login }, client))
}

/// `vidmesh-` and 12 hex digits of a hash of the (masked) URI and the replica number: the same
/// for every run of a stage replica, so broker-side ACLs and monitoring can name it, and
/// different for stages that publish to different topics and for replicas of one stage (a
/// broker disconnects a client whose id another client takes).
fn default_client_id(display: &str, replica: u32) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{display}#{replica}").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("vidmesh-{hex}")
}

/// A TLS client that trusts the system's roots and `ca_file`'s certificates, and presents
/// `cert_file`/`key_file` when both are given.
pub(super) fn tls_connector(
    ca_file: Option<&PathBuf>,
    cert_file: Option<&PathBuf>,
    key_file: Option<&PathBuf>,
) -> Result<native_tls::TlsConnector, StageError> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            StageError::Settings(format!("cannot read {what} {}: {e}", path.display()))
        })
    };
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        let pem = read("ca_file", path)?;
        let certificates = pem_blocks(&pem, "CERTIFICATE");
        if certificates.is_empty() {
            return Err(StageError::Settings(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
        for block in certificates {
            let certificate = native_tls::Certificate::from_pem(&block).map_err(|e| {
                StageError::Settings(format!("bad certificate in {}: {e}", path.display()))
            })?;
            builder.add_root_certificate(certificate);
        }
    }
    match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            let identity = native_tls::Identity::from_pkcs8(
                &read("cert_file", cert)?,
                &read("key_file", key)?,
            )
            .map_err(|e| {
                StageError::Settings(format!(
                    "cannot use {} with {} as the client certificate (the key must be PEM PKCS#8, \
                             \"BEGIN PRIVATE KEY\"): {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(StageError::Settings(
                "`cert_file` and `key_file` go together".into(),
            ))
        }
    }
    builder
        .build()
        .map_err(|e| StageError::Settings(format!("cannot set up TLS: {e}")))
}

/// The PEM blocks of one `label` in `pem`, each with its BEGIN and END lines.
fn pem_blocks(pem: &[u8], label: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + stop + end.len();
        blocks.push(rest.as_bytes()[start..stop].to_vec());
        rest = &rest[stop..];
    }
    blocks
}

/// User name and password for one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// How long after connecting the password stops being good (a SAS token's lifetime, less
    /// a margin): the adapter connects anew with fresh credentials before then.
    pub renew_after: Option<Duration>,
}

/// What a broker's dialect of MQTT decides: topics and credentials. The connection, flow
/// control and confirmations are [`MqttPublisher`]'s.
pub trait Dialect: Send {
    /// The topic of one message; `Err` says why it can never be published.
    fn topic(&self, message: &Message) -> Result<String, String>;
    /// Credentials for a new connection.
    fn login(&self) -> Option<Login>;
}

/// Plain MQTT: the URI's topic with `{sensor}` filled in, and fixed credentials.
pub struct TopicTemplate {
    target: MqttTarget,
    login: Option<Login>,
}

impl Dialect for TopicTemplate {
    fn topic(&self, message: &Message) -> Result<String, String> {
        self.target.topic_for(&message.key)
    }

    fn login(&self) -> Option<Login> {
        self.login.clone()
    }
}

/// How to reach the broker and what to send it: everything but topics and credentials.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub host: String,
    pub port: u16,
    pub tls: Option<native_tls::TlsConnector>,
    pub client_id: String,
    pub protocol: Protocol,
    pub qos: u8,
    pub retain: bool,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    /// Our own limit on a PUBLISH packet's size; an MQTT 5 broker's CONNACK may lower it.
    pub max_packet_size: Option<usize>,
    /// How long to wait for the connection and for each step of progress in a run.
    pub timeout: Duration,
    /// The URI with credentials masked, for messages.
    pub display: String,
}

impl ClientSettings {
    /// What rumqttc would otherwise assert on, as settings errors.
    pub fn check(&self) -> Result<(), String> {
        if self.qos > 2 {
            return Err(format!("qos must be 0, 1 or 2, not {}", self.qos));
        }
        // rumqttc refuses (panics on) shorter keep-alives for MQTT 5, and MQTT counts it in
        // whole seconds of a 16-bit field.
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive.as_secs() > 65_535 {
            return Err(format!(
                "keep_alive must be between 5s and 65535s, not {}",
                humantime_serde::re::humantime::format_duration(self.keep_alive)
            ));
        }
        if self.max_inflight == 0 {
            return Err("max_inflight must be at least 1".into());
        }
        if self.max_packet_size == Some(0) {
            return Err("max_packet_size must be at least 1".into());
        }
        if self.client_id.len() > usize::from(u16::MAX) {
            return Err("client_id is longer than MQTT allows (65535 bytes)".into());
        }
        Ok(())
    }
}

/// The MQTT adapter, generic over the dialect (plain MQTT or Azure IoT Hub).
pub struct MqttPublisher<D: Dialect> {
    dialect: D,
    settings: ClientSettings,
    /// Started on the first publish; drives rumqttc's event loop inside `publish`.
    runtime: Option<tokio::runtime::Runtime>,
    connection: Option<Connection>,
}

impl<D: Dialect> MqttPublisher<D> {
    pub fn new(dialect: D, settings: ClientSettings) -> Self {
        Self {
            dialect,
            settings,
            runtime: None,
            connection: None,
        }
    }

    #[cfg(test)]
    pub fn dialect(&self) -> &D {
        &self.dialect
    }
}

impl<D: Dialect> Adapter for MqttPublisher<D> {
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let runtime = match &mut self.runtime {
            Some(runtime) => runtime,
            slot @ None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        PublishError::new(
                            0,
                            ErrorKind::Unavailable,
                            format!(
                                "cannot start the MQTT client for {}: {e}",
                                self.settings.display
                            ),
                        )
                    })?;
                slot.insert(runtime)
            }
        };
        // A connection nobody polled for a keep-alive period may have been dropped by the
        // broker, and one whose credentials are about to expire soon will be: start afresh
        // rather than learn it from a failed run.
        if let Some(c) = &self.connection {
            let now = Instant::now();
            if now.duration_since(c.last_used) >= self.settings.keep_alive
                || c.renew_at.is_some_and(|at| now >= at)
            {
                self.connection = None;
            }
        }
        let settings = &self.settings;
        let dialect = &self.dialect;
        let connection = &mut self.connection;
        runtime.block_on(async move {
            let mut live = match connection.take() {
                Some(c) => c,
                None => Connection::open(settings, dialect.login()).await?,
            };
            let outcome = live.send_run(settings, dialect, messages).await;
            match outcome {
                Ok(()) => {
                    live.last_used = Instant::now();
                    *connection = Some(live);
                    Ok(())
                }
                Err(failure) => {
                    // A message refused before it was sent leaves the connection as good as
                    // it was; anything else leaves rumqttc's state uncertain, so reconnect.
                    if failure.keep_connection {
                        live.last_used = Instant::now();
                        *connection = Some(live);
                    }
                    Err(failure.error)
                }
            }
        })
    }

    fn describe(&self) -> String {
        self.settings.display.clone()
    }
}

/// One connection to the broker.
struct Connection {
    link: Link,
    /// The largest PUBLISH packet that may be sent: ours and the broker's (MQTT 5) limit.
    max_packet_size: usize,
    last_used: Instant,
    /// When to connect anew with fresh credentials.
    renew_at: Option<Instant>,
}

/// A run that was not wholly confirmed.
struct RunFailure {
    error: PublishError,
    keep_connection: bool,
}

impl Connection {
    /// Connects and waits for the broker's CONNACK.
    async fn open(settings: &ClientSettings, login: Option<Login>) -> Result<Self, PublishError> {
        let started = Instant::now();
        let renew_at = login
            .as_ref()
            .and_then(|l| l.renew_after)
            .map(|after| started + after);
        let mut link = Link::new(settings, login);
        let cannot = |kind, why: String| {
            PublishError::new(
                0,
                kind,
                format!("cannot connect to {}: {why}", settings.display),
            )
        };
        let broker = loop {
            match tokio::time::timeout(settings.timeout, link.step()).await {
                Err(_) => {
                    return Err(cannot(
                        ErrorKind::Unavailable,
                        format!(
                            "no answer within {}",
                            humantime_serde::re::humantime::format_duration(settings.timeout)
                        ),
                    ))
                }
                Ok(Err(e)) => return Err(cannot(e.kind, e.detail)),
                Ok(Ok(Step::Connected(broker))) => break broker,
                Ok(Ok(_)) => continue,
            }
        };
        if let Some(max) = broker.max_qos {
            if max < settings.qos {
                return Err(cannot(
                    ErrorKind::Refused,
                    format!("the broker takes QoS {max} at most, not {}", settings.qos),
                ));
            }
        }
        if settings.retain && broker.retain_available == Some(0) {
            return Err(cannot(
                ErrorKind::Refused,
                "the broker does not keep retained messages; set retain = false".into(),
            ));
        }
        let ours = settings.max_packet_size.unwrap_or(MQTT_MAX_PACKET);
        let max_packet_size = broker
            .max_packet_size
            .map_or(ours, |theirs| ours.min(theirs as usize));
        Ok(Self {
            link,
            max_packet_size,
            last_used: Instant::now(),
            renew_at,
        })
    }

    /// Sends `messages` in order and waits until all are confirmed, or says how many from the
    /// start are.
    async fn send_run(
        &mut self,
        settings: &ClientSettings,
        dialect: &dyn Dialect,
        messages: &[Message],
    ) -> Result<(), RunFailure> {
        let total = messages.len();
        // Messages handed to rumqttc, and written by it (its `Outgoing::Publish` events come
        // in request order, so the nth is message n).
        let mut queued = 0;
        let mut written = 0;
        let mut confirmed = vec![false; total];
        let mut prefix = 0;
        // Packet id -> messages awaiting their PUBACK/PUBCOMP, oldest first. rumqttc frees a
        // QoS 2 packet id at PUBREC, so it may be in use again before the first PUBCOMP.
        let mut awaiting: HashMap<u16, VecDeque<usize>> = HashMap::new();
        // The first message that failed: nothing from it on is sent or counted.
        let mut stop: Option<Stop> = None;
        loop {
            while prefix < total && confirmed[prefix] {
                prefix += 1;
            }
            if let Some(s) = &stop {
                if prefix >= s.at {
                    return Err(RunFailure {
                        error: PublishError::new(s.at, s.kind, s.detail.clone()),
                        keep_connection: s.keep_connection,
                    });
                }
            }
            if prefix == total {
                return Ok(());
            }
            while stop.is_none() && queued < total && queued - written < REQUESTS_AHEAD {
                let message = &messages[queued];
                match self.prepare(settings, dialect, message) {
                    Ok(publish) => {
                        self.link
                            .send(settings, publish, &message.id)
                            .map_err(|detail| RunFailure {
                                error: PublishError::new(
                                    prefix,
                                    ErrorKind::Unavailable,
                                    format!("cannot publish to {}: {detail}", settings.display),
                                ),
                                keep_connection: false,
                            })?;
                        queued += 1;
                    }
                    Err(why) => {
                        stop = Some(Stop {
                            at: queued,
                            kind: ErrorKind::Rejected,
                            detail: format!(
                                "cannot publish message {} to {}: {why}",
                                message.id, settings.display
                            ),
                            keep_connection: true,
                        })
                    }
                }
            }
            if stop.as_ref().is_some_and(|s| prefix >= s.at) {
                continue;
            }
            let step = match tokio::time::timeout(settings.timeout, self.link.step()).await {
                Ok(Ok(step)) => step,
                Ok(Err(e)) => {
                    return Err(RunFailure {
                        error: PublishError::new(
                            prefix,
                            e.kind,
                            format!(
                                "{} (after {prefix} of {total} messages were confirmed by {})",
                                e.detail, settings.display
                            ),
                        ),
                        keep_connection: false,
                    })
                }
                Err(_) => {
                    return Err(RunFailure {
                        error: PublishError::new(
                            prefix,
                            ErrorKind::Unavailable,
                            format!(
                            "{} did not confirm within {} ({prefix} of {total} messages confirmed)",
                            settings.display,
                            humantime_serde::re::humantime::format_duration(settings.timeout)
                        ),
                        ),
                        keep_connection: false,
                    })
                }
            };
            match step {
                Step::Written(pkid) => {
                    if written < queued {
                        if settings.qos == 0 {
                            confirmed[written] = true;
                        } else {
                            awaiting.entry(pkid).or_default().push_back(written);
                        }
                        written += 1;
                    }
                }
                Step::Confirmed(pkid) => {
                    if let Some(index) = take_oldest(&mut awaiting, pkid) {
                        confirmed[index] = true;
                    }
                }
                Step::Refused { pkid, kind, reason } => {
                    if let Some(index) = take_oldest(&mut awaiting, pkid) {
                        if stop.as_ref().is_none_or(|s| index < s.at) {
                            stop = Some(Stop {
                                at: index,
                                kind,
                                detail: format!(
                                    "{} refused message {}: {reason}",
                                    settings.display, messages[index].id
                                ),
                                keep_connection: false,
                            });
                        }
                    }
                }
                Step::Connected(_) | Step::Other => {}
            }
        }
    }

    /// The PUBLISH for one message, or why it can never be sent.
    fn prepare(
        &self,
        settings: &ClientSettings,
        dialect: &dyn Dialect,
        message: &Message,
    ) -> Result<Outbound, String> {
        let topic = dialect.topic(message)?;
        let size = publish_packet_size(
            settings.protocol,
            topic.len(),
            settings.qos,
            message.id.len(),
            message.payload.len(),
        );
        if size > self.max_packet_size {
            return Err(format!(
                "its PUBLISH packet is {size} bytes, more than the {} the broker takes",
                self.max_packet_size
            ));
        }
        if message.id.len() > usize::from(u16::MAX) {
            return Err("its id is longer than an MQTT string (65535 bytes)".into());
        }
        Ok(Outbound {
            topic,
            payload: Bytes::copy_from_slice(&message.payload),
        })
    }
}

/// The oldest message awaiting an acknowledgement for packet id `pkid`.
fn take_oldest(awaiting: &mut HashMap<u16, VecDeque<usize>>, pkid: u16) -> Option<usize> {
    let queue = awaiting.get_mut(&pkid)?;
    let index = queue.pop_front();
    if queue.is_empty() {
        awaiting.remove(&pkid);
    }
    index
}

struct Stop {
    at: usize,
    kind: ErrorKind,
    detail: String,
    keep_connection: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config<'a>(uri: &'a str, options: &'a toml::Table) -> AdapterConfig<'a> {
        AdapterConfig {
            uri,
            options,
            timeout: Duration::from_secs(2),
            replica: 0,
        }
    }

    fn open_with(uri: &str, options: &str) -> Result<MqttPublisher<TopicTemplate>, String> {
        let options: toml::Table = toml::from_str(options).unwrap();
        open(&config(uri, &options)).map_err(|e| e.to_string())
    }

    #[test]
    fn uri_names_broker_topic_and_credentials_and_hides_the_password() {
        let t =
            MqttTarget::parse("mqtt://app:s3cr%40t@10.0.0.7:1884/vidmesh/{sensor}/events").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("10.0.0.7", 1884, false));
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s3cr@t"));
        assert_eq!(t.topic, "vidmesh/{sensor}/events");
        assert_eq!(t.topic_for("cam-7").unwrap(), "vidmesh/cam-7/events");
        assert!(!t.display.contains("s3cr"), "{}", t.display);
        let t = MqttTarget::parse("mqtts://broker.local/events").unwrap();
        assert_eq!((t.port, t.tls, t.username.clone()), (8883, true, None));
        assert_eq!(MqttTarget::parse("mqtt://h/e").unwrap().port, 1883);
    }

    #[test]
    fn uris_without_a_usable_topic_are_refused() {
        for bad in [
            "mqtt://localhost",
            "mqtt://localhost/",
            "mqtt://localhost/a/+/b",
            "mqtt://localhost/a?qos=1",
            "mqtt:///events",
            "amqp://localhost/events",
        ] {
            let err = MqttTarget::parse(bad).err().unwrap().to_string();
            assert!(err.starts_with("bad MQTT URI"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_sensor_id_with_a_wildcard_makes_no_topic() {
        let t = MqttTarget::parse("mqtt://h/cams/{sensor}").unwrap();
        assert!(t.topic_for("a+b").unwrap_err().contains("wildcard"));
    }

    #[test]
    fn options_are_checked_and_named() {
        let err = open_with("mqtt://h/t", "qos = 3").err().unwrap();
        assert!(err.contains("qos must be 0, 1 or 2"), "{err}");
        let err = open_with("mqtt://h/t", "keep_alive = \"1s\"")
            .err()
            .unwrap();
        assert!(err.contains("keep_alive"), "{err}");
        let err = open_with("mqtt://h/t", "protocol = \"4\"").err().unwrap();
        assert!(err.contains("protocol must be"), "{err}");
        let err = open_with("mqtt://h/t", "quality = 1").err().unwrap();
        assert!(
            err.contains("mqtt options") && err.contains("quality"),
            "{err}"
        );
        let err = open_with("mqtt://u:p@h/t", "username = \"v\"")
            .err()
            .unwrap();
        assert!(err.contains("both in the URI"), "{err}");
        let err = open_with("mqtt://h/t", "ca_file = \"/x.pem\"")
            .err()
            .unwrap();
        assert!(err.contains("mqtts://"), "{err}");
        let err = open_with("mqtts://h/t", "ca_file = \"/nonexistent/ca.pem\"")
            .err()
            .unwrap();
        assert!(
            err.contains("cannot read ca_file /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn protocol_accepts_the_ways_people_write_it() {
        for (text, protocol) in [
            ("protocol = \"3.1.1\"", Protocol::V311),
            ("protocol = \"5\"", Protocol::V5),
            ("protocol = 5", Protocol::V5),
            ("", Protocol::V311),
        ] {
            let adapter = open_with("mqtt://h/t", text).unwrap();
            assert_eq!(adapter.settings.protocol, protocol, "{text}");
        }
    }

    #[test]
    fn default_client_id_is_stable_and_short() {
        let a = open_with("mqtt://u:p@h/t", "").unwrap();
        let b = open_with("mqtt://u:p@h/t", "").unwrap();
        let c = open_with("mqtt://u:p@h/other", "").unwrap();
        assert_eq!(a.settings.client_id, b.settings.client_id);
        assert_ne!(a.settings.client_id, c.settings.client_id);
        // MQTT 3.1.1 servers must accept ids of up to 23 characters.
        assert!(a.settings.client_id.len() <= 23, "{}", a.settings.client_id);
        assert_eq!(a.describe(), "mqtt://u:***@h/t");
    }

    #[test]
    fn an_unreachable_broker_is_unavailable_and_names_the_uri_not_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut adapter =
            open_with(&format!("mqtt://u:pw-never-shown@127.0.0.1:{port}/t"), "").unwrap();
        let message = Message {
            key: "cam".into(),
            id: "m1".into(),
            payload: b"{}".to_vec(),
        };
        let err = adapter.publish(std::slice::from_ref(&message)).unwrap_err();
        assert_eq!((err.confirmed, err.kind), (0, ErrorKind::Unavailable));
        assert!(
            err.detail.starts_with(&format!(
                "cannot connect to mqtt://u:***@127.0.0.1:{port}/t"
            )),
            "{}",
            err.detail
        );
        assert!(!err.detail.contains("pw-never-shown"), "{}", err.detail);
    }
}
