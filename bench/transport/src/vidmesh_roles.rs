//! vidmesh's links driven as a stage would drive them: `LinkSender`/`LinkReceiver` in one
//! process, `RemoteOutput`/`RemoteInbox` between two.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vidmesh_protocol::{
    encode, Batch, DataMessage, Delivery, Envelope, FrameMeta, ImageLayout, Instance, PayloadRef,
    PixelFormat, UserMeta,
};
use vidmesh_transport::net::{
    NetConfig, NetNode, OutputSettings, PayloadMode, RemoteInbox, RemoteOutput, Routing,
};
use vidmesh_transport::shm::{SlotLease, SlotPool};
use vidmesh_transport::{in_process_link, Received};

use crate::common::{
    now_ns, source_byte, source_frame, wait_for_stdin_eof, Payload, Recorder, RoleArgs, Schedule,
    META_BYTES,
};

/// Slots of the copy-cost pool: as many as `RemoteOutput`'s pool has.
pub const SLOTS: u32 = 8;
const SHM_DIR: &str = "/dev/shm";
const PIPELINE: &str = "bench";

/// How the producer side of a process link is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// `PayloadMode::SharedMemory`: `RemoteOutput` copies each frame into its slot pool.
    Shm,
    /// `PayloadMode::SharedMemory`, with the frame written straight into a slot of the link's
    /// pool (`RemoteOutput::frame_buffer`, what a decoder writing into shared memory does):
    /// only the reference is sent; the link frees the slot once the delivery is acknowledged
    /// and the consumer released it.
    ShmPrefilled,
    /// `PayloadMode::Raw`: pixels inside the zenoh message.
    Raw,
}

fn layout(payload: Payload) -> ImageLayout {
    let format = match payload {
        Payload::Nv12 => PixelFormat::Nv12,
        _ => PixelFormat::Rgb24,
    };
    ImageLayout::packed(format, 1920, 1080)
}

/// One frame (or one metadata-only frame) in a batch of one.
fn message(frame_num: u64, ingest_ns: u64, payload: PayloadRef, user: &[UserMeta]) -> DataMessage {
    DataMessage::Batch(Batch {
        batch_id: frame_num,
        frames: vec![FrameMeta {
            source_id: 0,
            frame_num,
            ingest_ns,
            width: 1920,
            height: 1080,
            payload,
            user: user.to_vec(),
            ..Default::default()
        }],
        tensors: Vec::new(),
    })
}

/// User meta that makes a metadata-only delivery about `META_BYTES` on the wire.
fn meta_padding(me: &Instance) -> Vec<UserMeta> {
    let with = |pad: usize| {
        vec![UserMeta {
            kind: "bench.pad".into(),
            data: Bytes::from(vec![7u8; pad]),
        }]
    };
    let wire = |pad: usize| {
        let delivery = Delivery {
            from: me.clone(),
            to_epoch: u64::MAX / 3,
            seq: 1_000,
            message: message(1_000, now_ns(), PayloadRef::None, &with(pad)),
        };
        encode(&Envelope::Delivery(delivery)).map_or(0, |b| b.len())
    };
    let mut pad = META_BYTES.saturating_sub(wire(0));
    // The length prefix of the padding grows by a byte past 127.
    while pad > 0 && wire(pad) > META_BYTES {
        pad -= 1;
    }
    with(pad)
}

/// Checks what arrived; a frame must be exactly the frame's bytes and, when the producer
/// copied it, the source's bytes.
fn payload_ok(args: &RoleArgs, payload: &PayloadRef) -> bool {
    match (args.payload.is_frame(), payload) {
        (false, PayloadRef::None) => true,
        (true, PayloadRef::Inline { data, .. }) => {
            let len = args.payload.bytes();
            data.len() == len
                && (args.variant != "copy"
                    || [len / 2, len - 1]
                        .iter()
                        .all(|&i| data[i] == source_byte(i)))
        }
        _ => false,
    }
}

