//! The delivery thread: takes messages from the spool in order, hands them to the adapter in
//! runs, commits what the broker confirmed, and retries the rest with backoff. Rejected
//! messages (refused by the broker for good) are set aside in `rejected.jsonl` next to the
//! spool so one bad message cannot hold up the others.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::adapter::{Adapter, ErrorKind, Message, PublishError};
use super::spool::{Spool, SpoolStats};
use crate::stage::StageError;

/// Messages per [`Adapter::publish`] call: large enough to batch well, small enough that a
/// failed run costs little to send again.
const RUN_MESSAGES: usize = 2048;
const RUN_BYTES: usize = 8 << 20;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the delivery did, for the end-of-run report and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryStats {
    pub delivered: u64,
    pub rejected: u64,
    /// Failed publish attempts (each followed by a retry).
    pub retries: u64,
    pub spool: SpoolStats,
    /// The last failure, while it lasts (cleared by the next success).
    pub failing: Option<PublishError>,
}

struct Shared {
    spool: Spool,
    stop: AtomicBool,
    delivered: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    failing: Mutex<Option<(PublishError, Instant)>>,
    /// Wakes a backoff sleep early when the stage stops.
    wake: Condvar,
}

pub struct Delivery {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    destination: String,
}

impl Delivery {
    /// Starts delivering from `spool` (beginning with what an earlier process left in it).
    pub fn start(spool: Spool, adapter: Box<dyn Adapter>) -> Result<Self, StageError> {
        let destination = adapter.describe();
        let shared = Arc::new(Shared {
            spool,
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failing: Mutex::new(None),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("broker-delivery".into())
            .spawn({
                let shared = shared.clone();
                move || deliver(&shared, adapter)
            })
            .map_err(|e| StageError::runtime("cannot start the delivery thread", e))?;
        Ok(Self {
            shared,
            thread: Some(thread),
            destination,
        })
    }

    /// Accepts messages: once this returns they are in the spool and will be delivered.
    pub fn submit(&self, messages: &[Message]) -> Result<(), StageError> {
        let destination = &self.destination;
        self.shared.spool.append(messages, |stats| {
            tracing::warn!(
                destination = %destination,
                pending = stats.pending,
                bytes = stats.bytes,
                "spool full; waiting for the broker to confirm messages (when_full = \"block\")"
            );
        })
    }

    /// Makes everything submitted durable on disk.
    pub fn sync(&self) -> Result<(), StageError> {
        self.shared.spool.sync()
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub fn stats(&self) -> DeliveryStats {
        DeliveryStats {
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
            spool: self.shared.spool.stats(),
            failing: self.shared.failing().map(|(e, _)| e),
        }
    }

    /// Waits until every submitted message is confirmed, at most `drain_timeout` (less when
    /// the broker refuses outright: waiting will not change its mind), then stops the thread.
    /// Messages still unconfirmed stay in the spool for the next run and make this an error.
    pub fn finish(mut self, drain_timeout: Duration) -> Result<DeliveryStats, StageError> {
        self.sync()?;
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let pending = self.shared.spool.stats().pending;
            if pending == 0 {
                break;
            }
            let failing = self.shared.failing();
            let refused_for = failing
                .as_ref()
                .filter(|(e, _)| e.kind == ErrorKind::Refused)
                .map(|(_, since)| since.elapsed());
            if started.elapsed() >= drain_timeout || refused_for >= Some(Duration::from_secs(2)) {
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                tracing::info!(
                    destination = %self.destination,
                    pending,
                    failing = failing.as_ref().map(|(e, _)| e.detail.as_str()),
                    "waiting for the broker to confirm the remaining messages"
                );
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        let stats = self.stats();
        if stats.spool.pending > 0 {
            let why = stats
                .failing
                .as_ref()
                .map_or("not confirmed in time".to_string(), |e| e.detail.clone());
            return Err(StageError::Runtime(format!(
                "{} messages not delivered to {} ({why}); they are kept in the spool {} and \
                 delivered first by the next run",
                stats.spool.pending,
                self.destination,
                self.shared.spool.dir().display()
            )));
        }
        Ok(stats)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn failing(&self) -> Option<(PublishError, Instant)> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sleeps `d` unless the stage stops first.
    fn pause(&self, d: Duration) {
        let guard = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.stop.load(Ordering::Relaxed) {
            let _ = self.wake.wait_timeout(guard, d);
        }
    }
}

fn deliver(shared: &Shared, mut adapter: Box<dyn Adapter>) {
    let destination = adapter.describe();
    // The run in flight: messages and their spool sequence numbers, kept apart so a retry
    // hands the same messages to the adapter without copying their payloads again.
    let mut seqs: Vec<u64> = Vec::new();
    let mut run: Vec<Message> = Vec::new();
    let commit = |seq: u64| {
        if let Err(e) = shared.spool.commit(seq) {
            tracing::error!(destination = %destination, error = %e, "cannot record delivery progress");
        }
    };
    let mut backoff = BACKOFF_FIRST;
    loop {
        if run.is_empty() {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match shared
                .spool
                .read(RUN_MESSAGES, RUN_BYTES, Duration::from_millis(100))
            {
                Ok(records) => {
                    (seqs, run) = records.into_iter().map(|r| (r.seq, r.message)).unzip();
                }
                Err(e) => {
                    // A damaged spool cannot be delivered from; say so loudly and stop.
                    tracing::error!(destination = %destination, error = %e, "cannot read the spool");
                    return;
                }
            }
            continue;
        }
        let result = adapter.publish(&run);
        let confirmed = match &result {
            Ok(()) => run.len(),
            Err(e) => e.confirmed.min(run.len()),
        };
        if confirmed > 0 {
            let next = seqs[confirmed - 1] + 1;
            seqs.drain(..confirmed);
            run.drain(..confirmed);
            shared
                .delivered
                .fetch_add(confirmed as u64, Ordering::Relaxed);
            commit(next);
        }
        match result {
            Ok(()) => {
                let recovered = shared
                    .failing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some((e, since)) = recovered {
                    tracing::info!(
                        destination = %destination,
                        after = ?since.elapsed(),
                        earlier_error = %e.detail,
                        "delivering again"
                    );
                }
                backoff = BACKOFF_FIRST;
            }
            Err(e) if e.kind == ErrorKind::Rejected && !run.is_empty() => {
                let (seq, message) = (seqs.remove(0), run.remove(0));
                set_aside(shared, &message, &e.detail);
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                commit(seq + 1);
            }
            Err(e) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                {
                    let mut failing = shared.failing.lock().unwrap_or_else(|p| p.into_inner());
                    let changed = failing
                        .as_ref()
                        .is_none_or(|(old, _)| old.detail != e.detail);
                    if changed {
                        match e.kind {
                            ErrorKind::Refused => tracing::error!(
                                destination = %destination,
                                error = %e.detail,
                                "the broker refuses; messages stay in the spool and delivery is retried"
                            ),
                            _ => tracing::warn!(
                                destination = %destination,
                                error = %e.detail,
                                "broker unavailable; messages stay in the spool and delivery is retried"
                            ),
                        }
                        let since = failing.as_ref().map_or_else(Instant::now, |(_, s)| *s);
                        *failing = Some((e, since));
                    }
                }
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                shared.pause(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Appends a rejected message to `rejected.jsonl` in the spool directory, with the reason.
fn set_aside(shared: &Shared, message: &Message, reason: &str) {
    let path = shared.spool.dir().join("rejected.jsonl");
    tracing::error!(
        message_id = %message.id,
        sensor = %message.key,
        bytes = message.payload.len(),
        reason,
        set_aside_in = %path.display(),
        "the broker rejected a message; it is set aside and delivery goes on"
    );
    let line = serde_json::json!({
        "id": message.id,
        "key": message.key,
        "reason": reason,
        "payload": String::from_utf8_lossy(&message.payload),
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot write the rejected message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::spool::{SpoolSettings, WhenFull};

    /// An adapter that fails as scripted, then records what it confirmed.
    struct Scripted {
        failures: Vec<PublishError>,
        confirmed: Arc<Mutex<Vec<String>>>,
        reject_id: Option<String>,
    }

    impl Adapter for Scripted {
        fn publish(&mut self, messages: &[Message]) -> Result<(), PublishError> {
            if !self.failures.is_empty() {
                let e = self.failures.remove(0);
                let mut seen = self.confirmed.lock().unwrap();
                seen.extend(messages[..e.confirmed].iter().map(|m| m.id.clone()));
                return Err(e);
            }
            if let Some(i) = messages
                .iter()
                .position(|m| Some(&m.id) == self.reject_id.as_ref())
            {
                let mut seen = self.confirmed.lock().unwrap();
                seen.extend(messages[..i].iter().map(|m| m.id.clone()));
                self.reject_id = None;
                return Err(PublishError::new(i, ErrorKind::Rejected, "too large"));
            }
            let mut seen = self.confirmed.lock().unwrap();
            seen.extend(messages.iter().map(|m| m.id.clone()));
            Ok(())
        }

        fn describe(&self) -> String {
            "scripted://".into()
        }
    }

    fn message(n: u64) -> Message {
        Message {
            key: "cam".into(),
            id: format!("m{n}"),
            payload: b"{}".to_vec(),
        }
    }

    fn spool(dir: &std::path::Path) -> Spool {
        Spool::open(SpoolSettings::new(dir.into(), 1 << 20, WhenFull::Block)).unwrap()
    }

    #[test]
    fn partial_confirmations_and_outages_end_with_everything_delivered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let adapter = Scripted {
            failures: vec![
                PublishError::new(0, ErrorKind::Unavailable, "connection refused"),
                PublishError::new(3, ErrorKind::Unavailable, "broker went away"),
                PublishError::new(0, ErrorKind::Unavailable, "connection refused"),
            ],
            confirmed: confirmed.clone(),
            reject_id: Some("m7".into()),
        };
        let delivery = Delivery::start(spool(dir.path()), Box::new(adapter)).unwrap();
        let all: Vec<Message> = (0..20).map(message).collect();
        delivery.submit(&all).unwrap();
        let stats = delivery.finish(Duration::from_secs(10)).unwrap();
        assert_eq!(stats.delivered, 19);
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.retries, 3);
        let expected: Vec<String> = (0..20)
            .filter(|&n| n != 7)
            .map(|n| format!("m{n}"))
            .collect();
        assert_eq!(*confirmed.lock().unwrap(), expected);
        let rejected = std::fs::read_to_string(dir.path().join("rejected.jsonl")).unwrap();
        assert!(rejected.contains("\"id\":\"m7\"") && rejected.contains("too large"));
    }

    #[test]
    fn a_refusing_broker_ends_the_drain_early_and_keeps_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = Scripted {
            failures: (0..1000)
                .map(|_| PublishError::new(0, ErrorKind::Refused, "not authorised"))
                .collect(),
            confirmed: Default::default(),
            reject_id: None,
        };
        let delivery = Delivery::start(spool(dir.path()), Box::new(adapter)).unwrap();
        delivery.submit(&[message(0), message(1)]).unwrap();
        let started = Instant::now();
        let err = delivery
            .finish(Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            err.starts_with("2 messages not delivered to scripted:// (not authorised)"),
            "{err}"
        );
        // The next run finds them.
        assert_eq!(spool(dir.path()).stats().recovered, 2);
    }
}
