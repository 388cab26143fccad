//! The `kafka://` adapter: an idempotent librdkafka producer (the `rdkafka` crate, librdkafka
//! built from its bundled sources).
//!
//! URI: `kafka://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/TOPIC` (port 9092 by default).
//! Credentials turn on SASL (`PLAIN` over `SASL_PLAINTEXT` unless the options choose another
//! mechanism or `SASL_SSL`); user and password may be percent-encoded.
//!
//! `[options]` are librdkafka producer properties (CONFIGURATION.md), given as strings,
//! numbers or booleans, like the proto-cfg file of DeepStream's Kafka adapter; they are
//! checked by librdkafka itself when the stage is checked. Our defaults, which options may
//! override: `enable.idempotence = true`, `acks = "all"`, `linger.ms = 5`,
//! `partitioner = "murmur2_random"` (the Java client's choice, so other producers keyed by
//! sensor id land on the same partitions), `reconnect.backoff.max.ms = 1000`,
//! `topic.metadata.propagation.max.ms` = half the timeout, `client.id = "vidmesh"`.
//! `message.timeout.ms` is the stage's `timeout` and cannot be set here: it bounds how long a
//! run of messages may wait for the broker.
//!
//! Each message is keyed by its sensor id (one camera's messages stay in one partition, in
//! order) and carries the header `message-id`. [`Adapter::publish`] enqueues a run, then polls
//! delivery reports until every message of the run has one; a run is confirmed only up to the
//! first message whose report is not a success.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaConfRes;

use super::adapter::{Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::source::redact;
use crate::stage::StageError;

/// The header every message carries with [`Message::id`].
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// librdkafka checks message timeouts about once a second, so a delivery report for a message
/// that timed out may come up to this long after `message.timeout.ms`.
const TIMEOUT_SCAN_SLACK: Duration = Duration::from_millis(1500);

/// How long to wait, after giving up on a run, for librdkafka to report the messages it purged.
const PURGE_WAIT: Duration = Duration::from_millis(500);

/// Where a `kafka://` URI points.
#[derive(Clone, PartialEq)]
pub struct KafkaTarget {
    /// `bootstrap.servers`: `host:port` pairs, comma-separated.
    bootstrap: String,
    topic: String,
    /// SASL user and password, percent-decoded.
    credentials: Option<(String, String)>,
    /// The URI with its password masked, for messages.
    display: String,
}

// Written by hand so that the password never reaches a log through `{:?}`.
impl std::fmt::Debug for KafkaTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTarget")
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl KafkaTarget {
    pub fn parse(uri: &str) -> Result<Self, StageError> {
        let display = redact(uri);
        let bad = |why: &str| {
            StageError::Settings(format!(
                "bad Kafka URI `{display}`: {why} \
                 (expected kafka://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/TOPIC)"
            ))
        };
        let rest = uri
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("it does not start with kafka://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad(
                "query strings are not read; producer properties go in the stage's `options`",
            ));
        }
        let (authority, topic) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no topic"))?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("credentials need both a user and a password"))?;
                let user = percent_decode(user).map_err(|e| bad(&format!("user: {e}")))?;
                let password =
                    percent_decode(password).map_err(|e| bad(&format!("password: {e}")))?;
                if user.is_empty() {
                    return Err(bad("the user name is empty"));
                }
                Some((user, password))
            }
        };
        let mut servers = Vec::new();
        for server in hosts.split(',') {
            servers.push(parse_server(server).map_err(|e| bad(&e))?);
        }
        check_topic(topic).map_err(|e| bad(&e))?;
        Ok(Self {
            bootstrap: servers.join(","),
            topic: topic.to_string(),
            credentials,
            display,
        })
    }
}

