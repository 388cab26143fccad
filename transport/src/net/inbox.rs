//! The consumer end of process links: everything upstream stages send to this replica.
//!
//! The inbox grants credits (how many deliveries of each producer epoch it has taken out),
//! maps shared-memory frames without copying them, sends a release when the last reference
//! to a frame is dropped, and acknowledges deliveries when the stage says they are done.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vidmesh_protocol::{
    encode, DataMessage, Delivery, Envelope, Feedback, Instance, Limits, PayloadRef, SlotRelease,
};
use zenoh::Wait;

use super::{decode_from, zerr, NetError, NetNode, PeerTable, HEARTBEAT_INTERVAL};
use crate::shm::SlotMapper;

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

/// (producer stage, replica, epoch) → deliveries taken out.
type Consumed = HashMap<(String, u32, u64), u64>;

struct Feedbacks {
    session: zenoh::Session,
    pipeline: String,
    me: Instance,
}

impl Feedbacks {
    fn send(&self, producer: &str, replica: u32, feedback: Feedback) {
        let key = format!(
            "vidmesh/{}/feedback/{}/{}/{}/{}",
            self.pipeline, producer, replica, self.me.stage, self.me.replica
        );
        match encode(&Envelope::Feedback(feedback)) {
            Ok(bytes) => {
                if let Err(e) = self.session.put(key, bytes).wait() {
                    tracing::warn!("cannot send feedback to {producer}/{replica}: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode feedback: {e}"),
        }
    }
}

/// Everything sent to this stage replica.
pub struct RemoteInbox {
    feedback: Arc<Feedbacks>,
    window: u32,
    rx: Receiver<Result<Delivery, NetError>>,
    consumed: Arc<Mutex<Consumed>>,
    mapper: SlotMapper,
    owners: Arc<Mutex<HashMap<String, (String, u32)>>>,
    stop: Arc<AtomicBool>,
    credits: Option<std::thread::JoinHandle<()>>,
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
        let feedback = Arc::new(Feedbacks {
            session: node.session().clone(),
            pipeline: node.pipeline().to_string(),
            me: me.clone(),
        });
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
                    let item = match decode_from(&sample.payload().to_bytes(), &peer, &me, &limits)
                    {
                        Ok(Envelope::Delivery(d)) if expected.contains(&d.from.stage) => Ok(d),
                        Ok(Envelope::Delivery(d)) => {
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
        let owners: Arc<Mutex<HashMap<String, (String, u32)>>> = Arc::default();
        let mapper = {
            let (feedback, owners) = (feedback.clone(), owners.clone());
            SlotMapper::new(shm_dir, move |release: SlotRelease| {
                let owner = owners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&release.segment)
                    .cloned();
                if let Some((stage, replica)) = owner {
                    feedback.send(
                        &stage,
                        replica,
                        Feedback::Release {
                            from: feedback.me.clone(),
                            slots: vec![release],
                        },
                    );
                }
            })
        };
        let consumed: Arc<Mutex<Consumed>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let credits = {
            let (feedback, consumed, stop) = (feedback.clone(), consumed.clone(), stop.clone());
            let peers = node.peers().clone();
            std::thread::Builder::new()
                .name("credits".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        grant_all(&feedback, &peers, &upstream, &consumed, window);
                        std::thread::sleep(HEARTBEAT_INTERVAL);
                    }
                })
                .map_err(|e| NetError::Zenoh(format!("cannot start the credit thread: {e}")))?
        };
        Ok(Self {
            feedback,
            window,
            rx,
            consumed,
            mapper,
            owners,
            stop,
            credits: Some(credits),
            _deliveries: deliveries,
        })
    }

    /// The next delivery, or `None` when `deadline` passes first. Shared-memory frames come
    /// back as buffers pointing into the producer's slots.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<InboxDelivery>, NetError> {
        let item = match deadline {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => self
                .rx
                .recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let delivery = match item {
            Ok(d) => d?,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(NetError::Zenoh("the delivery subscriber stopped".into()))
            }
        };
        let from = delivery.from.clone();
        let consumed = {
            let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
            let n = c
                .entry((from.stage.clone(), from.replica, from.epoch))
                .or_insert(0);
            *n += 1;
            *n
        };
        self.feedback.send(
            &from.stage,
            from.replica,
            Feedback::Credit {
                from: self.feedback.me.clone(),
                producer_epoch: from.epoch,
                consumed,
                window: self.window,
            },
        );
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
                    .insert(segment.clone(), (from.stage.clone(), from.replica));
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

    /// Tells the producers these deliveries are done.
    pub fn ack(&self, tags: &[DeliveryTag]) {
        let mut by_producer: HashMap<&Instance, Vec<u64>> = HashMap::new();
        for t in tags {
            by_producer.entry(&t.producer).or_default().push(t.seq);
        }
        for (producer, seqs) in by_producer {
            self.feedback.send(
                &producer.stage,
                producer.replica,
                Feedback::Ack {
                    from: self.feedback.me.clone(),
                    producer_epoch: producer.epoch,
                    seqs,
                },
            );
        }
    }
}

impl Drop for RemoteInbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.credits.take() {
            let _ = c.join();
        }
    }
}

/// Re-grants credit to every live upstream instance: its first credit is how a producer
/// learns this replica exists (and restarted), and repeating it covers lost messages.
fn grant_all(
    feedback: &Feedbacks,
    peers: &PeerTable,
    upstream: &[(String, u32)],
    consumed: &Mutex<Consumed>,
    window: u32,
) {
    for (stage, replicas) in upstream {
        for replica in 0..*replicas {
            let Some(peer) = peers.get(stage, replica) else {
                continue;
            };
            if peer.retired || peer.last_seen.elapsed() > Duration::from_secs(5) {
                continue;
            }
            let n = consumed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(stage.clone(), replica, peer.epoch))
                .copied()
                .unwrap_or(0);
            feedback.send(
                stage,
                replica,
                Feedback::Credit {
                    from: feedback.me.clone(),
                    producer_epoch: peer.epoch,
                    consumed: n,
                    window,
                },
            );
        }
    }
}
