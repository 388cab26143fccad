//! The `redis://` adapter: Redis Streams. Each message is one `XADD` (fields `sensorId`,
//! `messageId` and `payload`), trimmed approximately to `maxlen` entries. A run of messages
//! goes out as one pipeline; the server's replies (the entry ids) are the confirmations.
//!
//! Options: `maxlen` (default 1000000).

use std::time::Duration;

use serde::Deserialize;

use super::adapter::{parse_options, Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::source::redact;
use crate::stage::StageError;

/// Where a `redis://[user:pass@]host[:port]/STREAM` URI points.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTarget {
    /// The server URL the client connects to (credentials kept, stream removed).
    connection_url: String,
    stream: String,
    /// The URI with its password masked, for messages.
    display: String,
}

impl RedisTarget {
    pub fn parse(uri: &str) -> Result<Self, StageError> {
        let display = redact(uri);
        let url = url::Url::parse(uri)
            .map_err(|e| StageError::Settings(format!("bad Redis URI `{display}`: {e}")))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| StageError::Settings(format!("Redis URI `{display}` has no host")))?;
        let stream = url.path().trim_start_matches('/');
        if stream.is_empty() || stream.contains('/') {
            return Err(StageError::Settings(format!(
                "Redis URI `{display}` must name one stream: redis://HOST[:PORT]/STREAM"
            )));
        }
        let userinfo = match (url.username(), url.password()) {
            ("", None) => String::new(),
            (user, Some(password)) => format!("{user}:{password}@"),
            (user, None) => format!("{user}@"),
        };
        Ok(Self {
            connection_url: format!("redis://{userinfo}{host}:{}", url.port().unwrap_or(6379)),
            stream: stream.to_string(),
            display,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisOptions {
    /// Keep about this many entries in the stream (`XADD MAXLEN ~`).
    #[serde(default = "maxlen_default")]
    maxlen: u64,
}

fn maxlen_default() -> u64 {
    1_000_000
}

pub struct RedisStream {
    target: RedisTarget,
    options: RedisOptions,
    timeout: Duration,
    connection: Option<redis::Connection>,
}

impl RedisStream {
    pub fn new(config: &AdapterConfig) -> Result<Self, StageError> {
        Ok(Self {
            target: RedisTarget::parse(config.uri)?,
            options: parse_options(config, "redis")?,
            timeout: config.timeout,
            connection: None,
        })
    }

    fn connect(&self) -> Result<redis::Connection, PublishError> {
        let client = redis::Client::open(self.target.connection_url.as_str())
            .map_err(|e| self.error(0, e))?;
        let connection = client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| self.error(0, e))?;
        connection
            .set_read_timeout(Some(self.timeout))
            .and_then(|_| connection.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.error(0, e))?;
        Ok(connection)
    }

    fn error(&self, confirmed: usize, e: redis::RedisError) -> PublishError {
        // Authentication and permission errors will not go away by reconnecting.
        let kind = match e.kind() {
            redis::ErrorKind::AuthenticationFailed => ErrorKind::Refused,
            _ if e.code() == Some("NOPERM") || e.code() == Some("WRONGPASS") => ErrorKind::Refused,
            _ => ErrorKind::Unavailable,
        };
        PublishError::new(
            confirmed,
            kind,
            format!("cannot publish to {}: {e}", self.target.display),
        )
    }
}

impl Adapter for RedisStream {
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => self.connect()?,
        };
        let mut pipe = redis::pipe();
        for m in messages {
            pipe.cmd("XADD")
                .arg(&self.target.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.options.maxlen)
                .arg("*")
                .arg("sensorId")
                .arg(&m.key)
                .arg("messageId")
                .arg(&m.id)
                .arg("payload")
                .arg(&m.payload);
        }
        // The pipeline's replies come back together: either every entry id or an error, in
        // which case none counts as confirmed (the repeats carry the same message ids).
        match pipe.query::<Vec<String>>(&mut connection) {
            Ok(_) => {
                self.connection = Some(connection);
                Ok(())
            }
            Err(e) => Err(self.error(0, e)),
        }
    }

    fn describe(&self) -> String {
        self.target.display.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_server_and_stream_and_hides_the_password() {
        let t = RedisTarget::parse("redis://app:s3cret@10.0.0.7:6380/events").unwrap();
        assert_eq!(t.connection_url, "redis://app:s3cret@10.0.0.7:6380");
        assert_eq!(t.stream, "events");
        assert!(!t.display.contains("s3cret"));
        let t = RedisTarget::parse("redis://localhost/cam-events").unwrap();
        assert_eq!(t.connection_url, "redis://localhost:6379");
    }

    #[test]
    fn uri_without_a_stream_is_refused() {
        for bad in [
            "redis://localhost",
            "redis://localhost/",
            "redis://localhost/a/b",
            "redis:///x",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_options_are_named() {
        let options: toml::Table = toml::from_str("max_len = 5").unwrap();
        let config = AdapterConfig {
            uri: "redis://localhost/events",
            options: &options,
            timeout: Duration::from_secs(1),
            replica: 0,
        };
        let err = RedisStream::new(&config).err().unwrap().to_string();
        assert!(
            err.contains("redis options") && err.contains("max_len"),
            "{err}"
        );
    }
}
