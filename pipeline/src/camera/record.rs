//! The recording branch: the parser or encoder, then `splitmuxsink` (clips written as
//! they come) or the appsink of the pre-roll ring (capture policies); the output directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

use super::make;
use crate::config::{Camera, Source};
use crate::error::{Error, Result};
use crate::recorder::Recorder;
use crate::timing::DtsGuard;

/// In-memory mode (capture policies): the recording branch ends here, every compressed
/// buffer goes to the recorder's pre-roll ring with its running time.
fn video_sink(recorder: Arc<Mutex<Recorder>>) -> gst_app::AppSink {
    let mut last_rt = 0u64;
    gst_app::AppSink::builder()
        .sync(false)
        .enable_last_sample(false)
        .callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps_owned()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let ts = buffer.pts().or(buffer.dts());
                    let rt = sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                        .and_then(|s| s.to_running_time(ts))
                        .or(ts)
                        .map_or(last_rt, |r| r.nseconds());
                    last_rt = rt;
                    recorder
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_video(buffer, rt, &caps);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        )
        .build()
}

/// The parser for a compressed stream of the recording branch; in memory mode it repeats
/// the parameter sets at every key frame so that a clip can start at any GOP.
fn parser(caps_name: &str, in_memory: bool) -> Result<Option<gst::Element>> {
    let p = match caps_name {
        "video/x-h264" => make("h264parse")?,
        "video/x-h265" => make("h265parse")?,
        _ => return Ok(None),
    };
    if in_memory {
        p.set_property("config-interval", -1i32);
    }
    Ok(Some(p))
}

fn splitmux(cam: &Camera, recorder: &Arc<Mutex<Recorder>>) -> Result<gst::Element> {
    let rec = &cam.recording;
    let s = make("splitmuxsink")?;
    s.set_property("muxer-factory", rec.container.muxer());
    s.set_property("max-size-time", rec.clip_duration.as_nanos() as u64);
    s.set_property("max-size-bytes", rec.clip_max_bytes);
    s.set_property("send-keyframe-requests", true);
    let r = recorder.clone();
    s.connect("format-location", false, move |_| {
        let loc = r.lock().unwrap_or_else(|e| e.into_inner()).next_location();
        Some(loc.to_string_lossy().to_string().to_value())
    });
    Ok(s)
}

/// Removes a clock offset between the camera's DTS and PTS before the muxer sees it
/// ([`DtsGuard`]); starts over at every discontinuity (a reconnect).
fn guard_dts(queue: &gst::Element, camera: &str) {
    let guard = Mutex::new(DtsGuard::default());
    let camera = camera.to_string();
    let pad = queue.static_pad("src").expect("queue has a src pad");
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buf)) = info.data.as_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
        if buf.flags().contains(gst::BufferFlags::DISCONT) {
            *g = DtsGuard::default();
        }
        let known = g.shift().is_some();
        let (pts, dts) = (buf.pts().map(|t| t.nseconds()), buf.dts().map(|t| t.nseconds()));
        let fixed = g.fix(pts, dts);
        if !known && let Some(shift) = g.shift().filter(|&s| s != 0) {
            tracing::warn!(
                camera = %camera,
                gap_s = shift as f64 / 1e9,
                "the stream's DTS runs behind its PTS by more than any reordering: recording with the DTS moved up \
                 (mp4 clips would otherwise play as empty)"
            );
        }
        if fixed != dts {
            buf.make_mut().set_dts(fixed.map(gst::ClockTime::from_nseconds));
        }
        gst::PadProbeReturn::Ok
    });
}

