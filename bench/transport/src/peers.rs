//! The transports measured, and the child processes that measure each.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{Payload, RoleArgs};

/// One way of moving messages from a producer to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// vidmesh's in-process link, two threads of one process.
    InProcess,
    /// vidmesh process link, `PayloadMode::SharedMemory` (RemoteOutput copies into its slot).
    VidmeshShm,
    /// As above with the frame already in a shared-memory slot (no copy by the link).
    VidmeshShmPrefilled,
    /// vidmesh process link, `PayloadMode::Raw` over zenoh TCP loopback.
    VidmeshTcp,
    /// Bare zenoh shared memory, the frame copied into each buffer.
    ZenohShm,
    /// Bare zenoh shared memory, only a 16-byte header written into each buffer.
    ZenohShmPrefilled,
    /// Bare zenoh over TCP loopback.
    ZenohTcp,
    /// dora-rs: a producer and a consumer node in one dataflow (`dora run`), the frame copied
    /// into each sample `send_output_raw` hands out (dora's shared-memory pool).
    Dora,
    /// The same, writing only a 16-byte header into each sample.
    DoraPrefilled,
}

/// (vidmesh, its peer): the comparisons the report makes.
pub const PAIRS: &[(Transport, Transport)] = &[
    (Transport::VidmeshShm, Transport::ZenohShm),
    (Transport::VidmeshShmPrefilled, Transport::ZenohShmPrefilled),
    (Transport::VidmeshTcp, Transport::ZenohTcp),
    (Transport::VidmeshShm, Transport::Dora),
    (Transport::VidmeshShmPrefilled, Transport::DoraPrefilled),
];

impl Transport {
    pub const ALL: [Transport; 9] = [
        Transport::InProcess,
        Transport::VidmeshShm,
        Transport::VidmeshShmPrefilled,
        Transport::VidmeshTcp,
        Transport::ZenohShm,
        Transport::ZenohShmPrefilled,
        Transport::ZenohTcp,
        Transport::Dora,
        Transport::DoraPrefilled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::InProcess => "vidmesh-inproc",
            Transport::VidmeshShm => "vidmesh-shm",
            Transport::VidmeshShmPrefilled => "vidmesh-shm-prefilled",
            Transport::VidmeshTcp => "vidmesh-tcp",
            Transport::ZenohShm => "zenoh-shm",
            Transport::ZenohShmPrefilled => "zenoh-shm-prefilled",
            Transport::ZenohTcp => "zenoh-tcp",
            Transport::Dora => "dora",
            Transport::DoraPrefilled => "dora-prefilled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                format!("unknown transport `{s}` ({})", names.join(", "))
            })
    }

    /// The frame is already in shared memory: only meaningful for frames.
    pub fn prefilled(self) -> bool {
        matches!(
            self,
            Transport::VidmeshShmPrefilled
                | Transport::ZenohShmPrefilled
                | Transport::DoraPrefilled
        )
    }

    /// Whether this transport has a cell for `payload` (prefilled variants: frames only).
    pub fn runs(self, payload: Payload) -> bool {
        payload.is_frame() || !self.prefilled()
    }
}

/// The processes of one cell: the consumer (which prints `READY` then `RESULT`) and the
/// producer, started once the consumer is ready; `None` when the consumer does both.
pub struct Roles {
    pub consumer: Command,
    pub producer: Option<Command>,
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))
}

/// The bare-zenoh shared-memory peer, built apart (see Cargo.toml) next to this binary, or
/// where `ZENOH_SHM_PEER` says.
fn zenoh_shm_peer() -> Result<PathBuf, String> {
    let path = match std::env::var_os("ZENOH_SHM_PEER") {
        Some(p) => PathBuf::from(p),
        None => exe()?.with_file_name("zenoh-shm-peer"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release --manifest-path \
             bench/transport/zenoh-shm-peer/Cargo.toml --target-dir bench/transport/target` \
             (bench/transport/run.sh does)",
            path.display()
        ))
    }
}

/// dora's peer (`dora-peer/`, built apart) and dora's command line, each next to this binary
/// or where `DORA_PEER` and `DORA_CLI` say.
fn dora_tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, name: &str, how: &str| -> Result<PathBuf, String> {
        let path = match std::env::var_os(var) {
            Some(p) => PathBuf::from(p),
            None => exe()?.with_file_name(name),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} not found (nor ${var}): {how}", path.display()))
        }
    };
    let cli = find(
        "DORA_CLI",
        "dora",
        "install dora's command line with `bench/transport/run.sh --with-dora` (slow)",
    )?;
    let peer = find(
        "DORA_PEER",
        "dora-peer",
        "build it with `cargo build --release --manifest-path \
         bench/transport/dora-peer/Cargo.toml --target-dir bench/transport/target`",
    )?;
    Ok((peer, cli))
}

/// Why `transport` cannot run here, if it cannot: its cells are then skipped, not failed.
pub fn unavailable(transport: Transport) -> Option<String> {
    match transport {
        Transport::Dora | Transport::DoraPrefilled => dora_tools().err(),
        _ => None,
    }
}

fn role(program: PathBuf, role: &str, args: &RoleArgs) -> Command {
    let mut c = Command::new(program);
    c.arg(role).args(args.to_args());
    c
}

pub fn commands(transport: Transport, args: &RoleArgs) -> Result<Roles, String> {
    let me = exe()?;
    Ok(match transport {
        Transport::InProcess => Roles {
            consumer: role(me, "inproc", args),
            producer: None,
        },
        Transport::VidmeshShm | Transport::VidmeshShmPrefilled => Roles {
            consumer: role(me.clone(), "vidmesh-consume", args),
            producer: Some(role(me, "vidmesh-shm-produce", args)),
        },
        Transport::VidmeshTcp => Roles {
            consumer: role(me.clone(), "vidmesh-consume", args),
            producer: Some(role(me, "vidmesh-tcp-produce", args)),
        },
        Transport::ZenohShm | Transport::ZenohShmPrefilled => {
            let peer = zenoh_shm_peer()?;
            Roles {
                consumer: role(peer.clone(), "consume", args),
                producer: Some(role(peer, "produce", args)),
            }
        }
        Transport::ZenohTcp => Roles {
            consumer: role(me.clone(), "zenoh-consume", args),
            producer: Some(role(me, "zenoh-produce", args)),
        },
        // One child runs the whole dataflow (`dora run` starts both nodes) and prints the
        // consumer node's result.
        Transport::Dora | Transport::DoraPrefilled => {
            let (peer, cli) = dora_tools()?;
            let mut cell = role(peer, "cell", args);
            cell.env("DORA_CLI", cli);
            Roles {
                consumer: cell,
                producer: None,
            }
        }
    })
}
