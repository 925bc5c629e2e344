// SPDX-License-Identifier: MPL-2.0

//! The GPU kernels on a device (feature `cuda`): compiled with NVRTC once per process,
//! loaded into the device's primary context (the one ONNX Runtime's CUDA provider uses, so
//! its buffers are addressable here), launched on one stream per element instance. The
//! `*_to`/`*_on` launches work on device memory and are what the element's GPU path
//! (`gpu_frames`) uses; the host-in/host-out wrappers are what the GPU tests run.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{Ptx, compile_ptx};
use std::sync::OnceLock;

use super::nvrtc::once_ok;
use crate::unetmask::debug::CAT;
use crate::unetmask::model::engine::Engine;

use crate::unetmask::gpu::params::{
    self, ALPHA_FN, AlphaParams, BLUR_CU, BlurParams, BlurPlan, BoxParams, COMPOSITE_CU, MASK_FN, MIX_FN,
    MixParams, POSTPROCESS_CU, POSTPROCESS_FN, PREPROCESS_CU, PREPROCESS_FN, PostParams, PreParams,
};

// SAFETY: `repr(C)` structs of 4-byte integers and floats, laid out as the kernels' structs
// (checked by the `params_match_the_kernel_struct` tests); passed by value.
unsafe impl DeviceRepr for PreParams {}
unsafe impl DeviceRepr for PostParams {}
unsafe impl DeviceRepr for MixParams {}
unsafe impl DeviceRepr for AlphaParams {}
unsafe impl DeviceRepr for BlurParams {}
unsafe impl DeviceRepr for BoxParams {}

/// The kernels loaded on one device, with the stream they run on.
pub struct GpuKernels {
    pub stream: Arc<CudaStream>,
    pre: CudaFunction,
    post: CudaFunction,
    mix: CudaFunction,
    mask: CudaFunction,
    alpha: CudaFunction,
    /// `blur`: grid sums, box rows, box columns, upscaled rows, mix (in launch order).
    blur: [CudaFunction; 5],
}

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A 2-D launch covering `w` x `h` threads in 16 x 16 blocks.
fn grid(w: i32, h: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((w.max(1) as u32).div_ceil(16), (h.max(1) as u32).div_ceil(16), 1),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    }
}

