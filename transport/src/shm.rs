//! Shared-memory slot pool: frames cross between two processes on one host without a socket.
//!
//! The producer owns a [`SlotPool`] of segment files (normally in `/dev/shm`), each cut into N
//! equal slots. It writes a frame into a free slot, sends the consumer the reference
//! (`segment`, `slot`, `generation`, `len`) over its link, and the slot stays leased to that
//! consumer until the consumer's release comes back ([`SlotPool::release`]) or the consumer is
//! declared gone ([`SlotPool::reclaim`]). The consumer's [`SlotMapper`] maps segments read-only
//! and hands out `Bytes` that point straight into the shared memory; dropping the last clone
//! calls the release callback, which the caller turns into a `Feedback::Release`.
//!
//! Segment file layout, every header field one native-endian `u64` word:
//!
//! | word    | field                                                        |
//! |---------|--------------------------------------------------------------|
//! | 0       | magic `VMSHSLOT`                                             |
//! | 1       | layout version ([`LAYOUT_VERSION`])                          |
//! | 2       | slot size in bytes (a multiple of 4 KiB)                     |
//! | 3       | slot count                                                   |
//! | 4       | offset of slot 0 (the header rounded up to 4 KiB)            |
//! | 5 + i   | generation of slot i, bumped by the producer at every alloc  |
//!
//! Who leases what lives in the producer process only: nothing in the file is trusted by the
//! producer, and everything in it is checked by the consumer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions};
use thiserror::Error;
use vidmesh_protocol::SlotRelease;

/// Every segment name (and so every pool prefix) starts with this.
pub const SEGMENT_NAME_PREFIX: &str = "vidmesh-";
/// Version of the segment layout described in the module docs.
pub const LAYOUT_VERSION: u64 = 1;
/// Most slots one segment may have (bounds the header a consumer reads).
pub const MAX_SLOTS_PER_SEGMENT: u32 = 1024;
/// Default bound on the bytes a pool keeps mapped, all segments together.
pub const DEFAULT_MAX_MAPPED_BYTES: u64 = 1 << 30;

const MAGIC: [u8; 8] = *b"VMSHSLOT";
const FIXED_HEADER_WORDS: usize = 5;
const PAGE: usize = 4096;
const MAX_NAME_LEN: usize = 255;
/// Room left after a pool prefix for `-<segment number>`.
const MAX_PREFIX_LEN: usize = MAX_NAME_LEN - 21;

/// What went wrong with a pool or a slot reference.
#[derive(Debug, Error)]
pub enum ShmError {
    /// A pool prefix or segment name outside `vidmesh-[A-Za-z0-9._-]*`.
    #[error("invalid shared-memory name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A pool constructor argument out of range.
    #[error("invalid shared-memory pool setting: {0}")]
    InvalidSetting(String),
    /// A file system call on a segment file failed (`open` with `NotFound`: no such segment).
    #[error("shared-memory segment `{segment}`: cannot {action} {path}: {source}")]
    Io {
        segment: String,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The file exists but is not a segment we can trust (owner, type, header, size).
    #[error("shared-memory segment `{segment}` is not a usable slot segment: {reason}")]
    BadSegment { segment: String, reason: String },
    /// The reference names a slot past the segment's count.
    #[error("shared-memory segment `{segment}` has {count} slots, slot {slot} does not exist")]
    SlotOutOfRange {
        segment: String,
        slot: u32,
        count: u32,
    },
    /// The reference asks for more bytes than a slot holds.
    #[error("shared-memory segment `{segment}` has slots of {slot_size} bytes, {len} asked")]
    TooLong {
        segment: String,
        len: usize,
        slot_size: usize,
    },
    /// The slot was reused since the reference was made (or was never allocated).
    #[error(
        "stale reference to shared-memory segment `{segment}` slot {slot}: generation \
         {generation}, the slot is now at {current}"
    )]
    StaleGeneration {
        segment: String,
        slot: u32,
        generation: u64,
        current: u64,
    },
    /// Every slot that fits is leased and none came back within the timeout.
    #[error(
        "shared-memory pool `{pool}` is exhausted: all {slots} slots of at least {len} bytes \
         are leased ({leases}) after waiting {waited:?}"
    )]
    Exhausted {
        pool: String,
        len: usize,
        slots: usize,
        leases: String,
        waited: Duration,
    },
    /// A new segment would pass the pool's byte budget (and no idle segment could be retired).
    #[error(
        "shared-memory pool `{pool}` cannot map a segment of {needed} bytes: {mapped} of at \
         most {max} bytes are mapped"
    )]
    OverBudget {
        pool: String,
        needed: u64,
        mapped: u64,
        max: u64,
    },
}

