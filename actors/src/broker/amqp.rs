//! The `amqp://` adapter: AMQP 0-9-1 (RabbitMQ) with publisher confirms.
//!
//! Each message is one `basic.publish` to the configured exchange, routing key from the
//! `routing_key` template (`{sensor}` is the message key), with the properties `message_id`
//! (the stable [`Message::id`]), `content_type`, `delivery_mode` 2 (persistent) and the header
//! `sensorId`. The channel is in confirm mode: a run goes out back to back and then the
//! broker's acks are awaited in order, so `confirmed` is exactly the acked prefix.
//!
//! URI: `amqp[s]://[USER[:PASSWORD]@]HOST[:PORT][/VHOST][?heartbeat=S&frame_max=B&channel_max=N]`,
//! user and password `guest` when absent, port 5672 (5671 for `amqps://`, TLS), vhost `/` when
//! the path is empty or `/` (any other vhost without its leading slash, percent-encoded:
//! `/%2Fprod` is `/prod`). `amqps://` checks the broker's certificate and host name against
//! the system's roots and `ca_file`'s certificates.
//!
//! Options (the names of DeepStream's AMQP adapter config where it has one):
//! - `exchange` (default `amq.topic`; `""` is the default exchange, routing by queue name);
//! - `routing_key` (default `{sensor}`): `{sensor}` is replaced by the sensor id;
//! - `declare_exchange` (default false) and `exchange_type` (`topic` by default): declare a
//!   durable exchange on connect; otherwise it must exist, which is checked on connect;
//! - `persistent` (default true): delivery mode 2, so queued messages survive a broker restart;
//! - `mandatory` (default true): a message no queue is bound for comes back from the broker
//!   and is reported (`Refused`) instead of vanishing;
//! - `content_type` (default `application/json`);
//! - `max_message_size` (bytes, default unset): the broker's limit, if known; larger messages
//!   are set aside without being sent. Otherwise the limit is learned from the broker's first
//!   refusal, which closes the channel, so the unconfirmed messages sent just before the large
//!   one are sent again (repeats with the same message id);
//! - `ca_file` (`amqps://` only): a PEM file of CA certificates to trust besides the system's.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Deserialize;

use super::adapter::{parse_options, Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::source::redact;
use crate::stage::StageError;

/// AMQP short strings (exchange, routing key, message id, content type) hold at most this many
/// bytes.
const SHORT_STRING_MAX: usize = 255;

/// Where an `amqp://` URI points, parsed once when the stage is built.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpTarget {
    /// What lapin connects to. Built here rather than by lapin's own parser, which takes an
    /// IP address for a missing host (`Url::domain` is `None` for `127.0.0.1`).
    uri: AMQPUri,
    /// The URI with its password masked, for messages.
    display: String,
}

impl AmqpTarget {
    pub fn parse(uri: &str, timeout: Duration) -> Result<Self, StageError> {
        let display = redact(uri);
        let bad = |why: String| StageError::Settings(format!("AMQP URI `{display}`: {why}"));
        let url = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        let (scheme, default_port) = match url.scheme() {
            "amqp" => (AMQPScheme::AMQP, 5672),
            "amqps" => (AMQPScheme::AMQPS, 5671),
            other => return Err(bad(format!("scheme `{other}` is not amqp or amqps"))),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            // lapin resolves (host, port) pairs, which take IPv6 addresses without brackets.
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(bad("no host; expected amqp://HOST[:PORT][/VHOST]".into())),
        };
        let decode = |part: &str, what: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad(format!("the {what} is not UTF-8 once percent-decoded")))
        };
        // RabbitMQ's URI spec: the vhost is the one path segment, `/` inside it written %2F.
        let path = url.path().strip_prefix('/').unwrap_or(url.path());
        if path.contains('/') {
            return Err(bad(format!(
                "the vhost `{path}` contains `/`; write it as %2F (e.g. amqp://HOST/%2Fprod)"
            )));
        }
        let vhost = match path {
            "" => "/".to_string(),
            p => decode(p, "vhost")?,
        };
        let username = match url.username() {
            "" => "guest".to_string(),
            u => decode(u, "user name")?,
        };
        let password = match url.password() {
            None => "guest".to_string(),
            Some(p) => decode(p, "password")?,
        };
        let mut query = AMQPQueryString {
            // Also bounds lapin's own connection attempt, which runs on its I/O thread.
            connection_timeout: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            ..AMQPQueryString::default()
        };
        for (key, value) in url.query_pairs() {
            let number = |what: &str| {
                bad(format!(
                    "`{key}={value}` must be a whole number of {what} in range"
                ))
            };
            match key.as_ref() {
                "heartbeat" => {
                    query.heartbeat = Some(value.parse().map_err(|_| number("seconds"))?)
                }
                "frame_max" => query.frame_max = Some(value.parse().map_err(|_| number("bytes"))?),
                "channel_max" => {
                    query.channel_max = Some(value.parse().map_err(|_| number("channels"))?)
                }
                other => {
                    return Err(bad(format!(
                        "unknown query parameter `{other}` (known: heartbeat, frame_max, \
                         channel_max)"
                    )))
                }
            }
        }
        Ok(Self {
            uri: AMQPUri {
                scheme,
                authority: AMQPAuthority {
                    userinfo: AMQPUserInfo { username, password },
                    host,
                    port: url.port().unwrap_or(default_port),
                },
                vhost,
                query,
            },
            display,
        })
    }
}

