//! Everything that touches ONNX Runtime (`ort`): finding and loading the library, the
//! session, execution providers, the probe/warm-up run and inference. The rest of the
//! element sees plain slices and the [`Contract`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, ValueType};

use crate::unetmask::model::contract::OutputSpec;
use crate::unetmask::model::contract::{
    self, Contract, ContractError, InputSize, OutputLayout, Overrides, TensorInfo,
};
pub use crate::unetmask::model::spin::Spin;

/// Where the element runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA when a GPU and ONNX Runtime's CUDA provider are present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(u32),
    TensorRt(u32),
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let index = |rest: &str| -> Result<u32, String> {
            if rest.is_empty() {
                return Ok(0);
            }
            rest.strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("device '{s}' is not understood: use auto, cpu, cuda:N or tensorrt:N"))
        };
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            _ if s.starts_with("cuda") => Ok(Self::Cuda(index(&s[4..])?)),
            _ if s.starts_with("tensorrt") => Ok(Self::TensorRt(index(&s[8..])?)),
            _ => Err(format!(
                "device '{s}' is not understood: use auto, cpu, cuda:N or tensorrt:N"
            )),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::TensorRt(n) => write!(f, "tensorrt:{n}"),
        }
    }
}

/// Everything needed to open a model.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub model: PathBuf,
    /// The element's `onnxruntime-library` property.
    pub library: Option<PathBuf>,
    pub device: DeviceRequest,
    /// Intra-op threads; 0 lets ONNX Runtime decide.
    pub threads: u32,
    /// When ONNX Runtime's worker threads may busy-wait for work.
    pub spin: Spin,
    pub overrides: Overrides,
}

/// Why a model could not be opened or run. Messages name the problem and the fix.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineError {
    NoModel,
    ModelMissing(PathBuf),
    ModelInvalid(PathBuf, String),
    LibraryNotFound(Vec<String>),
    Contract(ContractError),
    Provider(String),
    Inference(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoModel => f.write_str("no model set: set the model property to the path of an .onnx file"),
            Self::ModelMissing(p) => write!(
                f,
                "model file '{}' does not exist or is not a file: set model= to the path of an .onnx file",
                p.display()
            ),
            Self::ModelInvalid(p, e) => write!(
                f,
                "'{}' is not a valid ONNX model ({e}); export the network with torch.onnx.export \
                 (or tf2onnx) and point model= at the .onnx file",
                p.display()
            ),
            Self::LibraryNotFound(tried) => write!(
                f,
                "ONNX Runtime library (libonnxruntime.so, version 1.31 or newer) not found. Looked at: {}. \
                 Run scripts/setup.sh, or point at the library with ORT_DYLIB_PATH=/path/to/libonnxruntime.so \
                 or the element's onnxruntime-library property",
                tried.join("; ")
            ),
            Self::Contract(e) => write!(f, "model cannot be served: {e}"),
            Self::Provider(e) => f.write_str(e),
            Self::Inference(e) => write!(f, "inference failed: {e}"),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<ContractError> for EngineError {
    fn from(e: ContractError) -> Self {
        Self::Contract(e)
    }
}

/// The project-local library that `scripts/setup.sh` installs.
pub fn project_library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/onnxruntime/lib/libonnxruntime.so")
}

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per process).
static ENVIRONMENT: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

fn load_environment(path: &Path) -> Result<Environment, String> {
    let builder = ort::init_from(path).map_err(|e| e.to_string())?;
    builder.with_name("unetmask").build().map_err(|e| e.to_string())
}