/// Checks a pool prefix or segment name: `vidmesh-` then only `[A-Za-z0-9._-]`, so it is one
/// plain file name inside the segment directory (no `/`, never `.` or `..`).
fn check_name(name: &str, max_len: usize) -> Result<(), ShmError> {
    let reason = if !name.starts_with(SEGMENT_NAME_PREFIX) {
        Some("it must start with `vidmesh-`")
    } else if name.len() > max_len {
        Some("it is too long")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only ASCII letters, digits, `.`, `_` and `-` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ShmError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Offset of slot 0 in a segment of `slot_count` slots.
fn data_offset(slot_count: u32) -> usize {
    ((FIXED_HEADER_WORDS + slot_count as usize) * 8).div_ceil(PAGE) * PAGE
}

/// A header word of a mapping.
///
/// # Safety
/// `base` must be page-aligned and point to a mapping of at least `(index + 1) * 8` bytes
/// that outlives `'a`.
unsafe fn header_word<'a>(base: *const u8, index: usize) -> &'a AtomicU64 {
    // Aligned because mappings start on a page and words are 8 bytes apart. Loads through a
    // read-only mapping are fine: 8-byte Acquire/Relaxed atomic loads never write.
    unsafe { &*base.add(index * 8).cast::<AtomicU64>() }
}

// ---------------------------------------------------------------------------------------------
// Producer side
// ---------------------------------------------------------------------------------------------

/// One segment file, mapped read-write by the producer. Its file is unlinked when dropped.
struct Segment {
    name: String,
    path: PathBuf,
    /// Taken once from `_map`, which is never touched again, so that slots can be written
    /// through it while the segment is shared.
    base: *mut u8,
    slot_size: usize,
    slot_count: u32,
    data_offset: usize,
    mapped_len: usize,
    _map: MmapMut,
}

// SAFETY: `base` points into `_map`, owned by the segment. Slot bytes are written only by the
// one `SlotWriter` holding that slot's lease; header words are atomics.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    fn create(
        dir: &Path,
        name: String,
        slot_size: usize,
        slot_count: u32,
    ) -> Result<Self, ShmError> {
        let path = dir.join(&name);
        let io_err = |action, source| ShmError::Io {
            segment: name.clone(),
            action,
            path: path.clone(),
            source,
        };
        let data_offset = data_offset(slot_count);
        let mapped_len = data_offset + slot_size * slot_count as usize;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("create", e))?;
        // From here on the file exists: unlink it again on any failure.
        let unlink = |e: ShmError| {
            let _ = fs::remove_file(&path);
            e
        };
        file.set_len(mapped_len as u64)
            .map_err(|e| unlink(io_err("size", e)))?;
        // SAFETY: the file was just created by us with O_EXCL; nobody truncates it while mapped.
        let mut map = unsafe { MmapOptions::new().populate().map_mut(&file) }
            .map_err(|e| unlink(io_err("map", e)))?;
        let base = map.as_mut_ptr();
        let segment = Segment {
            name,
            path: path.clone(),
            base,
            slot_size,
            slot_count,
            data_offset,
            mapped_len,
            _map: map,
        };
        segment.word(1).store(LAYOUT_VERSION, Ordering::Relaxed);
        segment.word(2).store(slot_size as u64, Ordering::Relaxed);
        segment
            .word(3)
            .store(u64::from(slot_count), Ordering::Relaxed);
        segment.word(4).store(data_offset as u64, Ordering::Relaxed);
        // Magic last: a consumer that sees it sees the whole header.
        segment
            .word(0)
            .store(u64::from_ne_bytes(MAGIC), Ordering::Release);
        Ok(segment)
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!((index + 1) * 8 <= self.data_offset);
        // SAFETY: in bounds of the header, which lives as long as `self`.
        unsafe { header_word(self.base, index) }
    }

    fn generation(&self, slot: u32) -> &AtomicU64 {
        self.word(FIXED_HEADER_WORDS + slot as usize)
    }

    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        assert!(slot < self.slot_count);
        // SAFETY: in bounds of the mapping (checked above, sized in `create`).
        unsafe {
            self.base
                .add(self.data_offset + slot as usize * self.slot_size)
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Consumers that still map it keep their pages (POSIX); the name goes now.
        let _ = fs::remove_file(&self.path);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotUse {
    Free,
    /// Handed to a `SlotWriter` that has not committed yet.
    Writing(Arc<str>),
    /// Committed and leased to a consumer until it releases it.
    Leased(Arc<str>),
}

/// The producer's bookkeeping of one segment.
struct SegmentSlots {
    segment: Arc<Segment>,
    uses: Vec<SlotUse>,
    generations: Vec<u64>,
    /// Free slots, most recently freed last (reused first: its pages are warm).
    free: Vec<u32>,
}

impl SegmentSlots {
    fn idle(&self) -> bool {
        self.free.len() == self.uses.len()
    }

    fn set_free(&mut self, slot: u32) {
        self.uses[slot as usize] = SlotUse::Free;
        self.free.push(slot);
    }
}

struct PoolState {
    segments: Vec<SegmentSlots>,
    mapped_bytes: u64,
    max_mapped_bytes: u64,
    /// Slots one frame size may have in all (see [`SlotPool::set_max_slots`]).
    max_slots: u32,
    next_segment: u64,
}

struct PoolInner {
    dir: PathBuf,
    prefix: String,
    slots_per_segment: u32,
    state: Mutex<PoolState>,
    slot_freed: Condvar,
}

/// What `PoolState::try_alloc` found.
enum Attempt {
    Got(Arc<Segment>, u32, u64),
    /// Every slot that fits is leased: wait for a release.
    AllLeased,
    /// No segment fits and a new one would pass the byte budget: wait for idle segments.
    OverBudget(u64),
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Nothing panics while holding the lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_alloc(
        &self,
        state: &mut PoolState,
        slot_size: usize,
        lessee: &str,
    ) -> Result<Attempt, ShmError> {
        // The smallest fitting slot, so that small frames do not hold big slots.
        let best = state
            .segments
            .iter_mut()
            .filter(|s| s.segment.slot_size >= slot_size && !s.free.is_empty())
            .min_by_key(|s| s.segment.slot_size);
        if let Some(slots) = best {
            return Ok(take_slot(slots, lessee));
        }
        let needed = (data_offset(self.slots_per_segment) as u64)
            .saturating_add((slot_size as u64).saturating_mul(u64::from(self.slots_per_segment)));
        let fitting: usize = state
            .segments
            .iter()
            .filter(|s| s.segment.slot_size >= slot_size)
            .map(|s| s.uses.len())
            .sum();
        if fitting > 0 {
            // Every slot that fits is leased: grow by a segment while this size may have more
            // slots and the byte budget allows, else wait for a release.
            if fitting + self.slots_per_segment as usize > state.max_slots as usize
                || state.mapped_bytes.saturating_add(needed) > state.max_mapped_bytes
            {
                return Ok(Attempt::AllLeased);
            }
        } else {
            if needed > state.max_mapped_bytes {
                return Err(self.over_budget(state, needed));
            }
            // Retire idle segments that are too small for this frame until the new one fits.
            while state.mapped_bytes.saturating_add(needed) > state.max_mapped_bytes {
                let Some(i) = state.segments.iter().position(SegmentSlots::idle) else {
                    return Ok(Attempt::OverBudget(needed));
                };
                let retired = state.segments.swap_remove(i);
                state.mapped_bytes -= retired.segment.mapped_len as u64;
            }
        }
        let name = format!("{}-{}", self.prefix, state.next_segment);
        state.next_segment += 1;
        let segment = Segment::create(&self.dir, name, slot_size, self.slots_per_segment)?;
        state.mapped_bytes += segment.mapped_len as u64;
        let count = self.slots_per_segment;
        state.segments.push(SegmentSlots {
            segment: Arc::new(segment),
            uses: vec![SlotUse::Free; count as usize],
            generations: vec![0; count as usize],
            free: (0..count).rev().collect(),
        });
        let slots = state.segments.last_mut().expect("just pushed");
        Ok(take_slot(slots, lessee))
    }

    fn over_budget(&self, state: &PoolState, needed: u64) -> ShmError {
        ShmError::OverBudget {
            pool: self.prefix.clone(),
            needed,
            mapped: state.mapped_bytes,
            max: state.max_mapped_bytes,
        }
    }

    fn exhausted(
        &self,
        state: &PoolState,
        len: usize,
        slot_size: usize,
        waited: Duration,
    ) -> ShmError {
        let mut leased: BTreeMap<String, usize> = BTreeMap::new();
        let mut slots = 0;
        for s in state
            .segments
            .iter()
            .filter(|s| s.segment.slot_size >= slot_size)
        {
            slots += s.uses.len();
            for u in &s.uses {
                match u {
                    SlotUse::Free => {}
                    SlotUse::Writing(l) => {
                        *leased
                            .entry(format!("being written for `{l}`"))
                            .or_default() += 1
                    }
                    SlotUse::Leased(l) => *leased.entry(format!("`{l}`")).or_default() += 1,
                }
            }
        }
        let leases = leased
            .iter()
            .map(|(who, n)| format!("{n} to {who}"))
            .collect::<Vec<_>>()
            .join(", ");
        ShmError::Exhausted {
            pool: self.prefix.clone(),
            len,
            slots,
            leases,
            waited,
        }
    }

    /// Frees `slot` if its generation is `generation` and its use is what `expect` accepts.
    fn free_if(
        &self,
        segment: &str,
        slot: u32,
        generation: u64,
        expect: impl Fn(&SlotUse) -> bool,
    ) -> bool {
        let mut state = self.lock();
        let Some(slots) = state
            .segments
            .iter_mut()
            .find(|s| s.segment.name == segment)
        else {
            return false;
        };
        let i = slot as usize;
        if i >= slots.uses.len() || slots.generations[i] != generation || !expect(&slots.uses[i]) {
            return false;
        }
        slots.set_free(slot);
        drop(state);
        self.slot_freed.notify_all();
        true
    }
}

/// Leases the last free slot of `slots` and bumps its generation.
fn take_slot(slots: &mut SegmentSlots, lessee: &str) -> Attempt {
    let slot = slots.free.pop().expect("caller checked a free slot");
    let generation = slots.generations[slot as usize] + 1;
    slots.generations[slot as usize] = generation;
    slots.uses[slot as usize] = SlotUse::Writing(Arc::from(lessee));
    // From now on a consumer still holding the previous generation is refused by `map`.
    slots
        .segment
        .generation(slot)
        .store(generation, Ordering::Release);
    Attempt::Got(slots.segment.clone(), slot, generation)
}

/// The producer's pool of shared-memory slots. Cheap to clone (one `Arc`); `Send + Sync`.
/// Segment files are unlinked when the last clone and the last [`SlotWriter`] are dropped.
#[derive(Clone)]
pub struct SlotPool {
    inner: Arc<PoolInner>,
}

/// A snapshot of a pool's occupancy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Segment files mapped.
    pub segments: usize,
    /// Slots in all segments.
    pub slots: usize,
    /// Slots being written or leased to a consumer.
    pub leased: usize,
    /// Bytes mapped by all segments (headers included).
    pub mapped_bytes: u64,
    /// The budget for `mapped_bytes`.
    pub max_mapped_bytes: u64,
}

