//! A real RabbitMQ for the tests: Debian's `rabbitmq-server` (`scripts/setup` installs it),
//! started by the test as a throwaway node, not the system service: its own node name,
//! config, data and log directories in a temporary directory, a free AMQP port and a free
//! Erlang distribution port, so tests running at once (nextest runs each in its own process)
//! do not meet. Nodes register with the machine's one epmd, which is what it is for.
//!
//! The node has one user, [`USER`] with [`PASSWORD`], made from `default_user`/`default_pass`
//! at first boot (so a wrong password really is refused). A restart keeps the data directory,
//! so durable queues keep their messages: what the outage tests need.
//!
//! Messages are read back by an independent client, pika (PyPI), in
//! `tests/scripts/amqp_consume.py`.
//!
//! Not [`crate::ServerProcess`]: RabbitMQ takes several seconds to boot (more on a busy
//! machine, beyond ServerProcess's 10 s), is only ready once an AMQP handshake succeeds, not
//! when the port opens, and is stopped with SIGTERM (a clean shutdown) before the outage test
//! starts it again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{free_port, repo_root, venv_python};

/// The user every node has.
pub const USER: &str = "vidmesh";
/// Its password.
pub const PASSWORD: &str = "rabbit-test-pw";

/// How long a node may take to boot: several seconds idle, much more while the machine
/// compiles.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// One message as the consumer script printed it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Consumed {
    pub routing_key: String,
    /// The `message_id` property (vidmesh: the stable message id).
    pub message_id: Option<String>,
    /// The `sensorId` header.
    pub sensor_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub redelivered: bool,
    pub payload: String,
}

/// A RabbitMQ node, stopped when dropped.
pub struct RabbitMq {
    /// Config, data (`mnesia/`), logs and the Erlang cookie (`HOME`).
    dir: tempfile::TempDir,
    pub port: u16,
    /// The TLS listener's port, for nodes from [`Self::start_tls`].
    pub tls_port: Option<u16>,
    dist_port: u16,
    node: Option<Child>,
}

impl RabbitMq {
    /// A node with RabbitMQ's defaults.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A node with extra `rabbitmq.conf` lines, e.g. `"max_message_size = 4096"`.
    pub fn start_with(config: &[&str]) -> Self {
        Self::launch(config, false)
    }

    /// A node that also listens for AMQP over TLS, with a certificate for `localhost` and
    /// 127.0.0.1 issued by a CA made for it ([`Self::ca_file`]).
    pub fn start_tls() -> Self {
        Self::launch(&[], true)
    }

