//! What a `kafka://` stage is configured with: the URI (brokers, topic, SASL credentials) and
//! `[options]` (librdkafka producer properties), turned into a librdkafka configuration.

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;

use crate::source::redact;
use crate::stage::StageError;

/// Where a `kafka://` URI points.
#[derive(Clone, PartialEq)]
pub struct KafkaTarget {
    /// `bootstrap.servers`: `host:port` pairs, comma-separated.
    pub(super) bootstrap: String,
    pub(super) topic: String,
    /// SASL user and password, percent-decoded.
    pub(super) credentials: Option<(String, String)>,
    /// The URI with its password masked, for messages.
    pub(super) display: String,
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
        "transactional.id" => {
            Some("the adapter publishes with an idempotent producer, not transactions")
        }
        _ => None,
    }
}

/// Values of these keys are never repeated in messages.
fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

/// The producer configuration from the URI, `[options]` and the timeout, without
/// `bootstrap.servers` (see [`super::KafkaProducer::new`] for why).
pub(super) fn producer_config(
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
        config
            .set("sasl.username", user)
            .set("sasl.password", password);
    }
    Ok(config)
}

/// A client-config error from librdkafka, worded for the topology's author.
pub(super) fn config_error(display: &str, e: KafkaError) -> StageError {
    match e {
        KafkaError::ClientConfig(res, description, key, value) => {
            let value = if is_secret(&key) {
                "***".to_string()
            } else {
                value
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
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
}
