//! Links between stage processes, over zenoh.
//!
//! Every stage process opens one [`NetNode`]: a zenoh session plus its identity (stage,
//! replica, epoch) and a table of the other instances it has heard from. On top of it,
//! [`RemoteOutput`] sends a stage's output to every replica of one downstream stage, and
//! [`RemoteInbox`] receives what upstream stages send to this one.
//!
//! Delivery contract (see docs/ARCHITECTURE.md, "Across processes"):
//! * deliveries are numbered per producer epoch; the consumer grants credits (how many it has
//!   taken out of its inbox) and the producer keeps at most `window` deliveries outstanding per
//!   consumer replica, so memory stays bounded whatever the speed difference; a delivery
//!   that carries no pixels, tensors or masks costs 1/[`CREDIT_UNITS`] of a credit
//!   ([`credit_cost`]), so metadata-only links keep a round trip's worth of messages in
//!   flight while the bytes they hold stay as bounded as a frame link's;
//! * a producer keeps every delivery until the consumer acknowledges it as *done* (everything
//!   that followed from it downstream was acknowledged too), and re-sends what a restarted or
//!   dead consumer never acknowledged — to the same replica when the link is sharded, to any
//!   live replica when it is load-balanced;
//! * the consumer deduplicates by (source, frame number), so re-sends are harmless;
//! * the consumer's credits, acks and slot releases travel back coalesced, one report per
//!   producer instance per batch of deliveries (at most [`FEEDBACK_DELAY`] late), and every
//!   report is idempotent, so a lost one is healed by the next or by the periodic re-grant.
//!
//! Key expressions (one pipeline never hears another's traffic):
//! ```text
//! vidmesh/<pipeline>/data/<consumer>/<replica>/<producer>/<replica>      deliveries
//! vidmesh/<pipeline>/feedback/<producer>/<replica>/<consumer>/<replica>  coalesced credit+acks+releases
//! vidmesh/<pipeline>/announce/<stage>/<replica>                           heartbeats, retirements
//! ```

mod frame_buffer;
mod inbox;
pub mod jpeg;
mod output;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use vidmesh_protocol::{
    encode, Announce, DataMessage, DecodeError, Envelope, Instance, Limits, PayloadRef,
};
use zenoh::bytes::ZBytes;
use zenoh::Wait;

pub use frame_buffer::FrameBuffer;
pub use inbox::{DeliveryTag, InboxDelivery, InboxStats, RemoteInbox, FEEDBACK_DELAY};
pub use output::{
    keys_of, FrameKey, LinkEvent, OutputSettings, OutputStats, PayloadMode, RemoteOutput, Routing,
    END_OF_STREAM,
};

/// Credit units one delivery of a frame costs; see [`credit_cost`].
pub const CREDIT_UNITS: u64 = 64;

/// What a delivery costs in credit units, the same on both ends of a link: a full credit
/// ([`CREDIT_UNITS`]) for anything that carries pixels (in any form), tensors or masks, one
/// unit for metadata alone (a few hundred bytes per frame). Counting small messages as whole
/// deliveries capped a metadata link at `window` messages per credit round trip, about
/// 25,000/s with 8 credits on a loaded 2-core host (docs/BENCHMARKS.md, "Transport"); a
/// window of light deliveries holds no more memory than one frame.
pub fn credit_cost(message: &DataMessage) -> u64 {
    let DataMessage::Batch(batch) = message else {
        return 1;
    };
    let heavy = !batch.tensors.is_empty()
        || batch.frames.iter().any(|f| {
            !matches!(f.payload, PayloadRef::None) || f.objects.iter().any(|o| o.mask.is_some())
        });
    if heavy {
        CREDIT_UNITS
    } else {
        1
    }
}

