//! The producer end of a process link: one stage's output to every replica of one downstream
//! stage.
//!
//! `send_blocking` queues and, while the consumer has credit, publishes from the caller's
//! thread; a pump thread publishes the rest (what waited for credit, re-sends), so re-sends
//! happen even while the stage itself is idle or finished. Every delivery stays in `pending`
//! until the consumer acknowledges it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vidmesh_protocol::{
    encode_detached, Batch, DataMessage, Delivery, Envelope, Feedback, Instance, Limits, PayloadRef,
};
use zenoh::Wait;

use super::frame_buffer::{FrameBuffer, HeldSlots, HELD_BY_LINK};
use super::{credit_cost, decode_from, wire, zerr, NetError, NetNode, PeerTable, CREDIT_UNITS};
use crate::shm::SlotPool;
use crate::LinkClosed;

/// (source id, frame number) — what deduplication and acknowledgement key on. A stream's end
/// notice uses frame number [`END_OF_STREAM`].
pub type FrameKey = (u32, u64);

/// The frame number standing for a source's end-of-stream notice.
pub const END_OF_STREAM: u64 = u64::MAX;

/// The keys a message carries.
pub fn keys_of(message: &DataMessage) -> Vec<FrameKey> {
    match message {
        DataMessage::Batch(b) => b
            .frames
            .iter()
            .map(|f| (f.source_id, f.frame_num))
            .collect(),
        DataMessage::EndOfStream(end) => vec![(end.source_id, END_OF_STREAM)],
    }
}

/// What the producer tells its stage's bookkeeping, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A delivery carrying these keys was queued (one event per delivery, so a broadcast
    /// end-of-stream counts once per replica).
    Emitted(Vec<FrameKey>),
    /// That delivery is done downstream.
    Acked(Vec<FrameKey>),
}

/// How deliveries choose a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Any live replica with credits (stateless stages).
    Balance,
    /// `source_id % replicas`, so a stream's frames stay on one replica (stateful stages).
    BySource,
}

/// How pixels travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// Producer-owned shared-memory slots on this host; only a reference crosses the socket.
    SharedMemory,
    /// Inside the message (across hosts).
    Raw,
    /// JPEG-encoded inside the message (across hosts, a tenth of the bytes, lossy).
    Jpeg { quality: u8 },
}

#[derive(Debug, Clone)]
pub struct OutputSettings {
    pub consumer: String,
    /// The consumer's replicas 0..N. A load-balanced consumer may have more: any replica
    /// that announces itself or grants credit joins (a stage scaled up while it runs).
    pub replicas: u32,
    /// Deliveries a replica may have outstanding before it grants more credit.
    pub window: u32,
    pub routing: Routing,
    pub payload: PayloadMode,
    /// A replica not heard from for this long is dead: a load-balanced link re-sends its
    /// unacknowledged deliveries to the others.
    pub dead_after: Duration,
    /// Where shared-memory segments live (normally /dev/shm).
    pub shm_dir: PathBuf,
    /// When the window is full, drop the oldest delivery not yet sent (counted) instead of
    /// waiting — for live sources where fresh frames matter more than complete ones.
    pub drop_oldest: bool,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct OutputStats {
    pub sent: AtomicU64,
    pub resent: AtomicU64,
    pub acked: AtomicU64,
    /// Deliveries dropped unsent because the link was full (`drop_oldest`).
    pub dropped: AtomicU64,
}

struct Pending {
    message: DataMessage,
    keys: Vec<FrameKey>,
    /// What it costs in credit units ([`credit_cost`]).
    cost: u64,
    /// A fixed replica (sharded links, end-of-stream copies), or any.
    target: Option<u32>,
    /// Where it went last: (replica, that replica's epoch).
    sent_to: Option<(u32, u64)>,
    sends: u32,
}

#[derive(Default)]
struct ReplicaState {
    /// Learnt from its credits; `None` until the first one.
    epoch: Option<u64>,
    /// Credit units sent to this epoch, and taken out by it (as it reported).
    sent: u64,
    consumed: u64,
    /// Its window in full deliveries ([`CREDIT_UNITS`] units each).
    window: u32,
    /// It stopped announcing itself (partition, crash) and has not been reset since.
    silent: bool,
}

impl ReplicaState {
    /// Credit units it has room for now.
    fn free(&self) -> u64 {
        (self.window as u64 * CREDIT_UNITS).saturating_sub(self.sent.saturating_sub(self.consumed))
    }
}

struct State {
    next_seq: u64,
    /// Change only through `insert_pending`/`remove_pending`, which keep `pending_cost`.
    pending: BTreeMap<u64, Pending>,
    /// Credit units of everything in `pending`.
    pending_cost: u64,
    queue: VecDeque<u64>,
    /// By replica number: 0..N from the start, later joiners of a load-balanced link.
    replicas: BTreeMap<u32, ReplicaState>,
    round_robin: usize,
    /// Stage threads waiting in `send_blocking`; feedback wakes them rather than the pump,
    /// and they publish what the feedback allows themselves.
    senders_waiting: u32,
    /// Slots of frame buffers the stage filled (sent by reference).
    held: HeldSlots,
}

impl State {
    fn insert_pending(&mut self, seq: u64, p: Pending) {
        self.pending_cost += p.cost;
        if let Some(old) = self.pending.insert(seq, p) {
            self.pending_cost -= old.cost;
        }
    }