/// Both ends in one process, on two threads: the zero-copy baseline.
pub fn in_process(args: &RoleArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = in_process_link(
        "producer->consumer",
        args.window as usize,
        runtime.handle().clone(),
    );
    let consumer = {
        let args = args.clone();
        std::thread::spawn(move || {
            let mut recorder = Recorder::new(&args);
            let deadline = Instant::now() + args.timeout;
            while !recorder.done() {
                match rx.recv_blocking(Some(deadline)) {
                    Received::Message(DataMessage::Batch(batch)) => {
                        for frame in batch.frames {
                            if payload_ok(&args, &frame.payload) {
                                recorder.record(frame.frame_num, frame.ingest_ns);
                            } else {
                                recorder.bad += 1;
                            }
                        }
                    }
                    Received::Message(_) => {}
                    Received::Timeout | Received::Closed => break,
                }
            }
            recorder.report(args.payload.bytes());
        })
    };
    let source = Bytes::from(source_frame(args.payload.bytes()));
    let user = if args.payload.is_frame() {
        Vec::new()
    } else {
        let me = Instance {
            stage: "producer".into(),
            replica: 0,
            epoch: 1 << 62,
        };
        meta_padding(&me)
    };
    let mut schedule = Schedule::new(args);
    while let Some(n) = schedule.next(|| {}) {
        let payload = if args.payload.is_frame() {
            PayloadRef::Inline {
                layout: layout(args.payload),
                data: source.clone(),
            }
        } else {
            PayloadRef::None
        };
        if tx
            .send_blocking(message(n, now_ns(), payload, &user))
            .is_err()
        {
            break;
        }
    }
    consumer.join().map_err(|_| "consumer thread panicked")?;
    Ok(())
}

/// The consuming stage: listens on `args.endpoint`, acknowledges every delivery once its
/// frame is dropped.
pub fn consume(args: &RoleArgs) -> Result<(), String> {
    let node = NetNode::open(
        &NetConfig {
            pipeline: PIPELINE.into(),
            connect: Vec::new(),
            listen: vec![args.endpoint.clone()],
            mode: None,
        },
        "consumer",
        0,
    )
    .map_err(|e| e.to_string())?;
    let mut inbox = RemoteInbox::new(
        &node,
        vec![("producer".into(), 1)],
        args.window,
        Path::new(SHM_DIR),
    )
    .map_err(|e| e.to_string())?;
    println!("READY");
    let mut recorder = Recorder::new(args);
    let deadline = Instant::now() + args.timeout;
    while !recorder.done() {
        let Some(delivery) = inbox.recv(Some(deadline)).map_err(|e| e.to_string())? else {
            eprintln!("vidmesh consumer: timed out");
            break;
        };
        if let DataMessage::Batch(batch) = delivery.message {
            for frame in batch.frames {
                if payload_ok(args, &frame.payload) {
                    recorder.record(frame.frame_num, frame.ingest_ns);
                } else {
                    recorder.bad += 1;
                }
                // Dropping the frame releases its shared-memory slot.
            }
        }
        inbox.ack(&[delivery.tag]);
    }
    recorder.report(args.payload.bytes());
    Ok(())
}

