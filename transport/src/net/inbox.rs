//! The consumer end of process links: everything upstream stages send to this replica.
//!
//! The inbox grants credits (how many credit units of deliveries of each producer epoch it
//! has taken out, see [`credit_cost`]),
//! maps shared-memory frames without copying them, releases a slot when the last reference
//! to its frame is dropped, and acknowledges deliveries when the stage says they are done.
//!
//! Credits, acks and releases are coalesced (`FeedbackSender`): they accumulate per producer
//! instance and leave as one [`Feedback`] report when the inbox runs empty (before `recv`
//! waits), when half a window is waiting, or at the latest [`FEEDBACK_DELAY`] after the first
//! of them, through a publisher declared once per producer replica. A fast link therefore
//! sends one report per batch of deliveries instead of two messages per delivery, and no
//! producer ever waits on coalescing for longer than the delay.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vidmesh_protocol::{
    encode, DataMessage, Delivery, Envelope, Feedback, Instance, Limits, PayloadRef, SlotRelease,
};
use zenoh::Wait;

use super::wire::Tail;
use super::{
    credit_cost, decode_head_from, zerr, NetError, NetNode, PeerTable, CREDIT_UNITS,
    HEARTBEAT_INTERVAL,
};
use crate::shm::SlotMapper;

/// The longest a credit, ack or release waits to be coalesced with others.
pub const FEEDBACK_DELAY: Duration = Duration::from_millis(1);

/// Which delivery a message came in, for acknowledging it later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryTag {
    pub producer: Instance,
    pub seq: u64,
}

/// One received message.
#[derive(Debug)]
pub struct InboxDelivery {
    pub tag: DeliveryTag,
    pub message: DataMessage,
}

/// Counters of one inbox, for metrics and tests.
#[derive(Debug, Default)]
pub struct InboxStats {
    /// Deliveries taken out.
    pub received: AtomicU64,
    /// Deliveries acknowledged (as the stage asked; they leave in reports).
    pub acked: AtomicU64,
    /// Feedback reports sent to producers (each carries a credit and any acks and releases).
    pub reports: AtomicU64,
}

/// What this replica owes one producer instance.
#[derive(Debug, Default)]
struct Owed {
    /// Credit units of this producer epoch's deliveries taken out in total.
    consumed: u64,
    /// `consumed` as last reported.
    reported: u64,
    acks: Vec<u64>,
    releases: Vec<SlotRelease>,
}

impl Owed {
    fn waiting(&self) -> bool {
        self.consumed != self.reported || !self.acks.is_empty() || !self.releases.is_empty()
    }
}

#[derive(Default)]
struct Ledger {
    owed: HashMap<Instance, Owed>,
    /// Credit units and releases (a full credit each) not yet reported, over all producers.
    waiting: u64,
    /// When the oldest of them arrived; `None` when nothing waits.
    since: Option<Instant>,
    /// The flusher thread waits without a deadline (nothing was waiting when it looked).
    flusher_parked: bool,
}

/// Coalesces this replica's feedback and publishes it, one report per producer instance.
struct FeedbackSender {
    me: Instance,
    window: u32,
    /// Reports go out once this many credit units wait (half a window).
    threshold: u64,
    session: zenoh::Session,
    pipeline: String,
    /// One publisher per producer replica, declared once (feedback keys do not name epochs).
    publishers: Mutex<HashMap<(String, u32), zenoh::pubsub::Publisher<'static>>>,
    ledger: Mutex<Ledger>,
    /// Wakes the flusher thread when something starts waiting while it is parked.
    flusher: Condvar,
    stats: Arc<InboxStats>,
}

impl FeedbackSender {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn feedback_key(&self, producer: &str, replica: u32) -> String {
        format!(
            "vidmesh/{}/feedback/{}/{}/{}/{}",
            self.pipeline, producer, replica, self.me.stage, self.me.replica
        )
    }

    fn declare(&self, producer: &str, replica: u32) -> Result<(), NetError> {
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        self.publisher(&mut publishers, producer.to_string(), replica)?;
        Ok(())
    }