/// How often every instance announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Why a process link failed.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot open the zenoh session ({endpoints}): {reason}")]
    Open { endpoints: String, reason: String },
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error("`{0}` cannot be part of a key expression: names may only use letters, digits, `_`, `-` and `.`")]
    BadName(String),
    #[error("{peer} speaks vidmesh protocol version {theirs} but {me} speaks version {ours}: run the same vidmesh build on both sides")]
    VersionMismatch {
        peer: String,
        theirs: u16,
        me: String,
        ours: u16,
    },
    #[error("message from {peer} could not be decoded: {reason}")]
    Malformed { peer: String, reason: String },
    #[error("shared memory: {0}")]
    SharedMemory(String),
}

fn zerr(e: impl std::fmt::Display) -> NetError {
    NetError::Zenoh(e.to_string())
}

/// Where and how to join the zenoh network.
#[derive(Debug, Clone, Default)]
pub struct NetConfig {
    pub pipeline: String,
    /// Endpoints to connect to, e.g. `tcp/127.0.0.1:7447` (the launcher's router).
    pub connect: Vec<String>,
    /// Endpoints to listen on; empty = `tcp/127.0.0.1:0`.
    pub listen: Vec<String>,
    /// `peer` (default) or `client`/`router`.
    pub mode: Option<String>,
}

impl NetConfig {
    fn to_zenoh(&self) -> Result<zenoh::Config, NetError> {
        let mut c = zenoh::Config::default();
        let mode = self.mode.clone().unwrap_or_else(|| "peer".into());
        // A client only connects (to its router); peers and routers also accept.
        let listen = if !self.listen.is_empty() || mode == "client" {
            self.listen.clone()
        } else {
            vec!["tcp/127.0.0.1:0".to_string()]
        };
        let set = |c: &mut zenoh::Config, k: &str, v: String| {
            c.insert_json5(k, &v).map_err(|e| NetError::Open {
                endpoints: format!("{k} = {v}"),
                reason: e.to_string(),
            })
        };
        set(&mut c, "mode", format!("{mode:?}"))?;
        set(&mut c, "listen/endpoints", json_list(&listen))?;
        set(&mut c, "connect/endpoints", json_list(&self.connect))?;
        // Peers find each other through the router they connect to (gossip); multicast
        // scouting is off because containers and CI networks often drop it.
        set(&mut c, "scouting/multicast/enabled", "false".into())?;
        Ok(c)
    }
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(","))
}

/// Opens a bare zenoh session, e.g. a router that only forwards between the processes and
/// routers connected to it (`vidmesh router`).
pub fn open_session(config: &NetConfig) -> Result<zenoh::Session, NetError> {
    check_name(&config.pipeline)?;
    zenoh::open(config.to_zenoh()?)
        .wait()
        .map_err(|e| NetError::Open {
            endpoints: format!("listen {:?}, connect {:?}", config.listen, config.connect),
            reason: e.to_string(),
        })
}

/// A name usable as one chunk of a key expression.
pub fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::BadName(name.to_string()))
    }
}

/// What this process knows about another instance.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub epoch: u64,
    pub last_seen: Instant,
    pub finished: bool,
    pub retired: bool,
}

/// Instances heard from, by (stage, replica).
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Mutex<HashMap<(String, u32), PeerState>>,
    /// The first incompatible peer seen; fatal for the links that meet it.
    incompatible: Mutex<Option<NetError>>,
}