/// What the user sets in the stage's `options` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpOptions {
    /// The exchange messages are published to. Default `amq.topic`.
    #[serde(default = "exchange_default")]
    exchange: String,
    /// The routing key; `{sensor}` is replaced by each message's sensor id. Default `{sensor}`.
    #[serde(default = "routing_key_default")]
    routing_key: String,
    /// Declare the exchange (durable) on connect. Default false: it must exist.
    #[serde(default)]
    declare_exchange: bool,
    /// `direct`, `fanout`, `topic` or `headers` (or a plugin's `x-...` type), with
    /// `declare_exchange`. Default `topic`.
    #[serde(default)]
    exchange_type: Option<String>,
    /// Delivery mode 2: queued messages survive a broker restart. Default true.
    #[serde(default = "yes")]
    persistent: bool,
    /// Have unroutable messages returned and reported. Default true.
    #[serde(default = "yes")]
    mandatory: bool,
    /// The `content_type` property. Default `application/json`.
    #[serde(default = "content_type_default")]
    content_type: String,
    /// The broker's `max_message_size` in bytes, if known. Default: learned from a refusal.
    #[serde(default)]
    max_message_size: Option<usize>,
    /// `amqps://`: PEM CA certificates to trust besides the system's roots.
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn exchange_default() -> String {
    "amq.topic".into()
}
fn routing_key_default() -> String {
    "{sensor}".into()
}
fn content_type_default() -> String {
    "application/json".into()
}
fn yes() -> bool {
    true
}

const SENSOR_PLACEHOLDER: &str = "{sensor}";

impl AmqpOptions {
    fn validate(&self) -> Result<(), StageError> {
        let bad = |why: String| StageError::Settings(format!("amqp options: {why}"));
        for (name, value) in [
            ("exchange", &self.exchange),
            ("content_type", &self.content_type),
        ] {
            if value.len() > SHORT_STRING_MAX {
                return Err(bad(format!(
                    "`{name}` is {} bytes; AMQP allows {SHORT_STRING_MAX}",
                    value.len()
                )));
            }
        }
        if self.max_message_size == Some(0) {
            return Err(bad("`max_message_size` must be at least 1".into()));
        }
        let fixed = self.routing_key.replace(SENSOR_PLACEHOLDER, "");
        if fixed.contains(['{', '}']) {
            return Err(bad(format!(
                "routing_key `{}`: only {SENSOR_PLACEHOLDER} is substituted",
                self.routing_key
            )));
        }
        if fixed.len() > SHORT_STRING_MAX {
            return Err(bad(format!(
                "routing_key is {} bytes; AMQP allows {SHORT_STRING_MAX}",
                fixed.len()
            )));
        }
        if self.declare_exchange {
            if self.exchange.is_empty() || self.exchange.starts_with("amq.") {
                return Err(bad(format!(
                    "`declare_exchange` with the built-in exchange `{}`: RabbitMQ refuses to \
                     declare names starting with `amq.`; name your own exchange",
                    self.exchange
                )));
            }
            self.exchange_kind()?;
        } else if self.exchange_type.is_some() {
            return Err(bad(
                "`exchange_type` is only used with `declare_exchange = true`".into(),
            ));
        }
        Ok(())
    }

    fn exchange_kind(&self) -> Result<lapin::ExchangeKind, StageError> {
        use lapin::ExchangeKind;
        match self.exchange_type.as_deref().unwrap_or("topic") {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            custom if custom.starts_with("x-") => Ok(ExchangeKind::Custom(custom.to_string())),
            other => Err(StageError::Settings(format!(
                "amqp options: exchange_type `{other}` is not direct, fanout, topic, headers \
                 or a plugin type (x-...)"
            ))),
        }
    }

