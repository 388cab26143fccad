//! The seam between the broker stage and an outside messaging system.
//!
//! The stage never talks to a broker on its own thread: it appends messages to the durable
//! spool ([`super::spool`]) and a delivery thread hands them, in spool order, to an
//! [`Adapter`] in runs of up to a few hundred. An adapter sends a whole run, waits for the
//! broker's confirmations (Kafka delivery reports, MQTT PUBACKs, AMQP publisher confirms,
//! Redis replies) and says how many, from the start of the run, are confirmed. Everything
//! after that is sent again later, so delivery is at least once; every message carries a
//! stable [`Message::id`] so consumers can drop the repeats.
//!
//! Adapters are built from the stage's settings without connecting ([`open`] only parses and
//! validates), connect on their first [`Adapter::publish`], and reconnect on the next call
//! after a failure: the delivery thread retries with backoff, so a broker outage delays events
//! but loses none.

use std::time::Duration;

use crate::stage::StageError;

/// One message as the spool stores it and an adapter sends it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// The sensor id: the partition key (Kafka), routing/topic part (MQTT, AMQP), stream field
    /// (Redis), so one camera's messages stay in order.
    pub key: String,
    /// Stable across re-sends: the same frame (and object) always gets the same id. Adapters
    /// send it as a header or property where the protocol has one (Kafka header `message-id`,
    /// AMQP `message_id`, MQTT 5 user property `message-id`, Redis field `messageId`).
    pub id: String,
    /// The serialized payload (JSON text or Protobuf bytes).
    pub payload: Vec<u8>,
}

/// Why a run of messages was not wholly confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    /// How many messages from the start of the run the broker confirmed; the delivery thread
    /// commits those and sends the rest again.
    pub confirmed: usize,
    pub kind: ErrorKind,
    /// One line for the log and the end-of-run error: what failed and where, credentials
    /// masked.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The broker is unreachable, disconnected, or did not confirm in time: retry later.
    Unavailable,
    /// The broker refused the connection or the destination (bad credentials, not
    /// authorised, unknown topic with auto-create off): retried with backoff, since an
    /// operator may fix it, and reported as an error meanwhile.
    Refused,
    /// The broker refused message `confirmed` itself (e.g. larger than the broker accepts):
    /// it will never be accepted, so it is set aside in the spool's `rejected.jsonl` and
    /// delivery goes on with the next one.
    Rejected,
}

impl PublishError {
    pub fn new(confirmed: usize, kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            confirmed,
            kind,
            detail: detail.into(),
        }
    }
}

/// An outside messaging system. Called only from the delivery thread.
pub trait Adapter: Send {
    /// Sends `messages` in order and returns once the broker has confirmed every one of them,
    /// connecting first if there is no connection. On failure, says how many from the start
    /// were confirmed; the adapter must be usable again afterwards (reconnecting as needed).
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError>;

    /// Where messages go, with credentials masked, for logs and the summary.
    fn describe(&self) -> String;
}

/// What every network adapter is built from: the stage's `uri`, its `[options]` table
/// (adapter-specific keys, validated by the adapter), and the network timeout.
#[derive(Debug, Clone)]
pub struct AdapterConfig<'a> {
    pub uri: &'a str,
    pub options: &'a toml::Table,
    /// How long to wait for a connection or a confirmation before calling the broker
    /// unavailable.
    pub timeout: Duration,
    /// Which replica of the stage publishes, so replicas can tell themselves apart to the
    /// broker (e.g. MQTT client ids, which a broker allows only once at a time).
    pub replica: u32,
}

/// The URI schemes [`open`] knows, for error messages.
pub const SCHEMES: &[&str] = &[
    "amqp",
    "amqps",
    "azure-iot",
    "exec",
    "file",
    "kafka",
    "mqtt",
    "mqtts",
    "redis",
];

/// Builds the adapter for `config.uri` without connecting; `None` for `file://` (which the
/// stage writes directly, without a spool). Unknown schemes and bad options are errors.
pub fn open(config: &AdapterConfig) -> Result<Option<Box<dyn Adapter>>, StageError> {
    let scheme = config.uri.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("file") | None => {
            reject_options(config, "file")?;
            Ok(None)
        }
        Some("kafka") => Ok(Some(Box::new(super::kafka::KafkaProducer::new(config)?))),
        Some("redis") => Ok(Some(Box::new(super::redis::RedisStream::new(config)?))),
        Some("amqp" | "amqps") => Ok(Some(Box::new(super::amqp::AmqpExchange::new(config)?))),
        Some("mqtt" | "mqtts") => Ok(Some(Box::new(super::mqtt::open(config)?))),
        Some("azure-iot") => Ok(Some(Box::new(super::azure_iot::open(config)?))),
        Some("exec") => Ok(Some(Box::new(super::process::ProcessAdapter::new(config)?))),
        Some(other) => Err(StageError::Settings(format!(
            "unsupported broker URI scheme `{other}` in `{}` (supported: {})",
            crate::source::redact(config.uri),
            SCHEMES.join(", ")
        ))),
    }
}

/// For adapters without options: any key in `[options]` is a mistake worth naming.
pub fn reject_options(config: &AdapterConfig, adapter: &str) -> Result<(), StageError> {
    match config.options.keys().next() {
        Some(key) => Err(StageError::Settings(format!(
            "unknown option `{key}` for the {adapter} adapter"
        ))),
        None => Ok(()),
    }
}

/// Parses `[options]` into an adapter's own typed options (`#[serde(deny_unknown_fields)]`),
/// naming the adapter and the offending key on error.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    config: &AdapterConfig,
    adapter: &str,
) -> Result<T, StageError> {
    crate::settings::parse(config.options)
        .map_err(|e| StageError::Settings(format!("{adapter} options: {e}")))
}
