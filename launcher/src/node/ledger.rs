//! Which frames a stage process has seen, processed and finished, and which deliveries it may
//! therefore acknowledge upstream.
//!
//! A frame (source id, frame number) is *done* here when the stage processed it and every
//! delivery that carried it downstream was acknowledged — or, for a sink, as soon as it was
//! processed. A stateful stage adds one condition: a snapshot taken after the frame must be
//! committed first, so that a restarted replica resumes from a state that already contains
//! every frame it acknowledged, and re-processes (deterministically) everything after it.
//! A delivery is acknowledged when all its frames are done; duplicates (re-sends) attach to
//! the frame already in progress, or are acknowledged at once when it is done.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vidmesh_transport::net::{DeliveryTag, FrameKey, END_OF_STREAM};

/// How far behind the newest frame a gap in a [`FrameSet`] is remembered.
const HORIZON: u64 = 4096;

/// Frame numbers of one source: everything below `below`, plus `above`.
#[derive(Debug, Clone, Default)]
pub struct FrameSet {
    below: u64,
    above: BTreeSet<u64>,
    /// The end-of-stream notice (frame number `END_OF_STREAM`), kept apart from the numbers.
    ended: bool,
}

impl FrameSet {
    pub fn starting_at(below: u64) -> Self {
        Self {
            below,
            above: BTreeSet::new(),
            ended: false,
        }
    }

    pub fn contains(&self, n: u64) -> bool {
        if n == END_OF_STREAM {
            return self.ended;
        }
        n < self.below || self.above.contains(&n)
    }

    pub fn insert(&mut self, n: u64) {
        if n == END_OF_STREAM {
            self.ended = true;
            return;
        }
        if n < self.below {
            return;
        }
        self.above.insert(n);
        while self.above.remove(&self.below) {
            self.below += 1;
        }
        // A load-balanced replica sees every other frame or so, so its gaps never close;
        // frames this far behind the newest can no longer be re-sent (re-sends come from
        // windows of a few dozen), so the gaps below are forgotten to keep memory bounded.
        if let Some(&newest) = self.above.last() {
            if self.above.len() > HORIZON as usize {
                self.below = newest - HORIZON;
                self.above = self.above.split_off(&self.below);
            }
        }
    }

    /// Every frame number below this is in the set.
    pub fn contiguous(&self) -> u64 {
        self.below
    }

    pub fn len_above(&self) -> usize {
        self.above.len()
    }
}

#[derive(Debug, Default)]
struct FrameState {
    processed: bool,
    emitted: bool,
    outstanding: u32,
    /// Processing order, for snapshot commits.
    order: Option<u64>,
    waiting: Vec<DeliveryTag>,
}

/// A snapshot waiting until everything processed before it is done downstream.
struct Candidate {
    upto: u64,
    snapshot: Vec<u8>,
}

/// What a stateful stage must persist before its frames count as done.
pub struct Commit {
    pub upto: u64,
    pub snapshot: Vec<u8>,
    /// Per source: every frame below this number is done once the commit is persisted.
    pub frontier: Vec<(u32, u64)>,
}

/// See the module documentation.
pub struct Ledger {
    sink: bool,
    stateful: bool,
    done: HashMap<u32, FrameSet>,
    seen: HashMap<u32, FrameSet>,
    frames: HashMap<FrameKey, FrameState>,
    tags: HashMap<DeliveryTag, usize>,
    ready: Vec<DeliveryTag>,
    next_order: u64,
    /// Orders of processed frames not yet done downstream.
    open: BTreeSet<u64>,
    /// Done downstream, waiting for a snapshot commit: order → key.
    uncommitted: BTreeMap<u64, FrameKey>,
    candidates: Vec<Candidate>,
    pub duplicates: u64,
}

impl Ledger {
    /// `frontier`: per source, frames below it were done by an earlier instance.
    pub fn new(sink: bool, stateful: bool, frontier: &[(u32, u64)]) -> Self {
        let done: HashMap<u32, FrameSet> = frontier
            .iter()
            .map(|(s, n)| (*s, FrameSet::starting_at(*n)))
            .collect();
        Self {
            sink,
            stateful,
            seen: done.clone(),
            done,
            frames: HashMap::new(),
            tags: HashMap::new(),
            ready: Vec::new(),
            next_order: 0,
            open: BTreeSet::new(),
            uncommitted: BTreeMap::new(),
            candidates: Vec::new(),
            duplicates: 0,
        }
    }

    fn is_done(&self, (source, frame): FrameKey) -> bool {
        self.done.get(&source).is_some_and(|s| s.contains(frame))
    }