    fn routing_key(&self, sensor: &str) -> String {
        self.routing_key.replace(SENSOR_PLACEHOLDER, sensor)
    }
}

/// A connection with one channel in confirm mode.
struct Session {
    connection: Connection,
    channel: Channel,
}

/// The `amqp://` adapter.
pub struct AmqpExchange {
    target: AmqpTarget,
    options: AmqpOptions,
    timeout: Duration,
    /// The largest body the broker takes, learned when it refused a larger one (RabbitMQ's
    /// `max_message_size` is not announced): later runs stop before such a message so that the
    /// message set aside is exactly the refused one.
    max_body: Option<usize>,
    /// `amqps://`: the extra CA certificates, read when the stage is built.
    tls: OwnedTLSConfig,
    /// lapin is async; the delivery thread is not. A runtime with a single worker thread,
    /// created on the first publish, keeps lapin's background tasks (heartbeats, the
    /// connection's RPC loop) running between calls, so an idle connection is not dropped by
    /// the broker; a current-thread runtime would only run them inside `publish`. It is
    /// tokio, which the workspace already builds (zenoh), rather than a second executor.
    runtime: Option<tokio::runtime::Runtime>,
    session: Option<Session>,
}

impl AmqpExchange {
    pub fn new(config: &AdapterConfig) -> Result<Self, StageError> {
        let options: AmqpOptions = parse_options(config, "amqp")?;
        options.validate()?;
        let target = AmqpTarget::parse(config.uri, config.timeout)?;
        let mut tls = OwnedTLSConfig::default();
        if let Some(path) = &options.ca_file {
            if target.uri.scheme != AMQPScheme::AMQPS {
                return Err(StageError::Settings(
                    "amqp options: `ca_file` needs TLS: use an amqps:// URI".into(),
                ));
            }
            let pem = std::fs::read_to_string(path).map_err(|e| {
                StageError::Settings(format!("amqp options: ca_file {}: {e}", path.display()))
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(StageError::Settings(format!(
                    "amqp options: ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            tls.cert_chain = Some(pem);
        }
        Ok(Self {
            target,
            tls,
            max_body: options.max_message_size,
            options,
            timeout: config.timeout,
            runtime: None,
            session: None,
        })
    }

    fn handle(&mut self) -> Result<tokio::runtime::Handle, PublishError> {
        if let Some(runtime) = &self.runtime {
            return Ok(runtime.handle().clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("amqp-adapter")
            .enable_all()
            .build()
            .map_err(|e| {
                PublishError::new(
                    0,
                    ErrorKind::Unavailable,
                    format!(
                        "cannot start the AMQP client's runtime for {}: {e}",
                        self.describe()
                    ),
                )
            })?;
        let handle = runtime.handle().clone();
        self.runtime = Some(runtime);
        Ok(handle)
    }

    async fn open_session(&self) -> Result<Session, Failure> {
        let step = |step: &'static str| move |cause: Cause| Failure::Setup { step, cause };
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("vidmesh broker stage"));
        // lapin's default runtime is the tokio runtime this runs on.
        let runtime = lapin::runtime::default_runtime().map_err(|e| Failure::Setup {
            step: "connecting",
            cause: Cause::Broker(e),
        })?;
        let connection = within(
            self.timeout,
            Connection::connect_uri_with_config(
                self.target.uri.clone(),
                properties,
                self.tls.clone(),
                runtime,
            ),
        )
        .await
        .map_err(step("connecting"))?;
        let setup = async {
            let channel = within(self.timeout, connection.create_channel())
                .await
                .map_err(step("opening a channel"))?;
            within(
                self.timeout,
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .map_err(step("enabling publisher confirms"))?;
            let exchange = ShortString::from(self.options.exchange.as_str());
            if self.options.declare_exchange {
                let kind = self.options.exchange_kind().map_err(|e| Failure::Setup {
                    step: "declaring the exchange",
                    cause: Cause::Local(e.to_string()),
                })?;
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                within(
                    self.timeout,
                    channel.exchange_declare(exchange, kind, options, FieldTable::default()),
                )
                .await
                .map_err(step("declaring the exchange"))?;
            } else if !self.options.exchange.is_empty() {
                // A passive declare fails with NOT_FOUND now, with a clear cause, rather than
                // on the first publish's confirm.
                let options = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                within(
                    self.timeout,
                    channel.exchange_declare(
                        exchange,
                        lapin::ExchangeKind::Topic,
                        options,
                        FieldTable::default(),
                    ),
                )
                .await
                .map_err(step("checking that the exchange exists"))?;
            }
            Ok::<_, Failure>(channel)
        };
        match setup.await {
            Ok(channel) => Ok(Session {
                connection,
                channel,
            }),
            Err(e) => {
                close(&connection, self.timeout).await;
                Err(e)
            }
        }
    }

    /// The broker-ready form of each message, up to the first one that can never be sent (too
    /// long a routing key or id, a body over the broker's limit): that one's index and why.
    fn prepare<'m>(&self, messages: &'m [Message]) -> (Vec<Outgoing<'m>>, Option<(usize, String)>) {
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let routing_key = self.options.routing_key(&m.key);
            let Ok(routing_key) = ShortString::try_new(routing_key) else {
                return (
                    out,
                    Some((
                        i,
                        format!(
                    "the routing key for sensor `{}` is longer than {SHORT_STRING_MAX} bytes",
                    m.key
                ),
                    )),
                );
            };
            let Ok(message_id) = ShortString::try_new(m.id.as_str()) else {
                return (
                    out,
                    Some((
                        i,
                        format!(
                            "its id is {} bytes; AMQP's message_id holds {SHORT_STRING_MAX}",
                            m.id.len()
                        ),
                    )),
                );
            };
            if let Some(max) = self.max_body.filter(|&max| m.payload.len() > max) {
                return (
                    out,
                    Some((
                        i,
                        format!(
                    "its {} bytes are more than the broker's max_message_size of {max} bytes",
                    m.payload.len()
                ),
                    )),
                );
            }
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from("sensorId"),
                AMQPValue::LongString(LongString::from(m.key.as_str())),
            );
            let properties = BasicProperties::default()
                .with_message_id(message_id)
                .with_content_type(ShortString::from(self.options.content_type.as_str()))
                .with_delivery_mode(if self.options.persistent { 2 } else { 1 })
                .with_headers(headers);
            out.push(Outgoing {
                routing_key,
                properties,
                payload: &m.payload,
            });
        }
        (out, None)
    }

    /// Publishes `run` back to back, then awaits the confirms in order.
    async fn send(&self, channel: &Channel, run: Vec<Outgoing<'_>>) -> Result<(), Failure> {
        let options = BasicPublishOptions {
            mandatory: self.options.mandatory,
            immediate: false,
        };
        let exchange = ShortString::from(self.options.exchange.as_str());
        let mut pending = Vec::with_capacity(run.len());
        let mut send_error = None;
        for m in run {
            let sent = within(
                self.timeout,
                channel.basic_publish(
                    exchange.clone(),
                    m.routing_key,
                    options,
                    m.payload,
                    m.properties,
                ),
            )
            .await;
            match sent {
                Ok(confirm) => pending.push(confirm),
                Err(cause) => {
                    send_error = Some(cause);
                    break;
                }
            }
        }
        // The confirms of what went out come first: when the broker closed the channel over
        // one message, its confirm carries the broker's reason, later sends only "closed".
        for (at, confirm) in pending.into_iter().enumerate() {
            match within(self.timeout, confirm).await {
                Ok(Confirmation::Ack(None)) => {}
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(Failure::Returned {
                        at,
                        reply_code: returned.reply_code,
                        reply_text: returned.reply_text.to_string(),
                    })
                }
                Ok(Confirmation::Nack(_)) => return Err(Failure::Nacked { at }),
                Ok(Confirmation::NotRequested) => {
                    return Err(Failure::Confirm {
                        at,
                        cause: Cause::Local(
                            "the channel is not in confirm mode (client bug)".into(),
                        ),
                    })
                }
                Err(cause) => return Err(Failure::Confirm { at, cause }),
            }
        }
        match send_error {
            Some(cause) => Err(Failure::Send { cause }),
            None => Ok(()),
        }
    }

    /// Turns a failure into the delivery thread's terms; `sent` is how many messages the run
    /// tried to send (the others were held back by [`Self::prepare`]).
    fn publish_error(
        &mut self,
        failure: Failure,
        messages: &[Message],
        sent: usize,
    ) -> PublishError {
        let to = self.describe();
        match failure {
            Failure::Setup { step, cause } => PublishError::new(
                0,
                cause.kind(),
                format!("cannot publish to {to}: {step}: {cause}"),
            ),
            Failure::Send { cause } => PublishError::new(
                sent,
                cause.kind(),
                format!("cannot publish to {to}: sending message {sent}: {cause}"),
            ),
            Failure::Returned {
                at,
                reply_code,
                reply_text,
            } => PublishError::new(
                at,
                ErrorKind::Refused,
                format!(
                    "{to}: the broker returned message {at} (id {}) as unroutable ({reply_code} \
                     {reply_text}): no queue is bound to exchange `{}` for routing key `{}`; \
                     bind one, or set mandatory = false to let such messages go",
                    messages[at].id,
                    self.options.exchange,
                    self.options.routing_key(&messages[at].key)
                ),
            ),
            Failure::Nacked { at } => PublishError::new(
                at,
                ErrorKind::Unavailable,
                format!(
                    "{to}: the broker nacked message {at} (id {}): a queue is full with \
                     x-overflow = reject-publish, or the broker failed to store it; sent again \
                     later",
                    messages[at].id
                ),
            ),
            Failure::Confirm { at, cause } => {
                if let Some(max) = cause.max_body() {
                    self.max_body = Some(max);
                    let culprit = messages[at..]
                        .iter()
                        .position(|m| m.payload.len() > max)
                        .map(|p| p + at);
                    if culprit == Some(at) {
                        return PublishError::new(
                            at,
                            ErrorKind::Rejected,
                            format!(
                                "{to}: the broker refused message {at} (id {}, {} bytes): \
                                 larger than its max_message_size of {max} bytes",
                                messages[at].id,
                                messages[at].payload.len()
                            ),
                        );
                    }
                    // The acks of earlier messages were lost with the channel: send them again
                    // first; the next run stops before the large one and sets it aside.
                    return PublishError::new(
                        at,
                        ErrorKind::Unavailable,
                        format!(
                            "{to}: the broker refused a message larger than its \
                             max_message_size of {max} bytes; the messages before it are sent \
                             again"
                        ),
                    );
                }
                PublishError::new(
                    at,
                    cause.kind(),
                    format!(
                        "cannot publish to {to}: message {at} (id {}) not confirmed: {cause}",
                        messages[at].id
                    ),
                )
            }
        }
    }

    fn end_session(&mut self, handle: &tokio::runtime::Handle) {
        if let Some(session) = self.session.take() {
            handle.block_on(close(&session.connection, self.timeout));
        }
    }
}

impl Adapter for AmqpExchange {
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
        if messages.is_empty() {
            return Ok(());
        }
        let handle = self.handle()?;
        // A channel the broker closed (or a connection that died) since the last call is
        // replaced by a fresh connection.
        if let Some(session) = &self.session {
            if !session.connection.status().connected() || !session.channel.status().connected() {
                self.end_session(&handle);
            }
        }
        let session = match self.session.take() {
            Some(session) => session,
            None => match handle.block_on(self.open_session()) {
                Ok(session) => session,
                Err(failure) => return Err(self.publish_error(failure, messages, 0)),
            },
        };
        let (run, unsendable) = self.prepare(messages);
        let sent = run.len();
        match handle.block_on(self.send(&session.channel, run)) {
            Ok(()) => {
                self.session = Some(session);
                match unsendable {
                    None => Ok(()),
                    Some((at, why)) => Err(PublishError::new(
                        at,
                        ErrorKind::Rejected,
                        format!(
                            "{}: message {at} (id {}) can never be published: {why}",
                            self.describe(),
                            messages[at].id
                        ),
                    )),
                }
            }
            Err(failure) => {
                // A returned or nacked message leaves the channel as it was; anything else
                // (a channel closed by the broker, a timeout with confirms still owed) is
                // retried on a new connection so stale confirms cannot be mistaken for new ones.
                if matches!(failure, Failure::Returned { .. } | Failure::Nacked { .. })
                    && session.channel.status().connected()
                {
                    self.session = Some(session);
                } else {
                    handle.block_on(close(&session.connection, self.timeout));
                }
                Err(self.publish_error(failure, messages, sent))
            }
        }
    }

    fn describe(&self) -> String {
        let exchange = match self.options.exchange.as_str() {
            "" => "the default exchange".to_string(),
            name => format!("exchange `{name}`"),
        };
        format!("{} ({exchange})", self.target.display)
    }
}

impl Drop for AmqpExchange {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if let Some(session) = self.session.take() {
                // A clean close spares the broker's log an "unexpectedly closed" warning.
                runtime.block_on(close(&session.connection, self.timeout));
            }
            // Does not wait for lapin's tasks, so dropping never blocks past the close above.
            runtime.shutdown_background();
        }
    }
}