    fn launch(config: &[&str], tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let tls_port = tls.then(free_port);
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             default_user = {USER}\n\
             default_pass = {PASSWORD}\n\
             loopback_users = none\n\
             log.file.level = info\n"
        );
        for line in config {
            conf.push_str(line);
            conf.push('\n');
        }
        if let Some(tls_port) = tls_port {
            make_certificates(dir.path());
            let d = dir.path().display();
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            ));
        }
        write(&dir.path().join("rabbitmq.conf"), &conf);
        // No plugins, and none of the system's files (/etc/rabbitmq) are read.
        write(&dir.path().join("enabled_plugins"), "[].\n");
        write(&dir.path().join("rabbitmq-env.conf"), "");
        let mut server = Self {
            dir,
            port,
            tls_port,
            dist_port: free_port(),
            node: None,
        };
        server.restart();
        server
    }

    /// `amqp://vidmesh:PASSWORD@127.0.0.1:PORT` (vhost `/`).
    pub fn uri(&self) -> String {
        self.uri_as(USER, PASSWORD)
    }

    /// The node's URI with other credentials.
    pub fn uri_as(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// `amqps://vidmesh:PASSWORD@localhost:TLS_PORT`, for a node from [`Self::start_tls`].
    pub fn tls_uri(&self) -> String {
        let port = self.tls_port.expect("a node started with start_tls");
        format!("amqps://{USER}:{PASSWORD}@localhost:{port}")
    }

    /// The CA certificate (PEM) that issued the TLS listener's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// pika's form of [`Self::uri`]: it wants the vhost spelled out.
    fn pika_uri(&self) -> String {
        format!("{}/%2F", self.uri())
    }

    /// Stops the node cleanly (SIGTERM: RabbitMQ closes its connections and syncs its queues),
    /// killing it if it takes more than 30 s. Its data stays for [`Self::restart`].
    pub fn stop(&mut self) {
        let Some(mut node) = self.node.take() else {
            return;
        };
        signal("TERM", &node.id().to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // Its helpers exit with the VM.
            if let Ok(Some(_)) = node.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_group(&node);
        let _ = node.wait();
    }

    /// Starts the node (again) with the same name, port and data, and waits until it accepts
    /// an AMQP handshake.
    pub fn restart(&mut self) {
        assert!(self.node.is_none(), "the node is already running");
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .expect("a console log in the temporary directory");
        let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        command
            .current_dir(dir)
            .env("HOME", dir)
            .env(
                "RABBITMQ_NODENAME",
                format!("vidmesh-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            // The default (AMQP port + 20000) may be past 65535 or taken.
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            // The script then execs the Erlang VM instead of running it as a background job
            // of a shell, so the child is the node: signals reach it, and it dies with us.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // Its own process group, so the VM's helpers (erl_child_setup, inet_gethost) go too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let node = command
            .spawn()
            .unwrap_or_else(|e| panic!("rabbitmq-server runs (scripts/setup installs it): {e}"));
        self.node = Some(node);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(node) = self.node.as_mut() {
                if let Ok(Some(status)) = node.try_wait() {
                    panic!(
                        "rabbitmq-server exited ({status}) while starting:\n{}",
                        self.console_tail()
                    );
                }
            }
            // The port opens near the end of the boot; a handshake then proves it is done.
            let tls_open = self
                .tls_port
                .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && tls_open
                && self
                    .client(&["ping"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not accept an AMQP handshake on port {} within {BOOT_TIMEOUT:?}:\n{}",
                self.port,
                self.console_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The node's log files, for a failing test to print.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(venv_python());
        command
            .arg(repo_root().join("tests/scripts/amqp_consume.py"))
            .args(args)
            .args(["--uri", &self.pika_uri()]);
        command
    }

    /// Declares durable `queue` bound to `exchange` with `binding_key`, before anything is
    /// published, as a consumer service would.
    pub fn declare_queue(&self, queue: &str, exchange: &str, binding_key: &str) {
        let out = self
            .client(&[
                "declare",
                "--queue",
                queue,
                "--exchange",
                exchange,
                "--binding-key",
                binding_key,
            ])
            .output()
            .expect("amqp_consume.py runs");
        assert!(
            out.status.success(),
            "amqp_consume.py declare: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads (and acks) `queue` until `expect` messages came and it is empty, or nothing new
    /// came for 5 s.
    pub fn drain(&self, queue: &str, expect: usize) -> Vec<Consumed> {
        crate::json_lines_of(
            &mut self.client(&[
                "drain",
                "--queue",
                queue,
                "--expect",
                &expect.to_string(),
                "--idle",
                "5",
                "--timeout",
                "120",
            ]),
            "amqp_consume.py drain",
        )
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // No clean shutdown needed: the data goes with the temporary directory.
        if let Some(mut node) = self.node.take() {
            kill_group(&node);
            let _ = node.wait();
        }
    }
}

/// A CA (`ca.pem`) and a server certificate it issued for `localhost` and 127.0.0.1
/// (`server.pem`, `server.key`), with Debian's openssl.
fn make_certificates(dir: &Path) {
    write(
        &dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    );
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vidmesh test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("openssl runs: {e}"));
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn signal(name: &str, target: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), "--", target])
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to the node's process group (its pid, since it leads the group).
fn kill_group(node: &Child) {
    signal("KILL", &format!("-{}", node.id()));
}