/// Loads ONNX Runtime once per process, in this order: the element property, then
/// `ORT_DYLIB_PATH`, then the project-local `.deps/onnxruntime/lib`, then the system's
/// library search path. A path that was set explicitly and fails is an error, not a fallback.
pub fn environment(property: Option<&Path>) -> Result<(Environment, PathBuf), EngineError> {
    let mut guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((env, path)) = guard.as_ref() {
        return Ok((env.clone(), path.clone()));
    }
    let from_env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let explicit = match (property, from_env) {
        (Some(p), _) => Some((p.to_path_buf(), "property onnxruntime-library")),
        (None, Some(p)) => Some((p, "ORT_DYLIB_PATH")),
        (None, None) => None,
    };
    let mut tried = Vec::new();
    let candidates: Vec<(PathBuf, &str)> = match explicit {
        Some(c) => vec![c],
        None => {
            tried.push("property onnxruntime-library (unset)".to_string());
            tried.push("ORT_DYLIB_PATH (unset)".to_string());
            vec![
                (project_library(), "project-local"),
                (PathBuf::from("libonnxruntime.so.1"), "system library path"),
                (PathBuf::from("libonnxruntime.so"), "system library path"),
            ]
        }
    };
    for (path, origin) in candidates {
        if path.is_absolute() && !path.exists() {
            tried.push(format!("{origin} {} (missing)", path.display()));
            continue;
        }
        match load_environment(&path) {
            Ok(env) => {
                *guard = Some((env.clone(), path.clone()));
                return Ok((env, path));
            }
            Err(e) => tried.push(format!("{origin} {} ({e})", path.display())),
        }
    }
    Err(EngineError::LibraryNotFound(tried))
}

fn tensor_info(name: &str, dtype: &ValueType) -> TensorInfo {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            elem: Some(ty.to_string()),
            shape: shape.to_vec(),
        },
        _ => TensorInfo {
            name: name.to_string(),
            elem: None,
            shape: Vec::new(),
        },
    }
}

/// A CUDA stream that ONNX Runtime runs the model on instead of its own (feature `cuda`):
/// the element's kernels queue on it too, so a frame's pre-processing, inference and
/// post-processing follow each other on the device with one host synchronisation.
#[cfg(feature = "cuda")]
pub type SharedStream = std::sync::Arc<cudarc::driver::CudaStream>;
/// Without the `cuda` feature there is no stream to share.
#[cfg(not(feature = "cuda"))]
pub enum SharedStream {}

/// Makes the stream for a session on CUDA device N, or `None` to let ONNX Runtime use its
/// own.
pub type StreamOn = dyn Fn(u32) -> Option<SharedStream>;

/// An opened model, ready to run.
pub struct Engine {
    session: Session,
    pub contract: Contract,
    /// Execution provider in use: `cpu`, `cuda:N` or `tensorrt:N`.
    pub provider: String,
    pub library: PathBuf,
    /// The CUDA device the session runs on (`cuda:N`, `tensorrt:N`), when it runs on one.
    pub cuda_device: Option<u32>,
    overrides: Overrides,
    prepared: Option<Prepared>,
    /// The stream the session runs on, when it was opened on one; declared after
    /// `session` so that it outlives it.
    stream: Option<SharedStream>,
}

/// What the probe run established for one input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prepared {
    pub input_size: (u32, u32),
    pub output_size: (u32, u32),
    pub spec: OutputSpec,
    /// Median time of one inference during warm-up.
    pub inference_time: Duration,
}

impl Engine {
    /// Opens the model: library, session (on the requested device) and contract detection.
    pub fn open(cfg: &EngineConfig) -> Result<Engine, EngineError> {
        Self::open_on(cfg, &|_| None)
    }

    /// The stream the session runs on, when it was opened on one.
    pub fn stream(&self) -> Option<&SharedStream> {
        self.stream.as_ref()
    }

    /// As [`Engine::open`], with ONNX Runtime's CUDA provider running on the stream that
    /// `stream_on` makes for the session's device, asked only once a CUDA session is about
    /// to be opened there ([`Engine::shares`] tells whether one was).
    pub fn open_on(cfg: &EngineConfig, stream_on: &StreamOn) -> Result<Engine, EngineError> {
        if cfg.model.as_os_str().is_empty() {
            return Err(EngineError::NoModel);
        }
        if !cfg.model.is_file() {
            return Err(EngineError::ModelMissing(cfg.model.clone()));
        }
        let (env, library) = environment(cfg.library.as_deref())?;
        let (session, provider, stream) = providers::open_session(&env, cfg, stream_on)?;
        let inputs: Vec<TensorInfo> = session
            .inputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        let outputs: Vec<TensorInfo> = session
            .outputs()
            .iter()
            .map(|o| tensor_info(o.name(), o.dtype()))
            .collect();
        let contract = contract::detect(&inputs, &outputs, &cfg.overrides)?;
        let cuda_device = provider.split_once(':').and_then(|(_, n)| n.parse().ok());
        Ok(Engine {
            session,
            contract,
            provider,
            library,
            cuda_device,
            overrides: cfg.overrides.clone(),
            prepared: None,
            stream,
        })
    }

