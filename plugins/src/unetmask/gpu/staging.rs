// SPDX-License-Identifier: MPL-2.0

//! Frames in and out of the device through page-locked host buffers (feature `cuda`).
//!
//! A copy from GStreamer's pageable memory makes the driver stage it through its own small
//! pinned buffers, in chunks, with the host waiting; a copy from a pinned buffer is one DMA
//! queued on the stream. So each plane is copied once on the host into a pinned buffer kept
//! for the caps, and the transfer is queued behind (or ahead of) the kernels, with the one
//! synchronisation of the frame covering it. Uploads use write-combined memory (fast for
//! the host to write, the GPU to read); downloads use cached memory, which the host reads.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice, sys};

/// The pinned buffers of one element instance, one per plane and direction, grown as needed.
#[derive(Default)]
pub struct Staging {
    up: [Option<PinnedHostSlice<u8>>; 3],
    down: [Option<PinnedHostSlice<u8>>; 3],
    /// The bytes waiting in each `down` buffer.
    pending: [usize; 3],
}

/// `slot`'s buffer, reallocated unless it holds `len` bytes (`exact`) or at least `len`.
fn fit<'a>(
    slot: &'a mut Option<PinnedHostSlice<u8>>,
    stream: &Arc<CudaStream>,
    len: usize,
    exact: bool,
    flags: u32,
) -> Result<&'a mut PinnedHostSlice<u8>, String> {
    let fits = |b: &PinnedHostSlice<u8>| if exact { b.len() == len } else { b.len() >= len };
    if !slot.as_ref().is_some_and(fits) {
        *slot = None;
        // SAFETY: the buffer is written (uploads) or filled by a copy (downloads) before any
        // byte of it is read.
        let b = unsafe { stream.context().alloc_pinned_with_flags::<u8>(len.max(1), flags) }
            .map_err(|e| format!("allocating {len} bytes of page-locked host memory: {e}"))?;
        *slot = Some(b);
    }
    Ok(slot.as_mut().expect("allocated above"))
}

impl Staging {
    /// Queues the upload of `src` (plane `plane` of a frame) into `dst`, which holds at
    /// least `src.len()` bytes. `src` may be reused as soon as this returns.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        plane: usize,
        src: &[u8],
        dst: &mut CudaSlice<u8>,
    ) -> Result<(), String> {
        // Exactly `src.len()`: a host-to-device copy moves the whole source buffer.
        let pinned = fit(
            &mut self.up[plane],
            stream,
            src.len(),
            true,
            sys::CU_MEMHOSTALLOC_WRITECOMBINED,
        )?;
        // Waits for the buffer's previous upload, if one is still queued.
        pinned
            .as_mut_slice()
            .map_err(|e| format!("staging the frame: {e}"))?
            .copy_from_slice(src);
        stream
            .memcpy_htod(pinned, dst)
            .map_err(|e| format!("uploading the frame: {e}"))
    }

    /// Queues the download of `src` (plane `plane`); [`Staging::take`] copies it out once the
    /// stream has been synchronised.
    pub fn download(
        &mut self,
        stream: &Arc<CudaStream>,
        plane: usize,
        src: &cudarc::driver::CudaView<'_, u8>,
    ) -> Result<(), String> {
        let pinned = fit(&mut self.down[plane], stream, src.len(), false, 0)?;
        self.pending[plane] = src.len();
        stream
            .memcpy_dtoh(src, pinned)
            .map_err(|e| format!("downloading the frame: {e}"))
    }

    /// Copies plane `plane`'s downloaded bytes into `dst` (its first bytes, as many as were
    /// downloaded). Call after synchronising the stream the download was queued on.
    pub fn take(&mut self, plane: usize, dst: &mut [u8]) -> Result<(), String> {
        let n = std::mem::take(&mut self.pending[plane]);
        let pinned = self.down[plane]
            .as_ref()
            .ok_or_else(|| format!("no download queued for plane {plane}"))?;
        let bytes = pinned
            .as_slice()
            .map_err(|e| format!("downloading the frame: {e}"))?;
        dst[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }
}
