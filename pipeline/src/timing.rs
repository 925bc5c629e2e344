//! Timestamp normalisation for the recordings (pure).
//!
//! Some sources (cameras, RTP depayloaders, demuxers) stamp DTS far behind PTS. mp4mux
//! turns that gap into an edit list pointing past the clip's media, and players (qtdemux
//! among them) then show the clip as empty. Matroska stores no DTS and is not affected.
//! Two cures, one per way of writing clips:
//! - clips written from memory ([`crate::preroll::ClipWriter`]) hold their first frames,
//!   find the stream's constant PTS-DTS offset ([`clip_timing`]) and remove it exactly,
//!   keeping the decoder's reordering;
//! - the streaming path (splitmuxsink) cannot hold frames back: [`DtsGuard`] removes a
//!   gap larger than any real reorder delay as soon as the first frame shows it.

/// A PTS-DTS gap above this is not reordering but a clock offset (H.264's deepest
/// reordering, 16 frames, is about 0.5 s at 30 fps).
pub const MAX_REORDER_NS: i128 = 1_000_000_000;

/// The DTS shift and the rebase offset for a clip whose first frames are `frames` (PTS,
/// DTS in ns): DTS moves by the smallest PTS-DTS gap seen, then the earlier of the first PTS
/// and the shifted first DTS becomes 0.
pub fn clip_timing(frames: &[(Option<u64>, Option<u64>)]) -> (i128, i128) {
    let shift = frames
        .iter()
        .filter_map(|&(pts, dts)| Some(pts? as i128 - dts? as i128))
        .min()
        .unwrap_or(0);
    let offset = match frames.first() {
        Some(&(Some(p), Some(d))) => (p as i128).min(d as i128 + shift),
        Some(&(p, d)) => p.or(d).unwrap_or(0) as i128,
        None => 0,
    };
    (shift, offset)
}

/// Streaming DTS correction: when the first frame's DTS is more than [`MAX_REORDER_NS`]
/// behind its PTS, every DTS moves forward by that gap, kept monotonic and never past
/// its PTS. Streams with normal gaps pass untouched.
#[derive(Debug, Default, Clone)]
pub struct DtsGuard {
    /// `None` until the first frame with both timestamps; then the shift (0: untouched).
    shift: Option<i128>,
    last: Option<u64>,
}

impl DtsGuard {
    /// The DTS to use for a frame.
    pub fn fix(&mut self, pts: Option<u64>, dts: Option<u64>) -> Option<u64> {
        let dts = dts?;
        let shift = *self.shift.get_or_insert_with(|| match pts {
            Some(p) if p as i128 - dts as i128 > MAX_REORDER_NS => p as i128 - dts as i128,
            _ => 0,
        });
        if shift == 0 {
            return Some(dts);
        }
        let mut d = (dts as i128 + shift).max(0) as u64;
        if let Some(p) = pts {
            d = d.min(p);
        }
        if let Some(last) = self.last {
            d = d.max(last);
        }
        self.last = Some(d);
        Some(d)
    }

    /// The shift in force, in ns (0 when the stream needed none, `None` before the first frame).
    pub fn shift(&self) -> Option<i128> {
        self.shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_timing_removes_the_constant_gap_and_keeps_the_reordering() {
        let ms = |v: u64| Some(v * 1_000_000);
        // Decode order I P B B, PTS 0 3 1 2 (frames of 1 ms), DTS 2 frames behind, plus a
        // 10 s gap.
        let gap = 10_000;
        let frames = [
            (ms(gap), ms(0)),
            (ms(gap + 3), ms(1)),
            (ms(gap + 1), ms(2)),
            (ms(gap + 2), ms(3)),
        ];
        let (shift, offset) = clip_timing(&frames);
        assert_eq!(shift, (gap as i128 - 1) * 1_000_000);
        for (p, d) in frames {
            let (p, d) = (p.unwrap() as i128 - offset, d.unwrap() as i128 + shift - offset);
            assert!(p >= d && d >= 0 && p - d <= 3_000_000, "pts {p} dts {d}");
        }
        assert_eq!(clip_timing(&[(ms(5), None)]), (0, 5_000_000));
        assert_eq!(clip_timing(&[]), (0, 0));
    }

    #[test]
    fn guard_leaves_normal_streams_alone_and_removes_clock_offsets() {
        let ms = |v: u64| Some(v * 1_000_000);
        let mut g = DtsGuard::default();
        assert_eq!(g.fix(ms(66), ms(0)), ms(0));
        assert_eq!(g.fix(ms(200), ms(33)), ms(33));
        assert_eq!(g.shift(), Some(0));
        // DTS 10 s behind: moved up to the PTS, monotonic, never past the PTS.
        // No PTS on the first frame: nothing to compare, untouched.
        let mut g = DtsGuard::default();
        assert_eq!(g.fix(None, ms(1)), ms(1));
        assert_eq!(g.shift(), Some(0));
        let mut g = DtsGuard::default();
        assert_eq!(g.fix(ms(10_000), ms(0)), ms(10_000));
        assert_eq!(g.fix(ms(10_033), ms(33)), ms(10_033));
        assert_eq!(g.fix(ms(10_050), ms(66)), ms(10_050), "clamped to its PTS");
        assert_eq!(g.fix(ms(10_040), ms(70)), ms(10_050), "kept monotonic");
        assert_eq!(g.fix(ms(1), None), None);
        assert_eq!(g.shift(), Some(10_000_000_000));
    }
}