    fn remove_pending(&mut self, seq: u64) -> Option<Pending> {
        let p = self.pending.remove(&seq)?;
        self.pending_cost -= p.cost;
        Some(p)
    }
}

pub(super) struct Shared {
    me: Instance,
    settings: OutputSettings,
    peers: Arc<PeerTable>,
    state: Mutex<State>,
    /// Wakes the pump thread.
    wake: Condvar,
    /// Wakes stage threads waiting in `send_blocking` for acknowledgements.
    room: Condvar,
    events: Sender<LinkEvent>,
    stop: AtomicBool,
    pool: Option<SlotPool>,
    stats: OutputStats,
    /// One per consumer replica, declared when first used. Whoever publishes (the pump or a
    /// sending stage thread) holds this lock from picking a delivery to putting it, which
    /// keeps each replica's order.
    publishers: Mutex<BTreeMap<u32, zenoh::pubsub::Publisher<'static>>>,
    session: zenoh::Session,
    pipeline: String,
}

/// Sends one stage's output to all replicas of one downstream stage.
pub struct RemoteOutput {
    shared: Arc<Shared>,
    name: String,
    pump: Option<std::thread::JoinHandle<()>>,
    _feedback: zenoh::pubsub::Subscriber<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lessee(&self, replica: u32, epoch: u64) -> String {
        format!("{}/{}/{:x}", self.settings.consumer, replica, epoch)
    }

    /// Puts everything sent to `replica` back in the queue (it restarted or died).
    fn requeue_from(&self, state: &mut State, replica: u32) {
        let mut back: Vec<u64> = Vec::new();
        for (seq, p) in state.pending.iter_mut() {
            if matches!(p.sent_to, Some((r, _)) if r == replica) {
                p.sent_to = None;
                back.push(*seq);
            }
        }
        for seq in back.into_iter().rev() {
            state.queue.push_front(seq);
        }
    }