    /// The publisher of feedback to `producer`/`replica`, declared on first use.
    fn publisher<'a>(
        &self,
        publishers: &'a mut HashMap<(String, u32), zenoh::pubsub::Publisher<'static>>,
        producer: String,
        replica: u32,
    ) -> Result<&'a zenoh::pubsub::Publisher<'static>, NetError> {
        use std::collections::hash_map::Entry;
        match publishers.entry((producer, replica)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let key = self.feedback_key(&e.key().0, replica);
                let publisher = self
                    .session
                    .declare_publisher(key)
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .wait()
                    .map_err(zerr)?;
                Ok(e.insert(publisher))
            }
        }
    }

    /// Records that `count` credit units (more) wait; sends everything once enough wait, else
    /// makes sure the flusher's timer runs.
    fn note(&self, mut ledger: MutexGuard<'_, Ledger>, count: u64) {
        ledger.waiting += count;
        if ledger.waiting >= self.threshold {
            self.send(ledger);
            return;
        }
        if ledger.since.is_none() {
            ledger.since = Some(Instant::now());
            if ledger.flusher_parked {
                ledger.flusher_parked = false;
                self.flusher.notify_one();
            }
        }
    }

    /// A delivery of `producer` costing `cost` credit units was taken out of the inbox.
    fn took(&self, producer: &Instance, cost: u64) {
        let mut ledger = self.lock();
        ledger.owed.entry(producer.clone()).or_default().consumed += cost;
        self.note(ledger, cost);
    }

    fn acked(&self, producer: &Instance, seqs: impl Iterator<Item = u64>) {
        let mut ledger = self.lock();
        ledger
            .owed
            .entry(producer.clone())
            .or_default()
            .acks
            .extend(seqs);
        // Acks ride with the next credit or the timer and do not count towards the threshold:
        // they free room in the producer's bound of unacknowledged deliveries (four windows),
        // which is far from pressing when credits flow.
        self.note(ledger, 0);
    }

    fn released(&self, producer: &Instance, release: SlotRelease) {
        let mut ledger = self.lock();
        ledger
            .owed
            .entry(producer.clone())
            .or_default()
            .releases
            .push(release);
        self.note(ledger, CREDIT_UNITS);
    }

    /// Sends everything waiting, one report per producer instance.
    fn flush(&self) {
        let ledger = self.lock();
        if ledger.since.is_some() || ledger.waiting > 0 {
            self.send(ledger);
        }
    }

    /// Takes what waits out of the ledger and publishes it (outside the ledger's lock, so that
    /// the stage and the zenoh threads never wait on the socket for each other).
    fn send(&self, mut ledger: MutexGuard<'_, Ledger>) {
        let mut reports = Vec::new();
        for (producer, owed) in ledger.owed.iter_mut().filter(|(_, o)| o.waiting()) {
            owed.reported = owed.consumed;
            reports.push(self.report(producer, owed));
        }
        ledger.waiting = 0;
        ledger.since = None;
        drop(ledger);
        for report in reports {
            self.publish(report);
        }
    }

    /// Re-reports the credit of `producer` (and whatever else waits for it) whether or not
    /// anything changed: how a producer learns this replica exists, and how lost reports heal.
    fn regrant(&self, producer: &Instance) {
        let mut ledger = self.lock();
        let owed = ledger.owed.entry(producer.clone()).or_default();
        owed.reported = owed.consumed;
        let report = self.report(producer, owed);
        drop(ledger);
        self.publish(report);
    }

    fn report(&self, producer: &Instance, owed: &mut Owed) -> (String, u32, Feedback) {
        (
            producer.stage.clone(),
            producer.replica,
            Feedback {
                from: self.me.clone(),
                producer_epoch: producer.epoch,
                consumed: owed.consumed,
                window: self.window,
                acks: std::mem::take(&mut owed.acks),
                releases: std::mem::take(&mut owed.releases),
            },
        )
    }

    fn publish(&self, (producer, replica, feedback): (String, u32, Feedback)) {
        let bytes = match encode(&Envelope::Feedback(feedback)) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("cannot encode feedback: {e}");
                return;
            }
        };
        let mut publishers = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        let sent = self
            .publisher(&mut publishers, producer.clone(), replica)
            .and_then(|publisher| publisher.put(bytes).wait().map_err(zerr));
        match sent {
            Ok(()) => {
                self.stats.reports.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot send feedback to {producer}/{replica}: {e}"),
        }
    }

    /// The flusher thread: sends what has waited [`FEEDBACK_DELAY`] (the stage may not call
    /// `recv` again for a while) and re-grants every live producer each heartbeat interval.
    fn run_flusher(&self, stop: &AtomicBool, peers: &PeerTable, upstream: &[(String, u32)]) {
        let mut next_grant = Instant::now();
        let mut ledger = self.lock();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_grant {
                drop(ledger);
                self.regrant_all(peers, upstream);
                next_grant = Instant::now() + HEARTBEAT_INTERVAL;
                ledger = self.lock();
                continue;
            }
            let wait = match ledger.since {
                Some(since) if now >= since + FEEDBACK_DELAY => {
                    self.send(ledger);
                    ledger = self.lock();
                    continue;
                }
                Some(since) => since + FEEDBACK_DELAY - now,
                None => {
                    ledger.flusher_parked = true;
                    next_grant - now
                }
            };
            ledger = self
                .flusher
                .wait_timeout(ledger, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            ledger.flusher_parked = false;
        }
    }

    /// Re-grants credit to every live upstream instance: replicas 0..N and any other heard
    /// from (a load-balanced stage scaled up while it runs).
    fn regrant_all(&self, peers: &PeerTable, upstream: &[(String, u32)]) {
        for (stage, replicas) in upstream {
            let mut all: Vec<u32> = (0..*replicas).collect();
            all.extend(
                peers
                    .replicas_of(stage)
                    .into_iter()
                    .filter(|r| r >= replicas),
            );
            for replica in all {
                let Some(peer) = peers.get(stage, replica) else {
                    continue;
                };
                if peer.retired || peer.last_seen.elapsed() > Duration::from_secs(5) {
                    continue;
                }
                self.regrant(&Instance {
                    stage: stage.clone(),
                    replica,
                    epoch: peer.epoch,
                });
            }
        }
    }
}