/// `host[:port]` or `[v6addr][:port]` → `host:port`, with Kafka's default port.
fn parse_server(server: &str) -> Result<String, String> {
    let (host, port) = if let Some(v6) = server.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in broker `{server}`"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("junk after `]` in broker `{server}`"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match server.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (server.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(if server.is_empty() {
            "an empty broker address".to_string()
        } else {
            format!("broker `{server}` has no host")
        });
    }
    if host.contains(|c: char| c.is_whitespace() || c == '@' || c == '/') {
        return Err(format!("broker host `{host}` is not a host name"));
    }
    let port = match port {
        None => 9092,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("broker `{server}` has a bad port `{p}`"))?,
    };
    Ok(format!("{host}:{port}"))
}

/// Kafka's own rule for topic names, checked here so a typo fails at check time rather than
/// as a broker error on the first message.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("it names no topic".to_string());
    }
    if topic.contains('/') {
        return Err(format!("`{topic}` is not one topic name"));
    }
    if topic == "." || topic == ".." || topic.len() > 249 {
        return Err(format!("`{topic}` is not a valid topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic `{topic}` contains `{c}`; topic names use ASCII letters, digits, `.`, `_`, `-`"
        ));
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding that is not UTF-8".to_string())
}

/// Properties the adapter owns; setting them in `[options]` is a mistake worth naming.
fn reserved(key: &str) -> Option<&'static str> {
    match key {
        "bootstrap.servers" | "metadata.broker.list" => {
            Some("the brokers are given in the URI (kafka://HOST:PORT,.../TOPIC)")
        }
        "message.timeout.ms" | "delivery.timeout.ms" => {
            Some("set the stage's `timeout`, which the adapter passes on as message.timeout.ms")
        }
        "delivery.report.only.error" => {
            Some("the adapter needs a delivery report for every message to confirm it")
        }
        "transactional.id" => Some("the adapter publishes with an idempotent producer, not transactions"),
        _ => None,
    }
}

/// Values of these keys are never repeated in messages.
fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

/// The producer configuration from the URI, `[options]` and the timeout, without
/// `bootstrap.servers` (see [`KafkaProducer::new`] for why).
fn producer_config(
    target: &KafkaTarget,
    options: &toml::Table,
    timeout: Duration,
) -> Result<ClientConfig, StageError> {
    let timeout_ms = timeout.as_millis().clamp(1, i32::MAX as u128) as u64;
    let mut config = ClientConfig::new();
    config
        .set("client.id", "vidmesh")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        // linger.ms must stay below message.timeout.ms, even for a tiny test timeout.
        .set("linger.ms", (timeout_ms / 2).min(5).to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        // librdkafka waits up to 10 s between reconnection attempts by default; the Java
        // client's 1 s gets events flowing again soon after a broker comes back.
        .set("reconnect.backoff.max.ms", "1000")
        // Without this, a topic the brokers do not know keeps its messages queued for 30 s and
        // they fail as plain timeouts; with it they fail as "unknown topic", which the
        // delivery thread reports as a refusal rather than an outage.
        .set(
            "topic.metadata.propagation.max.ms",
            (timeout_ms / 2).max(1).to_string(),
        );
    config.set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in options {
        if let Some(why) = reserved(key) {
            return Err(StageError::Settings(format!(
                "kafka option `{key}` cannot be set: {why}"
            )));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(StageError::Settings(format!(
                    "kafka option `{key}` must be a string, number or boolean (a librdkafka \
                     property), not {}",
                    other.type_str()
                )))
            }
        };
        config.set(key.as_str(), text);
    }
    if let Some((user, password)) = &target.credentials {
        for key in ["sasl.username", "sasl.password"] {
            if options.contains_key(key) {
                return Err(StageError::Settings(format!(
                    "kafka option `{key}` conflicts with the credentials in the URI `{}`; give \
                     them in one place",
                    target.display
                )));
            }
        }
        match config.get("security.protocol").map(str::to_ascii_lowercase) {
            None => {
                config.set("security.protocol", "sasl_plaintext");
            }
            Some(p) if p.starts_with("sasl_") => {}
            Some(p) => {
                return Err(StageError::Settings(format!(
                    "the URI `{}` has credentials but kafka option `security.protocol` is \
                     `{p}`, which does not authenticate; use sasl_plaintext or sasl_ssl",
                    target.display
                )))
            }
        }
        if config.get("sasl.mechanism").is_none() && config.get("sasl.mechanisms").is_none() {
            config.set("sasl.mechanism", "PLAIN");
        }
        config.set("sasl.username", user).set("sasl.password", password);
    }
    Ok(config)
}

