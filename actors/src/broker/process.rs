//! The `exec://NAME` adapter: a custom adapter as an external program, in any language,
//! speaking JSON lines over its stdin and stdout. For brokers vidmesh has no adapter for, or
//! for a company's own ingestion API.
//!
//! vidmesh starts `options.command` (program and arguments) on the first publish and writes
//! one request line per message:
//!
//! ```json
//! {"id":"6f1c…","key":"cam-1","payload":"{\"version\":\"4.0\",…}"}
//! ```
//!
//! (`payload_base64` instead of `payload` when the payload is not UTF-8, e.g. Protobuf). The
//! program answers each request, in order, with one line: `{"ok":true}` once the message is
//! safely delivered, or `{"ok":false,"kind":"unavailable"|"refused"|"rejected","error":"…"}`.
//! Anything the program writes to stderr goes to vidmesh's log. A program that exits, writes
//! something that is not an answer, or does not answer within `timeout` counts as an
//! unavailable broker: it is restarted on the next attempt and the unanswered messages are
//! sent again. `examples/adapters/jsonl_file_adapter.py` is a complete example.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::adapter::{parse_options, Adapter, AdapterConfig, ErrorKind, Message, PublishError};
use crate::stage::StageError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessOptions {
    /// The program and its arguments, e.g. `["python3", "adapters/my_adapter.py"]`.
    command: Vec<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    id: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

pub struct ProcessAdapter {
    name: String,
    command: Vec<String>,
    timeout: Duration,
    running: Option<Running>,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    /// Lines from the program's stdout, read by a thread so waits can time out.
    answers: Receiver<std::io::Result<String>>,
}

impl ProcessAdapter {
    pub fn new(config: &AdapterConfig) -> Result<Self, StageError> {
        let name = config
            .uri
            .strip_prefix("exec://")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                StageError::Settings(format!(
                    "`{}`: an external adapter is `exec://NAME` with `options.command`",
                    config.uri
                ))
            })?
            .to_string();
        let options: ProcessOptions = parse_options(config, "exec")?;
        if options.command.is_empty() || options.command[0].is_empty() {
            return Err(StageError::Settings(
                "exec options: `command` must name a program, e.g. [\"python3\", \"adapter.py\"]"
                    .into(),
            ));
        }
        Ok(Self {
            name,
            command: options.command,
            timeout: config.timeout,
            running: None,
        })
    }

    fn unavailable(&self, confirmed: usize, what: impl std::fmt::Display) -> PublishError {
        PublishError::new(
            confirmed,
            ErrorKind::Unavailable,
            format!("adapter exec://{} ({}): {what}", self.name, self.command[0]),
        )
    }

    fn start(&self) -> Result<Running, PublishError> {
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.unavailable(0, format!("cannot start: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let failed = line.is_err();
                if tx.send(line).is_err() || failed {
                    return;
                }
            }
        });
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::info!(adapter = %name, "{line}");
            }
        });
        Ok(Running {
            child,
            stdin,
            answers,
        })
    }

    fn exchange(
        &mut self,
        running: &mut Running,
        messages: &[Message],
    ) -> Result<(), PublishError> {
        let mut requests = Vec::new();
        for m in messages {
            let text = std::str::from_utf8(&m.payload).ok();
            let request = Request {
                id: &m.id,
                key: &m.key,
                payload: text,
                payload_base64: text.is_none().then(|| base64_encode(&m.payload)),
            };
            // Plain structs of strings always serialise.
            serde_json::to_writer(&mut requests, &request).expect("serialisable");
            requests.push(b'\n');
        }
        running
            .stdin
            .write_all(&requests)
            .and_then(|_| running.stdin.flush())
            .map_err(|e| self.unavailable(0, format!("cannot write to it: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        for (i, m) in messages.iter().enumerate() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = match running.answers.recv_timeout(wait) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => return Err(self.unavailable(i, format!("cannot read from it: {e}"))),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.unavailable(
                        i,
                        format!("no answer for message {} within {:?}", m.id, self.timeout),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = running.child.wait().map(|s| s.to_string());
                    return Err(self.unavailable(
                        i,
                        format!("exited ({})", status.unwrap_or_else(|e| e.to_string())),
                    ));
                }
            };
            let answer: Answer = serde_json::from_str(&line).map_err(|e| {
                self.unavailable(i, format!("answered `{line}`, not {{\"ok\":…}}: {e}"))
            })?;
            if answer.ok {
                continue;
            }
            let kind = match answer.kind.as_deref() {
                Some("refused") => ErrorKind::Refused,
                Some("rejected") => ErrorKind::Rejected,
                _ => ErrorKind::Unavailable,
            };
            let error = answer.error.unwrap_or_else(|| "no reason given".into());
            // The program answers every request even after a failure; later answers are
            // dropped with the process below, so the remaining messages are simply re-sent.
            return Err(PublishError::new(
                i,
                kind,
                format!("adapter exec://{}: message {}: {error}", self.name, m.id),
            ));
        }
        Ok(())
    }
}

