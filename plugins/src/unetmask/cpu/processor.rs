// SPDX-License-Identifier: MPL-2.0

//! One stream on the CPU: frame to tensor, the model's output to a smoothed 8-bit mask, and
//! the mask onto the frame. The element's per-frame code reaches it through
//! [`Processor`](crate::unetmask::processor::Processor).

use std::time::{Duration, Instant};

use crate::unetmask::cpu::composite::{
    self, BlurPlane, Look, MaskScaler, PlaneGeom, Scratch, Target, Weights,
};
use crate::unetmask::cpu::postprocess::{self, MaskStats, Smoother};
use crate::unetmask::cpu::preprocess::{ResizeFilter, TensorBuilder};
use crate::unetmask::frame::{Frame, FrameSpec, YuvMatrix};
use crate::unetmask::model::contract::TensorSpec;
use crate::unetmask::model::engine::{Engine, EngineError, Prepared};
use crate::unetmask::stages::StageTimes;

pub struct CpuProcessor {
    prepared: Prepared,
    pre: TensorBuilder,
    input: Vec<f32>,
    /// Pipelined: the next frame's tensor, prepared while `input` is inferred.
    input_next: Vec<f32>,
    prob: Vec<f32>,
    smoother: Smoother,
    /// Mask upscalers: [luma/packed, chroma].
    scalers: Vec<MaskScaler>,
    blur: Vec<BlurPlane>,
    scratch: Scratch,
}

impl CpuProcessor {
    /// The buffers and tables for frames of `frame` into the model's `tensor` (`prepared`
    /// by the engine); `pipelined` adds the second input tensor that mode needs.
    pub fn new(
        frame: &FrameSpec,
        tensor: &TensorSpec,
        filter: ResizeFilter,
        prepared: &Prepared,
        pipelined: bool,
    ) -> Self {
        let (w, h) = (frame.width, frame.height);
        let (mw, mh) = (prepared.output_size.0 as usize, prepared.output_size.1 as usize);
        let pre = TensorBuilder::new(filter, frame, tensor);
        let planes = composite::planes_of(frame.format, w, h);
        let mut scalers = vec![MaskScaler::new((mw, mh), (w, h))];
        if let Some(c) = planes.iter().find(|p| p.chroma) {
            scalers.push(MaskScaler::new((mw, mh), (c.width, c.height)));
        }
        Self {
            prepared: *prepared,
            input: vec![0.0; pre.tensor_len()],
            input_next: if pipelined {
                vec![0.0; pre.tensor_len()]
            } else {
                Vec::new()
            },
            pre,
            prob: vec![0.0; mw * mh],
            smoother: Smoother::default(),
            scalers,
            blur: planes.iter().map(|_| BlurPlane::default()).collect(),
            scratch: Scratch::default(),
        }
    }

    /// Forgets the temporal-smoothing history (DISCONT, flush).
    pub fn reset(&mut self) {
        self.smoother.reset();
    }

    /// A fresh mask for `frame` into `mask`: pre-processing, inference, post-processing.
    pub fn make_mask(
        &mut self,
        engine: &mut Engine,
        frame: &Frame<'_>,
        smoothing: f32,
        threshold: Option<f32>,
        mask: &mut Vec<u8>,
    ) -> Result<(MaskStats, StageTimes), EngineError> {
        let pre = self.preprocess(frame);
        let infer = self.infer(engine)?;
        let (stats, post) = self.finish(smoothing, threshold, mask);
        Ok((stats, StageTimes { pre, infer, post }))
    }

    /// Writes `frame`'s tensor into the current input.
    pub fn preprocess(&mut self, frame: &Frame<'_>) -> Duration {
        let t = Instant::now();
        self.pre.run(frame, &mut self.input);
        t.elapsed()
    }

    /// Runs the model on the current input, leaving the person probability.
    pub fn infer(&mut self, engine: &mut Engine) -> Result<Duration, EngineError> {
        let t = Instant::now();
        infer(engine, &self.prepared, &self.input, &mut self.prob)?;
        Ok(t.elapsed())
    }