/// One message ready to go.
struct Outgoing<'m> {
    routing_key: ShortString,
    properties: BasicProperties,
    payload: &'m [u8],
}

/// Why a step failed.
#[derive(Debug)]
enum Cause {
    Broker(lapin::Error),
    TimedOut(Duration),
    Local(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Broker(e) => write!(f, "{e}"),
            Cause::TimedOut(t) => write!(f, "no answer within {}", humantime_display(*t)),
            Cause::Local(why) => f.write_str(why),
        }
    }
}

fn humantime_display(t: Duration) -> String {
    if t.subsec_millis() == 0 {
        format!("{}s", t.as_secs())
    } else {
        format!("{}ms", t.as_millis())
    }
}

impl Cause {
    fn kind(&self) -> ErrorKind {
        match self {
            Cause::Broker(e) => classify(e),
            Cause::TimedOut(_) | Cause::Local(_) => ErrorKind::Unavailable,
        }
    }

    /// RabbitMQ closes the channel with PRECONDITION_FAILED "message size N is larger than
    /// configured max size M" for a body over `max_message_size`: M.
    fn max_body(&self) -> Option<usize> {
        let Cause::Broker(e) = self else { return None };
        let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
            return None;
        };
        if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            return None;
        }
        let text = amqp.get_message().as_str();
        let (_, after) = text.split_once("larger than")?;
        let (_, limit) = after.rsplit_once("max size")?;
        limit
            .trim()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    }
}

