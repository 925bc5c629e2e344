//! Per-camera recorder: pairs the clips `splitmuxsink` writes with the masks of the same
//! frames, applies the capture policy and the disk floor, and finalises each clip with the
//! temp-then-rename contract (video, then masks, then the manifest last).
//!
//! Clips are delimited by running time: clip k holds the frames whose running time lies in
//! `[opened_k, opened_{k+1})`, where `opened_k` is the running time `splitmuxsink` reports
//! when it opens fragment k (always at a key frame). Both branches leave the same `tee`, so
//! the masks' running times are on the same scale.
//!
//! Capture policies other than `always` use the in-memory mode instead (see `preroll.rs`):
//! the recording branch's GOPs wait in a bounded ring until the policy decides; the kept
//! ones are written through a per-clip writer, the others are freed and never touch the
//! disk. Clips then start at a kept GOP and end at the first GOP that is dropped (or where
//! the clip reaches `clip_seconds` / `clip_max_mb`), and hold the masks of exactly the frames
//! with running time in `[start, end)`.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::clip::{self, ClipHeader, FrameSummary, MaskInfo, ModelInfo};
use crate::config::{Container, Policy, PolicyKind, Recording};
use crate::policy::{Decision, PolicyState};
use crate::preroll::{ClipWriter, Ring};

/// One frame's mask as it left the element.
#[derive(Debug, Clone)]
pub struct MaskFrame {
    pub running_time: u64,
    pub summary: FrameSummary,
    /// PNG (8-bit grey) of the mask at model resolution.
    pub png: Vec<u8>,
    pub mask_size: (u32, u32),
    pub threshold: Option<f64>,
    pub frame_size: (u32, u32),
}

#[derive(Debug)]
struct Fragment {
    base: String,
    temp_video: PathBuf,
    opened_rt: u64,
    closed: bool,
    wall_start: SystemTime,
    wall_end: Option<SystemTime>,
    /// Free space was under the floor when the fragment opened: it is not kept.
    low_disk: bool,
}

/// Counters the runner exports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub clips_written: u64,
    pub bytes_written: u64,
    pub clips_skipped_policy: u64,
    pub clips_skipped_disk: u64,
    pub write_errors: u64,
    pub frames: u64,
    pub fresh: u64,
    pub carried: u64,
    /// In-memory mode: bytes of video held in the pre-roll ring now, and at most.
    pub preroll_bytes: u64,
    pub preroll_peak_bytes: u64,
    /// In-memory mode: GOPs freed unwritten because the ring reached its byte cap.
    pub preroll_overflows: u64,
    /// In-memory mode: seconds of video the policy dropped (never written).
    pub dropped_video_ns: u64,
}

/// A clip of the in-memory mode.
struct MemClip {
    base: String,
    temp_video: PathBuf,
    start_rt: u64,
    /// Running time of the first frame not in the clip; `None` while it is open.
    end_rt: Option<u64>,
    writer: Option<ClipWriter>,
    wall_start: SystemTime,
    wall_end: Option<SystemTime>,
    low_disk: bool,
    failed: bool,
    video_frames: u64,
    video_bytes: u64,
    frames: Vec<MaskFrame>,
}

/// State of the in-memory mode.
struct Memory {
    ring: Ring,
    /// Clips open or waiting for their last masks, in order.
    clips: VecDeque<MemClip>,
    /// Masks with a running time below this belong to decided video (kept or dropped).
    decided_until: u64,
    /// The previous decided GOP was dropped (counts skipped stretches, not GOPs).
    dropping: bool,
    clip_duration: u64,
    clip_max_bytes: u64,
    cap: usize,
}

impl Memory {
    fn new(rec: &Recording, policy: &Policy) -> Self {
        let cap = usize::try_from(policy.preroll_max_bytes).unwrap_or(usize::MAX);
        Self {
            ring: Ring::new(cap),
            clips: VecDeque::new(),
            decided_until: 0,
            dropping: false,
            clip_duration: rec.clip_duration.as_nanos() as u64,
            clip_max_bytes: rec.clip_max_bytes,
            cap,
        }
    }
}

