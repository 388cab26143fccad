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
