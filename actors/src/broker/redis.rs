//! The `redis://` adapter: Redis Streams. Each message is one `XADD` (fields `sensorId` and
//! `payload`), trimmed approximately to `maxlen` entries; the server's reply (the entry id) is
//! the delivery confirmation, so a message counts as published only once Redis has it.

use std::time::Duration;

use super::Publisher;
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

pub struct RedisStream {
    target: RedisTarget,
    connection: redis::Connection,
    maxlen: u64,
}

impl RedisStream {
    /// Connects, failing with one clear line when the server is unreachable.
    pub fn connect(
        target: RedisTarget,
        maxlen: u64,
        timeout: Duration,
    ) -> Result<Self, StageError> {
        let fail = |e: redis::RedisError| {
            StageError::Runtime(format!("cannot connect to {}: {e}", target.display))
        };
        let client = redis::Client::open(target.connection_url.as_str()).map_err(fail)?;
        let connection = client.get_connection_with_timeout(timeout).map_err(fail)?;
        connection.set_read_timeout(Some(timeout)).map_err(fail)?;
        connection.set_write_timeout(Some(timeout)).map_err(fail)?;
        Ok(Self {
            target,
            connection,
            maxlen,
        })
    }
}

impl Publisher for RedisStream {
    fn publish(&mut self, key: &str, payload: &str) -> Result<(), StageError> {
        redis::cmd("XADD")
            .arg(&self.target.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("sensorId")
            .arg(key)
            .arg("payload")
            .arg(payload)
            .query::<String>(&mut self.connection)
            .map(|_| ())
            .map_err(|e| {
                StageError::Runtime(format!("cannot publish to {}: {e}", self.target.display))
            })
    }

    /// Every `XADD` was already confirmed by the server; how long Redis keeps it is the
    /// server's persistence configuration.
    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
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
}
