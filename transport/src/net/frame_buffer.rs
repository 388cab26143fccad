//! Zero-copy frames on shared-memory links: a producer writes a frame straight into a slot of
//! the link's pool ([`RemoteOutput::frame_buffer`](super::RemoteOutput::frame_buffer)) and
//! `send_blocking` sends only the reference.
//!
//! Unlike the slots the link fills itself (one copy per send, leased to the consumer instance
//! it went to and freed by that consumer's release), such a slot is the frame itself: a
//! re-send to a restarted or other replica references it again. So it stays held while any
//! pending delivery carries it *and* while any consumer it was sent to still maps it, and is
//! freed only when both are over (a consumer that restarted or died counts as released).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use vidmesh_protocol::{DataMessage, ImageLayout, PayloadRef};

use super::output::Shared;
use super::NetError;
use crate::shm::{SlotPool, SlotWriter};

/// The lessee the pool records for frame buffers: never a consumer's, so a consumer's
/// restart does not reclaim them (the bookkeeping below does).
pub(super) const HELD_BY_LINK: &str = "link";

/// (segment, slot, generation).
type SlotKey = (String, u32, u64);

#[derive(Debug, Default)]
struct Held {
    /// Pending deliveries that carry it.
    deliveries: u32,
    /// Consumer instances it was sent to that have not released it yet.
    mapped_by: Vec<String>,
    /// Handed to `send_blocking` at least once; before that it is the producer's.
    queued: bool,
}

/// The link's frame-buffer slots and who still needs each.
#[derive(Debug, Default)]
pub(super) struct HeldSlots {
    slots: HashMap<SlotKey, Held>,
}

fn keys_in(message: &DataMessage) -> impl Iterator<Item = SlotKey> + '_ {
    let frames = match message {
        DataMessage::Batch(b) => b.frames.as_slice(),
        DataMessage::EndOfStream(_) => &[],
    };
    frames.iter().filter_map(|f| match &f.payload {
        PayloadRef::SharedMemory {
            segment,
            slot,
            generation,
            ..
        } => Some((segment.clone(), *slot, *generation)),
        _ => None,
    })
}

impl HeldSlots {
    /// A frame buffer was committed: the producer's until it is queued.
    pub(super) fn hold(&mut self, key: SlotKey) {
        self.slots.insert(key, Held::default());
    }

    /// A pending delivery now carries `message`.
    pub(super) fn queued(&mut self, message: &DataMessage) {
        if self.slots.is_empty() {
            return;
        }
        for key in keys_in(message) {
            if let Some(held) = self.slots.get_mut(&key) {
                held.deliveries += 1;
                held.queued = true;
            }
        }
    }

    /// A pending delivery carrying `message` is settled (acknowledged, dropped or replaced).
    pub(super) fn settled(&mut self, message: &DataMessage, pool: &SlotPool) {
        if self.slots.is_empty() {
            return;
        }
        for key in keys_in(message) {
            if let Some(held) = self.slots.get_mut(&key) {
                held.deliveries = held.deliveries.saturating_sub(1);
            }
            self.free_if_done(&key, pool);
        }
    }

    /// `message` was published to the consumer instance `lessee`, which may map its frames.
    pub(super) fn sent(&mut self, message: &DataMessage, lessee: &str) {
        if self.slots.is_empty() {
            return;
        }
        for key in keys_in(message) {
            if let Some(held) = self.slots.get_mut(&key) {
                if !held.mapped_by.iter().any(|l| l == lessee) {
                    held.mapped_by.push(lessee.to_string());
                }
            }
        }
    }

    /// `lessee` released a slot; false when it is not a frame-buffer slot (the caller frees
    /// it in the pool as a copy slot).
    pub(super) fn released(
        &mut self,
        (segment, slot, generation): SlotKey,
        lessee: &str,
        pool: &SlotPool,
    ) -> bool {
        let key = (segment, slot, generation);
        let Some(held) = self.slots.get_mut(&key) else {
            return false;
        };
        held.mapped_by.retain(|l| l != lessee);
        self.free_if_done(&key, pool);
        true
    }

    /// The consumer instance `lessee` restarted or died: it maps nothing any more.
    pub(super) fn lessee_gone(&mut self, lessee: &str, pool: &SlotPool) {
        let keys: Vec<SlotKey> = self
            .slots
            .iter_mut()
            .filter_map(|(key, held)| {
                let before = held.mapped_by.len();
                held.mapped_by.retain(|l| l != lessee);
                (held.mapped_by.len() != before).then(|| key.clone())
            })
            .collect();
        for key in keys {
            self.free_if_done(&key, pool);
        }
    }

    fn free_if_done(&mut self, key: &SlotKey, pool: &SlotPool) {
        let done = self
            .slots
            .get(key)
            .is_some_and(|h| h.queued && h.deliveries == 0 && h.mapped_by.is_empty());
        if done {
            self.slots.remove(key);
            pool.release(&key.0, key.1, key.2);
        }
    }

    /// Slots held now (for tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// A frame being written straight into a shared-memory slot of a link
/// ([`RemoteOutput::frame_buffer`](super::RemoteOutput::frame_buffer)); derefs to exactly the
/// bytes asked for. Fill it, turn it into a frame's payload with
/// [`FrameBuffer::into_payload`], and `send_blocking` sends the frame by reference, without
/// copying it. Dropped before `into_payload`, the slot is free again at once.
pub struct FrameBuffer {
    pub(super) writer: SlotWriter,
    pub(super) shared: Arc<Shared>,
}

impl FrameBuffer {
    /// Publishes the written bytes as a frame of `layout` and returns its payload, for a
    /// `FrameMeta` sent on the link this buffer came from. The slot is the link's from here
    /// on: it is freed once that delivery is acknowledged and every consumer it went to has
    /// released it. A payload that is never sent keeps its slot until the link is dropped.
    pub fn into_payload(self, layout: ImageLayout) -> Result<PayloadRef, NetError> {
        let needed = layout
            .min_len()
            .ok_or_else(|| NetError::SharedMemory(format!("frame layout {layout:?} overflows")))?;
        if needed > self.writer.len() {
            return Err(NetError::SharedMemory(format!(
                "a {}x{} {:?} frame needs {needed} bytes, the buffer holds {}",
                layout.width,
                layout.height,
                layout.format,
                self.writer.len()
            )));
        }
        let lease = self.writer.commit();
        self.shared
            .hold_frame_buffer((lease.segment.clone(), lease.slot, lease.generation));
        Ok(PayloadRef::SharedMemory {
            segment: lease.segment,
            slot: lease.slot,
            generation: lease.generation,
            layout,
        })
    }
}

impl Deref for FrameBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.writer
    }
}

impl DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.writer
    }
}

impl std::fmt::Debug for FrameBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBuffer")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}