    /// The model input size for frames of `frame` size.
    pub fn input_size_for(&self, frame: (u32, u32)) -> (u32, u32) {
        match self.contract.input_size {
            InputSize::Fixed(w, h) => (w, h),
            InputSize::Dynamic => contract::dynamic_input_size(frame.0, frame.1, 320),
        }
    }

    fn input_shape(&self, (w, h): (u32, u32)) -> [i64; 4] {
        match self.contract.layout {
            contract::Layout::Nchw => [1, 3, h as i64, w as i64],
            contract::Layout::Nhwc => [1, h as i64, w as i64, 3],
        }
    }

    /// Probes and warms up the model at `input_size`: learns the output size and activation,
    /// and measures the inference time. Cached per input size.
    pub fn prepare(&mut self, input_size: (u32, u32)) -> Result<Prepared, EngineError> {
        if let Some(p) = self.prepared.filter(|p| p.input_size == input_size) {
            return Ok(p);
        }
        let n = (input_size.0 * input_size.1 * 3) as usize;
        // Two probes in the normalised value range: flat mid-grey and a smooth pattern.
        let grey = vec![0.5f32; n];
        let pattern: Vec<f32> = (0..n).map(|i| (i as f32 * 0.013).sin() * 0.5 + 0.5).collect();
        let mut probe = Vec::new();
        let mut shape = Vec::new();
        let mut times = Vec::new();
        for input in [&grey, &pattern, &grey] {
            let t = Instant::now();
            let (s, data) = self.run(input, input_size, |s, d| (s.to_vec(), d.to_vec()))?;
            times.push(t.elapsed());
            probe.extend(data);
            shape = s;
        }
        times.sort();
        let (layout, channels, oh, ow) = match (shape.len(), self.contract.output_layout) {
            (3, _) => (OutputLayout::ChannelsFirst, 1, shape[1], shape[2]),
            (4, OutputLayout::ChannelsFirst) => (OutputLayout::ChannelsFirst, shape[1], shape[2], shape[3]),
            (4, OutputLayout::ChannelsLast) => (OutputLayout::ChannelsLast, shape[3], shape[1], shape[2]),
            _ => {
                return Err(EngineError::Inference(format!(
                    "the model returned an output of shape {shape:?}; unetmask reads [1,C,H,W], [1,H,W,C] or [1,H,W]"
                )));
            }
        };
        let channels = channels.max(1) as u32;
        let person = contract::person_class(channels, self.overrides.person_class)?;
        let activation = contract::detect_activation(self.overrides.activation, channels, &probe, layout)?;
        let prepared = Prepared {
            input_size,
            output_size: (ow as u32, oh as u32),
            spec: OutputSpec {
                layout,
                channels: channels as usize,
                person: person as usize,
                activation,
            },
            inference_time: times[times.len() / 2],
        };
        self.prepared = Some(prepared);
        Ok(prepared)
    }

