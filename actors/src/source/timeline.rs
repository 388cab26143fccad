//! Stream time across sessions: one timeline per source, whatever its kind, so that frame
//! timestamps keep increasing over reconnects and loops, and `max_fps` thins frames evenly.

/// Keeps presentation times increasing across reconnects: a new session's timestamps start
/// again near 0, so they are moved to continue one frame after the last frame delivered.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// Added to this session's timestamps (relative to its first).
    offset_ns: u64,
    /// The first timestamp of this session; `None` until its first frame.
    session_first: Option<u64>,
    /// Whether this is a session after a reconnect (the first keeps its own timestamps).
    rebased: bool,
    /// The end of the last frame delivered.
    end_ns: u64,
    /// With `max_fps`: the decoder timestamp (this session) before which frames are dropped.
    next_admit_ns: Option<u64>,
}

impl Timeline {
    pub(super) fn new_session(&mut self) {
        if self.end_ns > 0 {
            self.rebased = true;
            self.offset_ns = self.end_ns;
        }
        self.session_first = None;
        self.next_admit_ns = None;
    }

    /// Whether a frame the decoder stamped `pts_ns` is delivered under `max_fps`: frames are
    /// kept on a grid of 1/max_fps seconds, so the kept ones are spread evenly.
    pub(super) fn admit(&mut self, pts_ns: u64, max_fps: Option<f64>) -> bool {
        let Some(fps) = max_fps else {
            return true;
        };
        let step = (1e9 / fps) as u64;
        match self.next_admit_ns {
            // Within a millisecond counts as on time: container timestamps are rounded.
            Some(next) if pts_ns + 1_000_000 < next => false,
            Some(next) => {
                // Stay on the grid unless the stream jumped past it.
                let grid = next + step;
                self.next_admit_ns = Some(if grid > pts_ns { grid } else { pts_ns + step });
                true
            }
            None => {
                self.next_admit_ns = Some(pts_ns.saturating_add(step));
                true
            }
        }
    }

    /// The pipeline timestamp of a frame the decoder stamped `pts_ns`.
    pub(super) fn place(&mut self, pts_ns: u64, duration_ns: u64) -> u64 {
        let placed = if self.rebased {
            let first = *self.session_first.get_or_insert(pts_ns);
            self.offset_ns + pts_ns.saturating_sub(first)
        } else {
            pts_ns
        };
        // An unknown duration counts as one 30 fps frame, so the next session starts after it.
        self.end_ns = self.end_ns.max(
            placed
                + if duration_ns > 0 {
                    duration_ns
                } else {
                    33_333_333
                },
        );
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fps_keeps_frames_evenly_by_timestamp() {
        let mut t = Timeline::default();
        let frame = 33_333_333u64; // 30 fps
        let kept: Vec<u64> = (0..30).filter(|i| t.admit(i * frame, Some(5.0))).collect();
        assert_eq!(kept, [0, 6, 12, 18, 24]);
        let mut all = Timeline::default();
        assert!((0..30).all(|i| all.admit(i * frame, None)));
        // A jump ahead restarts the grid instead of letting a burst through.
        let mut j = Timeline::default();
        assert!(j.admit(0, Some(10.0)));
        assert!(j.admit(5_000_000_000, Some(10.0)));
        assert!(!j.admit(5_050_000_000, Some(10.0)));
        assert!(j.admit(5_100_000_000, Some(10.0)));
    }

    #[test]
    fn timestamps_continue_across_sessions() {
        let mut t = Timeline::default();
        t.new_session();
        // The first session keeps the decoder's timestamps.
        assert_eq!(t.place(5_000, 1_000), 5_000);
        assert_eq!(t.place(6_000, 1_000), 6_000);
        // After a reconnect the server starts near 0 again: placed after the last frame.
        t.new_session();
        assert_eq!(t.place(100, 1_000), 7_000);
        assert_eq!(t.place(1_100, 1_000), 8_000);
        t.new_session();
        assert_eq!(t.place(0, 0), 9_000);
        assert_eq!(t.place(33_333_333, 0), 9_000 + 33_333_333);
    }
}