/// Which failures an operator must fix (`Refused`), which a message causes (`Rejected`), and
/// which pass (`Unavailable`).
fn classify(e: &lapin::Error) -> ErrorKind {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            // Bad credentials (connection.close 403), no permission on the exchange, unknown
            // exchange or vhost, an exchange declared with other settings, unroutable.
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::NOROUTE
                | AMQPSoftError::NOCONSUMERS,
            ) => ErrorKind::Refused,
            AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE) => ErrorKind::Rejected,
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => ErrorKind::Unavailable,
            // No access to the vhost, or a missing one.
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH) => {
                ErrorKind::Refused
            }
            // CONNECTION_FORCED (broker shutting down), resource alarms, internal errors; a
            // FRAME_ERROR cannot be pinned on one message (lapin splits bodies into frames of
            // the negotiated size), so it is retried too.
            AMQPErrorKind::Hard(_) => ErrorKind::Unavailable,
        },
        lapin::ErrorKind::AuthProviderError(_) => ErrorKind::Refused,
        _ => ErrorKind::Unavailable,
    }
}

/// Where a run failed.
#[derive(Debug)]
enum Failure {
    /// Connecting, opening the channel or checking the exchange; nothing was sent.
    Setup { step: &'static str, cause: Cause },
    /// Sending stopped (every message before it was confirmed).
    Send { cause: Cause },
    /// Message `at` was not confirmed.
    Confirm { at: usize, cause: Cause },
    /// Message `at` came back unroutable (`mandatory`).
    Returned {
        at: usize,
        reply_code: u16,
        reply_text: String,
    },
    /// The broker nacked message `at`.
    Nacked { at: usize },
}

/// Awaits a lapin operation for at most `timeout`.
async fn within<T>(
    timeout: Duration,
    operation: impl Future<Output = lapin::Result<T>>,
) -> Result<T, Cause> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Cause::Broker(e)),
        Err(_) => Err(Cause::TimedOut(timeout)),
    }
}

