//! A real Kafka broker for the tests: tansu (`scripts/setup` installs it with `cargo install`),
//! on a free loopback port, storing in SQLite inside a temporary directory so that a restart
//! keeps its topics and messages, which is what the outage tests need. Tansu never creates
//! topics on its own, so every test creates its topics (and an unknown topic stays unknown).
//!
//! Messages are read back by an independent client: confluent-kafka from PyPI, in
//! `tests/scripts/kafka_consume.py` (Debian's kcat is too old to talk to tansu).

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

use crate::{free_port, repo_root, venv_python, ServerProcess};

/// The tansu binary: `$TANSU` if set, else `tansu` on PATH.
pub fn tansu() -> PathBuf {
    std::env::var_os("TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

/// One message as the consumer script printed it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Consumed {
    /// The message key (vidmesh: the sensor id).
    pub key: Option<String>,
    /// The `message-id` header.
    pub id: Option<String>,
    pub payload: String,
    pub partition: i32,
    pub offset: i64,
}

/// A tansu broker, killed when dropped.
pub struct KafkaBroker {
    server: Option<ServerProcess>,
    /// Holds the SQLite database; the broker runs with this as its working directory.
    dir: tempfile::TempDir,
    pub port: u16,
    /// Set once the broker requires SASL: the user [`Self::consume`] reads as.
    reader: Option<(String, String)>,
}

impl KafkaBroker {
    /// A broker that lets every client in.
    pub fn start() -> Self {
        let mut broker = Self {
            server: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: free_port(),
            reader: None,
        };
        broker.restart();
        broker
    }

    /// Restarts the broker requiring SASL from every client: `SCRAM-SHA-512` with the users
    /// made by [`Self::create_user`] (tansu accepts any `PLAIN` password, so `PLAIN` proves
    /// nothing). tansu's own CLI cannot authenticate, so users and topics must be created
    /// before this. [`Self::consume`] then reads as `user`.
    pub fn require_authentication(&mut self, user: &str, password: &str) {
        self.stop();
        self.reader = Some((user.to_string(), password.to_string()));
        self.restart();
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` and kafka:// URIs.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Kills the broker (like a crash: no clean shutdown). Its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Starts the broker (again) on the same port with the same storage.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the broker is already running");
        let mut command = Command::new(tansu());
        command
            .current_dir(self.dir.path())
            // tansu's own log goes to stderr; keep it to warnings so test output stays readable.
            .env("RUST_LOG", "warn")
            .args([
                "broker",
                "--listener-url",
                &self.url(),
                "--advertised-listener-url",
                &self.url(),
                "--storage-engine",
                "sqlite://tansu.db",
            ]);
        if self.reader.is_some() {
            command.arg("--authentication");
        }
        self.server = Some(ServerProcess::start(command, self.port));
    }

    /// Creates `name` with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.tansu(&[
            "topic",
            "create",
            name,
            "--broker",
            &self.url(),
            "--partitions",
            &partitions.to_string(),
        ]);
    }

    /// Adds a SCRAM-SHA-512 user.
    pub fn create_user(&self, name: &str, password: &str) {
        self.tansu(&[
            "user",
            "create",
            "--broker",
            &self.url(),
            "--mechanism",
            "scram512",
            name,
            password,
        ]);
    }

    fn tansu(&self, args: &[&str]) {
        let out = Command::new(tansu())
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} runs (scripts/setup installs it): {e}",
                    tansu().display()
                )
            });
        assert!(
            out.status.success(),
            "tansu {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads `topic` from the beginning with confluent-kafka until `expect` messages came, or
    /// nothing new for 5 s. With `group`, reads as a member of that consumer group (from what
    /// the group has not committed) and commits.
    pub fn consume(&self, topic: &str, expect: usize, group: Option<&str>) -> Vec<Consumed> {
        let script = repo_root().join("tests/scripts/kafka_consume.py");
        let mut command = Command::new(venv_python());
        command.arg(&script).args([
            "--bootstrap",
            &self.bootstrap(),
            "--topic",
            topic,
            "--expect",
            &expect.to_string(),
            "--idle",
            "5",
            "--timeout",
            "120",
        ]);
        if let Some(group) = group {
            command.args(["--group", group]);
        }
        if let Some((user, password)) = &self.reader {
            command.args(["--scram-user", user, "--scram-password", password]);
        }
        crate::json_lines_of(&mut command, "kafka_consume.py")
    }
}