/// Everything sent to this stage replica.
pub struct RemoteInbox {
    feedback: Arc<FeedbackSender>,
    rx: Receiver<Result<(Delivery, Option<Tail>), NetError>>,
    mapper: SlotMapper,
    /// Which producer instance owns each mapped segment (where its releases go).
    owners: Arc<Mutex<HashMap<String, Instance>>>,
    stats: Arc<InboxStats>,
    stop: Arc<AtomicBool>,
    flusher: Option<std::thread::JoinHandle<()>>,
    _deliveries: zenoh::pubsub::Subscriber<()>,
}

impl RemoteInbox {
    /// Listens for deliveries from `upstream` stages (name, replicas); `window` is the credit
    /// granted to each producer instance.
    pub fn new(
        node: &NetNode,
        upstream: Vec<(String, u32)>,
        window: u32,
        shm_dir: &Path,
    ) -> Result<Self, NetError> {
        let me = node.me().clone();
        let stats = Arc::new(InboxStats::default());
        let feedback = Arc::new(FeedbackSender {
            me: me.clone(),
            window,
            threshold: (window as u64 * CREDIT_UNITS / 2).max(1),
            session: node.session().clone(),
            pipeline: node.pipeline().to_string(),
            publishers: Mutex::default(),
            ledger: Mutex::default(),
            flusher: Condvar::new(),
            stats: stats.clone(),
        });
        for (stage, replicas) in &upstream {
            for replica in 0..*replicas {
                feedback.declare(stage, replica)?;
            }
        }
        let (tx, rx) = mpsc::channel();
        let expected: Vec<String> = upstream.iter().map(|(s, _)| s.clone()).collect();
        let deliveries = {
            let me = me.clone();
            let limits = Limits::default();
            node.session()
                .declare_subscriber(format!(
                    "vidmesh/{}/data/{}/{}/**",
                    node.pipeline(),
                    me.stage,
                    me.replica
                ))
                .callback(move |sample| {
                    let key = sample.key_expr().as_str();
                    let peer: Vec<&str> = key.rsplitn(3, '/').take(2).collect();
                    let peer = format!("{}/{}", peer.get(1).unwrap_or(&"?"), peer[0]);
                    // The head only: the frame's bytes are gathered by the stage's thread.
                    let item = match decode_head_from(sample.payload(), &peer, &me, &limits) {
                        Ok((Envelope::Delivery(d), tail)) if expected.contains(&d.from.stage) => {
                            Ok((d, tail))
                        }
                        Ok((Envelope::Delivery(d), _)) => {
                            tracing::warn!(
                                "ignoring data from {}: it is not linked to {}",
                                d.from,
                                me
                            );
                            return;
                        }
                        Ok(_) => return,
                        Err(e @ NetError::VersionMismatch { .. }) => Err(e),
                        Err(e) => {
                            tracing::warn!("ignoring a malformed delivery: {e}");
                            return;
                        }
                    };
                    let _ = tx.send(item);
                })
                .wait()
                .map_err(zerr)?
        };
        let owners: Arc<Mutex<HashMap<String, Instance>>> = Arc::default();
        let mapper = {
            let (feedback, owners) = (feedback.clone(), owners.clone());
            SlotMapper::new(shm_dir, move |release: SlotRelease| {
                let owner = owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&release.segment)
                    .cloned();
                if let Some(producer) = owner {
                    feedback.released(&producer, release);
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (feedback, stop) = (feedback.clone(), stop.clone());
            let peers = node.peers().clone();
            std::thread::Builder::new()
                .name("feedback".into())
                .spawn(move || feedback.run_flusher(&stop, &peers, &upstream))
                .map_err(|e| NetError::Zenoh(format!("cannot start the feedback thread: {e}")))?
        };
        Ok(Self {
            feedback,
            rx,
            mapper,
            owners,
            stats,
            stop,
            flusher: Some(flusher),
            _deliveries: deliveries,
        })
    }

    /// The next delivery, or `None` when `deadline` passes first. Shared-memory frames come
    /// back as buffers pointing into the producer's slots.
    ///
    /// Before it waits for the next delivery, everything owed to producers (credits, acks,
    /// releases) goes out, so coalescing never holds a producer back.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<InboxDelivery>, NetError> {
        let item = match self.rx.try_recv() {
            Ok(item) => Ok(item),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {
                self.feedback.flush();
                match deadline {
                    None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(d) => self
                        .rx
                        .recv_timeout(d.saturating_duration_since(Instant::now())),
                }
            }
        };
        let (mut delivery, tail) = match item {
            Ok(d) => d?,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(NetError::Zenoh("the delivery subscriber stopped".into()))
            }
        };
        let from = delivery.from.clone();
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.feedback.took(&from, credit_cost(&delivery.message));
        if let Some(tail) = tail {
            tail.attach_to(&mut delivery.message)
                .map_err(|e| NetError::Malformed {
                    peer: from.to_string(),
                    reason: e.to_string(),
                })?;
        }
        let message = self.map_payloads(&from, delivery.message)?;
        Ok(Some(InboxDelivery {
            tag: DeliveryTag {
                producer: from,
                seq: delivery.seq,
            },
            message,
        }))
    }

