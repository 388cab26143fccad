//! A throwaway redis-server for broker tests (Debian's redis-server; scripts/setup installs
//! it), read back with redis-py, an independent client.

use std::process::Command;

use crate::{free_port, ServerProcess};

/// A throwaway redis-server on a loopback port, its data (append-only file) in `dir` so a
/// restarted server still has what it confirmed before.
pub struct RedisServer {
    process: Option<ServerProcess>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (a port a test kept free until now).
    pub fn start_on(port: u16) -> Self {
        let mut server = Self {
            process: None,
            port,
            dir: tempfile::tempdir().expect("a scratch directory"),
        };
        server.restart();
        server
    }

    /// Starts the server (again) with the same port and data.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            self.dir.path().to_str().expect("redis answers"),
        ]);
        self.process = Some(ServerProcess::start(command, self.port));
    }

    /// Stops the server the way an operator would (SIGTERM: it finishes its append-only file).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("redis answers")
    }

    pub fn len(&self, stream: &str) -> usize {
        self.cli(&["XLEN", stream]).trim().parse().unwrap_or(0)
    }

    /// (sensorId, messageId, payload) of every entry, in stream order.
    pub fn entries(&self, stream: &str) -> Vec<(String, String, String)> {
        let script = format!(
            "import json,redis\n\
             r=redis.Redis(port={})\n\
             for _id,f in r.xrange('{stream}'):\n\
             \x20   print(json.dumps([f[b'sensorId'].decode(),f[b'messageId'].decode(),f[b'payload'].decode()]))",
            self.port
        );
        crate::json_lines_of(
            Command::new(crate::venv_python()).args(["-c", &script]),
            "the redis-py reader",
        )
    }
}