/// A client-config error from librdkafka, worded for the topology's author.
fn config_error(display: &str, e: KafkaError) -> StageError {
    match e {
        KafkaError::ClientConfig(res, description, key, value) => {
            let value = if is_secret(&key) { "***".to_string() } else { value };
            let what = match res {
                RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN => "is not a librdkafka producer property",
                _ => "has a value librdkafka does not accept",
            };
            // librdkafka's description repeats the value; leave it out for secrets.
            let description = if is_secret(&key) {
                String::new()
            } else {
                format!(": {description}")
            };
            StageError::Settings(format!(
                "kafka option `{key}` = `{value}` {what}{description} (for {display})"
            ))
        }
        other => StageError::Settings(format!("kafka producer settings for {display}: {other}")),
    }
}

/// Which message of which run a delivery report is about. Reports of an earlier run that
/// arrive late (after it was given up) are recognised by `run` and ignored.
#[derive(Debug)]
struct Tag {
    run: u64,
    index: usize,
}

#[derive(Debug, Default)]
struct Reports {
    run: u64,
    /// One entry per message of the current run, filled by the delivery callback.
    results: Vec<Option<Result<(), RDKafkaErrorCode>>>,
    /// Client-wide errors librdkafka reported since the last successful delivery: they
    /// explain why messages timed out. A refusal (authentication, authorisation) is kept
    /// apart because the disconnection that follows it would otherwise hide it, and
    /// librdkafka reports each distinct error of a broker connection only once.
    refusal: Option<(RDKafkaErrorCode, String)>,
    other_error: Option<(RDKafkaErrorCode, String)>,
}

impl Reports {
    /// Why messages of this run timed out, as far as the client knows.
    fn timeout_cause(&self) -> Option<&(RDKafkaErrorCode, String)> {
        self.refusal.as_ref().or(self.other_error.as_ref())
    }
}

/// Receives librdkafka's callbacks, all on the delivery thread inside `poll`.
#[derive(Debug, Default)]
struct DeliveryContext {
    reports: Mutex<Reports>,
}

impl DeliveryContext {
    fn reports(&self) -> MutexGuard<'_, Reports> {
        // A poisoned lock only means another callback panicked; the data is still usable.
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka logs every failed connection attempt; the delivery thread already reports
        // each failed run with its reason, so these stay at debug level.
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", "{facility}: {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "{facility}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if let Some(code) = error.rdkafka_error_code() {
            let mut reports = self.reports();
            let slot = match classify(code) {
                ErrorKind::Refused => &mut reports.refusal,
                _ => &mut reports.other_error,
            };
            *slot = Some((code, reason.to_string()));
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<Tag>) {
        let mut reports = self.reports();
        if tag.run != reports.run {
            return;
        }
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail)),
        };
        if outcome.is_ok() {
            reports.refusal = None;
            reports.other_error = None;
        }
        if let Some(slot) = reports.results.get_mut(tag.index) {
            *slot = Some(outcome);
        }
    }
}

/// What a failed delivery means for the delivery thread.
fn classify(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        // The message itself can never be accepted as it is.
        C::MessageSizeTooLarge | C::InvalidRecord | C::InvalidMessageSize => ErrorKind::Rejected,
        // The brokers refuse us or the destination; an operator has to act.
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::PolicyViolation => ErrorKind::Refused,
        // Transport failures, timeouts, leader changes, a full queue, a fenced producer: all
        // pass with time or a new producer.
        _ => ErrorKind::Unavailable,
    }
}