impl PeerTable {
    fn heard(&self, instance: &Instance, finished: bool) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = peers
            .entry((instance.stage.clone(), instance.replica))
            .or_insert(PeerState {
                epoch: instance.epoch,
                last_seen: Instant::now(),
                finished,
                retired: false,
            });
        if entry.epoch != instance.epoch {
            entry.finished = false;
        }
        entry.epoch = instance.epoch;
        entry.last_seen = Instant::now();
        entry.finished = finished;
        entry.retired = false;
    }

    fn retire(&self, stage: &str, replica: u32) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get_mut(&(stage.to_string(), replica)) {
            p.retired = true;
        } else {
            peers.insert(
                (stage.to_string(), replica),
                PeerState {
                    epoch: 0,
                    last_seen: Instant::now() - Duration::from_secs(3600),
                    finished: false,
                    retired: true,
                },
            );
        }
    }

    /// The latest state of `stage`/`replica`, if it was ever heard.
    pub fn get(&self, stage: &str, replica: u32) -> Option<PeerState> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&(stage.to_string(), replica)).cloned()
    }

    /// Every replica of `stage` heard from (or announced retired), in order.
    pub fn replicas_of(&self, stage: &str) -> Vec<u32> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut replicas: Vec<u32> = peers
            .keys()
            .filter(|(s, _)| s == stage)
            .map(|(_, r)| *r)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// The replica of a per-source `stage` with `replicas` replicas that takes `source`:
    /// `source % replicas`, or the next one after it not retired. Producers route by it and
    /// consumers use it to notice that a source they took over has gone back to its owner.
    pub fn owner_of(&self, stage: &str, replicas: u32, source: u32) -> u32 {
        let n = replicas.max(1);
        let start = source % n;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|r| !self.get(stage, *r).is_some_and(|p| p.retired))
            .unwrap_or(start)
    }

    /// Heard within `within`.
    pub fn alive(&self, stage: &str, replica: u32, within: Duration) -> bool {
        self.get(stage, replica)
            .is_some_and(|p| !p.retired && p.last_seen.elapsed() <= within)
    }

    fn record_incompatible(&self, error: NetError) {
        let mut slot = self.incompatible.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!("{error}");
            *slot = Some(error);
        }
    }

    /// A peer of another protocol version, if one spoke to us.
    pub fn incompatible(&self) -> Option<String> {
        let slot = self.incompatible.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|e| e.to_string())
    }
}

/// Decodes a message from a peer, turning version mismatches into an error naming both sides.
pub(crate) fn decode_from(
    payload: &ZBytes,
    peer: &str,
    me: &Instance,
    limits: &Limits,
) -> Result<Envelope, NetError> {
    wire::from_zbytes(payload, limits).map_err(|e| from_peer(e, peer, me))
}

/// [`decode_from`] for a receiver that attaches the detached buffers later ([`wire::Tail`]).
pub(crate) fn decode_head_from(
    payload: &ZBytes,
    peer: &str,
    me: &Instance,
    limits: &Limits,
) -> Result<(Envelope, Option<wire::Tail>), NetError> {
    wire::head_from_zbytes(payload, limits).map_err(|e| from_peer(e, peer, me))
}

fn from_peer(e: DecodeError, peer: &str, me: &Instance) -> NetError {
    match e {
        DecodeError::NewerVersion { found, supported }
        | DecodeError::OlderVersion { found, supported } => NetError::VersionMismatch {
            peer: peer.to_string(),
            theirs: found,
            me: me.to_string(),
            ours: supported,
        },
        other => NetError::Malformed {
            peer: peer.to_string(),
            reason: other.to_string(),
        },
    }
}

/// One process's presence on the network.
pub struct NetNode {
    session: zenoh::Session,
    pipeline: String,
    me: Instance,
    peers: Arc<PeerTable>,
    finished: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    _announcements: zenoh::pubsub::Subscriber<()>,
}