    fn map_payloads(
        &mut self,
        from: &Instance,
        message: DataMessage,
    ) -> Result<DataMessage, NetError> {
        let DataMessage::Batch(mut batch) = message else {
            return Ok(message);
        };
        for frame in &mut batch.frames {
            if let PayloadRef::Encoded {
                codec: vidmesh_protocol::payload::Codec::Jpeg,
                data,
            } = &frame.payload
            {
                let (layout, pixels) =
                    super::jpeg::decode(data).map_err(|reason| NetError::Malformed {
                        peer: from.to_string(),
                        reason: format!(
                            "frame {} of source {}: bad JPEG payload: {reason}",
                            frame.frame_num, frame.source_id
                        ),
                    })?;
                frame.payload = PayloadRef::Inline {
                    layout,
                    data: pixels,
                };
                continue;
            }
            if let PayloadRef::SharedMemory {
                segment,
                slot,
                generation,
                layout,
            } = &frame.payload
            {
                let len = layout.min_len().ok_or_else(|| NetError::Malformed {
                    peer: from.to_string(),
                    reason: format!("frame layout {layout:?} overflows"),
                })?;
                self.owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(segment.clone(), from.clone());
                let data = self
                    .mapper
                    .map(segment, *slot, *generation, len)
                    .map_err(|e| {
                        NetError::SharedMemory(format!(
                            "frame {} of source {} from {from}: {e} (is the producer on another host? then set payload = \"raw\" on this link)",
                            frame.frame_num, frame.source_id
                        ))
                    })?;
                frame.payload = PayloadRef::Inline {
                    layout: *layout,
                    data,
                };
            }
        }
        Ok(DataMessage::Batch(batch))
    }

    /// Tells the producers these deliveries are done (coalesced with other feedback: see the
    /// module's documentation).
    pub fn ack(&self, tags: &[DeliveryTag]) {
        self.stats
            .acked
            .fetch_add(tags.len() as u64, Ordering::Relaxed);
        let mut by_producer: HashMap<&Instance, Vec<u64>> = HashMap::new();
        for t in tags {
            by_producer.entry(&t.producer).or_default().push(t.seq);
        }
        for (producer, seqs) in by_producer {
            self.feedback.acked(producer, seqs.into_iter());
        }
    }

    /// Sends whatever feedback waits now instead of at the next `recv` or timer.
    pub fn flush_feedback(&self) {
        self.feedback.flush();
    }

    pub fn stats(&self) -> &InboxStats {
        &self.stats
    }
}

impl Drop for RemoteInbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.feedback.flusher.notify_all();
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        // What the stage acknowledged last must not wait for a re-send to be settled.
        self.feedback.flush();
    }
}
