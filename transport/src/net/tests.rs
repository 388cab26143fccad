//! Process links end to end inside one process: a router and two peers on loopback.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vidmesh_protocol::{
    encode, Announce, Batch, DataMessage, Envelope, FrameMeta, ImageLayout, Instance, PayloadRef,
    PixelFormat, PROTOCOL_VERSION,
};
use zenoh::Wait;

use super::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A router plus the config peers use to join it.
fn network(pipeline: &str) -> (NetNode, NetConfig) {
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let router = NetNode::open(
        &NetConfig {
            pipeline: pipeline.into(),
            listen: vec![endpoint.clone()],
            mode: Some("router".into()),
            ..Default::default()
        },
        "router",
        0,
    )
    .unwrap();
    let peer = NetConfig {
        pipeline: pipeline.into(),
        connect: vec![endpoint],
        ..Default::default()
    };
    (router, peer)
}

fn frame(n: u64) -> DataMessage {
    let layout = ImageLayout::packed(PixelFormat::Rgb24, 8, 4);
    let data = Bytes::from(vec![n as u8; layout.min_len().unwrap()]);
    DataMessage::Batch(Batch {
        batch_id: n,
        frames: vec![FrameMeta {
            frame_num: n,
            payload: PayloadRef::Inline { layout, data },
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn output(
    node: &NetNode,
    window: u32,
    shm: &std::path::Path,
) -> (RemoteOutput, mpsc::Receiver<LinkEvent>) {
    output_with(node, window, shm, PayloadMode::SharedMemory, false)
}

fn output_with(
    node: &NetNode,
    window: u32,
    shm: &std::path::Path,
    payload: PayloadMode,
    drop_oldest: bool,
) -> (RemoteOutput, mpsc::Receiver<LinkEvent>) {
    let (tx, rx) = mpsc::channel();
    let out = RemoteOutput::new(
        node,
        OutputSettings {
            consumer: "consumer".into(),
            replicas: 1,
            window,
            routing: Routing::Balance,
            payload,
            dead_after: Duration::from_millis(1500),
            shm_dir: shm.to_path_buf(),
            drop_oldest,
        },
        tx,
    )
    .unwrap();
    (out, rx)
}

fn recv(inbox: &mut RemoteInbox) -> InboxDelivery {
    inbox
        .recv(Some(Instant::now() + Duration::from_secs(20)))
        .unwrap()
        .expect("a delivery within 20 s")
}

fn frame_of(d: &InboxDelivery) -> (u64, u8) {
    match &d.message {
        DataMessage::Batch(b) => match &b.frames[0].payload {
            PayloadRef::Inline { data, .. } => (b.frames[0].frame_num, data[0]),
            other => panic!("pixels should arrive mapped, got {}", other.kind_name()),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn deliveries_arrive_in_order_through_shared_memory_and_a_full_window_holds_the_producer() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-order");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 2, shm.path()).unwrap();
    let (out, events) = output(&producer, 2, shm.path());
    let out = std::sync::Arc::new(out);
    let sender = {
        let out = out.clone();
        std::thread::spawn(move || {
            for n in 0..20 {
                out.send_blocking(frame(n)).unwrap();
            }
        })
    };
    // Nothing is acknowledged: the producer stops at its bound of unacknowledged deliveries.
    let first = recv(&mut inbox);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !sender.is_finished(),
        "the producer must wait for acknowledgements"
    );
    assert_eq!(out.unacked(), 8, "window 2 × 4");
    let mut got = vec![frame_of(&first)];
    inbox.ack(&[first.tag]);
    while got.len() < 20 {
        let d = recv(&mut inbox);
        got.push(frame_of(&d));
        inbox.ack(&[d.tag]);
    }
    sender.join().unwrap();
    let want: Vec<(u64, u8)> = (0..20).map(|n| (n, n as u8)).collect();
    assert_eq!(got, want, "in order, pixels intact");
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.unacked() > 0 {
        assert!(
            Instant::now() < deadline,
            "acknowledgements reach the producer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let acked = events
        .try_iter()
        .filter(|e| matches!(e, LinkEvent::Acked(_)))
        .count();
    assert_eq!(acked, 20);
}

#[test]
fn a_restarted_consumer_gets_what_the_old_one_never_acknowledged() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-restart");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let (out, _events) = output(&producer, 4, shm.path());
    {
        let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
        let mut inbox =
            RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 4, shm.path()).unwrap();
        for n in 0..3 {
            out.send_blocking(frame(n)).unwrap();
        }
        let d = recv(&mut inbox);
        assert_eq!(frame_of(&d).0, 0);
        inbox.ack(&[d.tag]);
        let _unacknowledged = (recv(&mut inbox), recv(&mut inbox));
        // The consumer dies here without acknowledging frames 1 and 2.
    }
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 4, shm.path()).unwrap();
    // The producer learns of the restart from the new instance's heartbeat and re-sends then.
    // A frame sent before it has noticed may overtake the re-sends (ordered stages put frames
    // back in order at their reorder point), so the new frame goes out once the re-sends have.
    let deadline = Instant::now() + Duration::from_secs(10);
    while out
        .stats()
        .resent
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the producer re-sends to the restarted consumer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    out.send_blocking(frame(3)).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let d = recv(&mut inbox);
        got.push(frame_of(&d).0);
        inbox.ack(&[d.tag]);
    }
    assert_eq!(got, vec![1, 2, 3], "re-sent first, in order, then new ones");
}

#[test]
fn a_peer_of_another_protocol_version_is_named_with_both_versions() {
    let (_router, peer) = network("t-version");
    let node = NetNode::open(&peer, "track", 0).unwrap();
    let mut bytes = encode(&Envelope::Announce(Announce::Heartbeat {
        instance: Instance {
            stage: "detect".into(),
            replica: 1,
            epoch: 7,
        },
        finished: false,
    }))
    .unwrap();
    bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let raw = zenoh::open(peer.to_zenoh().unwrap()).wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        raw.put("vidmesh/t-version/announce/detect/1", bytes.clone())
            .wait()
            .unwrap();
        if let Some(e) = node.peers().incompatible() {
            break e;
        }
        assert!(Instant::now() < deadline, "the mismatch is noticed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        error.contains("detect/1")
            && error.contains(&format!("version {}", PROTOCOL_VERSION + 1))
            && error.contains("track/0")
            && error.contains(&format!("version {PROTOCOL_VERSION}")),
        "{error}"
    );
}

#[test]
fn a_drop_oldest_link_never_holds_the_producer_and_counts_what_it_dropped() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-drop");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 2, shm.path()).unwrap();
    let (out, events) = output_with(&producer, 2, shm.path(), PayloadMode::Raw, true);
    out.send_blocking(frame(0)).unwrap();
    let first = recv(&mut inbox); // the link is up; nothing is acknowledged from here on
    for n in 1..60 {
        out.send_blocking(frame(n)).unwrap(); // would block at 8 without drop_oldest
    }
    let dropped = out
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 40, "dropped {dropped}");
    let acked_locally = events
        .try_iter()
        .filter(|e| matches!(e, LinkEvent::Acked(_)))
        .count() as u64;
    assert_eq!(
        acked_locally, dropped,
        "dropped deliveries are settled for the stage's ledger"
    );
    inbox.ack(&[first.tag]);
    let mut last = 0;
    while let Some(d) = inbox
        .recv(Some(Instant::now() + Duration::from_secs(3)))
        .unwrap()
    {
        last = frame_of(&d).0;
        inbox.ack(&[d.tag]);
    }
    assert_eq!(last, 59, "the newest frame arrives");
}

#[test]
fn jpeg_payloads_arrive_decoded() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-jpeg");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 2, shm.path()).unwrap();
    let (out, _events) = output_with(
        &producer,
        2,
        shm.path(),
        PayloadMode::Jpeg { quality: 90 },
        false,
    );
    out.send_blocking(frame(77)).unwrap();
    let d = recv(&mut inbox);
    let (n, value) = frame_of(&d);
    assert_eq!(n, 77);
    assert!(
        (value as i32 - 77).abs() <= 3,
        "flat grey survives JPEG: {value}"
    );
}

/// Counts the feedback reports crossing the network, as a third party on the router sees them.
fn count_feedback(
    router: &NetNode,
    pipeline: &str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    zenoh::pubsub::Subscriber<()>,
) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let subscriber = {
        let count = count.clone();
        router
            .session()
            .declare_subscriber(format!("vidmesh/{pipeline}/feedback/**"))
            .callback(move |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .wait()
            .unwrap()
    };
    (count, subscriber)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_burst_of_deliveries_is_answered_by_a_few_coalesced_feedback_reports() {
    use std::sync::atomic::Ordering::Relaxed;
    let shm = tempfile::tempdir().unwrap();
    let (router, peer) = network("t-coalesce");
    let (reports, _tap) = count_feedback(&router, "t-coalesce");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    const N: u64 = 256;
    let mut inbox = RemoteInbox::new(
        &consumer,
        vec![("producer".into(), 1)],
        N as u32,
        shm.path(),
    )
    .unwrap();
    let (out, _events) = output_with(&producer, N as u32, shm.path(), PayloadMode::Raw, false);
    wait_until("the consumer grants credit", || out.credits() > 0);
    for n in 0..N {
        out.send_blocking(frame(n)).unwrap();
    }
    wait_until("everything is published", || {
        out.stats().sent.load(Relaxed) == N
    });
    // Let the burst land in the inbox, so that the consumer finds it full.
    std::thread::sleep(Duration::from_millis(300));
    let before = reports.load(Relaxed);
    let mut got = Vec::new();
    for _ in 0..N {
        let d = recv(&mut inbox);
        got.push(frame_of(&d).0);
        inbox.ack(&[d.tag]);
    }
    inbox.flush_feedback();
    wait_until("every acknowledgement reaches the producer", || {
        out.unacked() == 0
    });
    let during = reports.load(Relaxed) - before;
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    // One credit and one ack per delivery would be 2 × 256 messages.
    assert!(
        during < N / 4,
        "{during} feedback reports for {N} deliveries and {N} acks"
    );
    assert_eq!(inbox.stats().acked.load(Relaxed), N);
}

/// A producer and a consumer on one pipeline, joined by a raw-payload link of `window`
/// credits. The fields drop in order: the link's ends before their nodes and the router.
struct RawLink {
    inbox: RemoteInbox,
    out: RemoteOutput,
    _events: mpsc::Receiver<LinkEvent>,
    _nodes: (NetNode, NetNode, NetNode),
    _shm: tempfile::TempDir,
}

impl RawLink {
    fn new(pipeline: &str, window: u32) -> Self {
        let shm = tempfile::tempdir().unwrap();
        let (router, peer) = network(pipeline);
        let producer = NetNode::open(&peer, "producer", 0).unwrap();
        let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
        let inbox =
            RemoteInbox::new(&consumer, vec![("producer".into(), 1)], window, shm.path()).unwrap();
        let (out, events) = output_with(&producer, window, shm.path(), PayloadMode::Raw, false);
        Self {
            inbox,
            out,
            _events: events,
            _nodes: (producer, consumer, router),
            _shm: shm,
        }
    }
}

#[test]
fn coalesced_credits_never_let_a_producer_exceed_the_window() {
    use std::sync::atomic::Ordering::Relaxed;
    const WINDOW: u64 = 4;
    // Every field bound: what `..` left out would be dropped here, and the nodes with it.
    let RawLink {
        mut inbox,
        out,
        _events,
        _nodes,
        _shm,
    } = RawLink::new("t-window", WINDOW as u32);
    let out = std::sync::Arc::new(out);
    let sender = {
        let out = out.clone();
        std::thread::spawn(move || {
            for n in 0..300 {
                out.send_blocking(frame(n)).unwrap();
            }
        })
    };
    let mut ahead_max = 0;
    for n in 0..300u64 {
        if n % 50 == 0 {
            // A slow consumer now and then, so that the producer runs into the window (what
            // the consumer took before is reported by the feedback timer meanwhile).
            std::thread::sleep(Duration::from_millis(100));
        }
        // Read what the producer has published before what the consumer has taken: the
        // producer can only have run further ahead since.
        let sent = out.stats().sent.load(Relaxed);
        let taken = inbox.stats().received.load(Relaxed);
        assert!(
            sent <= taken + WINDOW,
            "{sent} published with {taken} taken out and a window of {WINDOW}"
        );
        ahead_max = ahead_max.max(sent - taken);
        let d = recv(&mut inbox);
        assert_eq!(frame_of(&d).0, n);
        inbox.ack(&[d.tag]);
    }
    sender.join().unwrap();
    assert_eq!(ahead_max, WINDOW, "the producer used its whole window");
}

/// A frame's metadata without its pixels (what a broker stage receives).
fn metadata(n: u64) -> DataMessage {
    DataMessage::Batch(Batch {
        batch_id: n,
        frames: vec![FrameMeta {
            frame_num: n,
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[test]
fn metadata_only_deliveries_cost_a_fraction_of_a_credit() {
    use std::sync::atomic::Ordering::Relaxed;
    const WINDOW: u64 = 2;
    let mut link = RawLink::new("t-light", WINDOW as u32);
    wait_until("the consumer grants credit", || link.out.credits() > 0);
    let light = WINDOW * super::CREDIT_UNITS;
    for n in 0..light + 10 {
        link.out.send_blocking(metadata(n)).unwrap();
    }
    // The consumer takes nothing: the producer stops at its window of light deliveries.
    wait_until("a window of light deliveries is out", || {
        link.out.stats().sent.load(Relaxed) == light
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(link.out.stats().sent.load(Relaxed), light);
    // A frame costs a whole credit and waits behind them.
    link.out.send_blocking(frame(light + 10)).unwrap();
    for n in 0..light + 11 {
        let d = recv(&mut link.inbox);
        assert_eq!(d.tag.seq, n);
        link.inbox.ack(&[d.tag]);
    }
    link.inbox.flush_feedback();
    wait_until("everything is acknowledged", || link.out.unacked() == 0);
}

#[test]
fn acks_made_after_the_last_recv_still_reach_the_producer() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-idle-ack");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 8, shm.path()).unwrap();
    let (out, _events) = output(&producer, 8, shm.path());
    for n in 0..3 {
        out.send_blocking(frame(n)).unwrap();
    }
    let tags: Vec<DeliveryTag> = (0..3).map(|_| recv(&mut inbox).tag).collect();
    // The stage finishes its work and acknowledges, then calls `recv` no more.
    inbox.ack(&tags);
    wait_until("the acknowledgements are sent without another recv", || {
        out.unacked() == 0
    });
}

#[test]
fn a_consumer_that_dies_after_a_burst_gets_exactly_its_unacknowledged_deliveries_again() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-burst-restart");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let (out, _events) = output(&producer, 8, shm.path());
    {
        let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
        let mut inbox =
            RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 8, shm.path()).unwrap();
        for n in 0..6 {
            out.send_blocking(frame(n)).unwrap();
        }
        let all: Vec<InboxDelivery> = (0..6).map(|_| recv(&mut inbox)).collect();
        let tags: Vec<DeliveryTag> = all.iter().map(|d| d.tag.clone()).collect();
        // Acks for 0, 2 and 4 only, in one coalesced report; then the consumer dies.
        inbox.ack(&[tags[0].clone(), tags[2].clone(), tags[4].clone()]);
        wait_until("the acks arrive", || out.unacked() == 3);
    }
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 8, shm.path()).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let d = recv(&mut inbox);
        got.push(frame_of(&d));
        inbox.ack(&[d.tag]);
    }
    assert_eq!(
        got,
        vec![(1, 1), (3, 3), (5, 5)],
        "the unacknowledged ones, in order, pixels intact"
    );
    wait_until("the re-sends are acknowledged", || out.unacked() == 0);
    assert_eq!(
        out.stats()
            .resent
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

fn frame_in(out: &RemoteOutput, n: u64) -> DataMessage {
    let layout = ImageLayout::packed(PixelFormat::Rgb24, 8, 4);
    let mut buffer = out.frame_buffer(layout.min_len().unwrap()).unwrap();
    buffer.fill(n as u8);
    DataMessage::Batch(Batch {
        batch_id: n,
        frames: vec![FrameMeta {
            frame_num: n,
            payload: buffer.into_payload(layout).unwrap(),
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[test]
fn a_frame_buffer_is_sent_by_reference_and_freed_once_acknowledged_and_released() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-frame-buffer");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 4, shm.path()).unwrap();
    let (out, _events) = output(&producer, 4, shm.path());
    let message = frame_in(&out, 42);
    assert!(
        matches!(&message, DataMessage::Batch(b) if matches!(b.frames[0].payload, PayloadRef::SharedMemory { .. })),
        "the frame is a reference into the link's shared memory"
    );
    assert_eq!(out.frame_buffers_held(), 1);
    out.send_blocking(message).unwrap();
    let d = recv(&mut inbox);
    assert_eq!(frame_of(&d), (42, 42), "the pixels the producer wrote");
    inbox.ack(std::slice::from_ref(&d.tag));
    wait_until("the ack arrives", || out.unacked() == 0);
    // Acknowledged, but the consumer still reads the frame: the slot stays the frame's.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(out.frame_buffers_held(), 1);
    assert_eq!(frame_of(&d), (42, 42));
    drop(d);
    inbox.flush_feedback();
    wait_until("the release frees the slot", || {
        out.frame_buffers_held() == 0
    });

    // A buffer dropped unfilled is free at once; a link without shared memory has none.
    let unused = out.frame_buffer(64).unwrap();
    drop(unused);
    assert_eq!(out.frame_buffers_held(), 0);
    let (raw, _raw_events) = output_with(&producer, 4, shm.path(), PayloadMode::Raw, false);
    assert!(matches!(
        raw.frame_buffer(64),
        Err(NetError::SharedMemory(_))
    ));
}

#[test]
fn a_frame_buffer_is_sent_again_intact_to_a_restarted_consumer() {
    let shm = tempfile::tempdir().unwrap();
    let (_router, peer) = network("t-frame-buffer-restart");
    let producer = NetNode::open(&peer, "producer", 0).unwrap();
    let (out, _events) = output(&producer, 4, shm.path());
    {
        let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
        let mut inbox =
            RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 4, shm.path()).unwrap();
        out.send_blocking(frame_in(&out, 7)).unwrap();
        let d = recv(&mut inbox);
        assert_eq!(frame_of(&d), (7, 7));
        // Dies with the frame mapped and unacknowledged.
    }
    // Meanwhile the stage fills more buffers: they must not take the unacknowledged slot.
    let later: Vec<DataMessage> = (8..11).map(|n| frame_in(&out, n)).collect();
    let consumer = NetNode::open(&peer, "consumer", 0).unwrap();
    let mut inbox =
        RemoteInbox::new(&consumer, vec![("producer".into(), 1)], 4, shm.path()).unwrap();
    wait_until("the producer re-sends", || {
        out.stats()
            .resent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    });
    for m in later {
        out.send_blocking(m).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let d = recv(&mut inbox);
        got.push(frame_of(&d));
        inbox.ack(&[d.tag]);
    }
    assert_eq!(got, vec![(7, 7), (8, 8), (9, 9), (10, 10)]);
    inbox.flush_feedback();
    wait_until("every slot is free again", || {
        out.unacked() == 0 && out.frame_buffers_held() == 0
    });
}
