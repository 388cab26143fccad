//! A real MQTT broker for the tests: Debian's Mosquitto, on a free loopback port, with its own
//! configuration file in a temporary directory. Persistence is on, so a stop (SIGTERM: Mosquitto
//! saves its database) and a restart keep subscriptions and queued messages, which is what the
//! outage tests need; `max_queued_messages` is raised from Mosquitto's 1000, past which it drops
//! QoS 1 messages for a subscriber that is away or lagging.
//!
//! Messages are read back by an independent client, paho-mqtt in
//! `tests/scripts/mqtt_consume.py`, in a persistent session: [`Mosquitto::subscribe`] opens it
//! before the pipeline runs and leaves, the broker queues what arrives meanwhile, and
//! [`Mosquitto::consume`] comes back for it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{free_port, repo_root, venv_python, ServerProcess};

/// What a test needs of the broker beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct MosquittoConfig {
    /// Users and passwords (a password file); none lets anonymous clients in.
    pub users: Vec<(String, String)>,
    /// Mosquitto's `max_packet_size`: it announces it to MQTT 5 clients in CONNACK and drops
    /// the connection of any client that sends a larger packet.
    pub max_packet_size: Option<u32>,
}

/// One message as the consumer script printed it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Received {
    pub topic: String,
    pub payload: String,
    /// The MQTT 5 user property `message-id`, if the message had one.
    pub id: Option<String>,
    pub qos: u8,
}

/// A Mosquitto broker, killed when dropped.
pub struct Mosquitto {
    server: Option<ServerProcess>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The user the consumer script connects as, when the broker requires one.
    reader: Option<(String, String)>,
}

impl Mosquitto {
    /// A broker that lets anonymous clients in.
    pub fn start() -> Self {
        Self::start_with(MosquittoConfig::default())
    }

    pub fn start_with(config: MosquittoConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut text = format!(
            "listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {}/\n\
             autosave_interval 1\n\
             max_queued_messages 1000000\n\
             pid_file {}\n\
             log_dest file {}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            dir.path().display(),
            path("mosquitto.pid"),
            path("mosquitto.log"),
        );
        // Run as whoever runs the tests: as root, Mosquitto would otherwise switch to the
        // `mosquitto` user, who cannot write the temporary directory.
        text.push_str(&format!("user {}\n", current_user()));
        if let Some(size) = config.max_packet_size {
            text.push_str(&format!("max_packet_size {size}\n"));
        }
        let mut reader = None;
        if config.users.is_empty() {
            text.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            for (n, (user, password)) in config.users.iter().enumerate() {
                let mut command = Command::new("mosquitto_passwd");
                if n == 0 {
                    command.arg("-c");
                }
                let out = command
                    .arg("-b")
                    .arg(&passwords)
                    .args([user, password])
                    .output()
                    .expect("mosquitto_passwd runs (scripts/setup installs mosquitto)");
                assert!(
                    out.status.success(),
                    "mosquitto_passwd: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            text.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwords.display()
            ));
            reader = config.users.first().cloned();
        }
        std::fs::write(dir.path().join("mosquitto.conf"), text).expect("scratch dir is writable");
        let mut broker = Self {
            server: None,
            dir,
            port,
            reader,
        };
        broker.restart();
        broker
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.pid")
    }

    /// Mosquitto's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker the way a service manager does (SIGTERM: Mosquitto saves its
    /// database and exits) and waits until it is gone. Its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        let pid = std::fs::read_to_string(self.pid_file()).expect("mosquitto wrote its pid file");
        let status = Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone means exited: a zombie until `ServerProcess` reaps it below.
        let running = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        while running() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Reaps the exited process.
        self.server = None;
    }

    /// Starts the broker (again) on the same port with the same data.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the broker is already running");
        let mut command = Command::new("mosquitto");
        command
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"));
        self.server = Some(ServerProcess::start(command, self.port));
    }

    fn script(&self, client_id: &str, topic: &str, protocol: &str) -> Command {
        let mut command = Command::new(venv_python());
        command
            .arg(repo_root().join("tests/scripts/mqtt_consume.py"))
            .args(["--port", &self.port.to_string()])
            .args(["--client-id", client_id, "--topic", topic])
            .args(["--protocol", protocol]);
        if let Some((user, password)) = &self.reader {
            command.args(["--username", user, "--password", password]);
        }
        command
    }

    /// Opens a persistent QoS 1 session for `client_id` on `topic` (a filter; wildcards
    /// allowed) and leaves: from now on the broker keeps what is published there for it.
    /// `protocol` is "3.1.1" or "5" (MQTT 5 keeps user properties such as `message-id`).
    pub fn subscribe(&self, client_id: &str, topic: &str, protocol: &str) {
        let out = self
            .script(client_id, topic, protocol)
            .arg("--register")
            .output()
            .expect("mqtt_consume.py runs");
        assert!(
            out.status.success(),
            "mqtt_consume.py --register failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Comes back to `client_id`'s session and reads until `expect` messages came, or nothing
    /// new for 5 s.
    pub fn consume(
        &self,
        client_id: &str,
        topic: &str,
        protocol: &str,
        expect: usize,
    ) -> Vec<Received> {
        let out = self
            .script(client_id, topic, protocol)
            .args([
                "--expect",
                &expect.to_string(),
                "--idle",
                "5",
                "--timeout",
                "120",
            ])
            .output()
            .expect("mqtt_consume.py runs");
        assert!(
            out.status.success(),
            "mqtt_consume.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("mqtt_consume.py printed `{line}`: {e}"))
            })
            .collect()
    }
}

/// The name of the user running the tests.
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!name.is_empty(), "`id -un` printed no user name");
    name
}