    /// The state of `replica`; a load-balanced link adds replicas it did not know.
    fn replica<'s>(&self, state: &'s mut State, replica: u32) -> Option<&'s mut ReplicaState> {
        if self.settings.routing == Routing::Balance {
            let window = self.settings.window.max(1);
            Some(
                state
                    .replicas
                    .entry(replica)
                    .or_insert_with(|| ReplicaState {
                        window,
                        ..Default::default()
                    }),
            )
        } else {
            state.replicas.get_mut(&replica)
        }
    }

    fn reset_replica(&self, state: &mut State, replica: u32, epoch: Option<u64>) {
        let Some(old) = state.replicas.get(&replica).map(|r| r.epoch) else {
            return;
        };
        if let (Some(pool), Some(old)) = (&self.pool, old) {
            let lessee = self.lessee(replica, old);
            pool.reclaim(&lessee);
            state.held.lessee_gone(&lessee, pool);
        }
        self.requeue_from(state, replica);
        let Some(r) = state.replicas.get_mut(&replica) else {
            return;
        };
        r.epoch = epoch;
        r.sent = 0;
        r.consumed = 0;
    }

    /// Applies one consumer report: its credit, its acks and its releases, under one lock.
    fn on_feedback(&self, feedback: Feedback) {
        let Feedback {
            from,
            producer_epoch,
            consumed,
            window,
            acks,
            releases,
        } = feedback;
        if let Some(pool) = self.pool.as_ref().filter(|_| !releases.is_empty()) {
            let lessee = self.lessee(from.replica, from.epoch);
            let mut state = self.lock();
            for s in releases {
                let key = (s.segment, s.slot, s.generation);
                if !state.held.released(key.clone(), &lessee, pool) {
                    pool.release(&key.0, key.1, key.2);
                }
            }
        }
        if producer_epoch != self.me.epoch
            || (from.replica >= self.settings.replicas && self.settings.routing != Routing::Balance)
        {
            return;
        }
        // A late report of an instance that has since restarted (its heartbeats name another
        // epoch) still settles its acks, but its credit is not the new instance's.
        let stale = self
            .peers
            .get(&self.settings.consumer, from.replica)
            .is_some_and(|p| p.epoch != from.epoch);
        let mut state = self.lock();
        let retired = self
            .peers
            .get(&self.settings.consumer, from.replica)
            .is_some_and(|p| p.retired);
        if !stale && !retired {
            let known = self.replica(&mut state, from.replica).and_then(|r| r.epoch);
            if known != Some(from.epoch) {
                if known.is_some() {
                    tracing::info!(
                        "{} restarted: re-sending what it had not acknowledged",
                        from
                    );
                }
                self.reset_replica(&mut state, from.replica, Some(from.epoch));
            }
            if let Some(r) = state.replicas.get_mut(&from.replica) {
                r.consumed = r.consumed.max(consumed);
                r.window = window.max(1);
            }
        }
        // Acked deliveries normally left the queue when they were sent; one acked while
        // queued (a re-send the consumer had already done) must leave it too.
        let mut any_queued = false;
        for seq in acks {
            if let Some(p) = state.remove_pending(seq) {
                self.settle_held(&mut state, &p.message);
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                let _ = self.events.send(LinkEvent::Acked(p.keys));
                any_queued |= p.sent_to.is_none();
            }
        }
        if any_queued {
            let State { pending, queue, .. } = &mut *state;
            queue.retain(|s| pending.contains_key(s));
        }
        // One thread wakes: a sender waiting for room (it publishes what this allows itself),
        // else the pump.
        if state.senders_waiting > 0 {
            drop(state);
            self.room.notify_all();
        } else {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// A pending delivery is gone: its frame-buffer slots may be free now.
    fn settle_held(&self, state: &mut State, message: &DataMessage) {
        if let Some(pool) = &self.pool {
            state.held.settled(message, pool);
        }
    }

    /// A frame buffer was committed into a payload.
    pub(super) fn hold_frame_buffer(&self, key: (String, u32, u64)) {
        self.lock().held.hold(key);
    }

    /// Notices replicas that restarted, died or joined from the announcements.
    fn check_liveness(&self, state: &mut State) {
        let consumer = &self.settings.consumer;
        if self.settings.routing == Routing::Balance {
            // Replicas started after this link (a stage scaled up while it runs).
            for replica in self.peers.replicas_of(consumer) {
                if !state.replicas.contains_key(&replica)
                    && self
                        .peers
                        .alive(consumer, replica, self.settings.dead_after)
                {
                    tracing::info!("{consumer}/{replica} joined: it gets deliveries too");
                    self.replica(state, replica);
                }
            }
        }
        let replicas: Vec<u32> = state.replicas.keys().copied().collect();
        for replica in replicas {
            let Some(known) = state.replicas.get(&replica).map(|r| r.epoch) else {
                continue;
            };
            let silent = state.replicas.get(&replica).is_some_and(|r| r.silent);
            let peer = self.peers.get(consumer, replica);
            let alive = self
                .peers
                .alive(consumer, replica, self.settings.dead_after);
            let set_silent = |state: &mut State, value: bool| {
                if let Some(r) = state.replicas.get_mut(&replica) {
                    r.silent = value;
                }
            };
            match (known, peer) {
                // Restarted: wait for its first credit, then re-send.
                (Some(epoch), Some(p)) if p.epoch != epoch && alive => {
                    self.reset_replica(state, replica, None);
                }
                (Some(_), _) if !alive && self.settings.routing == Routing::Balance => {
                    tracing::warn!(
                        "{consumer}/{replica} is not responding: its deliveries go to the other replicas"
                    );
                    self.reset_replica(state, replica, None);
                }
                // Its sources wait for it; what was in flight when it fell silent may be lost
                // (a network partition), so everything it has not acknowledged goes again once
                // it is back, and it drops what it already had.
                (Some(_), _) if !alive => set_silent(state, true),
                (None, Some(_)) if alive && silent => set_silent(state, false),
                (Some(_), Some(_)) if alive && silent => {
                    tracing::info!(
                        "{consumer}/{replica} answers again: re-sending what it had not acknowledged"
                    );
                    set_silent(state, false);
                    self.reset_replica(state, replica, None);
                }
                _ => {}
            }
            let retired = self.peers.get(consumer, replica).is_some_and(|p| p.retired);
            if retired && state.replicas.len() > 1 {
                match self.settings.routing {
                    Routing::Balance => self.drop_end_copies_for(state, replica),
                    Routing::BySource => {
                        if state
                            .replicas
                            .get(&replica)
                            .is_some_and(|r| r.epoch.is_some())
                        {
                            self.reset_replica(state, replica, None);
                        }
                        self.retarget_from_retired(state, replica);
                    }
                }
            }
        }
    }

    /// Registers a new delivery (announcing its keys to the stage's ledger) and returns its
    /// sequence number; the caller decides where it goes in the queue.
    fn add_pending(&self, state: &mut State, message: DataMessage, target: Option<u32>) -> u64 {
        let seq = state.next_seq;
        state.next_seq += 1;
        let keys = keys_of(&message);
        state.held.queued(&message);
        let _ = self.events.send(LinkEvent::Emitted(keys.clone()));
        state.insert_pending(
            seq,
            Pending {
                cost: credit_cost(&message),
                message,
                keys,
                target,
                sent_to: None,
                sends: 0,
            },
        );
        seq
    }

    /// How many deliveries may wait for acknowledgement (sent or not): the consumer's windows
    /// and three times as much in flight further downstream. Acknowledgements are end to
    /// end, so a delivery stays here until the whole pipeline after the link is done with it:
    /// this bound is what lets a slow stage far downstream slow the producer. Replicas of a
    /// load-balanced consumer that joined while it runs count, so that scaling it up lets
    /// more be in flight.
    fn pending_limit(&self) -> usize {
        let replicas = match self.settings.routing {
            Routing::Balance => (self.current_replicas().len() as u32).max(self.settings.replicas),
            Routing::BySource => self.settings.replicas,
        };
        in_flight(&self.settings, replicas)
    }

    /// The replicas of a load-balanced link not retired.
    fn current_replicas(&self) -> Vec<u32> {
        let state = self.lock();
        state
            .replicas
            .keys()
            .copied()
            .filter(|r| {
                !self
                    .peers
                    .get(&self.settings.consumer, *r)
                    .is_some_and(|p| p.retired)
            })
            .collect()
    }

    fn data_key(&self, replica: u32) -> String {
        super::data_key(&self.pipeline, &self.settings.consumer, replica, &self.me)
    }

    /// The replica that takes `source` on a per-source link (see [`PeerTable::owner_of`]).
    fn owner(&self, source: u32) -> u32 {
        self.peers
            .owner_of(&self.settings.consumer, self.settings.replicas, source)
    }

    /// A retired replica of a per-source link hands its sources to their next owners: what
    /// it never acknowledged goes there (split where a batch now has two owners), first.
    fn retarget_from_retired(&self, state: &mut State, replica: u32) {
        let seqs: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, p)| p.target == Some(replica))
            .map(|(s, _)| *s)
            .collect();
        if seqs.is_empty() {
            return;
        }
        tracing::warn!(
            "{}/{replica} was retired: its sources move to the other replicas",
            self.settings.consumer
        );
        let mut front = Vec::new();
        for seq in seqs {
            let Some(p) = state.remove_pending(seq) else {
                continue;
            };
            let parts: Vec<(DataMessage, u32)> = match p.message {
                DataMessage::EndOfStream(end) => {
                    let owner = self.owner(end.source_id);
                    vec![(DataMessage::EndOfStream(end), owner)]
                }
                DataMessage::Batch(batch) => split_by(batch, |s| self.owner(s))
                    .into_iter()
                    .map(|(r, b)| (DataMessage::Batch(b), r))
                    .collect(),
            };
            if parts.len() == 1 {
                let (message, target) = parts.into_iter().next().expect("one part");
                state.insert_pending(
                    seq,
                    Pending {
                        cost: p.cost,
                        message,
                        keys: p.keys,
                        target: Some(target),
                        sent_to: None,
                        sends: p.sends,
                    },
                );
                front.push(seq);
                continue;
            }
            for (message, target) in parts {
                let part = self.add_pending(state, message, Some(target));
                // The part carries its frames instead of the original delivery (which held
                // them once): the frame-buffer counts stay as they were.
                let message = state.pending[&part].message.clone();
                self.settle_held(state, &message);
                front.push(part);
            }
            // Replaced by its parts.
            let _ = self.events.send(LinkEvent::Acked(p.keys));
        }
        let State { pending, queue, .. } = state;
        queue.retain(|s| pending.contains_key(s) && !front.contains(s));
        for seq in front.into_iter().rev() {
            queue.push_front(seq);
        }
    }

    /// A retired replica of a load-balanced stage needs no end-of-stream copy: its frames
    /// were re-sent to the others, which forward their own copies.
    fn drop_end_copies_for(&self, state: &mut State, replica: u32) {
        let dead: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, p)| {
                p.target == Some(replica) && matches!(p.message, DataMessage::EndOfStream(_))
            })
            .map(|(s, _)| *s)
            .collect();
        if dead.is_empty() {
            return;
        }
        for seq in dead {
            if let Some(p) = state.remove_pending(seq) {
                self.settle_held(state, &p.message);
                let _ = self.events.send(LinkEvent::Acked(p.keys));
            }
        }
        let State { pending, queue, .. } = state;
        queue.retain(|s| pending.contains_key(s));
    }

    /// The epoch of `replica` if a delivery of `cost` units may go to it now.
    fn can_take(&self, state: &State, replica: u32, cost: u64) -> Option<u64> {
        let r = state.replicas.get(&replica)?;
        let epoch = r.epoch?;
        (r.free() >= cost
            && self
                .peers
                .alive(&self.settings.consumer, replica, self.settings.dead_after))
        .then_some(epoch)
    }

    /// A source moves to another replica of a per-source link (its owner came back after
    /// being retired): its deliveries wait until everything sent to the previous replica is
    /// acknowledged. That replica has then committed its state of the source, which the new
    /// owner takes over on its first frame, so the stream continues from exactly that state.
    fn waits_for_handover(&self, state: &State, seq: u64) -> bool {
        if self.settings.routing != Routing::BySource || self.settings.replicas < 2 {
            return false;
        }
        let p = &state.pending[&seq];
        state.pending.range(..seq).any(|(_, earlier)| {
            earlier.target != p.target
                && earlier
                    .keys
                    .iter()
                    .any(|(source, _)| p.keys.iter().any(|(s, _)| s == source))
        })
    }

    /// The next delivery that can go now and where, keeping each replica's order.
    fn pick(&self, state: &mut State) -> Option<(u64, u32, u64)> {
        // Nothing can go while no replica has room for even the lightest delivery: the
        // common case of a producer ahead of its consumer, which must not cost a walk over
        // the queue for every send.
        let most_free = state
            .replicas
            .values()
            .filter(|r| r.epoch.is_some())
            .map(ReplicaState::free)
            .max()?;
        if most_free == 0 {
            return None;
        }
        let ids: Vec<u32> = state.replicas.keys().copied().collect();
        let n = ids.len().max(1);
        let mut blocked_targets: Vec<Option<u32>> = Vec::new();
        for (index, seq) in state.queue.iter().enumerate().take(256) {
            let p = &state.pending[seq];
            if p.cost > most_free || blocked_targets.contains(&p.target) {
                // Keeps its target's order: nothing after it may overtake it.
                if !blocked_targets.contains(&p.target) {
                    blocked_targets.push(p.target);
                }
                continue;
            }
            if self.waits_for_handover(state, *seq) {
                blocked_targets.push(p.target);
                continue;
            }
            let choice = match p.target {
                Some(r) => self.can_take(state, r, p.cost).map(|e| (r, e)),
                None => (0..ids.len())
                    .map(|i| ids[(state.round_robin + i) % n])
                    .filter_map(|r| {
                        self.can_take(state, r, p.cost)
                            .map(|e| (state.replicas[&r].free(), r, e))
                    })
                    // The most free credit; among equals the first in round-robin order
                    // (`max_by_key` would take the last, the same replica every time).
                    .min_by_key(|(free, _, _)| std::cmp::Reverse(*free))
                    .map(|(_, r, e)| (r, e)),
            };
            match choice {
                Some((r, e)) => {
                    let seq = *seq;
                    state.queue.remove(index);
                    let position = ids.iter().position(|id| *id == r).unwrap_or(0);
                    state.round_robin = (position + 1) % n;
                    return Some((seq, r, e));
                }
                None => blocked_targets.push(p.target),
            }
        }
        None
    }

    /// Drops the oldest queued delivery that was never sent; false when all are in flight.
    fn drop_oldest_unsent(&self, state: &mut State) -> bool {
        let Some(index) = state
            .queue
            .iter()
            .position(|seq| state.pending.get(seq).is_some_and(|p| p.sends == 0))
        else {
            return false;
        };
        let Some(seq) = state.queue.remove(index) else {
            return false;
        };
        if let Some(p) = state.remove_pending(seq) {
            self.settle_held(state, &p.message);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            // Done as far as this stage's bookkeeping goes: nothing waits for it.
            let _ = self.events.send(LinkEvent::Acked(p.keys));
        }
        true
    }

    /// Moves frame pixels into shared memory for `lessee`; what stays in `pending` keeps the
    /// original buffers for re-sends.
    fn to_wire(&self, message: &DataMessage, lessee: &str) -> Result<DataMessage, NetError> {
        if let (PayloadMode::Jpeg { quality }, DataMessage::Batch(batch)) =
            (self.settings.payload, message)
        {
            let mut batch = batch.clone();
            for frame in &mut batch.frames {
                if let PayloadRef::Inline { layout, data } = &frame.payload {
                    if let Some(jpeg) = super::jpeg::encode(layout, data, quality) {
                        frame.payload = PayloadRef::Encoded {
                            codec: vidmesh_protocol::payload::Codec::Jpeg,
                            data: jpeg,
                        };
                    }
                }
            }
            return Ok(DataMessage::Batch(batch));
        }
        let (Some(pool), DataMessage::Batch(batch)) = (&self.pool, message) else {
            return Ok(message.clone());
        };
        let mut out = Batch {
            batch_id: batch.batch_id,
            frames: Vec::with_capacity(batch.frames.len()),
            tensors: batch.tensors.clone(),
        };
        for frame in &batch.frames {
            let mut frame = frame.clone();
            if let PayloadRef::Inline { layout, data } = &frame.payload {
                let lease = loop {
                    match pool.write(data, lessee, Duration::from_millis(200)) {
                        Ok(lease) => break lease,
                        Err(crate::shm::ShmError::Exhausted { .. })
                            if !self.stop.load(Ordering::Relaxed) =>
                        {
                            continue
                        }
                        Err(e) => return Err(NetError::SharedMemory(e.to_string())),
                    }
                };
                frame.payload = PayloadRef::SharedMemory {
                    segment: lease.segment,
                    slot: lease.slot,
                    generation: lease.generation,
                    layout: *layout,
                };
            }
            out.frames.push(frame);
        }
        Ok(DataMessage::Batch(out))
    }

    /// Publishes delivery `seq` to `replica` (picked under `state`, which this releases while
    /// encoding and putting) and returns the state locked again. The caller holds the
    /// publishers' lock, so puts happen in the order deliveries were picked.
    fn publish<'a>(
        &'a self,
        publishers: &mut BTreeMap<u32, zenoh::pubsub::Publisher<'static>>,
        mut state: MutexGuard<'a, State>,
        (seq, replica, epoch): (u64, u32, u64),
    ) -> MutexGuard<'a, State> {
        let p = state.pending.get_mut(&seq).expect("picked from pending");
        p.sent_to = Some((replica, epoch));
        p.sends += 1;
        if p.sends > 1 {
            self.stats.resent.fetch_add(1, Ordering::Relaxed);
        }
        let (message, cost) = (p.message.clone(), p.cost);
        if let Some(r) = state.replicas.get_mut(&replica) {
            r.sent += cost;
        }
        let lessee = self.lessee(replica, epoch);
        state.held.sent(&message, &lessee);
        drop(state);
        // Counted before the put, so that the count is never behind what consumers received.
        self.stats.sent.fetch_add(1, Ordering::Relaxed);

        let sent = self.to_wire(&message, &lessee).and_then(|message| {
            let payload = wire::to_zbytes(
                encode_detached(Envelope::Delivery(Delivery {
                    from: self.me.clone(),
                    to_epoch: epoch,
                    seq,
                    message,
                }))
                .map_err(zerr)?,
            );
            let publisher = match publishers.entry(replica) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(
                    self.session
                        .declare_publisher(self.data_key(replica))
                        .congestion_control(zenoh::qos::CongestionControl::Block)
                        .wait()
                        .map_err(zerr)?,
                ),
            };
            publisher.put(payload).wait().map_err(zerr)
        });
        if let Err(e) = sent {
            tracing::error!(
                "link {}->{}/{replica}: {e}",
                self.me.stage,
                self.settings.consumer
            );
        }
        self.lock()
    }

    /// Publishes from the calling thread whatever can go now, unless another thread is
    /// publishing; that one picks these up after its current put, and the pump is nudged in
    /// case it was just finishing.
    fn publish_ready<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let mut publishers = match self.publishers.try_lock() {
            Ok(publishers) => publishers,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.wake.notify_one();
                return state;
            }
        };
        while let Some(picked) = self.pick(&mut state) {
            state = self.publish(&mut publishers, state, picked);
        }
        drop(publishers);
        state
    }

    fn lock_publishers(&self) -> MutexGuard<'_, BTreeMap<u32, zenoh::pubsub::Publisher<'static>>> {
        self.publishers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pump thread: publishes what the stage's own thread did not (deliveries queued
    /// while credit was short, re-sends), and watches the consumers' liveness.
    fn pump(&self) {
        let mut last_check = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let mut publishers = self.lock_publishers();
            let mut state = self.lock();
            if last_check.elapsed() >= Duration::from_millis(50) {
                self.check_liveness(&mut state);
                last_check = std::time::Instant::now();
            }
            match self.pick(&mut state) {
                Some(picked) => {
                    drop(self.publish(&mut publishers, state, picked));
                }
                None => {
                    drop(publishers);
                    drop(
                        self.wake
                            .wait_timeout(state, Duration::from_millis(50))
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                }
            }
        }
    }
}