    /// Runs the model on a ready input tensor (`input_size`, the contract's layout) and hands
    /// the output shape and values to `f`.
    pub fn run<R>(
        &mut self,
        input: &[f32],
        input_size: (u32, u32),
        f: impl FnOnce(&[i64], &[f32]) -> R,
    ) -> Result<R, EngineError> {
        let shape = self.input_shape(input_size);
        let tensor =
            TensorRef::from_array_view((shape, input)).map_err(|e| EngineError::Inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let value = outputs.get(self.contract.output_name.as_str()).ok_or_else(|| {
            EngineError::Inference(format!("output '{}' missing", self.contract.output_name))
        })?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        Ok(f(shape, data))
    }
}

/// The model's input and output in GPU memory (feature `cuda`): ONNX Runtime reads the
/// input tensor from and writes the output into device memory through an IoBinding, so the
/// GPU kernels fill the one and read the other without a round trip through the host.
#[cfg(feature = "cuda")]
pub struct DeviceIo {
    binding: ort::session::IoBinding,
    /// Allocated by the session's CUDA allocator, rewritten in place per frame.
    input: ort::value::Tensor<f32>,
    /// The last run's output, kept alive until the next run replaces it.
    output: Option<ort::value::DynTensor>,
    /// On a shared stream: runs that return once queued, not once finished (the caller's
    /// next work on the stream is ordered after them).
    queued: Option<ort::session::RunOptions>,
    /// Device address of the input tensor: `input_len` `f32` values in the contract's layout.
    pub input_ptr: u64,
    pub input_len: usize,
}

#[cfg(feature = "cuda")]
impl Engine {
    /// Whether the session runs on `stream`: work queued there after a run is ordered
    /// after the run's kernels.
    pub fn shares(&self, stream: &SharedStream) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| std::sync::Arc::ptr_eq(s, stream))
    }

    /// Allocates the input tensor for `input_size` on the session's GPU and binds it, with
    /// the output bound to the same GPU. Fails when the session does not run on CUDA.
    pub fn bind_device(&self, input_size: (u32, u32)) -> Result<DeviceIo, EngineError> {
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
        let n = self.cuda_device.ok_or_else(|| {
            EngineError::Provider(format!(
                "the session runs on {}, not on a CUDA device",
                self.provider
            ))
        })?;
        let err = |what: &'static str| move |e: ort::Error| EngineError::Provider(format!("{what}: {e}"));
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            n as i32,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(err("describing CUDA memory"))?;
        let allocator =
            Allocator::new(&self.session, info.clone()).map_err(err("the session's CUDA allocator"))?;
        let mut input = ort::value::Tensor::<f32>::new(&allocator, self.input_shape(input_size))
            .map_err(err("allocating the input tensor on the GPU"))?;
        let input_ptr = input.data_ptr_mut() as u64;
        let input_len = (input_size.0 * input_size.1 * 3) as usize;
        // The input is bound by each run (`run_bound`).
        let mut binding = self
            .session
            .create_binding()
            .map_err(err("creating the IoBinding"))?;
        binding
            .bind_output_to_device(self.contract.output_name.as_str(), &info)
            .map_err(err("binding the output to the GPU"))?;
        let queued = match &self.stream {
            Some(_) => {
                let mut o = ort::session::RunOptions::new().map_err(err("creating run options"))?;
                o.disable_device_sync()
                    .map_err(err("asking for runs that do not wait for the GPU"))?;
                Some(o)
            }
            None => None,
        };
        Ok(DeviceIo {
            binding,
            input,
            output: None,
            queued,
            input_ptr,
            input_len,
        })
    }

    /// Runs the model on the bound input (written on the device: on a shared stream, queued
    /// there before this call; otherwise finished). Returns the device address of the
    /// output and its number of `f32` values, valid until the next run: on a shared stream
    /// the output is complete for work queued after this call, otherwise it is complete now.
    pub fn run_bound(&mut self, io: &mut DeviceIo) -> Result<(u64, usize), EngineError> {
        let inference = |e: ort::Error| EngineError::Inference(e.to_string());
        io.output = None;
        // Bound again each run: on the session's device that is a reference, not a copy,
        // and where ONNX Runtime wants the input elsewhere it copies at binding time, so a
        // binding made once would keep feeding it the first frame.
        io.binding
            .bind_input(self.contract.input_name.as_str(), &io.input)
            .map_err(inference)?;
        let mut outputs = match &io.queued {
            Some(o) => self.session.run_binding_with_options(&io.binding, o),
            None => self.session.run_binding(&io.binding),
        }
        .map_err(inference)?;
        let name = self.contract.output_name.as_str();
        let value = outputs
            .remove(name)
            .ok_or_else(|| EngineError::Inference(format!("output '{name}' missing")))?;
        let tensor = value
            .downcast::<ort::value::DynTensorValueType>()
            .map_err(inference)?;
        if *tensor.data_type() != ort::value::TensorElementType::Float32 {
            return Err(EngineError::Inference(format!(
                "output '{name}' is {}, not float32",
                tensor.data_type()
            )));
        }
        let len = tensor.shape().num_elements();
        let ptr = tensor.data_ptr() as u64;
        io.output = Some(tensor);
        Ok((ptr, len))
    }
}

/// Execution-provider selection.
mod providers {
    use super::*;

