//! In-memory pre-roll for capture policies other than `always`: the recording branch's
//! compressed stream is held as whole GOPs in a bounded ring until the policy decides, and
//! only the GOPs it keeps are written, each clip through its own small writer pipeline
//! (`appsrc ! h264parse|h265parse ! mp4mux|matroskamux ! filesink`). Nothing the policy
//! skips ever reaches the disk.
//!
//! The ring is trimmed by running time (a GOP leaves it once the policy has decided it: kept
//! GOPs go to the writer, dropped ones are freed) and by a byte cap (`policy.preroll_max_mb`)
//! on the video and the masks waiting with it: above it the oldest undecided GOPs are freed
//! unwritten (counted as overflows), so memory stays bounded whatever the policy or the
//! mask branch do.

use std::collections::VecDeque;
use std::path::Path;

use gst::prelude::*;

use crate::config::Container;
use crate::error::{Error, Result};
use crate::timing::clip_timing;

/// One GOP of the recording branch: a key frame and the delta frames after it.
#[derive(Debug)]
pub struct Gop {
    /// Running time of the key frame (ns).
    pub start_rt: u64,
    /// Highest running time of any frame seen in it.
    pub max_rt: u64,
    /// Highest running time + duration seen (the end of the GOP at end of stream).
    pub max_end: u64,
    /// Start of the next GOP once it has arrived: the GOP is complete.
    pub end: Option<u64>,
    pub caps: gst::Caps,
    /// Buffers not handed to a writer yet, in decode order.
    pub bufs: VecDeque<gst::Buffer>,
    pub bytes: usize,
    /// Bytes of the masks (PNG) of this GOP's frames waiting with it: counted in the cap.
    pub mask_bytes: usize,
    /// Decided `keep`: its buffers go to the writer as they arrive.
    pub writing: bool,
}

/// The bounded ring of GOPs.
#[derive(Debug)]
pub struct Ring {
    pub gops: VecDeque<Gop>,
    pub bytes: usize,
    pub cap: usize,
    /// Highest `bytes` ever held.
    pub peak: usize,
    /// GOPs freed unwritten because the cap was reached.
    pub overflows: u64,
    /// Buffers are discarded until the next key frame (at start, and after an overflow that
    /// freed the GOP being filled).
    waiting_keyframe: bool,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Self {
            gops: VecDeque::new(),
            bytes: 0,
            cap,
            peak: 0,
            overflows: 0,
            waiting_keyframe: true,
        }
    }

    /// Appends a buffer of the recording branch at running time `rt`.
    pub fn push(&mut self, buffer: gst::Buffer, rt: u64, caps: &gst::Caps) {
        let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let end = rt + buffer.duration().map_or(0, |d| d.nseconds());
        if key {
            self.waiting_keyframe = false;
            if let Some(last) = self.gops.back_mut() {
                last.end = Some(rt.max(last.start_rt));
            }
            self.gops.push_back(Gop {
                start_rt: rt,
                max_rt: rt,
                max_end: end,
                end: None,
                caps: caps.clone(),
                bufs: VecDeque::new(),
                bytes: 0,
                mask_bytes: 0,
                writing: false,
            });
        } else if self.waiting_keyframe {
            return;
        }
        let Some(g) = self.gops.back_mut() else {
            return;
        };
        let n = buffer.size();
        g.max_rt = g.max_rt.max(rt);
        g.max_end = g.max_end.max(end);
        g.bytes += n;
        g.bufs.push_back(buffer);
        self.bytes += n;
        self.peak = self.peak.max(self.bytes);
    }

    /// End of the stream: the last GOP is complete.
    pub fn close(&mut self) {
        if let Some(last) = self.gops.back_mut()
            && last.end.is_none()
        {
            last.end = Some(last.max_end.max(last.start_rt + 1));
        }
    }

    /// Counts `bytes` of mask data (the mask of the frame at running time `rt`, held until
    /// the policy decides) against the cap, with the GOP holding that frame.
    pub fn attach_mask(&mut self, rt: u64, bytes: usize) {
        let Some(g) = self.gops.iter_mut().rev().find(|g| g.start_rt <= rt) else {
            return;
        };
        g.mask_bytes += bytes;
        self.bytes += bytes;
        self.peak = self.peak.max(self.bytes);
    }

    /// Removes the front GOP (decided, or freed by the cap).
    pub fn pop(&mut self) -> Option<Gop> {
        let g = self.gops.pop_front()?;
        self.bytes -= g.bytes + g.mask_bytes;
        Some(g)
    }

    /// Takes the front GOP's buffers for the writer (its masks go to the clip as well).
    pub fn drain_front(&mut self) -> Vec<gst::Buffer> {
        let Some(g) = self.gops.front_mut() else {
            return Vec::new();
        };
        self.bytes -= g.bytes + g.mask_bytes;
        g.bytes = 0;
        g.mask_bytes = 0;
        g.bufs.drain(..).collect()
    }

    /// Frees the oldest undecided GOPs while the ring holds more than the cap; returns the
    /// GOPs freed (their frames are lost for recording).
    pub fn enforce_cap(&mut self) -> Vec<Gop> {
        let mut freed = Vec::new();
        while self.bytes > self.cap {
            let Some(front) = self.gops.front() else { break };
            if front.writing {
                break;
            }
            let last = self.gops.len() == 1;
            if let Some(g) = self.pop() {
                self.overflows += 1;
                freed.push(g);
            }
            if last {
                // The GOP being filled was freed: its remaining frames cannot start a clip.
                self.waiting_keyframe = true;
            }
        }
        freed
    }
}