/// A committed slot: what the consumer needs to map it and what its release names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    /// Segment file name in the pool's directory.
    pub segment: String,
    pub slot: u32,
    /// The slot's generation at this alloc; the release must name it.
    pub generation: u64,
    /// Bytes written (the consumer maps exactly these).
    pub len: usize,
}

impl SlotPool {
    /// A pool whose segments are files `<dir>/<prefix>-<n>` of `slots_per_segment` slots each.
    /// `prefix` starts with `vidmesh-` and names this producer instance uniquely (include its
    /// epoch); `dir` is normally `/dev/shm`. No file is created until the first alloc.
    pub fn new(dir: &Path, prefix: &str, slots_per_segment: u32) -> Result<Self, ShmError> {
        check_name(prefix, MAX_PREFIX_LEN)?;
        if !(1..=MAX_SLOTS_PER_SEGMENT).contains(&slots_per_segment) {
            return Err(ShmError::InvalidSetting(format!(
                "{slots_per_segment} slots per segment, expected 1 to {MAX_SLOTS_PER_SEGMENT}"
            )));
        }
        if !dir.is_dir() {
            return Err(ShmError::InvalidSetting(format!(
                "segment directory {} does not exist",
                dir.display()
            )));
        }
        Ok(Self {
            inner: Arc::new(PoolInner {
                dir: dir.to_owned(),
                prefix: prefix.to_owned(),
                slots_per_segment,
                state: Mutex::new(PoolState {
                    segments: Vec::new(),
                    mapped_bytes: 0,
                    max_mapped_bytes: DEFAULT_MAX_MAPPED_BYTES,
                    max_slots: slots_per_segment,
                    next_segment: 0,
                }),
                slot_freed: Condvar::new(),
            }),
        })
    }

    /// Bounds the bytes mapped by all segments together (default 1 GiB). Segments already
    /// mapped stay; the bound applies to the next one created.
    pub fn set_max_mapped_bytes(&self, max: u64) {
        self.inner.lock().max_mapped_bytes = max;
        self.inner.slot_freed.notify_all();
    }

    /// Lets frames of one size hold up to `max` slots, in segments of `slots_per_segment`
    /// mapped as they are needed (default: one segment). A producer sets it to the frames it
    /// may have in flight, so that its flow control, not the pool, bounds how many frames
    /// wait downstream; the byte budget still bounds what is mapped.
    pub fn set_max_slots(&self, max: u32) {
        self.inner.lock().max_slots = max.max(self.inner.slots_per_segment);
        self.inner.slot_freed.notify_all();
    }