impl Adapter for ProcessAdapter {
    fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
        let mut running = match self.running.take() {
            Some(r) => r,
            None => self.start()?,
        };
        let result = self.exchange(&mut running, messages);
        match &result {
            Ok(()) => self.running = Some(running),
            // After a failure the answers still in the pipe would be misread as answers to the
            // next run: start the program afresh.
            Err(_) => stop(running),
        }
        result
    }

    fn describe(&self) -> String {
        format!("exec://{}", self.name)
    }
}

impl Drop for ProcessAdapter {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            stop(running);
        }
    }
}

/// Closes the program's stdin (its signal to finish), gives it a moment, then kills it.
fn stop(running: Running) {
    let Running {
        mut child, stdin, ..
    } = running;
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(script: &str) -> ProcessAdapter {
        let options: toml::Table =
            toml::from_str(&format!("command = [\"python3\", \"-c\", '''{script}''']")).unwrap();
        ProcessAdapter::new(&AdapterConfig {
            uri: "exec://test",
            options: &options,
            timeout: Duration::from_secs(5),
            replica: 0,
        })
        .unwrap()
    }

    fn messages(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message {
                key: "cam".into(),
                id: format!("m{i}"),
                payload: format!("{{\"n\":{i}}}").into_bytes(),
            })
            .collect()
    }

    const ECHO_OK: &str = "import sys, json\nfor line in sys.stdin:\n    json.loads(line)\n    print(json.dumps({\"ok\": True}), flush=True)\n";

    #[test]
    fn answers_confirm_messages_and_the_program_is_kept_running() {
        let mut a = adapter(ECHO_OK);
        a.publish(&messages(5)).unwrap();
        a.publish(&messages(3)).unwrap();
        assert!(a.running.is_some());
    }

    #[test]
    fn a_rejection_names_the_message_and_counts_the_ones_before() {
        let mut a = adapter(
            "import sys, json\nfor line in sys.stdin:\n    m = json.loads(line)\n    print(json.dumps({\"ok\": m[\"id\"] != \"m2\", \"kind\": \"rejected\", \"error\": \"too big\"}), flush=True)\n",
        );
        let e = a.publish(&messages(5)).unwrap_err();
        assert_eq!((e.confirmed, e.kind), (2, ErrorKind::Rejected));
        assert!(e.detail.contains("message m2: too big"), "{}", e.detail);
        // The next call starts the program again and goes on.
        a.publish(&messages(2)).unwrap();
    }

    #[test]
    fn a_program_that_dies_or_babbles_is_unavailable_and_restarted() {
        let mut a = adapter(
            "import sys\nsys.stdin.readline()\nprint('{\"ok\": true}', flush=True)\nsys.exit(3)\n",
        );
        let e = a.publish(&messages(3)).unwrap_err();
        assert_eq!((e.confirmed, e.kind), (1, ErrorKind::Unavailable));
        assert!(e.detail.contains("exited"), "{}", e.detail);

        let mut a = adapter("import sys\nfor line in sys.stdin:\n    print('hello', flush=True)\n");
        let e = a.publish(&messages(1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.detail.contains("answered `hello`"), "{}", e.detail);
    }

    #[test]
    fn a_missing_program_and_bad_settings_are_clear() {
        let options: toml::Table =
            toml::from_str("command = [\"/no/such/adapter-program\"]").unwrap();
        let mut a = ProcessAdapter::new(&AdapterConfig {
            uri: "exec://x",
            options: &options,
            timeout: Duration::from_secs(1),
            replica: 0,
        })
        .unwrap();
        let e = a.publish(&messages(1)).unwrap_err();
        assert!(e.detail.contains("cannot start"), "{}", e.detail);

        let empty: toml::Table = toml::from_str("command = []").unwrap();
        let config = AdapterConfig {
            uri: "exec://x",
            options: &empty,
            timeout: Duration::from_secs(1),
            replica: 0,
        };
        assert!(ProcessAdapter::new(&config).is_err());
        let config = AdapterConfig {
            uri: "exec://",
            ..config
        };
        assert!(ProcessAdapter::new(&config).is_err());
    }
}