    fn builder(
        env: &Environment,
        cfg: &EngineConfig,
    ) -> Result<ort::session::builder::SessionBuilder, EngineError> {
        let err = |e: ort::Error<_>| EngineError::Inference(e.to_string());
        let mut b = Session::builder(env)
            .map_err(|e| EngineError::Inference(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(err)?;
        if cfg.threads > 0 {
            b = b.with_intra_threads(cfg.threads as usize).map_err(err)?;
        }
        for (key, value) in cfg.spin.config_entries() {
            b = b.with_config_entry(key, value).map_err(err)?;
        }
        Ok(b)
    }

    pub(super) fn commit(
        mut b: ort::session::builder::SessionBuilder,
        model: &Path,
    ) -> Result<Session, EngineError> {
        b.commit_from_file(model).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("rotobuf") || msg.contains("INVALID_PROTOBUF") || msg.contains("INVALID_GRAPH") {
                EngineError::ModelInvalid(model.to_path_buf(), msg)
            } else if msg.contains("EP") || msg.contains("xecution provider") || msg.contains("CUDA") {
                EngineError::Provider(msg)
            } else {
                EngineError::ModelInvalid(model.to_path_buf(), msg)
            }
        })
    }

    /// The session, its provider's name and the stream it runs on (when it runs on one).
    type Opened = (Session, String, Option<SharedStream>);

    #[cfg(not(feature = "cuda"))]
    pub(super) fn open_session(
        env: &Environment,
        cfg: &EngineConfig,
        _stream_on: &StreamOn,
    ) -> Result<Opened, EngineError> {
        match cfg.device {
            DeviceRequest::Auto | DeviceRequest::Cpu => {
                Ok((commit(builder(env, cfg)?, &cfg.model)?, "cpu".to_string(), None))
            }
            d => Err(EngineError::Provider(format!(
                "device={d} asks for a GPU, but this build of unetmask has no CUDA support: rebuild the plugin \
                 with `cargo build --release -p gst-plugin-unetmask --features cuda` and install onnxruntime-gpu \
                 (EDGEMASK_GPU=1 scripts/setup.sh), or use device=cpu"
            ))),
        }
    }

    #[cfg(feature = "cuda")]
    pub(super) fn open_session(
        env: &Environment,
        cfg: &EngineConfig,
        stream_on: &StreamOn,
    ) -> Result<Opened, EngineError> {
        use crate::unetmask::model::device as gpu;
        use ort::ep::ExecutionProvider;
        let cpu = || -> Result<Opened, EngineError> {
            Ok((commit(builder(env, cfg)?, &cfg.model)?, "cpu".to_string(), None))
        };
        let cuda_provider = ort::ep::CUDA::is_available().unwrap_or(false);
        let gpu = |n: u32, what: &str| -> Result<(), EngineError> {
            if !cuda_provider {
                return Err(EngineError::Provider(format!(
                    "device={what}: the ONNX Runtime library in use has no CUDA execution provider; install \
                     onnxruntime-gpu (EDGEMASK_GPU=1 scripts/setup.sh) or use device=cpu"
                )));
            }
            let count =
                gpu::device_count().map_err(|e| EngineError::Provider(format!("device={what}: {e}")))?;
            if n >= count {
                return Err(EngineError::Provider(format!(
                    "device={what}: there is no CUDA device {n} (found {count}); use cuda:0..cuda:{}",
                    count.saturating_sub(1)
                )));
            }
            Ok(())
        };
        let with_cuda = |n: u32| -> Result<Opened, EngineError> {
            preload_cuda_runtime();
            let shared = stream_on(n);
            let ep = cuda_ep(n, shared.as_ref()).build().error_on_failure();
            let b = builder(env, cfg)?
                .with_execution_providers([ep])
                .map_err(|e| EngineError::Provider(e.to_string()))?;
            Ok((commit(b, &cfg.model)?, format!("cuda:{n}"), shared))
        };
        match cfg.device {
            DeviceRequest::Cpu => cpu(),
            DeviceRequest::Cuda(n) => {
                gpu(n, &cfg.device.to_string())?;
                with_cuda(n)
            }
            DeviceRequest::TensorRt(n) => {
                gpu(n, &cfg.device.to_string())?;
                tensorrt(env, cfg, n, stream_on(n))
            }
            DeviceRequest::Auto => match gpu(0, "auto") {
                Ok(()) => with_cuda(0).or_else(|e| {
                    gpu::log_fallback(&format!("CUDA session failed ({e})"));
                    cpu()
                }),
                Err(e) => {
                    gpu::log_fallback(&e.to_string());
                    cpu()
                }
            },
        }
    }