    /// The prefix of this pool's segment names.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// A writable slot of exactly `len` bytes, leased to `lessee` (an opaque consumer id).
    ///
    /// Uses the smallest free slot that fits. When slots that fit exist but are all leased, waits
    /// up to `timeout` for a release (backpressure), then fails with [`ShmError::Exhausted`].
    /// When none fits, maps a new segment with slots of `len` rounded up to 4 KiB, first
    /// retiring idle smaller segments if the byte budget requires it.
    pub fn alloc(
        &self,
        len: usize,
        lessee: &str,
        timeout: Duration,
    ) -> Result<SlotWriter, ShmError> {
        let inner = &self.inner;
        let slot_size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| inner.over_budget(&inner.lock(), u64::MAX))?;
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let mut state = inner.lock();
        loop {
            let waiting_for = match inner.try_alloc(&mut state, slot_size, lessee)? {
                Attempt::Got(segment, slot, generation) => {
                    return Ok(SlotWriter {
                        pool: inner.clone(),
                        segment,
                        slot,
                        generation,
                        len,
                        committed: false,
                    })
                }
                Attempt::AllLeased => None,
                Attempt::OverBudget(needed) => Some(needed),
            };
            let now = Instant::now();
            let remaining = deadline.map(|d| d.saturating_duration_since(now));
            if remaining == Some(Duration::ZERO) {
                return Err(match waiting_for {
                    Some(needed) => inner.over_budget(&state, needed),
                    None => inner.exhausted(&state, len, slot_size, now - start),
                });
            }
            state = match remaining {
                Some(remaining) => {
                    inner
                        .slot_freed
                        .wait_timeout(state, remaining)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => inner
                    .slot_freed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Allocates a slot for `data`, copies it in and commits.
    pub fn write(
        &self,
        data: &[u8],
        lessee: &str,
        timeout: Duration,
    ) -> Result<SlotLease, ShmError> {
        let mut writer = self.alloc(data.len(), lessee, timeout)?;
        writer.copy_from_slice(data);
        Ok(writer.commit())
    }

    /// The consumer released a slot. Returns whether that freed it: a repeated release, a wrong
    /// generation, an unknown segment or a slot not yet committed is ignored (releases come from
    /// other processes and may be late or duplicated).
    pub fn release(&self, segment: &str, slot: u32, generation: u64) -> bool {
        self.inner.free_if(segment, slot, generation, |u| {
            matches!(u, SlotUse::Leased(_))
        })
    }

    /// The consumer `lessee` died or restarted: every committed slot leased to it is free again.
    /// Slots still being written are left to their writers. Returns how many were freed.
    pub fn reclaim(&self, lessee: &str) -> usize {
        let mut state = self.inner.lock();
        let mut freed = 0;
        for slots in &mut state.segments {
            for slot in 0..slots.uses.len() as u32 {
                if matches!(&slots.uses[slot as usize], SlotUse::Leased(l) if &**l == lessee) {
                    slots.set_free(slot);
                    freed += 1;
                }
            }
        }
        drop(state);
        if freed > 0 {
            self.inner.slot_freed.notify_all();
        }
        freed
    }

    /// Segments, slots and bytes mapped now.
    pub fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        let slots = state.segments.iter().map(|s| s.uses.len()).sum::<usize>();
        let free = state.segments.iter().map(|s| s.free.len()).sum::<usize>();
        PoolStats {
            segments: state.segments.len(),
            slots,
            leased: slots - free,
            mapped_bytes: state.mapped_bytes,
            max_mapped_bytes: state.max_mapped_bytes,
        }
    }
}

impl fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPool")
            .field("prefix", &self.inner.prefix)
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// A slot being written: derefs to exactly the `len` bytes asked for. [`SlotWriter::commit`]
/// hands it to the consumer; dropping it uncommitted frees the slot.
pub struct SlotWriter {
    pool: Arc<PoolInner>,
    segment: Arc<Segment>,
    slot: u32,
    generation: u64,
    len: usize,
    committed: bool,
}

impl SlotWriter {
    /// Publishes the written bytes and leases the slot to its lessee until released.
    pub fn commit(mut self) -> SlotLease {
        let mut state = self.pool.lock();
        if let Some(slots) = state
            .segments
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.segment, &self.segment))
        {
            let slot_use = &mut slots.uses[self.slot as usize];
            if let SlotUse::Writing(lessee) = slot_use {
                *slot_use = SlotUse::Leased(lessee.clone());
            }
        }
        drop(state);
        // Release-store pairs with the consumer's Acquire load in `map`: the data written
        // above is visible to whoever reads this generation.
        self.segment
            .generation(self.slot)
            .store(self.generation, Ordering::Release);
        self.committed = true;
        SlotLease {
            segment: self.segment.name.clone(),
            slot: self.slot,
            generation: self.generation,
            len: self.len,
        }
    }
}

