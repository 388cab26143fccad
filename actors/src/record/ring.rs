//! The pre-roll of `record`: the most recent encoded samples of one source, enough to start a
//! clip `pre` before now on a keyframe, and never more than a byte cap.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

/// One encoded access unit (a frame) of H.264 byte-stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSample {
    pub pts_ns: u64,
    pub duration_ns: u64,
    /// The source's frame number of the frame this encodes.
    pub frame_num: u64,
    /// An IDR frame with its SPS/PPS: a decoder can start here.
    pub keyframe: bool,
    pub data: Bytes,
}

/// Samples ordered by pts, always starting on a keyframe.
///
/// Kept: everything from the latest keyframe at or before `newest - pre` on, so a trigger
/// now (or later) finds its pre-roll. Bounded twice: by that duration, and by `max_bytes`,
/// beyond which whole GOPs go from the front (the pre-roll is then shorter than asked).
#[derive(Debug)]
pub struct SampleRing {
    samples: VecDeque<EncodedSample>,
    bytes: usize,
    pre_ns: u64,
    max_bytes: usize,
    /// Samples refused because no keyframe preceded them in the ring, or dropped to stay
    /// under `max_bytes`.
    dropped: u64,
}

impl SampleRing {
    pub fn new(pre: Duration, max_bytes: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            bytes: 0,
            pre_ns: pre.as_nanos().min(u128::from(u64::MAX)) as u64,
            max_bytes,
            dropped: 0,
        }
    }

    /// Adds the newest sample (pts must not go backwards) and evicts what is no longer needed.
    pub fn push(&mut self, sample: EncodedSample) {
        // Without its keyframe a delta frame can never be decoded: not worth keeping.
        if self.samples.is_empty() && !sample.keyframe {
            self.dropped += 1;
            return;
        }
        self.bytes += sample.data.len();
        self.samples.push_back(sample);
        self.evict_old();
        self.evict_over_cap();
    }

    /// Drops whole GOPs from the front while the next GOP still starts at or before the
    /// horizon (`newest - pre`): the pre-roll of any trigger from now on begins at that
    /// keyframe or later.
    fn evict_old(&mut self) {
        let Some(newest) = self.samples.back().map(|s| s.pts_ns) else {
            return;
        };
        let horizon = newest.saturating_sub(self.pre_ns);
        while let Some(next) = self.next_keyframe() {
            if self.samples[next].pts_ns > horizon {
                break;
            }
            self.drop_front(next);
        }
    }

    fn evict_over_cap(&mut self) {
        while self.bytes > self.max_bytes {
            match self.next_keyframe() {
                Some(next) => self.drop_front(next),
                None => {
                    // The GOP in progress alone is over the cap: drop it; recording resumes at
                    // the next keyframe.
                    let n = self.samples.len();
                    self.drop_front(n);
                }
            }
        }
    }

    /// Index of the first keyframe after the front one.
    fn next_keyframe(&self) -> Option<usize> {
        self.samples
            .iter()
            .skip(1)
            .position(|s| s.keyframe)
            .map(|i| i + 1)
    }

    fn drop_front(&mut self, count: usize) {
        for s in self.samples.drain(..count) {
            self.bytes -= s.data.len();
            self.dropped += 1;
        }
    }

    /// The samples a clip triggered to start at `from_pts` begins with: from the latest
    /// keyframe at or before `from_pts` (the earliest one held when none is that early, e.g.
    /// near the start of a stream) to the newest sample.
    pub fn preroll(&self, from_pts: u64) -> impl Iterator<Item = &EncodedSample> {
        let start = self
            .samples
            .iter()
            .rposition(|s| s.keyframe && s.pts_ns <= from_pts)
            .unwrap_or(0);
        self.samples.iter().skip(start)
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples dropped so far (evicted, or refused for lack of a keyframe).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 100_000_000; // 10 fps, in ns

    /// Frame `n` of a stream with a keyframe every `gop` frames, `size` bytes each.
    fn sample(n: u64, gop: u64, size: usize) -> EncodedSample {
        EncodedSample {
            pts_ns: n * FRAME,
            duration_ns: FRAME,
            frame_num: n,
            keyframe: n.is_multiple_of(gop),
            data: Bytes::from(vec![0u8; size]),
        }
    }

    #[test]
    fn preroll_starts_on_the_keyframe_at_or_before_the_trigger_minus_pre() {
        let mut ring = SampleRing::new(Duration::from_secs(1), usize::MAX);
        for n in 0..=47 {
            ring.push(sample(n, 10, 10));
        }
        // Trigger at frame 47 with pre = 1 s: 37 → keyframe 30.
        let first = ring.preroll(47 * FRAME - 10 * FRAME).next().unwrap();
        assert_eq!((first.frame_num, first.keyframe), (30, true));
        assert_eq!(ring.preroll(37 * FRAME).count(), 18);
        // Exactly on a keyframe.
        assert_eq!(ring.preroll(40 * FRAME).next().unwrap().frame_num, 40);
        // A later trigger needs no older sample than what is held.
        ring.push(sample(48, 10, 10));
        assert_eq!(ring.preroll(38 * FRAME).next().unwrap().frame_num, 30);
    }

    #[test]
    fn duration_bound_keeps_one_keyframe_at_or_before_the_horizon() {
        let mut ring = SampleRing::new(Duration::from_secs(1), usize::MAX);
        for n in 0..200 {
            ring.push(sample(n, 10, 10));
            let newest = n * FRAME;
            let horizon = newest.saturating_sub(10 * FRAME);
            let front = ring.preroll(0).next().unwrap();
            assert!(front.keyframe, "the ring starts on a keyframe");
            assert!(front.pts_ns <= horizon, "frame {n}: pre-roll is covered");
            // Never more than pre plus one GOP.
            assert!(
                ring.len() as u64 <= 10 + 10,
                "frame {n}: {} held",
                ring.len()
            );
        }
        assert_eq!(ring.bytes(), ring.len() * 10);
    }

    #[test]
    fn near_the_stream_start_the_preroll_is_what_there_is() {
        let mut ring = SampleRing::new(Duration::from_secs(5), usize::MAX);
        for n in 0..12 {
            ring.push(sample(n, 10, 10));
        }
        let first = ring.preroll(0).next().unwrap();
        assert_eq!(first.frame_num, 0);
        assert_eq!(ring.preroll(0).count(), 12);
    }

    #[test]
    fn the_byte_cap_drops_whole_gops_from_the_front() {
        // 1000-byte frames, GOP of 10, 25 000-byte cap: at most 2.5 GOPs.
        let mut ring = SampleRing::new(Duration::from_secs(60), 25_000);
        for n in 0..100 {
            ring.push(sample(n, 10, 1000));
            assert!(ring.bytes() <= 25_000, "frame {n}: {} bytes", ring.bytes());
            assert!(ring.preroll(0).next().unwrap().keyframe);
        }
        assert_eq!(ring.preroll(0).next().unwrap().frame_num, 80);
        assert_eq!(ring.dropped(), 80);
    }

    #[test]
    fn a_gop_over_the_cap_is_dropped_and_delta_frames_wait_for_a_keyframe() {
        let mut ring = SampleRing::new(Duration::from_secs(60), 3_500);
        for n in 0..4 {
            ring.push(sample(n, 10, 1000));
        }
        // The 4th frame took the only GOP over the cap: all gone.
        assert_eq!(ring.len(), 0);
        for n in 4..10 {
            ring.push(sample(n, 10, 1000));
            assert_eq!(
                ring.len(),
                0,
                "delta frame {n} is refused without its keyframe"
            );
        }
        ring.push(sample(10, 10, 1000));
        assert_eq!(ring.preroll(0).next().unwrap().frame_num, 10);
    }
}
