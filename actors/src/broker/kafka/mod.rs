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
//! delivery reports until every message of the run has one (at most the timeout plus about a
//! second); a run is confirmed only up to the first message whose report is not a success.
//! The producer and its connections are kept across runs that succeed; after any other failure
//! than a refused message the next run starts a new producer.

mod config;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use self::config::{config_error, producer_config, KafkaTarget};
use super::adapter::{Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::stage::StageError;

/// The header every message carries with [`Message::id`].
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// librdkafka checks message timeouts about once a second, so a delivery report for a message
/// that timed out may come up to this long after `message.timeout.ms`.
const TIMEOUT_SCAN_SLACK: Duration = Duration::from_millis(1500);

/// How long to wait, after giving up on a run, for librdkafka to report the messages it purged.
const PURGE_WAIT: Duration = Duration::from_millis(500);

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

    fn error(
        &self,
        confirmed: usize,
        kind: ErrorKind,
        what: impl std::fmt::Display,
    ) -> PublishError {
        PublishError::new(
            confirmed,
            kind,
            format!("cannot publish to {}: {what}", self.target.display),
        )
    }

    /// Hands the messages of the run to librdkafka in order, serving delivery reports while
    /// its queue is full (until `deadline`). Returns how many it took, and why it did not take
    /// the next one (if it did not).
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

    /// What a run's reports say: `None` when every message was confirmed, else how many were
    /// and why the next one was not.
    fn failure(
        &self,
        messages: &[Message],
        results: &[Option<Result<(), RDKafkaErrorCode>>],
        sent: usize,
        send_error: Option<RDKafkaErrorCode>,
        timeout_cause: Option<(RDKafkaErrorCode, String)>,
    ) -> Option<PublishError> {
        let confirmed = results
            .iter()
            .take_while(|r| matches!(r, Some(Ok(()))))
            .count();
        if confirmed == messages.len() {
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
        }
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
        let failure = self.failure(messages, &results, sent, send_error, timeout_cause);

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
                    e.detail
                        .push_str(&format!("; fatal producer error {code}: {reason}"));
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
            replica: 0,
        })
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
            (
                "\"linger.msec\" = 5",
                "`linger.msec` = `5` is not a librdkafka producer property",
            ),
            (
                "acks = \"most\"",
                "`acks` = `most` has a value librdkafka does not accept",
            ),
            (
                "\"linger.ms\" = [1]",
                "`linger.ms` must be a string, number or boolean",
            ),
            ("\"bootstrap.servers\" = \"x:1\"", "given in the URI"),
            ("\"message.timeout.ms\" = 100", "stage's `timeout`"),
            (
                "\"delivery.report.only.error\" = true",
                "delivery report for every message",
            ),
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
        let err = adapter(
            "kafka://u:pw@localhost/t",
            "\"security.protocol\" = \"plaintext\"",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("does not authenticate"), "{err}");
        let err = adapter(
            "kafka://localhost/t",
            "\"ssl.key.password\" = [\"hunter2\"]",
        )
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
            replica: 0,
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
            replica: 0,
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
        assert!(
            err.detail.contains("id big") && err.detail.contains("5000 bytes"),
            "{}",
            err.detail
        );
    }
}