impl Deref for SlotWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= slot_size`, and this writer is the slot's only user until commit.
        unsafe { std::slice::from_raw_parts(self.segment.slot_ptr(self.slot), self.len) }
    }
}

impl DerefMut for SlotWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive in this process too.
        unsafe { std::slice::from_raw_parts_mut(self.segment.slot_ptr(self.slot), self.len) }
    }
}

impl Drop for SlotWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.pool
                .free_if(&self.segment.name, self.slot, self.generation, |u| {
                    matches!(u, SlotUse::Writing(_))
                });
        }
    }
}

impl fmt::Debug for SlotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotWriter")
            .field("segment", &self.segment.name)
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("len", &self.len)
            .finish()
    }
}

/// Removes the segment files in `dir` whose names start with `prefix` (a valid pool prefix, or
/// the start of one), such as those of a producer that was killed before it could unlink them.
/// Returns how many were removed. Consumers still mapping them keep their pages.
pub fn remove_stale_segments(dir: &Path, prefix: &str) -> io::Result<usize> {
    check_name(prefix, MAX_PREFIX_LEN)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) || check_name(name, MAX_NAME_LEN).is_err() {
            continue;
        }
        if !entry.file_type()?.is_file() {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Consumer side
// ---------------------------------------------------------------------------------------------

/// One segment mapped read-only by a consumer, its header checked.
struct SegmentView {
    path: PathBuf,
    map: Mmap,
    slot_size: usize,
    slot_count: u32,
    data_offset: usize,
}

impl SegmentView {
    fn open(dir: &Path, name: &str) -> Result<Self, ShmError> {
        let path = dir.join(name);
        let bad = |reason: String| ShmError::BadSegment {
            segment: name.to_owned(),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| ShmError::Io {
                segment: name.to_owned(),
                action: "open",
                path: path.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| ShmError::Io {
            segment: name.to_owned(),
            action: "stat",
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid {
            return Err(bad(format!(
                "owned by uid {}, not by us ({uid})",
                meta.uid()
            )));
        }
        let file_len = meta.len();
        if file_len < (FIXED_HEADER_WORDS * 8) as u64 {
            return Err(bad(format!("{file_len} bytes, shorter than a header")));
        }
        let map = map_read_only(&file).map_err(|source| ShmError::Io {
            segment: name.to_owned(),
            action: "map",
            path: path.clone(),
            source,
        })?;
        if map.len() < FIXED_HEADER_WORDS * 8 {
            return Err(bad(format!("{} bytes, shorter than a header", map.len())));
        }
        // SAFETY: the mapping is page-aligned and holds the fixed header (checked above).
        let word = |i| unsafe { header_word(map.as_ptr(), i) };
        let magic = word(0).load(Ordering::Acquire).to_ne_bytes();
        if magic != MAGIC {
            return Err(bad(format!("magic {magic:02x?}, expected `VMSHSLOT`")));
        }
        let version = word(1).load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(bad(format!(
                "layout version {version}, expected {LAYOUT_VERSION}"
            )));
        }
        let slot_size = word(2).load(Ordering::Relaxed);
        if slot_size == 0 || slot_size % 64 != 0 {
            return Err(bad(format!(
                "slot size {slot_size} is not a positive multiple of 64"
            )));
        }
        let slot_count = word(3).load(Ordering::Relaxed);
        if !(1..=u64::from(MAX_SLOTS_PER_SEGMENT)).contains(&slot_count) {
            return Err(bad(format!(
                "slot count {slot_count}, expected 1 to {MAX_SLOTS_PER_SEGMENT}"
            )));
        }
        let slot_count = slot_count as u32;
        let offset = word(4).load(Ordering::Relaxed);
        let expected_offset = data_offset(slot_count);
        if offset != expected_offset as u64 {
            return Err(bad(format!(
                "slot data at offset {offset}, expected {expected_offset} for {slot_count} slots"
            )));
        }
        let needed = slot_size
            .checked_mul(u64::from(slot_count))
            .and_then(|n| n.checked_add(offset));
        match needed {
            Some(needed) if needed <= map.len() as u64 => {}
            _ => {
                return Err(bad(format!(
                    "{} bytes, too short for {slot_count} slots of {slot_size} bytes",
                    map.len()
                )))
            }
        }
        Ok(SegmentView {
            path,
            map,
            slot_size: slot_size as usize,
            slot_count,
            data_offset: expected_offset,
        })
    }

    fn generation(&self, slot: u32) -> u64 {
        debug_assert!(slot < self.slot_count);
        // SAFETY: `open` checked that the header holds `slot_count` generations.
        unsafe { header_word(self.map.as_ptr(), FIXED_HEADER_WORDS + slot as usize) }
            .load(Ordering::Acquire)
    }
}

fn map_read_only(file: &File) -> io::Result<Mmap> {
    // SAFETY: the producer never truncates a segment while it exists, and writes a slot only
    // while it is not leased, i.e. not while a consumer reads it.
    unsafe { Mmap::map(file) }
}

type ReleaseKey = (String, u32, u64);

/// Shared by a mapper and its outstanding slots: the callback and the live mappings.
struct ReleaseTable {
    on_release: Box<dyn Fn(SlotRelease) + Send + Sync>,
    live: Mutex<HashMap<ReleaseKey, Weak<ReleaseGuard>>>,
}

/// Calls the release callback when the last `Bytes` of one slot reference is dropped.
struct ReleaseGuard {
    table: Arc<ReleaseTable>,
    key: ReleaseKey,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        {
            let mut live = self
                .table
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // The entry may already belong to a newer mapping of the same reference.
            if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                live.remove(&self.key);
            }
        }
        let (segment, slot, generation) = std::mem::take(&mut self.key);
        (self.table.on_release)(SlotRelease {
            segment,
            slot,
            generation,
        });
    }
}

/// The owner behind a mapped slot's `Bytes`.
struct MappedSlot {
    view: Arc<SegmentView>,
    offset: usize,
    len: usize,
    // Last, so that the release goes out after everything else of this slot is dropped.
    _guard: Arc<ReleaseGuard>,
}

impl AsRef<[u8]> for MappedSlot {
    fn as_ref(&self) -> &[u8] {
        &self.view.map[self.offset..self.offset + self.len]
    }
}

/// The consumer side: maps slots that a producer's [`SlotPool`] leased to us.
pub struct SlotMapper {
    dir: PathBuf,
    segments: HashMap<String, Arc<SegmentView>>,
    releases: Arc<ReleaseTable>,
}

impl SlotMapper {
    /// A mapper of segments in `dir`. `on_release` is called, from whichever thread drops the
    /// last `Bytes` clone, once per mapped slot reference.
    pub fn new(dir: &Path, on_release: impl Fn(SlotRelease) + Send + Sync + 'static) -> Self {
        Self {
            dir: dir.to_owned(),
            segments: HashMap::new(),
            releases: Arc::new(ReleaseTable {
                on_release: Box::new(on_release),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// `len` bytes of a slot, pointing straight into the shared memory. Everything is checked,
    /// since the reference comes from another process: the segment name, its file and header,
    /// the slot number, the length, and that the slot is still at `generation`.
    ///
    /// Mapping a reference again while its `Bytes` are alive shares their release: the callback
    /// runs once, after the last of them is dropped.
    pub fn map(
        &mut self,
        segment: &str,
        slot: u32,
        generation: u64,
        len: usize,
    ) -> Result<Bytes, ShmError> {
        check_name(segment, MAX_NAME_LEN)?;
        let view = match self.segments.get(segment) {
            Some(view) => view.clone(),
            None => {
                // A new segment is rare: the time to drop those the producer has unlinked.
                self.segments.retain(|_, v| v.path.exists());
                let view = Arc::new(SegmentView::open(&self.dir, segment)?);
                self.segments.insert(segment.to_owned(), view.clone());
                view
            }
        };
        if slot >= view.slot_count {
            return Err(ShmError::SlotOutOfRange {
                segment: segment.to_owned(),
                slot,
                count: view.slot_count,
            });
        }
        if len > view.slot_size {
            return Err(ShmError::TooLong {
                segment: segment.to_owned(),
                len,
                slot_size: view.slot_size,
            });
        }
        let current = view.generation(slot);
        // Generation 0 is a slot never allocated: no valid reference names it.
        if generation == 0 || current != generation {
            return Err(ShmError::StaleGeneration {
                segment: segment.to_owned(),
                slot,
                generation,
                current,
            });
        }
        let guard = {
            let key = (segment.to_owned(), slot, generation);
            let mut live = self
                .releases
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match live.get(&key).and_then(Weak::upgrade) {
                Some(guard) => guard,
                None => {
                    let guard = Arc::new(ReleaseGuard {
                        table: self.releases.clone(),
                        key: key.clone(),
                    });
                    live.insert(key, Arc::downgrade(&guard));
                    guard
                }
            }
        };
        let offset = view.data_offset + slot as usize * view.slot_size;
        Ok(Bytes::from_owner(MappedSlot {
            view,
            offset,
            len,
            _guard: guard,
        }))
    }

    /// Drops the cached mappings of segments whose names start with `prefix` (their producer
    /// restarted). Slots still held as `Bytes` stay valid until dropped.
    pub fn forget(&mut self, prefix: &str) {
        self.segments.retain(|name, _| !name.starts_with(prefix));
    }

    /// How many segments are mapped and cached now.
    pub fn mapped_segments(&self) -> usize {
        self.segments.len()
    }
}

impl fmt::Debug for SlotMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMapper")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set (to `dir|segment|slot|generation|len`) when this test binary runs as the child of
    /// `another_process_maps_the_slot_the_parent_wrote`.
    const CHILD_ENV: &str = "VIDMESH_SHM_TEST_CHILD";
    const FOREVER: Duration = Duration::from_secs(3600);

    type Released = Arc<Mutex<Vec<SlotRelease>>>;

    fn mapper(dir: &Path) -> (SlotMapper, Released) {
        let released = Released::default();
        let sink = released.clone();
        let mapper = SlotMapper::new(dir, move |r| sink.lock().unwrap().push(r));
        (mapper, released)
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
            .collect()
    }

    fn checksum(data: &[u8]) -> u64 {
        // FNV-1a.
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    fn pool(dir: &Path, slots: u32) -> SlotPool {
        SlotPool::new(dir, "vidmesh-test-0-abc", slots).unwrap()
    }

    #[test]
    fn handles_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SlotPool>();
        send_sync::<SlotWriter>();
        send_sync::<SlotMapper>();
    }

    #[test]
    fn written_frame_maps_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 4);
        let data = frame(10_000, 7);
        let lease = pool.write(&data, "consumer", FOREVER).unwrap();
        assert_eq!(lease.segment, "vidmesh-test-0-abc-0");
        assert_eq!(lease.len, data.len());
        let (mut mapper, _) = mapper(dir.path());
        let bytes = mapper
            .map(&lease.segment, lease.slot, lease.generation, lease.len)
            .unwrap();
        assert_eq!(&bytes[..], &data[..]);

        let path = dir.path().join(&lease.segment);
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stats = pool.stats();
        assert_eq!((stats.segments, stats.slots, stats.leased), (1, 4, 1));
        assert_eq!(stats.mapped_bytes, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_pool_allowed_more_slots_grows_by_segments_then_waits() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        pool.set_max_slots(4);
        let leases: Vec<SlotLease> = (0..4)
            .map(|i| pool.write(&[i; 100], "mux/0", Duration::ZERO).unwrap())
            .collect();
        let stats = pool.stats();
        assert_eq!((stats.segments, stats.slots, stats.leased), (2, 4, 4));
        let err = pool.alloc(100, "mux/0", Duration::ZERO).unwrap_err();
        assert!(matches!(err, ShmError::Exhausted { slots: 4, .. }), "{err}");
        assert!(pool.release(&leases[3].segment, leases[3].slot, leases[3].generation));
        pool.write(&[9; 100], "mux/0", Duration::ZERO).unwrap();
        assert_eq!(pool.stats().segments, 2);
    }

    #[test]
    fn full_pool_times_out_with_exhausted_until_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let a = pool.write(&[1; 100], "detect/0", FOREVER).unwrap();
        let _b = pool.write(&[2; 100], "track/0", FOREVER).unwrap();
        let err = pool.alloc(100, "detect/0", Duration::ZERO).unwrap_err();
        assert!(matches!(err, ShmError::Exhausted { slots: 2, .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("vidmesh-test-0-abc"), "{message}");
        assert!(message.contains("1 to `detect/0`"), "{message}");
        assert!(message.contains("1 to `track/0`"), "{message}");

        assert!(pool.release(&a.segment, a.slot, a.generation));
        let c = pool.write(&[3; 100], "detect/0", Duration::ZERO).unwrap();
        assert_eq!(c.slot, a.slot);
        assert_eq!(c.generation, a.generation + 1);
        assert_eq!(pool.stats().segments, 1);
    }

    #[test]
    fn waiting_alloc_wakes_up_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 1);
        let a = pool.write(&[1; 10], "c", FOREVER).unwrap();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.write(&[2; 10], "c", FOREVER))
        };
        assert!(pool.release(&a.segment, a.slot, a.generation));
        let b = waiter.join().unwrap().unwrap();
        assert_eq!((b.slot, b.generation), (a.slot, a.generation + 1));
    }

    #[test]
    fn release_ignores_repeats_and_unknown_references() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let a = pool.write(&[1; 10], "c", FOREVER).unwrap();
        assert!(!pool.release(&a.segment, a.slot, a.generation + 1));
        assert!(!pool.release("vidmesh-other-0", a.slot, a.generation));
        assert!(!pool.release(&a.segment, 99, a.generation));
        assert!(pool.release(&a.segment, a.slot, a.generation));
        assert!(!pool.release(&a.segment, a.slot, a.generation));
        assert_eq!(pool.stats().leased, 0);

        // A slot still being written cannot be released by a consumer.
        let w = pool.alloc(10, "c", FOREVER).unwrap();
        assert!(!pool.release(&w.segment.name, w.slot, w.generation));
        drop(w);
        assert_eq!(
            pool.stats().leased,
            0,
            "an uncommitted writer frees its slot"
        );
    }

    #[test]
    fn last_bytes_clone_dropped_releases_once() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let lease = pool.write(&frame(5000, 1), "c", FOREVER).unwrap();
        let (mut mapper, released) = mapper(dir.path());
        let bytes = mapper
            .map(&lease.segment, lease.slot, lease.generation, lease.len)
            .unwrap();
        let clone = bytes.clone();
        let slice = bytes.slice(10..20);
        // The same reference mapped twice (a re-sent delivery) shares the release.
        let again = mapper
            .map(&lease.segment, lease.slot, lease.generation, lease.len)
            .unwrap();
        let from_thread = std::thread::spawn(move || drop(clone));
        from_thread.join().unwrap();
        drop(bytes);
        drop(again);
        assert!(released.lock().unwrap().is_empty());
        drop(slice);
        let released = released.lock().unwrap().clone();
        assert_eq!(
            released,
            vec![SlotRelease {
                segment: lease.segment.clone(),
                slot: lease.slot,
                generation: lease.generation,
            }]
        );
        let r = &released[0];
        assert!(pool.release(&r.segment, r.slot, r.generation));
    }

    #[test]
    fn stale_generation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 1);
        let old = pool.write(&[1; 64], "c", FOREVER).unwrap();
        assert!(pool.release(&old.segment, old.slot, old.generation));
        let new = pool.write(&[2; 64], "c", FOREVER).unwrap();
        let (mut mapper, _) = mapper(dir.path());
        let err = mapper
            .map(&old.segment, old.slot, old.generation, old.len)
            .unwrap_err();
        assert!(
            matches!(err, ShmError::StaleGeneration { generation, current, .. }
                if generation == old.generation && current == new.generation),
            "{err}"
        );
        assert!(err.to_string().contains(&old.segment));
        let err = mapper.map(&new.segment, new.slot, 0, new.len).unwrap_err();
        assert!(matches!(err, ShmError::StaleGeneration { .. }), "{err}");
        let bytes = mapper
            .map(&new.segment, new.slot, new.generation, new.len)
            .unwrap();
        assert_eq!(&bytes[..], &[2; 64]);
    }

    #[test]
    fn malformed_references_are_refused_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let lease = pool.write(&[1; 100], "c", FOREVER).unwrap();
        let (mut mapper, _) = mapper(dir.path());
        for name in [
            "../x",
            "vidmesh-a/b",
            "",
            "x-vidmesh-a",
            "vidmesh-a b",
            "vidmesh-é",
        ] {
            let err = mapper.map(name, 0, 1, 1).unwrap_err();
            assert!(matches!(err, ShmError::InvalidName { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let long = format!("vidmesh-{}", "a".repeat(300));
        assert!(matches!(
            mapper.map(&long, 0, 1, 1),
            Err(ShmError::InvalidName { .. })
        ));

        let err = mapper.map("vidmesh-missing", 0, 1, 1).unwrap_err();
        assert!(matches!(err, ShmError::Io { action: "open", .. }), "{err}");
        assert!(err.to_string().contains("vidmesh-missing"), "{err}");

        let err = mapper
            .map(&lease.segment, 2, lease.generation, 1)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::SlotOutOfRange {
                    slot: 2,
                    count: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = mapper
            .map(&lease.segment, lease.slot, lease.generation, 4097)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::TooLong {
                    len: 4097,
                    slot_size: 4096,
                    ..
                }
            ),
            "{err}"
        );
        let err = mapper
            .map(&lease.segment, u32::MAX, u64::MAX, usize::MAX)
            .unwrap_err();
        assert!(matches!(err, ShmError::SlotOutOfRange { .. }), "{err}");

        // Files that are not ours, or lie about their size.
        let mut valid = fs::read(dir.path().join(&lease.segment)).unwrap();
        let mut bad_files: Vec<(&str, Vec<u8>, &str)> = vec![
            ("vidmesh-empty", Vec::new(), "shorter than a header"),
            (
                "vidmesh-text",
                b"hello world, not a segment at all".repeat(4),
                "magic",
            ),
        ];
        let mut wrong = valid.clone();
        wrong[8..16].copy_from_slice(&7u64.to_ne_bytes());
        bad_files.push(("vidmesh-version", wrong, "layout version 7"));
        let mut wrong = valid.clone();
        wrong[16..24].copy_from_slice(&100u64.to_ne_bytes());
        bad_files.push(("vidmesh-slot-size", wrong, "slot size 100"));
        let mut wrong = valid.clone();
        wrong[24..32].copy_from_slice(&u64::MAX.to_ne_bytes());
        bad_files.push(("vidmesh-count", wrong, "slot count"));
        let mut wrong = valid.clone();
        wrong[32..40].copy_from_slice(&8u64.to_ne_bytes());
        bad_files.push(("vidmesh-offset", wrong, "offset 8"));
        valid.truncate(valid.len() - 1);
        bad_files.push(("vidmesh-truncated", valid, "too short for 2 slots"));
        for (name, content, reason) in bad_files {
            fs::write(dir.path().join(name), content).unwrap();
            let err = mapper.map(name, 0, 1, 1).unwrap_err();
            assert!(matches!(err, ShmError::BadSegment { .. }), "{name}: {err}");
            let message = err.to_string();
            assert!(
                message.contains(name) && message.contains(reason),
                "{message}"
            );
        }
        fs::create_dir(dir.path().join("vidmesh-dir")).unwrap();
        assert!(mapper.map("vidmesh-dir", 0, 1, 1).is_err());
        std::os::unix::fs::symlink(
            dir.path().join(&lease.segment),
            dir.path().join("vidmesh-link"),
        )
        .unwrap();
        let err = mapper.map("vidmesh-link", 0, 1, 1).unwrap_err();
        assert!(
            matches!(err, ShmError::Io { .. }),
            "symlinks are not followed: {err}"
        );
        assert_eq!(
            mapper.mapped_segments(),
            1,
            "only the valid segment is cached"
        );
    }

    #[test]
    fn invalid_pool_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for prefix in ["people", "vidmesh-../x", "vidmesh-a/b", ""] {
            assert!(matches!(
                SlotPool::new(dir.path(), prefix, 4),
                Err(ShmError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            SlotPool::new(dir.path(), "vidmesh-a", 0),
            Err(ShmError::InvalidSetting(_))
        ));
        assert!(matches!(
            SlotPool::new(&dir.path().join("nope"), "vidmesh-a", 4),
            Err(ShmError::InvalidSetting(_))
        ));
    }

    #[test]
    fn reclaim_frees_only_that_lessees_slots() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 4);
        let a1 = pool.write(&[1; 10], "a", FOREVER).unwrap();
        let a2 = pool.write(&[1; 10], "a", FOREVER).unwrap();
        let b = pool.write(&[1; 10], "b", FOREVER).unwrap();
        let writing = pool.alloc(10, "a", FOREVER).unwrap();
        assert_eq!(pool.reclaim("a"), 2);
        assert_eq!(pool.reclaim("a"), 0);
        assert_eq!(
            pool.stats().leased,
            2,
            "b's slot and the slot being written"
        );
        assert!(!pool.release(&a1.segment, a1.slot, a1.generation));
        assert!(!pool.release(&a2.segment, a2.slot, a2.generation));
        assert!(pool.release(&b.segment, b.slot, b.generation));
        writing.commit();
        assert_eq!(pool.reclaim("a"), 1);
        assert_eq!(pool.stats().leased, 0);
    }

    #[test]
    fn bigger_frame_gets_a_second_segment_and_small_frames_keep_small_slots() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let small = pool.write(&frame(1000, 1), "c", FOREVER).unwrap();
        let big = pool.write(&frame(100_000, 2), "c", FOREVER).unwrap();
        assert_ne!(small.segment, big.segment);
        assert_eq!(pool.stats().segments, 2);
        let small2 = pool.write(&frame(1000, 3), "c", FOREVER).unwrap();
        assert_eq!(small2.segment, small.segment, "smallest fitting slot first");
        // Small slots all leased: a small frame may use a free big slot.
        let small3 = pool.write(&frame(1000, 4), "c", FOREVER).unwrap();
        assert_eq!(small3.segment, big.segment);

        let (mut mapper, _) = mapper(dir.path());
        let bytes = mapper
            .map(&big.segment, big.slot, big.generation, big.len)
            .unwrap();
        assert_eq!(&bytes[..], &frame(100_000, 2)[..]);
        assert_eq!(pool.stats().segments, 2);
    }

    #[test]
    fn byte_budget_retires_idle_segments_and_refuses_what_never_fits() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 1);
        // One 4 KiB header page plus one slot per segment.
        pool.set_max_mapped_bytes(3 * 4096);
        let err = pool.alloc(3 * 4096, "c", FOREVER).unwrap_err();
        assert!(matches!(err, ShmError::OverBudget { .. }), "{err}");

        let small = pool.write(&[1; 10], "c", FOREVER).unwrap();
        // The small segment is leased: a bigger one cannot be mapped beside it.
        let err = pool.alloc(4097, "c", Duration::ZERO).unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::OverBudget {
                    needed: 12288,
                    mapped: 8192,
                    ..
                }
            ),
            "{err}"
        );
        assert!(pool.release(&small.segment, small.slot, small.generation));
        let big = pool.write(&[2; 4097], "c", Duration::ZERO).unwrap();
        assert!(
            !dir.path().join(&small.segment).exists(),
            "idle segment retired"
        );
        let stats = pool.stats();
        assert_eq!((stats.segments, stats.mapped_bytes), (1, 3 * 4096));
        assert!(dir.path().join(&big.segment).exists());
    }

    #[test]
    fn dropped_pool_unlinks_its_files_but_mapped_bytes_stay_valid() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let data = frame(20_000, 9);
        let lease = pool.write(&data, "c", FOREVER).unwrap();
        let (mut mapper, released) = mapper(dir.path());
        let bytes = mapper
            .map(&lease.segment, lease.slot, lease.generation, lease.len)
            .unwrap();
        drop(pool);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(&bytes[..], &data[..]);
        mapper.forget("vidmesh-test-0-");
        assert_eq!(mapper.mapped_segments(), 0);
        assert_eq!(&bytes[..], &data[..]);
        drop(bytes);
        assert_eq!(released.lock().unwrap().len(), 1);
    }

    #[test]
    fn mapper_drops_cached_segments_that_were_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut mapper, _) = mapper(dir.path());
        let first = SlotPool::new(dir.path(), "vidmesh-p-1", 1).unwrap();
        let a = first.write(&[1; 10], "c", FOREVER).unwrap();
        drop(mapper.map(&a.segment, a.slot, a.generation, a.len).unwrap());
        drop(first);
        let second = SlotPool::new(dir.path(), "vidmesh-p-2", 1).unwrap();
        let b = second.write(&[2; 10], "c", FOREVER).unwrap();
        drop(mapper.map(&b.segment, b.slot, b.generation, b.len).unwrap());
        assert_eq!(mapper.mapped_segments(), 1);
    }

    #[test]
    fn remove_stale_segments_removes_only_that_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["vidmesh-a-1-0", "vidmesh-a-1-1", "vidmesh-b-1-0", "other"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        fs::create_dir(dir.path().join("vidmesh-a-1-dir")).unwrap();
        assert_eq!(
            remove_stale_segments(dir.path(), "vidmesh-a-1-").unwrap(),
            2
        );
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["other", "vidmesh-a-1-dir", "vidmesh-b-1-0"]);
        assert!(remove_stale_segments(dir.path(), "../").is_err());
    }

    #[test]
    fn another_process_maps_the_slot_the_parent_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 2);
        let data = frame(1920 * 1080 * 3, 42);
        let lease = pool.write(&data, "child", FOREVER).unwrap();
        let spec = format!(
            "{}|{}|{}|{}|{}",
            dir.path().display(),
            lease.segment,
            lease.slot,
            lease.generation,
            lease.len
        );
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "shm::tests::child_maps_the_slot_named_in_its_environment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        let value = |key: &str| {
            stdout
                .lines()
                // libtest prints the test name on the same line as the first output.
                .find_map(|l| l.split_once(key).map(|(_, v)| v))
                .unwrap_or_else(|| panic!("no `{key}` in child output: {stdout}"))
                .to_owned()
        };
        assert_eq!(value("checksum="), format!("{:016x}", checksum(&data)));
        let released = value("released=");
        let mut parts = released.split(' ');
        let (segment, slot, generation) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().parse().unwrap(),
        );
        assert_eq!((slot, generation), (lease.slot, lease.generation));
        assert!(pool.release(segment, slot, generation));
    }

    /// The child half of `another_process_maps_the_slot_the_parent_wrote`; does nothing in a
    /// normal test run.
    #[test]
    fn child_maps_the_slot_named_in_its_environment() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let parts: Vec<&str> = spec.split('|').collect();
        let [dir, segment, slot, generation, len] = parts[..] else {
            panic!("bad {CHILD_ENV}: {spec}");
        };
        let mut mapper = SlotMapper::new(Path::new(dir), |r| {
            println!("released={} {} {}", r.segment, r.slot, r.generation)
        });
        let bytes = mapper
            .map(
                segment,
                slot.parse().unwrap(),
                generation.parse().unwrap(),
                len.parse().unwrap(),
            )
            .unwrap();
        println!("checksum={:016x}", checksum(&bytes));
        drop(bytes);
    }
}