/// Closes a connection, best effort: it may already be gone.
async fn close(connection: &Connection, timeout: Duration) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(
            timeout,
            connection.close(200, ShortString::from("vidmesh broker stage done")),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn config<'a>(uri: &'a str, options: &'a toml::Table) -> AdapterConfig<'a> {
        AdapterConfig {
            uri,
            options,
            timeout: TIMEOUT,
            replica: 0,
        }
    }

    fn options(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn uri_names_server_credentials_vhost_and_hides_the_password() {
        let t = AmqpTarget::parse(
            "amqp://app:s3cr%40t@10.0.0.7:5673/prod?heartbeat=10",
            TIMEOUT,
        )
        .unwrap();
        let a = &t.uri.authority;
        assert_eq!(
            (a.host.as_str(), a.port),
            ("10.0.0.7", 5673),
            "an IP address stays the host"
        );
        assert_eq!(a.userinfo.username, "app");
        assert_eq!(a.userinfo.password, "s3cr@t");
        assert_eq!(t.uri.vhost, "prod");
        assert_eq!(t.uri.query.heartbeat, Some(10));
        assert_eq!(t.uri.query.connection_timeout, Some(2000));
        assert!(!t.display.contains("s3cr"), "{}", t.display);
    }

    #[test]
    fn uri_defaults_follow_rabbitmq() {
        for uri in ["amqp://broker", "amqp://broker/"] {
            let t = AmqpTarget::parse(uri, TIMEOUT).unwrap();
            assert_eq!(t.uri.authority.port, 5672);
            assert_eq!(t.uri.authority.userinfo.username, "guest");
            assert_eq!(t.uri.authority.userinfo.password, "guest");
            assert_eq!(t.uri.vhost, "/", "{uri}");
        }
        let t = AmqpTarget::parse("amqps://broker", TIMEOUT).unwrap();
        assert_eq!(t.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(t.uri.authority.port, 5671);
        let t = AmqpTarget::parse("amqp://[::1]/%2Fstaging", TIMEOUT).unwrap();
        assert_eq!(t.uri.authority.host, "::1");
        assert_eq!(t.uri.vhost, "/staging");
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        for (bad, why) in [
            ("amqp://", "no host"),
            ("amqp://host/a/b", "%2F"),
            ("ftp://host", "not amqp or amqps"),
            ("amqp://host?heartbeat=soon", "heartbeat=soon"),
            ("amqp://host?frame_max=-1", "frame_max"),
            ("amqp://host?verify=no", "unknown query parameter `verify`"),
            ("amqp://u:pw@host?heartbeat=x", "u:***@host"),
        ] {
            let err = AmqpTarget::parse(bad, TIMEOUT).err().unwrap().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains(":pw@"), "{err}");
        }
    }

    #[test]
    fn options_default_like_deepstream_and_substitute_the_sensor() {
        let empty = toml::Table::new();
        let a = AmqpExchange::new(&config("amqp://localhost", &empty)).unwrap();
        assert_eq!(a.options.exchange, "amq.topic");
        assert!(a.options.persistent && a.options.mandatory && !a.options.declare_exchange);
        assert_eq!(a.options.routing_key("cam-1"), "cam-1");
        assert_eq!(
            a.describe(),
            "amqp://localhost (exchange `amq.topic`)",
            "describes without connecting"
        );
        let o = options(
            r#"exchange = "events"
routing_key = "site1.{sensor}.objects"
declare_exchange = true
exchange_type = "direct""#,
        );
        let a = AmqpExchange::new(&config("amqp://localhost", &o)).unwrap();
        assert_eq!(a.options.routing_key("cam-1"), "site1.cam-1.objects");
        assert!(matches!(
            a.options.exchange_kind().unwrap(),
            lapin::ExchangeKind::Direct
        ));
    }

    #[test]
    fn bad_options_are_named() {
        for (text, why) in [
            ("topic = 'x'", "topic"),
            ("routing_key = '{camera}'", "only {sensor}"),
            (
                "exchange_type = 'fanout'",
                "only used with `declare_exchange",
            ),
            ("declare_exchange = true", "amq."),
            (
                "declare_exchange = true\nexchange = 'e'\nexchange_type = 'round-robin'",
                "round-robin",
            ),
            ("persistent = 'yes'", "persistent"),
            ("max_message_size = 0", "max_message_size"),
            ("ca_file = '/etc/hostname'", "needs TLS"),
        ] {
            let o = options(text);
            let err = AmqpExchange::new(&config("amqp://localhost", &o))
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("amqp options") && err.contains(why),
                "{text}: {err}"
            );
        }
        let long = format!("exchange = '{}'", "x".repeat(256));
        let o = options(&long);
        assert!(AmqpExchange::new(&config("amqp://localhost", &o)).is_err());
    }

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, ShortString::from(text))).into()
    }

    #[test]
    fn broker_errors_map_to_retry_refuse_or_reject() {
        use AMQPHardError::*;
        use AMQPSoftError::*;
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(classify(&io), ErrorKind::Unavailable);
        for (kind, expected) in [
            (AMQPErrorKind::Soft(ACCESSREFUSED), ErrorKind::Refused),
            (AMQPErrorKind::Soft(NOTFOUND), ErrorKind::Refused),
            (AMQPErrorKind::Hard(NOTALLOWED), ErrorKind::Refused),
            (AMQPErrorKind::Soft(CONTENTTOOLARGE), ErrorKind::Rejected),
            (
                AMQPErrorKind::Hard(CONNECTIONFORCED),
                ErrorKind::Unavailable,
            ),
            (AMQPErrorKind::Hard(FRAMEERROR), ErrorKind::Unavailable),
        ] {
            assert_eq!(classify(&protocol(kind.clone(), "x")), expected, "{kind}");
        }
        let missing: lapin::Error = lapin::ErrorKind::MissingHeartbeatError.into();
        assert_eq!(classify(&missing), ErrorKind::Unavailable);
    }

    #[test]
    fn rabbitmq_size_refusal_names_the_limit() {
        let too_big = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - message size 4096 is larger than configured max size 1024",
        );
        assert_eq!(Cause::Broker(too_big).max_body(), Some(1024));
        let other = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'e'",
        );
        assert_eq!(Cause::Broker(other).max_body(), None);
        assert_eq!(Cause::TimedOut(TIMEOUT).max_body(), None);
    }

    fn message(i: usize, len: usize) -> Message {
        Message {
            key: format!("cam-{i}"),
            id: format!("id-{i}"),
            payload: vec![b'x'; len],
        }
    }

    #[test]
    fn size_refusal_rejects_only_the_large_message() {
        let empty = toml::Table::new();
        let mut a = AmqpExchange::new(&config("amqp://localhost", &empty)).unwrap();
        let run = [message(0, 10), message(1, 5000), message(2, 10)];
        // The ack of message 0 was lost with the channel: it is sent again, not set aside.
        let refusal = Failure::Confirm {
            at: 0,
            cause: refusal_cause(),
        };
        let e = a.publish_error(refusal, &run, 3);
        assert_eq!(
            (e.confirmed, e.kind),
            (0, ErrorKind::Unavailable),
            "{}",
            e.detail
        );
        // The next run stops before the large message, which is then rejected on its own.
        let (ready, unsendable) = a.prepare(&run);
        assert_eq!(ready.len(), 1);
        let (at, why) = unsendable.unwrap();
        assert_eq!(at, 1);
        assert!(why.contains("4096"), "{why}");
        let e = a.publish_error(
            Failure::Confirm {
                at: 1,
                cause: refusal_cause(),
            },
            &run,
            3,
        );
        assert_eq!(
            (e.confirmed, e.kind),
            (1, ErrorKind::Rejected),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("id-1"), "{}", e.detail);
    }

    fn refusal_cause() -> Cause {
        Cause::Broker(protocol(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - message size 5000 is larger than configured max size 4096",
        ))
    }

    #[test]
    fn ca_file_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        for (file, why) in [
            (not_pem, "no PEM certificate"),
            (dir.path().join("missing.pem"), "missing.pem"),
        ] {
            let o = options(&format!("ca_file = '{}'", file.display()));
            let err = AmqpExchange::new(&config("amqps://broker", &o))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_configured_size_limit_holds_large_messages_back_from_the_start() {
        let o = options("max_message_size = 100");
        let a = AmqpExchange::new(&config("amqp://localhost", &o)).unwrap();
        let run = [message(0, 100), message(1, 101)];
        let (ready, unsendable) = a.prepare(&run);
        assert_eq!((ready.len(), unsendable.map(|u| u.0)), (1, Some(1)));
    }

    #[test]
    fn overlong_ids_and_routing_keys_are_held_back() {
        let empty = toml::Table::new();
        let a = AmqpExchange::new(&config("amqp://localhost", &empty)).unwrap();
        let mut run = vec![message(0, 1), message(1, 1)];
        run[1].id = "i".repeat(300);
        let (ready, unsendable) = a.prepare(&run);
        assert_eq!((ready.len(), unsendable.map(|u| u.0)), (1, Some(1)));
        run[1].id = "ok".into();
        run[0].key = "k".repeat(300);
        let (ready, unsendable) = a.prepare(&run);
        assert_eq!((ready.len(), unsendable.map(|u| u.0)), (0, Some(0)));
    }

    #[test]
    fn unreachable_broker_is_unavailable_and_quick() {
        // A port nothing listens on: connection refused, well within the timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let uri = format!("amqp://u:secret@127.0.0.1:{port}");
        let empty = toml::Table::new();
        let mut a = AmqpExchange::new(&config(&uri, &empty)).unwrap();
        let started = std::time::Instant::now();
        let e = a.publish(&[message(0, 1)]).unwrap_err();
        assert_eq!(
            (e.confirmed, e.kind),
            (0, ErrorKind::Unavailable),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("connecting"), "{}", e.detail);
        assert!(!e.detail.contains("secret"), "{}", e.detail);
        assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));
        // Usable again: the next call tries again.
        assert!(a.publish(&[message(0, 1)]).is_err());
        assert!(a.publish(&[]).is_ok());
    }
}
