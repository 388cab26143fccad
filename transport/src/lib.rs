//! Links between stages.
//!
//! A link is a bounded queue from one or more producers to one consumer stage. Its capacity is
//! the number of credits the producers hold: when the consumer falls behind, `send` waits, so a
//! slow stage slows its producers instead of growing memory. In one process a link is a tokio
//! mpsc channel (frames shared by reference count, this file); between processes it is a
//! [`net::RemoteOutput`] / [`net::RemoteInbox`] pair over zenoh, with pixels in [`shm`] slots
//! on one host. A stage writes to either through the same [`LinkSender`].
//!
//! Stages run on their own OS threads, so the API is blocking; it drives tokio's channels
//! through a runtime [`Handle`] so that async transports and timers share one reactor.

/// Links between stage processes and hosts, over zenoh: credits, acknowledgements, re-sends.
pub mod net;
/// Shared-memory slot pool: frame pixels between two processes on one host, without a socket.
pub mod shm;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use vidmesh_protocol::DataMessage;

/// The consumer of a link has gone away (it finished or failed).
#[derive(Debug, Error)]
#[error("link `{link}` is closed: its consumer stopped")]
pub struct LinkClosed {
    pub link: String,
}

/// Counters of one consumer's inbox, shared by all its producers.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Messages accepted into the queue.
    pub sent: AtomicU64,
    /// Messages taken out by the consumer; `sent - received` is the queue depth.
    pub received: AtomicU64,
    /// Times a producer had to wait because the queue was full (backpressure events).
    pub waits: AtomicU64,
}

/// The producer side of a link; cheap to clone, one clone per upstream stage.
#[derive(Clone)]
pub struct LinkSender {
    name: Arc<str>,
    route: Route,
}

#[derive(Clone)]
enum Route {
    InProcess {
        tx: mpsc::Sender<DataMessage>,
        stats: Arc<LinkStats>,
    },
    Remote(Arc<net::RemoteOutput>),
}

/// The consumer side of a link: a stage's inbox.
pub struct LinkReceiver {
    name: Arc<str>,
    rx: mpsc::Receiver<DataMessage>,
    runtime: Handle,
    stats: Arc<LinkStats>,
    capacity: usize,
}

/// Creates an in-process link holding at most `capacity` messages (at least 1).
pub fn in_process_link(name: &str, capacity: usize, runtime: Handle) -> (LinkSender, LinkReceiver) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let name: Arc<str> = Arc::from(name);
    let stats = Arc::new(LinkStats::default());
    (
        LinkSender {
            name: name.clone(),
            route: Route::InProcess {
                tx,
                stats: stats.clone(),
            },
        },
        LinkReceiver {
            name,
            rx,
            runtime,
            stats,
            capacity,
        },
    )
}

impl LinkSender {
    /// Sends a message, waiting for a free slot while the queue is full. Must not be called
    /// from inside the async runtime (stages call it from their own threads).
    pub fn send_blocking(&self, message: DataMessage) -> Result<(), LinkClosed> {
        let (tx, stats) = match &self.route {
            Route::InProcess { tx, stats } => (tx, stats),
            Route::Remote(output) => return output.send_blocking(message),
        };
        let message = match tx.try_send(message) {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.closed()),
            Err(mpsc::error::TrySendError::Full(m)) => m,
        };
        stats.waits.fetch_add(1, Ordering::Relaxed);
        tx.blocking_send(message).map_err(|_| self.closed())?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A sender into another process.
    pub fn remote(output: Arc<net::RemoteOutput>) -> Self {
        Self {
            name: Arc::from(output.name()),
            route: Route::Remote(output),
        }
    }

    /// The link's name, `producer->consumer`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn closed(&self) -> LinkClosed {
        LinkClosed {
            link: self.name.to_string(),
        }
    }
}

/// What waiting on an inbox produced.
#[derive(Debug)]
pub enum Received {
    Message(DataMessage),
    /// The deadline passed with nothing to read.
    Timeout,
    /// Every producer is gone and the queue is drained.
    Closed,
}

impl LinkReceiver {
    /// Waits for the next message until `deadline` (forever when `None`).
    pub fn recv_blocking(&mut self, deadline: Option<Instant>) -> Received {
        let received = self.wait(deadline);
        if matches!(received, Received::Message(_)) {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        received
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Received {
        // Fast path without touching the reactor.
        match self.rx.try_recv() {
            Ok(m) => return Received::Message(m),
            Err(mpsc::error::TryRecvError::Disconnected) => return Received::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let rx = &mut self.rx;
        match deadline {
            None => match rx.blocking_recv() {
                Some(m) => Received::Message(m),
                None => Received::Closed,
            },
            Some(deadline) => self.runtime.block_on(async move {
                match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                    Ok(Some(m)) => Received::Message(m),
                    Ok(None) => Received::Closed,
                    Err(_) => Received::Timeout,
                }
            }),
        }
    }

    /// Messages waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.rx.len()
    }

    /// The queue's capacity (credits).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> &Arc<LinkStats> {
        &self.stats
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vidmesh_protocol::Batch;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn batch(id: u64) -> DataMessage {
        DataMessage::Batch(Batch {
            batch_id: id,
            ..Default::default()
        })
    }

    #[test]
    fn full_link_makes_the_producer_wait_until_the_consumer_reads() {
        let rt = runtime();
        let (tx, mut rx) = in_process_link("a->b", 2, rt.handle().clone());
        tx.send_blocking(batch(0)).unwrap();
        tx.send_blocking(batch(1)).unwrap();
        assert_eq!(rx.depth(), 2);
        let producer = std::thread::spawn(move || tx.send_blocking(batch(2)).map(|_| tx));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!producer.is_finished(), "third send must wait for a credit");
        for want in 0..3 {
            match rx.recv_blocking(None) {
                Received::Message(DataMessage::Batch(b)) => assert_eq!(b.batch_id, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        let tx = producer.join().unwrap().unwrap();
        assert_eq!(rx.stats().waits.load(Ordering::Relaxed), 1);
        drop(tx);
        assert!(matches!(rx.recv_blocking(None), Received::Closed));
    }

    #[test]
    fn receive_with_deadline_times_out() {
        let rt = runtime();
        let (_tx, mut rx) = in_process_link("a->b", 1, rt.handle().clone());
        let t0 = Instant::now();
        assert!(matches!(
            rx.recv_blocking(Some(t0 + Duration::from_millis(20))),
            Received::Timeout
        ));
        assert!(t0.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn sending_to_a_stopped_consumer_fails_with_the_link_name() {
        let rt = runtime();
        let (tx, rx) = in_process_link("detect->track", 1, rt.handle().clone());
        drop(rx);
        let err = tx.send_blocking(batch(0)).unwrap_err();
        assert!(err.to_string().contains("detect->track"));
    }
}