/// The producing stage: connects to the consumer, waits for its first credit, then sends.
pub fn produce(args: &RoleArgs, kind: LinkKind) -> Result<(), String> {
    let node = NetNode::open(
        &NetConfig {
            pipeline: PIPELINE.into(),
            connect: vec![args.endpoint.clone()],
            listen: Vec::new(),
            mode: None,
        },
        "producer",
        0,
    )
    .map_err(|e| e.to_string())?;
    let (events_tx, events) = std::sync::mpsc::channel();
    let output = RemoteOutput::new(
        &node,
        OutputSettings {
            consumer: "consumer".into(),
            replicas: 1,
            window: args.window,
            routing: Routing::Balance,
            payload: match kind {
                LinkKind::Shm | LinkKind::ShmPrefilled => PayloadMode::SharedMemory,
                LinkKind::Raw => PayloadMode::Raw,
            },
            dead_after: Duration::from_millis(1500),
            shm_dir: SHM_DIR.into(),
            // Every frame must arrive: a benchmark of throughput, not of shedding.
            drop_oldest: false,
        },
        events_tx,
    )
    .map_err(|e| e.to_string())?;

    // The prefilled variant writes each frame straight into a slot of the link's pool
    // (`RemoteOutput::frame_buffer`), which is sent by reference. Link events are drained
    // without waiting after each send, as a stage's runtime does (`launcher/src/node`).
    let prefilled = kind == LinkKind::ShmPrefilled && args.payload.is_frame();

    let waited = Instant::now();
    while output.credits() == 0 {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err("the consumer granted no credit within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let source = Bytes::from(source_frame(args.payload.bytes()));
    let user = if args.payload.is_frame() {
        Vec::new()
    } else {
        meta_padding(node.me())
    };
    let mut schedule = Schedule::new(args);
    let drained = || {
        let until = Instant::now() + Duration::from_secs(10);
        while output.unacked() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    while let Some(n) = schedule.next(drained) {
        let ingest = now_ns();
        let payload = match (prefilled, args.payload.is_frame()) {
            (_, false) => PayloadRef::None,
            (false, true) => PayloadRef::Inline {
                layout: layout(args.payload),
                data: source.clone(),
            },
            (true, true) => {
                let mut buffer = output
                    .frame_buffer(args.payload.bytes())
                    .map_err(|e| e.to_string())?;
                buffer[..8].copy_from_slice(&n.to_le_bytes());
                buffer
                    .into_payload(layout(args.payload))
                    .map_err(|e| e.to_string())?
            }
        };
        output
            .send_blocking(message(n, ingest, payload, &user))
            .map_err(|e| e.to_string())?;
        for _ in events.try_iter() {}
    }
    wait_for_stdin_eof();
    drop(output);
    Ok(())
}

/// What copying a frame into a shared-memory slot costs, alone: alloc, copy, commit, release,
/// `count` times. Returns µs per frame.
pub fn slot_copy_cost(payload: Payload, count: u32) -> Result<f64, String> {
    let pool = SlotPool::new(
        Path::new(SHM_DIR),
        &format!("vidmesh-bench-copycost-{}", std::process::id()),
        SLOTS,
    )
    .map_err(|e| e.to_string())?;
    let source = source_frame(payload.bytes());
    // Keep SLOTS - 1 slots leased, as a link does, so that the copy goes to a different slot
    // each time (cold in the cache) rather than to one hot slot.
    let mut held = std::collections::VecDeque::new();
    let mut run = || -> Result<(), String> {
        let lease = pool
            .write(&source, "nobody", Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        held.push_back(lease);
        if held.len() >= SLOTS as usize {
            let old: SlotLease = held.pop_front().expect("not empty");
            pool.release(&old.segment, old.slot, old.generation);
        }
        Ok(())
    };
    for _ in 0..SLOTS * 2 {
        run()?;
    }
    let start = Instant::now();
    for _ in 0..count {
        run()?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / count as f64)
}

/// What `PayloadMode::Raw` does to a frame besides the socket, in µs per frame: encode the
/// delivery (the pixels are serialised into the message), gather the received message into
/// one buffer (zenoh hands a message that arrived in fragments over as several slices, and
/// the inbox asks for them contiguous), decode it (the pixels are copied out again).
pub fn codec_cost(payload: Payload, count: u32) -> Result<[f64; 3], String> {
    let source = Bytes::from(source_frame(payload.bytes()));
    let from = Instance {
        stage: "producer".into(),
        replica: 0,
        epoch: 0x1234_5678_9abc_def1,
    };
    let limits = vidmesh_protocol::Limits::default();
    let mut spent = [Duration::ZERO; 3];
    for n in 0..count as u64 + 3 {
        let delivery = Envelope::Delivery(Delivery {
            from: from.clone(),
            to_epoch: 1,
            seq: n,
            message: message(
                n,
                now_ns(),
                PayloadRef::Inline {
                    layout: layout(payload),
                    data: source.clone(),
                },
                &[],
            ),
        });
        let t0 = Instant::now();
        let wire = encode(&delivery).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let mut gathered = Vec::new();
        for piece in wire.chunks(64 * 1024) {
            gathered.extend_from_slice(piece);
        }
        let t2 = Instant::now();
        let decoded = vidmesh_protocol::decode(&gathered, &limits).map_err(|e| e.to_string())?;
        let t3 = Instant::now();
        drop((wire, gathered, decoded));
        // The first runs warm up the allocator.
        if n >= 3 {
            spent[0] += t1 - t0;
            spent[1] += t2 - t1;
            spent[2] += t3 - t2;
        }
    }
    Ok(spent.map(|d| d.as_secs_f64() * 1e6 / count as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_delivery_is_about_256_bytes_on_the_wire() {
        let me = Instance {
            stage: "producer".into(),
            replica: 0,
            // A random epoch is 8-10 bytes as a varint, like this one.
            epoch: 0x9e37_79b9_7f4a_7c15,
        };
        let user = meta_padding(&me);
        let wire = encode(&Envelope::Delivery(Delivery {
            from: me,
            to_epoch: u64::MAX / 5,
            seq: 12_345,
            message: message(12_345, now_ns(), PayloadRef::None, &user),
        }))
        .unwrap();
        assert!((248..=258).contains(&wire.len()), "{} bytes", wire.len());
    }
}