pub struct Recorder {
    camera: String,
    host: String,
    dir: PathBuf,
    container: Container,
    model: ModelInfo,
    policy_name: String,
    policy: PolicyState,
    disk_floor: u64,
    seq: u64,
    fragments: VecDeque<Fragment>,
    /// Masks not yet given to a fragment (they arrived before it opened).
    pending: VecDeque<MaskFrame>,
    max_rt: Option<u64>,
    eos: bool,
    low_disk_logged: bool,
    enabled: bool,
    /// Recording paused (the disk is full): masks are counted, not kept.
    paused: bool,
    /// Policies other than `always`: GOPs wait in memory until the policy decides.
    memory: Option<Memory>,
    overflow_logged: bool,
    pub counters: Counters,
}

/// Free bytes for unprivileged users in the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Writes a new file at `path` and fsyncs it; its length. A partial file is removed.
fn write_synced(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let result = (|| {
        let mut f = fs::File::create(path)?;
        write(&mut f)?;
        f.flush()?;
        f.sync_all()?;
        Ok(f.metadata()?.len())
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Where clip files without their manifest (left by a crash between renames) are moved at
/// start: hidden, so that no uploader takes them, and kept for a person to look at.
pub const QUARANTINE_DIR: &str = ".quarantine";

impl Recorder {
    pub fn new(
        camera: &str,
        host: &str,
        dir: PathBuf,
        recording: &Recording,
        model: ModelInfo,
        policy: Policy,
        disk_floor: u64,
    ) -> Self {
        let container = recording.container;
        let policy_name = match policy.kind {
            PolicyKind::Always => "always".to_string(),
            PolicyKind::Person => format!(
                "person(min_coverage={}, min_duration_s={}, preroll_s={}, preroll in memory)",
                policy.min_share,
                policy.min_duration.as_secs_f64(),
                policy.preroll.as_secs_f64()
            ),
            PolicyKind::Uncertain => format!(
                "uncertain(min_uncertain={}, min_duration_s={}, preroll_s={}, preroll in memory)",
                policy.min_share,
                policy.min_duration.as_secs_f64(),
                policy.preroll.as_secs_f64()
            ),
        };
        Self {
            camera: camera.to_string(),
            host: host.to_string(),
            dir,
            container,
            model,
            policy_name,
            policy: PolicyState::new(policy),
            disk_floor,
            seq: 0,
            fragments: VecDeque::new(),
            pending: VecDeque::new(),
            max_rt: None,
            eos: false,
            low_disk_logged: false,
            enabled: recording.enabled,
            paused: false,
            memory: (recording.enabled && policy.kind != PolicyKind::Always)
                .then(|| Memory::new(recording, &policy)),
            overflow_logged: false,
            counters: Counters::default(),
        }
    }

    /// Whether the recording branch hands its buffers to [`Recorder::push_video`] (capture
    /// policies other than `always`) instead of writing through `splitmuxsink`.
    pub fn in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Removes temporary files a previous run left behind (a crash, a power cut).
    pub fn clean_stale(dir: &Path) -> usize {
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(clip::is_temp_name) && fs::remove_file(e.path()).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// The temporary location of the next fragment (`splitmuxsink`'s `format-location`).
    pub fn next_location(&mut self) -> PathBuf {
        let base = clip::base_name(&self.camera, SystemTime::now(), self.seq);
        self.seq += 1;
        let video = format!("{base}.{}", self.container.extension());
        self.dir.join(clip::temp_name(&video))
    }

    /// `splitmuxsink-fragment-opened`.
    pub fn fragment_opened(&mut self, location: &Path, running_time: u64) {
        let name = location.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let video = name.trim_start_matches('.').trim_end_matches(".part");
        let base = video.rsplit_once('.').map_or(video, |(b, _)| b).to_string();
        let low_disk = self.check_disk();
        self.fragments.push_back(Fragment {
            base,
            temp_video: location.to_path_buf(),
            opened_rt: running_time,
            closed: false,
            wall_start: SystemTime::now(),
            wall_end: None,
            low_disk,
        });
    }

    /// `splitmuxsink-fragment-closed`.
    pub fn fragment_closed(&mut self, location: &Path) {
        if let Some(f) = self.fragments.iter_mut().find(|f| f.temp_video == location) {
            f.closed = true;
            f.wall_end = Some(SystemTime::now());
        }
        self.try_finalize();
    }

    /// A mask from the element's branch.
    pub fn push_mask(&mut self, m: MaskFrame) {
        let share = match self.policy_kind() {
            PolicyKind::Uncertain => m.summary.uncertain,
            _ => m.summary.coverage,
        };
        self.policy.observe(m.running_time as f64 / 1e9, share);
        self.counters.frames += 1;
        if m.summary.fresh {
            self.counters.fresh += 1;
        } else {
            self.counters.carried += 1;
        }
        self.max_rt = Some(self.max_rt.map_or(m.running_time, |r| r.max(m.running_time)));
        if !self.enabled || self.paused {
            return;
        }
        if let Some(mem) = self.memory.as_mut() {
            mem.ring.attach_mask(m.running_time, m.png.len());
        }
        self.pending.push_back(m);
        if self.memory.is_some() {
            self.pump();
        } else {
            self.try_finalize();
        }
    }

    /// In-memory mode: a buffer of the recording branch (compressed, in decode order) at
    /// running time `rt`.
    pub fn push_video(&mut self, buffer: gst::Buffer, rt: u64, caps: &gst::Caps) {
        let Some(mem) = self.memory.as_mut() else {
            return;
        };
        if self.eos {
            return;
        }
        mem.ring.push(buffer, rt, caps);
        self.pump();
    }

    /// In-memory mode: decides the GOPs the policy can decide, writes the kept ones, frees
    /// the others, hands masks to their clips and finalises complete clips.
    fn pump(&mut self) {
        let Some(mut mem) = self.memory.take() else {
            return;
        };
        while let Some(g) = mem.ring.gops.front() {
            let start = g.start_rt;
            let decision = if g.writing {
                Decision::Keep
            } else {
                let end = g.end.unwrap_or(g.max_end.max(g.max_rt + 1));
                match self.policy.decide(start as f64 / 1e9, end as f64 / 1e9) {
                    // Only a complete GOP can be dropped: the rest of it may still overlap.
                    Decision::Drop if g.end.is_none() => Decision::Pending,
                    d => d,
                }
            };
            match decision {
                Decision::Pending => break,
                Decision::Drop => {
                    self.close_open_clip(&mut mem, start);
                    let g = mem.ring.pop().expect("front exists");
                    let end = g.end.unwrap_or(g.max_end);
                    self.counters.dropped_video_ns += end.saturating_sub(g.start_rt);
                    if !mem.dropping {
                        self.counters.clips_skipped_policy += 1;
                        tracing::debug!(camera = %self.camera, from_s = g.start_rt as f64 / 1e9, "policy: not recording (nothing written)");
                    }
                    mem.dropping = true;
                    mem.decided_until = mem.decided_until.max(end);
                }
                Decision::Keep => {
                    mem.dropping = false;
                    let g = mem.ring.gops.front().expect("front exists");
                    if !g.writing {
                        let caps = g.caps.clone();
                        let split = mem.clips.back().is_some_and(|c| {
                            c.end_rt.is_none()
                                && (start.saturating_sub(c.start_rt) >= mem.clip_duration
                                    || (mem.clip_max_bytes > 0 && c.video_bytes >= mem.clip_max_bytes)
                                    || c.writer.as_ref().is_some_and(|w| w.caps() != &caps))
                        });
                        if split {
                            self.close_open_clip(&mut mem, start);
                        }
                        if mem.clips.back().is_none_or(|c| c.end_rt.is_some()) {
                            let clip = self.open_clip(start, &caps);
                            mem.clips.push_back(clip);
                        }
                        mem.ring.gops.front_mut().expect("front exists").writing = true;
                    }
                    let bufs = mem.ring.drain_front();
                    let clip = mem.clips.back_mut().expect("a clip is open");
                    for b in bufs {
                        clip.video_frames += 1;
                        clip.video_bytes += b.size() as u64;
                        if let Some(w) = clip.writer.as_mut()
                            && let Err(e) = w.push(b)
                        {
                            tracing::error!(camera = %self.camera, clip = %clip.base, error = %e, "cannot write clip");
                            clip.failed = true;
                            if let Some(w) = clip.writer.take() {
                                w.abort();
                            }
                        }
                    }
                    let g = mem.ring.gops.front().expect("front exists");
                    match g.end {
                        Some(end) => {
                            mem.decided_until = mem.decided_until.max(end);
                            mem.ring.pop();
                        }
                        None => {
                            mem.decided_until = mem.decided_until.max(g.max_rt + 1);
                            break;
                        }
                    }
                }
            }
        }
        let freed = mem.ring.enforce_cap();
        self.counters.preroll_overflows += freed.len() as u64;
        for g in freed {
            let end = g.end.unwrap_or(g.max_end);
            mem.decided_until = mem.decided_until.max(end);
            self.counters.dropped_video_ns += end.saturating_sub(g.start_rt);
            if !self.overflow_logged {
                tracing::warn!(
                    camera = %self.camera,
                    cap_bytes = mem.cap,
                    "pre-roll memory cap reached: oldest undecided video freed unwritten (raise policy.preroll_max_mb)"
                );
                self.overflow_logged = true;
            }
        }
        self.counters.preroll_bytes = mem.ring.bytes as u64;
        self.counters.preroll_peak_bytes = self.counters.preroll_peak_bytes.max(mem.ring.peak as u64);
        // Masks of decided video: into the clip holding their frame, or freed.
        let all = self.eos;
        while let Some(m) = self.pending.front() {
            let rt = m.running_time;
            if !all && rt >= mem.decided_until {
                break;
            }
            let m = self.pending.pop_front().expect("front exists");
            if let Some(c) = mem
                .clips
                .iter_mut()
                .find(|c| c.start_rt <= rt && c.end_rt.is_none_or(|e| rt < e))
            {
                c.frames.push(m);
            }
        }
        // Finalise closed clips whose masks have all arrived (masks come in order).
        while let Some(c) = mem.clips.front() {
            let Some(end) = c.end_rt else { break };
            if !(all || self.max_rt.is_some_and(|r| r >= end)) {
                break;
            }
            let c = mem.clips.pop_front().expect("front exists");
            self.finalize_mem_clip(c);
        }
        self.memory = Some(mem);
    }

    fn open_clip(&mut self, start_rt: u64, caps: &gst::Caps) -> MemClip {
        let location = self.next_location();
        let name = location.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let video = name.trim_start_matches('.').trim_end_matches(".part");
        let base = video.rsplit_once('.').map_or(video, |(b, _)| b).to_string();
        let low_disk = self.check_disk();
        let mut failed = false;
        let writer = if low_disk {
            None
        } else {
            match ClipWriter::open(&location, caps, self.container) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(camera = %self.camera, clip = %base, error = %e, "cannot open clip writer");
                    failed = true;
                    None
                }
            }
        };
        tracing::debug!(camera = %self.camera, clip = %base, start_s = start_rt as f64 / 1e9, "policy: recording");
        MemClip {
            base,
            temp_video: location,
            start_rt,
            end_rt: None,
            writer,
            wall_start: SystemTime::now(),
            wall_end: None,
            low_disk,
            failed,
            video_frames: 0,
            video_bytes: 0,
            frames: Vec::new(),
        }
    }

    /// Ends the open clip (if any) before running time `end`: its writer finishes the file.
    fn close_open_clip(&mut self, mem: &mut Memory, end: u64) {
        let Some(c) = mem.clips.back_mut().filter(|c| c.end_rt.is_none()) else {
            return;
        };
        c.end_rt = Some(end.max(c.start_rt));
        c.wall_end = Some(SystemTime::now());
        if let Some(w) = c.writer.take()
            && let Err(e) = w.finish()
        {
            tracing::error!(camera = %self.camera, clip = %c.base, error = %e, "cannot finish clip");
            c.failed = true;
        }
    }

    fn finalize_mem_clip(&mut self, c: MemClip) {
        if c.video_frames == 0 || c.frames.is_empty() {
            let _ = fs::remove_file(&c.temp_video);
        } else if c.low_disk {
            self.counters.clips_skipped_disk += 1;
        } else if c.failed {
            self.counters.write_errors += 1;
            let _ = fs::remove_file(&c.temp_video);
        } else {
            if c.frames.len() as u64 != c.video_frames {
                tracing::warn!(camera = %self.camera, clip = %c.base, video = c.video_frames, masks = c.frames.len(), "clip has not one mask per video frame");
            }
            let wall_end = c.wall_end.unwrap_or_else(SystemTime::now);
            if let Err(e) = self.write_clip(&c.base, &c.temp_video, c.wall_start, wall_end, &c.frames) {
                self.counters.write_errors += 1;
                tracing::error!(camera = %self.camera, clip = %c.base, error = %e, "could not write clip");
                let _ = fs::remove_file(&c.temp_video);
            }
        }
    }

    /// Free space under the floor? Logs transitions.
    fn check_disk(&mut self) -> bool {
        let low_disk = free_bytes(&self.dir).is_some_and(|f| f < self.disk_floor);
        if low_disk && !self.low_disk_logged {
            tracing::warn!(camera = %self.camera, floor_bytes = self.disk_floor, "free space under the floor: not keeping new clips");
        } else if !low_disk && self.low_disk_logged {
            tracing::info!(camera = %self.camera, "free space back above the floor: keeping clips again");
        }
        self.low_disk_logged = low_disk;
        low_disk
    }

    fn policy_kind(&self) -> PolicyKind {
        self.policy.policy().kind
    }

    /// End of stream: every fragment is complete.
    pub fn finish(&mut self) {
        self.eos = true;
        self.policy.finish();
        if let Some(mut mem) = self.memory.take() {
            mem.ring.close();
            self.memory = Some(mem);
            self.pump();
            let mut mem = self.memory.take().expect("memory mode");
            let end = mem.clips.back().map_or(0, |c| {
                c.start_rt
                    .max(c.frames.last().map_or(0, |m| m.running_time + 1))
                    .max(mem.decided_until)
            });
            self.close_open_clip(&mut mem, end);
            self.memory = Some(mem);
            self.pump();
        }
        let now = SystemTime::now();
        for f in self.fragments.iter_mut() {
            f.closed = true;
            f.wall_end.get_or_insert(now);
        }
        self.try_finalize();
    }

    /// The pipeline is torn down without EOS (a fatal error): the open fragment's video is
    /// not playable and is removed; complete ones are finalised.
    pub fn abort(&mut self) {
        self.policy.finish();
        self.eos = true;
        if let Some(mut mem) = self.memory.take() {
            // The open clip's frames may lack their masks: it is dropped; clips already
            // closed are finalised with the masks that arrived.
            if let Some(c) = mem.clips.back_mut().filter(|c| c.end_rt.is_none()) {
                if let Some(w) = c.writer.take() {
                    w.abort();
                }
                let _ = fs::remove_file(&c.temp_video);
                tracing::warn!(camera = %self.camera, clip = %c.base, "clip lost: pipeline failed before it was complete");
                mem.clips.pop_back();
            }
            mem.ring = Ring::new(mem.cap);
            mem.decided_until = u64::MAX;
            self.memory = Some(mem);
            self.pump();
            let mut mem = self.memory.take().expect("memory mode");
            mem.clips.clear();
            mem.decided_until = 0;
            mem.dropping = false;
            self.memory = Some(mem);
        }
        let open: Vec<Fragment> = self
            .fragments
            .iter()
            .position(|f| !f.closed)
            .map(|i| self.fragments.drain(i..).collect())
            .unwrap_or_default();
        self.try_finalize();
        for f in open {
            let _ = fs::remove_file(&f.temp_video);
            tracing::warn!(camera = %self.camera, clip = %f.base, "clip lost: pipeline failed before it was complete");
        }
        self.pending.clear();
        self.eos = false;
        self.policy = PolicyState::new(*self.policy_config());
        self.max_rt = None;
    }

    fn policy_config(&self) -> &Policy {
        self.policy.policy()
    }

    fn try_finalize(&mut self) {
        loop {
            let Some(front) = self.fragments.front() else {
                return;
            };
            if !front.closed {
                return;
            }
            let boundary = self.fragments.get(1).map(|f| f.opened_rt);
            let ready = self.eos || boundary.is_some_and(|b| self.max_rt.is_some_and(|r| r >= b));
            if !ready {
                return;
            }
            let start = front.opened_rt as f64 / 1e9;
            let end = boundary.map_or_else(
                || {
                    self.pending
                        .back()
                        .map_or(start, |m| m.running_time as f64 / 1e9 + 1e-3)
                },
                |b| b as f64 / 1e9,
            );
            let decision = self.policy.decide(start, end);
            if decision == Decision::Pending {
                return;
            }
            let f = self.fragments.pop_front().expect("front exists");
            // The frames of this clip: every pending mask before the next clip's start.
            let n = match boundary {
                Some(b) => self.pending.iter().take_while(|m| m.running_time < b).count(),
                None => self.pending.len(),
            };
            let frames: Vec<MaskFrame> = self.pending.drain(..n).collect();
            if frames.is_empty() {
                // Nothing reached the element (e.g. stopped before the first frame).
                let _ = fs::remove_file(&f.temp_video);
            } else if f.low_disk {
                self.counters.clips_skipped_disk += 1;
                let _ = fs::remove_file(&f.temp_video);
            } else if decision == Decision::Drop {
                self.counters.clips_skipped_policy += 1;
                tracing::debug!(camera = %self.camera, clip = %f.base, "clip skipped by the capture policy");
                let _ = fs::remove_file(&f.temp_video);
            } else if let Err(e) = self.write_clip(
                &f.base,
                &f.temp_video,
                f.wall_start,
                f.wall_end.unwrap_or_else(SystemTime::now),
                &frames,
            ) {
                self.counters.write_errors += 1;
                tracing::error!(camera = %self.camera, clip = %f.base, error = %e, "could not write clip");
                let _ = fs::remove_file(&f.temp_video);
            }
        }
    }

    fn write_clip(
        &mut self,
        base: &str,
        temp_video: &Path,
        wall_start: SystemTime,
        wall_end: SystemTime,
        frames: &[MaskFrame],
    ) -> std::io::Result<()> {
        let ext = self.container.extension();
        let video = format!("{base}.{ext}");
        let masks = format!("{base}.masks.tar");
        let manifest = format!("{base}.manifest.json");
        let summaries: Vec<FrameSummary> = frames.iter().map(|m| m.summary.clone()).collect();
        let first = frames.first();
        let video_bytes = fs::metadata(temp_video)?.len();
        let csv = clip::frames_csv(&summaries);
        let header = ClipHeader {
            camera: self.camera.clone(),
            host: self.host.clone(),
            video: video.clone(),
            video_bytes,
            container: ext.to_string(),
            masks: MaskInfo {
                file: masks.clone(),
                format: "tar/png-gray8",
                width: first.map_or(0, |m| m.mask_size.0),
                height: first.map_or(0, |m| m.mask_size.1),
                threshold: first.and_then(|m| m.threshold),
            },
            wall_start,
            wall_end,
            width: first.map_or(0, |m| m.frame_size.0),
            height: first.map_or(0, |m| m.frame_size.1),
            model: self.model.clone(),
            policy: self.policy_name.clone(),
        };
        let json = serde_json::to_vec_pretty(&clip::build_manifest(header, &summaries))
            .map_err(std::io::Error::other)?;
        // Every file under its temporary name and fsynced first (an error fails the clip);
        // then the renames, the manifest last with the directory fsynced before and after
        // it: a final-named manifest always has its video and masks on disk, and nothing
        // carries a final name without its manifest unless the process dies in between
        // (moved aside at the next start).
        let temp_masks = self.dir.join(clip::temp_name(&masks));
        let temp_manifest = self.dir.join(clip::temp_name(&manifest));
        let (final_video, final_masks, final_manifest) = (
            self.dir.join(&video),
            self.dir.join(&masks),
            self.dir.join(&manifest),
        );
        let result = (|| {
            fs::File::open(temp_video)?.sync_all()?;
            let masks_bytes = write_synced(&temp_masks, |file| {
                let mut tar = tar::Builder::new(file);
                let mut put = |name: &str, data: &[u8]| {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    h.set_mtime(0);
                    h.set_cksum();
                    tar.append_data(&mut h, name, data)
                };
                for (i, m) in frames.iter().enumerate() {
                    put(&clip::mask_entry_name(i), &m.png)?;
                }
                put("frames.csv", csv.as_bytes())?;
                tar.finish()
            })?;
            let manifest_bytes = write_synced(&temp_manifest, |file| file.write_all(&json))?;
            fs::rename(temp_video, &final_video)?;
            fs::rename(&temp_masks, &final_masks)?;
            sync_dir(&self.dir)?;
            fs::rename(&temp_manifest, &final_manifest)?;
            sync_dir(&self.dir)?;
            Ok(masks_bytes + manifest_bytes)
        })();
        let other_bytes = match result {
            Ok(n) => n,
            Err(e) => {
                // Undo: no video or masks under a final name without the manifest.
                if !final_manifest.exists() {
                    let _ = fs::remove_file(&final_video);
                    let _ = fs::remove_file(&final_masks);
                }
                let _ = fs::remove_file(&temp_masks);
                let _ = fs::remove_file(&temp_manifest);
                return Err(e);
            }
        };
        self.counters.clips_written += 1;
        self.counters.bytes_written += video_bytes + other_bytes;
        tracing::info!(camera = %self.camera, clip = %video, frames = summaries.len(), "clip written");
        Ok(())
    }

    /// Moves this camera's final-named clip files that have no manifest (a crash between a
    /// clip's renames) into [`QUARANTINE_DIR`]; how many. Nothing else is touched.
    pub fn quarantine_orphans(dir: &Path, camera: &str) -> std::io::Result<usize> {
        // A set: with a backlog of thousands of clips each file is looked up, not scanned for.
        let names: std::collections::HashSet<String> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut moved = 0;
        for name in &names {
            let Some((base, kind)) = clip::clip_file(name, camera) else {
                continue;
            };
            if kind == clip::ClipFile::Manifest || names.contains(&format!("{base}.manifest.json")) {
                continue;
            }
            let q = dir.join(QUARANTINE_DIR);
            fs::create_dir_all(&q)?;
            fs::rename(dir.join(name), q.join(name))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Pauses or resumes recording (the camera's next pipeline records or not).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Sets the model info (the provider is known once the element runs).
    pub fn set_device(&mut self, device: &str) {
        self.model.device = device.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recorder(dir: &Path) -> Recorder {
        let recording = Recording {
            enabled: true,
            container: Container::Mp4,
            clip_duration: Duration::from_secs(60),
            clip_max_bytes: 0,
        };
        let policy = Policy {
            kind: PolicyKind::Always,
            min_share: 0.0,
            min_duration: Duration::ZERO,
            preroll: Duration::ZERO,
            preroll_max_bytes: 1 << 20,
        };
        let model = ModelInfo {
            file: "m.onnx".into(),
            sha256: "0".repeat(64),
            device: "cpu".into(),
        };
        Recorder::new("front", "host", dir.to_path_buf(), &recording, model, policy, 0)
    }

    fn mask(rt: u64) -> MaskFrame {
        MaskFrame {
            running_time: rt,
            summary: FrameSummary {
                pts: rt,
                fresh: true,
                coverage: 0.5,
                uncertain: 0.0,
            },
            png: vec![1, 2, 3],
            mask_size: (4, 4),
            threshold: Some(0.5),
            frame_size: (8, 8),
        }
    }

    /// One clip: its video written by "splitmuxsink", two masks, then the end of stream.
    /// `before_finish` runs before the clip is finalised (to break something).
    fn record_one(dir: &Path, before_finish: impl FnOnce(&str)) -> Recorder {
        let mut rec = recorder(dir);
        let loc = rec.next_location();
        fs::write(&loc, b"not really a video").unwrap();
        rec.fragment_opened(&loc, 0);
        rec.push_mask(mask(0));
        rec.push_mask(mask(33_000_000));
        rec.fragment_closed(&loc);
        let name = loc.file_name().unwrap().to_str().unwrap();
        let base = name
            .trim_start_matches('.')
            .trim_end_matches(".mp4.part")
            .to_string();
        before_finish(&base);
        rec.finish();
        rec
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_clip_is_published_whole_with_its_manifest_last() {
        let t = tempfile::tempdir().unwrap();
        let mut base = String::new();
        let rec = record_one(t.path(), |b| base = b.to_string());
        assert_eq!(rec.counters.clips_written, 1);
        assert_eq!(
            names(t.path()),
            vec![
                format!("{base}.manifest.json"),
                format!("{base}.masks.tar"),
                format!("{base}.mp4")
            ]
        );
    }

    /// The masks cannot be written (ENOSPC, EIO…): nothing of the clip keeps a final name.
    /// (The video used to be renamed first and stayed, final-named, without masks or
    /// manifest, for an uploader to take.)
    #[test]
    fn a_clip_that_cannot_be_completed_leaves_no_final_named_file() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let rec = record_one(&dir, |base| {
            // A directory where the masks' temporary file must go: creating it fails.
            fs::create_dir(dir.join(clip::temp_name(&format!("{base}.masks.tar")))).unwrap();
        });
        assert_eq!(rec.counters.write_errors, 1);
        assert_eq!(rec.counters.clips_written, 0);
        let left: Vec<String> = names(&dir).into_iter().filter(|n| !n.starts_with('.')).collect();
        assert!(left.is_empty(), "final-named files left: {left:?}");
        assert!(
            !names(&dir).iter().any(|n| n.ends_with(".mp4.part")),
            "the temporary video is removed too: {:?}",
            names(&dir)
        );
    }

    #[test]
    fn clip_files_without_a_manifest_are_moved_aside_at_start() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let whole = "front-20261206T010203004Z-000001";
        let orphan = "front-20261206T010205004Z-000002";
        for f in [
            format!("{whole}.mp4"),
            format!("{whole}.masks.tar"),
            format!("{whole}.manifest.json"),
            format!("{orphan}.mp4"),
            format!("{orphan}.masks.tar"),
            // Not this camera's, not a clip name: untouched.
            "back-20261206T010205004Z-000002.mp4".to_string(),
            "notes.txt".to_string(),
        ] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(Recorder::quarantine_orphans(dir, "front").unwrap(), 2);
        let q = dir.join(QUARANTINE_DIR);
        assert_eq!(
            names(&q),
            vec![format!("{orphan}.masks.tar"), format!("{orphan}.mp4")]
        );
        assert!(dir.join(format!("{whole}.mp4")).exists());
        assert!(dir.join("back-20261206T010205004Z-000002.mp4").exists());
        assert!(dir.join("notes.txt").exists());
        assert_eq!(Recorder::quarantine_orphans(dir, "front").unwrap(), 0);
        assert_eq!(
            Recorder::quarantine_orphans(&dir.join("absent"), "front").unwrap(),
            0
        );
    }
}