    /// Registers a delivery; returns the keys that are new (to be processed). Keys seen
    /// before are duplicates: the delivery is acknowledged with the original.
    pub fn admit(&mut self, tag: DeliveryTag, keys: &[FrameKey]) -> Vec<FrameKey> {
        let mut fresh = Vec::new();
        let mut waiting = 0;
        for &key in keys {
            if self.is_done(key) {
                self.duplicates += 1;
                continue;
            }
            waiting += 1;
            let state = self.frames.entry(key).or_default();
            if state.waiting.is_empty() && !state.processed && state.order.is_none() {
                fresh.push(key);
                self.seen.entry(key.0).or_default().insert(key.1);
            } else {
                self.duplicates += 1;
            }
            state.waiting.push(tag.clone());
        }
        if waiting == 0 {
            self.ready.push(tag);
        } else {
            *self.tags.entry(tag).or_insert(0) += waiting;
        }
        fresh
    }

    /// Frames of `source` below `frontier` were done by a replica this one takes over from.
    pub fn adopt_frontier(&mut self, source: u32, frontier: u64) {
        for set in [&mut self.done, &mut self.seen] {
            // A source arrives here only once its earlier owner is gone, so this replica
            // has no frames of it yet.
            let entry = set.entry(source).or_default();
            if entry.contiguous() < frontier {
                *entry = FrameSet::starting_at(frontier);
            }
        }
    }

    /// Frames of `source` seen (received once) so far, contiguously from 0.
    pub fn seen_contiguous(&self, source: u32) -> u64 {
        self.seen.get(&source).map_or(0, |s| s.contiguous())
    }

    /// The stage has processed these keys.
    pub fn processed(&mut self, keys: &[FrameKey]) {
        for &key in keys {
            if let Some(state) = self.frames.get_mut(&key) {
                state.processed = true;
                if state.order.is_none() {
                    state.order = Some(self.next_order);
                    self.open.insert(self.next_order);
                    self.next_order += 1;
                }
            }
            self.check(key);
        }
    }

    pub fn emitted(&mut self, keys: &[FrameKey]) {
        for key in keys {
            if let Some(state) = self.frames.get_mut(key) {
                state.emitted = true;
                state.outstanding += 1;
            }
        }
    }

    pub fn acked(&mut self, keys: &[FrameKey]) {
        for &key in keys {
            if let Some(state) = self.frames.get_mut(&key) {
                state.outstanding = state.outstanding.saturating_sub(1);
            }
            self.check(key);
        }
    }

    fn check(&mut self, key: FrameKey) {
        let Some(state) = self.frames.get(&key) else {
            return;
        };
        let downstream_done =
            state.processed && state.outstanding == 0 && (state.emitted || self.sink);
        if !downstream_done {
            return;
        }
        let order = state.order.expect("processed frames have an order");
        if !self.open.remove(&order) {
            return;
        }
        if self.stateful {
            self.uncommitted.insert(order, key);
        } else {
            self.complete(key);
        }
    }

    fn complete(&mut self, key: FrameKey) {
        let Some(state) = self.frames.remove(&key) else {
            return;
        };
        self.done.entry(key.0).or_default().insert(key.1);
        for tag in state.waiting {
            if let Some(left) = self.tags.get_mut(&tag) {
                *left -= 1;
                if *left == 0 {
                    self.tags.remove(&tag);
                    self.ready.push(tag);
                }
            }
        }
    }

    /// A stateful stage's snapshot after everything processed so far.
    pub fn snapshot_taken(&mut self, snapshot: Vec<u8>) {
        if self.next_order == 0 {
            return;
        }
        let upto = self.next_order - 1;
        if let Some(last) = self.candidates.last_mut() {
            if last.upto == upto {
                last.snapshot = snapshot;
                return;
            }
        }
        self.candidates.push(Candidate { upto, snapshot });
    }

    /// The newest snapshot whose frames are all done downstream, if any is new.
    pub fn commit_ready(&mut self) -> Option<Commit> {
        let first_open = self.open.first().copied().unwrap_or(u64::MAX);
        let index = self.candidates.iter().rposition(|c| c.upto < first_open)?;
        let candidate = self.candidates.drain(..=index).next_back()?;
        let mut frontier: HashMap<u32, FrameSet> = self.done.clone();
        for (_, key) in self.uncommitted.range(..=candidate.upto) {
            frontier.entry(key.0).or_default().insert(key.1);
        }
        Some(Commit {
            upto: candidate.upto,
            snapshot: candidate.snapshot,
            frontier: frontier.iter().map(|(s, f)| (*s, f.contiguous())).collect(),
        })
    }

    /// `commit` is persisted: its frames are done.
    pub fn committed(&mut self, commit: &Commit) {
        let keys: Vec<FrameKey> = self
            .uncommitted
            .range(..=commit.upto)
            .map(|(_, k)| *k)
            .collect();
        self.uncommitted = self.uncommitted.split_off(&(commit.upto + 1));
        for key in keys {
            self.complete(key);
        }
    }

    /// Deliveries to acknowledge now.
    pub fn take_ready(&mut self) -> Vec<DeliveryTag> {
        std::mem::take(&mut self.ready)
    }

    /// Per source, frames below this are done (for a stateless stage's restart file).
    pub fn frontier(&self) -> Vec<(u32, u64)> {
        self.done
            .iter()
            .map(|(s, f)| (*s, f.contiguous()))
            .collect()
    }