    /// The CUDA and cuDNN libraries of ONNX Runtime's CUDA provider: loaded once from
    /// `EDGEMASK_CUDA_LIBS` or the project-local `.deps/cuda/lib` (`scripts/setup.sh` links
    /// the wheels' libraries there on GPU hosts), so that the provider finds them without
    /// `LD_LIBRARY_PATH`. Without that folder the provider searches the library path itself.
    #[cfg(feature = "cuda")]
    fn preload_cuda_runtime() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let dir = std::env::var_os("EDGEMASK_CUDA_LIBS")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/cuda/lib"));
            if !dir.is_dir() {
                return;
            }
            match ort::ep::cuda::preload_dylibs(Some(&dir), Some(&dir)) {
                Ok(()) => gst::info!(
                    crate::unetmask::debug::CAT,
                    "CUDA and cuDNN libraries preloaded from {}",
                    dir.display()
                ),
                Err(e) => gst::warning!(
                    crate::unetmask::debug::CAT,
                    "preloading the CUDA libraries from {} failed ({e}); ONNX Runtime's CUDA provider \
                     will look for them on the library path",
                    dir.display()
                ),
            }
        });
    }

    /// The CUDA provider on device `n`, running on `stream` when given.
    #[cfg(feature = "cuda")]
    fn cuda_ep(n: u32, stream: Option<&SharedStream>) -> ort::ep::CUDA {
        let ep = ort::ep::CUDA::default().with_device_id(n as i32);
        match stream {
            // SAFETY: the engine keeps the stream alive for as long as the session
            // (`Engine::stream`).
            Some(s) => unsafe { ep.with_compute_stream(s.cu_stream() as *mut ()) },
            None => ep,
        }
    }

    #[cfg(all(feature = "cuda", feature = "tensorrt"))]
    fn tensorrt(
        env: &Environment,
        cfg: &EngineConfig,
        n: u32,
        stream: Option<SharedStream>,
    ) -> Result<Opened, EngineError> {
        preload_cuda_runtime();
        let cache = crate::unetmask::model::cache::engine_cache_dir(&cfg.model, n)
            .map_err(|e| EngineError::Provider(format!("device=tensorrt:{n}: {e}")))?;
        let mut trt = ort::ep::TensorRT::default()
            .with_device_id(n as i32)
            .with_engine_cache(true)
            .with_engine_cache_path(cache.display())
            .with_timing_cache(true);
        if let Some(s) = &stream {
            // SAFETY: as in `cuda_ep`.
            trt = unsafe { trt.with_compute_stream(s.cu_stream() as *mut ()) };
        }
        let cuda = cuda_ep(n, stream.as_ref()).build();
        let b = builder(env, cfg)?
            .with_execution_providers([trt.build().error_on_failure(), cuda])
            .map_err(|e| EngineError::Provider(e.to_string()))?;
        Ok((commit(b, &cfg.model)?, format!("tensorrt:{n}"), stream))
    }

    #[cfg(all(feature = "cuda", not(feature = "tensorrt")))]
    fn tensorrt(
        _env: &Environment,
        _cfg: &EngineConfig,
        n: u32,
        _stream: Option<SharedStream>,
    ) -> Result<Opened, EngineError> {
        Err(EngineError::Provider(format!(
            "device=tensorrt:{n}: this build of unetmask has no TensorRT support; rebuild the plugin with \
             --features tensorrt, or use device=cuda:{n}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(DeviceRequest::Cuda(1)));
        assert_eq!("tensorrt:2".parse(), Ok(DeviceRequest::TensorRt(2)));
        let e = "gpu".parse::<DeviceRequest>().unwrap_err();
        assert!(e.contains("cuda:N"), "{e}");
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
        assert_eq!(DeviceRequest::TensorRt(2).to_string(), "tensorrt:2");
    }
}