/// librdkafka's name for an error, with what to do about those an operator must fix.
fn explain(code: RDKafkaErrorCode, topic: &str) -> String {
    use RDKafkaErrorCode as C;
    let hint = match code {
        C::UnknownTopic | C::UnknownTopicOrPartition => format!(
            "; topic `{topic}` does not exist and the brokers do not create it: create it, or \
             enable auto-creation on the brokers"
        ),
        C::Authentication | C::SaslAuthenticationFailed => {
            "; check the user and password in the URI and the `sasl.mechanism` option".into()
        }
        C::TopicAuthorizationFailed => format!("; the user may not write to topic `{topic}`"),
        C::ClusterAuthorizationFailed => "; the user may not write idempotently (IDEMPOTENT_WRITE \
             on the cluster): grant it, or set the option enable.idempotence = false"
            .into(),
        _ => String::new(),
    };
    format!("{code}{hint}")
}

/// The adapter: the parsed target and configuration, and the producer once connected.
pub struct KafkaProducer {
    target: KafkaTarget,
    config: ClientConfig,
    timeout: Duration,
    producer: Option<BaseProducer<DeliveryContext>>,
    /// Numbers runs, so late reports of a given-up run are not taken for the current one.
    run: u64,
}

impl KafkaProducer {
    /// Parses the URI and options and has librdkafka check the complete configuration,
    /// without connecting.
    pub fn new(config: &AdapterConfig) -> Result<Self, StageError> {
        let target = KafkaTarget::parse(config.uri)?;
        let producer_config = producer_config(&target, config.options, config.timeout)?;
        // librdkafka checks property names and values when they are set, and their
        // combination (e.g. idempotence with acks=1) when the client is created. A client
        // without `bootstrap.servers` does not connect, so creating and dropping one here
        // catches every configuration error at check time.
        let probe: BaseProducer<DeliveryContext> = producer_config
            .create_with_context(DeliveryContext::default())
            .map_err(|e| config_error(&target.display, e))?;
        drop(probe);
        let mut producer_config = producer_config;
        producer_config.set("bootstrap.servers", &target.bootstrap);
        Ok(Self {
            target,
            config: producer_config,
            timeout: config.timeout,
            producer: None,
            run: 0,
        })
    }

    fn error(&self, confirmed: usize, kind: ErrorKind, what: impl std::fmt::Display) -> PublishError {
        PublishError::new(
            confirmed,
            kind,
            format!("cannot publish to {}: {what}", self.target.display),
        )
    }

    /// Sends every message of the run and polls until each has a delivery report or
    /// `deadline` passes. Returns how many were handed to librdkafka, and why the next one
    /// could not be (if one could not).
    fn send_run(
        &self,
        producer: &BaseProducer<DeliveryContext>,
        messages: &[Message],
        deadline: Instant,
    ) -> (usize, Option<KafkaError>) {
        for (index, m) in messages.iter().enumerate() {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                key: MESSAGE_ID_HEADER,
                value: Some(m.id.as_str()),
            });
            let mut record = BaseRecord::with_opaque_to(
                &self.target.topic,
                Box::new(Tag {
                    run: self.run,
                    index,
                }),
            )
            .key(m.key.as_str())
            .payload(m.payload.as_slice())
            .headers(headers);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    // librdkafka's buffer is full: serve delivery reports to make room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return (index, Some(e)),
                }
            }
        }
        (messages.len(), None)
    }

    /// Polls until the first `sent` messages of the run all have a report, or `deadline`.
    fn wait_for_reports(
        &self,
        producer: &BaseProducer<DeliveryContext>,
        sent: usize,
        deadline: Instant,
    ) -> bool {
        loop {
            let missing = producer.context().reports().results[..sent]
                .iter()
                .any(Option::is_none);
            if !missing {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            producer.poll((deadline - now).min(Duration::from_millis(100)));
        }
    }
}

