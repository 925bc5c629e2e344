//! Faults for tests (feature `fault-injection`; never part of a release build): the field's
//! failures that a test cannot otherwise produce on demand.
//!
//! `EDGEMASK_FAULT_BLOCK_SOURCE_AFTER=N`: after N buffers the source's streaming thread
//! blocks for good, as a read from a hung network file system or a wedged driver does. No
//! frame arrives any more, and the pipeline cannot reach NULL (deactivating the pad waits
//! for that thread).

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