    /// Pipelined: infers the current input on `worker` while `frame`'s tensor is written
    /// into the next one here, then makes that the current input. Returns the times of the
    /// pre-processing and of the inference.
    pub fn infer_while_preprocessing(
        &mut self,
        engine: &mut Engine,
        worker: &rayon::ThreadPool,
        frame: &Frame<'_>,
    ) -> Result<(Duration, Duration), EngineError> {
        let Self {
            prepared,
            pre,
            input,
            input_next,
            prob,
            ..
        } = self;
        let t0 = Instant::now();
        let mut done = None;
        let mut pre_time = Duration::ZERO;
        worker.in_place_scope(|s| {
            s.spawn(|_| {
                let t = Instant::now();
                let r = infer(engine, prepared, input, prob);
                done = Some((r, t.elapsed()));
            });
            pre.run(frame, input_next);
            pre_time = t0.elapsed();
        });
        let (result, infer_time) = done.expect("the scope ran the inference");
        result?;
        std::mem::swap(input, input_next);
        Ok((pre_time, infer_time))
    }

    /// After inference: smoothing, then the 8-bit mask (at model resolution) into `mask`.
    pub fn finish(
        &mut self,
        smoothing: f32,
        threshold: Option<f32>,
        mask: &mut Vec<u8>,
    ) -> (MaskStats, Duration) {
        let t = Instant::now();
        self.smoother.apply(&mut self.prob, smoothing);
        mask.resize(self.prob.len(), 0);
        let stats = postprocess::quantize(&self.prob, threshold, mask);
        (stats, t.elapsed())
    }

    /// `overlay`, `replace` or `blur` on `planes` (rows `strides` apart, laid out as
    /// `geoms`) with `mask`.
    pub fn composite(
        &mut self,
        geoms: &[PlaneGeom],
        planes: &mut [&mut [u8]],
        strides: [usize; 3],
        mask: &[u8],
        look: &Look<'_>,
    ) {
        for (p, geom) in geoms.iter().enumerate() {
            let stride = strides[p];
            let scaler = &mut self.scalers[geom.chroma as usize];
            if let Some(radius) = look.blur_radius {
                self.blur[p].compute(
                    &planes[p][..],
                    stride,
                    geom,
                    scaler,
                    mask,
                    &look.mask_weights,
                    radius,
                );
            }
            let target = match (look.blur_radius, look.picture) {
                (Some(_), _) => Target::Blurred(&self.blur[p]),
                (None, Some(img)) => Target::Plane {
                    data: &img[p],
                    stride: geom.width * geom.pstride,
                },
                (None, None) => Target::Color(&look.colors[p]),
            };
            composite::mix_plane(
                planes[p],
                stride,
                geom,
                scaler,
                mask,
                &look.weights,
                target,
                &mut self.scratch,
            );
        }
    }

    /// `mask` mode: the GRAY8 mask, `height` rows `stride` apart, into `out`.
    pub fn render_mask(&mut self, mask: &[u8], lut: &Weights, out: &mut [u8], stride: usize, height: usize) {
        composite::write_mask(out, stride, height, &mut self.scalers[0], mask, lut);
    }

    /// `alpha` mode: `frame` as RGBA with the mask as alpha into `out` (rows `stride` apart).
    pub fn render_alpha(
        &mut self,
        frame: &Frame<'_>,
        matrix: YuvMatrix,
        mask: &[u8],
        lut: &Weights,
        out: &mut [u8],
        stride: usize,
    ) {
        composite::write_alpha(
            frame,
            matrix,
            out,
            stride,
            &mut self.scalers[0],
            mask,
            lut,
            &mut self.scratch,
        );
    }
}

/// Runs the model on `input` and leaves the person probability in `prob`.
fn infer(
    engine: &mut Engine,
    prepared: &Prepared,
    input: &[f32],
    prob: &mut [f32],
) -> Result<(), EngineError> {
    let spec = prepared.spec;
    engine
        .run(input, prepared.input_size, |_, out| {
            if out.len() == prob.len() * spec.channels {
                postprocess::person_probability(out, &spec, prob);
                true
            } else {
                false
            }
        })?
        .then_some(())
        .ok_or_else(|| {
            EngineError::Inference(
                "the model's output size changed between frames; unetmask needs a fixed output size per \
                 input size"
                    .into(),
            )
        })
}
