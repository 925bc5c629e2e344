//! Capture policy state machine (pure): decides, per clip, whether it is kept.
//!
//! Frames are observed in order with their time (seconds) and their share (person coverage
//! for `person`, uncertain share for `uncertain`). A *run* is a stretch of consecutive frames
//! whose share is >= `min_share`; a run that lasts >= `min_duration` becomes a recording
//! interval, which starts `preroll` before the run and lasts until the run ends. A clip is
//! kept when it overlaps a recording interval, dropped when no interval can ever reach it,
//! and pending until then.

use crate::config::{Policy, PolicyKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Drop,
    Pending,
}

#[derive(Debug, Clone)]
pub struct PolicyState {
    policy: Policy,
    /// Start of the current run, if frames are at or above the share now.
    run_start: Option<f64>,
    /// Time of the last frame observed.
    now: f64,
    /// Recording intervals (start, end); the last one may be open (end = +inf).
    intervals: Vec<(f64, f64)>,
    finished: bool,
}

impl PolicyState {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            run_start: None,
            now: f64::NEG_INFINITY,
            intervals: Vec::new(),
            finished: false,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Observes one frame at `t` seconds with `share` in [0, 1].
    pub fn observe(&mut self, t: f64, share: f64) {
        self.now = self.now.max(t);
        if self.policy.kind == PolicyKind::Always {
            return;
        }
        let min_dur = self.policy.min_duration.as_secs_f64();
        let pre = self.policy.preroll.as_secs_f64();
        if share >= self.policy.min_share {
            let start = *self.run_start.get_or_insert(t);
            if t - start >= min_dur {
                match self.intervals.last_mut() {
                    Some(last) if last.1 == f64::INFINITY => {}
                    _ => self.intervals.push((start - pre, f64::INFINITY)),
                }
            }
        } else {
            self.close_run(t);
        }
    }

    fn close_run(&mut self, t: f64) {
        self.run_start = None;
        if let Some(last) = self.intervals.last_mut()
            && last.1 == f64::INFINITY
        {
            last.1 = t;
        }
    }

    /// No more frames will come (end of stream).
    pub fn finish(&mut self) {
        let now = self.now;
        self.close_run(now);
        self.finished = true;
    }

    /// Whether the clip covering `[start, end)` seconds is kept.
    pub fn decide(&self, start: f64, end: f64) -> Decision {
        if self.policy.kind == PolicyKind::Always {
            return Decision::Keep;
        }
        // An open interval is only known to cover the frames observed so far: video beyond
        // the last observed frame may still fall after the run's end.
        let now = self.now;
        if self
            .intervals
            .iter()
            .any(|&(s, e)| s < end && (if e == f64::INFINITY { now } else { e }) >= start)
        {
            return Decision::Keep;
        }
        if self.finished {
            return Decision::Drop;
        }
        // The earliest start any future interval can have.
        let earliest = self.run_start.unwrap_or(self.now) - self.policy.preroll.as_secs_f64();
        if earliest >= end {
            Decision::Drop
        } else {
            Decision::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn person(min: f64, dur: f64, pre: f64) -> PolicyState {
        PolicyState::new(Policy {
            kind: PolicyKind::Person,
            min_share: min,
            min_duration: Duration::from_secs_f64(dur),
            preroll: Duration::from_secs_f64(pre),
            preroll_max_bytes: 1 << 20,
        })
    }

    fn feed(p: &mut PolicyState, from: f64, to: f64, share: f64) {
        let mut t = from;
        while t < to - 1e-9 {
            p.observe(t, share);
            t += 0.1;
        }
    }

    #[test]
    fn always_keeps_everything() {
        let p = PolicyState::new(Policy {
            kind: PolicyKind::Always,
            min_share: 0.0,
            min_duration: Duration::ZERO,
            preroll: Duration::ZERO,
            preroll_max_bytes: 1 << 20,
        });
        assert_eq!(p.decide(0.0, 1.0), Decision::Keep);
    }

    #[test]
    fn short_runs_do_not_record() {
        let mut p = person(0.1, 1.0, 0.0);
        feed(&mut p, 0.0, 0.5, 0.5);
        feed(&mut p, 0.5, 3.0, 0.0);
        assert_eq!(p.decide(0.0, 1.0), Decision::Drop);
        p.finish();
        assert_eq!(p.decide(2.0, 3.0), Decision::Drop);
    }

    #[test]
    fn long_run_records_with_preroll() {
        let mut p = person(0.1, 1.0, 2.0);
        feed(&mut p, 0.0, 5.0, 0.0);
        // A clip long before the run cannot be reached by the pre-roll.
        assert_eq!(p.decide(0.0, 2.0), Decision::Drop);
        feed(&mut p, 5.0, 7.0, 0.5);
        feed(&mut p, 7.0, 9.0, 0.0);
        // Run 5..7 → interval 3..7.
        assert_eq!(p.decide(2.0, 3.5), Decision::Keep);
        assert_eq!(p.decide(6.5, 8.0), Decision::Keep);
        // A run starting now could still reach back over 7.5..9 with its pre-roll.
        assert_eq!(p.decide(7.5, 9.0), Decision::Pending);
        assert_eq!(p.decide(0.0, 2.9), Decision::Drop);
        p.finish();
        assert_eq!(p.decide(7.5, 9.0), Decision::Drop);
    }

    #[test]
    fn pending_while_a_run_could_still_qualify() {
        let mut p = person(0.1, 1.0, 1.0);
        feed(&mut p, 0.0, 2.0, 0.0);
        feed(&mut p, 2.0, 2.5, 0.5);
        // Run started at 2.0 and may still reach 1 s: clip 1..2 is within the pre-roll.
        assert_eq!(p.decide(1.0, 2.0), Decision::Pending);
        assert_eq!(p.decide(0.0, 0.5), Decision::Drop);
        p.finish();
        assert_eq!(p.decide(1.0, 2.0), Decision::Drop);
    }

    #[test]
    fn an_open_recording_does_not_decide_video_beyond_the_last_frame() {
        let mut p = person(0.1, 0.5, 0.5);
        feed(&mut p, 0.0, 2.0, 0.0);
        feed(&mut p, 2.0, 3.05, 0.5);
        // Recording since 1.5 s, frames observed up to 3.0 s.
        assert_eq!(p.decide(2.5, 3.0), Decision::Keep);
        assert_eq!(p.decide(3.0, 3.5), Decision::Keep);
        assert_eq!(
            p.decide(3.5, 4.0),
            Decision::Pending,
            "the run may end before 3.5 s"
        );
        // The run ends at 3.1 s; once no new run's pre-roll can reach 3.5-4.0, it is dropped.
        feed(&mut p, 3.1, 4.75, 0.0);
        assert_eq!(p.decide(3.0, 3.5), Decision::Keep);
        assert_eq!(p.decide(3.5, 4.0), Decision::Drop);
    }

    #[test]
    fn uncertain_uses_the_same_machinery() {
        let mut p = PolicyState::new(Policy {
            kind: PolicyKind::Uncertain,
            min_share: 0.2,
            min_duration: Duration::ZERO,
            preroll: Duration::ZERO,
            preroll_max_bytes: 1 << 20,
        });
        p.observe(0.0, 0.1);
        p.observe(1.0, 0.3);
        p.observe(2.0, 0.1);
        p.finish();
        assert_eq!(p.decide(0.0, 0.9), Decision::Drop);
        assert_eq!(p.decide(0.9, 1.5), Decision::Keep);
    }
}