impl RemoteOutput {
    pub fn new(
        node: &NetNode,
        settings: OutputSettings,
        events: Sender<LinkEvent>,
    ) -> Result<Self, NetError> {
        super::check_name(&settings.consumer)?;
        let me = node.me().clone();
        let name = format!("{}->{}", me.stage, settings.consumer);
        let pool = match settings.payload {
            PayloadMode::SharedMemory => Some(
                SlotPool::new(
                    &settings.shm_dir,
                    &format!(
                        "vidmesh-{}-{}-{}-{}-{:x}",
                        node.pipeline(),
                        me.stage,
                        me.replica,
                        settings.consumer,
                        me.epoch
                    ),
                    8,
                )
                .map_err(|e| NetError::SharedMemory(e.to_string()))?,
            ),
            PayloadMode::Raw | PayloadMode::Jpeg { .. } => None,
        };
        // A sent frame holds its slot until the consumers are done with it, about as long as
        // it waits for acknowledgement: the pool may hold as many as may be in flight (one
        // segment of 8 would let no more than 8 frames be anywhere downstream).
        if let Some(pool) = &pool {
            let slots = in_flight(&settings, settings.replicas);
            pool.set_max_slots(u32::try_from(slots).unwrap_or(u32::MAX));
        }
        let replicas = settings.replicas.max(1);
        let session = node.session();
        // A per-source link knows its replicas 0..N from the start; a load-balanced one learns
        // them as they announce themselves, whatever their numbers (`--replica auto`).
        let known = match settings.routing {
            Routing::BySource => 0..replicas,
            Routing::Balance => 0..0,
        };
        let mut publishers = BTreeMap::new();
        for replica in known.clone() {
            publishers.insert(
                replica,
                session
                    .declare_publisher(node.data_key(&settings.consumer, replica))
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .wait()
                    .map_err(zerr)?,
            );
        }
        let shared = Arc::new(Shared {
            me: me.clone(),
            peers: node.peers().clone(),
            state: Mutex::new(State {
                next_seq: 0,
                pending: BTreeMap::new(),
                pending_cost: 0,
                queue: VecDeque::new(),
                replicas: known
                    .map(|r| {
                        let state = ReplicaState {
                            window: settings.window.max(1),
                            ..Default::default()
                        };
                        (r, state)
                    })
                    .collect(),
                round_robin: 0,
                senders_waiting: 0,
                held: HeldSlots::default(),
            }),
            settings: OutputSettings {
                replicas,
                ..settings
            },
            wake: Condvar::new(),
            room: Condvar::new(),
            events,
            stop: AtomicBool::new(false),
            pool,
            stats: OutputStats::default(),
            publishers: Mutex::new(publishers),
            session: session.clone(),
            pipeline: node.pipeline().to_string(),
        });
        let feedback = {
            let shared = shared.clone();
            let limits = Limits::default();
            session
                .declare_subscriber(format!(
                    "vidmesh/{}/feedback/{}/{}/{}/*",
                    node.pipeline(),
                    me.stage,
                    me.replica,
                    shared.settings.consumer
                ))
                .callback(move |sample| {
                    let peer = sample.key_expr().as_str().to_string();
                    match decode_from(sample.payload(), &peer, &shared.me, &limits) {
                        Ok(Envelope::Feedback(f)) => shared.on_feedback(f),
                        Ok(_) => {}
                        Err(e @ NetError::VersionMismatch { .. }) => {
                            shared.peers.record_incompatible(e)
                        }
                        Err(e) => tracing::warn!("ignoring feedback: {e}"),
                    }
                })
                .wait()
                .map_err(zerr)?
        };
        let pump = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("pump-{}", shared.settings.consumer))
                .spawn(move || shared.pump())
                .map_err(|e| NetError::Zenoh(format!("cannot start a link thread: {e}")))?
        };
        Ok(Self {
            shared,
            name,
            pump: Some(pump),
            _feedback: feedback,
        })
    }

    /// `producer->consumer`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a message for delivery; waits while too much is unacknowledged (backpressure).
    pub fn send_blocking(&self, message: DataMessage) -> Result<(), LinkClosed> {
        let s = &self.shared;
        let n = s.settings.replicas;
        let parts: Vec<(DataMessage, Option<u32>)> = match (message, s.settings.routing) {
            (DataMessage::EndOfStream(end), Routing::BySource) => {
                let owner = s.owner(end.source_id);
                vec![(DataMessage::EndOfStream(end), Some(owner))]
            }
            // Every replica forwards its own copy of the end, after its frames of that source;
            // before any replica is known, one copy goes to whichever comes first.
            (DataMessage::EndOfStream(end), Routing::Balance) => {
                let replicas = s.current_replicas();
                if replicas.is_empty() {
                    vec![(DataMessage::EndOfStream(end), None)]
                } else {
                    replicas
                        .into_iter()
                        .map(|r| (DataMessage::EndOfStream(end.clone()), Some(r)))
                        .collect()
                }
            }
            (DataMessage::Batch(batch), Routing::BySource) if n > 1 => {
                split_by(batch, |source| s.owner(source))
                    .into_iter()
                    .map(|(r, b)| (DataMessage::Batch(b), Some(r)))
                    .collect()
            }
            (m, Routing::BySource) => vec![(m, Some(0))],
            (m, Routing::Balance) => vec![(m, None)],
        };
        let limit = s.pending_limit() as u64 * CREDIT_UNITS;
        let mut state = s.lock();
        for (message, target) in parts {
            let cost = credit_cost(&message);
            let full =
                |state: &State| !state.pending.is_empty() && state.pending_cost + cost > limit;
            while full(&state) {
                if s.settings.drop_oldest && s.drop_oldest_unsent(&mut state) {
                    continue;
                }
                if s.stop.load(Ordering::Relaxed) {
                    return Err(LinkClosed {
                        link: self.name.clone(),
                    });
                }
                // Publish what credit allows (feedback wakes this thread, not the pump, while
                // it waits), then wait for acknowledgements.
                state = s.publish_ready(state);
                if !full(&state) {
                    break;
                }
                state.senders_waiting += 1;
                state = s
                    .room
                    .wait_timeout(state, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                state.senders_waiting -= 1;
            }
            let seq = s.add_pending(&mut state, message, target);
            state.queue.push_back(seq);
        }
        // Publish from this thread while credit allows, instead of waking the pump for every
        // delivery. What is left waits for credit or a live replica: feedback and the pump's
        // liveness checks take care of those.
        drop(s.publish_ready(state));
        Ok(())
    }

    /// A writable slot of `len` bytes in this link's shared memory, for a producer that
    /// writes a frame (a decoder's output, a converted image) straight into it; see
    /// [`FrameBuffer`]. Sending the frame then costs no copy. Waits while every slot is in
    /// use (backpressure). Only for `PayloadMode::SharedMemory` links.
    pub fn frame_buffer(&self, len: usize) -> Result<FrameBuffer, NetError> {
        let s = &self.shared;
        let Some(pool) = &s.pool else {
            return Err(NetError::SharedMemory(format!(
                "link `{}` does not carry frames through shared memory (its payload mode is {:?})",
                self.name, s.settings.payload
            )));
        };
        loop {
            match pool.alloc(len, HELD_BY_LINK, Duration::from_millis(200)) {
                Ok(writer) => {
                    return Ok(FrameBuffer {
                        writer,
                        shared: s.clone(),
                    })
                }
                Err(crate::shm::ShmError::Exhausted { .. }) if !s.stop.load(Ordering::Relaxed) => {
                    continue
                }
                Err(e) => return Err(NetError::SharedMemory(e.to_string())),
            }
        }
    }

    /// Frame-buffer slots not yet free again (filled, or on their way, or still mapped).
    pub fn frame_buffers_held(&self) -> usize {
        self.shared.lock().held.len()
    }

    /// Deliveries not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Credits left over all replicas, in full deliveries.
    pub fn credits(&self) -> u64 {
        let state = self.shared.lock();
        let units: u64 = state
            .replicas
            .values()
            .filter(|r| r.epoch.is_some())
            .map(ReplicaState::free)
            .sum();
        units / CREDIT_UNITS
    }

    pub fn stats(&self) -> &OutputStats {
        &self.shared.stats
    }
}