/// Writes one clip: `appsrc ! parser ! muxer ! filesink`, timestamps rebased to start at 0.
///
/// Timestamps are normalised before they reach the muxer (see [`crate::timing`]): the first
/// frames are held until [`REORDER_WINDOW`] of them show the stream's constant PTS-DTS
/// offset, DTS is shifted by it, and both are rebased to 0.
pub struct ClipWriter {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    caps: gst::Caps,
    /// Frames held until the PTS-DTS offset is known.
    pending: Vec<gst::Buffer>,
    /// (DTS shift, rebase offset), in ns, once known.
    timing: Option<(i128, i128)>,
    first: bool,
    pub frames: u64,
    pub bytes: u64,
}

/// Frames looked at to find a stream's PTS-DTS offset: more than the reorder depth of
/// any common encoder configuration.
pub const REORDER_WINDOW: usize = 16;

fn make(factory: &str) -> Result<gst::Element> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        Error::Gst(format!(
            "GStreamer element '{factory}' is missing: install the plugin package that provides it"
        ))
    })
}

impl ClipWriter {
    pub fn open(location: &Path, caps: &gst::Caps, container: Container) -> Result<Self> {
        let pipeline = gst::Pipeline::with_name("clip-writer");
        let src = gst_app::AppSrc::builder()
            .caps(caps)
            .format(gst::Format::Time)
            .is_live(false)
            .block(false)
            .max_bytes(0)
            .build();
        let mux = make(container.muxer())?;
        let sink = make("filesink")?;
        sink.set_property("location", location.to_string_lossy().as_ref());
        sink.set_property("sync", false);
        let mut chain: Vec<gst::Element> = vec![src.clone().upcast()];
        match caps.structure(0).map(|s| s.name().as_str()) {
            Some("video/x-h264") => chain.push(make("h264parse")?),
            Some("video/x-h265") => chain.push(make("h265parse")?),
            _ => {}
        }
        chain.extend([mux, sink]);
        pipeline.add_many(chain.iter())?;
        gst::Element::link_many(chain.iter())?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| Error::Gst(format!("clip writer does not start: {e:?}")))?;
        Ok(Self {
            pipeline,
            src,
            caps: caps.clone(),
            pending: Vec::new(),
            timing: None,
            first: true,
            frames: 0,
            bytes: 0,
        })
    }

    pub fn caps(&self) -> &gst::Caps {
        &self.caps
    }

    pub fn push(&mut self, buffer: gst::Buffer) -> Result<()> {
        self.bytes += buffer.size() as u64;
        self.frames += 1;
        if self.timing.is_some() {
            return self.emit(buffer);
        }
        self.pending.push(buffer);
        if self.pending.len() >= REORDER_WINDOW {
            self.settle()?;
        }
        Ok(())
    }

    /// Fixes the timing from the frames held so far and sends them on.
    fn settle(&mut self) -> Result<()> {
        if self.timing.is_none() {
            let ts: Vec<_> = self
                .pending
                .iter()
                .map(|b| (b.pts().map(|t| t.nseconds()), b.dts().map(|t| t.nseconds())))
                .collect();
            self.timing = Some(clip_timing(&ts));
        }
        for b in std::mem::take(&mut self.pending) {
            self.emit(b)?;
        }
        Ok(())
    }

    fn emit(&mut self, mut buffer: gst::Buffer) -> Result<()> {
        let (shift, offset) = self.timing.expect("timing is settled");
        {
            let b = buffer.make_mut();
            let at = |t: i128| gst::ClockTime::from_nseconds((t - offset).max(0) as u64);
            let pts = b.pts().map(|t| at(t.nseconds() as i128));
            // Never after the PTS: a frame cannot be shown before it is decoded.
            let dts = b.dts().map(|t| {
                let d = at(t.nseconds() as i128 + shift);
                pts.map_or(d, |p| d.min(p))
            });
            b.set_pts(pts);
            b.set_dts(dts);
            if self.first {
                b.set_flags(gst::BufferFlags::DISCONT);
            }
        }
        self.first = false;
        self.src
            .push_buffer(buffer)
            .map(|_| ())
            .map_err(|e| Error::Gst(format!("clip writer: {e:?}")))
    }

    /// Ends the clip and waits until the muxer has written it completely (bounded).
    pub fn finish(mut self) -> Result<()> {
        self.settle()?;
        let _ = self.src.end_of_stream();
        let bus = self.pipeline.bus().expect("pipelines have a bus");
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let _ = self.pipeline.set_state(gst::State::Null);
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => Ok(()),
            Some(gst::MessageView::Error(e)) => Err(Error::Gst(crate::redact::redact(&format!(
                "clip writer: {}",
                e.error()
            )))),
            _ => Err(Error::Gst("clip writer did not finish within 20 s".into())),
        }
    }

    /// Stops without finalising (the file is not playable and is removed by the caller).
    pub fn abort(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(size: usize, pts_ms: u64, key: bool) -> gst::Buffer {
        let mut b = gst::Buffer::with_size(size).unwrap();
        {
            let b = b.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
            b.set_duration(gst::ClockTime::from_mseconds(100));
            if !key {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        b
    }

    #[test]
    fn ring_groups_gops_and_enforces_the_cap() {
        gst::init().unwrap();
        let caps = gst::Caps::new_empty_simple("video/x-h264");
        let mut r = Ring::new(1000);
        // Delta frames before the first key frame cannot start a clip: discarded.
        r.push(buf(100, 0, false), 0, &caps);
        assert!(r.gops.is_empty());
        for i in 0..9u64 {
            let t = 100 + i * 100;
            r.push(buf(100, t, i % 3 == 0), t * 1_000_000, &caps);
        }
        assert_eq!(r.gops.len(), 3);
        assert_eq!(r.bytes, 900);
        assert_eq!(r.gops[0].end, Some(400_000_000));
        assert_eq!(r.gops[2].end, None);
        r.close();
        assert_eq!(r.gops[2].end, Some(1_000_000_000));
        assert!(r.enforce_cap().is_empty());
        r.push(buf(250, 1000, true), 1_000_000_000, &caps);
        // 1150 bytes > 1000: the oldest GOP is freed, whole.
        let freed = r.enforce_cap();
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].start_rt, 100_000_000);
        assert_eq!((r.bytes, r.overflows, r.peak), (850, 1, 1150));
        assert_eq!(r.drain_front().len(), 3);
        assert_eq!(r.bytes, 550);
    }

    #[test]
    fn masks_waiting_with_their_gop_count_against_the_cap() {
        gst::init().unwrap();
        let caps = gst::Caps::new_empty_simple("video/x-h264");
        let mut r = Ring::new(1000);
        r.attach_mask(0, 50); // before any GOP: nothing holds it yet
        assert_eq!(r.bytes, 0);
        r.push(buf(300, 0, true), 0, &caps);
        r.push(buf(300, 100, true), 100_000_000, &caps);
        r.attach_mask(50_000_000, 200); // a frame of the first GOP
        r.attach_mask(150_000_000, 100); // of the second
        assert_eq!(
            (r.gops[0].mask_bytes, r.gops[1].mask_bytes, r.bytes),
            (200, 100, 900)
        );
        // 300 more video bytes: 1200 > 1000, the oldest GOP goes with its masks.
        r.push(buf(300, 200, true), 200_000_000, &caps);
        assert_eq!(r.enforce_cap().len(), 1);
        assert_eq!(r.bytes, 700);
        assert_eq!(r.drain_front().len(), 1);
        assert_eq!(r.bytes, 300);
    }

    #[test]
    fn a_gop_larger_than_the_cap_is_freed_and_the_rest_waits_for_a_key_frame() {
        gst::init().unwrap();
        let caps = gst::Caps::new_empty_simple("video/x-h264");
        let mut r = Ring::new(150);
        r.push(buf(100, 0, true), 0, &caps);
        r.push(buf(100, 100, false), 100_000_000, &caps);
        assert_eq!(r.enforce_cap().len(), 1);
        r.push(buf(100, 200, false), 200_000_000, &caps);
        assert!(r.gops.is_empty(), "delta frames of the freed GOP are discarded");
        r.push(buf(100, 300, true), 300_000_000, &caps);
        assert_eq!(r.gops.len(), 1);
    }

    /// 30 H.264 frames with B-frames (x264), as the encoder timestamps them.
    fn h264_frames() -> (gst::Caps, Vec<gst::Buffer>) {
        let p = gst::parse::launch(
            "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 ! \
             x264enc speed-preset=ultrafast bframes=2 key-int-max=30 ! h264parse ! \
             video/x-h264,stream-format=avc,alignment=au ! appsink name=s sync=false",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let mut caps = None;
        let mut v = Vec::new();
        while let Ok(s) = sink.pull_sample() {
            caps = s.caps().map(|c| c.to_owned());
            v.push(s.buffer_owned().unwrap());
        }
        p.set_state(gst::State::Null).unwrap();
        (caps.unwrap(), v)
    }

    #[test]
    fn mp4_clips_play_every_frame_whatever_the_pts_dts_offset() {
        gst::init().unwrap();
        let (caps, frames) = h264_frames();
        let dir = std::env::temp_dir().join(format!("edgemask-clipwriter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // As encoded (small reorder delay); PTS far ahead of DTS (some cameras and
        // demuxers); no DTS at all (RTP depayloaders); everything far from zero.
        type Shift = fn(&mut gst::BufferRef);
        let cases: [(&str, Shift); 4] = [
            ("as-encoded", |_| {}),
            ("pts-far-ahead", |b| {
                b.set_pts(b.pts().map(|t| t + gst::ClockTime::from_seconds(10)))
            }),
            ("no-dts", |b| b.set_dts(gst::ClockTime::NONE)),
            ("both-late", |b| {
                let h = gst::ClockTime::from_seconds(3600);
                b.set_pts(b.pts().map(|t| t + h));
                b.set_dts(b.dts().map(|t| t + h));
            }),
        ];
        let mut results = Vec::new();
        for (name, shift) in cases {
            let path = dir.join(format!("{name}.mp4"));
            let mut w = ClipWriter::open(&path, &caps, Container::Mp4).unwrap();
            for f in &frames {
                let mut f = f.copy();
                shift(f.make_mut());
                w.push(f).unwrap();
            }
            w.finish().unwrap();
            results.push((name, edgemask_tests::media::decoded_frames(&path)));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            results.iter().all(|&(_, n)| n == frames.len() as u64),
            "every frame plays in every case ({} frames): {results:?}",
            frames.len()
        );
    }
}