impl Adapter for KafkaProducer {
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let producer = match self.producer.take() {
            Some(p) => p,
            None => self
                .config
                .create_with_context::<_, BaseProducer<DeliveryContext>>(DeliveryContext::default())
                // The configuration was checked in `new`; what is left is the system (threads,
                // sockets, name resolution setup), which may pass.
                .map_err(|e| self.error(0, ErrorKind::Unavailable, e))?,
        };
        self.run += 1;
        {
            let mut reports = producer.context().reports();
            reports.run = self.run;
            reports.results = vec![None; messages.len()];
        }
        // Every message times out in librdkafka after `timeout`; the slack covers its
        // once-a-second timeout scan, so in practice the deadline below is never reached.
        let deadline = Instant::now() + self.timeout + TIMEOUT_SCAN_SLACK;
        let (sent, send_error) = self.send_run(&producer, messages, deadline);
        let send_error =
            send_error.map(|e| e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
        // Waiting for every report, even after a failure, keeps a run's stragglers from
        // landing after the re-sent messages and breaking the order.
        let complete = self.wait_for_reports(&producer, sent, deadline);

        let (results, timeout_cause) = {
            let reports = producer.context().reports();
            (reports.results.clone(), reports.timeout_cause().cloned())
        };
        let confirmed = results
            .iter()
            .take_while(|r| matches!(r, Some(Ok(()))))
            .count();
        let failure = if confirmed == messages.len() {
            None
        } else if confirmed < sent {
            let explained = |code: RDKafkaErrorCode| match (&timeout_cause, code) {
                // A timeout says nothing about why; the client's last error usually does
                // (all brokers down, authentication failed).
                (Some((cause, reason)), RDKafkaErrorCode::MessageTimedOut) => (
                    classify(*cause),
                    format!(
                        "{}: {reason} (not confirmed within {:?})",
                        explain(*cause, &self.target.topic),
                        self.timeout
                    ),
                ),
                _ => (classify(code), explain(code, &self.target.topic)),
            };
            let (kind, what) = match results[confirmed] {
                Some(Err(code)) => explained(code),
                _ => explained(RDKafkaErrorCode::MessageTimedOut),
            };
            let what = match kind {
                ErrorKind::Rejected => format!(
                    "message {confirmed} of the run (id {}, {} bytes) was refused: {what}",
                    messages[confirmed].id,
                    messages[confirmed].payload.len()
                ),
                _ => what,
            };
            Some(self.error(confirmed, kind, what))
        } else {
            // Every message sent was confirmed; the next could not be handed to librdkafka.
            let code = send_error.unwrap_or(RDKafkaErrorCode::Fail);
            let kind = classify(code);
            let what = match kind {
                ErrorKind::Rejected => format!(
                    "message {confirmed} of the run (id {}, {} bytes) was refused: {code} \
                     (the producer's message.max.bytes, default 1000000, may be raised in \
                     `options`)",
                    messages[confirmed].id,
                    messages[confirmed].payload.len()
                ),
                _ => explain(code, &self.target.topic),
            };
            Some(self.error(confirmed, kind, what))
        };

        // The producer (and its connections) is kept only after a clean run, where nothing
        // failed except messages refused for their size or content. After anything else the
        // next run starts a new producer, with a new producer id: after message timeouts
        // librdkafka bumps the idempotent producer's epoch on its own, which not every broker
        // accepts (tansu fails every later request of that producer), and messages still
        // outstanding must not overtake the re-sent ones.
        let only_rejections = |code: &RDKafkaErrorCode| classify(*code) == ErrorKind::Rejected;
        let clean = complete
            && results[..sent].iter().all(|r| match r {
                Some(Err(code)) => only_rejections(code),
                _ => true,
            })
            && send_error.as_ref().is_none_or(only_rejections);
        let fatal = producer.client().fatal_error();
        if clean && fatal.is_none() {
            self.producer = Some(producer);
        } else {
            if !complete {
                producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                producer.poll(PURGE_WAIT);
            }
            tracing::debug!(
                destination = %self.target.display,
                fatal = ?fatal,
                "kafka: the next run starts a new producer"
            );
        }
        match failure {
            None => Ok(()),
            Some(mut e) => {
                if let Some((code, reason)) = fatal {
                    e.detail.push_str(&format!("; fatal producer error {code}: {reason}"));
                }
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        self.target.display.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    fn adapter(uri: &str, opts: &str) -> Result<KafkaProducer, StageError> {
        let options = options(opts);
        KafkaProducer::new(&AdapterConfig {
            uri,
            options: &options,
            timeout: Duration::from_secs(2),
        })
    }

    #[test]
    fn uri_names_brokers_topic_and_credentials_and_hides_the_password() {
        let t = KafkaTarget::parse("kafka://app:s3%40cret@k1:9093,k2,[::1]:9094/cam-events.v1")
            .unwrap();
        assert_eq!(t.bootstrap, "k1:9093,k2:9092,[::1]:9094");
        assert_eq!(t.topic, "cam-events.v1");
        assert_eq!(
            t.credentials,
            Some(("app".to_string(), "s3@cret".to_string()))
        );
        assert!(!t.display.contains("s3"), "{}", t.display);
        assert!(!format!("{t:?}").contains("s3"), "{t:?}");
        let t = KafkaTarget::parse("kafka://localhost:9092/events").unwrap();
        assert_eq!(t.credentials, None);
        assert_eq!(t.bootstrap, "localhost:9092");
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        for (bad, why) in [
            ("redis://localhost/events", "kafka://"),
            ("kafka://localhost:9092", "no topic"),
            ("kafka://localhost:9092/", "no topic"),
            ("kafka://localhost/a/b", "not one topic"),
            ("kafka://localhost/a b", "contains ` `"),
            ("kafka://localhost:0/t", "bad port"),
            ("kafka://localhost:x/t", "bad port"),
            ("kafka://:9092/t", "no host"),
            ("kafka://a,,b/t", "empty broker"),
            ("kafka://user@localhost/t", "user and a password"),
            ("kafka://u:p%zz@localhost/t", "hex"),
            ("kafka://localhost/t?acks=1", "options"),
            ("kafka://[::1/t", "unclosed"),
        ] {
            let err = KafkaTarget::parse(bad).err().unwrap().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let err = KafkaTarget::parse("kafka://u:hunter2@localhost:x/t")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn defaults_and_credentials_make_the_producer_config() {
        let target = KafkaTarget::parse("kafka://app:pw@localhost/events").unwrap();
        let config = producer_config(&target, &options(""), Duration::from_secs(2)).unwrap();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("2000"));
        assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("app"));
        assert_eq!(config.get("sasl.password"), Some("pw"));

        let opts = options(
            "\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"linger.ms\" = 20\n\
             \"compression.type\" = \"gzip\"\n\"enable.idempotence\" = false\nacks = 1",
        );
        let config = producer_config(&target, &opts, Duration::from_secs(2)).unwrap();
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("linger.ms"), Some("20"));
        assert_eq!(config.get("enable.idempotence"), Some("false"));
        assert_eq!(config.get("acks"), Some("1"));
    }

    #[test]
    fn a_valid_configuration_is_accepted_without_a_broker() {
        let a = adapter(
            "kafka://app:pw@127.0.0.1:1/events",
            "\"compression.type\" = \"gzip\"\n\"batch.num.messages\" = 500",
        )
        .unwrap();
        assert_eq!(a.describe(), "kafka://app:***@127.0.0.1:1/events");
    }

    #[test]
    fn option_errors_name_the_key() {
        for (opts, expect) in [
            ("\"linger.msec\" = 5", "`linger.msec` = `5` is not a librdkafka producer property"),
            ("acks = \"most\"", "`acks` = `most` has a value librdkafka does not accept"),
            ("\"linger.ms\" = [1]", "`linger.ms` must be a string, number or boolean"),
            ("\"bootstrap.servers\" = \"x:1\"", "given in the URI"),
            ("\"message.timeout.ms\" = 100", "stage's `timeout`"),
            ("\"delivery.report.only.error\" = true", "delivery report for every message"),
            // A combination only the client creation checks.
            ("acks = 1", "acks"),
        ] {
            let err = adapter("kafka://localhost/events", opts)
                .err()
                .unwrap_or_else(|| panic!("{opts} was accepted"))
                .to_string();
            assert!(err.contains(expect), "{opts}: {err}");
        }
    }

    #[test]
    fn credentials_conflicts_and_secret_values_stay_hidden() {
        let err = adapter("kafka://u:pw@localhost/t", "\"sasl.password\" = \"other\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("conflicts") && !err.contains("other"), "{err}");
        let err = adapter("kafka://u:pw@localhost/t", "\"security.protocol\" = \"plaintext\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not authenticate"), "{err}");
        let err = adapter("kafka://localhost/t", "\"ssl.key.password\" = [\"hunter2\"]")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn delivery_errors_map_to_what_the_delivery_thread_does() {
        use RDKafkaErrorCode as C;
        for code in [C::MessageSizeTooLarge, C::InvalidRecord] {
            assert_eq!(classify(code), ErrorKind::Rejected, "{code:?}");
        }
        for code in [
            C::Authentication,
            C::SaslAuthenticationFailed,
            C::TopicAuthorizationFailed,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownPartition,
        ] {
            assert_eq!(classify(code), ErrorKind::Refused, "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::Resolve,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::QueueFull,
            C::OutOfOrderSequenceNumber,
        ] {
            assert_eq!(classify(code), ErrorKind::Unavailable, "{code:?}");
        }
    }

    #[test]
    fn an_unreachable_broker_is_unavailable_within_the_timeout() {
        // Port 1 on loopback refuses connections at once.
        let options = options("");
        let mut a = KafkaProducer::new(&AdapterConfig {
            uri: "kafka://127.0.0.1:1/events",
            options: &options,
            timeout: Duration::from_millis(500),
        })
        .unwrap();
        let messages: Vec<Message> = (0..3)
            .map(|i| Message {
                key: "cam-0".into(),
                id: format!("m{i}"),
                payload: b"{}".to_vec(),
            })
            .collect();
        let start = Instant::now();
        let err = a.publish(&messages).unwrap_err();
        assert_eq!(err.confirmed, 0);
        assert_eq!(err.kind, ErrorKind::Unavailable, "{}", err.detail);
        assert!(err.detail.contains("127.0.0.1:1"), "{}", err.detail);
        assert!(
            start.elapsed() < Duration::from_millis(500) + TIMEOUT_SCAN_SLACK + PURGE_WAIT,
            "{:?}",
            start.elapsed()
        );
        // Usable again afterwards.
        let err = a.publish(&messages[..1]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{}", err.detail);
    }

    #[test]
    fn an_oversized_message_is_rejected_without_reaching_the_broker() {
        // librdkafka checks message.max.bytes when the message is enqueued, so no broker is
        // needed.
        let options = options("\"message.max.bytes\" = 1000");
        let mut a = KafkaProducer::new(&AdapterConfig {
            uri: "kafka://127.0.0.1:1/events",
            options: &options,
            timeout: Duration::from_millis(300),
        })
        .unwrap();
        let big = Message {
            key: "cam-0".into(),
            id: "big".into(),
            payload: vec![b'x'; 5000],
        };
        let err = a.publish(std::slice::from_ref(&big)).unwrap_err();
        assert_eq!(err.confirmed, 0);
        assert_eq!(err.kind, ErrorKind::Rejected, "{}", err.detail);
        assert!(err.detail.contains("id big") && err.detail.contains("5000 bytes"), "{}", err.detail);
    }
}