/// NVRTC output for each kernel source, compiled once per process (every element instance
/// loads the same PTX into its device's context).
/// A failure is not kept (see [`once_ok`]).
fn ptx(slot: usize, src: &dyn Fn() -> String) -> Result<Ptx, String> {
    static PTX: [OnceLock<Ptx>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    once_ok(&PTX[slot], || {
        super::nvrtc::nvrtc_present()?;
        compile_ptx(src()).map_err(|e| format!("NVRTC could not compile the kernels: {e:?}"))
    })
    .cloned()
}

/// The kernels as a CUBIN for compute capability `cc`, compiled once per process and
/// architecture; a failure is not kept.
fn cubin(slot: usize, cc: (i32, i32), src: &dyn Fn() -> String) -> Result<Ptx, String> {
    /// A compiled module: its source's slot, the compute capability, the CUBIN.
    type Built = (usize, (i32, i32), Vec<u8>);
    static CUBIN: std::sync::Mutex<Vec<Built>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CUBIN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((.., image)) = cache.iter().find(|(s, c, _)| (*s, *c) == (slot, cc)) {
        return Ok(Ptx::from_binary(image.clone()));
    }
    let image = super::nvrtc::compile_cubin(&src(), cc)?;
    cache.push((slot, cc, image.clone()));
    Ok(Ptx::from_binary(image))
}

/// A new CUDA stream on device `ordinal`'s primary context, for one element instance: its
/// kernels queue on it, and so does ONNX Runtime when the session was opened on it
/// ([`Engine::open_on`](crate::unetmask::model::engine::Engine::open_on)).
pub fn new_stream(ordinal: usize) -> Result<Arc<CudaStream>, String> {
    let ctx = CudaContext::new(ordinal).map_err(err("creating the CUDA context"))?;
    // SAFETY: every buffer made through the kernels is allocated, used and freed on the one
    // stream made here, which ONNX Runtime shares (or, where it does not, which is
    // synchronised around its runs), so cudarc's cross-stream events, one record per
    // buffer per launch otherwise, are not needed.
    unsafe { ctx.disable_event_tracking() };
    ctx.new_stream().map_err(err("creating a CUDA stream"))
}

/// The stream to open a session on CUDA device `n` on, so that ONNX Runtime and the
/// kernels share it ([`Engine::open_on`]'s `stream_on`). `None` where there is no driver
/// or no such device (the session then says so itself).
pub fn stream_on(n: u32) -> Option<Arc<CudaStream>> {
    if n >= crate::unetmask::model::device::device_count().ok()? {
        return None;
    }
    new_stream(n as usize)
        .inspect_err(|e| gst::info!(CAT, "{e}: ONNX Runtime runs on a stream of its own"))
        .ok()
}

/// The kernels for `engine`'s session: on its stream when it runs on one, else on a new
/// stream of its device. `None` when the session is not on a CUDA device.
pub fn kernels_for(engine: &Engine) -> Option<Result<GpuKernels, String>> {
    let device = engine.cuda_device?;
    Some(match engine.stream() {
        Some(s) => GpuKernels::on(s.clone()),
        None => GpuKernels::new(device as usize),
    })
}

impl GpuKernels {
    /// Loads the kernels on device `ordinal`, with a new stream for this instance.
    pub fn new(ordinal: usize) -> Result<GpuKernels, String> {
        Self::on(new_stream(ordinal)?)
    }

    /// Loads the kernels on `stream`'s device, to run on `stream`: as a CUBIN for the
    /// device's compute capability (no JIT at load), or as PTX for the driver to compile
    /// where NVRTC cannot build or the driver cannot load the CUBIN.
    pub fn on(stream: Arc<CudaStream>) -> Result<GpuKernels, String> {
        let ctx = stream.context().clone();
        let cc = crate::unetmask::model::device::compute_capability(ctx.ordinal() as u32).ok();
        let load =
            |slot: usize, src: &dyn Fn() -> String, names: &[&str]| -> Result<Vec<CudaFunction>, String> {
                let native = cc.map(|cc| {
                    cubin(slot, cc, src)
                        .and_then(|image| ctx.load_module(image).map_err(err("loading the CUBIN")))
                });
                let module = match native {
                    Some(Ok(module)) => module,
                    Some(Err(e)) => {
                        gst::info!(CAT, "kernels as PTX, for the driver to compile: {e}");
                        ctx.load_module(ptx(slot, src)?)
                            .map_err(err("loading the kernels"))?
                    }
                    None => ctx
                        .load_module(ptx(slot, src)?)
                        .map_err(err("loading the kernels"))?,
                };
                names
                    .iter()
                    .map(|n| module.load_function(n).map_err(err(n)))
                    .collect()
            };
        let pre = load(0, &|| PREPROCESS_CU.to_string(), &[PREPROCESS_FN])?.remove(0);
        let post = load(1, &|| POSTPROCESS_CU.to_string(), &[POSTPROCESS_FN])?.remove(0);
        // blur.cu uses composite.cu's mask helpers: one module from both.
        let mut composite = load(
            2,
            &|| format!("{COMPOSITE_CU}\n{BLUR_CU}"),
            &[
                MIX_FN,
                MASK_FN,
                ALPHA_FN,
                params::BLUR_GRID_FN,
                params::BOX_ROWS_FN,
                params::BOX_COLS_FN,
                params::BLUR_ROWS_FN,
                params::BLUR_MIX_FN,
            ],
        )?;
        let blur: [CudaFunction; 5] = composite
            .split_off(3)
            .try_into()
            .map_err(|_| "five blur kernels".to_string())?;
        let alpha = composite.remove(2);
        let mask = composite.remove(1);
        let mix = composite.remove(0);
        Ok(GpuKernels {
            stream,
            pre,
            post,
            mix,
            mask,
            alpha,
            blur,
        })
    }

    /// `edgemask_preprocess` from frame planes on the device into the tensor at device
    /// address `tensor` (`p.tensor_len()` values), queued on the stream.
    pub fn preprocess_to(
        &self,
        p: &PreParams,
        planes: &[CudaSlice<u8>; 3],
        tensor: u64,
    ) -> Result<(), String> {
        let mut launch = self.stream.launch_builder(&self.pre);
        launch
            .arg(p)
            .arg(&planes[0])
            .arg(&planes[1])
            .arg(&planes[2])
            .arg(&tensor);
        // SAFETY: the arguments match the kernel's signature (a device address is passed as
        // the 64-bit pointer it is); the planes hold the rows the parameters describe and
        // `tensor` holds `p.tensor_len()` values.
        unsafe { launch.launch(grid(p.tensor_w, p.tensor_h)) }
            .map(|_| ())
            .map_err(err("launching edgemask_preprocess"))
    }

    /// `edgemask_postprocess` from the network output at device address `output` into the
    /// mask, updating the smoothing `state`; `counts` is zeroed first. Queued on the stream.
    pub fn postprocess_to(
        &self,
        p: &PostParams,
        output: u64,
        state: &mut CudaSlice<f32>,
        mask: &mut CudaSlice<u8>,
        counts: &mut CudaSlice<u32>,
    ) -> Result<(), String> {
        self.stream
            .memset_zeros(counts)
            .map_err(err("clearing the counts"))?;
        let mut launch = self.stream.launch_builder(&self.post);
        launch.arg(p).arg(&output).arg(state).arg(mask).arg(counts);
        // SAFETY: as in `preprocess_to`; `output` holds `p.pixels * p.channels` values, the
        // state and mask `p.pixels` each, the counts two.
        unsafe { launch.launch(LaunchConfig::for_num_elems(p.pixels.max(1) as u32)) }
            .map(|_| ())
            .map_err(err("launching edgemask_postprocess"))
    }

    /// The mask-upscaling taps of planes of `p`'s size ([`params::taps`]), on the
    /// device.
    pub fn upload_taps(&self, p: &MixParams) -> Result<Taps, String> {
        let (xt, yt) = params::taps(p);
        let up = |t: &[u32]| self.stream.clone_htod(t).map_err(err("uploading taps"));
        Ok(Taps {
            size: (p.model_w, p.model_h, p.width, p.height),
            x: up(&xt)?,
            y: up(&yt)?,
        })
    }

    /// The device buffers of the blur steps for one plane of `plan`'s geometry.
    pub fn blur_buffers(&self, plan: &BlurPlan) -> Result<BlurBuffers, String> {
        let p = &plan.blur;
        let cells = (p.sw * p.sh) as usize;
        let n = p.bg.nchans as usize;
        let f32s = |len: usize| {
            self.stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(err("allocating the blur grid"))
        };
        let up = |t: &[u32]| self.stream.clone_htod(t).map_err(err("uploading grid taps"));
        Ok(BlurBuffers {
            geometry: (p.bg.width, p.bg.height, p.bg.pstride, p.bg.nchans),
            acc: f32s(cells * n)?,
            wsum: f32s(cells)?,
            tmp: f32s(cells * n)?,
            hrows: self
                .stream
                .alloc_zeros::<u16>((p.sh as usize * p.bg.width as usize * p.bg.pstride as usize).max(1))
                .map_err(err("allocating the background rows"))?,
            gx: up(&plan.gx)?,
            gy: up(&plan.gy)?,
        })
    }

    /// `edgemask_mix` over one plane on the device, towards `p.color` or the `target` plane.
    pub fn mix_on(
        &self,
        p: &MixParams,
        mask: &CudaSlice<u8>,
        taps: &Taps,
        plane: &mut CudaSlice<u8>,
        target: &CudaSlice<u8>,
    ) -> Result<(), String> {
        let mut launch = self.stream.launch_builder(&self.mix);
        launch
            .arg(p)
            .arg(mask)
            .arg(&taps.x)
            .arg(&taps.y)
            .arg(plane)
            .arg(target);
        // SAFETY: the arguments match the kernel's signature; every buffer is as large as
        // the parameters say the kernel reads or writes (taps of `p`'s size).
        unsafe { launch.launch(grid(p.width, p.height)) }
            .map(|_| ())
            .map_err(err("launching edgemask_mix"))
    }

    /// `edgemask_mask` on the device: the GRAY8 mask of one plane (`p.stride` bytes a row).
    pub fn mask_on(
        &self,
        p: &MixParams,
        mask: &CudaSlice<u8>,
        taps: &Taps,
        out: &mut CudaSlice<u8>,
    ) -> Result<(), String> {
        let mut launch = self.stream.launch_builder(&self.mask);
        launch.arg(p).arg(mask).arg(&taps.x).arg(&taps.y).arg(out);
        // SAFETY: as in `mix_on`.
        unsafe { launch.launch(grid(p.width, p.height)) }
            .map(|_| ())
            .map_err(err("launching edgemask_mask"))
    }

    /// `edgemask_alpha` on the device: RGBA rows of `p.out_stride` bytes from the frame's
    /// planes and the mask.
    pub fn alpha_on(
        &self,
        p: &AlphaParams,
        mask: &CudaSlice<u8>,
        taps: &Taps,
        planes: &[CudaSlice<u8>; 3],
        out: &mut CudaSlice<u8>,
    ) -> Result<(), String> {
        let mut launch = self.stream.launch_builder(&self.alpha);
        launch
            .arg(p)
            .arg(mask)
            .arg(&taps.x)
            .arg(&taps.y)
            .arg(&planes[0])
            .arg(&planes[1])
            .arg(&planes[2])
            .arg(out);
        // SAFETY: as in `mix_on`.
        unsafe { launch.launch(grid(p.mask.width, p.mask.height)) }
            .map(|_| ())
            .map_err(err("launching edgemask_alpha"))
    }

    /// The five `blur` kernels over one plane on the device (`mirror::blur::reference`): the
    /// plane mixed towards its blurred background.
    pub fn blur_on(
        &self,
        plan: &BlurPlan,
        bufs: &mut BlurBuffers,
        mask: &CudaSlice<u8>,
        taps: &Taps,
        plane: &mut CudaSlice<u8>,
    ) -> Result<(), String> {
        let p = &plan.blur;
        let lines = |count: i32| LaunchConfig::for_num_elems(count.max(1) as u32);
        let [grid_fn, rows_fn, cols_fn, up_fn, mix_fn] = &self.blur;
        let BlurBuffers {
            acc,
            wsum,
            tmp,
            hrows,
            gx,
            gy,
            ..
        } = bufs;
        let mut launch = self.stream.launch_builder(grid_fn);
        launch
            .arg(p)
            .arg(mask)
            .arg(&taps.x)
            .arg(&taps.y)
            .arg(&*plane)
            .arg(&mut *acc)
            .arg(&mut *wsum);
        // SAFETY (every launch below): the arguments match the kernel's signature; every
        // buffer is as large as the parameters say the kernel reads or writes.
        unsafe { launch.launch(grid(p.sw, p.sh)) }.map_err(err("launching edgemask_blur_grid"))?;
        for (b, data) in [(&plan.box_acc, &mut *acc), (&plan.box_wsum, &mut *wsum)] {
            for _ in 0..2 {
                let mut launch = self.stream.launch_builder(rows_fn);
                launch.arg(b).arg(&*data).arg(&mut *tmp);
                unsafe { launch.launch(lines(b.h * b.c)) }.map_err(err("launching edgemask_box_rows"))?;
                let mut launch = self.stream.launch_builder(cols_fn);
                launch.arg(b).arg(&*tmp).arg(&mut *data);
                unsafe { launch.launch(lines(b.w * b.c)) }.map_err(err("launching edgemask_box_cols"))?;
            }
        }
        let mut launch = self.stream.launch_builder(up_fn);
        launch.arg(p).arg(&*acc).arg(&*wsum).arg(&*gx).arg(&mut *hrows);
        unsafe { launch.launch(grid(p.bg.width, p.sh)) }.map_err(err("launching edgemask_blur_rows"))?;
        let mut launch = self.stream.launch_builder(mix_fn);
        launch
            .arg(&p.bg)
            .arg(mask)
            .arg(&taps.x)
            .arg(&taps.y)
            .arg(&*gy)
            .arg(&*hrows)
            .arg(plane);
        unsafe { launch.launch(grid(p.bg.width, p.bg.height)) }
            .map(|_| ())
            .map_err(err("launching edgemask_blur_mix"))
    }
}

/// Mask-upscaling taps on the device for planes of one size.
pub struct Taps {
    /// `(model_w, model_h, width, height)` they were made for.
    pub size: (i32, i32, i32, i32),
    x: CudaSlice<u32>,
    y: CudaSlice<u32>,
}

/// The blur steps' device buffers for one plane geometry.
pub struct BlurBuffers {
    /// `(width, height, pstride, nchans)` they were made for.
    pub geometry: (i32, i32, i32, i32),
    acc: CudaSlice<f32>,
    wsum: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
    hrows: CudaSlice<u16>,
    gx: CudaSlice<u32>,
    gy: CudaSlice<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unetmask::cpu::composite::{Weights, planes_of};
    use crate::unetmask::frame::PixelFormat;
    use crate::unetmask::frame::{Frame, plane_bytes};
    use crate::unetmask::gpu::emulation::{Contraction, KernelRunner, check_kernels};
    use crate::unetmask::model::device as gpu;
    use crate::unetmask::test_bytes::bytes;
    use cudarc::driver::DevicePtr;

    /// Host data to and from the device, for the checks.
    impl GpuKernels {
        fn upload(&self, data: &[u8]) -> Result<CudaSlice<u8>, String> {
            // A zero-length buffer cannot be allocated; unused planes get one byte.
            let data = if data.is_empty() { &[0u8][..] } else { data };
            self.stream.clone_htod(data).map_err(err("uploading"))
        }

        /// The used bytes of each plane of `frame` ([`crate::unetmask::frame::plane_bytes`]), on the device.
        fn upload_frame(&self, frame: &Frame<'_>) -> Result<[CudaSlice<u8>; 3], String> {
            let used = plane_bytes(frame);
            let [a, b, c] = [0, 1, 2].map(|i| self.upload(&frame.planes[i][..used[i]]));
            Ok([a?, b?, c?])
        }

        /// The device address of `slice`, for a launch argument that may also be a buffer of
        /// ONNX Runtime's. Everything here runs on the one stream, so no event is needed.
        fn address<T>(&self, slice: &CudaSlice<T>) -> u64 {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        }
    }

    /// The kernels with host data in and out: uploads, the device-memory launches the
    /// element uses, downloads.
    impl KernelRunner for GpuKernels {
        /// `edgemask_preprocess` over `frame`: the tensor, downloaded.
        fn preprocess(&self, p: &PreParams, frame: &Frame<'_>) -> Result<Vec<f32>, String> {
            let p = PreParams {
                strides: frame.strides.map(|s| s as i32),
                ..*p
            };
            let planes = self.upload_frame(frame)?;
            let out = self
                .stream
                .alloc_zeros::<f32>(p.tensor_len())
                .map_err(err("allocating the tensor"))?;
            self.preprocess_to(&p, &planes, self.address(&out))?;
            self.stream
                .clone_dtoh(&out)
                .map_err(err("downloading the tensor"))
        }

        /// `edgemask_postprocess` over one output tensor; `state` is updated in place.
        /// Returns the mask and the counts (above the threshold, in the uncertainty band).
        fn postprocess(
            &self,
            p: &PostParams,
            out: &[f32],
            state: &mut Vec<f32>,
        ) -> Result<(Vec<u8>, [u32; 2]), String> {
            let n = p.pixels as usize;
            let input = self.stream.clone_htod(out).map_err(err("uploading the output"))?;
            let mut st = self
                .stream
                .clone_htod(&state[..n])
                .map_err(err("uploading the state"))?;
            let mut mask = self
                .stream
                .alloc_zeros::<u8>(n)
                .map_err(err("allocating the mask"))?;
            let mut counts = self
                .stream
                .alloc_zeros::<u32>(2)
                .map_err(err("allocating the counts"))?;
            self.postprocess_to(p, self.address(&input), &mut st, &mut mask, &mut counts)?;
            *state = self
                .stream
                .clone_dtoh(&st)
                .map_err(err("downloading the state"))?;
            let c = self
                .stream
                .clone_dtoh(&counts)
                .map_err(err("downloading the counts"))?;
            let mask = self
                .stream
                .clone_dtoh(&mask)
                .map_err(err("downloading the mask"))?;
            Ok((mask, [c[0], c[1]]))
        }

        /// `edgemask_mix` over one plane from the host; returns the mixed plane.
        fn mix(&self, p: &MixParams, mask: &[u8], plane: &[u8], target: &[u8]) -> Result<Vec<u8>, String> {
            let m = self.upload(mask)?;
            let taps = self.upload_taps(p)?;
            let mut pl = self.upload(plane)?;
            let tg = self.upload(target)?;
            self.mix_on(p, &m, &taps, &mut pl, &tg)?;
            self.stream.clone_dtoh(&pl).map_err(err("downloading the plane"))
        }

        /// `edgemask_mask` from the host: the GRAY8 mask of one plane (`p.stride` bytes a row).
        fn mask(&self, p: &MixParams, mask: &[u8]) -> Result<Vec<u8>, String> {
            let m = self.upload(mask)?;
            let taps = self.upload_taps(p)?;
            let mut out = self
                .stream
                .alloc_zeros::<u8>(p.stride as usize * p.height as usize)
                .map_err(err("allocating the mask"))?;
            self.mask_on(p, &m, &taps, &mut out)?;
            self.stream.clone_dtoh(&out).map_err(err("downloading the mask"))
        }

        /// `edgemask_alpha` over `frame` from the host: RGBA rows of `p.out_stride` bytes.
        fn alpha(&self, p: &AlphaParams, mask: &[u8], frame: &Frame<'_>) -> Result<Vec<u8>, String> {
            let m = self.upload(mask)?;
            let taps = self.upload_taps(&p.mask)?;
            let planes = self.upload_frame(frame)?;
            let mut out = self
                .stream
                .alloc_zeros::<u8>(p.out_stride as usize * p.mask.height as usize)
                .map_err(err("allocating the RGBA frame"))?;
            self.alpha_on(p, &m, &taps, &planes, &mut out)?;
            self.stream
                .clone_dtoh(&out)
                .map_err(err("downloading the RGBA frame"))
        }

        /// The `blur` kernels over one plane from the host; returns the plane mixed towards its
        /// blurred background.
        fn blur(&self, plan: &BlurPlan, mask: &[u8], plane: &[u8]) -> Result<Vec<u8>, String> {
            let m = self.upload(mask)?;
            let taps = self.upload_taps(&plan.blur.bg)?;
            let mut bufs = self.blur_buffers(plan)?;
            let mut pl = self.upload(plane)?;
            self.blur_on(plan, &mut bufs, &m, &taps, &mut pl)?;
            self.stream.clone_dtoh(&pl).map_err(err("downloading the plane"))
        }
    }

    /// The stream a session is opened on exists only for a device that does: without a
    /// driver or past the last device `None`, rather than a panic in the driver loader
    /// (this machine has no GPU; a GPU host checks the other side).
    #[test]
    fn a_session_stream_is_made_only_for_a_device_that_exists() {
        let count = gpu::device_count().unwrap_or(0);
        assert!(stream_on(count).is_none());
        assert!(stream_on(u32::MAX).is_none());
        if count > 0 {
            let s = stream_on(count - 1).expect("a stream on the last GPU");
            assert_eq!(s.context().ordinal(), count as usize - 1);
        }
    }

    /// The kernels on a real GPU against their CPU mirrors (`check_kernels`, which the
    /// kernel emulation also passes everywhere), then 10,000 launches without losing
    /// device memory. Skipped, saying so, without a GPU.
    #[test]
    fn kernels_on_the_gpu_match_their_cpu_mirrors() {
        if let Err(why) = gpu::device_count() {
            eprintln!("skipped: no GPU ({why})");
            return;
        }
        let k = GpuKernels::new(0).expect("kernels load on GPU 0");
        // NVRTC fuses multiply-adds by default (`--fmad=true`).
        check_kernels(&k, Contraction::Fused);
        let free = || {
            k.stream
                .context()
                .mem_get_info()
                .map(|(f, _)| f)
                .expect("cuMemGetInfo")
        };
        let before = free();
        let g = &planes_of(PixelFormat::Rgba, 640, 360)[0];
        let plane = bytes(640 * 360 * 4, 1);
        let mask = bytes(256 * 144, 2);
        let p = MixParams::new((256, 144), g, 640 * 4, &Weights::mask(None), &[1, 2, 3], None);
        for _ in 0..10_000 {
            k.mix(&p, &mask, &plane, &[]).expect("mix");
        }
        let after = free();
        assert!(
            after + (16 << 20) >= before,
            "device memory fell from {before} to {after} bytes"
        );
    }
}
