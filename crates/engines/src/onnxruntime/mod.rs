//! The engine on ONNX Runtime, through the `ort` crate.
//!
//! ONNX Runtime is loaded at run time (`load-dynamic`), so rtserve builds without it and uses
//! whichever `libonnxruntime` the machine has: see [`locate_library`] for where it looks. Create
//! an [`OrtEngine`], then prepare a model and start instances through the [`Engine`] trait.
//!
//! - `library`: finding the shared library.
//! - `runtime`: loading it once per process and the one ONNX Runtime environment.
//! - `convert`: rtserve tensors to and from ONNX Runtime values.
//! - `instance`: a loaded session as a [`ModelInstance`].
//! - `gpu`: whether a GPU instance can run here, and why not; `wheels`: the CUDA libraries of
//!   the PyPI wheels; `providers`: the CUDA and TensorRT providers of a GPU instance;
//!   `staging`: its batches through pinned host memory and I/O binding.
//! - `source`: what a session is made from (an ONNX file, or a TFLite file rewritten as ONNX).

mod convert;
mod gpu;
mod instance;
mod library;
mod providers;
mod runtime;
mod source;
mod staging;
mod wheels;

use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Outlet, ValueType};
use rtserve_core::{
    Device, Engine, EngineError, GpuPlacement, LoadOptions, ModelInstance, ModelSignature, PreparedModel,
    TensorSpec,
};

pub use library::{
    locate_library, FROM_ENV, FROM_EXPLICIT_PATH, FROM_PYTHON_PACKAGE, FROM_SYSTEM, LIBRARY_ENV,
};

use self::gpu::GpuFacts;
use self::instance::OrtInstance;
use self::providers::execution_providers;
use self::runtime::{catch_panic, runtime, Runtime};
use self::source::Source;
use self::staging::Staging;

/// How to set up ONNX Runtime.
#[derive(Debug, Clone, Default)]
pub struct OrtOptions {
    /// The `libonnxruntime` file (or a folder holding it); `None` searches as
    /// [`locate_library`] does.
    pub library: Option<PathBuf>,
}

/// The ONNX Runtime engine. All engines in a process share one loaded library and one ONNX
/// Runtime environment.
pub struct OrtEngine {
    runtime: &'static Runtime,
}

impl OrtEngine {
    /// Loads ONNX Runtime (the first time in the process) and returns an engine on it. Fails, never
    /// panics, when no usable library is found. A process holds one ONNX Runtime: once one is
    /// loaded, later engines use it whatever `options.library` says (with a warning if it differs).
    pub fn new(options: &OrtOptions) -> Result<OrtEngine, EngineError> {
        let runtime = runtime(options.library.as_deref())?;
        Ok(OrtEngine { runtime })
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.runtime.library
    }

    /// How the library was found: one of [`FROM_EXPLICIT_PATH`], [`FROM_ENV`],
    /// [`FROM_PYTHON_PACKAGE`] or [`FROM_SYSTEM`].
    pub fn found_by(&self) -> &'static str {
        self.runtime.found_by
    }

    /// What this host and library offer for GPUs (probed once per process).
    fn gpu_facts(&self) -> &'static GpuFacts {
        GpuFacts::of(self.runtime)
    }
}

/// How to build one session.
struct SessionSettings<'a> {
    optimization: GraphOptimizationLevel,
    /// Threads per inference; 0: ONNX Runtime's default, one per physical core.
    intra_threads: usize,
    spinning: bool,
    /// The GPU and its providers, with the model's inputs (for TensorRT's profile); `None`:
    /// the CPU.
    gpu: Option<(&'a GpuPlacement, &'a [TensorSpec])>,
}