impl Drop for RemoteOutput {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        self.shared.room.notify_all();
        if let Some(p) = self.pump.take() {
            let _ = p.join();
        }
    }
}

/// Deliveries a link may have waiting for acknowledgement; see [`Shared::pending_limit`].
fn in_flight(settings: &OutputSettings, replicas: u32) -> usize {
    (settings.window as usize * replicas.max(1) as usize * 4).max(8)
}

/// Splits a batch into one per owner replica, keeping frame order; batch tensors are per
/// whole batch and do not survive a split.
fn split_by(batch: Batch, owner: impl Fn(u32) -> u32) -> Vec<(u32, Batch)> {
    let owners: Vec<u32> = batch.frames.iter().map(|f| owner(f.source_id)).collect();
    if let Some(&first) = owners.first() {
        if owners.iter().all(|o| *o == first) {
            return vec![(first, batch)];
        }
    }
    let mut parts: BTreeMap<u32, Batch> = BTreeMap::new();
    for (frame, o) in batch.frames.into_iter().zip(owners) {
        parts
            .entry(o)
            .or_insert_with(|| Batch {
                batch_id: batch.batch_id,
                frames: Vec::new(),
                tensors: Vec::new(),
            })
            .frames
            .push(frame);
    }
    parts.into_iter().collect()
}