impl NetNode {
    /// Joins the network as `stage`/`replica` with a fresh random epoch.
    pub fn open(config: &NetConfig, stage: &str, replica: u32) -> Result<Self, NetError> {
        check_name(&config.pipeline)?;
        check_name(stage)?;
        let session = zenoh::open(config.to_zenoh()?)
            .wait()
            .map_err(|e| NetError::Open {
                endpoints: format!("connect {:?}", config.connect),
                reason: e.to_string(),
            })?;
        let me = Instance {
            stage: stage.to_string(),
            replica,
            epoch: rand::random::<u64>() | 1,
        };
        let peers = Arc::new(PeerTable::default());
        let announcements = {
            let peers = peers.clone();
            let me = me.clone();
            let limits = Limits::default();
            session
                .declare_subscriber(format!("vidmesh/{}/announce/**", config.pipeline))
                .callback(move |sample| {
                    let key = sample.key_expr().as_str().to_string();
                    let peer = key.rsplitn(3, '/').take(2).collect::<Vec<_>>();
                    let peer = format!("{}/{}", peer.get(1).unwrap_or(&"?"), peer[0]);
                    match decode_from(sample.payload(), &peer, &me, &limits) {
                        Ok(Envelope::Announce(Announce::Heartbeat { instance, finished })) => {
                            peers.heard(&instance, finished)
                        }
                        Ok(Envelope::Announce(Announce::Retired { stage, replica })) => {
                            peers.retire(&stage, replica)
                        }
                        Ok(_) => {}
                        Err(e @ NetError::VersionMismatch { .. }) => peers.record_incompatible(e),
                        Err(e) => tracing::warn!("ignoring an announcement: {e}"),
                    }
                })
                .wait()
                .map_err(zerr)?
        };
        let finished = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let publisher = session
                .declare_publisher(format!(
                    "vidmesh/{}/announce/{}/{}",
                    config.pipeline, stage, replica
                ))
                .wait()
                .map_err(zerr)?;
            let (me, finished, stop) = (me.clone(), finished.clone(), stop.clone());
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let beat = Envelope::Announce(Announce::Heartbeat {
                            instance: me.clone(),
                            finished: finished.load(Ordering::Relaxed),
                        });
                        if let Ok(bytes) = encode(&beat) {
                            let _ = publisher.put(bytes).wait();
                        }
                        std::thread::sleep(HEARTBEAT_INTERVAL);
                    }
                })
                .map_err(|e| NetError::Zenoh(format!("cannot start the heartbeat thread: {e}")))?
        };
        Ok(Self {
            session,
            pipeline: config.pipeline.clone(),
            me,
            peers,
            finished,
            stop,
            heartbeat: Some(heartbeat),
            _announcements: announcements,
        })
    }

    pub fn me(&self) -> &Instance {
        &self.me
    }

    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    pub fn peers(&self) -> &Arc<PeerTable> {
        &self.peers
    }

    pub(crate) fn session(&self) -> &zenoh::Session {
        &self.session
    }

    /// Tells everyone this instance has nothing more to send and nothing unacknowledged.
    pub fn set_finished(&self, finished: bool) {
        self.finished.store(finished, Ordering::Relaxed);
    }

    /// Announces that `stage`/`replica` will not come back (the launcher gave up on it).
    pub fn announce_retired(&self, stage: &str, replica: u32) -> Result<(), NetError> {
        let bytes = encode(&Envelope::Announce(Announce::Retired {
            stage: stage.to_string(),
            replica,
        }))
        .map_err(zerr)?;
        self.session
            .put(
                format!("vidmesh/{}/announce/{}/{}", self.pipeline, stage, replica),
                bytes,
            )
            .wait()
            .map_err(zerr)
    }

    pub(crate) fn data_key(&self, consumer: &str, replica: u32) -> String {
        data_key(&self.pipeline, consumer, replica, &self.me)
    }
}

/// Where `producer` puts deliveries for `consumer`/`replica`.
pub(crate) fn data_key(
    pipeline: &str,
    consumer: &str,
    replica: u32,
    producer: &Instance,
) -> String {
    format!(
        "vidmesh/{pipeline}/data/{consumer}/{replica}/{}/{}",
        producer.stage, producer.replica
    )
}

impl NetNode {
    /// This instance leaves for good (a replica scaled away): its heartbeats stop, then it
    /// announces itself retired, so producers give its unacknowledged deliveries to the other
    /// replicas and consumers stop waiting for it. A heartbeat after the announcement would
    /// undo it, hence the order.
    pub fn leave(&mut self) -> Result<(), NetError> {
        self.stop_heartbeat();
        let (stage, replica) = (self.me.stage.clone(), self.me.replica);
        self.announce_retired(&stage, replica)
    }

    fn stop_heartbeat(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}
