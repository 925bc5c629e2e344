//! Faults for tests (feature `fault-injection`; never part of a release build): the field's
//! failures that a test cannot otherwise produce on demand.
//!
//! `EDGEMASK_FAULT_BLOCK_SOURCE_AFTER=N`: after N buffers the source's streaming thread
//! blocks for good, as a read from a hung network file system or a wedged driver does. No
//! frame arrives any more, and the pipeline cannot reach NULL (deactivating the pad waits
//! for that thread).
//!
//! `EDGEMASK_FAULT_SLOW_DISPLAY_MS=N`: the display sink takes N ms per frame (a slow X
//! server or GPU), so a synced sink is late and sends QoS upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gst::prelude::*;

/// Installs the configured faults on a camera's source element.
pub fn on_source(src: &gst::Element) {
    let Some(after) = std::env::var("EDGEMASK_FAULT_BLOCK_SOURCE_AFTER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let Some(pad) = src.static_pad("src") else {
        return;
    };
    let seen = AtomicU64::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if seen.fetch_add(1, Ordering::Relaxed) >= after {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Installs the configured faults on a camera's display sink.
pub fn on_display(sink: &gst::Element) {
    let Some(ms) = std::env::var("EDGEMASK_FAULT_SLOW_DISPLAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let Some(pad) = sink.static_pad("sink") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        std::thread::sleep(Duration::from_millis(ms));
        gst::PadProbeReturn::Ok
    });
}