/// The recording branch after its queue `q_rec` (which it heads): the elements to link in
/// a row, and the sink to add unlinked when a `parsebin` must type the stream first
/// (`caps_name` empty); a `fakesink` when the camera records nothing.
pub(super) fn branch(
    pipeline: &gst::Pipeline,
    q_rec: &gst::Element,
    caps_name: &str,
    compressed: bool,
    cam: &Camera,
    recorder: &Arc<Mutex<Recorder>>,
) -> Result<(Vec<gst::Element>, Option<gst::Element>)> {
    let mut unlinked: Option<gst::Element> = None;
    let mut rec_chain: Vec<gst::Element> = vec![q_rec.clone()];
    let in_memory = recorder.lock().unwrap_or_else(|e| e.into_inner()).in_memory();
    if cam.recording.enabled {
        if compressed {
            if caps_name.is_empty() {
                unlinked = Some(make("parsebin")?);
            } else if let Some(p) = parser(caps_name, in_memory)? {
                rec_chain.push(p);
            }
        } else {
            let fps = match &cam.source {
                Source::TestPattern { fps, .. } => *fps,
                _ => 30,
            };
            let enc = make("x264enc")?;
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property("key-int-max", fps.max(1));
            enc.set_property("threads", 1u32);
            rec_chain.extend([make("videoconvert")?, enc, make("h264parse")?]);
        }
        let sink: gst::Element = if in_memory {
            video_sink(recorder.clone()).upcast()
        } else {
            if compressed {
                guard_dts(q_rec, &cam.name);
            }
            splitmux(cam, recorder)?
        };
        if let Some(parsebin) = unlinked.take() {
            rec_chain.push(parsebin.clone());
            let sink_weak = sink.downgrade();
            let pipeline_weak = pipeline.downgrade();
            parsebin.connect_pad_added(move |_, p| {
                let (Some(sink), Some(pipeline)) = (sink_weak.upgrade(), pipeline_weak.upgrade()) else {
                    return;
                };
                let caps = p.current_caps().unwrap_or_else(|| p.query_caps(None));
                let Some(name) = caps
                    .structure(0)
                    .map(|s| s.name().to_string())
                    .filter(|n| n.starts_with("video/"))
                else {
                    return;
                };
                let target = if in_memory {
                    // A parser that repeats the parameter sets, then the ring's appsink.
                    let sinkpad = sink.static_pad("sink").expect("appsink has a sink pad");
                    match parser(&name, true) {
                        Ok(Some(parse)) => {
                            let linked = pipeline.add(&parse).is_ok()
                                && parse.link(&sink).is_ok()
                                && parse.sync_state_with_parent().is_ok();
                            if !linked {
                                tracing::error!("cannot insert the parser of the recording branch");
                                return;
                            }
                            parse.static_pad("sink")
                        }
                        _ => Some(sinkpad),
                    }
                } else {
                    sink.request_pad_simple("video")
                };
                match target {
                    Some(target) => {
                        if let Err(e) = p.link(&target) {
                            tracing::error!(error = ?e, "cannot link the parsed stream to the recording sink");
                        }
                    }
                    None => tracing::error!("the recording sink gives no video pad"),
                }
            });
            // Added to the pipeline below with the rest, linked when parsebin has typed the stream.
            unlinked = Some(sink);
        } else {
            rec_chain.push(sink);
        }
    } else {
        let fake = make("fakesink")?;
        fake.set_property("sync", false);
        fake.set_property("async", false);
        rec_chain.push(fake);
    }
    Ok((rec_chain, unlinked))
}

/// A setgid parent means "shared with the group" (the units: the upload daemon runs as its
/// own user in the runner's group and deletes uploaded clips): a directory of ours beneath
/// it gets the parent's mode, so the group may delete there too, whatever the umask took.
fn share_like_parent(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(parent) = dir.parent() else { return Ok(()) };
    let (pm, dm) = (std::fs::metadata(parent)?, std::fs::metadata(dir)?);
    let shared = pm.mode() & 0o2000 != 0;
    let ours = dm.uid() == nix::unistd::geteuid().as_raw();
    if shared && ours && dm.mode() & 0o7777 != pm.mode() & 0o7777 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(pm.mode() & 0o7777))?;
    }
    Ok(())
}

/// Creates the camera's output directory and checks it is writable.
pub fn prepare_output(dir: &Path) -> Result<()> {
    let err = |reason: String| Error::Output {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    share_like_parent(dir).map_err(|e| err(format!("cannot set its mode: {e}")))?;
    let probe: PathBuf = dir.join(".edgemask-write-test.part");
    std::fs::write(&probe, b"x").map_err(|e| err(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn camera_directories_share_a_setgid_output_directory_with_its_group() {
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2770)).unwrap();
        prepare_output(&shared.join("front")).unwrap();
        assert_eq!(mode(&shared.join("front")), 0o2770);
        // Without the setgid bit the umask decides, as before.
        let plain = t.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare_output(&plain.join("front")).unwrap();
        assert_eq!(mode(&plain.join("front")) & 0o2000, 0);
    }
}