    /// Frames received but not yet done.
    pub fn in_progress(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidmesh_protocol::Instance;

    fn tag(seq: u64) -> DeliveryTag {
        DeliveryTag {
            producer: Instance {
                stage: "up".into(),
                replica: 0,
                epoch: 1,
            },
            seq,
        }
    }

    #[test]
    fn frame_set_tracks_the_contiguous_prefix() {
        let mut s = FrameSet::default();
        for n in [0, 2, 3, 1, 7] {
            s.insert(n);
        }
        assert_eq!(s.contiguous(), 4);
        assert!(s.contains(7) && !s.contains(5));
        assert_eq!(s.len_above(), 1);
    }

    #[test]
    fn a_frame_set_with_gaps_that_never_close_stays_bounded() {
        let mut s = FrameSet::default();
        for n in (0..100_000).step_by(2) {
            s.insert(n);
        }
        assert!(s.len_above() <= HORIZON as usize);
        assert!(s.contains(99_998) && !s.contains(99_997));
        s.insert(END_OF_STREAM);
        assert!(
            s.contains(END_OF_STREAM) && !s.contains(99_999),
            "the end is not a number"
        );
    }

    #[test]
    fn a_sink_acknowledges_once_processed() {
        let mut l = Ledger::new(true, false, &[]);
        let fresh = l.admit(tag(0), &[(0, 0), (0, 1)]);
        assert_eq!(fresh.len(), 2);
        l.processed(&[(0, 0)]);
        assert!(l.take_ready().is_empty(), "one frame still open");
        l.processed(&[(0, 1)]);
        assert_eq!(l.take_ready(), vec![tag(0)]);
    }

    #[test]
    fn a_stage_acknowledges_when_downstream_acknowledged() {
        let mut l = Ledger::new(false, false, &[]);
        l.admit(tag(0), &[(0, 0)]);
        l.processed(&[(0, 0)]);
        assert!(
            l.take_ready().is_empty(),
            "held by the stage (not emitted yet)"
        );
        l.emitted(&[(0, 0)]);
        l.emitted(&[(0, 0)]); // fan-out to two links
        l.acked(&[(0, 0)]);
        assert!(l.take_ready().is_empty());
        l.acked(&[(0, 0)]);
        assert_eq!(l.take_ready(), vec![tag(0)]);
    }

    #[test]
    fn duplicates_are_not_processed_again_and_acknowledged_with_the_original() {
        let mut l = Ledger::new(true, false, &[]);
        assert_eq!(l.admit(tag(0), &[(0, 0)]), vec![(0, 0)]);
        assert!(l.admit(tag(1), &[(0, 0)]).is_empty(), "in progress");
        l.processed(&[(0, 0)]);
        let mut ready = l.take_ready();
        ready.sort_by_key(|t| t.seq);
        assert_eq!(ready, vec![tag(0), tag(1)]);
        assert!(l.admit(tag(2), &[(0, 0)]).is_empty(), "done");
        assert_eq!(l.take_ready(), vec![tag(2)]);
        assert_eq!(l.duplicates, 2);
    }

    #[test]
    fn a_restored_frontier_counts_as_done_and_seen() {
        let mut l = Ledger::new(false, false, &[(3, 10)]);
        assert!(l.admit(tag(0), &[(3, 9)]).is_empty());
        assert_eq!(l.take_ready(), vec![tag(0)]);
        assert_eq!(l.seen_contiguous(3), 10);
        assert_eq!(l.admit(tag(1), &[(3, 10)]), vec![(3, 10)]);
    }

    #[test]
    fn stateful_frames_wait_for_a_committed_snapshot_covering_them() {
        let mut l = Ledger::new(false, true, &[]);
        l.admit(tag(0), &[(0, 0)]);
        l.processed(&[(0, 0)]);
        l.emitted(&[(0, 0)]);
        l.snapshot_taken(b"after 0".to_vec());
        l.admit(tag(1), &[(0, 1)]);
        l.processed(&[(0, 1)]);
        l.emitted(&[(0, 1)]);
        l.snapshot_taken(b"after 1".to_vec());
        assert!(l.commit_ready().is_none(), "nothing done downstream yet");
        // Frame 1 done downstream first: the snapshot after it also covers frame 0, which is
        // still open, so nothing can commit.
        l.acked(&[(0, 1)]);
        assert!(l.commit_ready().is_none());
        l.acked(&[(0, 0)]);
        let c = l.commit_ready().expect("both done");
        assert_eq!(c.snapshot, b"after 1");
        assert_eq!(c.frontier, vec![(0, 2)]);
        assert!(
            l.take_ready().is_empty(),
            "not before the commit is persisted"
        );
        l.committed(&c);
        let mut ready = l.take_ready();
        ready.sort_by_key(|t| t.seq);
        assert_eq!(ready, vec![tag(0), tag(1)]);
        assert!(l.commit_ready().is_none());
    }
}