/// Creates a session for the model with sequential graph execution.
fn session(runtime: &Runtime, source: &Source, settings: &SessionSettings) -> Result<Session, EngineError> {
    let path = source.path();
    let build = || -> Result<Session, String> {
        let text = |e: ort::Error<_>| e.to_string();
        let mut builder = Session::builder(&runtime.environment).map_err(|e| e.to_string())?;
        builder = builder.with_optimization_level(settings.optimization).map_err(text)?;
        builder = builder.with_inter_threads(1).map_err(text)?;
        builder = builder.with_intra_op_spinning(settings.spinning).map_err(text)?;
        if settings.intra_threads > 0 {
            builder = builder.with_intra_threads(settings.intra_threads).map_err(text)?;
        }
        if let Some((gpu, inputs)) = settings.gpu {
            builder = builder.with_execution_providers(execution_providers(gpu, inputs)).map_err(text)?;
        }
        source.commit(&mut builder).map_err(|e| e.to_string())
    };
    catch_panic(&format!("loading {}", path.display()), build)?
        .map_err(|e| EngineError::new(format!("onnxruntime cannot load {}: {e}", path.display())))
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    /// Reads the declared inputs and outputs (symbolic or unknown dimensions are `-1`) from a
    /// session without graph optimizations; a model whose inputs or outputs rtserve cannot
    /// represent fails here, not on first use.
    fn prepare(&self, path: &Path) -> Result<Box<dyn PreparedModel>, EngineError> {
        let reading = SessionSettings {
            optimization: GraphOptimizationLevel::Disable,
            intra_threads: 1,
            spinning: false,
            gpu: None,
        };
        let source = Source::read(path)?;
        let declared = session(self.runtime, &source, &reading)?;
        let specs = |outlets: &[Outlet], what: &str| -> Result<Vec<TensorSpec>, EngineError> {
            outlets.iter().map(|o| tensor_spec(o, what)).collect()
        };
        let signature = ModelSignature {
            inputs: specs(declared.inputs(), "input")?,
            outputs: specs(declared.outputs(), "output")?,
        };
        Ok(Box::new(OrtModel { runtime: self.runtime, source, signature }))
    }

    /// The GPUs NVML counts, when this library has a CUDA provider that loads.
    fn gpus(&self) -> Result<Vec<u32>, EngineError> {
        self.gpu_facts().gpus().map_err(EngineError::new)
    }

    fn check_gpu(&self, gpu: &GpuPlacement) -> Result<(), EngineError> {
        self.gpu_facts().check(gpu).map_err(EngineError::new)
    }
}

/// A model whose signature has been read; each instance is a session of its own.
struct OrtModel {
    runtime: &'static Runtime,
    source: Source,
    signature: ModelSignature,
}

impl PreparedModel for OrtModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// A session with every graph optimization and sequential execution of the graph. Each
    /// instance has a session (and weights) of its own: `ort` runs a session through `&mut`,
    /// so one session cannot serve several instance threads at once, and ONNX Runtime's
    /// prepacked-weights container saved nothing measurable (docs/scheduling.md, "One model,
    /// several instances").
    fn instance(&self, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
        let gpu = match &options.device {
            Device::Cpu => None,
            Device::Gpu(gpu) => Some((gpu, self.signature.inputs.as_slice())),
        };
        let settings = SessionSettings {
            optimization: GraphOptimizationLevel::All,
            intra_threads: options.intra_op_threads,
            spinning: options.allow_spinning,
            gpu,
        };
        let session = session(self.runtime, &self.source, &settings)?;
        let instance = OrtInstance::new(session);
        Ok(match options.device {
            Device::Cpu => Box::new(instance),
            Device::Gpu(_) => {
                let staging = Staging::pinned(instance.session())?;
                Box::new(instance.with_staging(staging))
            }
        })
    }
}

/// The rtserve spec of one declared input or output.
fn tensor_spec(outlet: &Outlet, what: &str) -> Result<TensorSpec, EngineError> {
    let name = outlet.name();
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let data_type = convert::data_type(*ty).ok_or_else(|| {
                EngineError::new(format!(
                    "{what} '{name}' has element type {ty}, which rtserve does not support"
                ))
            })?;
            Ok(TensorSpec {
                name: name.to_string(),
                data_type,
                dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
            })
        }
        other => Err(EngineError::new(format!("{what} '{name}' is a {other}; rtserve serves only tensors"))),
    }
}
